//! The config lifecycle (SPEC §8): reload a changed file, keep a history of versions, and the
//! pin state machine (pin, unpin, rollback) with the pin persisted in the state directory.
//!
//! Every activation is "prepare, then swap": the file is parsed, validated and prepared
//! ([`Gateway::prepare`] builds clients and lookups) before [`Gateway::install`] swaps it in
//! atomically. Anything that fails before the swap leaves the running version alone. Requests
//! hold the snapshot they started with, so in-flight work finishes on its version.
//!
//! Each check also looks at the provider key and CA files the active version was prepared
//! from, and prepares it again when one has changed (a rotated Secret).
//!
//! All operations run under one mutex, on a blocking thread (they read files and build clients);
//! the async entry points hand them to `spawn_blocking`. What triggers a reload (directory watch,
//! SIGHUP, a periodic check) lives in `reload/triggers.rs`.

mod boot;
mod history;
mod persist;
mod static_keys;
pub mod triggers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use history::{ConfigDoc, OpError, Outcome, StateInfo, Trigger, VersionInfo, rfc3339};
use history::{History, resolve};

use super::{Config, version_of};
use crate::gateway::Gateway;
use crate::proxy::record::LogSink;
use crate::state::PinStore;

/// Versions kept in the history (the active one is never dropped).
pub const HISTORY_LEN: usize = 10;

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    /// The file holds the version last looked at: nothing to do.
    Unchanged,
    Applied(String),
    /// Valid, but pinned: listed as a candidate.
    Deferred(String),
    Rejected(String),
}

/// Owns the config lifecycle of one [`Gateway`].
pub struct Reloader {
    gw: Arc<Gateway>,
    /// The config file as given on the command line: never canonicalized, so a kubelet
    /// `..data` symlink swap is followed on every read.
    path: PathBuf,
    store: PinStore,
    /// Static settings of the running process; a new version that changes them needs a restart.
    boot_static: static_keys::Static,
    /// The admin plane's exposure is not this file's to decide (a token is set, or the command
    /// line names the admin address). Otherwise a new version that moves `admin_listen` off
    /// loopback is rejected: `serve` would refuse it at the next restart.
    admin_guarded: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    history: History,
    pinned: bool,
    /// Version (or read error) of the file content last looked at, so an unchanged file costs
    /// one read and one hash.
    last_seen: String,
    last_error: Option<String>,
    restart_required: Option<String>,
    persist_warning: Option<String>,
    /// Why the active version could not take a changed key or CA file, as last reported (so
    /// the same failure is reported once); kept apart from `last_error`, which is about config
    /// files, and shown beside it. Cleared when the files are good again or another snapshot is
    /// installed.
    sources_error: Option<String>,
    /// The file version the persisted pin says is no candidate (`PinRecord::file_version`);
    /// written again without it once the file holds something else.
    persisted_file: Option<String>,
    /// The file's version parsed but could not be prepared (a key file or CA file missing or
    /// bad, an environment variable unset): tried again at every reload, since what it lacks
    /// may appear without the config file changing (Kubernetes syncs a Secret's volume apart
    /// from the ConfigMap's). The same failure is reported once.
    retry_prepare: bool,
}

impl Reloader {
    /// The config file path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the config file now (what a watch event, SIGHUP or the periodic check does).
    pub async fn reload_now(self: &Arc<Self>) -> ReloadResult {
        self.reload_with(Trigger::Admin).await
    }

