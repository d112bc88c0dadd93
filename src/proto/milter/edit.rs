//! The changes a milter makes at the end of a message, and applying them.
//!
//! Owns the header-field view of a message both sides agree on: fields in order, a
//! field's value without its leading whitespace and with folds as bare `\n` (as
//! Postfix sends them). Never lets a change produce a malformed header: names are
//! checked, and a value's line breaks become folds.

/// One change (`SMFIR_ADDHEADER`, `INSHEADER`, `CHGHEADER`, `REPLBODY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a field at the end of the header.
    Add { name: String, value: String },
    /// Insert a field before the `index`-th (0-based) field, or at the end.
    Insert {
        index: u32,
        name: String,
        value: String,
    },
    /// Replace the `index`-th (1-based) field called `name`; an empty value removes
    /// it. A field that is not there is added.
    Change {
        index: u32,
        name: String,
        value: String,
    },
    /// A chunk of the new body; the chunks of one conversation are concatenated.
    Body(Vec<u8>),
}

impl Edit {
    /// Bytes this change may add to the message (for the size limit).
    pub fn size(&self) -> usize {
        match self {
            Edit::Add { name, value }
            | Edit::Insert { name, value, .. }
            | Edit::Change { name, value, .. } => name.len() + value.len() + 4,
            Edit::Body(b) => b.len(),
        }
    }
}

/// One header field of a message: where its bytes are, and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// From the name to the end of its last line (CRLF included).
    pub start: usize,
    pub end: usize,
    /// Length of the name (before the colon).
    pub name_len: usize,
}

/// The header fields of `message` and where its body starts (after the empty line;
/// the message's length when it has none).
pub fn fields(message: &[u8]) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let line_end = memchr::memchr(b'\n', message.get(at..).unwrap_or(&[]))
            .map_or(message.len(), |i| at + i + 1);
        let line = message.get(at..line_end).unwrap_or(&[]);
        if line == b"\r\n" || line == b"\n" {
            return (fields, line_end);
        }
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.end = line_end, // a fold
            _ => {
                let Some(colon) = memchr::memchr(b':', line) else {
                    // Not a header line: the header ended without an empty line.
                    return (fields, at);
                };
                fields.push(Field {
                    start: at,
                    end: line_end,
                    name_len: colon,
                });
            }
        }
        at = line_end;
    }
    (fields, message.len())
}

impl Field {
    pub fn name<'m>(&self, message: &'m [u8]) -> &'m [u8] {
        message
            .get(self.start..self.start + self.name_len)
            .unwrap_or(&[])
            .trim_ascii_end()
    }

    /// The value as a milter sees it: leading whitespace and the final line break
    /// removed, folds as `\n`.
    pub fn value(&self, message: &[u8]) -> String {
        let raw = message
            .get(self.start + self.name_len + 1..self.end)
            .unwrap_or(&[]);
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let start = raw
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(raw.len());
        let text = String::from_utf8_lossy(raw.get(start..).unwrap_or(&[]));
        text.replace("\r\n", "\n")
    }
}

