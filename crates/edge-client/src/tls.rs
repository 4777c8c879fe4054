//! The TLS client configuration for edgeHub: the trust bundle's roots, ring's provider.

use crate::error::Error;
use edge_protocol::trust::{self, TrustError};
use std::sync::Arc;

pub(crate) fn tls_config(pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = trust::root_store(pem.as_bytes()).map_err(|e| {
        Error::Tls(match e {
            TrustError::Pem(e) => format!("trust bundle is not valid PEM: {e}"),
            TrustError::Rejected(e) => format!("trust bundle certificate rejected: {e}"),
            TrustError::Empty => "the trust bundle holds no certificate".into(),
        })
    })?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ring's provider, offering TLS 1.3's AES-128-GCM first (rustls offers AES-256-GCM
/// first). Every message crosses edgeHub's TLS connections twice, and AES-128 takes 10
/// rounds per block where AES-256 takes 14; 128-bit keys are the strength the key exchange
/// (X25519, P-256) gives anyway, and the suite is the one TLS 1.3 requires of every peer.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the other suites keep their order.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_offers_aes_128_gcm_first_and_keeps_the_other_suites() {
        let default = rustls::crypto::ring::default_provider();
        let ours = crypto_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let mut a: Vec<_> = default.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut b: Vec<_> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        a.sort_by_key(|s| u16::from(*s));
        b.sort_by_key(|s| u16::from(*s));
        assert_eq!(a, b);
    }
}
