//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, so a typo is a load error naming its path rather than a
//! silently ignored setting. Defaults and cross-field rules live in `validate.rs`, which turns
//! these into the runtime types of `config.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{HumanDuration, HumanSize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Optional human label for this version (travels as `x-tidegate-config-label`).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub state: RawState,
    /// Circuit-breaker settings (read at start).
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    #[serde(deserialize_with = "unique")]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default, deserialize_with = "unique")]
    pub models: BTreeMap<String, RawModel>,
    #[serde(deserialize_with = "unique")]
    pub routes: BTreeMap<String, RawRoute>,
    /// Client auth: API keys (by SHA-256) mapped to a client name and its routes. `Some(None)`
    /// is an `auth:` key with nothing under it (every entry commented out, say), which must
    /// not turn client auth off silently.
    #[serde(default, deserialize_with = "present")]
    pub auth: Option<Option<RawAuth>>,
}

/// A key that is there, even with a null value: `Some(None)`; absent: `None` (serde's default).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `auth:` — the keys clients may present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Lowercase or uppercase hex SHA-256 of a key → who holds it.
    #[serde(deserialize_with = "unique")]
    pub keys: BTreeMap<String, RawClientKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    pub name: String,
    /// The routes this key may use; absent: every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
}

/// A name map that refuses a name given twice: YAML parsers keep the last of duplicate keys,
/// which would silently drop a copy-pasted route or provider.
fn unique<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Names<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Names<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of names")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if out.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!("`{name}` is defined twice")));
                }
                let v = map.next_value()?;
                out.insert(name, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Names(std::marker::PhantomData))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body_bytes: Option<HumanSize>,
    pub max_concurrent_requests: Option<u32>,
    pub shutdown_grace: Option<HumanDuration>,
    pub shutdown_delay: Option<HumanDuration>,
    pub header_read_timeout: Option<HumanDuration>,
    pub body_read_timeout: Option<HumanDuration>,
    pub worker_threads: Option<u32>,
}

/// `state:` — where the pin, budgets, rate limits and idempotency records are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `memory` (the default) or `redis`.
    pub backend: Option<String>,
    /// Directory for the pin and the pinned version's content. Default `/var/lib/tidegate`.
    pub dir: Option<String>,
    /// Redis URL, for `backend: redis`.
    pub url: Option<String>,
    /// Environment variable holding the Redis URL (instead of `url`).
    pub url_env: Option<String>,
    /// Key prefix in Redis. Default `tidegate:`.
    pub prefix: Option<String>,
    /// Longest wait for one Redis call. Default 100ms.
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub on_error: RawOnError,
    #[serde(default)]
    pub idempotency: RawIdemStore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnError {
    pub budgets: Option<String>,
    pub rate_limits: Option<String>,
    pub idempotency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdemStore {
    pub max_entries: Option<usize>,
    pub max_bytes: Option<HumanSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub sample_rate: Option<f64>,
    pub content: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub ca_file: Option<String>,
    pub http2_max_streams: Option<u32>,
    pub supports_prefill: Option<bool>,
    /// `mock` only: the wire format it speaks (`openai` or `anthropic`).
    pub api: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub context: Option<u64>,
    pub max_output: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub match_models: Vec<String>,
    #[serde(default)]
    pub default: bool,
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retries: RawRetries,
    #[serde(default)]
    pub drop_unsupported_params: bool,
    /// `auto` (default) or `off`: finish streams broken after the commit point.
    pub resume: Option<String>,
    #[serde(default)]
    pub limits: RawLimits,
    /// `off`, or `{ttl, in_flight: wait|reject}`.
    pub idempotency: Option<RawIdempotency>,
}

#[derive(Debug)]
pub enum RawIdempotency {
    Word(String),
    Settings(RawIdemSettings),
}

/// By hand rather than `untagged`: a bad key or value inside the map is reported at its own
/// path (`routes.<r>.idempotency.ttl`), not as "did not match any variant".
impl<'de> Deserialize<'de> for RawIdempotency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawIdempotency;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("off or {ttl, in_flight}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawIdempotency::Word(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<Self::Value, A::Error> {
                let m = serde::de::value::MapAccessDeserializer::new(m);
                RawIdemSettings::deserialize(m).map(RawIdempotency::Settings)
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdemSettings {
    pub ttl: Option<HumanDuration>,
    pub in_flight: Option<String>,
}

/// `routes.<name>.limits` (SPEC §6).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_n: Option<u64>,
    pub max_request_usd: Option<f64>,
    pub budget: Option<RawBudget>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub usd: f64,
    pub per: HumanDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The cache tier: `{max_age: 1h}`.
    pub cache: Option<RawCacheTier>,
    /// The template tier: a fixed answer text.
    pub template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheTier {
    pub max_age: HumanDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<HumanDuration>,
    pub first_token: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
    pub attempt: Option<HumanDuration>,
    pub total: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub per_target: Option<u32>,
    pub total: Option<u32>,
    pub backoff: Option<HumanDuration>,
    pub max_retry_after: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<HumanDuration>,
    pub open_for: Option<HumanDuration>,
    pub max_open_for: Option<HumanDuration>,
}
