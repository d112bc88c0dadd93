//! IMAP response data: strings, ENVELOPE, BODYSTRUCTURE, body sections, BINARY.
//!
//! Owns how stored messages become FETCH data (RFC 9051 §7.5.2, RFC 3516). Structure
//! comes from the [`Summary`] cached at delivery; only a section's own bytes (and a
//! part's header lines, for Content-Disposition and friends) are read from the message.
//! Pure functions over byte slices; must never panic on any message.

use std::borrow::Cow;
use std::rc::Rc;

use crate::store::index::flags;
use crate::store::summary::{PartSummary, Summary};

use super::address;
use super::command::{Section, SectionText};

/// Appends `s` as an IMAP string: quoted when it is short printable ASCII, a literal
/// otherwise (NUL, which no string may carry, is sent as 0x80).
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= 1024 && s.iter().all(|&b| (0x20..0x7f).contains(&b));
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s, false);
    }
}

/// Appends `{n}` CRLF and the bytes. Data containing NUL goes as a `~{n}` literal8
/// where the reply allows one (`eight`: BINARY, RFC 3516); elsewhere an ordinary
/// literal cannot carry NUL (RFC 3501 §4.3), so each becomes 0x80, as Dovecot does,
/// keeping every size (RFC822.SIZE, partial ranges) true.
pub fn literal(out: &mut Vec<u8>, s: &[u8], eight: bool) {
    let has_nul = memchr::memchr(0, s).is_some();
    if has_nul && eight {
        out.push(b'~');
    }
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    if has_nul && !eight {
        out.extend(s.iter().map(|&b| if b == 0 { 0x80 } else { b }));
    } else {
        out.extend_from_slice(s);
    }
}

/// RFC 8474 EMAILID: from the message's bytes (SHA-256, 96 bits in hex), so it
/// survives COPY, MOVE, compaction, export and import, and identical stored bytes
/// share one, as in Cyrus. Costs one hash per message asked.
pub fn email_id(message: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, message);
    let mut id = String::with_capacity(25);
    id.push('M');
    for b in digest.as_ref().iter().take(12) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// An nstring: `NIL` or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s.as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A mailbox name as an astring (always quoted or literal: names may contain anything).
pub fn mailbox_name(out: &mut Vec<u8>, name: &str) {
    string(out, name.as_bytes());
}

/// `(\Seen \Answered … keyword …)`.
pub fn flag_list(out: &mut Vec<u8>, bits: u32, keywords: &[String]) {
    out.push(b'(');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, s: &str| {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(s.as_bytes());
    };
    for (bit, name) in [
        (flags::SEEN, "\\Seen"),
        (flags::ANSWERED, "\\Answered"),
        (flags::FLAGGED, "\\Flagged"),
        (flags::DELETED, "\\Deleted"),
        (flags::DRAFT, "\\Draft"),
        (flags::RECENT, "\\Recent"),
    ] {
        if bits & bit != 0 {
            put(out, name);
        }
    }
    for k in keywords {
        put(out, k);
    }
    out.push(b')');
}

