//! The MIME summary of a message, parsed once at delivery and cached in the index.
//!
//! IMAP's ENVELOPE and BODYSTRUCTURE are answered from this, never by re-parsing the
//! stored bytes. It keeps raw header values and part offsets only; decoding is the
//! protocol layer's job. Built with mail-parser; must never panic on any message.

use mail_parser::{MessageParser, MimeHeaders, PartType};
use rkyv::{Archive, Deserialize, Serialize};

/// Raw (undecoded) values of the headers IMAP's ENVELOPE needs.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct EnvelopeFields {
    pub date: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub sender: Option<String>,
    pub reply_to: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub bcc: Option<String>,
    pub in_reply_to: Option<String>,
    pub message_id: Option<String>,
}

/// One MIME part, with offsets into the stored message.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct PartSummary {
    /// e.g. `text`, `multipart`.
    pub ctype: String,
    /// e.g. `plain`, `mixed`.
    pub subtype: String,
    /// Content-Type parameters (`charset`, `boundary`, `name`…).
    pub params: Vec<(String, String)>,
    /// Content-Transfer-Encoding as written, if any.
    pub encoding: Option<String>,
    pub offset_header: u32,
    pub offset_body: u32,
    pub offset_end: u32,
    /// Indexes of child parts (multipart or message/rfc822).
    pub children: Vec<u32>,
}

/// The version of [`Summary::to_bytes`]; bump it whenever `Summary` (or a type in it)
/// changes, so stored summaries of the old shape are re-derived instead of misread.
/// Version 2 added the PREVIEW text after the archive, whose layout is version 1's
/// (so a version-1 summary is still read as it is, its preview computed on demand).
pub const SUMMARY_VERSION: u8 = 2;

/// The summary version whose archive layout this build's `Summary` has.
const ARCHIVE_LAYOUT: u8 = 1;

/// RFC 8970 §3.1: a preview is at most 256 characters.
pub const PREVIEW_CHARS_MAX: usize = 256;

/// A summary written by a newer shardmail (its version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewerSummary(pub u8);

/// Everything cached about a message's structure.
#[derive(Debug, Clone, Default, PartialEq, Archive, Serialize, Deserialize)]
pub struct Summary {
    pub envelope: EnvelopeFields,
    /// Part 0 is the whole message.
    pub parts: Vec<PartSummary>,
    /// The PREVIEW text (RFC 8970), computed at delivery: `Some("")` when the message
    /// has none, `None` when it was not computed (a summary of version 1). Stored
    /// after the archive, not in it ([`Summary::to_bytes`]).
    #[rkyv(with = rkyv::with::Skip)]
    pub preview: Option<String>,
}

