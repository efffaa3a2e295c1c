//! Wiring: bind the data and admin listeners, start the config reloader, serve, and shut down
//! gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config::reload::{Reloader, triggers};
use crate::gateway::Gateway;
use crate::proxy::record::LogSink;
use crate::server::admin::config_api::ConfigApi;
use crate::server::{self, ConnOptions};
use crate::state::PinStore;

/// Where the pin is persisted.
#[derive(Debug, Clone, Default)]
pub enum StateDir {
    /// `state.dir` from the config (default `/var/lib/tidegate`).
    #[default]
    FromConfig,
    /// `--state-dir` / `$TIDEGATE_STATE_DIR`, or a test's temp directory.
    At(PathBuf),
    /// Nothing persisted (tests, the demo).
    InMemory,
}

/// Overrides for tests and the demo.
pub struct StartOptions {
    /// Bind the data plane here instead of `server.listen` (e.g. `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
    /// Bind the admin plane here instead of `server.admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    pub log_sink: LogSink,
    pub state_dir: StateDir,
    /// Token `/admin/*` requires. `None` reads `$TIDEGATE_ADMIN_TOKEN` (unset or empty: open).
    pub admin_token: Option<String>,
    /// Watch the config file, listen for SIGHUP and check every 5 s. Off for configs that do
    /// not come from a file (tests, the demo); `Running::reloader` still works on demand.
    pub watch: bool,
    /// Serve the data plane on this many worker threads (`server.worker_threads`), each its
    /// own single-threaded runtime. `None` serves it on the caller's runtime (tests, the demo).
    pub workers: Option<usize>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            listen: None,
            admin_listen: None,
            log_sink: LogSink::Stdout,
            state_dir: StateDir::FromConfig,
            admin_token: None,
            watch: true,
            workers: None,
        }
    }
}

/// A running gateway.
pub struct Running {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// Reload, pin, unpin, rollback on demand.
    pub reloader: Arc<Reloader>,
    stop_reload: watch::Sender<bool>,
    reload_task: Option<JoinHandle<()>>,
    stop_data: watch::Sender<bool>,
    /// `server.shutdown_delay`: accepting goes on this long after shutdown begins.
    shutdown_delay: std::time::Duration,
    stop_admin: watch::Sender<bool>,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The config is unusable (exit code 1).
    Config(String),
    /// The environment failed us, e.g. a port in use (exit code 2).
    Runtime(String),
    /// A setting from the environment is unusable, e.g. a blank `TIDEGATE_ADMIN_TOKEN`
    /// (exit code 1; the message names the variable, not the config file).
    Env(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) | Self::Runtime(e) | Self::Env(e) => f.write_str(e),
        }
    }
}

/// The admin token: the option if given (empty means none: tests, the demo), else
/// `$TIDEGATE_ADMIN_TOKEN`. ASCII whitespace around it is trimmed: a Secret made from a file
/// written with `echo` ends in a newline, which no client can send in a header. A variable that
/// is set but blank, or a token that cannot be sent as a header value, is an error: serving the
/// admin plane open, or behind a token nobody can present, would be silent.
pub fn admin_token(option: Option<String>) -> Result<Option<String>, String> {
    if let Some(t) = option {
        let t = t.trim_ascii();
        return Ok((!t.is_empty()).then(|| t.to_owned()));
    }
    let Some(raw) = std::env::var_os("TIDEGATE_ADMIN_TOKEN") else { return Ok(None) };
    let raw =
        raw.into_string().map_err(|_| "TIDEGATE_ADMIN_TOKEN is not valid UTF-8".to_owned())?;
    let token = clean_token(&raw).map_err(|e| format!("TIDEGATE_ADMIN_TOKEN {e}"))?;
    if token.is_empty() {
        return Err("TIDEGATE_ADMIN_TOKEN is set but empty (or only whitespace): set a token, or unset the variable to leave a loopback admin plane open".into());
    }
    Ok(Some(token))
}

/// `raw` without the ASCII whitespace around it; an error (to follow the token's name) when the
/// rest cannot be sent in an `Authorization` header.
pub fn clean_token(raw: &str) -> Result<String, String> {
    let t = raw.trim_ascii();
    if http::HeaderValue::from_str(t).is_err() {
        return Err(
            "holds characters that cannot be sent in a header (control characters or non-ASCII)"
                .into(),
        );
    }
    Ok(t.to_owned())
}

/// The admin plane may leave loopback only behind a token (SPEC §8).
pub fn check_admin_exposure(
    admin: SocketAddr,
    token: Option<&str>,
    source: &std::path::Path,
) -> Result<(), String> {
    if !admin.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "{}: server.admin_listen: {admin} is not a loopback address; set TIDEGATE_ADMIN_TOKEN to expose the admin plane",
            source.display()
        ));
    }
    Ok(())
}

/// The version a process starts on: the config file's, or, when the file cannot be loaded,
/// the version pinned in the state dir.
pub struct Boot {
    /// Served first (and, for `server.*`, `state` and `circuit_breaker`, for the process's life).
    pub config: Config,
    /// Why the config file could not be loaded, when `config` is the pinned version.
    file_error: Option<String>,
}

