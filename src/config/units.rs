//! Human units in config files: durations (`250ms`, `2s`, `5m`, `1h`) and sizes (`512KiB`,
//! `8MiB`, or plain bytes). Parsed at load time into `Duration` and `u64`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A byte size written as `<integer>[B|KiB|MiB|GiB]`, or a bare integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 250ms, 2s, 5m or 1h, got {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("expected a duration like 250ms, 2s, 5m or 1h, got {s:?}")),
    };
    Ok(d)
}

/// A duration as a config file writes it: whole hours in `h`, else whole seconds in `s` (as the
/// config reference gives defaults: `60s`, `600s`, `24h`), else `ms`; zero is `0s`. What `check`
/// prints, so it reads back as the same value.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        // Never read from a config (whole milliseconds): shown exactly.
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a size like 8MiB, got {s:?}"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("expected a size like 512KiB or 8MiB, got {s:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(HumanSize(n)),
            Raw::S(s) => parse_size(&s).map(HumanSize).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn durations_are_shown_in_config_units() {
        for (text, shown) in
            [("0s", "0s"), ("0ms", "0s"), ("250ms", "250ms"), ("1500ms", "1500ms"), ("90s", "90s")]
                .into_iter()
                .chain([("5m", "300s"), ("60m", "1h"), ("36h", "36h"), ("86400s", "24h")])
        {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), shown, "{text}");
            assert_eq!(parse_duration(shown), Ok(d), "{shown} reads back");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
