//! Trace fields on the stored message: Authentication-Results (RFC 8601 §5: prepend
//! ours, drop any that arrived claiming our authserv-id — a forgery or a loop) and
//! Return-Path (RFC 5321 §4.4: added at final delivery only, so one that arrives is
//! dropped; delivery writes ours). Pure.

use memchr::memmem;

/// End of the header section (offset of the blank line's first byte), or the length.
fn header_end(message: &[u8]) -> usize {
    memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2)
}

/// The authserv-id of an `Authentication-Results` field value (text before the first `;`).
fn authserv_id(value: &[u8]) -> &[u8] {
    let id = value.split(|&b| b == b';').next().unwrap_or(&[]);
    let id = id.trim_ascii();
    // A version number may follow the id: "example.org 1".
    id.split(|b| b.is_ascii_whitespace()).next().unwrap_or(&[])
}

/// `message` without the Authentication-Results fields whose authserv-id is ours and
/// without any Return-Path or X-Spam-Score field (both are ours to add at delivery; a
/// sender's own would pass for ours in a user's filters); `None` when there is nothing to remove (the caller
/// keeps its bytes as they are: the usual case costs no copy).
pub fn strip_untrusted(message: &[u8], our_id: &str) -> Option<Vec<u8>> {
    let end = header_end(message);
    let headers = message.get(..end)?;
    let mut fields: Vec<(usize, usize, bool)> = Vec::new(); // start, end, drop
    let mut pos = 0;
    while pos < headers.len() {
        // A field runs to the CRLF not followed by folding whitespace.
        let mut stop = pos;
        loop {
            match memmem::find(headers.get(stop..)?, b"\r\n") {
                Some(i) => {
                    stop += i + 2;
                    match headers.get(stop) {
                        Some(b' ') | Some(b'\t') => continue,
                        _ => break,
                    }
                }
                None => {
                    stop = headers.len();
                    break;
                }
            }
        }
        let field = headers.get(pos..stop)?;
        let named = |name: &[u8]| {
            field
                .get(..name.len())
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        };
        let ours = named(b"Authentication-Results:")
            && authserv_id(field.get(23..)?).eq_ignore_ascii_case(our_id.as_bytes());
        let drop = ours || named(b"Return-Path:") || named(b"X-Spam-Score:");
        fields.push((pos, stop, drop));
        pos = stop;
    }
    if !fields.iter().any(|f| f.2) {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    for (start, stop, drop) in fields {
        if !drop {
            out.extend_from_slice(message.get(start..stop)?);
        }
    }
    out.extend_from_slice(message.get(end..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_any_spam_score() {
        let message = b"X-Spam-Score: -100 (dnsbl: forged)\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            strip_untrusted(message, "mx.example"),
            Some(b"Subject: hi\r\n\r\nbody\r\n".to_vec())
        );
    }

    #[test]
    fn strips_any_return_path() {
        let msg =
            b"Return-Path: <forged@evil.example>\r\nSubject: hi\r\nreturn-path:\r\n <x@y>\r\n\r\n\
            Return-Path: <in the body stays>\r\n";
        let out = strip_untrusted(msg, "mx.example").expect("something stripped");
        assert_eq!(
            out,
            b"Subject: hi\r\n\r\nReturn-Path: <in the body stays>\r\n".to_vec()
        );
    }

    #[test]
    fn strips_only_our_authserv_id() {
        let msg = b"Authentication-Results: mx.example;\r\n dkim=pass header.d=evil.example\r\n\
            Authentication-Results: other.example; spf=pass\r\n\
            authentication-results: MX.EXAMPLE 1; dmarc=pass\r\nSubject: hi\r\n\r\n\
            Authentication-Results: mx.example; in the body stays\r\n";
        let out = strip_untrusted(msg, "mx.example").expect("something stripped");
        assert_eq!(
            out,
            b"Authentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\n\
              Authentication-Results: mx.example; in the body stays\r\n"
        );
        assert!(strip_untrusted(b"Subject: x\r\n\r\nbody", "mx.example").is_none());
    }
}
