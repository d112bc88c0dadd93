//! RFC 5322 address lists as IMAP's ENVELOPE and SEARCH FROM/TO/CC/BCC see them
//! (RFC 3501 §7.4.2): display name (or, failing one, the comment of the obsolete
//! `user@host (Real Name)` form), source route, local part, domain, and group
//! markers. Lenient — mail in the wild is messy, so anything unparseable becomes a
//! bare local part rather than an error — and never panics. Owns parsing and the
//! address-list rendering only; where the header values come from is the caller's.

use super::render::{nstring, string};

/// One address of an address list, or a group's start/end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Mailbox {
        name: Option<String>,
        /// An obsolete source route (`@a,@b`), ENVELOPE's `adl`.
        route: Option<String>,
        local: String,
        domain: Option<String>,
    },
    GroupStart(String),
    GroupEnd,
}

/// The address being read: its phrase (or bare addr-spec), the angle-address if one
/// came, and the first comment outside both (the obsolete name form).
#[derive(Default)]
struct Pending {
    phrase: String,
    angle: Option<String>,
    comment: String,
    comment_done: bool,
}

impl Pending {
    fn push(&mut self, in_angle: bool, c: char) {
        match (&mut self.angle, in_angle) {
            // Whitespace inside `<…>` is folding or around comments, never content.
            (Some(a), true) => {
                if !c.is_whitespace() {
                    a.push(c)
                }
            }
            _ => self.phrase.push(c),
        }
    }

