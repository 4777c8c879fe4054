//! SAS tokens for the module's identity: signed by the workload API (a module on IoT Edge) or
//! with a shared key (a connection string), and the trust bundle to verify edgeHub with.

use crate::error::Error;
use crate::settings::{Credentials, Settings, TrustSource};
use crate::workload::WorkloadClient;
use edge_protocol::sas;
use std::time::{SystemTime, UNIX_EPOCH};

/// Signs tokens for the module's identity.
#[derive(Clone)]
pub(crate) struct TokenSource {
    pub(crate) settings: Settings,
    workload: Option<WorkloadClient>,
}

impl TokenSource {
    pub(crate) fn new(settings: &Settings) -> Self {
        let workload = match &settings.credentials {
            Credentials::Workload {
                uri, api_version, ..
            } => Some(WorkloadClient::new(uri.clone(), api_version.clone())),
            Credentials::SharedKey(_) => None,
        };
        TokenSource {
            settings: settings.clone(),
            workload,
        }
    }

    /// A fresh token and its expiry (seconds since the epoch).
    pub(crate) async fn token(&self) -> Result<(String, u64), Error> {
        let s = &self.settings;
        let expiry = now_secs() + s.token_ttl_secs;
        let resource = s.resource_uri();
        let to_sign = sas::string_to_sign(&resource, expiry);
        let sig = match (&s.credentials, &self.workload) {
            (Credentials::Workload { generation_id, .. }, Some(w)) => {
                w.sign(&s.module_id, generation_id, to_sign.as_bytes())
                    .await?
            }
            (Credentials::SharedKey(key), _) => {
                sas::sign(key, to_sign.as_bytes()).map_err(|e| Error::Config(e.to_string()))?
            }
            (Credentials::Workload { .. }, None) => unreachable!("workload client made in new()"),
        };
        Ok((sas::token_from_signature(&resource, &sig, expiry), expiry))
    }

    pub(crate) async fn trust_pem(&self) -> Result<String, Error> {
        match (&self.settings.trust, &self.workload) {
            (TrustSource::Pem(p), _) => Ok(p.clone()),
            (TrustSource::File(path), _) => std::fs::read_to_string(path).map_err(|e| {
                Error::Tls(format!(
                    "cannot read CA certificate file {}: {e}",
                    path.display()
                ))
            }),
            (TrustSource::Workload, Some(w)) => w.trust_bundle().await,
            (TrustSource::Workload, None) => Err(Error::Config(
                "no trust bundle: in connection-string mode set EdgeModuleCACertificateFile".into(),
            )),
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
