//! `Idempotency-Key` on the data plane (SPEC §7): claim the key before any work, replay a
//! stored answer, wait for (or refuse) a duplicate still in flight, and store the answer when
//! the request ends.
//!
//! The claim lives in the request record as a [`Capture`]; whatever way the request ends, the
//! record's drop finishes it: a complete answer that came from an upstream or a free tier (2xx,
//! or an upstream's own 4xx other than 408/409/429) is stored; anything else (a gateway error,
//! a retryable failure, a stream cut short or abandoned by its client) releases the key so a
//! retry executes. With `state.backend: redis` the record lives in Redis, so every replica
//! sees it; when Redis fails, `state.on_error.idempotency` decides: `local` falls back to this
//! replica's memory store, `reject` answers 503. Each replica also claims (and stores) its own
//! keys in its memory store, before Redis: a duplicate on the same replica is deduplicated even
//! when Redis fails during the first request, or went down after it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use tokio::time::{Instant, timeout_at};

use crate::body::Body;
use crate::config::Policy;
use crate::error::{ErrorCode, GatewayError};
use crate::idempotency::{
    Claim, Lease, StoredAnswer, WaitOutcome, client_identity, fingerprint, scope, validate_key,
};
use crate::metrics::Metrics;
use crate::runtime::{RouteRuntime, Shared};
use crate::store::redis::{self, RedisStore};

/// How many times a waiting duplicate re-claims after an owner released the key (its call
/// failed). Each wait is bounded by the request's deadline, which is what ends a long chain of
/// failing owners; this only bounds a loop that would not wait. It was 3, so the fourth of
/// four waiters behind failing owners got a 409 `in_flight` instead of its own try.
const RECLAIMS: usize = 64;
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What to do with a request after its key was looked at.
pub enum Begin {
    /// Run it (holding the key, when there is one).
    Run(Option<Capture>),
    /// Answer at once: a replay or an idempotency error.
    Answer(Response<Body>),
}

enum Owner {
    Memory(Lease),
    Redis {
        store: RedisStore,
        key: String,
        owner: String,
        ttl: Duration,
        keeper: redis::ClaimKeeper,
        /// The key's claim in this replica's own store too: a duplicate on this replica waits
        /// for it even when Redis fails meanwhile, and finds the answer while Redis is down.
        local: Lease,
    },
}

/// A claimed key and the answer being collected for it.
pub struct Capture {
    owner: Owner,
    route: String,
    metrics: std::sync::Arc<Metrics>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: BytesMut,
    pub stream: bool,
    /// The answer is whole and may be stored.
    pub storable: bool,
    cap: usize,
    over: bool,
}

impl Capture {
    /// Stream bytes as sent to the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.over || self.body.len() + bytes.len() > self.cap {
            self.over = true;
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// A non-stream response: keeps it if it may be stored.
    pub fn record_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) {
        self.status = status.as_u16();
        self.headers = kept_headers(headers);
        // A free tier's stand-in answer means the real one failed: retryable, not stored.
        let free_tier = headers
            .get("x-tidegate-fallback")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|f| f.starts_with("cache;") || f.starts_with("template;"));
        let from_upstream = headers.contains_key("x-tidegate-provider");
        self.storable = !free_tier
            && (status.is_success()
                || (from_upstream
                    && status.is_client_error()
                    && ![408, 409, 429].contains(&self.status)));
        if let Some(b) = body {
            self.push(&b);
        }
    }

    /// Stream headers, before the body runs.
    pub fn record_stream(&mut self, headers: &HeaderMap) {
        self.status = 200;
        self.stream = true;
        self.headers = kept_headers(headers);
    }

    fn count(&self, result: &str) {
        self.metrics.idempotency.with_label_values(&[&self.route, result]).inc();
    }

    /// Stores the answer or releases the key (called when the request record drops).
    pub fn finish(self) {
        let keep = self.storable && !self.over;
        self.count(if keep { "executed" } else { "released" });
        let answer = StoredAnswer {
            status: self.status,
            headers: self.headers,
            // An exact-size copy: the buffer grew by doubling, and the slack would stay
            // allocated for as long as the answer is kept.
            body: Bytes::copy_from_slice(&self.body),
            stream: self.stream,
        };
        match self.owner {
            Owner::Memory(lease) if keep => {
                lease.complete(answer);
            }
            Owner::Memory(lease) => lease.release(),
            Owner::Redis { store, key, owner, ttl, keeper, local } => {
                if keep {
                    local.complete(answer.clone());
                } else {
                    local.release();
                }
                // No renewal may follow: a late one is a no-op anyway (the record is done or
                // gone by then), but there is no reason to send it.
                drop(keeper);
                store.spawn(|store| async move {
                    let mut r = if keep {
                        store.idem_complete(&key, &owner, &answer.encode(), ttl).await
                    } else {
                        store.idem_release(&key, &owner).await
                    };
                    if keep && r.is_err() {
                        // Not stored (too slow, too large): free the key so duplicates execute
                        // rather than wait out the lease.
                        r = store.idem_release(&key, &owner).await;
                    }
                    if let Err(e) = r {
                        // The claim's short lease expires by itself; a retry then executes.
                        tracing::warn!(error = %e, "idempotency record not finished in redis");
                    }
                });
            }
        }
    }
}

