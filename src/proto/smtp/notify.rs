//! What a sender asked for with the DSN extension (RFC 3461): `RET` and `ENVID` on
//! MAIL, `NOTIFY` and `ORCPT` on RCPT, their xtext encoding, and the owned form the
//! queue keeps with a message until its last notice is sent. Pure: parsing never
//! panics, and every value is bounded as the RFC bounds it.

use serde::{Deserialize, Serialize};

/// RFC 3461 §4.3: ENVID is at most 100 characters (as xtext on the wire).
pub const ENVID_BYTES_MAX: usize = 100;
/// RFC 3461 §4.2: ORCPT is at most 500 characters.
pub const ORCPT_BYTES_MAX: usize = 500;

/// `RET=`: how much of the message a failure notice returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(value: &str) -> Option<Ret> {
        if value.eq_ignore_ascii_case("FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case("HDRS") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }

    pub fn as_param(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `NOTIFY=`: which events the sender wants a notice for. All false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };
    /// Without NOTIFY (RFC 3461 §4.1 leaves it to us): failures and delays, as
    /// Postfix and Sendmail do.
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
    };

    /// `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (each once).
    pub fn parse(value: &str) -> Option<Notify> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Some(Notify::NEVER);
        }
        let mut n = Notify::NEVER;
        for word in value.split(',') {
            let slot = if word.eq_ignore_ascii_case("SUCCESS") {
                &mut n.success
            } else if word.eq_ignore_ascii_case("FAILURE") {
                &mut n.failure
            } else if word.eq_ignore_ascii_case("DELAY") {
                &mut n.delay
            } else {
                return None;
            };
            if std::mem::replace(slot, true) {
                return None;
            }
        }
        Some(n)
    }

    pub fn as_param(self) -> String {
        if self == Notify::NEVER {
            return "NEVER".into();
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let set: Vec<&str> = words
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect();
        set.join(",")
    }
}

/// The message's DSN request, as the queue keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// The sender's envelope id, decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// One recipient's DSN request, as the queue keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// The original recipient: address type and the address, decoded
    /// (`rfc822`, `bob@example.org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<(String, String)>,
}

impl RcptDsn {
    /// What the sender gets notices for.
    pub fn notify(&self) -> Notify {
        self.notify.unwrap_or(Notify::DEFAULT)
    }
}

/// Decodes xtext (RFC 3461 §4): printable ASCII but `+` and `=`, with `+XX` for any
/// other byte. `None` for anything else, or a result that is not UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'!'..=b'~' if b != b'=' => out.push(b),
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Encodes `s` as xtext.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// `ORCPT=addr-type;xtext`: the type (an atom) and the decoded address.
pub fn parse_orcpt(value: &str) -> Option<(String, String)> {
    if value.len() > ORCPT_BYTES_MAX {
        return None;
    }
    let (kind, address) = value.split_once(';')?;
    let atom = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let address = xtext_decode(address)?;
    (atom && !address.is_empty()).then(|| (kind.to_ascii_lowercase(), address))
}

/// `ENVID=xtext`, decoded.
pub fn parse_envid(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > ENVID_BYTES_MAX {
        return None;
    }
    xtext_decode(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        assert_eq!(Notify::parse("never"), Some(Notify::NEVER));
        let n = Notify::parse("SUCCESS,delay").unwrap();
        assert!(n.success && n.delay && !n.failure);
        assert_eq!(n.as_param(), "SUCCESS,DELAY");
        assert_eq!(Notify::parse("SUCCESS,SUCCESS"), None);
        assert_eq!(Notify::parse("NEVER,SUCCESS"), None);
        assert_eq!(Notify::parse(""), None);
        assert_eq!(Notify::NEVER.as_param(), "NEVER");
    }

    #[test]
    fn xtext_round_trips_and_rejects_bad_escapes() {
        for s in ["plain", "a+b=c", "spaces and\ttabs", "ünïcode"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_decode("a+2Bb").as_deref(), Some("a+b"));
        assert_eq!(xtext_decode("a+2b"), None, "lowercase hex is not xtext");
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a b"), None);
        assert_eq!(
            parse_orcpt("rfc822;bob+40example.org"),
            Some(("rfc822".into(), "bob@example.org".into()))
        );
        assert_eq!(parse_orcpt("rfc822"), None);
        assert_eq!(parse_orcpt(";x"), None);
        assert_eq!(parse_orcpt(&format!("rfc822;{}", "a".repeat(600))), None);
        assert_eq!(parse_envid(&"x".repeat(101)), None);
        assert_eq!(parse_envid("QQ314159").as_deref(), Some("QQ314159"));
    }
}
