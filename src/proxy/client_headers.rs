//! What tidegate reads from a client's request headers besides the route and credentials: its
//! request id, its SDK's read timeout, and the Anthropic beta flags it asks for.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::REQUEST_ID;

const READ_TIMEOUT: HeaderName = HeaderName::from_static("x-stainless-read-timeout");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// Request id: the client's if it is a sane header value, else a fresh one (`tg-` and 32 hex
/// digits).
pub(super) fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"tg-00000000000000000000000000000000";
    let n = fastrand::u128(..);
    for (i, b) in id[3..].iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    String::from_utf8_lossy(&id).into_owned()
}

/// `x-stainless-read-timeout` (seconds, from the OpenAI and Anthropic SDKs): the longest the
/// client waits for a byte of the answer. It gives up then (and hangs up, which cancels the
/// work), so tidegate stops waiting [`CLIENT_MARGIN`] later: the client's own timeout always
/// fires first, and it sees the same error, with its own retries, every time.
pub(super) fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let s = headers.get(READ_TIMEOUT)?.to_str().ok()?.trim().parse::<f64>().ok()?;
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)) + CLIENT_MARGIN)
}

/// The client's `anthropic-beta` flags: one header as sent, or several lines joined with commas
/// (the form the API takes).
pub(super) fn anthropic_beta(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(ANTHROPIC_BETA).iter();
    let first = lines.next()?;
    let rest: Vec<&HeaderValue> = lines.collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let joined = std::iter::once(first).chain(rest).map(HeaderValue::as_bytes);
    HeaderValue::from_bytes(&joined.collect::<Vec<_>>().join(&b","[..])).ok()
}

/// How long after a client's read timeout tidegate stops waiting for it (see
/// [`client_timeout`]).
const CLIENT_MARGIN: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_clients_or_fresh_hex() {
        let fresh = request_id(&HeaderMap::new());
        assert_eq!(fresh.len(), 35, "{fresh}");
        assert!(fresh.starts_with("tg-"));
        assert!(fresh[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fresh, request_id(&HeaderMap::new()));
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("client-7"));
        assert_eq!(request_id(&h), "client-7");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(request_id(&h).starts_with("tg-"));
        // The README's policy: 1 to 128 printable ASCII characters, no spaces.
        for (id, kept) in [
            ("a".repeat(128), true),
            ("a".repeat(129), false),
            ("a/b:c=d\"e\\f".into(), true),
            ("café".into(), false),
        ] {
            h.insert(REQUEST_ID, HeaderValue::from_bytes(id.as_bytes()).unwrap());
            assert_eq!(request_id(&h) == id, kept, "{id}");
        }
    }
}
