use super::*;
use tokio::time::advance;

const P: &str = "openai";
const M: &str = "gpt-4o";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn fail_n(h: &Health, n: u32) -> Vec<Option<bool>> {
    (0..n).map(|_| h.record(P, M, Outcome::Failure)).collect()
}

fn open_skip(retry_in: Duration) -> Admission {
    Admission::Skip { reason: REASON_CIRCUIT_OPEN, retry_in }
}

fn opened() -> Health {
    let h = Health::default();
    fail_n(&h, 5);
    assert!(h.is_open(P, M));
    h
}

#[tokio::test(start_paused = true)]
async fn unknown_target_is_allowed_and_not_open() {
    let h = Health::default();
    assert_eq!(h.admit(P, M), Admission::Allow);
    assert!(!h.is_open(P, M));
}

#[tokio::test(start_paused = true)]
async fn four_failures_stay_closed_fifth_opens() {
    let h = Health::default();
    assert_eq!(fail_n(&h, 4), vec![None; 4]);
    assert!(!h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Allow);
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    assert!(h.is_open(P, M));
}

#[tokio::test(start_paused = true)]
async fn open_skips_with_retry_in_about_30s() {
    let h = opened();
    assert_eq!(h.admit(P, M), open_skip(secs(30)));
    advance(secs(10)).await;
    assert_eq!(h.admit(P, M), open_skip(secs(20)));
    // Late reports while open change nothing.
    assert_eq!(h.record(P, M, Outcome::Failure), None);
    assert_eq!(h.record(P, M, Outcome::Success), None);
    assert_eq!(h.admit(P, M), open_skip(secs(20)));
}

#[tokio::test(start_paused = true)]
async fn after_open_period_one_probe_and_others_skipped() {
    let h = opened();
    advance(secs(30)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    assert_eq!(h.admit(P, M), open_skip(secs(30)));
    assert_eq!(h.admit(P, M), open_skip(secs(30)));
    assert!(h.is_open(P, M));
}

#[tokio::test(start_paused = true)]
async fn concurrent_admits_yield_exactly_one_probe() {
    let h = std::sync::Arc::new(opened());
    advance(secs(30)).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.admit(P, M) })
        })
        .collect();
    let mut probes = 0;
    for t in tasks {
        match t.await.unwrap() {
            Admission::Probe => probes += 1,
            Admission::Skip { reason, .. } => assert_eq!(reason, REASON_CIRCUIT_OPEN),
            Admission::Allow => panic!("allowed while half-open"),
        }
    }
    assert_eq!(probes, 1);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_double_open_period_up_to_cap() {
    let h = opened();
    let mut open_for = 30;
    for expected in [60, 120, 240, 300, 300] {
        advance(secs(open_for)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        assert_eq!(h.admit(P, M), open_skip(secs(expected)));
        // Not yet: one second early still skips.
        advance(secs(expected - 1)).await;
        assert_eq!(h.admit(P, M), open_skip(secs(1)));
        open_for = 1;
    }
}

#[tokio::test(start_paused = true)]
async fn probe_success_closes_and_resets_doubling() {
    let h = opened();
    advance(secs(30)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    advance(secs(60)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    assert_eq!(h.record(P, M, Outcome::Success), Some(false));
    assert!(!h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Allow);
    // Counts were reset: 4 failures stay closed, the 5th opens again for the base 30 s.
    assert_eq!(fail_n(&h, 4), vec![None; 4]);
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    assert_eq!(h.admit(P, M), open_skip(secs(30)));
}

#[tokio::test(start_paused = true)]
async fn success_in_between_resets_consecutive_count() {
    let h = Health::default();
    for _ in 0..3 {
        fail_n(&h, 4);
        assert_eq!(h.record(P, M, Outcome::Success), None);
        // Spread over time so the rate rule (20+ requests in 10 s) never applies.
        advance(secs(11)).await;
    }
    assert!(!h.is_open(P, M));
    assert_eq!(fail_n(&h, 4), vec![None; 4]);
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
}

/// `F F (S F)x9`: 20 requests, 11 failures, never more than 2 in a row.
#[tokio::test(start_paused = true)]
async fn rate_rule_eleven_of_twenty_opens() {
    let h = Health::default();
    let mut changes = vec![h.record(P, M, Outcome::Failure), h.record(P, M, Outcome::Failure)];
    for _ in 0..9 {
        advance(Duration::from_millis(400)).await; // all within the 10 s window
        changes.push(h.record(P, M, Outcome::Success));
        changes.push(h.record(P, M, Outcome::Failure));
    }
    assert_eq!(changes.iter().filter(|c| c.is_some()).count(), 1);
    assert_eq!(changes.last(), Some(&Some(true)));
    assert!(h.is_open(P, M));
}

/// `(S F)x10`: 20 requests, 10 failures is exactly 50%, not more: stays closed.
#[tokio::test(start_paused = true)]
async fn rate_rule_ten_of_twenty_stays_closed() {
    let h = Health::default();
    for _ in 0..10 {
        advance(Duration::from_millis(400)).await;
        assert_eq!(h.record(P, M, Outcome::Success), None);
        assert_eq!(h.record(P, M, Outcome::Failure), None);
    }
    assert!(!h.is_open(P, M));
}

/// 11 failures of 19 requests is below `min_requests`; failures that fell out of the window
/// do not count either.
#[tokio::test(start_paused = true)]
async fn rate_rule_needs_min_requests_within_window() {
    let h = Health::default();
    // 19 requests, 11 failures: F F (S F)x8 S
    fail_n(&h, 2);
    for _ in 0..8 {
        h.record(P, M, Outcome::Success);
        h.record(P, M, Outcome::Failure);
    }
    h.record(P, M, Outcome::Success);
    assert!(!h.is_open(P, M));
    // Those age out; one more failure later is 1 of 1 but far below min_requests.
    advance(secs(10)).await;
    assert_eq!(h.record(P, M, Outcome::Failure), None);
    assert!(!h.is_open(P, M));
}

#[tokio::test(start_paused = true)]
async fn rate_limited_cools_down_without_counting_as_failure() {
    let h = Health::default();
    fail_n(&h, 4);
    assert_eq!(h.record(P, M, Outcome::RateLimited(secs(2))), None);
    assert!(!h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(2) });
    advance(Duration::from_millis(1500)).await;
    assert_eq!(
        h.admit(P, M),
        Admission::Skip { reason: REASON_COOLDOWN, retry_in: Duration::from_millis(500) }
    );
    advance(Duration::from_millis(500)).await;
    assert_eq!(h.admit(P, M), Admission::Allow);
    // Many 429s never open the breaker.
    for _ in 0..50 {
        assert_eq!(h.record(P, M, Outcome::RateLimited(secs(1))), None);
    }
    assert!(!h.is_open(P, M));
}

#[tokio::test(start_paused = true)]
async fn overlapping_cooldowns_keep_the_later_end() {
    let h = Health::default();
    h.record(P, M, Outcome::RateLimited(secs(5)));
    h.record(P, M, Outcome::RateLimited(secs(1)));
    assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(5) });
}

