//! Configuration: the runtime types a loaded config file becomes, and how it is loaded.
//!
//! Loading is two steps (after TensorZero's `load()`): `raw.rs` deserializes the YAML with
//! unknown keys denied and the key path tracked, then `validate.rs` applies defaults and
//! cross-field rules and produces these types, which have no "filled in later" options.
//! Every error names the file, the key path and what was expected.

pub mod auth;
mod limits;
pub mod raw;
pub mod reload;
mod summary;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A config file that failed to load: which file, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path (`routes.chat.targets[1].provider`); empty for whole-file errors.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// One loaded, validated config version.
#[derive(Debug)]
pub struct Config {
    /// `v-` + the first 12 hex digits of the SHA-256 of the file's content.
    pub version: String,
    pub label: Option<String>,
    /// Where it was read from.
    pub source: PathBuf,
    /// The file's bytes as read (kept so a version can be re-activated or persisted with a pin).
    pub content: Arc<[u8]>,
    pub server: Server,
    pub state: StateConfig,
    pub logging: Logging,
    /// `circuit_breaker:` settings (defaults per SPEC §5); applied at start.
    pub breaker: crate::routing::health::BreakerConfig,
    pub providers: BTreeMap<String, Arc<ProviderSpec>>,
    pub models: BTreeMap<String, ModelInfo>,
    /// Routes sorted by name.
    pub routes: Vec<Arc<Route>>,
    /// `auth:` client auth; `None`: every client is let in.
    pub auth: Option<auth::Auth>,
}

/// `server:` — static settings; changing them needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Data plane address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin plane address (metrics, probes, admin API). Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Largest request body accepted, in bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Requests (and streams) in flight before new ones are shed with 503. Default 1024.
    pub max_concurrent_requests: usize,
    /// How long SIGTERM waits for in-flight requests and streams. Default 30 s.
    pub shutdown_grace: Duration,
    /// How long after SIGTERM the data listener keeps accepting and serving (with `/readyz`
    /// already failing) before the drain begins, so that load balancers stop sending first.
    /// Default 0.
    pub shutdown_delay: Duration,
    /// Time a client has to send the request headers (a connection's first request: counted
    /// from its accept). Also the idle limit of a connection with no request under way (an
    /// HTTP/2 one is shut down once a whole period passes with no request begun and none
    /// open). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a client has to send the whole request body, counted from its headers; a body
    /// still arriving then gets a 408 `request_timeout` and its connection is closed, so a
    /// stalled or trickling client cannot hold a `max_concurrent_requests` place. Default 30 s.
    pub body_read_timeout: Duration,
    /// Data-plane threads, each an event loop that owns the connections it is given. Default:
    /// the CPUs this process may use (its cgroup quota counts), at least 1.
    pub worker_threads: usize,
}

/// `state.dir` when the config does not set it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tidegate";

/// `state:` — static; changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// Directory that keeps the pin and the pinned version's content. Default
    /// `/var/lib/tidegate`; `--state-dir` and `$TIDEGATE_STATE_DIR` override it.
    pub dir: PathBuf,
    /// Longest wait for one shared-state call (Redis). Default 100 ms.
    pub timeout: Duration,
    /// What each concern does when the shared backend fails (`state.on_error`).
    pub on_error: OnError,
    /// The memory idempotency store's bounds: records kept (default 10 000) and bytes of
    /// stored answers (default 64 MiB).
    pub idempotency_max_entries: usize,
    pub idempotency_max_bytes: usize,
}

/// `state.backend`: where budgets, rate limits and idempotency records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// In this process only (the default).
    Memory,
    /// Shared by every replica through one Redis server.
    Redis {
        /// Where the URL comes from: `redis://[user:password@]host:port[/db]`.
        url: RedisUrl,
        /// Prefix of every key. Default `tidegate:`.
        prefix: String,
    },
}

/// `state.url` (in the file) or `state.url_env` (an environment variable, so a password can
/// stay in a Secret); the variable is read when `serve` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    Inline(String),
    Env(String),
}

