//! The pin in the state dir: written when the pin changes, and again when the file moves on
//! from a version the record says is no candidate.

use super::{Inner, Reloader};
use crate::state::PinRecord;

impl Reloader {
    pub(super) fn set_pinned(&self, inner: &mut Inner, pinned: bool) {
        inner.pinned = pinned;
        self.gw.metrics.config_pinned.set(i64::from(pinned));
        if pinned {
            self.persist_pin(inner);
            return;
        }
        inner.persisted_file = None;
        inner.persist_warning = persist_warning(self.store.clear());
    }

    /// Writes the pin of the active version, with the file's version when that is no
    /// candidate (it was applied already: a rollback away from it, or the version pinned).
    pub(super) fn persist_pin(&self, inner: &mut Inner) {
        let snap = self.gw.snapshot();
        let c = &snap.config;
        let seen = &inner.last_seen;
        let settled = seen.starts_with("v-")
            && *seen != c.version
            && !inner.history.candidates().iter().any(|v| v.version == *seen);
        inner.persisted_file = settled.then(|| seen.clone());
        let rec = PinRecord {
            version: c.version.clone(),
            label: c.label.clone(),
            source: c.source.clone(),
            file_version: inner.persisted_file.clone(),
        };
        inner.persist_warning = persist_warning(self.store.save(&rec, &c.content));
    }
}

fn persist_warning(res: Result<(), String>) -> Option<String> {
    res.err().map(|e| {
        let w = format!("pin state not persisted: {e}");
        tracing::warn!("{w}");
        w
    })
}
