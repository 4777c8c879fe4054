//! Where the gateway is: the running runtime's ready file (`runtime.json` in its state
//! folder) names edgeHub's port, the IoT Hub host name and the CA to trust.

use crate::error::SimError;
use edge_client::settings::TrustSource;
use edge_client::Settings;
use edge_protocol::ConnectionString;
use runtime_state::layout;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The edge gateway leaf devices connect through.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The runtime's state folder.
    pub state_dir: PathBuf,
    /// edgeHub's MQTT/TLS port.
    pub mqtt_port: u16,
    /// IoT Hub host name the identities belong to.
    pub hub_hostname: String,
    /// Host name to connect to.
    pub gateway_hostname: String,
    /// PEM of the CA edgeHub's certificate chains to.
    pub ca_pem: String,
}

fn field<'a>(ready: &'a Value, name: &str, path: &Path) -> Result<&'a Value, SimError> {
    ready.get(name).ok_or_else(|| SimError::ReadyFile {
        path: path.to_path_buf(),
        reason: format!("has no '{name}': is it from an older runtime?"),
    })
}

fn text(ready: &Value, name: &str, path: &Path) -> Result<String, SimError> {
    field(ready, name, path)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SimError::ReadyFile {
            path: path.to_path_buf(),
            reason: format!("'{name}' is not a string"),
        })
}

impl Gateway {
    /// Reads the ready file of the runtime running with state folder `state_dir`.
    pub fn from_state(state_dir: &Path) -> Result<Gateway, SimError> {
        let path = layout::ready_file(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SimError::NotRunning {
                    state: state_dir.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(SimError::ReadyFile {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let ready: Value = serde_json::from_slice(&bytes).map_err(|e| SimError::ReadyFile {
            path: path.clone(),
            reason: format!("not JSON: {e}"),
        })?;
        if let Some(pid) = ready
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
        {
            if !runtime_state::process_exists(pid) {
                return Err(SimError::Stale {
                    state: state_dir.to_path_buf(),
                    pid,
                });
            }
        }
        let mqtt_port = field(&ready, "mqttPort", &path)?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| SimError::ReadyFile {
                path: path.clone(),
                reason: "'mqttPort' is not a port number".into(),
            })?;
        let ca_path = PathBuf::from(text(&ready, "caCert", &path)?);
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| SimError::ReadyFile {
            path: ca_path.clone(),
            reason: format!("cannot read the runtime's CA certificate: {e}"),
        })?;
        Ok(Gateway {
            state_dir: state_dir.to_path_buf(),
            mqtt_port,
            hub_hostname: text(&ready, "hubHostname", &path)?,
            gateway_hostname: text(&ready, "gatewayHostname", &path)
                .unwrap_or_else(|_| "localhost".into()),
            ca_pem,
        })
    }

    /// The connection string of leaf device `device_id` with key `key`, naming this gateway.
    pub fn connection_string(&self, device_id: &str, key: &str) -> String {
        ConnectionString {
            host_name: self.hub_hostname.clone(),
            device_id: device_id.to_owned(),
            module_id: None,
            shared_access_key: key.to_owned(),
            gateway_host_name: Some(self.gateway_hostname.clone()),
        }
        .to_string()
    }

    /// Client settings of leaf device `device_id` with key `key`: its connection string,
    /// this gateway's port, and trust in the runtime's CA.
    pub fn device_settings(&self, device_id: &str, key: &str) -> Result<Settings, SimError> {
        let mut s =
            Settings::from_device_connection_string(&self.connection_string(device_id, key))
                .map_err(|e| SimError::Config(format!("device {device_id}: {e}")))?;
        s.port = self.mqtt_port;
        s.trust = TrustSource::Pem(self.ca_pem.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ready_file_and_says_when_no_runtime_runs() {
        let dir = tempfile::tempdir().unwrap();
        let e = Gateway::from_state(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no runtime is running"), "{e}");

        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").unwrap();
        let ready = serde_json::json!({
            "pid": std::process::id(), "mqttPort": 18883, "hubHostname": "hub.local",
            "gatewayHostname": "localhost", "caCert": ca,
        });
        std::fs::write(layout::ready_file(dir.path()), ready.to_string()).unwrap();
        let g = Gateway::from_state(dir.path()).unwrap();
        assert_eq!((g.mqtt_port, g.ca_pem.as_str()), (18883, "PEM"));
        let s = g.device_settings("Client_001", "a2V5").unwrap();
        assert!(s.is_device());
        assert_eq!((s.port, s.client_id()), (18883, "Client_001".to_owned()));
        assert_eq!(s.hub_hostname, "hub.local");
        assert!(matches!(s.trust, TrustSource::Pem(ref p) if p == "PEM"));

        std::fs::write(
            layout::ready_file(dir.path()),
            r#"{"pid": 1, "caCert": "/x"}"#,
        )
        .unwrap();
        let e = Gateway::from_state(dir.path()).unwrap_err().to_string();
        assert!(e.contains("mqttPort"), "{e}");
    }
}
