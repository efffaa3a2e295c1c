//! What `tidegate check` prints: a readable summary of a loaded config, and warnings about
//! settings that load but cannot do what they seem to.

use super::{Config, FreeTier, units};

impl Config {
    /// A readable summary for `tidegate check`.
    pub fn summary(&self) -> String {
        let d = units::format_duration;
        let mut out = format!("version {}", self.version);
        if let Some(l) = &self.label {
            out.push_str(&format!(" (label {l:?})"));
        }
        out.push_str(&format!(
            "\nserver: listen {} admin {} max_body {} B, max_concurrent {}, worker_threads {}\n",
            self.server.listen,
            self.server.admin_listen,
            self.server.max_body_bytes,
            self.server.max_concurrent_requests,
            self.server.worker_threads
        ));
        out.push_str("providers:\n");
        for p in self.providers.values() {
            let url = if p.base_url.is_empty() { "(in-process)" } else { p.base_url.as_str() };
            out.push_str(&format!("  {:<14} {:<18} {url}\n", p.name, p.kind.as_str()));
        }
        out.push_str("routes:\n");
        for r in &self.routes {
            let mut flags = Vec::new();
            if r.default {
                flags.push("default".to_owned());
            }
            if !r.match_models.is_empty() {
                flags.push(format!("models {}", r.match_models.join(", ")));
            }
            // The non-default switches, so a summary shows every behaviour that differs.
            if !r.resume {
                flags.push("resume off".to_owned());
            }
            if r.drop_unsupported_params {
                flags.push("drop_unsupported_params".to_owned());
            }
            out.push_str(&format!("  {}{}\n", r.name, fmt_flags(&flags)));
            for (i, t) in r.targets.iter().enumerate() {
                out.push_str(&format!("    {}. {}/{}\n", i + 1, t.provider, t.model));
            }
            for (i, tier) in r.free_tiers.iter().enumerate() {
                let n = r.targets.len() + i + 1;
                match tier {
                    FreeTier::Cache { max_age } => {
                        out.push_str(&format!("    {n}. cache (max_age {})\n", d(*max_age)))
                    }
                    FreeTier::Template(t) => {
                        out.push_str(&format!("    {n}. template ({} chars)\n", t.chars().count()))
                    }
                }
            }
            let t = &r.timeouts;
            let [conn, first, idle, att, total] =
                [t.connect, t.first_token, t.idle, t.attempt, t.total].map(d);
            out.push_str(&format!(
                "    timeouts: connect {conn} first_token {first} idle {idle} attempt {att} total {total}\n"
            ));
            let rt = &r.retries;
            let (tries, backoff, max_ra) = (rt.per_target, d(rt.backoff), d(rt.max_retry_after));
            out.push_str(&format!(
                "    retries: per_target {tries} total {} backoff {backoff} max_retry_after {max_ra}\n",
                rt.total
            ));
            let l = &r.limits;
            let usd = crate::limits::prices::format_usd;
            let mut parts: Vec<String> = Vec::new();
            let mut push = |name: &str, v: Option<String>| {
                if let Some(v) = v {
                    parts.push(format!("{name} {v}"));
                }
            };
            push("max_input_tokens", l.max_input_tokens.map(|v| v.to_string()));
            push("max_output_tokens", l.max_output_tokens.map(|v| v.to_string()));
            push("max_n", l.max_n.map(|v| v.to_string()));
            push("max_request_usd", l.max_request_usd.map(usd));
            push("budget", l.budget.map(|b| format!("{} USD per {}", usd(b.limit), d(b.per))));
            push("rpm", l.rpm.map(|v| v.to_string()));
            push("tpm", l.tpm.map(|v| v.to_string()));
            if !parts.is_empty() {
                out.push_str(&format!("    limits: {}\n", parts.join(", ")));
            }
            match r.idempotency {
                Some(i) => out.push_str(&format!(
                    "    idempotency: ttl {}, in_flight {}\n",
                    d(i.ttl),
                    if i.wait { "wait" } else { "reject" }
                )),
                None => out.push_str("    idempotency: off\n"),
            }
        }
        match &self.auth {
            Some(a) => out.push_str(&format!(
                "auth: {} key(s), clients {}\n",
                a.key_count(),
                a.names().join(", ")
            )),
            None => out.push_str("auth: off (every client is let in)\n"),
        }
        out
    }
}

impl Config {
    /// Settings that load but cannot do what they seem to: warnings for `tidegate check`.
    pub fn lint(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.routes {
            for m in &r.match_models {
                if m != &r.name && self.routes.iter().any(|o| &o.name == m) {
                    out.push(format!(
                        "routes.{}.match_models: {m:?} is the name of route {m:?}, which a request for that model selects first (SPEC §3 order): this entry never applies",
                        r.name
                    ));
                }
            }
        }
        out
    }
}

fn fmt_flags(flags: &[String]) -> String {
    if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join("; ")) }
}