/// Headers a replay repeats: the content type and tidegate's own, but not the config version
/// (the replay's own) nor the cost (a replay costs nothing).
fn kept_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| {
            *k == header::CONTENT_TYPE
                || (k.as_str().starts_with("x-tidegate-")
                    && !k.as_str().starts_with("x-tidegate-config")
                    && !k.as_str().starts_with("x-tidegate-cost"))
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

fn replay(a: &StoredAnswer) -> Response<Body> {
    let mut r = Response::new(Body::full(a.body.clone()));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    for (k, v) in &a.headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
        {
            h.insert(k, v);
        }
    }
    if a.stream {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    h.insert("x-tidegate-idempotent-replay", HeaderValue::from_static("true"));
    if !a.stream {
        h.insert("x-tidegate-cost-usd", HeaderValue::from_static("0.000000"));
    }
    r
}

fn mismatch() -> GatewayError {
    GatewayError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request; use a new key for a new request",
    )
    .with_param("Idempotency-Key")
}

fn in_flight() -> GatewayError {
    GatewayError::new(
        ErrorCode::IdempotencyInFlight,
        "a request with this Idempotency-Key is still running; retry shortly",
    )
    .with_param("Idempotency-Key")
    .with_retry_after(Duration::from_secs(1))
}

/// Who sent a request: its headers (the `Idempotency-Key`, the credential) and, with client
/// auth on, its `auth.keys` name (which scopes its keys, SPEC §7).
pub struct Caller<'a> {
    pub headers: &'a HeaderMap,
    pub client: Option<&'a str>,
}

/// Looks at the request's `Idempotency-Key` (if the route has idempotency on).
pub async fn begin(
    shared: &Shared,
    metrics: &std::sync::Arc<Metrics>,
    route: &RouteRuntime,
    caller: Caller<'_>,
    body: &[u8],
    endpoint: &str,
    deadline: Instant,
) -> Result<Begin, GatewayError> {
    let Some(cfg) = route.route.idempotency else { return Ok(Begin::Run(None)) };
    let mut sent = caller.headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(raw) = sent.next() else { return Ok(Begin::Run(None)) };
    if sent.next().is_some() {
        // Which one the client meant is unknowable: using either could replay the wrong answer.
        return Err(GatewayError::invalid(
            "bad Idempotency-Key: sent more than once; send one key per request",
            Some("Idempotency-Key"),
        ));
    }
    let key = validate_key(raw.as_bytes()).map_err(|why| {
        GatewayError::invalid(format!("bad Idempotency-Key: {why}"), Some("Idempotency-Key"))
    })?;
    let name = &route.route.name;
    let k = Keyed {
        scope: scope(&client_identity(caller.client, caller.headers), name, key),
        fp: fingerprint(body, endpoint),
        cfg,
        deadline,
        route: name,
        metrics,
    };
    let local = match k.claim_here(shared).await? {
        Ok(lease) => lease,
        Err(answer) => return Ok(answer),
    };
    if let Some(store) = &shared.state.redis {
        return k.claim_in_redis(shared, store, local).await;
    }
    Ok(Begin::Run(Some(k.capture(Owner::Memory(local), shared))))
}

/// A request's key, looked up.
struct Keyed<'a> {
    scope: [u8; 32],
    fp: [u8; 32],
    cfg: crate::config::Idempotency,
    deadline: Instant,
    route: &'a String,
    metrics: &'a std::sync::Arc<Metrics>,
}

