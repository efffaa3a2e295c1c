//! Starting the lifecycle: the gateway built from the config file, or from the pin persisted
//! in the state directory when one holds (a restart keeps a frozen rollout frozen).

use std::sync::{Arc, Mutex};

use super::history::History;
use super::{
    Config, Gateway, HISTORY_LEN, Inner, LogSink, Outcome, PinStore, Reloader, Trigger,
    VersionInfo, read_file, static_keys,
};
use crate::state::StoredPin;

impl Reloader {
    /// Builds the gateway for `file` (read from the config path) and its reloader. A pin
    /// persisted in `store` wins: its version is served even when the file has changed since,
    /// and the file's version becomes a candidate.
    ///
    /// `file_error` says the config file itself could not be loaded, and `file` is then the
    /// pinned version read back from `store` (see `app::Boot`): it is served, pinned, and the
    /// file's problem is logged and shown as `last_error`, as a reload would.
    pub fn boot(
        file: Config,
        file_error: Option<String>,
        store: PinStore,
        log_sink: LogSink,
        admin_guarded: bool,
    ) -> Result<(Arc<Gateway>, Arc<Reloader>), String> {
        let path = file.source.clone();
        let boot_static = static_keys::Static::of(&file);
        let file_info = match file_error {
            None => VersionInfo::of(&file, Trigger::Startup, Outcome::Applied),
            Some(_) => VersionInfo::of(&file, Trigger::State, Outcome::Restored),
        };
        let file_version = file.version.clone();
        let mut notes = Vec::new();
        let stored = store.load().unwrap_or_else(|e| {
            notes.push(format!("persisted pin ignored: {e}"));
            None
        });
        let gw = match (Gateway::new(file, log_sink), &file_error) {
            (Ok(gw), _) => gw,
            (Err(e), None) => return Err(e),
            (Err(e), Some(f)) => return Err(format!("{f}; the pinned version cannot start: {e}")),
        };
        let mut history = History::new(file_info, HISTORY_LEN);
        let (pinned, persisted_file) = match stored {
            Some(pin) => restore_pin(&gw, pin, &file_version, &mut history, &mut notes),
            None => (false, None),
        };
        for n in &notes {
            tracing::warn!("{n}");
        }
        let m = &gw.metrics;
        for r in ["applied", "rejected", "deferred"] {
            m.config_reloads.with_label_values(&[r]);
        }
        m.config_pinned.set(i64::from(pinned));
        let active = gw.snapshot();
        if pinned {
            tracing::info!(version = %active.config.version, "config pinned (restored from the state dir)");
        }
        // A pin restored over a different file: the process bound the file's static settings
        // (it had to listen before it knew the pin), so where the pinned version's differ, say so.
        let restart_required = static_keys::pinned_over_file(&boot_static, &active.config);
        m.config_restart_required.set(i64::from(restart_required.is_some()));
        if let Some(r) = &restart_required {
            tracing::warn!("{r}");
        }
        let reloader = Arc::new(Reloader {
            gw: gw.clone(),
            path,
            store,
            boot_static,
            admin_guarded,
            inner: Mutex::new(Inner {
                history,
                pinned,
                last_seen: file_version,
                last_error: (!notes.is_empty()).then(|| notes.join("; ")),
                restart_required,
                persist_warning: None,
                sources_error: None,
                persisted_file,
                retry_prepare: false,
            }),
        });
        if let Some(e) = file_error {
            let mut inner = reloader.lock();
            // What the file holds now, as a reload would see it, so the same bad content is
            // not reported again by the first check.
            let (seen, version) = match read_file(&reloader.path) {
                Ok((_, version)) => (version.clone(), Some(version)),
                Err(msg) => (msg, None),
            };
            inner.last_seen = seen;
            reloader.reject(&mut inner, version, e, Trigger::Startup);
            tracing::warn!(
                "the config file cannot be loaded; serving the pinned version from the state dir"
            );
        }
        Ok((gw, reloader))
    }
}

/// Serves the persisted pin's version if it can: already the file's (nothing to do), or
/// prepared and installed over it (the file's version then a candidate, unless the pin says
/// the file still holds what was rolled back from). Returns whether a pin holds and the file
/// version the record says is no candidate; why a pin was ignored goes to `notes`.
fn restore_pin(
    gw: &Gateway,
    pin: StoredPin,
    file_version: &str,
    history: &mut History,
    notes: &mut Vec<String>,
) -> (bool, Option<String>) {
    let cfg = match Config::from_bytes(&pin.record.source, &pin.content) {
        Ok(cfg) if cfg.version == file_version => return (true, None),
        Ok(cfg) => cfg,
        Err(e) => {
            notes.push(format!("persisted pin ignored: {e}"));
            return (false, None);
        }
    };
    let info = VersionInfo::of(&cfg, Trigger::State, Outcome::Restored);
    // The file still holds what was rolled back from: not a candidate.
    let settled = pin.record.file_version.as_deref() == Some(file_version);
    match gw.prepare(cfg) {
        Ok(snap) => {
            gw.install(snap);
            history.restore_pinned(info, !settled);
            (true, settled.then(|| file_version.to_owned()))
        }
        Err(e) => {
            notes.push(format!("persisted pin ignored: {e}"));
            (false, None)
        }
    }
}
