//! Timeouts before the commit point (SPEC §5): `first_token`, `idle`, `attempt` fail over to the
//! next target at exactly their limit and cancel the abandoned call; `total` (or the client's
//! own `x-stainless-read-timeout`) ends the request.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::*;

const NO_RETRY: &str = "    retries: {per_target: 0}\n";

/// The primary is called once, fails over at `first_token` (2 s) exactly, and its call is
/// cancelled; the backup answers. Stream and non-stream.
async fn fails_over_at_first_token(primary: &str) {
    for stream in [false, true] {
        let gw = gateway(&pair(
            primary,
            BACKUP,
            &format!("    timeouts: {{first_token: 2s}}\n{NO_RETRY}"),
        ));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), "target;reason=timeout_first_token");
        assert_eq!(took, secs(2), "{primary} stream={stream}");
        assert_eq!(calls(&gw, "sim", primary), 1);
        assert_eq!(cancels(&gw, "sim", primary).await, 1, "{primary} stream={stream}");
        assert_eq!(calls(&gw, "backup", BACKUP), 1);
    }
}

/// Scenario 6: no response headers at all.
#[tokio::test(start_paused = true)]
async fn s06_hang_fails_over_at_first_token() {
    fails_over_at_first_token("p+hang").await;
}

/// Scenario 7: headers at once but the first token 5 s later (stream: role chunk, then nothing;
/// non-stream: headers, then no body).
#[tokio::test(start_paused = true)]
async fn s07_slow_first_token_fails_over_at_first_token() {
    fails_over_at_first_token("p+ttft=5s").await;
}

/// Scenario 9: a stream that stalls before any content fails over at `idle` (1 s) when that is
/// shorter than `first_token` (5 s). A non-stream body that stops half-way has no idle timer
/// (`idle` is between stream events): it fails over at `attempt` (3 s).
#[tokio::test(start_paused = true)]
async fn s09_stall_before_content_fails_over_at_idle() {
    let primary = "p+stall=0";
    let extra = format!("    timeouts: {{first_token: 5s, idle: 1s, attempt: 3s}}\n{NO_RETRY}");
    for (stream, limit, reason) in
        [(true, secs(1), "timeout_idle"), (false, secs(3), "timeout_attempt")]
    {
        let gw = gateway(&pair(primary, BACKUP, &extra));
        let (got, took) = timed(&gw, stream).await;
        assert_answered(&got, stream, "backup", BACKUP, PROMPT);
        assert_eq!(got.header("x-tidegate-fallback"), format!("target;reason={reason}"));
        assert_eq!(took, limit, "stream={stream}");
        assert_eq!(calls(&gw, "sim", primary), 1);
        assert_eq!(cancels(&gw, "sim", primary).await, 1, "stream={stream}");
    }
}

/// Sends `body` carrying the SDKs' `x-stainless-read-timeout: {secs}` and measures the virtual
/// time until the whole response was read.
async fn timed_with_read_timeout(gw: &Arc<Gateway>, body: String, secs: &str) -> (Got, Duration) {
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-stainless-read-timeout", secs)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let t0 = Instant::now();
    let got = call_with(gw, req).await;
    (got, t0.elapsed())
}

/// Scenario 17: the client's `x-stainless-read-timeout: 2` caps `timeouts.total: 30s` for the
/// wait for an answer: a hanging primary (with a `first_token` of 10 s) ends in a 504 a second
/// after the client's own timeout (which, a real client, has hung up by then, so its timeout
/// is what it sees, every time); the backup is never called.
#[tokio::test(start_paused = true)]
async fn s17_client_read_timeout_caps_the_wait_for_an_answer() {
    let primary = "p+hang";
    for stream in [false, true] {
        let gw = gateway(&pair(primary, BACKUP, "    timeouts: {first_token: 10s, total: 30s}\n"));
        let (got, took) = timed_with_read_timeout(&gw, request(stream), "2").await;
        assert_eq!(took, secs(3), "stream={stream}");
        assert_eq!(got.status, 504, "{}", got.text());
        assert_eq!(got.error_code(), "deadline_exceeded");
        // It says whose deadline it was.
        let msg = got.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("the client's read timeout"), "{msg}");
        assert_eq!(calls(&gw, "sim", primary), 1);
        assert_eq!(cancels(&gw, "sim", primary).await, 1);
        assert_eq!(calls(&gw, "backup", BACKUP), 0);
    }
}

