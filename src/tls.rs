//! TLS: loads the certificate and key named by `tls.cert`/`tls.key`, generating a
//! self-signed pair on first start when they are the defaults under the data directory.
//!
//! Builds one rustls `ServerConfig` (ring provider, TLS 1.2 and 1.3) that every shard
//! shares through an `Arc` (rustls requires it). Never logs key material.

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