impl Boot {
    /// Loads the config file at `path`. When it is invalid or missing, a pin in the state dir
    /// (`state_dir`, or the default `state.dir` for [`StateDir::FromConfig`], since the file
    /// cannot say) is served instead: a pin protects the rollout from a bad ConfigMap, also
    /// across a restart. Without a usable pin the file's error is the answer.
    pub fn load(path: &Path, state_dir: &StateDir) -> Result<Self, String> {
        let file_error = match Config::load(path) {
            Ok(config) => return Ok(Self { config, file_error: None }),
            Err(e) => e.to_string(),
        };
        let dir = match state_dir {
            StateDir::FromConfig => PathBuf::from(crate::config::DEFAULT_STATE_DIR),
            StateDir::At(dir) => dir.clone(),
            StateDir::InMemory => return Err(file_error),
        };
        let pinned = match PinStore::at(&dir).load() {
            Ok(Some(pin)) => pin,
            Ok(None) => return Err(file_error),
            Err(e) => return Err(format!("{file_error}; persisted pin ignored: {e}")),
        };
        match Config::from_bytes(path, &pinned.content) {
            Ok(config) => Ok(Self { config, file_error: Some(file_error) }),
            Err(e) => Err(format!("{file_error}; the pinned version is not valid either: {e}")),
        }
    }
}

/// Prepares `config`, binds both listeners and starts serving.
pub async fn start(config: Config, opts: StartOptions) -> Result<Running, StartError> {
    start_boot(Boot { config, file_error: None }, opts).await
}

/// [`start`] on what [`Boot::load`] found: a pinned process starts on its pinned version even
/// when the config file is bad (and reports the file's problem as `last_error`).
pub async fn start_boot(boot: Boot, opts: StartOptions) -> Result<Running, StartError> {
    let Boot { config, file_error } = boot;
    let server_cfg = config.server.clone();
    let admin = opts.admin_listen.unwrap_or(server_cfg.admin_listen);
    let token = admin_token(opts.admin_token).map_err(StartError::Env)?;
    check_admin_exposure(admin, token.as_deref(), &config.source).map_err(StartError::Config)?;
    let store = match opts.state_dir {
        // Where Boot::load found the pin when the file could not say.
        StateDir::FromConfig if file_error.is_some() => {
            PinStore::open(Path::new(crate::config::DEFAULT_STATE_DIR))
        }
        StateDir::FromConfig => PinStore::open(&config.state.dir),
        StateDir::At(dir) => PinStore::open(&dir),
        StateDir::InMemory => PinStore::in_memory(),
    };
    let guarded = token.is_some() || opts.admin_listen.is_some();
    let (gateway, reloader) = Reloader::boot(config, file_error, store, opts.log_sink, guarded)
        .map_err(StartError::Config)?;
    let data_listener = bind(opts.listen.unwrap_or(server_cfg.listen)).await?;
    let admin_listener = bind(admin).await?;
    let data_addr = data_listener.local_addr().map_err(|e| StartError::Runtime(e.to_string()))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| StartError::Runtime(e.to_string()))?;
    let conn = ConnOptions {
        header_read_timeout: server_cfg.header_read_timeout,
        grace: server_cfg.shutdown_grace,
        stop_streams: Some(gateway.stop_streams.clone()),
    };
    let admin_conn = ConnOptions {
        grace: std::time::Duration::from_secs(1),
        stop_streams: None,
        ..conn.clone()
    };
    let (stop_data, rx_data) = watch::channel(false);
    let (stop_admin, rx_admin) = watch::channel(false);
    let data_plane = server::data_plane(gateway.clone());
    let data_task = match opts.workers {
        Some(n) => {
            tokio::spawn(server::serve_on_workers(data_listener, data_plane, conn, rx_data, n))
        }
        None => tokio::spawn(server::serve(data_listener, data_plane, conn, rx_data)),
    };

    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        server::admin::admin_plane(
            gateway.clone(),
            Arc::new(ConfigApi::new(reloader.clone(), token)),
        ),
        admin_conn,
        rx_admin,
    ));
    let (stop_reload, rx_reload) = watch::channel(false);
    let reload_task =
        if opts.watch { Some(triggers::spawn(reloader.clone(), rx_reload).await) } else { None };
    Ok(Running {
        data_addr,
        admin_addr,
        gateway,
        reloader,
        stop_reload,
        reload_task,
        stop_data,
        shutdown_delay: server_cfg.shutdown_delay,
        stop_admin,
        data_task,
        admin_task,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))
}

impl Running {
    /// Graceful shutdown: readiness fails at once; the data listener keeps accepting and serving
    /// for `server.shutdown_delay` (load balancers and kube-proxy stop sending meanwhile), then
    /// stops accepting; in-flight requests and streams drain up to `server.shutdown_grace`,
    /// counted from there; then the admin plane stops.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        if !self.shutdown_delay.is_zero() {
            tracing::info!(
                delay = ?self.shutdown_delay,
                "/readyz fails; still accepting for server.shutdown_delay"
            );
            tokio::time::sleep(self.shutdown_delay).await;
            tracing::info!("server.shutdown_delay passed: no longer accepting; draining");
        }
        let _ = self.stop_data.send(true);
        // Reloads stop too; nothing here may delay the data listener's close above.
        let _ = self.stop_reload.send(true);
        if let Some(t) = self.reload_task {
            let _ = t.await;
        }
        let _ = self.data_task.await;
        // The last requests' Redis writes (settlements, idempotency records) finish first,
        // each already bounded by `state.timeout`.
        if let Some(redis) = &self.gateway.shared.state.redis {
            let within = self.gateway.snapshot().config.state.timeout * 4;
            if !redis.flush(within).await {
                tracing::warn!("shutdown: some Redis writes did not finish within {within:?}");
            }
        }
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
    }
}