    pub(crate) async fn reload_with(self: &Arc<Self>, trigger: Trigger) -> ReloadResult {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.reload_blocking(trigger))
            .await
            .unwrap_or_else(|e| ReloadResult::Rejected(format!("reload task failed: {e}")))
    }

    /// The `/admin/config` document.
    pub fn status(&self) -> ConfigDoc {
        self.doc(&self.lock())
    }

    /// [`Reloader::status`] on a blocking thread: the lock is held through whole reloads, and
    /// the admin plane shares its thread with the data plane's accept loop.
    pub async fn status_async(self: &Arc<Self>) -> Result<ConfigDoc, OpError> {
        let me = self.clone();
        run_blocking(move || Ok(me.status())).await
    }

    /// Pins `version` (default: the active one), activating it first if it is not active.
    pub async fn pin(self: &Arc<Self>, version: Option<String>) -> Result<ConfigDoc, OpError> {
        let me = self.clone();
        run_blocking(move || me.pin_blocking(version.as_deref())).await
    }

    /// Unpins and activates the newest valid candidate, if any.
    pub async fn unpin(self: &Arc<Self>) -> Result<ConfigDoc, OpError> {
        let me = self.clone();
        run_blocking(move || me.unpin_blocking()).await
    }

    /// Activates the version active before the current one, and pins it.
    pub async fn rollback(self: &Arc<Self>) -> Result<ConfigDoc, OpError> {
        let me = self.clone();
        run_blocking(move || me.rollback_blocking()).await
    }

    /// Looks at the config file, then, unless that activated a new version (which read them
    /// afresh), at the key and CA files of the active one.
    fn reload_blocking(&self, trigger: Trigger) -> ReloadResult {
        let mut inner = self.lock();
        let result = self.reload_file(&mut inner, trigger);
        if inner.pinned && inner.persisted_file.as_ref().is_some_and(|v| *v != inner.last_seen) {
            // The file changed since the pin was written: after a restart its version is a
            // candidate again, as it is now.
            self.persist_pin(&mut inner);
        }
        if !matches!(result, ReloadResult::Applied(_)) {
            self.refresh_sources(&mut inner);
        }
        result
    }

    /// Prepares the active version again when a provider key or CA file it was prepared from
    /// has changed (a rotated Secret): new connections and requests use what the file holds
    /// now, with no config change. A pin freezes the config, not its credentials. A file that
    /// went bad (empty, unreadable, no certificate) keeps the running version, and is reported
    /// once: in the log, in `tidegate_config_reloads_total{result="rejected"}` and in
    /// `last_error` (until the files are good again).
    fn refresh_sources(&self, inner: &mut Inner) {
        let snap = self.gw.snapshot();
        let Some(changed) = snap.sources.changed() else { return };
        let changed = changed.display().to_string();
        let prepared = Config::from_bytes(&snap.config.source, &snap.config.content)
            .map_err(|e| e.to_string())
            .and_then(|cfg| self.gw.prepare(cfg));
        drop(snap);
        match prepared {
            Ok(next) => {
                self.gw.install(next);
                inner.sources_error = None;
                tracing::info!(version = %inner.history.active, file = %changed, "key or CA file changed: active version prepared again with it");
            }
            Err(e) => {
                let msg =
                    format!("a key or CA file changed, but the active version cannot use it: {e}");
                if inner.sources_error.as_ref() != Some(&msg) {
                    tracing::error!(error = %msg, "keeping the key and CA files the active version was prepared with");
                    self.gw.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                    inner.sources_error = Some(msg);
                }
            }
        }
    }

    fn reload_file(&self, inner: &mut Inner, trigger: Trigger) -> ReloadResult {
        let (bytes, version) = match read_file(&self.path) {
            Ok(read) => read,
            Err(msg) => {
                if inner.last_seen == msg {
                    return ReloadResult::Unchanged;
                }
                inner.last_seen = msg.clone();
                return self.reject(inner, None, msg, trigger);
            }
        };
        let retrying = inner.last_seen == version;
        if retrying && !inner.retry_prepare {
            return ReloadResult::Unchanged;
        }
        inner.last_seen = version.clone();
        inner.retry_prepare = false;
        if inner.history.active == version {
            // The file is back on the active version: it is good again (an earlier bad file's
            // error no longer holds), candidates seen before are stale, and unpin must not
            // activate one the file no longer asks for.
            inner.last_error = None;
            if !inner.history.take_candidates().is_empty() {
                tracing::info!(%version, "config file is back on the active version; candidates dropped");
            }
            return ReloadResult::Unchanged;
        }
        let cfg = match Config::from_bytes(&self.path, &bytes) {
            Ok(c) => c,
            Err(e) => return self.reject(inner, Some(version), e.to_string(), trigger),
        };
        if !self.admin_guarded
            && let Err(e) =
                crate::app::check_admin_exposure(cfg.server.admin_listen, None, &self.path)
        {
            let msg = format!("{e} (the next restart would refuse this version)");
            return self.reject(inner, Some(version), msg, trigger);
        }
        let m = &self.gw.metrics;
        if inner.pinned {
            let info = VersionInfo::of(&cfg, trigger, Outcome::Deferred);
            // Prepare and drop: a candidate should be as ready to activate as a reload would be.
            if let Err(e) = self.gw.check_prepare(cfg) {
                return self.reject_prepared(inner, version, e, trigger, retrying);
            }
            tracing::info!(%version, label = info.label.as_deref().unwrap_or(""), "config candidate (pinned: not activated)");
            self.remember(inner, info);
            inner.history.add_candidate(&version);
            inner.last_error = None;
            m.config_reloads.with_label_values(&["deferred"]).inc();
            m.config_last_success.set(unix_now());
            return ReloadResult::Deferred(version);
        }
        let info = VersionInfo::of(&cfg, trigger, Outcome::Applied);
        let restart = static_keys::changes(&self.boot_static, &cfg);
        match self.gw.prepare(cfg) {
            Ok(snap) => self.gw.install(snap),
            Err(e) => return self.reject_prepared(inner, version, e, trigger, retrying),
        }
        // The new version read its key and CA files afresh.
        inner.sources_error = None;
        tracing::info!(%version, label = info.label.as_deref().unwrap_or(""), ?trigger, "config applied");
        self.set_restart_required(inner, restart);
        self.remember(inner, info);
        inner.history.mark_active(&version, Outcome::Applied);
        inner.last_error = None;
        m.config_reloads.with_label_values(&["applied"]).inc();
        ReloadResult::Applied(version)
    }

    /// Adds a version to the history; the metric series of versions that fall out of it go.
    fn remember(&self, inner: &mut Inner, info: VersionInfo) {
        for gone in inner.history.push(info) {
            self.gw.metrics.forget_version(&gone);
        }
    }

    /// Rejects a version that parsed but could not be prepared, and marks it to be tried
    /// again. A retry that fails the same way says nothing new: nothing is logged or counted.
    fn reject_prepared(
        &self,
        inner: &mut Inner,
        version: String,
        msg: String,
        trigger: Trigger,
        retrying: bool,
    ) -> ReloadResult {
        inner.retry_prepare = true;
        // Errors name their file (SPEC §2); preparing reports only the key path.
        let file = self.path.display().to_string();
        let msg = if msg.starts_with(&file) { msg } else { format!("{file}: {msg}") };
        if retrying && inner.last_error.as_ref() == Some(&msg) {
            return ReloadResult::Unchanged;
        }
        self.reject(inner, Some(version), msg, trigger)
    }

    fn reject(
        &self,
        inner: &mut Inner,
        version: Option<String>,
        msg: String,
        trigger: Trigger,
    ) -> ReloadResult {
        tracing::error!(error = %msg, ?trigger, "config rejected; keeping the running version");
        if let Some(v) = version {
            self.remember(inner, VersionInfo::rejected(v, &self.path, trigger));
        }
        inner.last_error = Some(msg.clone());
        self.gw.metrics.config_reloads.with_label_values(&["rejected"]).inc();
        ReloadResult::Rejected(msg)
    }

    /// Re-parses, prepares and installs a version from the history.
    /// The static settings the active version changes (they wait for a restart): logged,
    /// reported by `status`, and `tidegate_config_restart_required`.
    fn set_restart_required(&self, inner: &mut Inner, restart: Option<String>) {
        if let Some(r) = &restart {
            tracing::warn!("{r}");
        }
        self.gw.metrics.config_restart_required.set(i64::from(restart.is_some()));
        inner.restart_required = restart;
    }

    fn activate(&self, inner: &mut Inner, version: &str, outcome: Outcome) -> Result<(), OpError> {
        let entry = inner.history.get(version).ok_or_else(|| OpError::not_found(version))?;
        let Some(content) = entry.content.clone() else {
            return Err(OpError::bad_request(format!(
                "{version} was rejected; it cannot be activated"
            )));
        };
        let cfg = Config::from_bytes(&entry.source_path, &content)
            .map_err(|e| OpError::conflict("invalid_version", e.to_string()))?;
        let restart = static_keys::changes(&self.boot_static, &cfg);
        let snap = self.gw.prepare(cfg).map_err(|e| OpError::conflict("prepare_failed", e))?;
        self.gw.install(snap);
        inner.sources_error = None;
        self.set_restart_required(inner, restart);
        inner.history.mark_active(version, outcome);
        tracing::info!(%version, ?outcome, "config activated");
        Ok(())
    }

    fn pin_blocking(&self, version: Option<&str>) -> Result<ConfigDoc, OpError> {
        let mut inner = self.lock();
        let target = match version {
            None => inner.history.active.clone(),
            Some(v) => resolve(&inner.history, v)?,
        };
        if target != inner.history.active {
            self.activate(&mut inner, &target, Outcome::Pinned)?;
        }
        inner.history.remove_candidate(&target);
        self.set_pinned(&mut inner, true);
        tracing::info!(version = %target, "config pinned");
        Ok(self.doc(&inner))
    }

    fn unpin_blocking(&self) -> Result<ConfigDoc, OpError> {
        let mut inner = self.lock();
        if !inner.pinned {
            return Ok(self.doc(&inner));
        }
        self.set_pinned(&mut inner, false);
        let candidates = inner.history.take_candidates();
        tracing::info!("config unpinned");
        if let Some(newest) = candidates.first() {
            if let Err(e) = self.activate(&mut inner, newest, Outcome::Applied) {
                inner.last_error =
                    Some(format!("unpin: candidate {newest} not activated: {}", e.message));
            }
        }
        Ok(self.doc(&inner))
    }

    fn rollback_blocking(&self) -> Result<ConfigDoc, OpError> {
        let mut inner = self.lock();
        let prev = inner.history.previous().ok_or_else(|| {
            OpError::conflict("no_previous_version", "no previous version to roll back to")
        })?;
        self.activate(&mut inner, &prev, Outcome::RolledBack)?;
        inner.history.remove_candidate(&prev);
        self.set_pinned(&mut inner, true);
        tracing::warn!(version = %prev, "config rolled back and pinned");
        Ok(self.doc(&inner))
    }

    fn doc(&self, inner: &Inner) -> ConfigDoc {
        let snap = self.gw.snapshot();
        let active =
            inner.history.get(&snap.config.version).cloned().unwrap_or_else(|| {
                VersionInfo::of(&snap.config, Trigger::Startup, Outcome::Applied)
            });
        let warning = [self.store.warning(), inner.persist_warning.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        ConfigDoc {
            active,
            pinned: inner.pinned,
            candidates: inner.history.candidates(),
            history: inner.history.entries(),
            last_error: match (&inner.last_error, &inner.sources_error) {
                (Some(config), Some(sources)) => Some(format!("{config}; {sources}")),
                (config, sources) => config.clone().or_else(|| sources.clone()),
            },
            restart_required: inner.restart_required.clone(),
            state: StateInfo {
                dir: self.store.dir().map(|d| d.display().to_string()),
                persistent: self.store.dir().is_some() && inner.persist_warning.is_none(),
                warning: (!warning.is_empty()).then(|| warning.join("; ")),
            },
        }
    }
}

/// The config file's bytes and version, or why it cannot be read (as reported).
fn read_file(path: &Path) -> Result<(Vec<u8>, String), String> {
    match crate::config::read_capped(path) {
        Ok(bytes) => {
            let version = version_of(&bytes);
            Ok((bytes, version))
        }
        Err(e) => Err(format!("{}: cannot read config file: {e}", path.display())),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(OpError::internal(format!("admin operation failed: {e}"))))
}