impl RedisUrl {
    /// The URL, reading the environment for `url_env`.
    pub fn resolve(&self) -> Result<String, String> {
        let url = match self {
            Self::Inline(u) => u.clone(),
            Self::Env(var) => std::env::var(var)
                .map_err(|_| format!("state.url_env: environment variable {var} is not set"))?,
        };
        check_redis_url(&url)?;
        Ok(url)
    }
}

/// A `redis://` or `redis+unix://` URL (TLS is not compiled in).
/// The largest config file read: far above any real one (a Kubernetes ConfigMap holds at most
/// 1 MiB), so a wrong path (`/dev/zero`, a log file) fails at once instead of filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A config file's bytes, refusing more than [`MAX_CONFIG_BYTES`].
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB; is this the config file?",
            MAX_CONFIG_BYTES >> 20
        )));
    }
    Ok(bytes)
}

pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err(
            "expected a redis:// (or redis+unix://) URL; TLS (rediss://) is not supported".into()
        );
    }
    // As the Redis client will read it at start, so `check` fails what `serve` would (the
    // client's message does not repeat the URL, which may hold a password).
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("expected a redis://host:port URL the Redis client can read ({e})"))
}

/// `state.on_error`: per concern, what happens while Redis is unreachable or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnError {
    pub budgets: Policy,
    pub rate_limits: Policy,
    pub idempotency: Policy,
}

/// A shared-state failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Keep serving with this replica's own state (the default); counted in
    /// `tidegate_state_errors_total`.
    #[default]
    Local,
    /// Refuse what needs the shared state (budgets: paid targets skipped; rate limits: 429;
    /// idempotency: keyed requests get 503).
    Reject,
}

/// `logging:` — the per-request log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    /// Fraction of successful requests logged (failures always are). Default 1.0.
    pub sample_rate: f64,
    /// Put the request body and the answer (a stream's text) in the per-request log line.
    /// Default false: prompts and completions are never logged.
    pub content: bool,
}

/// Provider kinds (`providers.*.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    OpenAiCompatible,
    Anthropic,
    Mock,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI chat completions (`/chat/completions`, `data:` chunks, `[DONE]`).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`, named events, `message_stop`).
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::OpenAiCompatible => "openai_compatible",
            Self::Anthropic => "anthropic",
            Self::Mock => "mock",
        }
    }
}

/// Where a provider's API key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    None,
    Env(String),
    File(PathBuf),
}

/// Default `http2_max_streams`: RFC 9113 (§6.5.2) recommends upstreams allow at least 100
/// concurrent streams, so staying within it never queues a request behind a compliant
/// upstream's limit.
pub const HTTP2_MAX_STREAMS: u32 = 100;

/// `providers.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    /// The wire format: Anthropic for `anthropic` (and `mock` with `api: anthropic`).
    pub wire: Wire,
    /// As the provider's own SDK takes it (OpenAI-style with `/v1`). Empty for `mock`.
    pub base_url: String,
    pub key: KeySource,
    /// Extra CA certificates (PEM) trusted besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Requests one shared HTTP/2 connection to the provider carries at once, per worker
    /// thread; one more opens another connection. Default [`HTTP2_MAX_STREAMS`].
    pub http2_max_streams: u32,
    /// Accepts a trailing assistant message as a prefix to continue (used by stream resume).
    pub supports_prefill: bool,
}

/// `models.<name>` over the built-in table (`config/prices.yaml`): prices and sizes of a model.
/// Prices are micro-dollars per million tokens (the config's USD `0.15` is `150_000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub input: u64,
    pub output: u64,
    /// Prompt-cache reads; absent means they cost `input`.
    pub cached_input: Option<u64>,
    /// Context window in tokens.
    pub context: Option<u64>,
    /// Largest output the model can produce, in tokens.
    pub max_output: Option<u64>,
}

/// One step of a route's fallback chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: String,
    pub model: String,
}

/// A deterministic fallback tier (`targets` entries after the providers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreeTier {
    /// The last successful answer for the same normalized request on this route, if younger
    /// than `max_age`.
    Cache { max_age: Duration },
    /// A fixed answer text.
    Template(String),
}