#[tokio::test(start_paused = true)]
async fn neutral_changes_nothing() {
    let h = Health::default();
    assert_eq!(h.record(P, M, Outcome::Neutral), None);
    fail_n(&h, 4);
    for _ in 0..30 {
        assert_eq!(h.record(P, M, Outcome::Neutral), None);
    }
    assert!(!h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Allow);
    // Neutral did not reset the consecutive count either.
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
}

#[tokio::test(start_paused = true)]
async fn probe_that_never_reports_expires() {
    let h = opened();
    advance(secs(30)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    // The caller is dropped and never records anything.
    advance(secs(29)).await;
    assert_eq!(h.admit(P, M), open_skip(secs(1)));
    advance(secs(1)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    assert_eq!(h.record(P, M, Outcome::Success), Some(false));
    assert_eq!(h.admit(P, M), Admission::Allow);
}

#[tokio::test(start_paused = true)]
async fn probe_without_verdict_releases_the_lease() {
    let h = opened();
    advance(secs(30)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
    assert_eq!(h.record(P, M, Outcome::Neutral), None);
    assert!(h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Probe);
    // A 429 on the probe: still open, cool down, then probe again.
    assert_eq!(h.record(P, M, Outcome::RateLimited(secs(3))), None);
    assert!(h.is_open(P, M));
    assert_eq!(h.admit(P, M), Admission::Skip { reason: REASON_COOLDOWN, retry_in: secs(3) });
    advance(secs(3)).await;
    assert_eq!(h.admit(P, M), Admission::Probe);
}

#[tokio::test(start_paused = true)]
async fn keys_are_independent() {
    let h = opened();
    assert_eq!(h.admit(P, "gpt-4o-mini"), Admission::Allow);
    assert_eq!(h.admit("azure", M), Admission::Allow);
    assert!(!h.is_open(P, "gpt-4o-mini"));
    assert!(!h.is_open("azure", M));
    for _ in 0..4 {
        h.record(P, "gpt-4o-mini", Outcome::Failure);
    }
    h.record("azure", M, Outcome::RateLimited(secs(5)));
    assert!(!h.is_open(P, "gpt-4o-mini"));
    assert!(matches!(h.admit("azure", M), Admission::Skip { reason: REASON_COOLDOWN, .. }));
    assert!(matches!(h.admit(P, M), Admission::Skip { reason: REASON_CIRCUIT_OPEN, .. }));
    assert_eq!(h.admit(P, "gpt-4o-mini"), Admission::Allow);
}

#[tokio::test(start_paused = true)]
async fn custom_config_is_honoured() {
    let h = Health::new(BreakerConfig {
        consecutive_failures: 2,
        open_for: secs(1),
        max_open_for: secs(3),
        ..BreakerConfig::default()
    });
    assert_eq!(h.config().consecutive_failures, 2);
    assert_eq!(h.record(P, M, Outcome::Failure), None);
    assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
    for expected in [2, 3, 3] {
        advance(secs(3)).await;
        assert_eq!(h.admit(P, M), Admission::Probe);
        assert_eq!(h.record(P, M, Outcome::Failure), Some(true));
        assert_eq!(h.admit(P, M), open_skip(secs(expected)));
    }
}

#[test]
fn window_bucket_count() {
    assert_eq!(window_buckets(secs(10)), 10);
    assert_eq!(window_buckets(Duration::from_millis(1500)), 2);
    assert_eq!(window_buckets(Duration::ZERO), 1);
}
