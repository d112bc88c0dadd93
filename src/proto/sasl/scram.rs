//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) on the server side:
//! the stored verifier, the client's two messages parsed, the server's two built, and
//! the proof checked. Channel binding (`-PLUS`) is `tls-exporter` (RFC 9266) or
//! `tls-server-end-point` (RFC 5929).
//!
//! The server keeps only the verifier (`StoredKey`, `ServerKey`, salt, iteration
//! count) derived when the password is set, never the password; checking a proof is a
//! few HMACs (microseconds), so SCRAM logins never touch the argon2 pool. Pure: the
//! caller looks up the verifier and the channel's binding data.

use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

use super::SaslError;

/// PBKDF2 iterations for a new verifier: above RFC 7677's minimum of 4096, which is
/// what a client pays once per login (the server pays nothing).
pub const ITERATIONS: u32 = 10_000;
/// What a client may make us accept: a verifier with fewer iterations is never made.
const ITERATIONS_MIN: u32 = 4096;
/// Client nonce, user name and extension text are bounded by the line limit of each
/// protocol; this bounds what we keep between the two messages.
const CLIENT_FIRST_MAX: usize = 2048;

/// The stored verifier of one account (base64 fields, as in `users.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: String,
    pub stored_key: String,
    pub server_key: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Verifier {
    /// Derives the verifier of `password` with a fresh random salt.
    pub fn derive(password: &str) -> Result<Verifier, String> {
        let mut salt = [0u8; 16];
        super::fill_random(&mut salt)?;
        Ok(Self::derive_with(password, &salt, ITERATIONS))
    }

    pub fn derive_with(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted = [0u8; 32];
        let rounds = std::num::NonZeroU32::new(iterations.max(ITERATIONS_MIN))
            .unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let server_key = hmac::sign(&key, b"Server Key");
        Verifier {
            iterations: rounds.get(),
            salt: b64().encode(salt),
            stored_key: b64().encode(stored_key.as_ref()),
            server_key: b64().encode(server_key.as_ref()),
        }
    }

    /// A verifier for an account that does not exist (or has none yet): the same
    /// salt for the same name on every shard and every try (keyed by a secret made at
    /// start-up), keys no proof matches. The reply then looks like one for a real
    /// account.
    pub fn decoy(username: &str) -> Verifier {
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut s = [0u8; 32];
            let _ = super::fill_random(&mut s);
            s
        });
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            username.as_bytes(),
        );
        let salt = tag.as_ref().get(..16).unwrap_or_default();
        let mut keys = [0u8; 64];
        if super::fill_random(&mut keys).is_err() {
            keys = [0xa5; 64]; // still unreachable: no proof hashes to it
        }
        Verifier {
            iterations: ITERATIONS,
            salt: b64().encode(salt),
            stored_key: b64().encode(keys.get(..32).unwrap_or_default()),
            server_key: b64().encode(keys.get(32..).unwrap_or_default()),
        }
    }
}

/// The channel binding data the TLS layer offers for this connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelBinding {
    /// `tls-exporter` (RFC 9266): 32 bytes of exported keying material.
    pub exporter: Option<Vec<u8>>,
    /// `tls-server-end-point` (RFC 5929): the hash of our certificate.
    pub server_end_point: Option<Vec<u8>>,
}

/// What the client asked for in its GS2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// `n`: the client does not support channel binding.
    None,
    /// `y`: the client supports it but thinks we do not.
    ClientOnly,
    /// `p=NAME`: bound to this channel.
    Bound(String),
}

/// The exchange after the client's first message.
#[derive(Debug, Clone)]
pub struct ServerFirst {
    /// The GS2 header exactly as sent (`n,,`), which `c=` must repeat.
    gs2_header: String,
    binding: Binding,
    client_first_bare: String,
    client_nonce: String,
    /// The user name (SASLname unescaped).
    pub username: String,
}

/// Ready for the client's final message.
#[derive(Debug, Clone)]
pub struct Awaiting {
    first: ServerFirst,
    server_first: String,
    nonce: String,
    verifier: Verifier,
    binding_data: Option<Vec<u8>>,
}

/// The client's proof checked: whether it matched, and the server's final message.
#[derive(Debug, Clone)]
pub struct Proven {
    pub matched: bool,
    /// `v=…` to send when the login is accepted.
    pub server_final: Vec<u8>,
}

/// Parses the client's first message. `plus`: the mechanism was `-PLUS`;
/// `offered_plus`: we advertised `-PLUS` on this connection (so a `y` flag means a
/// downgrade).
pub fn client_first(
    message: &[u8],
    plus: bool,
    offered_plus: bool,
) -> Result<ServerFirst, SaslError> {
    if message.len() > CLIENT_FIRST_MAX {
        return Err(SaslError::Malformed);
    }
    let text = std::str::from_utf8(message).map_err(|_| SaslError::NotUtf8)?;
    let (flag, rest) = text.split_once(',').ok_or(SaslError::Malformed)?;
    let (authzid, bare) = rest.split_once(',').ok_or(SaslError::Malformed)?;
    let binding = match flag {
        "n" => Binding::None,
        "y" => Binding::ClientOnly,
        f => Binding::Bound(
            f.strip_prefix("p=")
                .ok_or(SaslError::Malformed)?
                .to_string(),
        ),
    };
    match (&binding, plus) {
        (Binding::Bound(_), false) | (Binding::None | Binding::ClientOnly, true) => {
            return Err(SaslError::ChannelBinding)
        }
        (Binding::ClientOnly, false) if offered_plus => return Err(SaslError::ChannelBinding),
        _ => {}
    }
    let mut attrs = bare.split(',');
    let user = attrs
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .ok_or(SaslError::Malformed)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(SaslError::Malformed)?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(SaslError::Malformed);
    }
    let username = unescape(user)?;
    if let Some(a) = authzid.strip_prefix("a=") {
        if unescape(a)? != username {
            return Err(SaslError::AuthzMismatch);
        }
    } else if !authzid.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(ServerFirst {
        gs2_header: format!("{flag},{authzid},"),
        binding,
        client_first_bare: bare.to_string(),
        client_nonce: nonce.to_string(),
        username,
    })
}