/// INTERNALDATE format: `"26-Nov-2026 06:45:00 +0000"`.
pub fn internal_date(t: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = crate::proto::civil_from_days(days);
    let month = MONTHS.get(m.saturating_sub(1) as usize).unwrap_or(&"Jan");
    format!(
        "\"{d:02}-{month}-{y:04} {:02}:{:02}:{:02} +0000\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// ENVELOPE from the cached header values.
pub fn envelope(out: &mut Vec<u8>, summary: &Summary) {
    let e = &summary.envelope;
    out.push(b'(');
    nstring(out, e.date.as_deref());
    out.push(b' ');
    nstring(out, e.subject.as_deref());
    // Each header parsed once; an absent or empty Sender or Reply-To is From
    // (RFC 3501 §7.4.2).
    let from = address::parse_field(e.from.as_deref());
    let sender = address::parse_field(e.sender.as_deref());
    let reply_to = address::parse_field(e.reply_to.as_deref());
    let or_from = |list| {
        if address::has_no_mailbox(list) {
            &from
        } else {
            list
        }
    };
    for list in [
        &from,
        or_from(&sender),
        or_from(&reply_to),
        &address::parse_field(e.to.as_deref()),
        &address::parse_field(e.cc.as_deref()),
        &address::parse_field(e.bcc.as_deref()),
    ] {
        out.push(b' ');
        address::address_list(out, list);
    }
    out.push(b' ');
    nstring(out, e.in_reply_to.as_deref());
    out.push(b' ');
    nstring(out, e.message_id.as_deref());
    out.push(b')');
}

/// The value of header `name` in a header block, unfolded.
pub fn header_value(headers: &[u8], name: &str) -> Option<String> {
    for (field, whole) in header_fields(headers) {
        if field.eq_ignore_ascii_case(name.as_bytes()) {
            let value = whole.get(field.len() + 1..).unwrap_or(&[]);
            let text = String::from_utf8_lossy(value);
            return Some(text.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    None
}

/// Header fields of a header block: (name, whole field including continuation lines
/// and the final CRLF). Stops at the blank line.
pub fn header_fields(headers: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = headers.get(pos..)?;
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        let mut end = 0;
        loop {
            match memchr::memchr(b'\n', rest.get(end..)?) {
                Some(i) => {
                    end += i + 1;
                    if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = rest.len();
                    break;
                }
            }
        }
        pos += end;
        let whole = rest.get(..end)?;
        let colon = memchr::memchr(b':', whole).unwrap_or(whole.len());
        let name = whole.get(..colon)?;
        Some((trim_ascii(name), whole))
    })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or(&[])
}

/// The structure a part belongs to: the summary cached at delivery (borrowed, never
/// copied), or one parsed from a message/rfc822 attachment (shared by its parts).
#[derive(Debug, Clone)]
enum Tree<'s> {
    Cached(&'s Summary),
    Parsed(Rc<Summary>),
}

impl std::ops::Deref for Tree<'_> {
    type Target = Summary;
    fn deref(&self) -> &Summary {
        match self {
            Tree::Cached(s) => s,
            Tree::Parsed(s) => s,
        }
    }
}

/// A MIME part found by its IMAP part number: where its summary is, and the offset of
/// its tree's message in the *top-level* message. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Part<'s> {
    tree: Tree<'s>,
    index: usize,
    base: usize,
}

/// What an out-of-range part index reads as (never produced by `find_part`).
static NO_PART: PartSummary = PartSummary {
    ctype: String::new(),
    subtype: String::new(),
    params: Vec::new(),
    encoding: None,
    offset_header: 0,
    offset_body: 0,
    offset_end: 0,
    children: Vec::new(),
};

impl<'s> Part<'s> {
    /// The top part of `tree`, a summary of `message` (which starts at `base`); a
    /// message the parser could not make sense of is one text part.
    fn top(tree: Tree<'s>, message: &[u8], base: usize) -> Part<'s> {
        let tree = if tree.parts.is_empty() {
            Tree::Parsed(Rc::new(Summary {
                envelope: tree.envelope.clone(),
                parts: vec![whole_message_part(message)],
                preview: None,
            }))
        } else {
            tree
        };
        Part {
            tree,
            index: 0,
            base,
        }
    }

    pub fn summary(&self) -> &PartSummary {
        self.tree.parts.get(self.index).unwrap_or(&NO_PART)
    }
    pub fn header<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        let s = self.summary();
        slice(
            message,
            self.base + s.offset_header as usize,
            self.base + s.offset_body as usize,
        )
    }
    pub fn body<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        let s = self.summary();
        slice(
            message,
            self.base + s.offset_body as usize,
            self.base + s.offset_end as usize,
        )
    }
    fn is_multipart(&self) -> bool {
        self.summary().ctype == "multipart"
    }
    fn is_message(&self) -> bool {
        let s = self.summary();
        s.ctype == "message" && matches!(s.subtype.as_str(), "rfc822" | "global")
    }
    /// Child `n` (1-based) of a multipart, in the same tree.
    fn child(&self, n: u32) -> Option<Part<'s>> {
        let index = *self.summary().children.get((n as usize).checked_sub(1)?)?;
        Some(Part {
            tree: self.tree.clone(),
            index: index as usize,
            base: self.base,
        })
        .filter(|p| p.index < p.tree.parts.len())
    }
}

