//! The runtime's TLS material: a CA (the workload API's trust bundle) and edgeHub's server
//! certificate for the gateway host name, kept in the state folder and reissued when the
//! host names change.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;

/// PEM texts of the CA and the server certificate and key.
pub struct TlsMaterial {
    /// CA certificate: the trust bundle.
    pub ca_pem: String,
    /// Server certificate followed by the CA (the chain edgeHub presents).
    pub server_chain_pem: String,
    /// Server private key.
    pub server_key_pem: String,
}

/// Loads the material from `dir`, or creates it for `hostnames` (plus 127.0.0.1 and ::1).
pub fn load_or_create(dir: &Path, hostnames: &[String]) -> Result<TlsMaterial> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names_file = dir.join("server.names");
    let wanted = hostnames.join(",");
    let files = ["ca.pem", "server.pem", "server.key"].map(|f| dir.join(f));
    let current = std::fs::read_to_string(&names_file).unwrap_or_default();
    if current == wanted && files.iter().all(|f| f.exists()) {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        return Ok(TlsMaterial {
            ca_pem: read(&files[0])?,
            server_chain_pem: read(&files[1])?,
            server_key_pem: read(&files[2])?,
        });
    }
    let m = create(hostnames)?;
    std::fs::write(&files[0], &m.ca_pem)?;
    std::fs::write(&files[1], &m.server_chain_pem)?;
    write_key(&files[2], &m.server_key_pem)?;
    std::fs::write(names_file, wanted)?;
    Ok(m)
}

fn write_key(path: &Path, pem: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, pem.as_bytes())?;
    Ok(())
}

fn create(hostnames: &[String]) -> Result<TlsMaterial> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "iotedge-local CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).context("self-signing the CA")?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().context("generating the server key")?;
    let mut server = CertificateParams::new(hostnames.to_vec()).context("server host names")?;
    server.distinguished_name.push(
        DnType::CommonName,
        hostnames.first().cloned().unwrap_or_default(),
    );
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A rustls server configuration from the material.
pub fn server_config(m: &TlsMaterial) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let chain = edge_protocol::trust::certificates(m.server_chain_pem.as_bytes())
        .context("server certificate PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(m.server_key_pem.as_bytes()).context("server key PEM")?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("server certificate and key do not match")?;
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_reused_until_host_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let b = load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        let c = load_or_create(dir.path(), &["localhost".into(), "gw.local".into()]).unwrap();
        assert_ne!(a.ca_pem, c.ca_pem);
        server_config(&c).unwrap();
    }
}
