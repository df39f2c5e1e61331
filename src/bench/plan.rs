//! Checking `wsgate bench` arguments into a [`Plan`]: every run bounded in count and time, every
//! target on this machine.

use super::args::{Args, Mode};
use super::client::{self, Target, parse_target};

/// Arguments checked and URLs parsed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: Args,
    pub target: Target,
    /// `--also-url`: further targets the connections are spread over, after `target`.
    pub also: Vec<Target>,
    pub publish: Option<Target>,
}

impl Plan {
    /// Where connections go: `--url`, then each `--also-url`, round robin.
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.target.clone())
            .chain(self.also.iter().cloned())
            .collect()
    }
}

const MAX_CONNS: usize = 200_000;
const MAX_SECONDS: f64 = 3600.0;

/// Where to POST messages: --publish-url, or wsgate's API for `default_group` when --url is
/// the mode's default too.
fn publish_target(args: &Args, default_group: &str) -> Result<Target, String> {
    let url = match &args.publish_url {
        Some(u) => u.clone(),
        None if args.url.is_none() => {
            let group = args.group.as_deref().unwrap_or(default_group);
            format!("http://127.0.0.1:8080/api/groups/{group}/messages")
        }
        None => {
            return Err(
                "--publish-url is needed with --url: the URL that publishes to the subscribers' group"
                    .into(),
            );
        }
    };
    parse_target(&url, "http").map_err(|e| format!("--publish-url: {e}"))
}

