//! Grammar details clients trip on (issue 13, items 2 and 3): `[` is an ATOM-CHAR
//! outside a FETCH section (RFC 3501 §9), and `NIL` is an atom wherever the grammar
//! has an astring or a flag. Each command is also fed a byte at a time, with the same
//! replies.

use std::sync::Arc;

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

fn driver() -> Driver {
    let mut d = Driver::new(
        Arc::new(ImapConfig {
            hostname: "imap.example".into(),
            tls_available: true,
            ..ImapConfig::default()
        }),
        true,
    );
    d.store
        .deliver(1, b"Subject: NIL and more\r\n\r\nbody\r\n", 1_795_600_000);
    d.feed(b"a LOGIN bob pw\r\n");
    d.sent.clear();
    d
}

/// The replies to `input`, fed whole and then a byte at a time (must agree).
fn replies(input: &str) -> String {
    let mut whole = driver();
    whole.feed(input.as_bytes());
    let mut bytewise = driver();
    for b in input.as_bytes() {
        bytewise.feed(std::slice::from_ref(b));
    }
    let (a, b) = (
        String::from_utf8_lossy(&whole.sent).into_owned(),
        String::from_utf8_lossy(&bytewise.sent).into_owned(),
    );
    assert_eq!(a, b, "fragmented input changed the replies");
    a
}

#[test]
fn a_bracket_is_an_atom_char_outside_fetch_sections() {
    let out = replies("b SELECT !#$&'+,-.0123456789:;<=>?@^_`|~[\r\n");
    assert_eq!(out, "b NO [NONEXISTENT] No such mailbox\r\n");
    let out = replies("c LIST \"\" foo[*\r\n");
    assert_eq!(out, "c OK LIST completed\r\n");
    let out = replies("d CREATE a[1]\r\ne LIST \"\" a[*\r\n");
    assert!(out.starts_with("d OK"), "{out}");
    assert!(
        out.contains("* LIST (\\HasNoChildren) \"/\" \"a[1]\"\r\n"),
        "{out}"
    );
    // Sections still open brackets, with spaces and parentheses inside.
    let out = replies(
        "f SELECT INBOX\r\ng FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BINARY.SIZE[1])\r\n",
    );
    assert!(
        out.contains("BODY[HEADER.FIELDS (SUBJECT)] {25}\r\nSubject: NIL and more\r\n\r\n"),
        "{out}"
    );
    assert!(out.ends_with("g OK FETCH completed\r\n"), "{out}");
}

#[test]
fn nil_is_an_atom_where_an_astring_or_a_flag_is_allowed() {
    let out = replies("b SELECT INBOX\r\nc SEARCH SUBJECT NIL\r\nd SEARCH SUBJECT \"NIL\"\r\n");
    assert!(
        out.contains("* SEARCH 1\r\nc OK SEARCH completed\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* SEARCH 1\r\nd OK SEARCH completed\r\n"),
        "{out}"
    );
    let out = replies("b SELECT INBOX\r\nc STORE 1 +FLAGS NIL\r\nd FETCH 1 FLAGS\r\n");
    assert!(out.contains("c OK"), "{out}");
    assert!(
        out.contains("* 1 FETCH (FLAGS (NIL))\r\nd OK FETCH completed\r\n"),
        "{out}"
    );
    let out = replies("b CREATE NIL\r\nc STATUS NIL (MESSAGES)\r\n");
    assert!(
        out.contains("* STATUS \"NIL\" (MESSAGES 0)\r\nc OK"),
        "{out}"
    );
}
