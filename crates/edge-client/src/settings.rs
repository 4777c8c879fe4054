//! Where a module's identity comes from: the `IOTEDGE_*` environment a runtime gives a
//! module, or a module connection string (`EdgeHubConnectionString`) as dev tools give.

use crate::error::Error;
use edge_protocol::env::{self, ModuleEnv};
use edge_protocol::ConnectionString;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How the module proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// Tokens are signed by the workload API (the key never leaves the runtime).
    Workload {
        /// [`env::WORKLOAD_URI`]: `unix:///path/to.sock` or `http://host:port`.
        uri: String,
        /// [`env::GENERATION_ID`].
        generation_id: String,
        /// [`env::API_VERSION`].
        api_version: String,
    },
    /// Tokens are signed locally with this base64 key (connection-string mode).
    SharedKey(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Workload { uri, .. } => write!(f, "Workload({uri})"),
            Credentials::SharedKey(_) => f.write_str("SharedKey(..)"),
        }
    }
}

/// How to verify the gateway's TLS certificate.
#[derive(Debug, Clone)]
pub enum TrustSource {
    /// Fetch the trust bundle from the workload API.
    Workload,
    /// A PEM file (`EdgeModuleCACertificateFile`).
    File(PathBuf),
    /// PEM text.
    Pem(String),
}

/// Everything a module client needs to connect.
#[derive(Debug, Clone)]
pub struct Settings {
    /// IoT Hub host name: the SAS audience and the MQTT user name's first part.
    pub hub_hostname: String,
    /// Host to connect to (edgeHub).
    pub gateway_hostname: String,
    /// MQTT/TLS port of the gateway (8883 on a device).
    pub port: u16,
    /// Edge device id.
    pub device_id: String,
    /// This module's id; empty for a device identity (see [`Settings::is_device`]).
    pub module_id: String,
    /// How tokens are signed.
    pub credentials: Credentials,
    /// How the gateway certificate is verified.
    pub trust: TrustSource,
    /// Lifetime of each SAS token, seconds.
    pub token_ttl_secs: u64,
    /// Host directories standing in for container paths (see [`Settings::container_path`]).
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl Settings {
    /// Reads the process environment (see [`Settings::from_vars`]).
    pub fn from_env() -> Result<Settings, Error> {
        Settings::from_vars(&std::env::vars().collect())
    }

    /// Builds settings from environment variables: the `IOTEDGE_*` set a runtime gives a
    /// module, else `EdgeHubConnectionString` (with `EdgeModuleCACertificateFile`).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Settings, Error> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let config = |e: env::EnvError| Error::Config(e.to_string());
        if let Some(m) = ModuleEnv::from_vars(get).map_err(config)? {
            return Ok(Settings {
                hub_hostname: m.iothub_hostname,
                gateway_hostname: m.gateway_hostname,
                port: m.gateway_port,
                device_id: m.device_id,
                module_id: m.module_id,
                credentials: Credentials::Workload {
                    uri: m.workload_uri,
                    generation_id: m.generation_id,
                    api_version: m.api_version,
                },
                trust: TrustSource::Workload,
                token_ttl_secs: 3600,
                binds: paths(m.binds),
            });
        }
        if let Some(cs) = get(env::CONNECTION_STRING) {
            let mut s = Settings::from_connection_string(&cs)?;
            s.port = env::gateway_port(get).map_err(config)?;
            s.binds = paths(
                get(env::LOCAL_BINDS)
                    .map(|b| env::parse_binds(&b))
                    .unwrap_or_default(),
            );
            if let Some(ca) = get(env::CA_CERTIFICATE_FILE) {
                s.trust = TrustSource::File(ca.into());
            }
            return Ok(s);
        }
        Err(Error::Config(format!(
            "no module identity: set the IOTEDGE_* variables (an IoT Edge runtime does) or {} (with {})",
            env::CONNECTION_STRING,
            env::CA_CERTIFICATE_FILE
        )))
    }

    /// Settings from a module connection string
    /// (`HostName=…;GatewayHostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…`).
    /// The gateway certificate must then be given by [`Settings::trust`].
    pub fn from_connection_string(text: &str) -> Result<Settings, Error> {
        let cs = ConnectionString::parse(text).map_err(|e| Error::Config(e.to_string()))?;
        if cs.module_id.is_none() {
            return Err(Error::Config(
                "the connection string has no ModuleId: it is a device's, not a module's".into(),
            ));
        }
        Ok(Settings::from_parsed(cs))
    }

    /// Settings of a (leaf) device from its connection string
    /// (`HostName=…;DeviceId=…;SharedAccessKey=…[;GatewayHostName=…]`). The gateway
    /// certificate must then be given by [`Settings::trust`].
    pub fn from_device_connection_string(text: &str) -> Result<Settings, Error> {
        let cs = ConnectionString::parse(text).map_err(|e| Error::Config(e.to_string()))?;
        if cs.module_id.is_some() {
            return Err(Error::Config(
                "the connection string has a ModuleId: it is a module's, not a device's".into(),
            ));
        }
        Ok(Settings::from_parsed(cs))
    }

    /// Settings for the identity of a parsed connection string (a module's when it has a
    /// `ModuleId`), connecting to its gateway on 8883 with its shared key.
    fn from_parsed(cs: ConnectionString) -> Settings {
        Settings {
            gateway_hostname: cs.gateway_host_name.unwrap_or_else(|| cs.host_name.clone()),
            hub_hostname: cs.host_name,
            port: env::DEFAULT_GATEWAY_PORT,
            device_id: cs.device_id,
            module_id: cs.module_id.unwrap_or_default(),
            credentials: Credentials::SharedKey(cs.shared_access_key),
            trust: TrustSource::Workload,
            token_ttl_secs: 3600,
            binds: Vec::new(),
        }
    }

