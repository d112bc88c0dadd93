//! DKIM signing keys (one active key per domain in `DATA/dkim/DOMAIN.json`, mode 0600),
//! the DNS record to publish for each, and signing (relaxed/relaxed, RFC 6376).
//!
//! RSA keys are 2048-bit, stored PKCS#1 and published as SubjectPublicKeyInfo (what
//! OpenDKIM and most verifiers expect); Ed25519 keys (RFC 8463) are stored PKCS#8 and
//! published raw. Signing is CPU work: callers run it off the reactor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use serde::{Deserialize, Serialize};

/// Headers we sign, in this order (RFC 6376 §5.4.1's recommendation, plus MIME).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

/// One domain's signing key, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub domain: String,
    pub selector: String,
    pub algorithm: Algorithm,
    /// base64 DER private key (PKCS#1 for RSA, PKCS#8 for Ed25519).
    pub private_key: String,
    /// base64 public key exactly as published in `p=`.
    pub public_key: String,
    pub created: i64,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dkim")
}

fn path(data_dir: &Path, domain: &str) -> PathBuf {
    dir(data_dir).join(format!("{domain}.json"))
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Creates a new key for `domain` (refuses to replace one unless `force`).
pub fn generate(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    force: bool,
) -> Result<KeyFile, String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if !valid_label(&domain) || !valid_label(selector) {
        return Err("domain and selector must be DNS names (letters, digits, '-', '.')".into());
    }
    let file = path(data_dir, &domain);
    if file.exists() && !force {
        return Err(format!(
            "{} already has a key ({}); use --force to replace it (publish the new record first, \
             under a new --selector, to rotate without failures)",
            domain,
            file.display()
        ));
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (private_key, public_key) = match algorithm {
        Algorithm::Rsa => {
            let pair = DkimKeyPair::generate_rsa(2048)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            (
                b64(pair.private_key()),
                b64(&spki_from_pkcs1(pair.public_key())),
            )
        }
        Algorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519()
                .map_err(|e| format!("Ed25519 key generation failed: {e}"))?;
            (b64(pair.private_key()), b64(pair.public_key()))
        }
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let key = KeyFile {
        domain,
        selector: selector.to_string(),
        algorithm,
        private_key,
        public_key,
        created,
    };
    key.signing_key()?; // never store a key we cannot use
    std::fs::create_dir_all(dir(data_dir))
        .map_err(|e| format!("cannot create {}: {e}", dir(data_dir).display()))?;
    let text = serde_json::to_string_pretty(&key).map_err(|e| e.to_string())?;
    crate::users::write_atomic(&file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
    Ok(key)
}

/// The key of `domain`, if one was generated.
pub fn load(data_dir: &Path, domain: &str) -> Result<Option<KeyFile>, String> {
    let file = path(data_dir, &domain.to_ascii_lowercase());
    match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Every domain's key (what a shard signs with).
pub fn load_all(data_dir: &Path) -> Result<HashMap<String, KeyFile>, String> {
    let mut keys = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return Ok(keys);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(domain) = name.strip_suffix(".json") {
            if let Some(key) = load(data_dir, domain)? {
                key.signing_key()?;
                keys.insert(key.domain.clone(), key);
            }
        }
    }
    Ok(keys)
}

impl KeyFile {
    /// `selector._domainkey.domain`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT value: `v=DKIM1; k=…; p=…`.
    pub fn txt_value(&self) -> String {
        let k = match self.algorithm {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key)
    }

    /// A zone-file line, with the value split into ≤255-byte strings (RFC 1035 §3.3).
    pub fn zone_record(&self) -> String {
        let value = self.txt_value();
        let chunks: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{}. IN TXT ( {} )", self.record_name(), chunks.join(" "))
    }

    pub fn signing_key(&self) -> Result<DkimKey, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(&self.private_key)
            .map_err(|e| format!("DKIM key for {}: {e}", self.domain))?;
        match self.algorithm {
            Algorithm::Rsa => {
                RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)))
                    .map(DkimKey::Rsa)
                    .map_err(|e| format!("DKIM key for {}: {e}", self.domain))
            }
            Algorithm::Ed25519 => Ed25519Key::from_pkcs8_der(&der)
                .map(DkimKey::Ed25519)
                .map_err(|e| format!("DKIM key for {}: {e}", self.domain)),
        }
    }

    /// The `DKIM-Signature:` header (CRLF-terminated) for `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = DkimSigner::from_key(self.signing_key()?)
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .sign(message)
            .map_err(|e| format!("DKIM signing for {} failed: {e}", self.domain))?;
        Ok(signature.to_header())
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption, NULL params).
fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(n: usize, out: &mut Vec<u8>) {
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
    }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bit_string);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALGORITHM.len() + bit_string.len(), &mut out);
    out.extend_from_slice(ALGORITHM);
    out.extend_from_slice(&bit_string);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_show_sign_both_algorithms() {
        let dir = std::env::temp_dir().join(format!("shardmail-dkim-{}", std::process::id()));
        for (alg, domain) in [
            (Algorithm::Ed25519, "ed.example"),
            (Algorithm::Rsa, "rsa.example"),
        ] {
            let key = generate(&dir, domain, "s1", alg, false).expect("generate");
            assert!(
                generate(&dir, domain, "s1", alg, false).is_err(),
                "no silent replace"
            );
            let loaded = load(&dir, domain).expect("load").expect("present");
            assert_eq!(loaded.public_key, key.public_key);
            assert!(key
                .zone_record()
                .starts_with(&format!("s1._domainkey.{domain}. IN TXT")));
            let header = key
                .sign(b"From: a@x.example\r\nSubject: t\r\n\r\nbody\r\n")
                .expect("sign");
            assert!(header.starts_with("DKIM-Signature:"), "{header}");
            assert!(header.contains(&format!("d={domain}")));
        }
        let rsa = load(&dir, "rsa.example").expect("load").expect("present");
        assert!(
            rsa.public_key
                .starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"),
            "SPKI RSA-2048 prefix"
        );
        assert_eq!(load_all(&dir).expect("all").len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
