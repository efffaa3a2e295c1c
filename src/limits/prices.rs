//! Prices and money in integer micro-dollars.
//!
//! A model's prices are micro-dollars per million tokens (`0.15` USD/Mtok is `150_000`). A cost
//! is `tokens x price / 1e6` computed in 128-bit integers and rounded up once per attempt, so
//! no float ever touches a sum. The built-in table is `config/prices.yaml`, compiled in; a
//! config's `models:` entry of the same name replaces the built-in one.

use std::collections::BTreeMap;

use crate::config::ModelInfo;
use crate::config::raw::RawModel;
use crate::proxy::peek::Usage;

/// Micro-dollars in one US dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// The built-in price table, as shipped.
pub const BUILTIN_YAML: &str = include_str!("../../config/prices.yaml");

/// The built-in table parsed (a broken table fails the test suite, not a running gateway).
pub fn builtin() -> BTreeMap<String, RawModel> {
    serde_yaml_ng::from_str(BUILTIN_YAML).unwrap_or_default()
}

/// USD (a config number) as micro-dollars, if it is a finite non-negative amount.
pub fn usd_to_micros(usd: f64) -> Option<u64> {
    (0.0..1e12).contains(&usd).then(|| (usd * 1e6).round() as u64)
}

/// Micro-dollars as USD with six decimals (`x-tidegate-cost-usd`).
pub fn format_usd(micros: u64) -> String {
    // Integer `to_string` skips the formatting machinery that `format!` runs per request; the
    // fraction is printed as `1dddddd` so its six digits keep their leading zeros.
    let mut out = (micros / MICROS_PER_USD).to_string();
    out.push('.');
    out.push_str(&(micros % MICROS_PER_USD + MICROS_PER_USD).to_string()[1..]);
    out
}

/// `Σ tokens x price_per_mtok / 1e6`, rounded up to the next micro-dollar.
fn cost_of(parts: &[(u64, u64)]) -> u64 {
    let nano: u128 = parts.iter().map(|&(t, p)| u128::from(t) * u128::from(p)).sum();
    u64::try_from(nano.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl ModelInfo {
    /// What an attempt with this usage costs. `usage.input` includes the cached part.
    pub fn usage_cost(&self, u: &Usage) -> u64 {
        let cached = u.cached_input.min(u.input);
        cost_of(&[
            (u.input - cached, self.input),
            (cached, self.cached_input.unwrap_or(self.input)),
            (u.output, self.output),
        ])
    }

    /// The worst case of a request: `(input x input price + max_output x output price) x n`.
    pub fn worst_case(&self, input: u64, max_output: u64, n: u64) -> u64 {
        cost_of(&[(input, self.input), (max_output, self.output)]).saturating_mul(n.max(1))
    }

    /// The largest output to assume when neither the client nor the route limits it: the
    /// model's maximum output, else its context window minus the input.
    pub fn output_ceiling(&self, input: u64) -> Option<u64> {
        self.max_output.or_else(|| self.context.map(|c| c.saturating_sub(input)))
    }

    /// Free to call (every price zero): never held back by a budget.
    pub fn is_free(&self) -> bool {
        self.input == 0 && self.output == 0 && self.cached_input.unwrap_or(0) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(input: f64, output: f64, cached: Option<f64>) -> ModelInfo {
        ModelInfo {
            input: usd_to_micros(input).unwrap(),
            output: usd_to_micros(output).unwrap(),
            cached_input: cached.and_then(usd_to_micros),
            context: Some(128_000),
            max_output: None,
        }
    }

    #[test]
    fn arithmetic_is_exact_in_micro_dollars() {
        let m = model(0.15, 0.60, Some(0.075));
        assert_eq!(m.input, 150_000);
        // 1M input tokens at 0.15 = 150 000 micro-dollars exactly.
        let u = Usage { input: 1_000_000, output: 0, cached_input: 0 };
        assert_eq!(m.usage_cost(&u), 150_000);
        // 1000 in (400 cached) + 200 out: 600x0.15 + 400x0.075 + 200x0.60 = 90+30+120 = 240.
        let u = Usage { input: 1000, output: 200, cached_input: 400 };
        assert_eq!(m.usage_cost(&u), 240);
        // 1 token at 0.15/M = 0.15 micro-dollars: rounds up to 1.
        assert_eq!(m.usage_cost(&Usage { input: 1, output: 0, cached_input: 0 }), 1);
        // Rounded once per attempt, not per part: 3 x 0.15 + 1 x 0.60 = 1.05 -> 2.
        assert_eq!(m.usage_cost(&Usage { input: 3, output: 1, cached_input: 0 }), 2);
        assert_eq!(m.worst_case(1000, 400, 2), (150 + 240) * 2);
    }

    #[test]
    fn money_formats_with_six_decimals() {
        assert_eq!(format_usd(0), "0.000000");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(format_usd(12_345_678), "12.345678");
        assert_eq!(usd_to_micros(0.02), Some(20_000));
        assert_eq!(usd_to_micros(-1.0), None);
        assert_eq!(usd_to_micros(f64::NAN), None);
    }

    #[test]
    fn worst_output_falls_back_to_the_context_window() {
        let mut m = model(1.0, 1.0, None);
        assert_eq!(m.output_ceiling(1000), Some(127_000));
        m.max_output = Some(4096);
        assert_eq!(m.output_ceiling(1000), Some(4096));
    }

    #[test]
    fn builtin_table_parses_and_prices_are_sane() {
        let t = builtin();
        assert!(t.len() >= 20, "{}", t.len());
        for (name, m) in &t {
            assert!(usd_to_micros(m.input).is_some(), "{name}");
            assert!(m.context.is_some(), "{name} has no context window");
        }
        assert_eq!(t["gpt-4o-mini"].input, 0.15);
        assert!(t.contains_key("claude-sonnet-4-5"));
    }
}
