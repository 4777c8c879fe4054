//! The environment an IoT Edge runtime gives each module: the `IOTEDGE_*` variable names and
//! what they mean, written by the local runtime's agent ([`ModuleEnv::to_vars`]) and read by
//! the module client ([`ModuleEnv::from_vars`]).
//!
//! Two variables are this project's own, set by the local runtime only: [`GATEWAY_PORT`]
//! (edgeHub not on 8883) and [`LOCAL_BINDS`] (the manifest's binds when a module runs as a
//! local process). Dev tools give a module its identity as a connection string instead
//! ([`CONNECTION_STRING`], [`CA_CERTIFICATE_FILE`]).

/// IoT Hub's host name: the SAS audience.
pub const IOTHUB_HOSTNAME: &str = "IOTEDGE_IOTHUBHOSTNAME";
/// The gateway (edgeHub) host name modules connect to; IoT Hub's when unset.
pub const GATEWAY_HOSTNAME: &str = "IOTEDGE_GATEWAYHOSTNAME";
/// The edge device's id.
pub const DEVICE_ID: &str = "IOTEDGE_DEVICEID";
/// The module's id.
pub const MODULE_ID: &str = "IOTEDGE_MODULEID";
/// The module's generation id (part of the workload API's sign path).
pub const GENERATION_ID: &str = "IOTEDGE_MODULEGENERATIONID";
/// The workload API: `unix:///path.sock` or `http://host:port`. Its presence says the module
/// was started by a runtime.
pub const WORKLOAD_URI: &str = "IOTEDGE_WORKLOADURI";
/// The workload API's version (its `api-version` query).
pub const API_VERSION: &str = "IOTEDGE_APIVERSION";
/// How the module authenticates: [`AUTH_SCHEME_SAS`].
pub const AUTH_SCHEME: &str = "IOTEDGE_AUTHSCHEME";
/// Not IoT Edge's: edgeHub's MQTT/TLS port, set by the local runtime when it is not
/// [`DEFAULT_GATEWAY_PORT`].
pub const GATEWAY_PORT: &str = "IOTEDGE_GATEWAYPORT";
/// Not IoT Edge's: the manifest's binds for a module run as a local process, as
/// `container=host` pairs separated by `;` (see [`format_binds`], [`parse_binds`]).
pub const LOCAL_BINDS: &str = "IOTEDGE_LOCAL_BINDS";
/// A module connection string, as dev tools give instead of the `IOTEDGE_*` set.
pub const CONNECTION_STRING: &str = "EdgeHubConnectionString";
/// The PEM file the gateway's certificate chains to, with [`CONNECTION_STRING`].
pub const CA_CERTIFICATE_FILE: &str = "EdgeModuleCACertificateFile";

/// The workload API version the runtime gives, and the client assumes when none is given.
pub const DEFAULT_API_VERSION: &str = "2019-01-30";
/// The only authentication scheme: SAS tokens signed by the workload API.
pub const AUTH_SCHEME_SAS: &str = "sasToken";
/// edgeHub's MQTT/TLS port on a device.
pub const DEFAULT_GATEWAY_PORT: u16 = 8883;

/// A variable missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// [`WORKLOAD_URI`] is set but another identity variable is not.
    #[error("{WORKLOAD_URI} is set but {0} is missing: a module must be started by an IoT Edge runtime, which sets all IOTEDGE_* variables")]
    Missing(&'static str),
    /// [`GATEWAY_PORT`] is not a port number.
    #[error("{GATEWAY_PORT}='{0}' is not a port number")]
    BadPort(String),
}

/// A module's identity as a runtime gives it, one field per variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEnv {
    /// [`IOTHUB_HOSTNAME`].
    pub iothub_hostname: String,
    /// [`GATEWAY_HOSTNAME`] (IoT Hub's host name when unset).
    pub gateway_hostname: String,
    /// [`DEVICE_ID`].
    pub device_id: String,
    /// [`MODULE_ID`].
    pub module_id: String,
    /// [`GENERATION_ID`].
    pub generation_id: String,
    /// [`WORKLOAD_URI`].
    pub workload_uri: String,
    /// [`API_VERSION`] ([`DEFAULT_API_VERSION`] when unset).
    pub api_version: String,
    /// [`GATEWAY_PORT`] ([`DEFAULT_GATEWAY_PORT`] when unset).
    pub gateway_port: u16,
    /// [`LOCAL_BINDS`]: `(container path, host path)` pairs.
    pub binds: Vec<(String, String)>,
}

