//! TLS: loads the certificate and key named by `tls.cert`/`tls.key`, generating a
//! self-signed pair on first start when they are the defaults under the data directory.
//!
//! Builds one rustls `ServerConfig` (ring provider, TLS 1.2 and 1.3) that every shard
//! shares through an `Arc` (rustls requires it), and the client configs the outbound
//! queue and the load tester use. Never logs key material.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Loads (or, for the default paths, creates) the server's TLS configuration.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, String> {
    let default_dir = config.data_dir.join("tls");
    let is_default =
        config.tls_cert.starts_with(&default_dir) && config.tls_key.starts_with(&default_dir);
    if is_default && !config.tls_cert.exists() && !config.tls_key.exists() {
        generate_self_signed(&config.hostname, &config.tls_cert, &config.tls_key)?;
        tracing::warn!(
            cert = %config.tls_cert.display(),
            "generated a self-signed certificate; set tls.cert and tls.key for a real one"
        );
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.tls_cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", config.tls_cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert: no certificate in {}",
            config.tls_cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.tls_key)
        .map_err(|e| format!("tls.key: cannot read {}: {e}", config.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert/tls.key do not form a usable pair: {e}"))?;
    Ok(Arc::new(server))
}

/// The `tls-server-end-point` channel binding (RFC 5929) of the first certificate in
/// `cert_path`: what SCRAM-SHA-256-PLUS clients that bind to the certificate expect.
pub fn server_end_point(cert_path: &Path) -> Option<Vec<u8>> {
    let cert = CertificateDer::pem_file_iter(cert_path)
        .ok()?
        .next()?
        .ok()?;
    Some(crate::proto::sasl::scram::server_end_point(&cert))
}

fn generate_self_signed(hostname: &str, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    crate::users::write_atomic(cert_path, cert.cert.pem().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    crate::users::write_atomic(key_path, cert.key_pair.serialize_pem().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(key_path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

/// Client config that verifies the server against the web PKI roots
/// (`queue.tls_required`).
pub fn client_config_verified(extra: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // `extra_roots` checked that every one is a usable trust anchor.
    let _ = roots.add_parsable_certificates(extra.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable_config());
    Arc::new(config)
}

/// The certificates of a PEM trust-anchor file (`queue.tls_ca_file`): at least one.
pub fn extra_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    let (_, unusable) = rustls::RootCertStore::empty().add_parsable_certificates(certs.clone());
    if unusable > 0 {
        return Err(format!(
            "{}: {unusable} certificate(s) cannot be trust anchors",
            path.display()
        ));
    }
    Ok(certs)
}

/// Client config that encrypts without authenticating the server: opportunistic TLS
/// between MTAs (RFC 7435), and the load tester against self-signed test servers.
pub fn client_config_unverified() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable_config());
    Arc::new(config)
}

fn unreachable_config() -> rustls::ClientConfig {
    // ring supports the safe defaults; this only keeps the constructor panic-free.
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Accepts any certificate (signatures are still checked): see
/// [`client_config_unverified`].
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
