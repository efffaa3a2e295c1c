//! Upstream providers: how an attempt's bytes reach a model API and come back.
//!
//! A [`Provider`] is one configured account: its spec, its credential and its transport, either
//! a pooled hyper client (rustls, keep-alive, `TCP_NODELAY`) or the in-process mock. Both return
//! an ordinary `http::Response` with an [`UpstreamBody`], so everything above this module parses
//! one wire format the same way whatever carried it.

pub mod client;
pub mod mock;
pub mod pool;

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::Full;

use crate::body::BoxError;
use crate::config::{KeySource, ProviderKind, ProviderSpec, Wire};
pub use client::HttpClient;

/// A provider credential; never printed.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every echo of the key replaced by `[redacted]`, or `None` if it has none.
    /// An upstream may echo the key inside JSON, where any character can be written as a
    /// `\u00XX` escape (HTML-safe encoders escape `/`, `+`, `=`) and `/` as `\/`: each of
    /// the key's characters may come in any of its forms, mixed. A key under 8 bytes is not
    /// looked for (it would match ordinary text by chance).
    pub fn redact(&self, text: &str) -> Option<String> {
        let key = self.expose().as_bytes();
        if key.len() < 8 {
            return None;
        }
        let bytes = text.as_bytes();
        let mut out = String::new();
        let (mut copied, mut at) = (0, 0);
        // A match begins at an ASCII byte or at the key's own first byte, so at a character
        // boundary, and ends after a whole character: the slices below are on boundaries.
        while at < bytes.len() {
            match echo_end(bytes, at, key) {
                Some(end) => {
                    out.push_str(&text[copied..at]);
                    out.push_str("[redacted]");
                    (copied, at) = (end, end);
                }
                None => at += 1,
            }
        }
        if copied == 0 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some(out)
    }
}

/// Where an echo of `key` starting at `at` ends, each key byte as itself, as `\/` for `/`, or
/// as a `\uXXXX` escape of an ASCII byte.
fn echo_end(text: &[u8], mut at: usize, key: &[u8]) -> Option<usize> {
    for &k in key {
        match text.get(at..)? {
            [b, ..] if *b == k => at += 1,
            [b'\\', b'/', ..] if k == b'/' => at += 2,
            [b'\\', b'u', hex @ ..] if k.is_ascii() => {
                let hex = hex.get(..4)?;
                let code =
                    hex.iter().try_fold(0u32, |n, d| Some(n * 16 + (*d as char).to_digit(16)?));
                if code != Some(u32::from(k)) {
                    return None;
                }
                at += 6;
            }
            _ => return None,
        }
    }
    Some(at)
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Resolves a key source now (env var or file), naming what is missing.
pub fn resolve_key(src: &KeySource) -> Result<Option<Secret>, String> {
    resolve_key_with(src, |path| std::fs::read(path))
}

/// [`resolve_key`], reading a key file through `read` (which can note what it read).
pub fn resolve_key_with(
    src: &KeySource,
    read: impl FnOnce(&std::path::Path) -> std::io::Result<Vec<u8>>,
) -> Result<Option<Secret>, String> {
    match src {
        KeySource::None => Ok(None),
        KeySource::Env(name) => match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret(v.trim().into()))),
            _ => Err(format!("environment variable {name} is not set")),
        },
        KeySource::File(path) => match read(path).map(String::from_utf8) {
            Ok(Ok(v)) if !v.trim().is_empty() => Ok(Some(Secret(v.trim().into()))),
            Ok(Ok(_)) => Err(format!("key file {} is empty", path.display())),
            Ok(Err(_)) => Err(format!("key file {} is not UTF-8 text", path.display())),
            Err(e) => Err(format!("cannot read key file {}: {e}", path.display())),
        },
    }
}

/// The body of an upstream response, whatever transport carried it.
pub enum UpstreamBody {
    Http(pool::PooledBody),
    Mock(mock::MockBody),
}

impl UpstreamBody {
    /// The answer is whole: the connection is worth keeping while the body's framing ends.
    pub fn mark_complete(&mut self) {
        if let Self::Http(b) = self {
            b.mark_complete();
        }
    }

    /// Lets go of the answer now, as dropping it would (a connection whose answer is not read
    /// to its end closes; an HTTP/2 stream is reset), leaving an empty body: a broken stream's
    /// upstream stops generating, and its connection or stream is free, before another
    /// attempt takes over.
    pub fn close(&mut self) {
        *self = Self::Http(pool::PooledBody::empty());
    }

