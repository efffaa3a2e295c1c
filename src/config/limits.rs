//! Validation of `models:` (over the built-in price table) and `routes.<name>.limits`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use super::raw::{RawLimits, RawModel};
use super::{ConfigError, Limits, ModelInfo, Route};
use crate::limits::budget::BudgetLimit;
use crate::limits::prices::{self, usd_to_micros};

/// The built-in table with the config's `models:` entries replacing same-named ones.
pub fn models(
    raw: BTreeMap<String, RawModel>,
    err: &dyn Fn(String, String) -> ConfigError,
) -> Result<BTreeMap<String, ModelInfo>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, m) in prices::builtin() {
        if let Some(info) = model_info(&m) {
            out.insert(name, info);
        }
    }
    for (name, m) in raw {
        let path = format!("models.{name}");
        for (k, v) in
            [("input", Some(m.input)), ("output", Some(m.output)), ("cached_input", m.cached_input)]
        {
            if let Some(v) = v
                && usd_to_micros(v).is_none()
            {
                return Err(err(
                    format!("{path}.{k}"),
                    "expected a non-negative price in USD per million tokens".into(),
                ));
            }
        }
        if m.context == Some(0) || m.max_output == Some(0) {
            return Err(err(path, "`context` and `max_output` must be above zero".into()));
        }
        if let Some(info) = model_info(&m) {
            out.insert(name, info);
        }
    }
    Ok(out)
}

fn model_info(m: &RawModel) -> Option<ModelInfo> {
    Some(ModelInfo {
        input: usd_to_micros(m.input)?,
        output: usd_to_micros(m.output)?,
        cached_input: match m.cached_input {
            Some(c) => Some(usd_to_micros(c)?),
            None => None,
        },
        context: m.context,
        max_output: m.max_output,
    })
}

/// `routes.<name>.limits`, checked against the route's targets and the price table.
pub fn limits(
    path: &str,
    raw: &RawLimits,
    route: &Route,
    models: &BTreeMap<String, ModelInfo>,
    err: &dyn Fn(String, String) -> ConfigError,
) -> Result<Limits, ConfigError> {
    let path = format!("{path}.limits");
    let e = |k: String, m: String| err(format!("{path}.{k}"), m);
    let positive = |k: &str, v: Option<u64>| match v {
        Some(0) => Err(e(k.into(), "expected a number above zero".into())),
        _ => Ok(v),
    };
    let max_input_tokens = positive("max_input_tokens", raw.max_input_tokens)?;
    let max_output_tokens = positive("max_output_tokens", raw.max_output_tokens)?;
    let max_n = positive("max_n", raw.max_n)?;
    let usd = |k: &str, v: f64| match usd_to_micros(v) {
        Some(m) if m > 0 => Ok(m),
        _ => Err(e(k.into(), "expected an amount in USD above zero and under 1e12".into())),
    };
    let max_request_usd = raw.max_request_usd.map(|v| usd("max_request_usd", v)).transpose()?;
    let budget = match &raw.budget {
        None => None,
        Some(b) => {
            let per = b.per.0;
            if per < Duration::from_secs(1) || per.subsec_nanos() != 0 {
                return Err(e("budget.per".into(), "expected whole seconds, at least 1s".into()));
            }
            Some(BudgetLimit { limit: usd("budget.usd", b.usd)?, per })
        }
    };
    let rate = |k: &str, v: Option<u32>| match v {
        None => Ok(None),
        Some(n) => NonZeroU32::new(n)
            .map(Some)
            .ok_or_else(|| e(k.into(), "expected a number above zero".into())),
    };
    let out = Limits {
        max_input_tokens,
        max_output_tokens,
        max_n,
        max_request_usd,
        budget,
        rpm: rate("rpm", raw.rpm)?,
        tpm: rate("tpm", raw.tpm)?,
    };
    if out.prices_needed() {
        for (i, t) in route.targets.iter().enumerate() {
            let tpath = format!("routes.{}.targets[{i}].model", route.name);
            let Some(m) = models.get(&t.model) else {
                return Err(err(
                    tpath,
                    format!(
                        "model {:?} has no price; the route has cost limits, so add it under `models:` (input, output in USD per million tokens)",
                        t.model
                    ),
                ));
            };
            if out.max_output_tokens.is_none() && m.max_output.is_none() && m.context.is_none() {
                return Err(err(
                    tpath,
                    format!(
                        "the worst-case output of {:?} is unknown: set the route's `limits.max_output_tokens` or the model's `max_output` or `context`",
                        t.model
                    ),
                ));
            }
        }
    }
    Ok(out)
}