impl ModuleEnv {
    /// The variables to give the module: every `IOTEDGE_*` identity variable, with
    /// [`AUTH_SCHEME`] [`AUTH_SCHEME_SAS`]; [`GATEWAY_PORT`] only when not the default and
    /// [`LOCAL_BINDS`] only when there are binds.
    pub fn to_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            (IOTHUB_HOSTNAME, self.iothub_hostname.as_str()),
            (GATEWAY_HOSTNAME, &self.gateway_hostname),
            (DEVICE_ID, &self.device_id),
            (MODULE_ID, &self.module_id),
            (GENERATION_ID, &self.generation_id),
            (WORKLOAD_URI, &self.workload_uri),
            (API_VERSION, &self.api_version),
            (AUTH_SCHEME, AUTH_SCHEME_SAS),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if self.gateway_port != DEFAULT_GATEWAY_PORT {
            vars.push((GATEWAY_PORT.to_owned(), self.gateway_port.to_string()));
        }
        if !self.binds.is_empty() {
            vars.push((LOCAL_BINDS.to_owned(), format_binds(&self.binds)));
        }
        vars
    }

    /// Reads the variables through `get` (a variable set to the empty string counts as
    /// unset). `None` when [`WORKLOAD_URI`] is unset: the module was not started by a runtime.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<ModuleEnv>, EnvError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let Some(workload_uri) = get(WORKLOAD_URI) else {
            return Ok(None);
        };
        let need = |k: &'static str| get(k).ok_or(EnvError::Missing(k));
        let iothub_hostname = need(IOTHUB_HOSTNAME)?;
        Ok(Some(ModuleEnv {
            gateway_hostname: get(GATEWAY_HOSTNAME).unwrap_or_else(|| iothub_hostname.clone()),
            iothub_hostname,
            device_id: need(DEVICE_ID)?,
            module_id: need(MODULE_ID)?,
            generation_id: need(GENERATION_ID)?,
            workload_uri,
            api_version: get(API_VERSION).unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
            gateway_port: gateway_port(get)?,
            binds: get(LOCAL_BINDS)
                .map(|b| parse_binds(&b))
                .unwrap_or_default(),
        }))
    }
}

/// [`GATEWAY_PORT`] through `get`, else [`DEFAULT_GATEWAY_PORT`].
pub fn gateway_port(get: impl Fn(&str) -> Option<String>) -> Result<u16, EnvError> {
    match get(GATEWAY_PORT).filter(|p| !p.is_empty()) {
        Some(p) => p.parse().map_err(|_| EnvError::BadPort(p)),
        None => Ok(DEFAULT_GATEWAY_PORT),
    }
}

/// The value of [`LOCAL_BINDS`]: `container=host` pairs separated by `;`.
pub fn format_binds(binds: &[(String, String)]) -> String {
    let pairs: Vec<String> = binds.iter().map(|(c, h)| format!("{c}={h}")).collect();
    pairs.join(";")
}

/// The pairs of a [`LOCAL_BINDS`] value; a part without `=` is skipped.
pub fn parse_binds(text: &str) -> Vec<(String, String)> {
    text.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(c, h)| (c.to_owned(), h.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sample() -> ModuleEnv {
        ModuleEnv {
            iothub_hostname: "hub.local".into(),
            gateway_hostname: "localhost".into(),
            device_id: "edge".into(),
            module_id: "router".into(),
            generation_id: "g1".into(),
            workload_uri: "unix:///w.sock".into(),
            api_version: DEFAULT_API_VERSION.into(),
            gateway_port: 18883,
            binds: vec![("/avrofiles".into(), "/state/binds/avrofiles".into())],
        }
    }

    #[test]
    fn what_the_runtime_writes_the_client_reads() {
        let vars: HashMap<String, String> = sample().to_vars().into_iter().collect();
        assert_eq!(vars[AUTH_SCHEME], AUTH_SCHEME_SAS);
        assert_eq!(vars[LOCAL_BINDS], "/avrofiles=/state/binds/avrofiles");
        let read = ModuleEnv::from_vars(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(read, Some(sample()));
    }

    #[test]
    fn defaults_are_not_written_and_are_read_back() {
        let env = ModuleEnv {
            gateway_port: DEFAULT_GATEWAY_PORT,
            binds: Vec::new(),
            ..sample()
        };
        let vars: HashMap<String, String> = env.to_vars().into_iter().collect();
        assert!(!vars.contains_key(GATEWAY_PORT) && !vars.contains_key(LOCAL_BINDS));
        assert_eq!(
            ModuleEnv::from_vars(|k| vars.get(k).cloned()).unwrap(),
            Some(env)
        );
    }

    #[test]
    fn says_what_is_missing_or_malformed() {
        let get = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(ModuleEnv::from_vars(get(&[])), Ok(None));
        assert_eq!(
            ModuleEnv::from_vars(get(&[(WORKLOAD_URI, "unix:///w.sock")])),
            Err(EnvError::Missing(IOTHUB_HOSTNAME))
        );
        assert_eq!(
            gateway_port(get(&[(GATEWAY_PORT, "x")])),
            Err(EnvError::BadPort("x".into()))
        );
        assert_eq!(
            parse_binds("a=b;junk;c=d=e"),
            [("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
    }
}
