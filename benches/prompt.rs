//! A deterministic prompt of a given size, shared by the benchmarks.

/// A prompt of about `tokens` tokens of varied English words (deterministic).
pub fn prompt_text(tokens: usize) -> String {
    const WORDS: &[&str] = &[
        "ticket",
        "customer",
        "reported",
        "that",
        "the",
        "invoice",
        "was",
        "charged",
        "twice",
        "after",
        "upgrading",
        "their",
        "plan",
        "yesterday",
        "morning",
        "support",
        "agent",
        "escalated",
        "billing",
        "team",
        "refund",
        "pending",
        "review",
        "account",
        "priority",
        "network",
        "latency",
        "dashboard",
        "shows",
        "errors",
        "since",
        "deployment",
        "of",
        "version",
        "and",
        "rollback",
        "did",
        "not",
        "help",
        "please",
        "summarize",
        "issue",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(tokens * 6);
    // These words average about 6.6 bytes a token (o200k) with their separators.
    while out.len() < tokens * 66 / 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        out.push(if x % 11 == 0 { '.' } else { ' ' });
    }
    out
}