    /// What is left of a complete answer's body, to wait out; see [`pool::PooledBody::take_tail`].
    pub fn take_tail(&mut self) -> Option<pool::Tail> {
        match self {
            Self::Http(b) => b.take_tail(),
            Self::Mock(_) => None,
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Http(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Mock(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
}

/// A transport failure before any response.
#[derive(Debug, Clone)]
pub enum SendError {
    /// The connection could not be made (includes the connect timeout), or the connect this
    /// request waited for failed or did not end within the connect timeout.
    Connect(String),
    /// The connection broke before the response headers.
    Reset(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect error: {e}"),
            Self::Reset(e) => write!(f, "connection reset before headers: {e}"),
        }
    }
}

enum Transport {
    Http(HttpTarget),
    Mock(Arc<mock::MockStats>),
}

/// Where an HTTP provider's requests go, parsed once rather than per request.
struct HttpTarget {
    base: String,
    /// The endpoints of this provider's wire, parsed from `base` + path.
    destinations: Vec<(&'static str, client::Destination)>,
}

impl HttpTarget {
    fn new(base: &str, wire: Wire) -> Self {
        let paths: &[&'static str] = match wire {
            Wire::OpenAi => &["/chat/completions", "/embeddings"],
            Wire::Anthropic => &["/v1/messages"],
        };
        let destinations = paths
            .iter()
            .filter_map(|p| client::Destination::parse(&format!("{base}{p}")).ok().map(|d| (*p, d)))
            .collect();
        Self { base: base.to_owned(), destinations }
    }

    fn destination(&self, path: &str) -> Result<Cow<'_, client::Destination>, String> {
        match self.destinations.iter().find(|(p, _)| *p == path) {
            Some((_, d)) => Ok(Cow::Borrowed(d)),
            None => {
                let mut url = String::with_capacity(self.base.len() + path.len());
                url.push_str(&self.base);
                url.push_str(path);
                client::Destination::parse(&url).map(Cow::Owned)
            }
        }
    }
}

/// The Messages API version tidegate speaks (the Anthropic SDKs send the same).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA_HEADER: HeaderName = HeaderName::from_static("anthropic-beta");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The client's headers that go on to the upstream; nothing else the client sent does.
#[derive(Clone, Debug, Default)]
pub struct PassOn {
    /// An Anthropic client's `anthropic-beta` (the beta features its body may use): sent to
    /// Anthropic-wire targets only, and dropped when the request is translated.
    pub anthropic_beta: Option<HeaderValue>,
    /// W3C trace context (`traceparent`, `tracestate`), so the upstream call joins the
    /// client's trace.
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
}

/// One configured provider, ready to send.
pub struct Provider {
    pub spec: Arc<ProviderSpec>,
    key: Option<Secret>,
    /// The credential header, built once: `Authorization: Bearer` or Anthropic's `x-api-key`.
    auth: Option<(HeaderName, HeaderValue)>,
    transport: Transport,
}

impl Provider {
    /// Builds a provider; `mock_stats` is reused across reloads so counters persist.
    pub fn new(
        spec: Arc<ProviderSpec>,
        key: Option<Secret>,
        mock_stats: Option<Arc<mock::MockStats>>,
    ) -> Self {
        let transport = match spec.kind {
            ProviderKind::Mock => Transport::Mock(mock_stats.unwrap_or_default()),
            _ => Transport::Http(HttpTarget::new(&spec.base_url, spec.wire)),
        };
        let auth = key.as_ref().and_then(|k| {
            let (name, value) = match spec.wire {
                Wire::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", k.expose())),
                Wire::Anthropic => (HeaderName::from_static("x-api-key"), k.expose().to_owned()),
            };
            let mut v = HeaderValue::from_str(&value).ok()?;
            v.set_sensitive(true);
            Some((name, v))
        });
        Self { spec, key, auth, transport }
    }

    /// The mock's counters, for a `kind: mock` provider.
    pub fn mock_stats(&self) -> Option<&Arc<mock::MockStats>> {
        match &self.transport {
            Transport::Mock(s) => Some(s),
            Transport::Http(_) => None,
        }
    }

    /// The credential, for redacting echoes of it from upstream error text.
    pub fn key(&self) -> Option<&Secret> {
        self.key.as_ref()
    }

    /// POSTs `body` to `path` (relative to the base URL, e.g. `/chat/completions`).
    pub async fn send(
        &self,
        client: &client::Upstream,
        path: &str,
        body: Bytes,
        pass_on: &PassOn,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match &self.transport {
            Transport::Mock(stats) => match mock::respond(stats, path, &body).await {
                Ok(resp) => Ok(resp.map(UpstreamBody::Mock)),
                Err(mock::Reset) => Err(SendError::Reset("mock reset".into())),
            },
            Transport::Http(target) => {
                let dest = target.destination(path).map_err(SendError::Connect)?;
                let mut req = Request::new(Full::new(body));
                *req.method_mut() = http::Method::POST;
                let headers = req.headers_mut();
                headers.reserve(7);
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(
                    header::USER_AGENT,
                    HeaderValue::from_static(concat!("tidegate/", env!("CARGO_PKG_VERSION"))),
                );
                if let Some((name, value)) = &self.auth {
                    headers.insert(name.clone(), value.clone());
                }
                if let Some(v) = &pass_on.traceparent {
                    headers.insert(TRACEPARENT, v.clone());
                }
                if let Some(v) = &pass_on.tracestate {
                    headers.insert(TRACESTATE, v.clone());
                }
                if self.spec.wire == Wire::Anthropic {
                    headers.insert(
                        ANTHROPIC_VERSION_HEADER,
                        HeaderValue::from_static(ANTHROPIC_VERSION),
                    );
                    if let Some(beta) = &pass_on.anthropic_beta {
                        headers.insert(ANTHROPIC_BETA_HEADER, beta.clone());
                    }
                }
                Ok(client.send(&dest, req).await?.map(UpstreamBody::Http))
            }
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_as_sent_and_json_escaped_in_any_mix() {
        let key = Secret("sk-live/KEY+x==".into());
        for (text, want) in [
            ("bad key sk-live/KEY+x== here", Some("bad key [redacted] here")),
            (r"bad key sk-live\/KEY+x== here", Some("bad key [redacted] here")),
            (r"sk-live\u002fKEY\u002bx\u003d\u003d", Some("[redacted]")),
            (
                r"sk-live\u002FKEY\u002Bx\u003D\u003D and sk-live/KEY+x==",
                Some("[redacted] and [redacted]"),
            ),
            // Forms mixed, and letters escaped too.
            (r"sk-live\/KEY\u002bx=\u003D!", Some("[redacted]!")),
            (r"\u0073k-live/K\u0045Y+x==", Some("[redacted]")),
            ("é sk-live/KEY+x==é", Some("é [redacted]é")),
            (r"sk-live/KEY+x=\u003", None),
            (r"sk-live/KEY+x=\u+03d", None),
            ("sk-live/KEY+x=", None),
            ("nothing to see", None),
        ] {
            assert_eq!(key.redact(text).as_deref(), want, "{text}");
        }
        // Too short to look for.
        assert_eq!(Secret("abc".into()).redact("abc abc"), None);
    }

    #[test]
    fn http_targets_parse_their_destinations_once() {
        let t = HttpTarget::new("http://127.0.0.1:8080/v1", Wire::OpenAi);
        let d = t.destination("/chat/completions").unwrap();
        assert!(matches!(d, Cow::Borrowed(_)));
        assert_eq!(d.absolute, "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(d.origin, "/v1/chat/completions");
        assert_eq!(d.host, "127.0.0.1:8080");
        assert_eq!(t.destination("/embeddings").unwrap().origin, "/v1/embeddings");
        // A path outside the precomputed set is still built from the base.
        let d = t.destination("/other").unwrap();
        assert!(matches!(d, Cow::Owned(_)));
        assert_eq!(d.absolute, "http://127.0.0.1:8080/v1/other");
        // The scheme's default port is left out of Host, as hyper's client would.
        let t = HttpTarget::new("http://example.com:80/v1", Wire::OpenAi);
        assert_eq!(t.destination("/embeddings").unwrap().host, "example.com");
        let t = HttpTarget::new("https://api.anthropic.com", Wire::Anthropic);
        let d = t.destination("/v1/messages").unwrap();
        assert_eq!(d.absolute, "https://api.anthropic.com/v1/messages");
        assert_eq!(d.origin, "/v1/messages");
        assert_eq!(d.host, "api.anthropic.com");
        let t = HttpTarget::new("https://gw.internal:8443/v1", Wire::OpenAi);
        assert_eq!(t.destination("/embeddings").unwrap().host, "gw.internal:8443");
        let t = HttpTarget::new("https://gw.internal:443/v1", Wire::OpenAi);
        assert_eq!(t.destination("/embeddings").unwrap().host, "gw.internal");
        let t = HttpTarget::new("http://[::1]:9000/v1", Wire::OpenAi);
        assert_eq!(t.destination("/embeddings").unwrap().host, "[::1]:9000");
        // A base that is no URL fails per request, naming it.
        let t = HttpTarget::new("not a url", Wire::OpenAi);
        assert!(t.destination("/embeddings").unwrap_err().contains("not a url"));
    }
}
