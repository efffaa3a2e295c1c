//! Micro-benchmarks of the limits path (issue #5): counting a chat prompt of about 1k and 8k
//! tokens with each vocabulary, and a budget reserve+settle and a GCRA check.
//!
//! `cargo bench --bench limits`. Prints the median and p99 of repeated runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tidegate::limits::budget::{BudgetLimit, Ledger};
use tidegate::limits::tokens::{self, Family, Shape};

#[path = "prompt.rs"]
mod prompt;

fn measure(name: &str, iters: usize, mut f: impl FnMut()) {
    for _ in 0..iters.min(100) {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
    println!("{name:<40} p50 {:>9.2} µs   p99 {:>9.2} µs", p(0.5), p(0.99));
}

fn main() {
    let load = Instant::now();
    tokens::warm(Family::O200k);
    println!("o200k vocabulary load: {:.0} ms", load.elapsed().as_secs_f64() * 1e3);
    let load = Instant::now();
    tokens::warm(Family::Cl100k);
    println!("cl100k vocabulary load: {:.0} ms", load.elapsed().as_secs_f64() * 1e3);
    for size in [1000, 8000] {
        let text = prompt::prompt_text(size);
        let body = |prefix: usize| {
            serde_json::json!({"model": "m", "messages": [
                {"role": "system", "content": "You summarize support tickets."},
                {"role": "user", "content": format!("{prefix} {text}")}
            ]})
        };
        for (fi, family) in
            [Family::O200k, Family::Cl100k, Family::Estimate].into_iter().enumerate()
        {
            let iters = if size > 2000 { 300 } else { 2000 };
            // Cold: a different prompt every time (nothing remembered).
            let bodies: Vec<_> =
                (0..iters + 100).map(|i| body(i + 100_000 * fi + 1_000_000 * size)).collect();
            let n = tokens::count(&bodies[0], Shape::Chat, family);
            let mut next = bodies.iter().cycle();
            measure(&format!("count {size}-token prompt, {family:?} ({n}), cold"), iters, || {
                let b = next.next().unwrap_or(&bodies[0]);
                std::hint::black_box(tokens::count(b, Shape::Chat, family));
            });
            // Seen before (a system prompt, the history of a conversation): remembered.
            let same = body(0);
            measure(&format!("count {size}-token prompt, {family:?}, seen before"), iters, || {
                std::hint::black_box(tokens::count(&same, Shape::Chat, family));
            });
        }
    }
    let ledger = Ledger::default();
    let limit = BudgetLimit { limit: u64::MAX / 2, per: Duration::from_secs(3600) };
    let now = Duration::from_secs(1_800_000_000);
    measure("budget reserve + settle", 100_000, || {
        let r = ledger.reserve(now, &limit, 1234).unwrap();
        ledger.settle(r, 1000);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rates = rt.block_on(async { tidegate::limits::rate::RateLimits::default() });
    let rpm =
        rt.block_on(async { rates.get("r", "rpm", std::num::NonZeroU32::new(u32::MAX).unwrap()) });
    measure("rpm check (governor GCRA)", 100_000, || {
        let _ = std::hint::black_box(rpm.check(1));
    });
}
