//! Identities the runtime knows: module keys (generated here, used only by the workload API
//! and edgeHub) and the leaf-device registry (the cloud side's device registry).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A new random 256-bit key, base64.
pub fn new_key() -> String {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    B64.encode(k)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    #[serde(default)]
    devices: BTreeMap<String, DeviceEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEntry {
    primary_key: String,
}

fn read_keys(path: &Path) -> std::io::Result<KeyFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a valid key file: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// Keys of one kind of identity, kept in a JSON file of the state folder.
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl KeyStore {
    /// The store at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        KeyStore {
            path,
            lock: Mutex::new(()),
        }
    }

    /// The key of `id`, if registered. Reads the file each time, so identities added by
    /// another process (the `device add` command) are seen at once.
    pub fn key(&self, id: &str) -> Option<String> {
        read_keys(&self.path)
            .ok()?
            .devices
            .get(id)
            .map(|d| d.primary_key.clone())
    }

    /// The key of `id`, registering a new one if absent.
    pub fn ensure(&self, id: &str) -> std::io::Result<String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys = read_keys(&self.path)?;
        if let Some(d) = keys.devices.get(id) {
            return Ok(d.primary_key.clone());
        }
        let key = new_key();
        keys.devices.insert(
            id.to_owned(),
            DeviceEntry {
                primary_key: key.clone(),
            },
        );
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(&self.path, &serde_json::to_vec_pretty(&keys)?)?;
        Ok(key)
    }

    /// Registered ids.
    pub fn ids(&self) -> Vec<String> {
        read_keys(&self.path)
            .map(|k| k.devices.into_keys().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::new(dir.path().join("registry.json"));
        assert_eq!(s.key("Client_001"), None);
        let k = s.ensure("Client_001").unwrap();
        assert_eq!(B64.decode(&k).unwrap().len(), 32);
        assert_eq!(s.ensure("Client_001").unwrap(), k);
        let again = KeyStore::new(dir.path().join("registry.json"));
        assert_eq!(again.key("Client_001"), Some(k));
        assert_eq!(again.ids(), vec!["Client_001".to_owned()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("registry.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
