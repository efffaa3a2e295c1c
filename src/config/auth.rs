//! `auth:` — optional client auth (SPEC §3): the API keys clients may present, each known only
//! by its SHA-256, mapped to a client name and the routes that client may use.
//!
//! ```yaml
//! auth:
//!   keys:
//!     # printf %s "$KEY" | sha256sum
//!     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08": { name: billing, routes: [summarize] }
//!     "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752": { name: support }  # every route
//! ```
//!
//! Without `auth`, every client is let in (the sidecar default: only the pod's own app can
//! reach the loopback listener). With it, a data-plane request must carry a listed key as
//! `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>` (Anthropic SDKs), or it
//! gets 401 `unauthorized`. Keys are stored hashed, so the config file holds no secret; two
//! hashes may share a name, which is how a key is rotated without a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use super::ConfigError;
use super::raw::RawAuth;

/// The clients that may call, by the SHA-256 of their key.
#[derive(Debug)]
pub struct Auth {
    keys: HashMap<[u8; 32], Arc<Client>>,
}

/// One client: its name (scopes idempotency keys, named in the access log) and its routes.
#[derive(Debug)]
pub struct Client {
    pub name: Arc<str>,
    /// Indexed like `Config::routes`; `None`: every route.
    routes: Option<Box<[bool]>>,
}

impl Client {
    /// Whether this client may use the route at `index` in `Config::routes`.
    pub fn may_use(&self, index: usize) -> bool {
        self.routes.as_ref().is_none_or(|r| r.get(index).copied().unwrap_or(false))
    }
}

/// Why a request was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` or `x-api-key` header (or an empty one).
    Missing,
    /// A key that is not listed.
    Unknown,
}

impl Auth {
    /// The client whose key the request carries: `Authorization: Bearer <key>` first, else
    /// `x-api-key`. Only the key's hash is compared (a map lookup, so no timing signal about
    /// how much of a guessed key matched).
    pub fn identify(&self, headers: &HeaderMap) -> Result<&Arc<Client>, Refusal> {
        let bearer = headers.get(AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()));
        let api_key = headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii());
        let key = [bearer, api_key].into_iter().flatten().find(|k| !k.is_empty());
        let key = key.ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.keys.get(&digest).ok_or(Refusal::Unknown)
    }

    /// Distinct client names, sorted (for `tidegate check`).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.keys.values().map(|c| &*c.name).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// How many keys are listed.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The token of an `Authorization: Bearer <token>` value, whitespace around it trimmed (the
/// scheme name is case-insensitive, RFC 9110 §11.1); empty for a bare `Bearer`, `None` for any
/// other scheme. The one parser of it: client auth, the admin token, idempotency identities.
pub fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let (scheme, rest) = v.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && rest.first().is_none_or(u8::is_ascii_whitespace))
        .then(|| rest.trim_ascii())
}

