//! The ready file (`runtime.json` in the state folder): what a running runtime tells the tools
//! beside it (the leaf simulator, the demo report, `check`, the tests) about where it is. The
//! runtime writes it once it is ready and removes it when it stops; this type is the one
//! definition both sides use.

use crate::layout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a ready runtime says of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// The runtime's process id.
    pub pid: u32,
    /// edgeHub's MQTT/TLS port.
    pub mqtt_port: u16,
    /// The IoT Hub host name of the identities.
    pub hub_hostname: String,
    /// The edge device's id.
    pub device_id: String,
    /// The host name modules and leaf devices connect to.
    pub gateway_hostname: String,
    /// The PEM file of the CA edgeHub's certificate chains to.
    pub ca_cert: PathBuf,
    /// IoT Hub's `$upstream` store.
    pub upstream: PathBuf,
    /// IoT Hub's HTTPS endpoint (file upload), `host:port`.
    pub hub_https: String,
    /// Where uploaded files go: Azurite's `https://host:port`, or a folder.
    pub blob_store: String,
    /// IoT Hub's file-upload notifications (JSON lines).
    pub file_notifications: PathBuf,
    /// Routes of the manifest that did not parse, as messages.
    #[serde(default)]
    pub route_errors: Vec<String>,
    /// Where edgeHub (`edgeHub`) and each module serve their metrics (`http://…/metrics`).
    #[serde(default)]
    pub metrics: BTreeMap<String, String>,
}

/// Why the ready file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// There is none: no runtime is ready on this state.
    #[error("no runtime is running with state folder {} (no runtime.json there): start it first, e.g. `iotedge-local --state {} run`, or pass --state", state.display(), state.display())]
    NotRunning {
        /// The state folder.
        state: PathBuf,
    },
    /// It names a process that is gone: the runtime stopped without cleaning up.
    #[error("the runtime of state folder {} (pid {pid}) is no longer running; start it again", state.display())]
    Stale {
        /// The state folder.
        state: PathBuf,
        /// The pid it names.
        pid: u32,
    },
    /// It cannot be read or is not what a runtime writes.
    #[error("the runtime's ready file {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Ready {
    /// Writes the ready file of `state`, whole or not at all (a tool waiting for it never
    /// reads half of it).
    pub fn write(&self, state: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let path = layout::ready_file(state);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    /// Reads the ready file of `state`, whether or not its runtime still runs.
    pub fn read(state: &Path) -> Result<Ready, ReadyError> {
        let path = layout::ready_file(state);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadyError::NotRunning {
                state: state.to_path_buf(),
            },
            _ => ReadyError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ReadyError::Unreadable {
            path,
            reason: e.to_string(),
        })
    }

    /// The ready file of the runtime running on `state`: it says so and its process exists.
    pub fn running(state: &Path) -> Result<Ready, ReadyError> {
        let ready = Ready::read(state)?;
        if crate::process_exists(ready.pid) {
            Ok(ready)
        } else {
            Err(ReadyError::Stale {
                state: state.to_path_buf(),
                pid: ready.pid,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Ready {
        Ready {
            pid: std::process::id(),
            mqtt_port: 18883,
            hub_hostname: "hub.local".into(),
            ca_cert: "/s/certs/ca.pem".into(),
            metrics: BTreeMap::from([("edgeHub".into(), "http://127.0.0.1:9600/metrics".into())]),
            ..Ready::default()
        }
    }

    #[test]
    fn written_and_read_back_with_the_runtime_running_or_gone() {
        let dir = tempfile::tempdir().unwrap();
        let e = Ready::running(dir.path()).unwrap_err();
        assert!(matches!(e, ReadyError::NotRunning { .. }), "{e}");
        assert!(e.to_string().contains("iotedge-local --state"), "{e}");
        ready().write(dir.path()).unwrap();
        assert_eq!(Ready::running(dir.path()).unwrap(), ready());
        let text = std::fs::read_to_string(layout::ready_file(dir.path())).unwrap();
        assert!(
            text.contains("\"mqttPort\": 18883"),
            "the names tools and tests read: {text}"
        );
        let gone = Ready {
            pid: u32::MAX,
            ..ready()
        };
        gone.write(dir.path()).unwrap();
        assert!(matches!(
            Ready::running(dir.path()),
            Err(ReadyError::Stale { pid: u32::MAX, .. })
        ));
        std::fs::write(layout::ready_file(dir.path()), r#"{"pid": 1}"#).unwrap();
        let e = Ready::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("mqttPort"), "{e}");
    }
}
