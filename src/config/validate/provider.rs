//! One `providers.<name>` entry: its kind and wire, base URL, key source, TLS and connection
//! settings.

use std::path::PathBuf;

use super::{Ctx, check_name};
use crate::config::raw::RawProvider;
use crate::config::{ConfigError, KeySource, ProviderKind, ProviderSpec, Wire};

/// Checks one provider and fills in its defaults.
pub(super) fn provider(
    cx: &Ctx<'_>,
    name: &str,
    p: RawProvider,
) -> Result<ProviderSpec, ConfigError> {
    let path = format!("providers.{name}");
    check_name(cx, &path, name)?;
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "openai_compatible" => ProviderKind::OpenAiCompatible,
        "mock" => ProviderKind::Mock,
        "anthropic" => ProviderKind::Anthropic,
        other => {
            return Err(cx.err(
                format!("{path}.kind"),
                format!(
                    "unknown provider kind {other:?}; expected openai, openai_compatible, anthropic or mock"
                ),
            ));
        }
    };
    let wire = match (kind, p.api.as_deref()) {
        (ProviderKind::Anthropic, None) => Wire::Anthropic,
        (ProviderKind::Mock, None | Some("openai")) => Wire::OpenAi,
        (ProviderKind::Mock, Some("anthropic")) => Wire::Anthropic,
        (ProviderKind::Mock, Some(other)) => {
            return Err(cx.err(
                format!("{path}.api"),
                format!("expected openai or anthropic, got {other:?}"),
            ));
        }
        (_, None) => Wire::OpenAi,
        (_, Some(_)) => {
            return Err(cx.err(
                format!("{path}.api"),
                "only a mock provider takes `api`; the kind sets the wire format",
            ));
        }
    };
    let key = match (p.api_key_env, p.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(cx.err(&path, "set api_key_env or api_key_file, not both"));
        }
        (Some(e), None) => KeySource::Env(e),
        (None, Some(f)) => KeySource::File(PathBuf::from(f)),
        (None, None) => KeySource::None,
    };
    let base_url = match (kind, p.base_url) {
        (ProviderKind::Mock, None) => String::new(),
        (ProviderKind::Mock, Some(_)) => {
            return Err(cx.err(format!("{path}.base_url"), "a mock provider runs in-process and takes no base_url; point an openai_compatible provider at `tidegate mock-provider` instead"));
        }
        (ProviderKind::OpenAi, None) => "https://api.openai.com/v1".to_owned(),
        (ProviderKind::Anthropic, None) => "https://api.anthropic.com".to_owned(),
        (ProviderKind::OpenAiCompatible, None) => {
            return Err(cx.err(
                format!("{path}.base_url"),
                "expected a base URL like http://127.0.0.1:8000/v1",
            ));
        }
        (_, Some(u)) => {
            let u = u.trim_end_matches('/').to_owned();
            let uri = u.parse::<http::Uri>().ok();
            // Read as text, before any parse (one that fails would echo the URL): everything
            // between `://` and the next `/` (a `#` or `?` in a password must not hide it).
            let authority = u
                .split_once("://")
                .map_or(u.as_str(), |(_, rest)| rest.split('/').next().unwrap_or(""));
            if authority.contains('@') {
                // Not echoed: it holds a credential, and `check` output lands in CI logs.
                return Err(cx.err(
                    format!("{path}.base_url"),
                    "expected no credentials in the URL (they would not be sent); give the key with api_key_env or api_key_file",
                ));
            }
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && uri.is_some_and(|uri| {
                    // `Uri::port` reads an out-of-range port as none: look at the text.
                    let port = uri
                        .authority()
                        .and_then(|a| a.as_str().rsplit_once(':'))
                        .map(|(_, p)| p)
                        .filter(|p| !p.contains(']'));
                    uri.host().is_some_and(|h| !h.is_empty())
                        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
                });
            if !ok {
                return Err(cx.err(
                    format!("{path}.base_url"),
                    format!("expected an http:// or https:// URL, got {u:?}"),
                ));
            }
            u
        }
    };
    if kind == ProviderKind::OpenAi && p.supports_prefill == Some(true) {
        return Err(cx.err(
            format!("{path}.supports_prefill"),
            "the OpenAI API does not continue a trailing assistant message",
        ));
    }
    let http2_max_streams = match (kind, p.http2_max_streams) {
        (_, None) => crate::config::HTTP2_MAX_STREAMS,
        (ProviderKind::Mock, Some(_)) => {
            return Err(cx.err(
                format!("{path}.http2_max_streams"),
                "a mock provider runs in-process and has no connections",
            ));
        }
        (_, Some(n)) if (1..=MAX_HTTP2_STREAMS).contains(&n) => n,
        (_, Some(n)) => {
            return Err(cx.err(
                format!("{path}.http2_max_streams"),
                format!("expected 1 to {MAX_HTTP2_STREAMS} requests per connection, got {n}"),
            ));
        }
    };
    Ok(ProviderSpec {
        name: name.to_owned(),
        kind,
        base_url,
        key,
        ca_file: p.ca_file.map(PathBuf::from),
        http2_max_streams,
        supports_prefill: p
            .supports_prefill
            .unwrap_or(matches!(kind, ProviderKind::Mock | ProviderKind::Anthropic)),
        wire,
    })
}

/// The largest `http2_max_streams`: far above any upstream's stream limit (nginx allows 128,
/// hyper 200, Go 250), so a larger value is a typo.
const MAX_HTTP2_STREAMS: u32 = 10_000;
