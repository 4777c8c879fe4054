//! The HTTPS client every uploader uses.

use crate::Error;
use std::time::Duration;

/// An HTTPS client trusting the system's roots plus `extra_roots_pem` (the edge trust
/// bundle, when the hub or the storage is local); requests time out after two minutes.
pub(crate) fn client(extra_roots_pem: Option<&str>) -> Result<reqwest::Client, Error> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable or unusable system roots are left out, as a browser would.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = extra_roots_pem {
        edge_protocol::trust::add_roots(&mut roots, pem.as_bytes())
            .map_err(|e| Error::Config(format!("trust bundle: {e}")))?;
    }
    let tls =
        edge_protocol::trust::client_config(roots).map_err(|e| Error::Config(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Config(e.to_string()))
}
