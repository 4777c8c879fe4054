//! Device and module connection strings:
//! `HostName=…;DeviceId=…[;ModuleId=…];SharedAccessKey=…[;GatewayHostName=…]`.

use std::fmt;

/// A connection string that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionStringError {
    /// A required field is absent.
    #[error("connection string has no {0}= field")]
    Missing(&'static str),
    /// A part has no `=`.
    #[error("connection string part '{0}' is not Key=Value")]
    BadPart(String),
}

/// A part of a connection string that is not `Name=value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadField<'a> {
    /// Its position among the non-blank parts, from 1 (safe to show: never holds a key).
    pub position: usize,
    /// The part itself (may hold a secret: show it only where that is acceptable).
    pub text: &'a str,
}

/// The `Name=value` parts of a `;`-separated connection string (IoT Hub's or Azure Storage's),
/// names and values trimmed, blank parts skipped. A value may itself contain `=` (base64
/// padding).
pub fn fields(text: &str) -> impl Iterator<Item = Result<(&str, &str), BadField<'_>>> {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, part)| {
            part.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or(BadField {
                    position: i + 1,
                    text: part,
                })
        })
}

/// A parsed device or module connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// IoT Hub host name (the SAS audience).
    pub host_name: String,
    /// Device id.
    pub device_id: String,
    /// Module id, for a module identity.
    pub module_id: Option<String>,
    /// Base64 shared access key.
    pub shared_access_key: String,
    /// The edge gateway to connect through, when set.
    pub gateway_host_name: Option<String>,
}

impl ConnectionString {
    /// Parses a connection string. Field names are case-sensitive as IoT Hub writes them;
    /// the key may itself contain `=` (base64 padding).
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let (mut host, mut device, mut module, mut key, mut gateway) =
            (None, None, None, None, None);
        for field in fields(text) {
            let (k, v) =
                field.map_err(|bad| ConnectionStringError::BadPart(bad.text.to_owned()))?;
            let v = Some(v.to_owned());
            match k {
                "HostName" => host = v,
                "DeviceId" => device = v,
                "ModuleId" => module = v,
                "SharedAccessKey" => key = v,
                "GatewayHostName" => gateway = v,
                _ => {}
            }
        }
        Ok(ConnectionString {
            host_name: host.ok_or(ConnectionStringError::Missing("HostName"))?,
            device_id: device.ok_or(ConnectionStringError::Missing("DeviceId"))?,
            module_id: module,
            shared_access_key: key.ok_or(ConnectionStringError::Missing("SharedAccessKey"))?,
            gateway_host_name: gateway,
        })
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={};DeviceId={}", self.host_name, self.device_id)?;
        if let Some(m) = &self.module_id {
            write!(f, ";ModuleId={m}")?;
        }
        write!(f, ";SharedAccessKey={}", self.shared_access_key)?;
        if let Some(g) = &self.gateway_host_name {
            write!(f, ";GatewayHostName={g}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectionString {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("gateway_host_name", &self.gateway_host_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_the_first_equals_and_count_the_bad_part() {
        let got: Vec<_> = fields(" AccountName = a1 ;; AccountKey=a2V5==; oops ;").collect();
        assert_eq!(
            got,
            vec![
                Ok(("AccountName", "a1")),
                Ok(("AccountKey", "a2V5==")),
                Err(BadField {
                    position: 3,
                    text: "oops"
                }),
            ]
        );
    }

    #[test]
    fn parses_and_prints_module_strings() {
        let s = "HostName=hub.local;GatewayHostName=localhost;DeviceId=edge;ModuleId=router;SharedAccessKey=abc==";
        let c = ConnectionString::parse(s).unwrap();
        assert_eq!(c.host_name, "hub.local");
        assert_eq!(c.module_id.as_deref(), Some("router"));
        assert_eq!(c.shared_access_key, "abc==");
        assert_eq!(c.gateway_host_name.as_deref(), Some("localhost"));
        assert_eq!(ConnectionString::parse(&c.to_string()).unwrap(), c);
        assert!(!format!("{c:?}").contains("abc=="));
    }

    #[test]
    fn says_what_is_missing() {
        assert_eq!(
            ConnectionString::parse("HostName=h;SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("DeviceId"))
        );
        assert_eq!(
            ConnectionString::parse("HostName=h;oops"),
            Err(ConnectionStringError::BadPart("oops".into()))
        );
    }
}