impl FreeTier {
    /// The tier's name in headers and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cache { .. } => "cache",
            Self::Template(_) => "template",
        }
    }
}

/// `routes.<name>.timeouts` (all durations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (+TLS) connect. Default 2 s.
    pub connect: Duration,
    /// Until the first content byte (stream: first content delta). Default 60 s.
    pub first_token: Duration,
    /// Longest gap between stream events. Default 30 s.
    pub idle: Duration,
    /// One whole attempt, a stream's to its end (a resumed stream's from its own start).
    /// Default 300 s.
    pub attempt: Duration,
    /// The whole request, all attempts included; hard. Default 600 s.
    pub total: Duration,
}

/// `routes.<name>.retries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Extra tries on the same target after a retryable failure. Default 1.
    pub per_target: u32,
    /// Cap on attempts across the whole route. Default 3.
    pub total: u32,
    /// Base of the jittered exponential backoff between tries. Default 50 ms.
    pub backoff: Duration,
    /// Longest upstream `Retry-After` honoured on the same target. Default 2 s.
    pub max_retry_after: Duration,
}

/// `routes.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub match_models: Vec<String>,
    pub default: bool,
    /// Provider targets, in order.
    pub targets: Vec<Target>,
    /// Deterministic tiers tried, in order, when every provider target failed.
    pub free_tiers: Vec<FreeTier>,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub drop_unsupported_params: bool,
    /// `resume: auto` (default): a stream broken after the commit point is finished by
    /// continuation or splice (SPEC §5); `off`: it ends with the error event.
    pub resume: bool,
    /// `limits:` ceilings, budget and rate limits; all off by default.
    pub limits: Limits,
    /// `idempotency:` settings; `None` when the route sets `idempotency: off`.
    pub idempotency: Option<Idempotency>,
}

/// `routes.<name>.idempotency` (SPEC §7): on by default for every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency {
    /// How long a completed answer is replayed. Default 24 h.
    pub ttl: Duration,
    /// A duplicate arriving while the first still runs waits for its answer (`wait`, the
    /// default) or gets 409 `idempotency_in_flight` (`reject`).
    pub wait: bool,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(24 * 3600), wait: true }
    }
}

/// `routes.<name>.limits` (SPEC §6). Every limit is optional; absent means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Prompts counted above this many tokens are refused (400 `input_tokens_exceeded`).
    pub max_input_tokens: Option<u64>,
    /// Output tokens asked of the upstream: the client's `max_tokens` is clamped to it, and it
    /// is injected when the client sent none.
    pub max_output_tokens: Option<u64>,
    /// Largest `n` (choices) accepted.
    pub max_n: Option<u64>,
    /// Worst-case cost of one request, in micro-dollars: targets above it are skipped.
    pub max_request_usd: Option<u64>,
    /// Spend window of the route.
    pub budget: Option<crate::limits::budget::BudgetLimit>,
    /// Requests per minute.
    pub rpm: Option<std::num::NonZeroU32>,
    /// Tokens (input + allowed output) per minute.
    pub tpm: Option<std::num::NonZeroU32>,
}

impl Limits {
    /// Some limit needs the prompt's token count.
    pub fn counts_tokens(&self) -> bool {
        self.max_input_tokens.is_some() || self.tpm.is_some() || self.prices_needed()
    }

    /// Some limit needs every target's price.
    pub fn prices_needed(&self) -> bool {
        self.max_request_usd.is_some() || self.budget.is_some()
    }
}

/// `v-` + 12 hex digits of the SHA-256 of `content`.
pub fn version_of(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let mut s = String::with_capacity(14);
    s.push_str("v-");
    for b in &digest[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let content = read_capped(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        Self::from_bytes(path, &content)
    }

    /// Validates config text as if read from `path`.
    pub fn from_bytes(path: &Path, content: &[u8]) -> Result<Config, ConfigError> {
        validate::load(path, content)
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.binary_search_by(|r| r.name.as_str().cmp(name)).ok().map(|i| &self.routes[i])
    }
}
