//! Local state that must survive a restart: the config pin and the pinned version's content.
//!
//! Two files in the state directory, each written atomically (temp file, fsync, rename):
//! `pinned-config.yaml` (the exact bytes of the pinned version, so a restarted process can serve
//! it even when the config file has changed since) and `pin.json` (which version is pinned;
//! written after the content, removed on unpin). A directory that cannot be written is not fatal:
//! the pin is then kept in memory only, and [`PinStore::warning`] says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::version_of;

const PIN_FILE: &str = "pin.json";
const CONTENT_FILE: &str = "pinned-config.yaml";

/// What `pin.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub version: String,
    pub label: Option<String>,
    /// The path the pinned version was first read from.
    pub source: PathBuf,
    /// The config file's version when the pin was written, when that is not a candidate (a
    /// rollback away from it): a restart on the same file does not offer it as one. Absent in
    /// older state files and when the file's version is a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_version: Option<String>,
}

/// A pin read back at startup, with the content it names.
#[derive(Debug, Clone)]
pub struct StoredPin {
    pub record: PinRecord,
    pub content: Vec<u8>,
}

/// Where pins are persisted (or not).
#[derive(Debug)]
pub struct PinStore {
    dir: Option<PathBuf>,
    warning: Option<String>,
}

impl PinStore {
    /// Keeps pins in memory only (tests, or `--state-dir` unset in a throwaway run).
    pub fn in_memory() -> Self {
        Self { dir: None, warning: None }
    }

    /// Opens `dir`, creating it if needed. When it cannot be written, logs a warning and falls
    /// back to memory.
    pub fn open(dir: &Path) -> Self {
        match probe(dir) {
            Ok(()) => Self { dir: Some(dir.to_owned()), warning: None },
            Err(e) => {
                let warning = format!(
                    "state dir {} is not writable ({e}); the pin is kept in memory only and will not survive a restart",
                    dir.display()
                );
                tracing::warn!("{warning}");
                Self { dir: None, warning: Some(warning) }
            }
        }
    }

    /// Reads pins from `dir` without creating or probing it (startup, before the config
    /// that names the real store is known).
    pub fn at(dir: &Path) -> Self {
        Self { dir: Some(dir.to_owned()), warning: None }
    }

    /// The directory pins are written to, when persistent.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Reads the persisted pin. A missing pin is `Ok(None)`; a pin whose content is missing or
    /// does not hash to its version is an error (the caller logs it and starts unpinned).
    pub fn load(&self) -> Result<Option<StoredPin>, String> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let pin_path = dir.join(PIN_FILE);
        let raw = match std::fs::read(&pin_path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", pin_path.display())),
        };
        let record: PinRecord = serde_json::from_slice(&raw)
            .map_err(|e| format!("{}: not a pin record: {e}", pin_path.display()))?;
        let content_path = dir.join(CONTENT_FILE);
        let content = std::fs::read(&content_path)
            .map_err(|e| format!("cannot read {}: {e}", content_path.display()))?;
        let found = version_of(&content);
        if found != record.version {
            return Err(format!(
                "{} holds {found}, but {} pins {}",
                content_path.display(),
                pin_path.display(),
                record.version
            ));
        }
        Ok(Some(StoredPin { record, content }))
    }

    /// Persists a pin: the content first, then the record that names it.
    pub fn save(&self, record: &PinRecord, content: &[u8]) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        write_atomic(&dir.join(CONTENT_FILE), content)?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
        write_atomic(&dir.join(PIN_FILE), &json)
    }

    /// Forgets the pin.
    pub fn clear(&self) -> Result<(), String> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for name in [PIN_FILE, CONTENT_FILE] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", dir.join(name).display())),
            }
        }
        Ok(())
    }
}

fn probe(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let p = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&p, b"ok")?;
    std::fs::remove_file(&p)
}

/// Write to a temp file beside `path`, fsync, rename over `path`: readers see the old or the new
/// file, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tidegate-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_clear_round_trip() {
        let dir = tmp("rt");
        let store = PinStore::open(&dir);
        assert!(store.warning().is_none());
        assert!(store.load().unwrap().is_none());
        let content = b"label: x\n".to_vec();
        let rec = PinRecord {
            version: version_of(&content),
            label: Some("x".into()),
            source: "/etc/t.yaml".into(),
            file_version: Some(version_of(b"label: y\n")),
        };
        store.save(&rec, &content).unwrap();
        let back = PinStore::open(&dir).load().unwrap().unwrap();
        assert_eq!(back.record, rec);
        assert_eq!(back.content, content);
        store.clear().unwrap();
        assert!(store.load().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A pin.json written before `file_version` existed still loads.
    #[test]
    fn old_pin_record_without_file_version_loads() {
        let dir = tmp("old");
        let store = PinStore::open(&dir);
        std::fs::write(dir.join(CONTENT_FILE), b"a").unwrap();
        let old = format!(r#"{{"version":"{}","label":null,"source":"t"}}"#, version_of(b"a"));
        std::fs::write(dir.join(PIN_FILE), old).unwrap();
        assert_eq!(store.load().unwrap().unwrap().record.file_version, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tampered_content_is_an_error() {
        let dir = tmp("tamper");
        let store = PinStore::open(&dir);
        let rec = PinRecord {
            version: version_of(b"a"),
            label: None,
            source: "t".into(),
            file_version: None,
        };
        store.save(&rec, b"a").unwrap();
        std::fs::write(dir.join(CONTENT_FILE), b"b").unwrap();
        assert!(store.load().unwrap_err().contains("pins"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_dir_falls_back_to_memory() {
        let file = tmp("file");
        std::fs::write(&file, b"not a dir").unwrap();
        let store = PinStore::open(&file.join("sub"));
        assert!(store.dir().is_none());
        assert!(store.warning().unwrap().contains("in memory only"));
        std::fs::remove_file(&file).unwrap();
    }
}
