//! The request-side half of idempotency: key validation, client identity, scope, fingerprint.
//!
//! Everything here is a pure function of the request, so the same request always maps to the
//! same store entry, whatever backend holds it.
//!
//! - **Scope** hashes identity, route and key with a length prefix on each part (and a domain
//!   tag), so no choice of parts can collide with another by shifting bytes between them:
//!   `("ab", "c")` and `("a", "bc")` are different scopes.
//! - **Fingerprint** hashes the endpoint plus the request body in canonical form: parsed as JSON
//!   and re-serialized with object keys sorted (explicitly, so it does not depend on whether
//!   some dependency turns on serde_json's `preserve_order`) and no whitespace. Key order,
//!   whitespace and string escapes (`"\u0041"` vs `"A"`) therefore do not matter; number
//!   spelling does (`1` and `1.0` differ), as serde_json keeps them apart. A body that is not
//!   JSON is hashed as raw bytes, under a different tag so it cannot collide with a JSON one.
//!   Parsing is protected by serde_json's recursion limit (128); the canonical writer uses an
//!   explicit stack, so even a maximally deep value costs no native stack.

use std::io::{self, Write};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest accepted `Idempotency-Key`, in characters (= bytes: the key is ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// Checks an `Idempotency-Key` header value: 1–255 printable ASCII characters (0x20–0x7E).
///
/// Returns the key as `&str`, or a message saying what is wrong (for a 400 `invalid_request`
/// with `param: Idempotency-Key`).
pub fn validate_key(raw: &[u8]) -> Result<&str, &'static str> {
    if raw.is_empty() {
        return Err("Idempotency-Key must not be empty (1-255 printable ASCII characters)");
    }
    if raw.len() > MAX_KEY_LEN {
        return Err("Idempotency-Key is longer than 255 characters");
    }
    if let Some(&b) = raw.iter().find(|b| !(0x20..=0x7E).contains(*b)) {
        return Err(if b.is_ascii() {
            "Idempotency-Key contains a control character (only printable ASCII 0x20-0x7E allowed)"
        } else {
            "Idempotency-Key contains a non-ASCII byte (only printable ASCII 0x20-0x7E allowed)"
        });
    }
    std::str::from_utf8(raw).map_err(|_| "Idempotency-Key is not valid ASCII")
}

/// The client identity that scopes idempotency keys.
///
/// - the configured `auth.keys` name when client auth identified the client (`auth_name`);
/// - else `sha256:` + the lowercase hex SHA-256 of the credential the client sent: the
///   `Authorization` value with a `Bearer ` scheme stripped (so the same key sent as
///   `Authorization: Bearer k` or `x-api-key: k` is one identity), else `x-api-key`;
/// - else `anonymous`.
///
/// When client auth is enabled every accepted client has a name, so configured names never
/// share a namespace with the hashed or anonymous forms. The credential itself is never
/// returned, only its hash.
pub fn client_identity(auth_name: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(name) = auth_name {
        return name.to_owned();
    }
    let from_authorization = headers.get(AUTHORIZATION).map(|v| strip_bearer(v.as_bytes()));
    let from_api_key = headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii());
    let credential =
        [from_authorization, from_api_key].into_iter().flatten().find(|c| !c.is_empty());
    match credential {
        Some(c) => {
            let mut s = String::with_capacity(7 + 64);
            s.push_str("sha256:");
            push_hex(&mut s, &Sha256::digest(c));
            s
        }
        None => "anonymous".to_owned(),
    }
}

fn strip_bearer(v: &[u8]) -> &[u8] {
    crate::config::auth::bearer_token(v).unwrap_or_else(|| v.trim_ascii())
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xF)]));
    }
}

/// Feeds one length-prefixed part into a hash, so parts cannot bleed into each other.
fn update_part(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_le_bytes());
    h.update(part);
}

/// The store key of an idempotency key: SHA-256 over identity, route and key, each
/// length-prefixed, under a versioned domain tag.
pub fn scope(identity: &str, route: &str, key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    update_part(&mut h, b"tidegate.idempotency.scope.v1");
    update_part(&mut h, identity.as_bytes());
    update_part(&mut h, route.as_bytes());
    update_part(&mut h, key.as_bytes());
    h.finalize().into()
}

