//! APPEND's extensions as transcripts over the in-memory store: MULTIAPPEND (RFC
//! 3502: several messages, all or none), CATENATE (RFC 4469: a message from TEXT
//! parts and URLs of stored messages), and their abuse cases (a refusal mid-command
//! stores nothing and drops the rest of it; limits; another user's or server's URL).
//! Each transcript is also replayed a byte at a time. End to end with imaplib:
//! tests/e2e/test_imap_rfc.py.

#![allow(clippy::indexing_slicing)]

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

const NOW: i64 = 1_795_675_500;

fn connection(config: impl FnOnce(&mut ImapConfig)) -> Driver {
    let mut d = Driver::logged_in(config);
    d.now = NOW;
    d
}

/// Runs `input` whole, then a byte at a time on a fresh connection: both must send
/// the same replies.
fn both_ways(config: fn(&mut ImapConfig), setup: &str, input: &str) -> (Driver, String) {
    let mut whole = connection(config);
    whole.say(setup);
    let out = whole.say(input);
    let mut bytewise = connection(config);
    bytewise.say(setup);
    for b in input.as_bytes() {
        bytewise.feed(&[*b]);
    }
    let again = String::from_utf8_lossy(&std::mem::take(&mut bytewise.sent)).into_owned();
    assert_eq!(out, again, "fragmented replay differs");
    (whole, out)
}

fn no_change(_: &mut ImapConfig) {}

#[test]
fn multiappend_stores_every_message_in_one_command() {
    let input = "b APPEND Drafts (\\Seen) \"01-Jan-2026 10:00:00 +0000\" {21}\r\n\
                 Subject: one\r\n\r\nfirst (\\Flagged $Work) {22}\r\nSubject: two\r\n\r\nsecond {23+}\r\n\
                 Subject: three\r\n\r\nthird\r\n\
                 c SELECT Drafts\r\nd FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[TEXT])\r\n";
    let (_, out) = both_ways(no_change, "", input);
    // One continuation per synchronizing literal, one tagged answer for the command.
    assert_eq!(out.matches("+ Ready").count(), 2, "{out}");
    assert!(out.contains("b OK [APPENDUID "), "{out}");
    assert!(out.contains(" 1:3] APPEND completed"), "{out}");
    assert!(out.contains("* 3 EXISTS"), "{out}");
    assert!(
        out.contains("* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE \"01-Jan-2026 10:00:00 +0000\" BODY[TEXT] {5}\r\nfirst)"),
        "{out}"
    );
    assert!(out.contains("FLAGS (\\Flagged \\Recent $Work)"), "{out}");
    assert!(out.contains("BODY[TEXT] {5}\r\nthird)"), "{out}");
}

#[test]
fn a_refusal_part_way_stores_none_of_the_messages() {
    // The second message has a bad flag: NO continuation for its literal, nothing of
    // the first is stored, and the next command is served.
    let input = "b APPEND INBOX {10}\r\nSubject: x (\\Bogus) {3}\r\nc STATUS INBOX (MESSAGES)\r\n";
    let (_, out) = both_ways(no_change, "", input);
    assert_eq!(out.matches("+ Ready").count(), 1, "{out}");
    assert!(out.contains("b BAD"), "{out}");
    assert!(out.contains("(MESSAGES 0)"), "{out}");
    // LITERAL+: the refused message's bytes, and every later one, are read and
    // dropped; the command's end is found however many messages follow.
    let input = "b APPEND INBOX {10+}\r\nSubject: x \"bad date\" {5+}\r\n{ }\r\n {4+}\r\nabcd\r\n\
                 c STATUS INBOX (MESSAGES)\r\n";
    let (_, out) = both_ways(no_change, "", input);
    assert!(out.contains("b BAD"), "{out}");
    assert!(
        !out.contains("* BAD"),
        "the dropped bytes were taken as commands: {out}"
    );
    assert!(out.contains("(MESSAGES 0)"), "{out}");
    assert!(out.contains("c OK"), "{out}");
    // Garbage after a message: BAD, nothing stored.
    let (_, out) = both_ways(
        no_change,
        "",
        "b APPEND INBOX {3+}\r\nabc garbage\r\nc STATUS INBOX (MESSAGES)\r\n",
    );
    assert!(out.contains("b BAD APPEND: garbage where"), "{out}");
    assert!(out.contains("(MESSAGES 0)"), "{out}");
}

