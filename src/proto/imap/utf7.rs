//! Modified UTF-7 (RFC 3501 §5.1.3), the 7-bit form mailbox names are stored in and
//! sent to IMAP4rev1 clients; sessions that speak UTF-8 names (ENABLE UTF8=ACCEPT,
//! RFC 6855, or IMAP4rev2) have their names converted at the session's edge by
//! [`encode`] and [`decode`]. Keeping one stored form means names written before
//! either extension existed stay valid and sort the same. Pure; never panics.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// UTF-8 → modified UTF-7: printable ASCII stays (`&` as `&-`), every other run is
/// `&` + modified base64 of its UTF-16BE + `-`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk.first().copied().unwrap_or(0),
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                let index = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'A')));
            }
        }
        out.push('-');
        run.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Modified UTF-7 → UTF-8; `None` when the name is not well-formed modified UTF-7
/// (then it is shown as stored).
pub fn decode(name: &str) -> Option<String> {
    if !name.contains('&') {
        return Some(name.to_string());
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('&') {
        out.push_str(rest.get(..at)?);
        let after = rest.get(at + 1..)?;
        let end = after.find('-')?;
        let encoded = after.get(..end)?;
        if encoded.is_empty() {
            out.push('&');
        } else {
            out.push_str(&decode_run(encoded)?);
        }
        rest = after.get(end + 1..)?;
    }
    out.push_str(rest);
    Some(out)
}

fn decode_run(encoded: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut count = 0u32;
    let mut bytes: Vec<u8> = Vec::new();
    for c in encoded.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|p| {
            u16::from_be_bytes([
                p.first().copied().unwrap_or(0),
                p.get(1).copied().unwrap_or(0),
            ])
        })
        .collect();
    let text = String::from_utf16(&units).ok()?;
    // A run that decodes to printable ASCII should have been sent as is.
    if text.chars().any(|c| (' '..='~').contains(&c)) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc_3501_examples() {
        for (utf8, utf7) in [
            ("Entwürfe", "Entw&APw-rfe"),
            ("Tom&Jerry", "Tom&-Jerry"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("Ärger", "&AMQ-rger"),
            ("😀 smile", "&2D3eAA- smile"),
            ("plain", "plain"),
        ] {
            assert_eq!(encode(utf8), utf7, "{utf8}");
            assert_eq!(decode(utf7).as_deref(), Some(utf8), "{utf7}");
        }
        assert_eq!(decode("bad&name"), None);
        assert_eq!(decode("&AGE-"), None, "ASCII must not be encoded");
        assert_eq!(decode("&Jjo"), None);
    }
}