    /// Whether this is a device identity rather than a module's.
    pub fn is_device(&self) -> bool {
        self.module_id.is_empty()
    }

    /// The module's (or device's) identity resource, the SAS audience.
    pub fn resource_uri(&self) -> String {
        let module = (!self.is_device()).then_some(self.module_id.as_str());
        edge_protocol::sas::resource_uri(&self.hub_hostname, &self.device_id, module)
    }

    /// The MQTT client id: `{device}/{module}`, or `{device}` for a device.
    pub fn client_id(&self) -> String {
        if self.is_device() {
            self.device_id.clone()
        } else {
            format!("{}/{}", self.device_id, self.module_id)
        }
    }

    /// The MQTT user name: `{hub}/{client id}/?api-version=…`.
    pub fn username(&self) -> String {
        format!(
            "{}/{}/?api-version=2019-10-01&DeviceClientType=edge-client%2F{}",
            self.hub_hostname,
            self.client_id(),
            env!("CARGO_PKG_VERSION")
        )
    }

    /// Where a container path (e.g. `/avrofiles`) is on this machine: the runtime's bind
    /// directory when the module runs as a local process, else the path itself.
    pub fn container_path(&self, path: &Path) -> PathBuf {
        resolve_bind(&self.binds, path)
    }
}

fn paths(binds: Vec<(String, String)>) -> Vec<(PathBuf, PathBuf)> {
    binds
        .into_iter()
        .map(|(c, h)| (PathBuf::from(c), PathBuf::from(h)))
        .collect()
}

fn resolve_bind(binds: &[(PathBuf, PathBuf)], path: &Path) -> PathBuf {
    binds
        .iter()
        .filter_map(|(container, host)| {
            path.strip_prefix(container)
                .ok()
                .map(|rest| (container, host, rest))
        })
        .max_by_key(|(container, _, _)| container.components().count())
        .map(|(_, host, rest)| {
            if rest.as_os_str().is_empty() {
                host.clone()
            } else {
                host.join(rest)
            }
        })
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_edge_environment() {
        let s = Settings::from_vars(&vars(&[
            ("IOTEDGE_IOTHUBHOSTNAME", "hub.local"),
            ("IOTEDGE_GATEWAYHOSTNAME", "localhost"),
            ("IOTEDGE_DEVICEID", "edge"),
            ("IOTEDGE_MODULEID", "router"),
            ("IOTEDGE_MODULEGENERATIONID", "g1"),
            ("IOTEDGE_WORKLOADURI", "unix:///tmp/w.sock"),
            ("IOTEDGE_APIVERSION", "2019-01-30"),
            (env::GATEWAY_PORT, "18883"),
            (
                env::LOCAL_BINDS,
                "/avrofiles=/state/binds/data/avrofiles;/etc/aziot=/state/aziot",
            ),
        ]))
        .unwrap();
        assert_eq!(s.client_id(), "edge/router");
        assert!(s
            .username()
            .starts_with("hub.local/edge/router/?api-version="));
        assert_eq!(s.port, 18883);
        assert!(
            matches!(s.credentials, Credentials::Workload { ref generation_id, .. } if generation_id == "g1")
        );
        assert_eq!(
            s.container_path(Path::new("/avrofiles/2026/11/21/5/15.avro")),
            PathBuf::from("/state/binds/data/avrofiles/2026/11/21/5/15.avro")
        );
        assert_eq!(
            s.container_path(Path::new("/other")),
            PathBuf::from("/other")
        );
    }

    #[test]
    fn reads_a_device_connection_string_with_a_gateway() {
        let s = Settings::from_device_connection_string(
            "HostName=hub;DeviceId=Client_001;SharedAccessKey=a2V5;GatewayHostName=localhost",
        )
        .unwrap();
        assert!(s.is_device());
        assert_eq!(
            (s.client_id(), s.gateway_hostname.as_str()),
            ("Client_001".to_owned(), "localhost")
        );
        assert!(s.username().starts_with("hub/Client_001/?api-version="));
        assert_eq!(s.resource_uri(), "hub/devices/Client_001");
        assert!(Settings::from_device_connection_string(
            "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=k"
        )
        .is_err());
    }

    #[test]
    fn says_which_variable_is_missing() {
        let e = Settings::from_vars(&vars(&[("IOTEDGE_WORKLOADURI", "unix:///w.sock")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("IOTEDGE_IOTHUBHOSTNAME"), "{e}");
        let e = Settings::from_vars(&vars(&[])).unwrap_err().to_string();
        assert!(e.contains("EdgeHubConnectionString"), "{e}");
    }

    #[test]
    fn reads_a_module_connection_string() {
        let s = Settings::from_vars(&vars(&[
            (
                "EdgeHubConnectionString",
                "HostName=hub;GatewayHostName=gw;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5",
            ),
            ("EdgeModuleCACertificateFile", "/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(s.gateway_hostname, "gw");
        assert!(matches!(s.trust, TrustSource::File(ref p) if p == Path::new("/ca.pem")));
        let e = Settings::from_connection_string("HostName=h;DeviceId=d;SharedAccessKey=k")
            .unwrap_err();
        assert!(e.to_string().contains("ModuleId"));
    }
}