impl Keyed<'_> {
    fn count(&self, result: &str) {
        self.metrics.idempotency.with_label_values(&[self.route, result]).inc();
    }

    fn capture(&self, owner: Owner, shared: &Shared) -> Capture {
        Capture {
            owner,
            route: self.route.clone(),
            metrics: self.metrics.clone(),
            status: 0,
            headers: Vec::new(),
            body: BytesMut::new(),
            stream: false,
            storable: false,
            cap: shared.state.idem_cap,
            over: false,
        }
    }

    /// This replica's own store first, whatever the backend: a duplicate on this replica
    /// waits here (or replays what this replica stored), even while Redis is down. `Ok(Err)`:
    /// the answer to send at once.
    async fn claim_here(&self, shared: &Shared) -> Result<Result<Lease, Begin>, GatewayError> {
        for _ in 0..RECLAIMS {
            match shared.state.idem.claim(self.scope, self.fp, self.cfg.ttl) {
                Claim::Execute(lease) => {
                    // With Redis, whether the key is tracked is Redis's to say.
                    if !lease.is_tracked() && shared.state.redis.is_none() {
                        self.count("untracked");
                    }
                    return Ok(Ok(lease));
                }
                Claim::Replay(a) => {
                    self.count("replayed");
                    return Ok(Err(Begin::Answer(replay(&a))));
                }
                Claim::Mismatch => {
                    self.count("mismatch");
                    return Err(mismatch());
                }
                Claim::InFlight(_) if !self.cfg.wait => break,
                Claim::InFlight(w) => match timeout_at(self.deadline, w.wait()).await {
                    Ok(WaitOutcome::Done(a)) => {
                        self.count("replayed");
                        return Ok(Err(Begin::Answer(replay(&a))));
                    }
                    Ok(WaitOutcome::Released) => continue,
                    Err(_) => break,
                },
            }
        }
        self.count("in_flight");
        Err(in_flight())
    }

    /// Then Redis, which decides across replicas; when it fails, `state.on_error.idempotency`
    /// says whether this replica's claim is enough (`local`) or the request is refused.
    async fn claim_in_redis(
        &self,
        shared: &Shared,
        store: &RedisStore,
        local: Lease,
    ) -> Result<Begin, GatewayError> {
        let (key, fp) = (hex(&self.scope), hex(&self.fp));
        match in_redis(store, &key, &fp, redis::CLAIM_LEASE, self.cfg.wait, self.deadline).await {
            Ok(InRedis::Run(key, owner)) => {
                let ttl = self.cfg.ttl;
                let keeper = store.keep_claim(&key, &owner, redis::CLAIM_LEASE);
                let store = store.clone();
                let owner = Owner::Redis { store, key, owner, ttl, keeper, local };
                Ok(Begin::Run(Some(self.capture(owner, shared))))
            }
            // Another replica's answer (or refusal): this replica's claim is let go, so its
            // own duplicates ask Redis in turn.
            Ok(InRedis::Replay(a)) => {
                local.release();
                self.count("replayed");
                Ok(Begin::Answer(replay(&a)))
            }
            Ok(InRedis::Error(e)) => {
                local.release();
                let mismatched = e.code == ErrorCode::IdempotencyKeyReused;
                self.count(if mismatched { "mismatch" } else { "in_flight" });
                Err(e)
            }
            Err(e) if shared.state.failed("idempotency", &e) == Policy::Reject => {
                local.release();
                self.count("unavailable");
                Err(GatewayError::new(
                    ErrorCode::Overloaded,
                    "idempotency records are unavailable (shared state down); retry shortly",
                )
                .with_retry_after(Duration::from_secs(1)))
            }
            Err(_) => {
                if !local.is_tracked() {
                    self.count("untracked");
                }
                Ok(Begin::Run(Some(self.capture(Owner::Memory(local), shared))))
            }
        }
    }
}

/// The Redis side of [`begin`].
enum InRedis {
    Run(String, String),
    Replay(StoredAnswer),
    Error(GatewayError),
}

async fn in_redis(
    store: &RedisStore,
    key: &str,
    fp: &str,
    lease: Duration,
    wait: bool,
    deadline: Instant,
) -> Result<InRedis, redis::StoreError> {
    let owner = format!("{:032x}", fastrand::u128(..));
    for _ in 0..RECLAIMS {
        // A claim whose reply was lost may still have run: the same owner claims again (the
        // script answers "claimed" to its own owner), so one retry cannot run the request twice.
        let claim = match store.idem_claim(key, fp, &owner, lease).await {
            Ok(c) => c,
            Err(first) => match store.idem_claim(key, fp, &owner, lease).await {
                Ok(c) => c,
                Err(e) => {
                    // Either try may still land in Redis once it answers (a stall, not an
                    // outage): nobody would own that claim, so it is released then, and its
                    // short lease bounds it meanwhile.
                    if first.may_have_landed() || e.may_have_landed() {
                        store.abandon_claim(key, &owner);
                    }
                    return Err(e);
                }
            },
        };
        match claim {
            redis::Claim::Claimed => return Ok(InRedis::Run(key.to_owned(), owner)),
            redis::Claim::Existing { fingerprint, .. } if fingerprint != fp => {
                return Ok(InRedis::Error(mismatch()));
            }
            redis::Claim::Existing { done: Some(bytes), .. } => {
                match StoredAnswer::decode(&bytes) {
                    Some(a) => return Ok(InRedis::Replay(a)),
                    None => return Err(redis::StoreError("unreadable idempotency record".into())),
                }
            }
            redis::Claim::Existing { done: None, .. } if !wait => break,
            redis::Claim::Existing { done: None, .. } => match store
                .idem_wait(key, deadline)
                .await?
            {
                redis::WaitResult::Done(bytes) => match StoredAnswer::decode(&bytes) {
                    Some(a) => return Ok(InRedis::Replay(a)),
                    None => return Err(redis::StoreError("unreadable idempotency record".into())),
                },
                redis::WaitResult::Gone => continue,
                redis::WaitResult::Running => break,
            },
        }
    }
    Ok(InRedis::Error(in_flight()))
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