/// A read timeout bounds the gaps between a stream's bytes, not its length (as the SDKs' HTTP
/// client applies it): a 10 s stream whose chunks come a second apart is whole with a 2 s read
/// timeout, and one whose next chunk is 5 s away ends with the error event a second after the
/// client's timeout.
#[tokio::test(start_paused = true)]
async fn s17b_client_read_timeout_bounds_a_streams_gaps_not_its_length() {
    let model = "p+chunks=10+delay=1s";
    let gw = gateway(&route(&[("sim", model)], ""));
    let (got, took) = timed_with_read_timeout(&gw, request(true), "2").await;
    assert_eq!(took, secs(9));
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
    assert_eq!(got.stream_text().split(' ').count(), 10, "{}", got.text());

    let model = "p+chunks=3+delay=5s";
    let gw = gateway(&route(&[("sim", model)], "    resume: off\n"));
    let (got, took) = timed_with_read_timeout(&gw, request(true), "2").await;
    assert_eq!(took, secs(3));
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert!(!got.text().contains("[DONE]"), "{}", got.text());
}

/// A client's read timeout running out is not the target's failure: impatient clients do not
/// open the target's circuit breaker (five failures in a row would), and a patient client is
/// still served.
#[tokio::test(start_paused = true)]
async fn s17c_client_read_timeouts_do_not_open_the_breaker() {
    let model = "p+latency=4s";
    let gw = gateway(&route(&[("sim", model)], NO_RETRY));
    for _ in 0..8 {
        let (got, took) = timed_with_read_timeout(&gw, request(false), "1").await;
        assert_eq!((got.status.as_u16(), took), (504, secs(2)), "{}", got.text());
    }
    let (got, took) = timed(&gw, false).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(took, secs(4));
    assert_eq!(calls(&gw, "sim", model), 9);
}

/// A stream broken after content is resumed within the gap its client waits: with a 2 s read
/// timeout, continuations whose first words are 20 s away are given up a second after the
/// client would have, counted from the last bytes it got over every try (two slow targets do
/// not get 3 s each), and the stream ends with the error event.
#[tokio::test(start_paused = true)]
async fn s17d_a_resume_is_bounded_by_the_clients_read_timeout() {
    let targets = [
        ("sim", "p+chunks=6+cut=2"),
        ("backup", "b+chunks=6+ttft=20s"),
        ("third", "c+chunks=6+ttft=20s"),
    ];
    let gw = gateway(&route(&targets, "    retries: {per_target: 0, total: 5}\n"));
    let (got, took) = timed_with_read_timeout(&gw, request(true), "2").await;
    // 3 s after the last words the client got (the mock cuts 5 ms after its last words; the
    // primary, with no retries, is not called again).
    assert!(took >= secs(3) && took <= secs(3) + ms(10), "{took:?}: {}", got.text());
    assert_eq!(calls(&gw, "sim", "p+chunks=6+cut=2"), 1);
    assert!(got.events().last().unwrap().contains("\"error\""), "{}", got.text());
    assert_eq!(calls(&gw, "backup", "b+chunks=6+ttft=20s"), 1);
    assert_eq!(cancels(&gw, "backup", "b+chunks=6+ttft=20s").await, 1);
    // Without a read timeout the continuation is waited for (up to `idle`, 30 s) and heals it.
    let gw = gateway(&route(&targets, NO_RETRY));
    let (got, took) = timed(&gw, true).await;
    // The cut (5 ms in), then the backup's 20 s to its first words.
    assert_eq!(took, secs(20) + ms(5), "{}", got.text());
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"), "{}", got.text());
}