/// A field name a milter may set: printable ASCII without a colon (RFC 5322 §3.6.8).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// `name: value` with CRLF, every line break in `value` made a fold.
fn render(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    let value = value.replace("\r\n", "\n").replace('\r', "\n");
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
            if !line.starts_with([' ', '\t']) {
                out.push(b'\t');
            }
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `message` with `edits` applied in order; the edits that could not be applied
/// (a bad header name) are counted in the second value.
pub fn apply(message: &[u8], edits: &[Edit]) -> (Vec<u8>, usize) {
    let (fields, body_start) = fields(message);
    // Each field as (name, bytes); changes work on this list.
    let mut header: Vec<(String, Vec<u8>)> = fields
        .iter()
        .map(|f| {
            let name = String::from_utf8_lossy(f.name(message)).into_owned();
            (name, message.get(f.start..f.end).unwrap_or(&[]).to_vec())
        })
        .collect();
    let mut new_body: Option<Vec<u8>> = None;
    let mut refused = 0;
    for edit in edits {
        match edit {
            Edit::Body(chunk) => new_body.get_or_insert_with(Vec::new).extend(chunk),
            Edit::Add { name, .. } | Edit::Insert { name, .. } | Edit::Change { name, .. }
                if !valid_name(name) =>
            {
                refused += 1;
            }
            Edit::Add { name, value } => header.push((name.clone(), render(name, value))),
            Edit::Insert { index, name, value } => {
                let at = (*index as usize).min(header.len());
                header.insert(at, (name.clone(), render(name, value)));
            }
            Edit::Change { index, name, value } => {
                let nth = (*index).max(1) as usize;
                let found = header
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth(nth - 1)
                    .map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        header.remove(i);
                    }
                    (Some(i), false) => {
                        if let Some(slot) = header.get_mut(i) {
                            slot.1 = render(name, value);
                        }
                    }
                    (None, true) => {}
                    (None, false) => header.push((name.clone(), render(name, value))),
                }
            }
        }
    }
    let body = new_body
        .as_deref()
        .unwrap_or_else(|| message.get(body_start..).unwrap_or(&[]));
    let mut out = Vec::with_capacity(message.len() + 256);
    for (_, bytes) in &header {
        out.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n"); // the last field of a message with no body
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    (out, refused)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Received: from x\r\n\tby y\r\nSubject: hi\r\nX-Spam: old\r\n\
                             X-Spam: older\r\n\r\nbody\r\n";

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn fields_and_values_as_a_milter_sees_them() {
        let (fields, body) = fields(MESSAGE);
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0].name(MESSAGE), b"Received");
        assert_eq!(fields[0].value(MESSAGE), "from x\n\tby y");
        assert_eq!(fields[1].value(MESSAGE), "hi");
        assert_eq!(&MESSAGE[body..], b"body\r\n");
    }

    #[test]
    fn add_insert_change_delete() {
        let edits = [
            Edit::Add {
                name: "X-Added".into(),
                value: "1".into(),
            },
            Edit::Insert {
                index: 0,
                name: "X-First".into(),
                value: "two\nlines".into(),
            },
            Edit::Change {
                index: 2,
                name: "x-spam".into(),
                value: "new".into(),
            },
            Edit::Change {
                index: 1,
                name: "X-Spam".into(),
                value: String::new(),
            },
            Edit::Change {
                index: 1,
                name: "X-Absent".into(),
                value: "appended".into(),
            },
        ];
        let (out, refused) = apply(MESSAGE, &edits);
        assert_eq!(refused, 0);
        assert_eq!(
            text(out),
            "X-First: two\r\n\tlines\r\nReceived: from x\r\n\tby y\r\nSubject: hi\r\n\
             x-spam: new\r\nX-Added: 1\r\nX-Absent: appended\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn body_replacement_and_bad_names() {
        let edits = [
            Edit::Body(b"new ".to_vec()),
            Edit::Body(b"body\r\n".to_vec()),
            Edit::Add {
                name: "Bad Name".into(),
                value: "x".into(),
            },
            Edit::Add {
                name: "Evil:".into(),
                value: "x".into(),
            },
        ];
        let (out, refused) = apply(MESSAGE, &edits);
        assert_eq!(refused, 2);
        assert!(text(out).ends_with("X-Spam: older\r\n\r\nnew body\r\n"));
    }

    #[test]
    fn a_value_cannot_inject_a_header() {
        let edits = [Edit::Add {
            name: "X-Note".into(),
            value: "a\r\nBcc: victim@example.org".into(),
        }];
        let (out, _) = apply(b"Subject: s\r\n\r\n", &edits);
        assert_eq!(
            text(out),
            "Subject: s\r\nX-Note: a\r\n\tBcc: victim@example.org\r\n\r\n"
        );
    }

    #[test]
    fn messages_without_a_body_or_empty_line() {
        let (out, _) = apply(b"Subject: s", &[]);
        assert_eq!(text(out), "Subject: s\r\n\r\n");
        let (fields, body) = fields(b"Subject: s\r\nnot a header\r\n");
        assert_eq!(fields.len(), 1);
        assert_eq!(body, 12);
    }
}
