//! App passwords: random secrets an account hands to one device or program, each
//! with a label and the protocols it may log in to, revocable one by one.
//!
//! A secret is 128 random bits shown once as 32 hex digits in groups of four. Since
//! nobody can guess it, a slow hash buys nothing: it is stored as HMAC-SHA256 keyed
//! with a random per-entry salt and checked in microseconds, so a device polling
//! every minute costs the server no argon2. Owns the format and the check; never
//! reads or writes `users.json` itself (the CLI does, through [`super::UserDb`]).

use serde::{Deserialize, Serialize};

/// App passwords per account (each login may try them all).
pub const APP_PASSWORDS_MAX: usize = 20;
/// The protocols an app password may be scoped to.
pub const SCOPES: [&str; 3] = ["imap", "pop3", "smtp"];

const SECRET_BYTES: usize = 16;
const SALT_BYTES: usize = 16;
const SCHEME: &str = "hmac-sha256";

/// One app password as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppPassword {
    pub label: String,
    /// Protocols it may log in to (a subset of [`SCOPES`]).
    pub scopes: Vec<String>,
    pub created: i64,
    /// `hmac-sha256$<salt hex>$<tag hex>`.
    pub hash: String,
}

impl AppPassword {
    /// A new app password and its secret (to show once; it is not kept).
    pub fn generate(
        label: &str,
        scopes: &[String],
        created: i64,
    ) -> Result<(AppPassword, String), String> {
        valid_label(label)?;
        let scopes = scope_list(scopes)?;
        let mut secret = [0u8; SECRET_BYTES];
        let mut salt = [0u8; SALT_BYTES];
        fill_random(&mut secret)?;
        fill_random(&mut salt)?;
        let tag = keyed(&salt, &secret);
        let entry = AppPassword {
            label: label.to_string(),
            scopes,
            created,
            hash: format!("{SCHEME}${}${}", hex(&salt), hex(tag.as_ref())),
        };
        Ok((entry, shown(&secret)))
    }

    /// Whether `presented` (the secret, as the user typed it) is this app password.
    pub fn matches(&self, presented: &[u8; SECRET_BYTES]) -> bool {
        let mut parts = self.hash.split('$');
        let (Some(SCHEME), Some(salt), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Some(salt), Some(tag)) = (unhex(salt), unhex(tag)) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salt);
        ring::hmac::verify(&key, presented, &tag).is_ok()
    }

    pub fn allows(&self, protocol: &str) -> bool {
        self.scopes.iter().any(|s| s == protocol)
    }
}

/// The label of the app password among `list` that `password` is and that may log in
/// to `protocol`; `None` if it is none of them (then the account password is tried).
pub fn find<'a>(list: &'a [AppPassword], password: &str, protocol: &str) -> Option<&'a str> {
    if list.is_empty() {
        return None;
    }
    let secret = parse_secret(password)?;
    list.iter()
        .filter(|a| a.allows(protocol))
        .find(|a| a.matches(&secret))
        .map(|a| a.label.as_str())
}

/// A secret as typed: 32 hex digits, any case, dashes and spaces ignored.
fn parse_secret(text: &str) -> Option<[u8; SECRET_BYTES]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b'-' && *b != b' ').collect();
    if digits.len() != SECRET_BYTES * 2 {
        return None;
    }
    let bytes = unhex(std::str::from_utf8(&digits).ok()?)?;
    bytes.try_into().ok()
}

fn valid_label(label: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{label:?}: a label is 1 to 32 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// `--scope imap,pop3` (repeatable or comma-separated); none given = all protocols.
fn scope_list(given: &[String]) -> Result<Vec<String>, String> {
    let mut scopes: Vec<String> = Vec::new();
    for s in given.iter().flat_map(|s| s.split(',')) {
        let s = s.trim().to_ascii_lowercase();
        if !SCOPES.contains(&s.as_str()) {
            return Err(format!("{s:?}: a scope is one of {}", SCOPES.join(", ")));
        }
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    if scopes.is_empty() {
        scopes = SCOPES.iter().map(|s| s.to_string()).collect();
    }
    Ok(scopes)
}

fn keyed(salt: &[u8], secret: &[u8]) -> ring::hmac::Tag {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt), secret)
}

fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| "no random numbers from the system".to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The secret as shown to the user: `1a2b-3c4d-…` (eight groups of four).
fn shown(secret: &[u8]) -> String {
    let digits = hex(secret);
    digits
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_matches_as_typed_and_nothing_else() {
        let (entry, secret) = AppPassword::generate("phone", &[], 0).unwrap();
        assert_eq!(secret.len(), 39, "{secret}");
        assert_eq!(entry.scopes, ["imap", "pop3", "smtp"]);
        assert!(!entry.hash.contains(&secret.replace('-', "")));
        let list = vec![entry];
        assert_eq!(find(&list, &secret, "imap"), Some("phone"));
        let typed = secret.replace('-', " ").to_uppercase();
        assert_eq!(find(&list, &typed, "smtp"), Some("phone"));
        let mut wrong = secret.into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            find(&list, &String::from_utf8(wrong).unwrap(), "imap"),
            None
        );
        assert_eq!(find(&list, "not an app password", "imap"), None);
        assert_eq!(find(&list, "", "imap"), None);
    }

    #[test]
    fn scopes_limit_the_protocols() {
        let scopes = vec!["imap,POP3".to_string()];
        let (entry, secret) = AppPassword::generate("mua", &scopes, 0).unwrap();
        let list = vec![entry];
        assert_eq!(find(&list, &secret, "pop3"), Some("mua"));
        assert_eq!(find(&list, &secret, "smtp"), None);
        assert!(AppPassword::generate("x", &["ftp".to_string()], 0).is_err());
    }

    #[test]
    fn labels_are_short_and_plain() {
        assert!(AppPassword::generate("", &[], 0).is_err());
        assert!(AppPassword::generate("a b", &[], 0).is_err());
        assert!(AppPassword::generate(&"x".repeat(33), &[], 0).is_err());
        assert!(AppPassword::generate("laptop-2.work_mail", &[], 0).is_ok());
    }

    #[test]
    fn a_damaged_entry_matches_nothing() {
        let (mut entry, secret) = AppPassword::generate("p", &[], 0).unwrap();
        entry.hash = "hmac-sha256$zz$00".into();
        assert_eq!(find(&[entry], &secret, "imap"), None);
    }
}
