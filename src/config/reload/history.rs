//! The version history behind `/admin/config`: entries newest first, which one is active, the
//! candidates waiting behind a pin, and how an operator's version string picks one entry.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;

/// What happened to a version when it was loaded (or last activated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Activated by a reload (or at startup, or by unpin).
    Applied,
    /// Valid, but the config was pinned: a candidate.
    Deferred,
    /// Invalid or not preparable; the running version stayed.
    Rejected,
    /// Activated by a rollback.
    RolledBack,
    /// Activated by pinning it.
    Pinned,
    /// The pinned version, restored from the state dir at startup.
    Restored,
}

/// What made tidegate look at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Startup,
    Watch,
    Sighup,
    Periodic,
    Admin,
    /// Read back from the state dir.
    State,
}

/// One entry of the history (`V` in SPEC §8).
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub label: Option<String>,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    /// The file it was read from.
    pub source: String,
    pub outcome: Outcome,
    pub trigger: Trigger,
    #[serde(skip)]
    pub(super) source_path: PathBuf,
    /// The file's bytes; `None` for a rejected version (it can never be activated).
    #[serde(skip)]
    pub(super) content: Option<Arc<[u8]>>,
    /// Was active at some point (rollback goes back to such versions only).
    #[serde(skip)]
    pub(super) was_active: bool,
}

impl VersionInfo {
    pub(super) fn of(cfg: &Config, trigger: Trigger, outcome: Outcome) -> Self {
        Self {
            version: cfg.version.clone(),
            label: cfg.label.clone(),
            loaded_at: rfc3339(SystemTime::now()),
            source: cfg.source.display().to_string(),
            outcome,
            trigger,
            source_path: cfg.source.clone(),
            content: Some(cfg.content.clone()),
            was_active: !matches!(outcome, Outcome::Deferred | Outcome::Rejected),
        }
    }

    pub(super) fn rejected(version: String, path: &Path, trigger: Trigger) -> Self {
        Self {
            version,
            label: None,
            loaded_at: rfc3339(SystemTime::now()),
            source: path.display().to_string(),
            outcome: Outcome::Rejected,
            trigger,
            source_path: path.to_owned(),
            content: None,
            was_active: false,
        }
    }
}

/// Where the pin is kept.
#[derive(Debug, Clone, Serialize)]
pub struct StateInfo {
    /// `null` when pins are kept in memory only.
    pub dir: Option<String>,
    pub persistent: bool,
    pub warning: Option<String>,
}

/// The `/admin/config` document.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigDoc {
    pub active: VersionInfo,
    pub pinned: bool,
    pub candidates: Vec<VersionInfo>,
    pub history: Vec<VersionInfo>,
    pub last_error: Option<String>,
    /// Set when the active version changes static keys (`server.*`, `state`,
    /// `circuit_breaker`) that only a
    /// restart applies.
    pub restart_required: Option<String>,
    pub state: StateInfo,
}

/// A refused admin operation: HTTP status, error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl OpError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: 400, code: "invalid_request", message: message.into() }
    }
    pub fn not_found(version: &str) -> Self {
        Self {
            status: 404,
            code: "version_not_found",
            message: format!("no version {version:?} in the history"),
        }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: 409, code, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, code: "internal", message: message.into() }
    }
}

pub(super) struct History {
    entries: VecDeque<VersionInfo>,
    pub(super) active: String,
    candidates: Vec<String>,
    /// Versions in the order they were activated, the active one last. Rollback steps back
    /// through it (not through `entries`, which is in first-load order) and drops what it
    /// rolled back from, so a version rolled away from is not rolled back to later.
    activations: Vec<String>,
    cap: usize,
}

impl History {
    pub(super) fn new(first: VersionInfo, cap: usize) -> Self {
        let active = first.version.clone();
        Self {
            entries: VecDeque::from([first]),
            activations: vec![active.clone()],
            active,
            candidates: Vec::new(),
            cap: cap.max(2),
        }
    }