    fn finish(&mut self, out: &mut Vec<Address>) {
        let words = collapse(&self.phrase);
        let (name, spec) = match self.angle.take() {
            Some(a) => ((!words.is_empty()).then_some(words), a),
            // A bare addr-spec: whitespace in it is folding (`user @ host`).
            None => (None, words.split_whitespace().collect()),
        };
        let comment = collapse(&self.comment);
        let name = name.or((!comment.is_empty()).then_some(comment));
        *self = Pending::default();
        let (route, spec) = match spec.split_once(':') {
            Some((route, rest)) if route.starts_with('@') => (Some(route.to_string()), rest),
            _ => (None, spec.as_str()),
        };
        if spec.is_empty() {
            return;
        }
        let (local, domain) = match spec.rsplit_once('@') {
            Some((l, d)) => (l.to_string(), (!d.is_empty()).then(|| d.to_string())),
            None => (spec.to_string(), None),
        };
        out.push(Address::Mailbox {
            name,
            route,
            local,
            domain,
        });
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses an RFC 5322 address list leniently (display names, angle addresses, source
/// routes, groups; comments dropped except as the obsolete name form).
pub fn parse_addresses(raw: &str) -> Vec<Address> {
    let mut out = Vec::new();
    let mut cur = Pending::default();
    let (mut in_quote, mut depth, mut in_angle, mut in_group) = (false, 0u32, false, false);
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if depth > 0 {
            // A comment; the first one outside `<…>` may be the name.
            let keep = !in_angle && !cur.comment_done;
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '\\' => {
                    if let (Some(n), true) = (chars.next(), keep) {
                        cur.comment.push(n);
                    }
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                cur.comment_done |= keep;
            } else if keep && !(c == '(' && depth == 1) {
                cur.comment.push(c);
            }
            continue;
        }
        if in_quote {
            match c {
                '"' => in_quote = false,
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(in_angle, n);
                    }
                }
                _ => cur.push(in_angle, c),
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '(' => depth = 1,
            '<' if !in_angle => {
                in_angle = true;
                cur.angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            ':' if !in_angle && !in_group && cur.angle.is_none() => {
                out.push(Address::GroupStart(collapse(&cur.phrase)));
                cur = Pending::default();
                in_group = true;
            }
            ';' if !in_angle && in_group => {
                cur.finish(&mut out);
                out.push(Address::GroupEnd);
                in_group = false;
            }
            ',' if !in_angle => cur.finish(&mut out),
            '\r' | '\n' => cur.push(in_angle, ' '),
            _ => cur.push(in_angle, c),
        }
    }
    cur.finish(&mut out);
    if in_group {
        out.push(Address::GroupEnd);
    }
    out
}

/// A header value's addresses (none when the header is absent).
pub fn parse_field(raw: Option<&str>) -> Vec<Address> {
    raw.map(parse_addresses).unwrap_or_default()
}

/// Whether a parsed list holds no address at all (empty, or only group markers):
/// ENVELOPE then falls back to From for Sender and Reply-To (RFC 3501 §7.4.2).
pub fn has_no_mailbox(addresses: &[Address]) -> bool {
    !addresses
        .iter()
        .any(|a| matches!(a, Address::Mailbox { .. }))
}

/// An address list as ENVELOPE renders it: `((name adl mailbox host) …)` or `NIL`.
pub fn address_list(out: &mut Vec<u8>, addresses: &[Address]) {
    if addresses.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in addresses {
        match a {
            Address::Mailbox {
                name,
                route,
                local,
                domain,
            } => {
                out.push(b'(');
                nstring(out, name.as_deref());
                out.push(b' ');
                nstring(out, route.as_deref());
                out.push(b' ');
                string(out, local.as_bytes());
                out.push(b' ');
                nstring(out, domain.as_deref());
                out.push(b')');
            }
            Address::GroupStart(name) => {
                out.extend_from_slice(b"(NIL NIL ");
                string(out, name.as_bytes());
                out.extend_from_slice(b" NIL)");
            }
            Address::GroupEnd => out.extend_from_slice(b"(NIL NIL NIL NIL)"),
        }
    }
    out.push(b')');
}

/// What SEARCH FROM/TO/CC/BCC match against: each parsed address as
/// `name <local@domain>`, comments and folding gone, one per line (RFC 3501 §6.4.4
/// searches the envelope structure, not the raw header).
pub fn search_form(raw: &str) -> String {
    let mut form = String::new();
    for a in parse_addresses(raw) {
        match a {
            Address::Mailbox {
                name,
                local,
                domain,
                ..
            } => {
                if let Some(name) = name {
                    form.push_str(&name);
                    form.push(' ');
                }
                form.push('<');
                form.push_str(&local);
                if let Some(d) = domain {
                    form.push('@');
                    form.push_str(&d);
                }
                form.push_str(">\n");
            }
            Address::GroupStart(name) => {
                form.push_str(&name);
                form.push('\n');
            }
            Address::GroupEnd => {}
        }
    }
    form
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn mailbox(name: Option<&str>, route: Option<&str>, local: &str, domain: &str) -> Address {
        Address::Mailbox {
            name: name.map(str::to_string),
            route: route.map(str::to_string),
            local: local.into(),
            domain: Some(domain.into()),
        }
    }

    #[test]
    fn display_names_groups_and_comments() {
        let a = parse_addresses(
            "\"Alice A.\" <alice@a.example>, bob@b.example (Bob), Team: c@c.example;",
        );
        assert_eq!(a.len(), 5);
        assert_eq!(a[0], mailbox(Some("Alice A."), None, "alice", "a.example"));
        // The obsolete `addr (Real Name)` form: the comment is the name.
        assert_eq!(a[1], mailbox(Some("Bob"), None, "bob", "b.example"));
        assert_eq!(a[2], Address::GroupStart("Team".into()));
        assert_eq!(a[4], Address::GroupEnd);
        assert!(parse_addresses("").is_empty());
        parse_addresses("<<<\"\\"); // no panic
        parse_addresses("((((a\\"); // no panic
    }

    #[test]
    fn comments_inside_an_address_are_dropped_and_routes_kept() {
        assert_eq!(
            parse_addresses("<user (comment)@ (comment) domain.org>"),
            [mailbox(None, None, "user", "domain.org")]
        );
        assert_eq!(
            parse_addresses("Real <user@x.org> (not the name)"),
            [mailbox(Some("Real"), None, "user", "x.org")]
        );
        assert_eq!(
            parse_addresses("user@example.org (Real (nested) Name)"),
            [mailbox(
                Some("Real (nested) Name"),
                None,
                "user",
                "example.org"
            )]
        );
        assert_eq!(
            parse_addresses("Routed <@relay1.example,@relay2.example:joe@x.example>"),
            [mailbox(
                Some("Routed"),
                Some("@relay1.example,@relay2.example"),
                "joe",
                "x.example"
            )]
        );
        assert!(has_no_mailbox(&parse_field(Some("  "))));
        assert!(has_no_mailbox(&parse_field(Some(
            "undisclosed-recipients:;"
        ))));
        assert!(has_no_mailbox(&parse_field(None)));
        assert!(!has_no_mailbox(&parse_field(Some("a@b.example"))));
    }

    #[test]
    fn search_form_is_the_parsed_envelope() {
        let form = search_form("<user (comment)@ (comment) domain.org>, Real <r@x.org>");
        assert_eq!(form, "<user@domain.org>\nReal <r@x.org>\n");
    }
}