fn slice(message: &[u8], start: usize, end: usize) -> &[u8] {
    message
        .get(start.min(end)..end.min(message.len()))
        .unwrap_or(&[])
}

/// Nesting of message/rfc822 attachments followed (each costs a parse).
const MESSAGE_DEPTH_MAX: usize = 8;

/// The part `path` names (`[]` is the whole message).
pub fn find_part<'s>(message: &[u8], summary: &'s Summary, path: &[u32]) -> Option<Part<'s>> {
    let mut part = Part::top(Tree::Cached(summary), message, 0);
    let mut depth = 0;
    for (i, &n) in path.iter().enumerate() {
        if part.is_message() && i > 0 {
            // Into the attached message: parse it, then pick from its top part.
            depth += 1;
            if depth > MESSAGE_DEPTH_MAX {
                return None;
            }
            part = embedded(message, &part);
        }
        if part.is_multipart() {
            part = part.child(n)?;
        } else if n != 1 {
            return None;
        }
    }
    Some(part)
}

/// The top part of a message/rfc822 attachment (parsed here: attachments are not in
/// the cached summary).
fn embedded<'s>(message: &[u8], part: &Part<'_>) -> Part<'s> {
    let bytes = part.body(message);
    let base = part.base + part.summary().offset_body as usize;
    Part::top(Tree::Parsed(Rc::new(Summary::parse(bytes))), bytes, base)
}

fn whole_message_part(message: &[u8]) -> PartSummary {
    let body = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    PartSummary {
        ctype: "text".into(),
        subtype: "plain".into(),
        offset_body: body as u32,
        offset_end: message.len() as u32,
        ..PartSummary::default()
    }
}

/// The bytes `BODY[section]` returns (before any partial range).
pub fn section<'m, 's>(
    message: &'m [u8],
    summary: &'s Summary,
    section: &Section,
) -> Option<Cow<'m, [u8]>> {
    let part = find_part(message, summary, &section.part)?;
    let top = section.part.is_empty();
    // HEADER/TEXT of a part address the attached message's header/text.
    let target = |part: &Part<'s>| -> Option<Part<'s>> {
        if top {
            Some(part.clone())
        } else if part.is_message() {
            Some(embedded(message, part))
        } else {
            None
        }
    };
    Some(match &section.text {
        None if top => Cow::Borrowed(message),
        None => Cow::Borrowed(part.body(message)),
        Some(SectionText::Mime) => Cow::Borrowed(part.header(message)),
        Some(SectionText::Header) => Cow::Borrowed(target(&part)?.header(message)),
        Some(SectionText::Text) => Cow::Borrowed(target(&part)?.body(message)),
        Some(SectionText::HeaderFields { not, fields }) => {
            let headers = target(&part)?.header(message);
            let mut out = Vec::new();
            for (name, whole) in header_fields(headers) {
                let listed = fields
                    .iter()
                    .any(|f| f.as_bytes().eq_ignore_ascii_case(name));
                if listed != *not {
                    out.extend_from_slice(whole);
                }
            }
            out.extend_from_slice(b"\r\n");
            Cow::Owned(out)
        }
    })
}

/// Applies `<origin.count>`.
pub fn partial(bytes: &[u8], range: Option<(u32, u32)>) -> &[u8] {
    match range {
        None => bytes,
        Some((origin, count)) => {
            let start = (origin as usize).min(bytes.len());
            let end = start.saturating_add(count as usize).min(bytes.len());
            bytes.get(start..end).unwrap_or(&[])
        }
    }
}