    /// Startup with a persisted pin: the pinned version is active; the file's version (the
    /// first entry) waits as a candidate, unless it was already applied and rolled back from
    /// before the restart (`file_is_candidate` false), as it would be without one.
    pub(super) fn restore_pinned(&mut self, pinned: VersionInfo, file_is_candidate: bool) {
        if let Some(file) = self.entries.front_mut() {
            file.was_active = false;
            if file_is_candidate {
                file.outcome = Outcome::Deferred;
                self.candidates = vec![file.version.clone()];
            }
        }
        self.active = pinned.version.clone();
        self.activations = vec![pinned.version.clone()];
        self.entries.push_back(pinned);
    }

    pub(super) fn get(&self, version: &str) -> Option<&VersionInfo> {
        self.entries.iter().find(|e| e.version == version)
    }

    /// Adds a freshly loaded version at the front (a version seen before moves there), and
    /// returns the versions that fell out of the history to make room.
    #[must_use]
    pub(super) fn push(&mut self, mut info: VersionInfo) -> Vec<String> {
        let mut evicted = Vec::new();
        if let Some(i) = self.entries.iter().position(|e| e.version == info.version)
            && let Some(old) = self.entries.remove(i)
        {
            info.was_active |= old.was_active;
        }
        self.entries.push_front(info);
        while self.entries.len() > self.cap {
            // Never the entry just added nor the active one. Rejected files go first, then
            // candidates and other versions never active, then versions that served but are
            // no rollback target, and rollback targets last; the oldest first within each.
            let rank = |e: &VersionInfo| -> u8 {
                if self.activations.contains(&e.version) {
                    3
                } else if e.was_active {
                    2
                } else if e.content.is_some() {
                    1
                } else {
                    0
                }
            };
            let victim = (1..self.entries.len())
                .rev()
                .filter(|&i| self.entries[i].version != self.active)
                .min_by_key(|&i| rank(&self.entries[i]));
            let Some(i) = victim else { break };
            if let Some(gone) = self.entries.remove(i) {
                self.candidates.retain(|c| *c != gone.version);
                self.activations.retain(|v| *v != gone.version);
                evicted.push(gone.version);
            }
        }
        evicted
    }

    /// Makes `version` the active one. A rollback steps back to where `version` was last
    /// active (what it rolls back from stops being a rollback target); anything else is a
    /// new activation.
    pub(super) fn mark_active(&mut self, version: &str, outcome: Outcome) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.version == version) {
            e.was_active = true;
            e.outcome = outcome;
        }
        let back = self.activations.iter().rposition(|v| v == version);
        match back {
            Some(i) if outcome == Outcome::RolledBack => self.activations.truncate(i + 1),
            _ if self.activations.last().map(String::as_str) == Some(version) => {}
            _ => {
                self.activations.push(version.to_owned());
                // Bounded: every entry names a version still in the history, but the file
                // can flip between two versions forever.
                let excess = self.activations.len().saturating_sub(2 * self.cap);
                self.activations.drain(..excess);
            }
        }
        self.active = version.to_owned();
    }

    pub(super) fn add_candidate(&mut self, version: &str) {
        self.remove_candidate(version);
        self.candidates.insert(0, version.to_owned());
    }

    pub(super) fn remove_candidate(&mut self, version: &str) {
        self.candidates.retain(|c| c != version);
    }

    /// The candidates, newest first, leaving none.
    pub(super) fn take_candidates(&mut self) -> Vec<String> {
        std::mem::take(&mut self.candidates)
    }

    pub(super) fn candidates(&self) -> Vec<VersionInfo> {
        self.candidates.iter().filter_map(|v| self.get(v).cloned()).collect()
    }

    pub(super) fn entries(&self) -> Vec<VersionInfo> {
        self.entries.iter().cloned().collect()
    }

    /// The version that was active before the active one (in activation order), if it is
    /// still in the history.
    pub(super) fn previous(&self) -> Option<String> {
        self.activations
            .iter()
            .rev()
            .filter(|v| **v != self.active)
            .find(|v| self.get(v).is_some_and(|e| e.content.is_some()))
            .cloned()
    }
}