impl Summary {
    /// Parses `message`; an unparseable message yields an empty summary (stored anyway).
    pub fn parse(message: &[u8]) -> Summary {
        // MIME headers only: envelope fields are kept raw (`header_raw`), so parsing
        // Received, Date or address headers here would be wasted work per delivery.
        let Some(parsed) = MessageParser::new().with_mime_headers().parse(message) else {
            return Summary::default();
        };
        let raw = |name: &str| parsed.header_raw(name).map(|v| v.trim().to_string());
        let envelope = EnvelopeFields {
            date: raw("Date"),
            subject: raw("Subject"),
            from: raw("From"),
            sender: raw("Sender"),
            reply_to: raw("Reply-To"),
            to: raw("To"),
            cc: raw("Cc"),
            bcc: raw("Bcc"),
            in_reply_to: raw("In-Reply-To"),
            message_id: raw("Message-ID"),
        };
        // In a multipart/digest a part without Content-Type is message/rfc822, not
        // text/plain (RFC 2046 §5.1.5).
        let mut in_digest = vec![false; parsed.parts.len()];
        for part in &parsed.parts {
            let digest = part.content_type().is_some_and(|ct| {
                ct.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("digest"))
            });
            if let (PartType::Multipart(ids), true) = (&part.body, digest) {
                for &id in ids {
                    if let Some(flag) = in_digest.get_mut(id as usize) {
                        *flag = true;
                    }
                }
            }
        }
        let parts = parsed
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let (ctype, subtype, params) = match part.content_type() {
                    Some(ct) => (
                        ct.ctype().to_ascii_lowercase(),
                        ct.subtype().unwrap_or("").to_ascii_lowercase(),
                        ct.attributes()
                            .unwrap_or(&[])
                            .iter()
                            .map(|a| (a.name.to_string(), a.value.to_string()))
                            .collect(),
                    ),
                    None if in_digest.get(i) == Some(&true) => {
                        ("message".into(), "rfc822".into(), Vec::new())
                    }
                    None => ("text".into(), "plain".into(), Vec::new()),
                };
                let children = match &part.body {
                    PartType::Multipart(ids) => ids.clone(),
                    PartType::Message(_) => Vec::new(),
                    _ => Vec::new(),
                };
                PartSummary {
                    ctype,
                    subtype,
                    params,
                    encoding: part.content_transfer_encoding().map(|e| e.to_string()),
                    offset_header: part.offset_header,
                    offset_body: part.offset_body,
                    offset_end: part.offset_end,
                    children,
                }
            })
            .collect();
        let preview = Some(preview_of(&parsed).unwrap_or_default());
        Summary {
            envelope,
            parts,
            preview,
        }
    }

    /// The summary of `head ++ body` where `head` is whole header fields (our trace
    /// and authentication headers), parsed from `body` alone: a large message is never
    /// copied just to prepend a few header lines. Every offset moves by the head's
    /// length except where the whole message starts.
    pub fn parse_after_head(head_len: usize, body: &[u8]) -> Summary {
        let mut summary = Summary::parse(body);
        let shift = u32::try_from(head_len).unwrap_or(u32::MAX);
        for (i, part) in summary.parts.iter_mut().enumerate() {
            if i > 0 {
                part.offset_header = part.offset_header.saturating_add(shift);
            }
            part.offset_body = part.offset_body.saturating_add(shift);
            part.offset_end = part.offset_end.saturating_add(shift);
        }
        summary
    }

    /// `[SUMMARY_VERSION][archive_len:u32][rkyv archive][preview UTF-8]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|v| v.to_vec())
            .unwrap_or_default();
        let preview = self.preview.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(archive.len() + preview.len() + 5);
        out.push(SUMMARY_VERSION);
        out.extend_from_slice(&(archive.len() as u32).to_le_bytes());
        out.extend_from_slice(&archive);
        out.extend_from_slice(preview.as_bytes());
        out
    }

    /// Decodes bytes written by [`Summary::to_bytes`] of this version; `None` if they
    /// are of another version or damaged.
    pub fn from_bytes(bytes: &[u8]) -> Option<Summary> {
        match bytes.split_first() {
            Some((&SUMMARY_VERSION, rest)) => Self::from_v2(rest),
            _ => None,
        }
    }

    /// A version-2 body: the archive, then the preview.
    fn from_v2(rest: &[u8]) -> Option<Summary> {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let archive = rest.get(4..4 + len)?;
        let preview = std::str::from_utf8(rest.get(4 + len..)?).ok()?;
        let mut summary = Self::from_archive(archive)?;
        summary.preview = Some(preview.to_string());
        Some(summary)
    }

    fn from_archive(archive: &[u8]) -> Option<Summary> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
        aligned.extend_from_slice(archive);
        rkyv::from_bytes::<Summary, rkyv::rancor::Error>(&aligned).ok()
    }

    /// The summary stored beside `message`: this version's is decoded; an older (or a
    /// damaged) one is re-derived from the message bytes — an upgrade, never a blank
    /// summary; a newer one is an error (written by a newer shardmail).
    pub fn decode(bytes: &[u8], message: &[u8]) -> Result<Summary, NewerSummary> {
        match bytes.split_first() {
            Some((&v, _)) if v > SUMMARY_VERSION => Err(NewerSummary(v)),
            Some((&v, archive)) => Ok(Self::decode_at(v, archive, message)),
            None => Ok(Summary::parse(message)),
        }
    }

    /// A summary of the first format (an rkyv archive without a version byte, Blob
    /// records of version 0). Its layout is that of summary version
    /// [`UNVERSIONED_LAYOUT`]; once `SUMMARY_VERSION` moves past it, such archives are
    /// re-derived from the message like any older one.
    pub fn decode_unversioned(archive: &[u8], message: &[u8]) -> Summary {
        Self::decode_at(UNVERSIONED_LAYOUT, archive, message)
    }

    /// An archive is only ever read as today's type, and only if it was written at
    /// today's version: an archive of another layout could pass rkyv's validation and
    /// decode to the wrong fields, so it is re-derived instead.
    fn decode_at(version: u8, archive: &[u8], message: &[u8]) -> Summary {
        let decoded = match version {
            SUMMARY_VERSION => Self::from_v2(archive),
            // Same archive layout, no preview: read as it is (re-parsing every
            // message of an upgraded store at each FETCH would cost far more).
            ARCHIVE_LAYOUT => Self::from_archive(archive),
            _ => None,
        };
        decoded.unwrap_or_else(|| Summary::parse(message))
    }
}

