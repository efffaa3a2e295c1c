//! The `tidegate` command line. Thin: parse arguments, set up logging, call into the library.
//! Exit codes: 0 ok, 1 invalid input or config (a missing file too), 2 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidegate::app::{self, StartError, StartOptions, StateDir};
use tidegate::cli_config::{self, Action};
use tidegate::config::Config;
use tidegate::signals::Signals;

#[derive(Parser)]
#[command(name = "tidegate", version, about = "A transparent LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file. Default: $TIDEGATE_CONFIG, else config/tidegate.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// State directory (pins); overrides state.dir and $TIDEGATE_STATE_DIR.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and print its routes.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show or change the config lifecycle (pin, unpin, rollback) through the admin API.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
        /// Admin plane URL.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// Bearer token for /admin. Default: $TIDEGATE_ADMIN_TOKEN.
        #[arg(long, global = true)]
        token: Option<String>,
    },
    /// Run the gateway in-process on the mock provider and show scripted traffic.
    Demo,
    /// Serve the mock provider's behaviours over HTTP, in both wire formats (OpenAI and
    /// Anthropic).
    MockProvider {
        /// Address to listen on, e.g. 127.0.0.1:9999.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Active version, pin, candidates, last reload error, history.
    Status,
    /// Freeze the rollout on VERSION (default: the active one); a unique prefix of 6+ hex
    /// digits or a unique label works too.
    Pin { version: Option<String> },
    /// Lift the pin and activate the newest valid candidate.
    Unpin,
    /// Activate the previous version and pin it.
    Rollback,
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // A setting that cannot be read is said, once the subscriber is up, not silently dropped.
    let mut unread = Vec::new();
    let filter = match std::env::var("TIDEGATE_LOG") {
        Err(_) => EnvFilter::new("info"),
        Ok(v) => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            unread.push(format!("TIDEGATE_LOG={v:?} cannot be read ({e}); logging at info"));
            EnvFilter::new("info")
        }),
    };
    // Colour only for a terminal: Kubernetes keeps stderr in files, where escapes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match std::env::var("TIDEGATE_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => {
            unread.push(format!(
                "TIDEGATE_LOG_FORMAT={other:?} is neither json nor text; logging as text"
            ));
            builder.init();
        }
    }
    for u in unread {
        tracing::warn!("{u}");
    }
}

fn main() -> ExitCode {
    // SPEC §2: invalid input exits 1 (clap's own code for a usage error is 2, which the SPEC
    // keeps for runtime failures); --help and --version still exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // `serve` runs its data plane on worker threads of their own (`server.worker_threads`);
    // the main thread only accepts connections and runs the admin plane and reloads. The other
    // commands use a multi-threaded runtime (TOKIO_WORKER_THREADS overrides its size).
    let mut builder = match cli.command {
        Command::Serve { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, state_dir } => {
                // First: a SIGTERM during start is then acted on once started, not fatal.
                let signals = Signals::install();
                init_tracing();
                serve(config, state_dir, signals).await
            }
            Command::Check { config } => check(&config),
            Command::Config { action, admin, token } => {
                let action = match action {
                    ConfigAction::Status => Action::Status,
                    ConfigAction::Pin { version } => Action::Pin(version),
                    ConfigAction::Unpin => Action::Unpin,
                    ConfigAction::Rollback => Action::Rollback,
                };
                let token = token.or_else(|| std::env::var("TIDEGATE_ADMIN_TOKEN").ok());
                cli_config::run(action, &admin, token).await
            }
            Command::Demo => tidegate::demo::run().await,
            Command::MockProvider { listen } => {
                let signals = Signals::install();
                init_tracing();
                mock_provider(listen, signals).await
            }
        }
    });
    ExitCode::from(code)
}

