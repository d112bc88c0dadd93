//! SASL pieces shared by SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034): base64
//! client responses and the PLAIN mechanism (RFC 4616). Pure; each protocol turns a
//! [`SaslError`] into its own reply.

use base64::Engine as _;

/// Why a client response was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    Cancelled,
    BadBase64,
    /// Not `authzid NUL authcid NUL passwd`.
    Malformed,
    NotUtf8,
    /// An authorization identity other than the user: we do not support proxy logins,
    /// so this is a failed authentication.
    AuthzMismatch,
}

/// Decodes one base64 response line (`=` is the empty response).
pub fn decode(response: &[u8]) -> Result<Vec<u8>, SaslError> {
    match response {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => base64::engine::general_purpose::STANDARD
            .decode(response)
            .map_err(|_| SaslError::BadBase64),
    }
}

/// Decodes a base64 response that must be UTF-8 text (LOGIN's user name and password).
pub fn decode_text(response: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(decode(response)?).map_err(|_| SaslError::NotUtf8)
}

/// A user name and password from PLAIN or LOGIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Decodes a PLAIN response.
pub fn plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let decoded = decode(response)?;
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| SaslError::NotUtf8)
    };
    let (authz, username, password) = (text(authz)?, text(user)?, text(pass)?);
    if !authz.is_empty() && authz != username {
        return Err(SaslError::AuthzMismatch);
    }
    Ok(Credentials { username, password })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        let c = plain(b"AGFsaWNlAHNlY3JldA==").unwrap(); // \0alice\0secret
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "secret")
        );
        assert!(plain(b"YWxpY2UAYWxpY2UAc2VjcmV0").is_ok()); // alice\0alice\0secret
        assert_eq!(
            plain(b"Ym9iAGFsaWNlAHNlY3JldA=="),
            Err(SaslError::AuthzMismatch)
        );
        assert_eq!(plain(b"*"), Err(SaslError::Cancelled));
        assert_eq!(plain(b"!!"), Err(SaslError::BadBase64));
        assert_eq!(plain(b"YWxpY2U="), Err(SaslError::Malformed));
        assert_eq!(decode(b"=").unwrap(), Vec::<u8>::new());
    }
}
