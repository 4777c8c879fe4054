//! The history state file: the classifier's per-device histories, written in the background
//! to the module's bind-mounted volume (`/state` in the manifest) and read back at start-up,
//! so a restart (even `kill -9`) loses at most the last snapshot interval of history.
//!
//! Each snapshot goes to `<file>.tmp`, is synced, then renamed over the file: a crash
//! mid-write leaves the previous snapshot whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use turbofan_domain::history::HistoryStore;

/// The container path of the state file (a bind of the manifest maps it to the host).
pub const CONTAINER_PATH: &str = "/state/history.cbor";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the store saved at `path`; `None` (with the reason logged) if there is none or it
/// cannot be read, in which case histories start empty.
pub fn restore(path: &Path, max_devices: usize, idle_secs: u64) -> Option<HistoryStore> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no history state file yet: histories start empty");
            return None;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot open the history state file ({e}): histories start empty");
            return None;
        }
    };
    match HistoryStore::load(std::io::BufReader::new(file), max_devices, idle_secs, now()) {
        Ok(s) => {
            tracing::info!(path = %path.display(), devices = s.len(), "histories restored");
            Some(s)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "{e}: histories start empty (the file is replaced at the next snapshot)");
            None
        }
    }
}

/// Writes `store` to `path` (via `<path>.tmp`, synced, renamed). Holds the lock while
/// writing: about 2 KB per device.
pub fn save(store: &Mutex<HistoryStore>, path: &Path) -> std::io::Result<usize> {
    let tmp = tmp_path(path);
    let file = std::fs::File::create(&tmp)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
    let devices = {
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        s.save(&mut w).map_err(std::io::Error::other)?;
        s.len()
    };
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    Ok(devices)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Makes sure the state file's folder exists (created if `create`) and can be written.
pub fn check_writable(path: &Path, create: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if create {
            std::fs::create_dir_all(dir)?;
        } else if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is not mounted (bind a volume there, or set HISTORY_STATE_PATH)",
                    dir.display()
                ),
            ));
        }
    }
    let probe = tmp_path(path);
    std::fs::File::create(&probe)?.write_all(b"")?;
    std::fs::remove_file(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_store_is_restored_and_a_broken_file_starts_empty() {
        let dir = std::env::temp_dir().join(format!("classifier-state-{}", std::process::id()));
        let path = dir.join("state/history.cbor");
        check_writable(&path, true).unwrap();
        assert!(check_writable(&dir.join("absent/history.cbor"), false).is_err());
        let mut s = HistoryStore::new(10, 3600);
        s.observe("a", 1, &[1.0; 9], now());
        s.observe("a", 2, &[2.0; 9], now());
        let s = Mutex::new(s);
        assert_eq!(save(&s, &path).unwrap(), 1);
        assert!(!tmp_path(&path).exists());
        let r = restore(&path, 10, 3600).expect("restored");
        assert_eq!(r.get("a"), s.lock().unwrap().get("a"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(restore(&path, 10, 3600).is_none());
        assert!(restore(&dir.join("none"), 10, 3600).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
