//! `wsgate doctor URL`: diagnoses a WebSocket endpoint from the outside, as a browser would
//! meet it, one step at a time, each with a verdict (pass, warn, fail) and a fix:
//!
//! 1. `dns`: resolve the host (`net.rs`);
//! 2. `tcp`: connect to one of its addresses (`net.rs`);
//! 3. `tls` for `wss://`/`https://`: chain, expiry, version, ALPN (`tls.rs`);
//! 4. `upgrade`: the handshake, request and answer shown (`upgrade.rs`), the 101 checked and
//!    refusals explained (`answer.rs`) with the hop that most likely lost the upgrade headers and
//!    its fix (`hops.rs`); a redirect is
//!    followed with `--follow`, starting again at `dns` for the new URL;
//! 5. `ping`: a Ping and its Pong (`session.rs`);
//! 6. `idle` with `--idle-probe`: hold a silent connection and report how it ended (`idle.rs`);
//! 7. `close`: Close 1000 and the server's Close in reply (`session.rs`).
//!
//! With `--h2` the upgrade is replaced by WebSockets over HTTP/2 (RFC 8441, `h2.rs`): `alpn`
//! (TLS only), `h2` (preface and SETTINGS; h2c with prior knowledge on a plain port),
//! `settings` (SETTINGS_ENABLE_CONNECT_PROTOCOL) and `connect` (the extended CONNECT); then
//! `ping`, `idle` and `close` as above, over the HTTP/2 stream (`h2io.rs`).
//!
//! The endpoint works (exit 0) when the upgrade (or the extended CONNECT) passed and no step
//! failed; otherwise exit 1, and 2 for usage errors. Every wait is bounded by `--timeout` per
//! step.
//!
//! doctor is a client: it must not know server internals (`server`, `hub`, `broker`, `api`,
//! `proxy`), changes no state on the server (no data frames are sent), and uses only
//! `crate::ws` for framing and the accept key. The report types live in `report.rs`.

mod answer;
mod h2;
mod h2io;
mod head;
mod hops;
mod idle;
mod net;
mod report;
mod session;
mod target;
mod tls;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{CryptoProvider, SecureRandom};
use tokio::io::{AsyncRead, AsyncWrite};

pub use report::{Report, STEP_FIELDS, Step, Verdict};
pub use target::Target;
pub use tls::CaError;

/// Redirects followed at most, with `--follow`.
const MAX_REDIRECTS: usize = 5;
/// The longest `--timeout` or `--idle-probe`.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

const EXAMPLES: &str = "\
Examples:
  wsgate doctor ws://127.0.0.1:8080/room/lobby/
  wsgate doctor wss://example.com/socket --idle-probe 75s
  wsgate doctor wss://staging.internal/ws --ca ca.pem --origin https://app.example.com
  wsgate doctor http://example.com/chat --follow --subprotocol graphql-transport-ws
  wsgate doctor ws://127.0.0.1:8080/ws/echo --json
  wsgate doctor wss://example.com/socket --h2";

/// `wsgate doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The endpoint: ws://, wss://, http:// or https:// (http(s) is checked as ws(s)).
    #[arg(value_parser = target::parse_arg)]
    pub url: Target,
    /// Trust only the CA certificate(s) in this PEM file instead of this machine's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Send this Origin, as a page from that site would (a server may refuse it with 403).
    #[arg(long, value_name = "URL", value_parser = parse_origin)]
    pub origin: Option<String>,
    /// Offer this subprotocol (Sec-WebSocket-Protocol); repeat to offer several, in order.
    #[arg(long = "subprotocol", value_name = "NAME", value_parser = parse_token)]
    pub subprotocols: Vec<String>,
    /// Follow redirects (up to 5) and check where they lead; browsers do not.
    #[arg(long)]
    pub follow: bool,
    /// After the upgrade, hold the connection silent this long (e.g. 75s) and report when and
    /// how it was cut. Pings are answered, no data is sent.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub idle_probe: Option<Duration>,
    /// The longest any one step may take (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_wait)]
    pub timeout: Duration,
    /// Print one JSON object (url, ok, steps with name, verdict, detail, hint, facts) instead of
    /// the report.
    #[arg(long)]
    pub json: bool,
    /// Check WebSockets over HTTP/2 (RFC 8441 extended CONNECT) instead of the HTTP/1.1 upgrade:
    /// ALPN h2 over TLS (h2c with prior knowledge for ws://), the server's
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL, the CONNECT and its answer, then the same frames.
    #[arg(long)]
    pub h2: bool,
}

/// Why doctor cannot start; each message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Checked arguments, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    trust: tls::Trust,
    pub origin: Option<String>,
    pub protocols: Vec<String>,
    pub follow: bool,
    pub idle_probe: Option<Duration>,
    pub timeout: Duration,
    /// WebSockets over HTTP/2 (RFC 8441) instead of the HTTP/1.1 upgrade.
    pub h2: bool,
    provider: Arc<CryptoProvider>,
}