/// Validates `auth:` against the routes (sorted by name, as in `Config::routes`).
pub(super) fn auth(
    raw: Option<Option<RawAuth>>,
    route_names: &[&str],
    err: &dyn Fn(String, String) -> ConfigError,
) -> Result<Option<Auth>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    // `auth:` with nothing under it reads as auth off; refused, so that commenting out every
    // key cannot open the gateway by accident.
    let Some(raw) = raw.filter(|r| !r.keys.is_empty()) else {
        return Err(err(
            "auth.keys".into(),
            "expected at least one key (an empty `auth` would be read as auth off; remove `auth` to turn client auth off)"
                .into(),
        ));
    };
    let mut names: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut keys = HashMap::with_capacity(raw.keys.len());
    for (hash, client) in raw.keys {
        let path = format!("auth.keys.{hash}");
        let digest = parse_sha256(&hash).ok_or_else(|| {
            err(
                path.clone(),
                "expected the key's SHA-256 as 64 hex digits (printf %s \"$KEY\" | sha256sum), not the key itself"
                    .into(),
            )
        })?;
        let name = client.name.trim();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(err(
                format!("{path}.name"),
                format!("name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        if name == "anonymous" {
            // The identity of callers without a credential (it scopes their idempotency keys).
            return Err(err(format!("{path}.name"), "the name \"anonymous\" is reserved".into()));
        }
        let routes = match client.routes {
            None => None,
            Some(list) => {
                let mut allowed = vec![false; route_names.len()].into_boxed_slice();
                for (i, r) in list.iter().enumerate() {
                    let Ok(at) = route_names.binary_search(&r.as_str()) else {
                        return Err(err(
                            format!("{path}.routes[{i}]"),
                            format!("unknown route {r:?}; defined: {}", route_names.join(", ")),
                        ));
                    };
                    allowed[at] = true;
                }
                Some(allowed)
            }
        };
        let name = names.entry(name.to_owned()).or_insert_with(|| Arc::from(name)).clone();
        // Two hashes that differ only in case are one key.
        if keys.insert(digest, Arc::new(Client { name, routes })).is_some() {
            return Err(err(
                path,
                "this key is listed twice (hex digits differ only in case)".into(),
            ));
        }
    }
    Ok(Some(Auth { keys }))
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(key: &str) -> String {
        Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_found_by_hash_from_either_header() {
        let raw: RawAuth = serde_yaml_ng::from_str(&format!(
            "keys:\n  {}: {{name: app, routes: [b]}}\n  {}: {{name: ops}}\n",
            sha("k1"),
            sha("k2").to_uppercase()
        ))
        .unwrap();
        let err = |p: String, m: String| ConfigError { file: "t".into(), path: p, message: m };
        let auth = auth(Some(Some(raw)), &["a", "b"], &err).unwrap().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(auth.identify(&h).unwrap_err(), Refusal::Missing);
        h.insert(AUTHORIZATION, "bearer  k1 ".parse().unwrap());
        let app = auth.identify(&h).unwrap();
        assert_eq!(&*app.name, "app");
        assert!(!app.may_use(0) && app.may_use(1));
        h.remove(AUTHORIZATION);
        h.insert("x-api-key", "k2".parse().unwrap());
        let ops = auth.identify(&h).unwrap();
        assert!(ops.may_use(0) && ops.may_use(1));
        h.insert("x-api-key", "k3".parse().unwrap());
        assert_eq!(auth.identify(&h).unwrap_err(), Refusal::Unknown);
        // A Basic credential is not a bearer token; nor is the bare word.
        h.remove("x-api-key");
        h.insert(AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(auth.identify(&h).unwrap_err(), Refusal::Missing);
        h.insert(AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(auth.identify(&h).unwrap_err(), Refusal::Missing);
        assert_eq!(auth.names(), ["app", "ops"]);
    }

    #[test]
    fn bad_entries_name_their_key_path() {
        let err = |p: String, m: String| ConfigError { file: "t".into(), path: p, message: m };
        let load = |y: &str| {
            let raw: RawAuth = serde_yaml_ng::from_str(y).unwrap();
            auth(Some(Some(raw)), &["a"], &err).unwrap_err()
        };
        let e = load("keys: {sk-plaintext: {name: app}}");
        assert_eq!(e.path, "auth.keys.sk-plaintext");
        assert!(e.message.contains("64 hex digits"), "{}", e.message);
        let e = load(&format!("keys: {{{}: {{name: app, routes: [nope]}}}}", sha("k")));
        assert_eq!(e.path, format!("auth.keys.{}.routes[0]", sha("k")));
        let e = load(&format!("keys: {{{}: {{name: \"a b\"}}}}", sha("k")));
        assert_eq!(e.path, format!("auth.keys.{}.name", sha("k")));
        let e = load("keys: {}");
        assert_eq!(e.path, "auth.keys");
        // `auth:` with every key commented out is not auth off.
        let e = auth(Some(None), &["a"], &err).unwrap_err();
        assert_eq!(e.path, "auth.keys");
        let e = load(&format!("keys: {{{}: {{name: anonymous}}}}", sha("k")));
        assert!(e.message.contains("reserved"), "{}", e.message);
        let e = load(&format!("keys: {{{}: {{name: a}}, {}: {{name: b}}}}", sha("k"), {
            sha("k").to_uppercase()
        }));
        assert!(e.message.contains("twice"), "{}", e.message);
    }
}
