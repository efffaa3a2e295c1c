//! What tidegate reads from a client's request headers besides the route and credentials: its
//! request id, its SDK's read timeout, and the Anthropic beta flags it asks for.

use std::time::Duration;

use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::providers::{PassOn, TRACEPARENT, TRACESTATE};

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
    joined(headers.get_all(ANTHROPIC_BETA))
}

/// The client's headers that go on upstream ([`PassOn`]): the W3C trace context, and for a
/// Messages request (`messages`) its `anthropic-beta`. A `traceparent` that is not well formed
/// is not passed on, and neither is its `tracestate` (W3C Trace Context §4.3: a receiver
/// ignores both); several `tracestate` lines go on joined, as one list.
pub(super) fn pass_on(headers: &HeaderMap, messages: bool) -> PassOn {
    // Sent twice, it is invalid (which one is the parent is unknowable).
    let mut sent = headers.get_all(TRACEPARENT).iter();
    let traceparent =
        sent.next().filter(|v| traceparent_ok(v.as_bytes())).filter(|_| sent.next().is_none());
    // Looked up only with a traceparent (a hashed lookup per request otherwise).
    let tracestate = traceparent.and_then(|_| joined(headers.get_all(TRACESTATE)));
    PassOn {
        anthropic_beta: if messages { anthropic_beta(headers) } else { None },
        traceparent: traceparent.cloned(),
        tracestate,
    }
}

/// The lines of a list-valued header as one value, joined with commas.
fn joined(lines: GetAll<'_, HeaderValue>) -> Option<HeaderValue> {
    let mut it = lines.iter();
    let first = it.next()?;
    let rest: Vec<&HeaderValue> = it.collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let all = std::iter::once(first).chain(rest).map(HeaderValue::as_bytes);
    HeaderValue::from_bytes(&all.collect::<Vec<_>>().join(&b","[..])).ok()
}

/// `version "-" trace-id "-" parent-id "-" flags`: lowercase hex of 2, 32, 16 and 2 digits,
/// version not `ff`, ids not all zero; a later version may append `-...` fields.
fn traceparent_ok(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let rest_ok = if version == b"00" { v.len() == 55 } else { v.len() == 55 || v[55] == b'-' };
    hex(version)
        && version != b"ff"
        && hex(trace)
        && !zero(trace)
        && hex(parent)
        && !zero(parent)
        && hex(flags)
        && rest_ok
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

    #[test]
    fn only_a_well_formed_traceparent_goes_on_with_its_tracestate_lines_joined() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        h.append(TRACESTATE, HeaderValue::from_static("a=1"));
        h.append(TRACESTATE, HeaderValue::from_static("b=2"));
        let p = pass_on(&h, false);
        assert_eq!(p.traceparent.unwrap(), tp);
        assert_eq!(p.tracestate.unwrap(), "a=1,b=2");
        for bad in [
            "garbage",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            let p = pass_on(&h, false);
            assert!(p.traceparent.is_none() && p.tracestate.is_none(), "{bad}");
        }
        // Sent twice: invalid.
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        h.append(TRACEPARENT, HeaderValue::from_static(tp));
        assert!(pass_on(&h, false).traceparent.is_none());
        // A later version may carry more fields.
        let v1 = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz";
        h.insert(TRACEPARENT, HeaderValue::from_static(v1));
        assert!(pass_on(&h, false).traceparent.is_some());
    }
}