/// Checks the arguments for the chosen mode; the error is a sentence for the user.
pub fn validate(args: &Args) -> Result<Plan, String> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| args.mode.default_url().to_string());
    let mut target = parse_target(&url, "ws").map_err(|e| format!("--url: {e}"))?;
    target.deflate = args.deflate;
    if args.ca.is_some() && args.insecure {
        return Err("give --ca or --insecure, not both".into());
    }
    if !target.secure && (args.ca.is_some() || args.insecure) {
        return Err("--ca and --insecure are for wss:// URLs; this --url is ws://".into());
    }
    // A wss:// target gets its TLS client, checking the certificate for the URL's host.
    let secure = |target: &mut Target, flag: &str| -> Result<(), String> {
        if target.secure {
            let host = target
                .host
                .rsplit_once(':')
                .filter(|(h, _)| !h.is_empty() && (!h.starts_with('[') || h.ends_with(']')))
                .map_or(target.host.as_str(), |(h, _)| h);
            target.tls = Some(
                client::TlsClient::new(host, args.ca.as_deref(), args.insecure, args.h2)
                    .map_err(|e| format!("{flag}: {e}"))?,
            );
        }
        Ok(())
    };
    secure(&mut target, "--url")?;
    if args.h2 {
        if !(1..=1000).contains(&args.h2_conns) {
            return Err(format!(
                "--h2-conns {}: must be between 1 and 1000",
                args.h2_conns
            ));
        }
        target.h2 = Some(client::H2Pool::new(args.h2_conns));
    } else if args.h2_conns != 1 {
        return Err("--h2-conns is for --h2 runs; add --h2".into());
    }
    let also = args
        .also_url
        .iter()
        .map(|u| {
            let mut t = parse_target(u, "ws").map_err(|e| format!("--also-url: {e}"))?;
            t.deflate = args.deflate;
            secure(&mut t, "--also-url")?;
            if args.h2 {
                t.h2 = Some(client::H2Pool::new(args.h2_conns));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let seconds = |name: &str, v: f64, min: f64| -> Result<(), String> {
        if !(v.is_finite() && v >= min && v <= MAX_SECONDS) {
            return Err(format!(
                "--{name} {v}: must be between {min} and {MAX_SECONDS} seconds"
            ));
        }
        Ok(())
    };
    let range = |name: &str, v: u64, min: u64, max: u64| -> Result<(), String> {
        if v < min || v > max {
            return Err(format!("--{name} {v}: must be between {min} and {max}"));
        }
        Ok(())
    };
    range("conns", args.conns as u64, 1, MAX_CONNS as u64)?;
    range(
        "size",
        args.size as u64,
        client::STAMP_BYTES as u64,
        16 << 20,
    )?;
    range("threads", args.threads as u64, 1, 64)?;
    range("concurrency", args.concurrency as u64, 1, 10_000)?;
    seconds("timeout", args.timeout, 0.1)?;
    seconds("progress", args.progress, 0.0)?;
    let mut publish = None;
    match args.mode {
        Mode::Echo => {
            range("inflight", args.inflight as u64, 1, 1024)?;
            seconds("duration", args.duration, 0.1)?;
            seconds("warmup", args.warmup, 0.0)?;
        }
        Mode::Room => {
            range("iterations", args.iterations, 1, 1_000_000)?;
            seconds("settle", args.settle, 0.0)?;
            range("warmup-iterations", args.warmup_iterations, 0, 1_000_000)?;
        }
        Mode::Recover => {
            range("missed", args.missed, 1, 100_000)?;
            publish = Some(publish_target(args, "room:recover")?);
        }
        Mode::Fanout => {
            range("msgs", args.msgs, 1, 10_000_000)?;
            seconds("settle", args.settle, 0.0)?;
            if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1e6) {
                return Err(format!(
                    "--rate {}: must be more than 0 and at most 1000000 per second",
                    args.rate
                ));
            }
            // One bit per message per subscriber records what arrived.
            if args.msgs.saturating_mul(args.conns as u64) > 8_000_000_000 {
                return Err(format!(
                    "--msgs {} x --conns {} is more than 8e9 deliveries; lower one of them",
                    args.msgs, args.conns
                ));
            }
            publish = Some(publish_target(args, "room:fanout")?);
        }
        Mode::Idle => seconds("hold", args.hold, 0.0)?,
        Mode::Handshake => {
            range("total", args.total, 1, 100_000_000)?;
            seconds("duration", args.duration, 0.1)?;
        }
    }
    Ok(Plan {
        args: args.clone(),
        target,
        also,
        publish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &str) -> Result<Plan, String> {
        let t = T::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .map_err(|e| e.to_string())?;
        validate(&t.args)
    }

    #[test]
    fn defaults_point_at_wsgate_on_8080() {
        let p = parse("echo").unwrap();
        assert_eq!(p.target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.target.path, "/ws/echo");
        let p = parse("fanout").unwrap();
        assert_eq!(p.publish.unwrap().path, "/api/groups/room:fanout/messages");
    }

    #[test]
    fn refuses_a_remote_target() {
        let e = parse("echo --url ws://192.168.1.5:8080/").unwrap_err();
        assert!(
            e.starts_with("--url: 192.168.1.5 is not a loopback address"),
            "{e}"
        );
        let e = parse("fanout --url ws://127.0.0.1:1/ --publish-url http://8.8.8.8/p").unwrap_err();
        assert!(e.starts_with("--publish-url: 8.8.8.8"), "{e}");
    }

    #[test]
    fn also_urls_join_the_targets_in_order_and_must_be_loopback() {
        let p = parse(
            "fanout --url ws://127.0.0.1:9000/r/ --also-url ws://127.0.0.1:9001/r/ --also-url ws://127.0.0.1:9002/r/ --publish-url http://127.0.0.1:9000/p",
        )
        .unwrap();
        let ports: Vec<u16> = p.targets().iter().map(|t| t.addr.port()).collect();
        assert_eq!(ports, [9000, 9001, 9002]);
        let e = parse(
            "fanout --url ws://127.0.0.1:9000/ --also-url ws://10.0.0.1:9001/ --publish-url http://127.0.0.1:9000/p",
        )
        .unwrap_err();
        assert!(e.starts_with("--also-url: 10.0.0.1"), "{e}");
    }

    #[test]
    fn fanout_with_its_own_url_needs_a_publish_url() {
        let e = parse("fanout --url ws://127.0.0.1:9000/").unwrap_err();
        assert!(e.contains("--publish-url is needed"), "{e}");
        assert!(
            parse("fanout --url ws://127.0.0.1:9000/ --publish-url http://127.0.0.1:9000/publish")
                .is_ok()
        );
    }

    #[test]
    fn every_run_is_bounded() {
        for (line, flag) in [
            ("echo --duration 0", "--duration"),
            ("echo --duration 100000", "--duration"),
            ("echo --duration NaN", "--duration"),
            ("echo --inflight 0", "--inflight"),
            ("room --iterations 0", "--iterations"),
            ("fanout --rate 0", "--rate"),
            ("fanout --msgs 0", "--msgs"),
            ("idle --hold=-1", "--hold"),
            ("handshake --total 0", "--total"),
            ("echo --conns 0", "--conns"),
            ("echo --size 8", "--size"),
            ("echo --timeout 0", "--timeout"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(flag), "{line}: {e}");
        }
        let e = parse("fanout --conns 100000 --msgs 10000000").unwrap_err();
        assert!(e.contains("8e9"), "{e}");
    }

    #[test]
    fn wss_takes_a_ca_or_insecure_and_ws_takes_neither() {
        let p = parse("echo --url wss://127.0.0.1:8443/ws/echo --insecure").unwrap();
        assert!(p.target.secure && p.target.tls.is_some());
        let e = parse("echo --url wss://127.0.0.1:8443/ --ca /nonexistent/ca.pem").unwrap_err();
        assert!(e.contains("--ca /nonexistent/ca.pem: cannot read"), "{e}");
        let e = parse("echo --url ws://127.0.0.1:8080/ --insecure").unwrap_err();
        assert!(e.contains("for wss:// URLs"), "{e}");
    }

    #[test]
    fn unknown_modes_are_a_usage_error() {
        assert!(parse("pingpong").is_err());
    }
}