/// Why BINARY cannot decode a part.
#[derive(Debug, PartialEq, Eq)]
pub enum BinaryError {
    NoSuchPart,
    /// `NO [UNKNOWN-CTE]`.
    UnknownEncoding,
}

/// `BINARY[part]`: the part's body with its Content-Transfer-Encoding undone.
pub fn binary<'m>(
    message: &'m [u8],
    summary: &Summary,
    path: &[u32],
) -> Result<Cow<'m, [u8]>, BinaryError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed(message));
    }
    let part = find_part(message, summary, path).ok_or(BinaryError::NoSuchPart)?;
    let body = part.body(message);
    let encoding = part
        .summary()
        .encoding
        .as_deref()
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    match encoding.as_str() {
        "7bit" | "8bit" | "binary" => Ok(Cow::Borrowed(body)),
        "base64" => Ok(Cow::Owned(decode_base64(body))),
        "quoted-printable" => Ok(Cow::Owned(decode_qp(body))),
        _ => Err(BinaryError::UnknownEncoding),
    }
}

pub(crate) fn decode_base64(body: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&clean)
        .or_else(|_| {
            // A truncated final quantum: decode what is whole.
            let whole = clean.len() / 4 * 4;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(clean.get(..whole).unwrap_or(&[]))
        })
        .unwrap_or_default()
}