/// Finds the one valid version `wanted` names: the full version, a unique prefix of at least
/// 6 hex digits (with or without `v-`), or a unique label.
pub(super) fn resolve(h: &History, wanted: &str) -> Result<String, OpError> {
    let wanted = wanted.trim();
    if wanted.is_empty() {
        return Err(OpError::bad_request("empty version"));
    }
    if let Some(e) = h.get(wanted) {
        return match e.content {
            Some(_) => Ok(e.version.clone()),
            None => {
                Err(OpError::bad_request(format!("{wanted} was rejected; it cannot be pinned")))
            }
        };
    }
    let valid = || h.entries.iter().filter(|e| e.content.is_some());
    let hex = wanted.strip_prefix("v-").unwrap_or(wanted).to_ascii_lowercase();
    let is_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    // A prefix and a label both count: a name that is one version's label and another's
    // prefix is ambiguous, not silently the prefix's.
    let prefix = |e: &&VersionInfo| is_hex && hex.len() >= 6 && e.version[2..].starts_with(&hex);
    let found: Vec<_> =
        valid().filter(|e| prefix(e) || e.label.as_deref() == Some(wanted)).collect();
    match found.as_slice() {
        [one] => Ok(one.version.clone()),
        [] if is_hex && hex.len() < 6 => Err(OpError {
            status: 404,
            code: "version_not_found",
            message: format!(
                "no label {wanted:?} in the history (a version prefix needs at least 6 hex digits)"
            ),
        }),
        [] => Err(OpError::not_found(wanted)),
        many => Err(ambiguous(wanted, many)),
    }
}

fn ambiguous(wanted: &str, many: &[&VersionInfo]) -> OpError {
    let names: Vec<&str> = many.iter().map(|e| e.version.as_str()).collect();
    OpError::conflict(
        "ambiguous_version",
        format!("{wanted:?} matches {}; give more of the version", names.join(", ")),
    )
}