impl Plan {
    /// Checks what clap cannot: the `--ca` file.
    ///
    /// # Errors
    /// A `--ca` file that holds no usable CA certificate.
    pub fn new(args: &Args) -> Result<Plan, Error> {
        let trust = match &args.ca {
            Some(path) => tls::Trust::from_ca_file(path)?,
            None => tls::Trust::System,
        };
        Ok(Plan {
            target: args.url.clone(),
            trust,
            origin: args.origin.clone(),
            protocols: args.subprotocols.clone(),
            follow: args.follow,
            idle_probe: args.idle_probe,
            timeout: args.timeout,
            h2: args.h2,
            // The ring provider, chosen here rather than through a process-wide default.
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

/// Runs `wsgate doctor` and returns the process exit code.
pub fn run(args: Args) -> ExitCode {
    let plan = match Plan::new(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wsgate doctor: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "wsgate doctor: cannot start the runtime: {e}; check the process limits (ulimit -n, -u)"
            );
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    if !json {
        out(&report::render_header(&plan.target.url));
    }
    let mut prev_url = plan.target.url.clone();
    let report = rt.block_on(diagnose(&plan, &mut |step: &Step| {
        if json {
            return;
        }
        out(&report::render_step(&prev_url, step));
        if !step.url.is_empty() {
            prev_url = step.url.clone();
        }
        if let (Some(hold), "ping", Verdict::Pass | Verdict::Warn) =
            (plan.idle_probe, step.name, step.verdict)
        {
            out(&format!(
                "{:15}(holding the connection silent for {:.1} s)\n",
                "",
                hold.as_secs_f64()
            ));
        }
    }));
    // A lookup still stuck in the resolver must not keep the process alive.
    rt.shutdown_background();
    if json {
        out(&format!("{}\n", report.to_json()));
    } else {
        out(&report.render_summary());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes to stdout as the report goes; a closed stdout (`| head`) is not an error worth a
/// panic, and the exit code still tells the outcome.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Runs every step against the plan's URL (and, with `--follow`, where it redirects);
/// `on_step` sees each step as it completes.
pub async fn diagnose(plan: &Plan, on_step: &mut dyn FnMut(&Step)) -> Report {
    let mut run = Run {
        plan,
        report: Report::new(&plan.target.url),
        on_step,
    };
    let mut target = plan.target.clone();
    let mut visited = vec![target.url.clone()];
    while let Some(next) = run.check(&target).await {
        if visited.len() > MAX_REDIRECTS || visited.contains(&next.url) {
            let why = if visited.contains(&next.url) {
                "a redirect loop"
            } else {
                "too many redirects"
            };
            let step = Step::fail(
                "redirect",
                format!("stopped following at {}: {why} ({})", next.url, visited.join(" -> ")),
            )
            .with_hint("point the client at the final WebSocket URL, and fix the redirect rules on the server");
            run.push(&next, step);
            break;
        }
        visited.push(next.url.clone());
        target = next;
    }
    run.report
}

/// One diagnosis in progress.
struct Run<'a> {
    plan: &'a Plan,
    report: Report,
    on_step: &'a mut dyn FnMut(&Step),
}

impl Run<'_> {
    fn push(&mut self, target: &Target, mut step: Step) {
        step.url = target.url.clone();
        (self.on_step)(&step);
        self.report.steps.push(step);
    }

    /// The steps for one URL; returns where a followed redirect points.
    async fn check(&mut self, target: &Target) -> Option<Target> {
        let plan = self.plan;
        let (step, addrs) = net::resolve(target, plan.timeout).await;
        self.push(target, step);
        if addrs.is_empty() {
            return None;
        }
        let (step, tcp) = net::connect(target, &addrs, plan.timeout).await;
        self.push(target, step);
        let tcp = tcp?;
        let alpn: &[&[u8]] = if plan.h2 { &h2::ALPN } else { &[b"http/1.1"] };
        if !target.secure {
            return if plan.h2 {
                self.talk_h2(target, tcp).await
            } else {
                self.talk(target, tcp).await
            };
        }
        let (step, tls) =
            tls::handshake(tcp, target, &plan.trust, &plan.provider, alpn, plan.timeout).await;
        self.push(target, step);
        let tls = tls?;
        if !plan.h2 {
            return self.talk(target, tls).await;
        }
        let step = h2::alpn(tls.get_ref().1.alpn_protocol());
        let picked_h2 = step.verdict == Verdict::Pass;
        self.push(target, step);
        if !picked_h2 {
            return None;
        }
        self.talk_h2(target, tls).await
    }

    /// WebSockets over HTTP/2 on a connected stream: the connection, its SETTINGS, the extended
    /// CONNECT, and the frames over the stream it opens.
    async fn talk_h2<S>(&mut self, target: &Target, io: S) -> Option<Target>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let plan = self.plan;
        let (step, send) = h2::open(io, target, plan.timeout).await;
        self.push(target, step);
        let send = send?;
        let step = h2::settings(&send);
        let announced = step.verdict == Verdict::Pass;
        self.push(target, step);
        if !announced {
            return None;
        }
        let sent = h2::request_text(target, plan.origin.as_deref(), &plan.protocols);
        let (step, outcome) = h2::connect(&send, target, &sent, plan.follow, plan.timeout).await;
        self.push(target, step);
        let (tunnel, front) = match outcome {
            h2::Outcome::Follow(next) => return Some(next),
            h2::Outcome::Stop => return None,
            h2::Outcome::Open { tunnel, front } => (tunnel, front),
        };
        let conn = session::Conn::new(tunnel, Vec::new(), plan.provider.secure_random);
        self.frames(target, conn, front).await;
        None
    }

    /// The upgrade and what follows it, over a connected stream.
    async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        target: &Target,
        mut io: S,
    ) -> Option<Target> {
        let plan = self.plan;
        let random = plan.provider.secure_random;
        let sent = head::Sent::new(
            target,
            fresh_key(random),
            plan.origin.as_deref(),
            &plan.protocols,
        );
        let (step, outcome) =
            upgrade::exchange(&mut io, target, &sent, plan.follow, plan.timeout).await;
        self.push(target, step);
        let (leftover, front) = match outcome {
            upgrade::Outcome::Follow(next) => return Some(next),
            upgrade::Outcome::Stop => return None,
            upgrade::Outcome::Upgraded { leftover, front } => (leftover, front),
        };
        let conn = session::Conn::new(io, leftover, random);
        self.frames(target, conn, front).await;
        None
    }

    /// What follows an opened WebSocket, over either HTTP version: `ping`, `idle`, `close`.
    async fn frames<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        target: &Target,
        mut conn: session::Conn<S>,
        front: Option<hops::Proxy>,
    ) {
        let plan = self.plan;
        let (step, open) = session::ping(&mut conn, plan.timeout).await;
        self.push(target, step);
        if !open {
            return;
        }
        if let Some(hold) = plan.idle_probe {
            let (step, open) = idle::probe(&mut conn, hold, front).await;
            self.push(target, step);
            if !open {
                return;
            }
        }
        let step = session::close(&mut conn, plan.timeout).await;
        self.push(target, step);
    }
}

/// A Sec-WebSocket-Key: 16 random bytes in base64 (RFC 6455 section 4.1).
fn fresh_key(random: &dyn SecureRandom) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    if random.fill(&mut bytes).is_err() {
        // The key only has to differ between connections; the clock does that.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = t.to_le_bytes();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// clap's parser for `--timeout` and `--idle-probe`: a duration with a unit, above zero.
fn parse_wait(s: &str) -> Result<Duration, String> {
    let d = crate::config::Duration::parse(s)?.get();
    if d.is_zero() {
        return Err(format!(
            "{s:?} is zero; give a duration above zero, like \"10s\""
        ));
    }
    if d > MAX_WAIT {
        return Err(format!("{s:?} is more than a day; give a shorter duration"));
    }
    Ok(d)
}

/// clap's parser for `--subprotocol`: an HTTP token (RFC 9110 section 5.6.2).
fn parse_token(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a subprotocol name (letters, digits and !#$%&'*+-.^_`|~, no spaces or commas); \
repeat --subprotocol to offer several"
        ))
    }
}

