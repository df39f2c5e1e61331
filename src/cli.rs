//! Command-line interface: argument definitions (their doc comments are the `--help` text) and
//! the dispatch to each command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

const EXAMPLES: &str = "\
Examples:
  wsgate                                   serve on 127.0.0.1:8080 with built-in defaults
  wsgate serve --config wsgate.toml        serve with a config file
  wsgate serve --listen 0.0.0.0:8020       override server.listen
  WSGATE_WEBSOCKET__PING_INTERVAL=10s wsgate serve
                                           any config key from the environment
  wsgate check-config wsgate.toml          validate a config file and exit
  wsgate genconfig > wsgate.toml           write a commented config with every default
  wsgate serve --log-format json           one JSON object per log line (or [log] format)
  wsgate bench echo --conns 100            measure a server on this machine (see bench --help)
  wsgate doctor wss://example.com/ws       diagnose an endpoint step by step (see doctor --help)
  wsgate doctor ws://127.0.0.1:8080/room/lobby/ --idle-probe 75s
                                           also report when and how a silent connection is cut

Then open http://127.0.0.1:8080/ and publish from any backend:
  curl -H 'Content-Type: text/plain' -d 'hello' http://127.0.0.1:8080/api/groups/room:lobby/messages";

/// wsgate: WebSockets that just work. A push hub whose groups browsers join by URL and any
/// backend publishes to over HTTP.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Log filter, e.g. "info", "debug" or "wsgate=debug" (RUST_LOG works too).
    #[arg(long, global = true, env = "WSGATE_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as "human" text or "json" objects; overrides [log] format.
    #[arg(long, global = true, value_parser = ["human", "json"])]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Validate a config file: prints every problem as file:line:column and exits 1 if any.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Print a commented configuration with every key at its default, ready to edit.
    Genconfig,
    /// Measure a WebSocket server on this machine (wsgate or a peer): echo, room, fanout, idle
    /// or handshake. One JSON object on stdout; exit 1 on any loss or error.
    Bench(crate::bench::Args),
    /// Diagnose a WebSocket endpoint step by step (DNS, TCP, TLS, upgrade, ping, idle, close),
    /// each with pass/warn/fail and a fix. Exit 0 only when the endpoint works.
    Doctor(crate::doctor::Args),
}

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file; without it the built-in defaults are used (see wsgate.example.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on; overrides server.listen.
    #[arg(long, short)]
    pub listen: Option<String>,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let flag = cli.log_format.as_deref().map(|f| match f {
        "json" => LogFormat::Json,
        _ => LogFormat::Human,
    });
    let logs = Logs {
        filter: cli.log,
        flag,
    };
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::CheckConfig { file } => check_config(&file),
        Command::Genconfig => {
            print!("{}", GENCONFIG);
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(args, logs),
        Command::Bench(args) => {
            logs.init(None);
            crate::bench::run(args)
        }
        Command::Doctor(args) => {
            logs.init(None);
            crate::doctor::run(args)
        }
    }
}

/// The commented configuration `wsgate genconfig` prints: the example config, which a test
/// keeps valid and in step with the defaults.
const GENCONFIG: &str = include_str!("../wsgate.example.toml");

/// How to start logging, once the format is known.
struct Logs {
    filter: String,
    /// `--log-format`, which wins over the config.
    flag: Option<LogFormat>,
}

impl Logs {
    /// Starts logging to stderr in the flag's format, else `config`'s, else human.
    fn init(&self, config: Option<LogFormat>) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&self.filter))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Colours only for a terminal: a journal or a pipe gets plain text.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.flag.or(config).unwrap_or_default() {
            LogFormat::Human => builder.init(),
            LogFormat::Json => builder.json().flatten_event(true).init(),
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match crate::config::load(Some(file), &crate::config::process_env()) {
        Ok(cfg) => {
            if let Err(e) = crate::app::check_files(&cfg) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            if let Err(why) = crate::app::reach_broker(&cfg) {
                eprintln!("{}: broker: {why}", file.display());
                eprintln!("1 problem(s) found in {}", file.display());
                return ExitCode::FAILURE;
            }
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            let proxied = cfg.routes.iter().filter(|r| r.is_proxy()).count();
            let proxy = if proxied > 0 {
                format!(
                    ", {proxied} proxy route(s) to {} upstream(s)",
                    cfg.upstreams.len()
                )
            } else {
                String::new()
            };
            println!(
                "{}: ok ({} route(s){proxy}, listening on {})",
                file.display(),
                cfg.effective_routes().len(),
                cfg.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{} problem(s) found in {}",
                e.problems.len(),
                file.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, logs: Logs) -> ExitCode {
    let mut config =
        match crate::config::load(args.config.as_deref(), &crate::config::process_env()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "invalid configuration; run `wsgate check-config FILE` to see every problem"
                );
                return ExitCode::FAILURE;
            }
        };
    logs.init(Some(config.log.format));
    if let Some(l) = args.listen {
        if let Err(m) = crate::config::parse_listen(&l) {
            eprintln!("--listen: {m}");
            return ExitCode::FAILURE;
        }
        config.server.listen = l;
    }
    match crate::app::serve_blocking(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}
