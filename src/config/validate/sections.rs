//! The process-wide sections: `server`, `state` and `circuit_breaker` (read at start; a
//! change to them needs a restart).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Ctx;
use crate::config::raw::{RawServer, RawState};
use crate::config::{ConfigError, OnError, Policy, Server, StateBackend, StateConfig};

pub(super) fn state(cx: &Ctx<'_>, s: RawState) -> Result<StateConfig, ConfigError> {
    let backend = match s.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            if s.url.is_some() || s.url_env.is_some() || s.prefix.is_some() {
                return Err(
                    cx.err("state.url", "`url`, `url_env` and `prefix` are for backend \"redis\"")
                );
            }
            StateBackend::Memory
        }
        "redis" => {
            let url = match (s.url.filter(|u| !u.trim().is_empty()), s.url_env) {
                (Some(u), None) => {
                    crate::config::check_redis_url(&u).map_err(|m| cx.err("state.url", m))?;
                    crate::config::RedisUrl::Inline(u)
                }
                (None, Some(var)) if !var.trim().is_empty() => crate::config::RedisUrl::Env(var),
                (Some(_), Some(_)) => {
                    return Err(cx.err("state.url_env", "set `url` or `url_env`, not both"));
                }
                _ => {
                    return Err(cx.err(
                        "state.url",
                        "backend \"redis\" needs `url: redis://host:port` (or `url_env: VAR`)",
                    ));
                }
            };
            StateBackend::Redis { url, prefix: s.prefix.unwrap_or_else(|| "tidegate:".into()) }
        }
        other => {
            return Err(cx.err(
                "state.backend",
                format!("unknown backend {other:?}; expected \"memory\" or \"redis\""),
            ));
        }
    };
    let dir = match s.dir {
        Some(d) if d.trim().is_empty() => {
            return Err(cx.err("state.dir", "expected a directory path"));
        }
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(crate::config::DEFAULT_STATE_DIR),
    };
    let policy = |k: &str, v: Option<String>| match v.as_deref() {
        None | Some("local") => Ok(Policy::Local),
        Some("reject") => Ok(Policy::Reject),
        Some(other) => Err(cx.err(
            format!("state.on_error.{k}"),
            format!("expected local or reject, got {other:?}"),
        )),
    };
    let on_error = OnError {
        budgets: policy("budgets", s.on_error.budgets)?,
        rate_limits: policy("rate_limits", s.on_error.rate_limits)?,
        idempotency: policy("idempotency", s.on_error.idempotency)?,
    };
    let timeout = s.timeout.map_or(Duration::from_millis(100), |d| d.0);
    if timeout.is_zero() {
        return Err(cx.err("state.timeout", "expected a duration above zero"));
    }
    let idempotency_max_entries = s.idempotency.max_entries.unwrap_or(10_000);
    let idempotency_max_bytes = s.idempotency.max_bytes.map_or(64 << 20, |b| b.0 as usize);
    if idempotency_max_entries == 0 || idempotency_max_bytes == 0 {
        return Err(cx.err("state.idempotency", "expected bounds above zero"));
    }
    Ok(StateConfig {
        backend,
        dir,
        timeout,
        on_error,
        idempotency_max_entries,
        idempotency_max_bytes,
    })
}

pub(super) fn breaker(
    cx: &Ctx<'_>,
    b: &crate::config::raw::RawBreaker,
) -> Result<crate::routing::health::BreakerConfig, ConfigError> {
    let d = crate::routing::health::BreakerConfig::default();
    let out = crate::routing::health::BreakerConfig {
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate: b.failure_rate.unwrap_or(d.failure_rate),
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        window: b.window.map_or(d.window, |w| w.0),
        open_for: b.open_for.map_or(d.open_for, |w| w.0),
        max_open_for: b.max_open_for.map_or(d.max_open_for, |w| w.0),
    };
    if out.consecutive_failures == 0 {
        return Err(cx.err("circuit_breaker.consecutive_failures", "expected at least 1"));
    }
    if !(out.failure_rate > 0.0 && out.failure_rate <= 1.0) {
        return Err(
            cx.err("circuit_breaker.failure_rate", "expected a fraction above 0 and at most 1")
        );
    }
    if out.window.is_zero() || out.open_for.is_zero() || out.max_open_for < out.open_for {
        return Err(cx.err(
            "circuit_breaker",
            "expected window and open_for above zero, and max_open_for at least open_for",
        ));
    }
    Ok(out)
}

fn addr(
    cx: &Ctx<'_>,
    path: &str,
    v: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_owned());
    s.parse().map_err(|_| cx.err(path, format!("expected an address like {default}, got {s:?}")))
}

pub(super) fn server(cx: &Ctx<'_>, s: RawServer) -> Result<Server, ConfigError> {
    let max_body = s.max_body_bytes.map_or(8 << 20, |v| v.0);
    if max_body == 0 || max_body > (1 << 30) {
        return Err(cx.err("server.max_body_bytes", "expected a size from 1B to 1GiB"));
    }
    let max_conc = s.max_concurrent_requests.unwrap_or(1024);
    if max_conc == 0 {
        return Err(cx.err("server.max_concurrent_requests", "expected at least 1"));
    }
    let workers = match s.worker_threads {
        None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        Some(n @ 1..=1024) => n as usize,
        Some(_) => return Err(cx.err("server.worker_threads", "expected a count from 1 to 1024")),
    };
    // A zero read timeout would drop every request whose head (or body) takes a second read.
    let read_timeout = |key: &str, v: Option<crate::config::units::HumanDuration>, default: u64| {
        let d = v.map_or(Duration::from_secs(default), |d| d.0);
        if d.is_zero() {
            return Err(cx.err(format!("server.{key}"), "expected a duration above zero"));
        }
        Ok(d)
    };
    let listen = addr(cx, "server.listen", s.listen, "127.0.0.1:8080")?;
    let admin_listen = addr(cx, "server.admin_listen", s.admin_listen, "127.0.0.1:9090")?;
    // The same port on one address, or on any address and another: the second bind fails.
    let clash = listen.port() == admin_listen.port()
        && (listen.ip() == admin_listen.ip()
            || listen.ip().is_unspecified()
            || admin_listen.ip().is_unspecified());
    if clash && listen.port() != 0 {
        return Err(cx.err(
            "server.admin_listen",
            format!("{admin_listen} is server.listen's address too; the two planes need their own"),
        ));
    }
    Ok(Server {
        listen,
        admin_listen,
        max_body_bytes: max_body as usize,
        max_concurrent_requests: max_conc as usize,
        shutdown_grace: s.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        shutdown_delay: s.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
        header_read_timeout: read_timeout("header_read_timeout", s.header_read_timeout, 10)?,
        body_read_timeout: read_timeout("body_read_timeout", s.body_read_timeout, 30)?,
        worker_threads: workers,
    })
}