fn check(path: &std::path::Path) -> u8 {
    match Config::load(path) {
        Ok(c) => {
            // Written at once, and a closed stdout (`check | head`) is not a panic.
            let mut out = format!("{}: ok\n{}", path.display(), c.summary());
            for w in c.lint() {
                out += &format!("warning: {w}\n");
            }
            for p in c.providers.values() {
                if let Err(e) = tidegate::providers::resolve_key(&p.key) {
                    out += &format!(
                        "warning: providers.{}: {e} (serve will refuse to start without it)\n",
                        p.name
                    );
                }
                if let Some(Err(e)) =
                    p.ca_file.as_deref().map(tidegate::providers::client::check_ca_file)
                {
                    out += &format!(
                        "warning: providers.{}.ca_file: {e} (serve would refuse to start with it)\n",
                        p.name
                    );
                }
            }
            // SPEC §8: serve refuses an admin plane off loopback without a token; the token
            // comes from the environment, which may differ where serve runs: a warning.
            match app::admin_token(None) {
                Ok(token) => {
                    if let Err(e) =
                        app::check_admin_exposure(c.server.admin_listen, token.as_deref(), path)
                    {
                        out += &format!("warning: {e} (serve will refuse to start without it)\n");
                    }
                }
                Err(e) => out += &format!("warning: {e} (serve will refuse to start with it)\n"),
            }
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn serve(config: Option<PathBuf>, state_dir: Option<PathBuf>, mut signals: Signals) -> u8 {
    let path = config
        .or_else(|| std::env::var_os("TIDEGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/tidegate.yaml"));
    let state_dir = state_dir
        .or_else(|| {
            std::env::var_os("TIDEGATE_STATE_DIR").filter(|d| !d.is_empty()).map(PathBuf::from)
        })
        .map_or(StateDir::FromConfig, StateDir::At);
    // A bad or missing file is a startup error, unless a pin in the state dir can be served.
    let boot = match app::Boot::load(&path, &state_dir) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let workers = Some(boot.config.server.worker_threads);
    let opts = StartOptions { state_dir, workers, ..StartOptions::default() };
    let running = match app::start_boot(boot, opts).await {
        Ok(r) => r,
        Err(StartError::Config(e)) => {
            // Errors name the file (SPEC §2); those found while preparing it (a missing key)
            // know only their key path.
            let file = path.display().to_string();
            if e.starts_with(&file) {
                eprintln!("{e}")
            } else {
                eprintln!("{file}: {e}")
            }
            return 1;
        }
        Err(StartError::Env(e)) => {
            eprintln!("tidegate: {e}");
            return 1;
        }
        Err(StartError::Runtime(e)) => {
            eprintln!("tidegate: {e}");
            return 2;
        }
    };
    let version = running.gateway.snapshot().config.version.clone();
    tracing::info!(data = %running.data_addr, admin = %running.admin_addr, %version, "tidegate serving");
    let stop = signals.recv().await;
    tracing::info!(signal = stop.name(), "shutting down");
    let drain = running.shutdown();
    tokio::pin!(drain);
    tokio::select! {
        () = &mut drain => {}
        again = signals.recv() => {
            // An operator who asks twice wants out now (a local Ctrl-C Ctrl-C), not after
            // `shutdown_grace`. Exit without unwinding: the drain's tasks are not waited for.
            tracing::warn!(
                signal = again.name(),
                "second signal during the drain: exiting now; requests still in flight are cut"
            );
            std::process::exit(0);
        }
    }
    tracing::info!("stopped");
    0
}

async fn mock_provider(listen: std::net::SocketAddr, mut signals: Signals) -> u8 {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tidegate: cannot listen on {listen}: {e}");
            return 2;
        }
    };
    let addr = listener.local_addr().map_or(listen, |a| a);
    tracing::info!(
        %addr,
        "mock provider serving (OpenAI wire at /v1/chat/completions and /v1/embeddings, Anthropic wire at /v1/messages, counters at /mock/stats)"
    );
    let stats = std::sync::Arc::default();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = tidegate::server::ConnOptions {
        header_read_timeout: std::time::Duration::from_secs(10),
        grace: std::time::Duration::from_secs(5),
        stop_streams: None,
    };
    let task = tokio::spawn(tidegate::server::serve(
        listener,
        tidegate::server::mock::mock_plane(stats),
        opts,
        rx,
    ));
    signals.recv().await;
    let _ = tx.send(true);
    let _ = task.await;
    0
}
