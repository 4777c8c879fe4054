//! Trusted roots from a PEM bundle (the workload API's trust bundle, the runtime's CA):
//! the one place a rustls root store is filled from PEM, for the module client, the upload
//! client and the runtime alike. Feature `tls`.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;

/// What is wrong with a PEM bundle of trusted certificates.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The text is not PEM.
    #[error("not valid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// A certificate cannot be a trust anchor.
    #[error("certificate rejected: {0}")]
    Rejected(#[from] rustls::Error),
    /// The bundle holds no certificate.
    #[error("it holds no certificate")]
    Empty,
}

/// The certificates of a PEM bundle, in order (other PEM sections are skipped).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    Ok(CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?)
}

/// Adds every certificate of `pem` to `roots`; returns how many (none is not an error).
pub fn add_roots(roots: &mut RootCertStore, pem: &[u8]) -> Result<usize, TrustError> {
    let certs = certificates(pem)?;
    let n = certs.len();
    for c in certs {
        roots.add(c)?;
    }
    Ok(n)
}

/// A root store of exactly the certificates of `pem`; [`TrustError::Empty`] when it has none.
pub fn root_store(pem: &[u8]) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    if add_roots(&mut roots, pem)? == 0 {
        return Err(TrustError::Empty);
    }
    Ok(roots)
}

/// TLS client settings trusting `roots`, with ring's provider and rustls' safe default
/// protocol versions, without client authentication.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, TrustError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_or_empty_bundles_are_refused() {
        assert!(matches!(root_store(b""), Err(TrustError::Empty)));
        assert!(matches!(
            root_store(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
            Err(TrustError::Pem(_))
        ));
        let not_der =
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".as_slice();
        assert!(matches!(root_store(not_der), Err(TrustError::Rejected(_))));
        let mut roots = RootCertStore::empty();
        assert_eq!(add_roots(&mut roots, b"").unwrap(), 0);
    }
}