/// `2026-11-27T21:40:05Z` (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant), valid for every date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(v: &str, label: Option<&str>, outcome: Outcome) -> VersionInfo {
        VersionInfo {
            version: v.into(),
            label: label.map(str::to_owned),
            loaded_at: String::new(),
            source: String::new(),
            outcome,
            trigger: Trigger::Watch,
            source_path: PathBuf::new(),
            content: (outcome != Outcome::Rejected).then(|| Arc::from(&b"x"[..])),
            was_active: matches!(outcome, Outcome::Applied),
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_815_605);
        assert_eq!(rfc3339(t), "2026-11-27T21:40:05Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // Leap days and a century that is not a leap year (the models endpoint's dates too).
        for (secs, want) in [
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_798_583_425, "2026-12-29T22:30:25Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn resolve_by_version_prefix_and_label() {
        let mut h = History::new(info("v-abc123000000", Some("one"), Outcome::Applied), 10);
        let _ = h.push(info("v-abc124000000", Some("two"), Outcome::Applied));
        let _ = h.push(info("v-ffffff000000", None, Outcome::Rejected));
        assert_eq!(resolve(&h, "v-abc123").unwrap(), "v-abc123000000");
        assert_eq!(resolve(&h, "abc124").unwrap(), "v-abc124000000");
        assert_eq!(resolve(&h, "two").unwrap(), "v-abc124000000");
        // Too short for a prefix and no such label: an unknown version (404), saying why.
        assert_eq!(resolve(&h, "v-abc12").unwrap_err().status, 404);
        let e = resolve(&h, "abc12").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("at least 6 hex digits"), "{}", e.message);
        assert_eq!(resolve(&h, "v-abc1230").unwrap(), "v-abc123000000");
        assert_eq!(resolve(&h, "nope").unwrap_err().status, 404);
        assert_eq!(resolve(&h, "v-ffffff000000").unwrap_err().status, 400);
        // One version's label that is another's prefix: ambiguous, not the prefix's.
        let _ = h.push(info("v-fedcba000000", Some("abc124"), Outcome::Applied));
        let e = resolve(&h, "abc124").unwrap_err();
        assert_eq!((e.status, e.code), (409, "ambiguous_version"));
        let _ = h.push(info("v-abc123999999", None, Outcome::Applied));
        let e = resolve(&h, "abc123").unwrap_err();
        assert_eq!((e.status, e.code), (409, "ambiguous_version"));
    }

    #[test]
    fn history_is_capped_but_keeps_the_active_version() {
        let mut h = History::new(info("v-000000000000", None, Outcome::Applied), 3);
        let mut evicted = Vec::new();
        for i in 1..6 {
            evicted.extend(h.push(info(&format!("v-00000000000{i}"), None, Outcome::Deferred)));
        }
        assert_eq!(evicted, ["v-000000000001", "v-000000000002", "v-000000000003"]);
        let versions: Vec<_> = h.entries().into_iter().map(|e| e.version).collect();
        assert_eq!(versions, ["v-000000000005", "v-000000000004", "v-000000000000"]);
        assert_eq!(h.previous(), None);
    }

    /// Rejected files and candidates never push a rollback target out; they go oldest first.
    #[test]
    fn rollback_targets_outlive_rejected_and_deferred_entries() {
        let mut h = History::new(info("v-a", None, Outcome::Applied), 4);
        let _ = h.push(info("v-b", None, Outcome::Applied));
        h.mark_active("v-b", Outcome::Applied);
        let mut evicted = Vec::new();
        for i in 0..12 {
            let outcome = if i % 2 == 0 { Outcome::Rejected } else { Outcome::Deferred };
            evicted.extend(h.push(info(&format!("v-x{i:02}"), None, outcome)));
        }
        assert_eq!(h.entries().len(), 4);
        assert!(!evicted.contains(&"v-a".to_owned()), "{evicted:?}");
        assert_eq!(h.previous().as_deref(), Some("v-a"));
        // Rejected entries went before deferred ones; the newest entry stays.
        let kept: Vec<_> = h.entries().into_iter().map(|e| e.version).collect();
        assert_eq!(kept, ["v-x11", "v-x09", "v-b", "v-a"]);
    }

    #[test]
    fn previous_skips_versions_never_active() {
        let mut h = History::new(info("v-a", None, Outcome::Applied), 10);
        let _ = h.push(info("v-b", None, Outcome::Rejected));
        let _ = h.push(info("v-c", None, Outcome::Deferred));
        let _ = h.push(info("v-d", None, Outcome::Applied));
        h.mark_active("v-d", Outcome::Applied);
        assert_eq!(h.previous().as_deref(), Some("v-a"));
    }

    /// A -> B -> rollback (A) -> C -> rollback gives A, not B (B precedes C in load order but
    /// was rolled back from); chained rollbacks follow what was active.
    #[test]
    fn previous_follows_activation_order() {
        let mut h = History::new(info("v-a", None, Outcome::Applied), 10);
        let _ = h.push(info("v-b", None, Outcome::Applied));
        h.mark_active("v-b", Outcome::Applied);
        assert_eq!(h.previous().as_deref(), Some("v-a"));
        h.mark_active("v-a", Outcome::RolledBack);
        assert_eq!(h.previous(), None);
        let _ = h.push(info("v-c", None, Outcome::Applied));
        h.mark_active("v-c", Outcome::Applied);
        assert_eq!(h.previous().as_deref(), Some("v-a"));
        h.mark_active("v-a", Outcome::RolledBack);
        assert_eq!(h.previous(), None);
        // A version activated again (the file went back to it) is "before" the next one.
        h.mark_active("v-b", Outcome::Pinned);
        h.mark_active("v-c", Outcome::Applied);
        h.mark_active("v-b", Outcome::Applied);
        assert_eq!(h.previous().as_deref(), Some("v-c"));
        h.mark_active("v-c", Outcome::RolledBack);
        assert_eq!(h.previous().as_deref(), Some("v-b"));
        h.mark_active("v-b", Outcome::RolledBack);
        assert_eq!(h.previous().as_deref(), Some("v-a"));
    }
}
