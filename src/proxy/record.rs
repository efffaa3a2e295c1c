//! The per-request record: timings, attempts, usage and outcome, emitted once as metrics and one
//! structured log line when the record is dropped. Dropping is the end of the request wherever
//! it ends: the handler returning, a stream task finishing, or a client disconnect cancelling
//! either, so cancelled work is still accounted.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::peek::Usage;
use super::spend::Spend;
use crate::metrics::Metrics;
use crate::runtime::{RouteSeries, TargetSeries};

/// Where per-request log lines go. They are the access log, one JSON object a line, kept apart
/// from the diagnostics that `tracing` writes to stderr.
pub enum LogSink {
    Stdout,
    Discard,
    /// Kept in memory (tests, the demo).
    Capture(Mutex<Vec<String>>),
}

impl LogSink {
    fn write(&self, line: String) {
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
            }
            Self::Discard => {}
            Self::Capture(v) => {
                v.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line)
            }
        }
    }

    /// Captured lines, for a `Capture` sink.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Capture(v) => v.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            _ => Vec::new(),
        }
    }
}

/// One upstream attempt, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptLog {
    pub provider: Arc<str>,
    pub model: Arc<str>,
    pub outcome: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub duration_ms: f64,
    /// The upstream's own id for its answer (OpenAI `x-request-id`, Anthropic `request-id`),
    /// when it sent one: for a provider's support. Never returned to the client.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "upstream_id")]
    pub upstream_request_id: Option<http::HeaderValue>,
}

/// An upstream request id as logged (printable ASCII of at most 128 bytes,
/// checked when it was taken).
fn upstream_id_text(v: &http::HeaderValue) -> &str {
    v.to_str().unwrap_or("")
}

fn upstream_id<S: serde::Serializer>(
    v: &Option<http::HeaderValue>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(upstream_id_text(v)),
        None => s.serialize_none(),
    }
}

/// Everything known about one request, filled in as it runs.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    sink: Arc<LogSink>,
    pub request_id: String,
    /// The client's `auth.keys` name, when client auth is on.
    pub client: Option<Arc<str>>,
    /// Cancelled when `server.shutdown_grace` ends: a request dropped unfinished after that
    /// was cut by the gateway, not left by its client.
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
    /// Set where a request's handling ends (its answer returned, or its stream task done):
    /// a record dropped before that was cut off mid-way.
    pub ended: bool,
    pub version: Arc<str>,
    /// Set once `version` left the history: its request series are gone and stay gone.
    retired: Arc<std::sync::atomic::AtomicBool>,
    /// The selected route's metric series (and name), once selected.
    pub route: Option<Arc<RouteSeries>>,
    pub stream: bool,
    pub start: Instant,
    /// Time spent waiting on upstream sockets.
    pub upstream_wait: Duration,
    /// Time spent waiting for the client to take stream bytes.
    pub client_wait: Duration,
    pub attempts: Vec<AttemptLog>,
    /// The attempt under way (its target and when it began), logged when it ends
    /// ([`Self::end_attempt`]): a committed stream's attempt ends with the stream. One still
    /// under way when the record drops was cut short by the client leaving.
    in_flight: Option<(Arc<TargetSeries>, Instant)>,
    /// The upstream's request id for the attempt under way, once its answer's head arrived.
    in_flight_upstream_id: Option<http::HeaderValue>,
    /// The target that answered.
    pub served_by: Option<Arc<TargetSeries>>,
    pub usage: Option<Usage>,
    pub finish: Option<String>,
    /// Final outcome label; stays `aborted` if the request is dropped unfinished.
    pub outcome: &'static str,
    pub status: u16,
    pub error: Option<String>,
    /// The fallback that served (or refused) the request, as `x-tidegate-fallback` names it.
    pub fallback: Option<String>,
    pub sample_rate: f64,
    /// `logging.content`: put the prompt and the completion in the log line.
    pub log_content: bool,
    /// The request body, when `log_content`.
    pub prompt: Option<String>,
    /// The answer (text for streams, the body otherwise), when `log_content`.
    pub completion: Option<String>,
    /// Cost and budget reservation, settled when the record drops.
    pub spend: Spend,
    /// The claimed `Idempotency-Key`, stored or released when the record drops.
    pub idem: Option<super::idem::Capture>,
    silent: bool,
}

