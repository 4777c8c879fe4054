//! Where the gateway is: the running runtime's ready file (`runtime.json` in its state
//! folder) names edgeHub's port, the IoT Hub host name and the CA to trust.

use crate::error::SimError;
use edge_client::settings::TrustSource;
use edge_client::Settings;
use edge_protocol::ConnectionString;
use runtime_state::Ready;
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

impl Gateway {
    /// Reads the ready file of the runtime running with state folder `state_dir`.
    pub fn from_state(state_dir: &Path) -> Result<Gateway, SimError> {
        let ready = Ready::running(state_dir)?;
        let ca_pem = std::fs::read_to_string(&ready.ca_cert).map_err(|e| SimError::ReadyFile {
            path: ready.ca_cert.clone(),
            reason: format!("cannot read the runtime's CA certificate: {e}"),
        })?;
        Ok(Gateway {
            state_dir: state_dir.to_path_buf(),
            mqtt_port: ready.mqtt_port,
            hub_hostname: ready.hub_hostname,
            gateway_hostname: ready.gateway_hostname,
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
        Ready {
            pid: std::process::id(),
            mqtt_port: 18883,
            hub_hostname: "hub.local".into(),
            gateway_hostname: "localhost".into(),
            ca_cert: ca,
            ..Ready::default()
        }
        .write(dir.path())
        .unwrap();
        let g = Gateway::from_state(dir.path()).unwrap();
        assert_eq!((g.mqtt_port, g.ca_pem.as_str()), (18883, "PEM"));
        let s = g.device_settings("Client_001", "a2V5").unwrap();
        assert!(s.is_device());
        assert_eq!((s.port, s.client_id()), (18883, "Client_001".to_owned()));
        assert_eq!(s.hub_hostname, "hub.local");
        assert!(matches!(s.trust, TrustSource::Pem(ref p) if p == "PEM"));

        std::fs::write(
            runtime_state::layout::ready_file(dir.path()),
            r#"{"pid": 1, "caCert": "/x"}"#,
        )
        .unwrap();
        let e = Gateway::from_state(dir.path()).unwrap_err().to_string();
        assert!(e.contains("mqttPort"), "{e}");
    }
}