/// Quoted-printable (RFC 2045 §6.7): `=HH` is a byte; trailing spaces and tabs on a
/// line are transport padding and go; a line ending in `=` (padding after it allowed)
/// is a soft break and joins the next; an `=` that is neither stays as it is.
pub(crate) fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let hex = |b: u8| (b as char).to_digit(16);
    for raw in body.split_inclusive(|b| *b == b'\n') {
        let (line, ending): (&[u8], &[u8]) = if let Some(l) = raw.strip_suffix(b"\r\n") {
            (l, b"\r\n")
        } else if let Some(l) = raw.strip_suffix(b"\n") {
            (l, b"\n")
        } else {
            (raw, b"")
        };
        let mut line = line;
        while let [rest @ .., b' ' | b'\t'] = line {
            line = rest;
        }
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while let Some(&b) = line.get(i) {
            match (b, line.get(i + 1).copied(), line.get(i + 2).copied()) {
                (b'=', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        if !soft {
            out.extend_from_slice(ending);
        }
    }
    out
}

/// BODY (`extended = false`) or BODYSTRUCTURE of the whole message.
pub fn body_structure(out: &mut Vec<u8>, message: &[u8], summary: &Summary, extended: bool) {
    let top = Part::top(Tree::Cached(summary), message, 0);
    structure_of(out, message, &top, extended, 0);
}

fn structure_of(out: &mut Vec<u8>, message: &[u8], part: &Part<'_>, extended: bool, depth: usize) {
    let s = part.summary();
    let headers = part.header(message);
    out.push(b'(');
    if part.is_multipart() && depth < MESSAGE_DEPTH_MAX * 4 {
        let mut any = false;
        for n in 1..=s.children.len() as u32 {
            if let Some(child) = part.child(n) {
                structure_of(out, message, &child, extended, depth + 1);
                any = true;
            }
        }
        if !any {
            // A multipart with no parts: an empty text part keeps the syntax valid.
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        out.push(b' ');
        string(out, s.subtype.to_ascii_uppercase().as_bytes());
        if extended {
            out.push(b' ');
            params(out, &s.params);
            extension(out, headers);
        }
        out.push(b')');
        return;
    }
    let body = part.body(message);
    string(out, s.ctype.to_ascii_uppercase().as_bytes());
    out.push(b' ');
    string(out, s.subtype.to_ascii_uppercase().as_bytes());
    out.push(b' ');
    params(out, &s.params);
    out.push(b' ');
    nstring(out, header_value(headers, "Content-ID").as_deref());
    out.push(b' ');
    nstring(out, header_value(headers, "Content-Description").as_deref());
    out.push(b' ');
    let encoding = s.encoding.as_deref().unwrap_or("7bit").to_ascii_uppercase();
    string(out, encoding.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    let lines = || memchr::memchr_iter(b'\n', body).count();
    if part.is_message() && depth < MESSAGE_DEPTH_MAX {
        let inner = embedded(message, part);
        out.push(b' ');
        envelope(out, &inner.tree);
        out.push(b' ');
        structure_of(out, message, &inner, extended, depth + 1);
        out.extend_from_slice(format!(" {}", lines()).as_bytes());
    } else if s.ctype == "text" {
        out.extend_from_slice(format!(" {}", lines()).as_bytes());
    }
    if extended {
        out.extend_from_slice(b" NIL"); // MD5
        extension(out, headers);
    }
    out.push(b')');
}

fn params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.push(b')');
}

/// Disposition, language and location (the extension data both kinds share).
fn extension(out: &mut Vec<u8>, headers: &[u8]) {
    out.push(b' ');
    match header_value(headers, "Content-Disposition") {
        Some(d) => {
            let mut fields = d.split(';');
            let kind = fields.next().unwrap_or("").trim().to_ascii_uppercase();
            let ps: Vec<(String, String)> = fields
                .filter_map(|f| {
                    let (k, v) = f.split_once('=')?;
                    Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                })
                .collect();
            out.push(b'(');
            string(out, kind.as_bytes());
            out.push(b' ');
            params(out, &ps);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, header_value(headers, "Content-Language").as_deref());
    out.push(b' ');
    nstring(out, header_value(headers, "Content-Location").as_deref());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: \"Alice A.\" <alice@a.example>\r\nTo: bob@b.example, Team: c@c.example, d@d.example;\r\nSubject: hi\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--b1\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n\r\nAAEC/w==\r\n--b1--\r\n";

    #[test]
    fn sections_and_structure() {
        let s = Summary::parse(MULTI);
        let sec = |spec: Section| section(MULTI, &s, &spec).map(|c| c.into_owned());
        assert_eq!(
            sec(Section {
                part: vec![1],
                text: None
            })
            .unwrap(),
            b"hello\r\nworld"
        );
        let h = sec(Section {
            part: vec![],
            text: Some(SectionText::HeaderFields {
                not: false,
                fields: vec!["SUBJECT".into()],
            }),
        })
        .unwrap();
        assert_eq!(h, b"Subject: hi\r\n\r\n");
        assert!(sec(Section {
            part: vec![],
            text: Some(SectionText::Header)
        })
        .unwrap()
        .ends_with(b"\"b1\"\r\n\r\n"));
        assert_eq!(binary(MULTI, &s, &[2]).unwrap().as_ref(), &[0u8, 1, 2, 255]);
        assert!(sec(Section {
            part: vec![9],
            text: None
        })
        .is_none());
        let mut out = Vec::new();
        body_structure(&mut out, MULTI, &s, true);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 12 1"),
            "{text}"
        );
        assert!(
            text.contains("(\"ATTACHMENT\" (\"FILENAME\" \"x.bin\"))"),
            "{text}"
        );
        assert!(text.contains(" \"MIXED\" (\"BOUNDARY\" \"b1\")"), "{text}");
        let mut env = Vec::new();
        envelope(&mut env, &s);
        let env = String::from_utf8_lossy(&env);
        assert!(
            env.contains("((\"Alice A.\" NIL \"alice\" \"a.example\"))"),
            "{env}"
        );
        assert!(env.contains("(NIL NIL \"Team\" NIL)"), "{env}");
    }

    #[test]
    fn qp_and_dates() {
        assert_eq!(decode_qp(b"a=3Db=\r\nc"), b"a=bc");
        // Transport padding goes; a soft break may be followed by padding.
        assert_eq!(
            decode_qp(b"padded   \r\nsoft=  \r\nbreak\t\r\nend=\nof=3D\n=zz"),
            b"padded\r\nsoftbreak\r\nendof=\n=zz"
        );
        assert_eq!(internal_date(0), "\"01-Jan-1970 00:00:00 +0000\"");
    }
}