impl RequestRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        sink: Arc<LogSink>,
        request_id: String,
        version: Arc<str>,
        retired: Arc<std::sync::atomic::AtomicBool>,
        sample_rate: f64,
    ) -> Self {
        Self {
            metrics,
            sink,
            request_id,
            client: None,
            shutdown: None,
            ended: false,
            version,
            retired,
            route: None,
            stream: false,
            start: Instant::now(),
            upstream_wait: Duration::ZERO,
            client_wait: Duration::ZERO,
            attempts: Vec::new(),
            in_flight: None,
            in_flight_upstream_id: None,
            served_by: None,
            usage: None,
            finish: None,
            outcome: "aborted",
            status: 499,
            error: None,
            fallback: None,
            sample_rate,
            log_content: false,
            prompt: None,
            completion: None,
            spend: Spend::default(),
            idem: None,
            silent: false,
        }
    }

    /// Sets the route and counts the request in flight on it until the record drops.
    pub fn set_route(&mut self, route: &Arc<RouteSeries>) {
        route.inflight.inc();
        self.route = Some(route.clone());
    }

    /// The route's name, or "" before one is selected.
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.name)
    }

    /// Notes that a fallback (`tier`, after `reason`) served or refused the request: counted in
    /// `tidegate_fallbacks_total`, named in the log line, and returned as the
    /// `x-tidegate-fallback` value.
    pub fn fallback(
        &mut self,
        route: &str,
        tier: &'static str,
        reason: &'static str,
    ) -> Option<http::HeaderValue> {
        self.metrics.fallbacks.with_label_values(&[route, tier, reason]).inc();
        let value = format!("{tier};reason={reason}");
        let header = http::HeaderValue::from_str(&value).ok();
        self.fallback = Some(value);
        header
    }

    /// Moves the record out (to a stream task), leaving a placeholder that emits nothing.
    pub fn take(&mut self) -> RequestRecord {
        let mut placeholder = RequestRecord::new(
            self.metrics.clone(),
            self.sink.clone(),
            String::new(),
            self.version.clone(),
            self.retired.clone(),
            1.0,
        );
        placeholder.silent = true;
        std::mem::replace(self, placeholder)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// An attempt on `series` begins now.
    pub fn begin_attempt(&mut self, series: &Arc<TargetSeries>) {
        self.in_flight = Some((series.clone(), Instant::now()));
        self.in_flight_upstream_id = None;
    }

    /// The upstream's own request id for the attempt under way, logged when it ends.
    pub fn upstream_request_id(&mut self, id: Option<http::HeaderValue>) {
        self.in_flight_upstream_id = id;
    }

    /// The attempt under way, if any: its target.
    pub fn attempt_in_flight(&self) -> Option<&Arc<TargetSeries>> {
        self.in_flight.as_ref().map(|(s, _)| s)
    }

    /// Ends the attempt under way (if any) and records it, with its whole duration.
    pub fn end_attempt(
        &mut self,
        outcome: &'static str,
        reason: &'static str,
        status: Option<u16>,
        detail: String,
    ) {
        let Some((series, started)) = self.in_flight.take() else { return };
        let log = AttemptLog {
            provider: series.provider.clone(),
            model: series.model.clone(),
            outcome,
            reason,
            status,
            detail,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            upstream_request_id: self.in_flight_upstream_id.take(),
        };
        self.attempt(&series, log);
    }

    /// Records one attempt in the log and its metrics.
    fn attempt(&mut self, series: &TargetSeries, log: AttemptLog) {
        // The common case's series is held ready; any other (a resumed stream's finishing
        // attempt is ok/stream_resume) is looked up.
        if log.outcome == "ok" && log.reason == "ok" {
            series.attempts_ok.inc();
        } else {
            let labels = [&*log.provider, &*log.model, log.outcome, log.reason];
            self.metrics.upstream_attempts.with_label_values(&labels).inc();
        }
        series.duration.observe(log.duration_ms / 1000.0);
        self.attempts.push(log);
    }

    /// The request's cost (micro-dollars, estimated?), fixed once computed.
    pub fn cost(&mut self) -> (u64, bool) {
        self.spend.cost(self.served_by.as_deref(), self.usage.as_ref())
    }

    /// Answer cut by its output limit (OpenAI `length`, Anthropic `max_tokens`).
    fn truncated(&self) -> bool {
        matches!(self.finish.as_deref(), Some("length" | "max_tokens"))
    }

    fn emit(&mut self) {
        if self.silent {
            return;
        }
        if let Some(c) = self.idem.take() {
            c.finish();
        }
        // Dropped before its handling ended, once the shutdown grace had ended: the gateway
        // cut it (its connection closed as the process exits), not the client. A stream that
        // had begun (a 200 went out) is a stream cut by the gateway; anything else, unanswered.
        let cut = !self.ended && self.shutdown.as_ref().is_some_and(|s| s.is_cancelled());
        if cut && self.stream && self.served_by.is_some() {
            self.outcome = "stream_error";
            self.status = 200;
            self.error = Some("stream cut: server.shutdown_grace ended".to_owned());
            let route = self.route_name().to_owned();
            let labels = [route.as_str(), "gateway", "shutdown"];
            self.metrics.stream_aborts.with_label_values(&labels).inc();
        } else if cut {
            self.outcome = "aborted";
            self.status = 503;
            self.error = Some("cut unanswered: server.shutdown_grace ended".to_owned());
        }
        if let Some((_, started)) = &self.in_flight {
            // The client left (or the shutdown cut the request) while an upstream call was
            // under way (the call was cancelled with it). Before a stream began, that whole
            // wait was the upstream's.
            if self.served_by.is_none() {
                self.upstream_wait += started.elapsed();
                if self.stream {
                    let route = self.route_name().to_owned();
                    let labels = if cut {
                        [route.as_str(), "gateway", "shutdown"]
                    } else {
                        [route.as_str(), "client", "disconnect"]
                    };
                    self.metrics.stream_aborts.with_label_values(&labels).inc();
                }
            }
            let reason = if cut { "shutdown" } else { "client_gone" };
            self.end_attempt("aborted", reason, None, String::new());
        }
        let (cost, cost_estimated) = self.cost();
        // Earlier attempts settled (and counted) their own share when they ended.
        let current = cost.saturating_sub(self.spend.prior());
        if let Some(held) = self.spend.held.take() {
            held.settle(current, self.route.as_deref());
        }
        if let Some(t) = &self.served_by
            && current > 0
        {
            t.cost.inc_by(current);
        }
        let total = self.start.elapsed();
        let overhead = total.saturating_sub(self.upstream_wait).saturating_sub(self.client_wait);
        match (&self.route, self.outcome) {
            (Some(r), "ok") => r.ok.inc(),
            (Some(r), "fallback") => r.fallback.inc(),
            (_, _) if self.retired.load(std::sync::atomic::Ordering::Relaxed) => {}
            (r, outcome) => {
                let name = r.as_ref().map_or("", |r| &r.name);
                self.metrics.requests.with_label_values(&[name, outcome, &self.version]).inc();
            }
        }
        if let Some(r) = &self.route {
            r.inflight.dec();
            r.duration.observe(total.as_secs_f64());
            r.overhead.observe(overhead.as_secs_f64());
        }
        // The tokens charged: reported, or estimated like the cost where none were.
        if let (Some(t), Some(u)) = (&self.served_by, self.spend.answered_usage()) {
            // Attempts a resume closed, and failed ones, were counted for their own targets.
            let prior = self.spend.prior_usage();
            t.input_tokens.inc_by(u.input.saturating_sub(prior.input));
            t.output_tokens.inc_by(u.output.saturating_sub(prior.output));
            t.cached_tokens.inc_by(u.cached_input.saturating_sub(prior.cached_input));
            if self.truncated() {
                t.truncations.inc();
            }
        }
        let ok = matches!(self.outcome, "ok" | "fallback");
        if ok && self.sample_rate < 1.0 && fastrand::f64() >= self.sample_rate {
            return;
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let billed = self.spend.billed_usage();
        let line = LogLine {
            ts,
            request_id: &self.request_id,
            client: self.client.as_deref(),
            route: self.route_name(),
            config_version: &self.version,
            outcome: self.outcome,
            status: self.status,
            stream: self.stream,
            provider: self.served_by.as_ref().map(|s| &*s.provider),
            model: self.served_by.as_ref().map(|s| &*s.model),
            attempts: &self.attempts,
            input_tokens: billed.map(|u| u.input),
            output_tokens: billed.map(|u| u.output),
            cached_input_tokens: billed.map(|u| u.cached_input),
            finish_reason: self.finish.as_deref(),
            truncated: self.truncated(),
            cost_usd: crate::limits::prices::format_usd(cost),
            cost_estimated,
            duration_ms: total.as_secs_f64() * 1000.0,
            overhead_ms: overhead.as_secs_f64() * 1000.0,
            error: self.error.as_deref(),
            fallback: self.fallback.as_deref(),
            prompt: self.prompt.as_deref(),
            completion: self.completion.as_deref(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            self.sink.write(json);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.emit();
    }
}

#[derive(Serialize)]
struct LogLine<'a> {
    ts: f64,
    request_id: &'a str,
    /// The `auth.keys` name of the client, when client auth is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    route: &'a str,
    config_version: &'a str,
    outcome: &'static str,
    status: u16,
    stream: bool,
    provider: Option<&'a str>,
    model: Option<&'a str>,
    attempts: &'a [AttemptLog],
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cached_input_tokens: Option<u64>,
    finish_reason: Option<&'a str>,
    truncated: bool,
    /// Settled cost of all attempts, USD with six decimals.
    cost_usd: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cost_estimated: bool,
    duration_ms: f64,
    overhead_ms: f64,
    error: Option<&'a str>,
    /// `x-tidegate-fallback`'s value, when a fallback served or refused the request.
    fallback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion: Option<&'a str>,
}