/// `=2C` and `=3D` back to `,` and `=` (RFC 5802 §5.1); any other `=` is an error.
fn unescape(name: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let code = rest.get(i..i + 3).ok_or(SaslError::Malformed)?;
        out.push(match code {
            "=2C" => ',',
            "=3D" => '=',
            _ => return Err(SaslError::Malformed),
        });
        rest = rest.get(i + 3..).unwrap_or_default();
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(out)
}

impl ServerFirst {
    /// Builds the server's first message from the account's verifier and the
    /// channel's binding data (checked against the client's request here, so a
    /// binding we cannot give fails before any proof).
    pub fn challenge(
        self,
        verifier: Verifier,
        channel: &ChannelBinding,
    ) -> Result<(Awaiting, Vec<u8>), SaslError> {
        let binding_data = match &self.binding {
            Binding::Bound(name) => Some(
                match name.as_str() {
                    "tls-exporter" => channel.exporter.clone(),
                    "tls-server-end-point" => channel.server_end_point.clone(),
                    _ => None,
                }
                .ok_or(SaslError::ChannelBinding)?,
            ),
            _ => None,
        };
        let mut random = [0u8; 18];
        super::fill_random(&mut random).map_err(|_| SaslError::Malformed)?;
        let nonce = format!("{}{}", self.client_nonce, b64().encode(random));
        let server_first = format!("r={nonce},s={},i={}", verifier.salt, verifier.iterations);
        let message = server_first.clone().into_bytes();
        Ok((
            Awaiting {
                first: self,
                server_first,
                nonce,
                verifier,
                binding_data,
            },
            message,
        ))
    }
}

impl Awaiting {
    /// Checks the client's final message: the channel binding it repeats, the nonce,
    /// and the proof. A malformed message or a wrong binding is an error; a wrong
    /// proof is `matched: false` (the caller counts the failed login).
    pub fn client_final(&self, message: &[u8]) -> Result<Proven, SaslError> {
        let text = std::str::from_utf8(message).map_err(|_| SaslError::NotUtf8)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
        let mut attrs = without_proof.split(',');
        let c = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(SaslError::Malformed)?;
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(SaslError::Malformed)?;
        let mut expected = self.first.gs2_header.clone().into_bytes();
        expected.extend_from_slice(self.binding_data.as_deref().unwrap_or_default());
        let presented = b64().decode(c).map_err(|_| SaslError::BadBase64)?;
        if presented != expected {
            return Err(SaslError::ChannelBinding);
        }
        if r != self.nonce {
            return Err(SaslError::Malformed);
        }
        let proof = b64().decode(proof).map_err(|_| SaslError::BadBase64)?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.first.client_first_bare, self.server_first
        );
        let stored = b64().decode(&self.verifier.stored_key).unwrap_or_default();
        let server_key = b64().decode(&self.verifier.server_key).unwrap_or_default();
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &stored),
            auth_message.as_bytes(),
        );
        let matched = proof.len() == 32 && {
            let client_key: Vec<u8> = proof
                .iter()
                .zip(signature.as_ref())
                .map(|(p, s)| p ^ s)
                .collect();
            let hashed = digest::digest(&digest::SHA256, &client_key);
            // Constant time: the comparison must not tell how much of a guess matched.
            let differ = hashed
                .as_ref()
                .iter()
                .zip(&stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            stored.len() == 32 && differ == 0
        };
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &server_key),
            auth_message.as_bytes(),
        );
        Ok(Proven {
            matched,
            server_final: format!("v={}", b64().encode(server_signature.as_ref())).into_bytes(),
        })
    }

    pub fn username(&self) -> &str {
        &self.first.username
    }
}

/// `tls-server-end-point` data for a certificate (RFC 5929 §4.1): its hash with the
/// hash function of its signature algorithm, SHA-256 for MD5 and SHA-1.
pub fn server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let algorithm = match signature_oid(cert_der) {
        Some(oid) if SHA384_OIDS.contains(&oid) => &digest::SHA384,
        Some(oid) if SHA512_OIDS.contains(&oid) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(algorithm, cert_der).as_ref().to_vec()
}

/// sha384WithRSAEncryption, ecdsa-with-SHA384 (DER contents of the OID).
const SHA384_OIDS: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
/// sha512WithRSAEncryption, ecdsa-with-SHA512.
const SHA512_OIDS: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

/// The OID of `Certificate.signatureAlgorithm` (X.509: SEQUENCE { tbsCertificate,
/// signatureAlgorithm SEQUENCE { OID, … }, signature }).
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (_, certificate) = der_element(der, 0x30)?;
    let (after_tbs, _) = der_element(certificate, 0x30)?;
    let (_, algorithm) = der_element(after_tbs, 0x30)?;
    let (_, oid) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element of type `tag` at the start of `input`: (what follows it, its
/// contents).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let contents = input.get(header..header.checked_add(len)?)?;
    Some((input.get(header + len..)?, contents))
}