#[test]
fn multiappend_limits_messages_and_size() {
    fn two(c: &mut ImapConfig) {
        c.append_messages_max = 2;
        c.literal_bytes_max = 100;
    }
    let (_, out) = both_ways(
        two,
        "",
        "b APPEND INBOX {1+}\r\na {1+}\r\nb {1+}\r\nc\r\nd STATUS INBOX (MESSAGES)\r\n",
    );
    assert!(
        out.contains(
            "b NO [LIMIT] One APPEND stores at most 2 messages (limits.imap_append_messages_max)"
        ),
        "{out}"
    );
    assert!(out.contains("(MESSAGES 0)"), "{out}");
    // Each message is bounded by APPENDLIMIT, the second one too.
    let (_, out) = both_ways(
        two,
        "",
        "b APPEND INBOX {1}\r\na {101}\r\nd STATUS INBOX (MESSAGES)\r\n",
    );
    assert!(out.contains("b NO [TOOBIG]"), "{out}");
    assert_eq!(out.matches("+ Ready").count(), 1, "{out}");
    assert!(out.contains("(MESSAGES 0)"), "{out}");
}

const FORWARDED: &str =
    "From: a@example.org\r\nSubject: report\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                         --b\r\nContent-Type: application/pdf\r\n\r\nPDFDATA\r\n--b--\r\n";

#[test]
fn catenate_builds_a_message_from_text_and_stored_parts() {
    let setup = format!(
        "s APPEND INBOX {{{}}}\r\n{FORWARDED}\r\nt SELECT INBOX\r\n",
        FORWARDED.len()
    );
    // Text, then part 2 of the stored message by a mailbox-absolute URL, then text,
    // then the same part by a URL relative to the selected mailbox.
    let head = "Subject: fwd\r\n\r\n";
    let input = format!(
        "b APPEND Sent (\\Seen) CATENATE (TEXT {{{}}}\r\n{head} URL \"/INBOX/;UID=1/;SECTION=2\" TEXT {{2+}}\r\n-- \
         URL \";UID=1/;SECTION=1/;PARTIAL=0.3\")\r\nc SELECT Sent\r\nd FETCH 1 BODY[]\r\n",
        head.len()
    );
    let (_, out) = both_ways(no_change, &setup, &input);
    assert!(out.contains("b OK [APPENDUID "), "{out}");
    let built = format!("{head}PDFDATA--see");
    assert!(
        out.contains(&format!("BODY[] {{{}}}\r\n{built})", built.len())),
        "{out}"
    );
    // A UIDVALIDITY that does not match, a missing message, another user, another
    // server, URLAUTH: NO [BADURL], nothing stored, the rest of the command dropped.
    for url in [
        "/INBOX;UIDVALIDITY=1/;UID=1",
        "/INBOX/;UID=99",
        "/Nowhere/;UID=1",
        "imap://alice@imap.example/INBOX/;UID=1",
        "imap://bob@elsewhere.example/INBOX/;UID=1",
        "/INBOX/;UID=1/;URLAUTH=anonymous:internal:0123",
        "/INBOX/;UID=1/;SECTION=7",
    ] {
        let input = format!(
            "b APPEND Sent CATENATE (URL \"{url}\" TEXT {{3+}}\r\nabc)\r\nc STATUS Sent (MESSAGES)\r\n"
        );
        let (_, out) = both_ways(no_change, &setup, &input);
        assert!(
            out.contains(&format!("b NO [BADURL {url}]")),
            "{url}: {out}"
        );
        assert!(out.contains("(MESSAGES 0)"), "{url}: {out}");
        assert!(!out.contains("* BAD"), "{url}: {out}");
    }
    // The whole message by its absolute URL on this server.
    let input = "b APPEND Sent CATENATE (URL \"imap://bob@imap.example/INBOX;UIDVALIDITY=1000/;UID=1\")\r\n\
                 c SELECT Sent\r\nd FETCH 1 RFC822.SIZE\r\n";
    let (_, out) = both_ways(no_change, &setup, input);
    assert!(out.contains("b OK"), "{out}");
    assert!(
        out.contains(&format!("RFC822.SIZE {}", FORWARDED.len())),
        "{out}"
    );
}

#[test]
fn catenate_parts_are_bounded_by_appendlimit() {
    fn small(c: &mut ImapConfig) {
        c.literal_bytes_max = 200;
    }
    let setup = format!(
        "s APPEND INBOX {{{}}}\r\n{FORWARDED}\r\nt SELECT INBOX\r\n",
        FORWARDED.len()
    );
    // Two copies of the stored message pass the limit: TOOBIG at the second URL.
    let input = "b APPEND Sent CATENATE (URL \"/INBOX/;UID=1\" URL \"/INBOX/;UID=1\")\r\n\
                 c STATUS Sent (MESSAGES)\r\n";
    let (_, out) = both_ways(small, &setup, input);
    assert!(out.contains("b NO [TOOBIG]"), "{out}");
    assert!(out.contains("(MESSAGES 0)"), "{out}");
}