/// The request's fingerprint: SHA-256 over `endpoint` and the canonical JSON of `body` (sorted
/// keys, no whitespace), or over the raw bytes if `body` is not JSON. The same body on
/// different endpoints (chat vs messages vs embeddings) gives different fingerprints.
pub fn fingerprint(body: &[u8], endpoint: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    update_part(&mut h, b"tidegate.idempotency.fingerprint.v1");
    update_part(&mut h, endpoint.as_bytes());
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let mut w = HashWriter(h.clone());
        w.0.update(b"J");
        // Writing into a hasher cannot fail; on the impossible error, fall back to raw bytes.
        if write_canonical(&value, &mut w).is_ok() {
            return w.0.finalize().into();
        }
    }
    h.update(b"R");
    h.update(body);
    h.finalize().into()
}

/// An `io::Write` that feeds a SHA-256, so the canonical form is hashed without buffering it.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One pending step of the canonical writer.
enum Step<'a> {
    Value(&'a Value),
    /// An object key, written as `"key":`.
    Key(&'a str),
    Punct(&'static [u8]),
}

/// Writes `value` as compact JSON with object keys sorted at every level, iteratively.
fn write_canonical<W: Write>(value: &Value, w: &mut W) -> io::Result<()> {
    let mut stack = vec![Step::Value(value)];
    while let Some(step) = stack.pop() {
        match step {
            Step::Punct(p) => w.write_all(p)?,
            Step::Key(k) => {
                serde_json::to_writer(&mut *w, k)?;
                w.write_all(b":")?;
            }
            Step::Value(Value::Array(items)) => {
                w.write_all(b"[")?;
                stack.push(Step::Punct(b"]"));
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push(Step::Value(item));
                    if i > 0 {
                        stack.push(Step::Punct(b","));
                    }
                }
            }
            Step::Value(Value::Object(map)) => {
                w.write_all(b"{")?;
                stack.push(Step::Punct(b"}"));
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (i, (k, v)) in entries.into_iter().enumerate().rev() {
                    stack.push(Step::Value(v));
                    stack.push(Step::Key(k));
                    if i > 0 {
                        stack.push(Step::Punct(b","));
                    }
                }
            }
            // Scalars: serde_json's own compact form (no recursion below a scalar).
            Step::Value(scalar) => serde_json::to_writer(&mut *w, scalar)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn canonical(s: &str) -> String {
        let v: Value = serde_json::from_str(s).unwrap();
        let mut out = Vec::new();
        write_canonical(&v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn key_validation_edge_cases() {
        assert!(validate_key(b"").unwrap_err().contains("empty"));
        assert_eq!(validate_key(b"a").unwrap(), "a");
        assert_eq!(validate_key(b" ~ printable ~ ").unwrap(), " ~ printable ~ ");
        let k255 = "k".repeat(255);
        assert_eq!(validate_key(k255.as_bytes()).unwrap(), k255);
        let k256 = "k".repeat(256);
        assert!(validate_key(k256.as_bytes()).unwrap_err().contains("255"));
        assert!(validate_key("clé".as_bytes()).unwrap_err().contains("non-ASCII"));
        assert!(validate_key(&[b'a', 0xFF]).unwrap_err().contains("non-ASCII"));
        for bad in [&b"a\tb"[..], b"a\nb", b"\0", b"a\x7f", b"\x1f"] {
            assert!(validate_key(bad).unwrap_err().contains("control"), "{bad:?}");
        }
    }

    #[test]
    fn identity_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(client_identity(None, &h), "anonymous");
        assert_eq!(client_identity(Some("team-a"), &h), "team-a");

        h.insert("x-api-key", HeaderValue::from_static("sk-1"));
        let by_api_key = client_identity(None, &h);
        let expected = format!("sha256:{}", {
            let mut s = String::new();
            push_hex(&mut s, &Sha256::digest(b"sk-1"));
            s
        });
        assert_eq!(by_api_key, expected);
        assert_eq!(by_api_key.len(), 7 + 64);

        // Authorization wins over x-api-key; the Bearer scheme is not part of the credential.
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-2"));
        let by_auth = client_identity(None, &h);
        assert_ne!(by_auth, by_api_key);
        let mut only_key = HeaderMap::new();
        only_key.insert("x-api-key", HeaderValue::from_static("sk-2"));
        assert_eq!(by_auth, client_identity(None, &only_key));
        let mut lower = HeaderMap::new();
        lower.insert(AUTHORIZATION, HeaderValue::from_static("bearer sk-2"));
        assert_eq!(by_auth, client_identity(None, &lower));

        // The configured name wins over any credential; credentials never appear in clear.
        assert_eq!(client_identity(Some("team-a"), &h), "team-a");
        assert!(!by_auth.contains("sk-2"));

        // An empty credential counts as none; other schemes are hashed whole.
        let mut empty = HeaderMap::new();
        empty.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(client_identity(None, &empty), "anonymous");
        empty.insert("x-api-key", HeaderValue::from_static("sk-2"));
        assert_eq!(client_identity(None, &empty), by_auth);
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic sk-2"));
        assert_ne!(client_identity(None, &basic), by_auth);
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Bearersk-2"));
        assert_ne!(client_identity(None, &basic), by_auth);
    }

    #[test]
    fn scope_parts_do_not_bleed() {
        assert_ne!(scope("ab", "c", "k"), scope("a", "bc", "k"));
        assert_ne!(scope("i", "ab", "c"), scope("i", "a", "bc"));
        assert_ne!(scope("i", "r", "k"), scope("r", "i", "k"));
        assert_ne!(scope("", "", "k"), scope("k", "", ""));
        assert_eq!(scope("i", "r", "k"), scope("i", "r", "k"));
    }

    #[test]
    fn canonical_form_sorts_keys_recursively_without_whitespace() {
        assert_eq!(
            canonical(r#" { "b" : [2, {"d":4, "c":3}], "a":1, "e":{}, "f":[] } "#),
            r#"{"a":1,"b":[2,{"c":3,"d":4}],"e":{},"f":[]}"#
        );
        assert_eq!(canonical(r#""\u0041\n""#), r#""A\n""#);
        assert_eq!(canonical("null"), "null");
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let e = "/v1/chat/completions";
        let a = fingerprint(br#"{"a":1, "b":2}"#, e);
        assert_eq!(a, fingerprint(br#"{"b":2,"a":1}"#, e));
        assert_eq!(a, fingerprint(b"\n{ \"b\" : 2 ,\n \"a\" : 1 }\n", e));
        assert_eq!(
            fingerprint(br#"{"m":[{"y":1,"x":{"q":1,"p":2}}]}"#, e),
            fingerprint(br#"{"m":[{"x":{"p":2,"q":1},"y":1}]}"#, e)
        );
        assert_ne!(a, fingerprint(br#"{"a":1,"b":3}"#, e));
        // Array order is meaningful.
        assert_ne!(fingerprint(b"[1,2]", e), fingerprint(b"[2,1]", e));
    }

    #[test]
    fn fingerprint_depends_on_endpoint() {
        let body = br#"{"model":"m","input":"hi"}"#;
        let chat = fingerprint(body, "/v1/chat/completions");
        let messages = fingerprint(body, "/v1/messages");
        let embeddings = fingerprint(body, "/v1/embeddings");
        assert_ne!(chat, messages);
        assert_ne!(chat, embeddings);
        assert_ne!(messages, embeddings);
    }

    #[test]
    fn fingerprint_of_non_json_hashes_raw_bytes() {
        let e = "/v1/chat/completions";
        assert_eq!(fingerprint(b"not json {", e), fingerprint(b"not json {", e));
        assert_ne!(fingerprint(b"not json {", e), fingerprint(b"not json  {", e));
        assert_ne!(fingerprint(b"", e), fingerprint(b"", "/v1/messages"));
        assert_ne!(fingerprint(b"{\"a\":1", e), fingerprint(b"{\"a\":1}", e));
    }

    #[test]
    fn deep_values_are_fine() {
        // Deepest that serde_json parses by default, mixing arrays and objects.
        let depth = 127;
        let mut s = String::new();
        for i in 0..depth {
            s.push_str(if i % 2 == 0 { "[" } else { "{\"k\":" });
        }
        s.push('1');
        for i in (0..depth).rev() {
            s.push(if i % 2 == 0 { ']' } else { '}' });
        }
        assert!(serde_json::from_str::<Value>(&s).is_ok());
        let deep = fingerprint(s.as_bytes(), "e");
        assert_eq!(deep, fingerprint(s.as_bytes(), "e"));
        // Too deep to parse: hashed raw, still no crash.
        let too_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_ne!(fingerprint(too_deep.as_bytes(), "e"), deep);
    }
}