/// clap's parser for `--origin`: `scheme://host[:port]` or `null`, nothing that could end the
/// header line.
fn parse_origin(s: &str) -> Result<String, String> {
    let printable = s.bytes().all(|b| (0x21..0x7f).contains(&b));
    if printable && (s == "null" || s.contains("://")) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an origin; write it as a page's origin, like https://app.example.com"
        ))
    }
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

    fn parse(line: &str) -> Result<Args, String> {
        T::try_parse_from(std::iter::once("doctor").chain(line.split_whitespace()))
            .map(|t| t.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_flags_parse() {
        let a = parse("ws://127.0.0.1:8080/ws/echo").unwrap();
        assert_eq!(a.timeout, Duration::from_secs(10));
        assert_eq!(a.idle_probe, None);
        let a = parse("wss://h/ --idle-probe 75s --timeout 500ms --subprotocol a --subprotocol b.v2 --origin https://x.y --follow --json").unwrap();
        assert_eq!(a.idle_probe, Some(Duration::from_secs(75)));
        assert_eq!(a.timeout, Duration::from_millis(500));
        assert_eq!(a.subprotocols, ["a", "b.v2"]);
        assert!(a.follow && a.json && a.url.secure);
    }

    #[test]
    fn bad_values_are_usage_errors_that_say_what_to_write() {
        for (line, want) in [
            ("ftp://h/", "use ws://"),
            ("ws://h/ --timeout 10", "no unit"),
            ("ws://h/ --timeout 0s", "above zero"),
            ("ws://h/ --idle-probe 2d", "unknown unit"),
            ("ws://h/ --subprotocol a,b", "not a subprotocol name"),
            ("ws://h/ --origin evil", "not an origin"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn keys_are_fresh_16_byte_nonces() {
        let random = rustls::crypto::ring::default_provider().secure_random;
        let (a, b) = (fresh_key(random), fresh_key(random));
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}