/// The preview of a parsed message: its first text, whitespace collapsed, at most
/// [`PREVIEW_CHARS_MAX`] characters (RFC 8970 §3.1).
fn preview_of(parsed: &mail_parser::Message<'_>) -> Option<String> {
    let text = parsed.body_preview(PREVIEW_CHARS_MAX)?;
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text: String = text.chars().take(PREVIEW_CHARS_MAX).collect();
    (!text.is_empty()).then_some(text)
}

/// The preview of a message whose summary did not cache one.
pub fn preview(message: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse(message)
        .and_then(|p| preview_of(&p))
}

/// The summary version whose layout unversioned (Blob version 0) archives share.
const UNVERSIONED_LAYOUT: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_summary_round_trips() {
        let msg = b"From: A <a@x.example>\r\nTo: b@y.example\r\nSubject: hi\r\n\
            Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b1--\r\n";
        let s = Summary::parse(msg);
        assert_eq!(s.envelope.subject.as_deref(), Some("hi"));
        assert_eq!(s.parts[0].ctype, "multipart");
        assert_eq!(s.parts[0].children.len(), 1);
        assert_eq!(s.parts[1].subtype, "plain");
        assert_eq!(s.preview.as_deref(), Some("hello"));
        assert_eq!(Summary::from_bytes(&s.to_bytes()), Some(s.clone()));
        assert_eq!(Summary::from_bytes(b"garbage"), None);
        // Older or damaged summaries are re-derived from the message; newer refused.
        assert_eq!(Summary::decode(b"\x00old", msg), Ok(s.clone()));
        assert_eq!(Summary::decode(&s.to_bytes(), b"ignored"), Ok(s.clone()));
        assert_eq!(
            Summary::decode(&[SUMMARY_VERSION + 1, 1, 2], msg),
            Err(NewerSummary(SUMMARY_VERSION + 1))
        );
        // A version-1 summary (the archive alone) reads as it is, without a preview.
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&s).unwrap().to_vec();
        let old = Summary { preview: None, ..s };
        assert_eq!(
            Summary::decode(&[&[1u8][..], &archive].concat(), b"x"),
            Ok(old.clone())
        );
        assert_eq!(Summary::decode_unversioned(&archive, b"x"), old);
    }

    #[test]
    fn a_prepended_head_only_moves_offsets() {
        let head = b"Received: from x ([192.0.2.1])\r\n\tby y; Thu, 1 Jan 1970 00:00:00 +0000\r\nAuthentication-Results: y; auth=pass\r\n";
        for body in [
            &b"From: A <a@x.example>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n--b1--\r\n"[..],
            b"Subject: plain\r\n\r\nbody\r\n",
            b"no headers at all",
        ] {
            let whole = [&head[..], body].concat();
            assert_eq!(Summary::parse_after_head(head.len(), body), Summary::parse(&whole));
        }
    }
}
