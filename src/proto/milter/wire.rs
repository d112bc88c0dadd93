//! Milter packets: a 4-byte big-endian length (the command byte included), the command
//! byte, the payload. Strings are NUL-terminated; numbers are big-endian `u32`.
//!
//! Owns the byte layout of each command we send and each reply we read; knows nothing
//! of the order they come in.

use std::net::IpAddr;

use super::{command, Edit, Reply, WireError};

/// Appends one packet of `code` with the concatenated `parts` as payload.
pub fn packet(out: &mut Vec<u8>, code: u8, parts: &[&[u8]]) {
    let length = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&(length as u32).to_be_bytes());
    out.push(code);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// `s` without NULs (a NUL would end the string early on the milter's side) and with
/// its terminator.
fn c_string(s: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = s.bytes().filter(|&b| b != 0).collect();
    bytes.push(0);
    bytes
}

/// Option negotiation: our version, the actions and protocol steps we offer.
pub fn negotiate(out: &mut Vec<u8>, version: u32, actions: u32, protocol: u32) {
    packet(
        out,
        command::OPTNEG,
        &[
            &version.to_be_bytes(),
            &actions.to_be_bytes(),
            &protocol.to_be_bytes(),
        ],
    );
}

/// Macros for the command `stage` that follows (`j`, `{auth_authen}`, …).
pub fn macros(out: &mut Vec<u8>, stage: u8, pairs: &[(&str, &str)]) {
    if pairs.is_empty() {
        return;
    }
    let mut payload = vec![stage];
    for (name, value) in pairs {
        payload.extend(c_string(name));
        payload.extend(c_string(value));
    }
    packet(out, command::MACRO, &[&payload]);
}

/// The client's connection: its name, address family, port and address.
pub fn connect(out: &mut Vec<u8>, hostname: &str, ip: IpAddr, port: u16) {
    let family = match ip {
        IpAddr::V4(_) => b'4',
        IpAddr::V6(_) => b'6',
    };
    packet(
        out,
        command::CONNECT,
        &[
            &c_string(hostname),
            &[family],
            &port.to_be_bytes(),
            &c_string(&ip.to_string()),
        ],
    );
}

/// A command whose payload is a list of strings (HELO, MAIL, RCPT).
pub fn strings(out: &mut Vec<u8>, code: u8, args: &[&str]) {
    let payload: Vec<u8> = args.iter().flat_map(|a| c_string(a)).collect();
    packet(out, code, &[&payload]);
}

/// One header field, its value without the leading space.
pub fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    packet(out, command::HEADER, &[&c_string(name), &c_string(value)]);
}

/// Reads one packet (without its length prefix) as a reply.
pub fn parse_reply(packet: &[u8]) -> Result<Reply, WireError> {
    let Some((&code, payload)) = packet.split_first() else {
        return Err(WireError::BadLength(0));
    };
    let bad = || WireError::Malformed(code);
    Ok(match code {
        b'O' => {
            let mut words = payload
                .chunks_exact(4)
                .map(|w| w.try_into().map(u32::from_be_bytes).unwrap_or_default());
            // Version 6 may follow with macro lists we did not ask for: ignored.
            match (words.next(), words.next(), words.next()) {
                (Some(version), Some(actions), Some(protocol)) => Reply::Negotiate {
                    version,
                    actions,
                    protocol,
                },
                _ => return Err(bad()),
            }
        }
        b'c' => Reply::Continue,
        b'a' => Reply::Accept,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b'd' => Reply::Discard,
        b's' => Reply::Skip,
        b'p' => Reply::Progress,
        b'f' | b'4' => Reply::ConnectionFail,
        b'y' => Reply::ReplyCode(one_string(payload).ok_or_else(bad)?),
        b'q' => Reply::Quarantine(one_string(payload).ok_or_else(bad)?),
        b'h' => {
            let (name, value) = two_strings(payload).ok_or_else(bad)?;
            Reply::Edit(Edit::Add { name, value })
        }
        b'i' | b'm' => {
            let (index, rest) = payload.split_first_chunk::<4>().ok_or_else(bad)?;
            let index = u32::from_be_bytes(*index);
            let (name, value) = two_strings(rest).ok_or_else(bad)?;
            Reply::Edit(if code == b'i' {
                Edit::Insert { index, name, value }
            } else {
                Edit::Change { index, name, value }
            })
        }
        b'b' => Reply::Edit(Edit::Body(payload.to_vec())),
        other => Reply::Unsupported(other),
    })
}

/// A payload that is one NUL-terminated string (the terminator may be missing).
fn one_string(payload: &[u8]) -> Option<String> {
    let text = payload.strip_suffix(b"\0").unwrap_or(payload);
    (!text.contains(&0)).then(|| String::from_utf8_lossy(text).into_owned())
}

/// `name\0value\0`.
fn two_strings(payload: &[u8]) -> Option<(String, String)> {
    let mut parts = payload.split(|&b| b == 0);
    let name = parts.next()?;
    let value = parts.next()?;
    // After the value's terminator only the empty remainder of split may follow.
    if parts.next().is_none_or(|rest| !rest.is_empty()) || parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_layout() {
        let mut out = Vec::new();
        connect(&mut out, "unknown", "192.0.2.7".parse().unwrap(), 2525);
        let payload = b"Cunknown\x004\x09\xdd192.0.2.7\x00";
        assert_eq!(&out[..4], &(payload.len() as u32).to_be_bytes());
        assert_eq!(&out[4..], payload);
    }

    #[test]
    fn macros_and_strings() {
        let mut out = Vec::new();
        macros(&mut out, b'M', &[("i", "ID1"), ("{auth_authen}", "a@b")]);
        assert_eq!(&out[4..], b"DMi\0ID1\0{auth_authen}\0a@b\0");
        out.clear();
        strings(&mut out, command::MAIL, &["<a@b>", "SIZE=10"]);
        assert_eq!(&out[4..], b"M<a@b>\0SIZE=10\0");
        out.clear();
        macros(&mut out, b'C', &[]);
        assert!(out.is_empty(), "no packet for no macros");
    }

    #[test]
    fn nul_in_our_strings_cannot_split_them() {
        let mut out = Vec::new();
        header(&mut out, "Subject", "a\0b");
        assert_eq!(&out[4..], b"LSubject\0ab\0");
    }

    #[test]
    fn two_strings_needs_exactly_two() {
        assert_eq!(two_strings(b"a\0b\0"), Some(("a".into(), "b".into())));
        assert_eq!(two_strings(b"a\0b"), None);
        assert_eq!(two_strings(b"a\0b\0c\0"), None);
        assert_eq!(two_strings(b"a\0\0"), Some(("a".into(), String::new())));
    }
}
