//! RFC details clients trip on (issue 13): `[` is an ATOM-CHAR outside a FETCH
//! section (RFC 3501 §9), `NIL` is an atom wherever the grammar has an astring or a
//! flag, the longest commands the RFCs allow fit, ESEARCH MIN/MAX MODSEQ, modified
//! UTF-7 names, ENVELOPE addresses and MIME decoding. Where fed through `replies`,
//! each command is also fed a byte at a time, with the same replies.

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
        out.contains("* 1 FETCH (FLAGS (\\Recent NIL))\r\nd OK FETCH completed\r\n"),
        "{out}"
    );
    let out = replies("b CREATE NIL\r\nc STATUS NIL (MESSAGES)\r\n");
    assert!(
        out.contains("* STATUS \"NIL\" (MESSAGES 0)\r\nc OK"),
        "{out}"
    );
}

/// The default command-line limit fits every command the RFCs allow: an ID at RFC
/// 2971's maximum (30 field-value pairs, values of 1,024 octets) and a long QRESYNC
/// known-UIDs set; past `limits.imap_command_bytes_max` the reply names the key.
#[test]
fn the_longest_commands_the_rfcs_allow_fit() {
    let fields: Vec<String> = (0..30)
        .map(|i| format!("\"field{i:02}\" \"{}\"", "v".repeat(1024)))
        .collect();
    let id = format!("b ID ({})\r\n", fields.join(" "));
    assert!(id.len() > 30_000);
    assert!(replies(&id).ends_with("b OK ID completed\r\n"));
    let known: Vec<String> = (1..4000).step_by(2).map(|u| u.to_string()).collect();
    let select = format!(
        "c ENABLE QRESYNC\r\nd SELECT INBOX (QRESYNC (1000 1 {}))\r\n",
        known.join(",")
    );
    assert!(replies(&select).contains("d OK [READ-WRITE]"));
    let too_long = format!("e NOOP {}\r\n", "x".repeat(70 * 1024));
    let mut d = driver();
    d.feed(too_long.as_bytes());
    let out = String::from_utf8_lossy(&d.sent).into_owned();
    assert!(out.contains("limits.imap_command_bytes_max"), "{out}");
}

/// RFC 7162 §3.1.5: `SEARCH RETURN (MIN)` / `(MAX)` with a MODSEQ criterion reports the
/// MODSEQ of the message returned, `ALL` (or COUNT) that of every match.
#[test]
fn esearch_min_and_max_report_their_own_modseq() {
    let mut d = driver();
    for i in 0..3 {
        d.store
            .deliver(1, format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(), 1);
    }
    d.feed(b"b SELECT INBOX\r\nc STORE 1 +FLAGS (\\Seen)\r\n");
    d.sent.clear();
    // Messages 1..4: message 1 changed last, so it has the highest MODSEQ.
    d.feed(b"d FETCH 1:* (MODSEQ)\r\n");
    let fetched = String::from_utf8_lossy(&d.sent).into_owned();
    let modseq_of = |seq: u32| -> u64 {
        let key = format!("* {seq} FETCH (MODSEQ (");
        let at = fetched.find(&key).expect("fetched") + key.len();
        fetched[at..]
            .split(')')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    };
    let (first, last, top) = (
        modseq_of(1),
        modseq_of(4),
        (1..=4).map(modseq_of).max().unwrap_or(0),
    );
    assert!(
        first > last,
        "message 1 changed after the others were delivered"
    );
    let search = |d: &mut Driver, cmd: &str| {
        d.sent.clear();
        d.feed(cmd.as_bytes());
        String::from_utf8_lossy(&d.sent).into_owned()
    };
    let out = search(&mut d, "e SEARCH RETURN (MAX) MODSEQ 1\r\n");
    assert!(out.contains(&format!("MAX 4 MODSEQ {last}")), "{out}");
    let out = search(&mut d, "f SEARCH RETURN (MIN) MODSEQ 1\r\n");
    assert!(out.contains(&format!("MIN 1 MODSEQ {first}")), "{out}");
    let out = search(&mut d, "g SEARCH RETURN (ALL) MODSEQ 1\r\n");
    assert!(out.contains(&format!("ALL 1:4 MODSEQ {top}")), "{out}");
}

/// Without UTF8=ACCEPT, mailbox names are 7-bit with modified UTF-7 (RFC 3501
/// §5.1.3); CREATE-SPECIAL-USE sets the attribute asked for, and one that cannot be
/// set refuses the CREATE (RFC 6154 §5.1).
#[test]
fn mailbox_names_are_modified_utf7_and_use_cannot_be_dropped_silently() {
    let out = replies("b CREATE bad&name\r\n");
    assert!(
        out.starts_with("b NO [CANNOT] Invalid modified UTF-7"),
        "{out}"
    );
    let out = replies("c CREATE caf\u{e9}\r\n");
    assert!(
        out.starts_with("c NO [CANNOT] Mailbox names are 7-bit"),
        "{out}"
    );
    let out = replies("d CREATE Entw&APw-rfe\r\ne CREATE Tom&-Jerry\r\nf LIST \"\" *\r\n");
    assert!(out.contains("d OK") && out.contains("e OK"), "{out}");
    assert!(
        out.contains("\"Entw&APw-rfe\"") && out.contains("\"Tom&-Jerry\""),
        "{out}"
    );
    let out = replies(
        "g CREATE Old (USE (\\Archive))\r\nh LIST (SPECIAL-USE) \"\" *\r\n\
         i DELETE Old\r\nj CREATE All (USE (\\All))\r\nk CREATE Two (USE (\\Sent \\Junk))\r\n\
         l LIST \"\" All\r\n",
    );
    assert!(out.starts_with("g OK [MAILBOXID (F6-"), "{out}");
    assert!(
        out.contains("* LIST (\\HasNoChildren \\Archive) \"/\" \"Old\"\r\n"),
        "{out}"
    );
    // A special-use mailbox a user created is theirs to delete.
    assert!(out.contains("i OK DELETE"), "{out}");
    assert!(out.contains("j NO [USEATTR] \\All and \\Flagged"), "{out}");
    assert!(
        out.contains("k NO [USEATTR] A mailbox carries one"),
        "{out}"
    );
    assert!(out.contains("l OK LIST completed\r\n"), "{out}");
    assert!(!out.contains("\"All\""), "{out}");
    let out = replies("i RENAME INBOX x&Jjo\r\n");
    assert!(
        out.starts_with("i NO [CANNOT] Invalid modified UTF-7"),
        "{out}"
    );
}

/// BINARY decodes quoted-printable as RFC 2045 §6.7 says: trailing whitespace is
/// transport padding, and a soft line break may be followed by it (issue 13 item 5).
#[test]
fn binary_decodes_quoted_printable_padding_and_soft_breaks() {
    let mut d = driver();
    d.store.deliver(
        1,
        b"Subject: qp\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello   \r\nwor=  \r\nld=21\r\n",
        1,
    );
    d.feed(b"b SELECT INBOX\r\n");
    d.sent.clear();
    d.feed(b"c FETCH 2 (BINARY.SIZE[1] BINARY[1])\r\n");
    let out = String::from_utf8_lossy(&d.sent).into_owned();
    assert!(
        out.contains("BINARY.SIZE[1] 15 BINARY[1] {15}\r\nHello\r\nworld!\r\n FLAGS"),
        "{out}"
    );
}

/// Item 4: ENVELOPE takes the obsolete `addr (Real Name)` comment as the name, keeps
/// source routes, defaults an empty Sender and Reply-To to From (RFC 3501 §7.4.2);
/// SEARCH FROM/TO/CC match the parsed addresses, not the raw header.
#[test]
fn envelope_addresses_as_rfc_3501_parses_them() {
    let mut d = driver();
    d.store.deliver(
        1,
        b"From: user@example.org (Real Name)\r\nSender:\r\nReply-To: \r\n\
To: Routed <@relay.example,@hop.example:joe@x.example>\r\n\
Cc: <user (comment)@ (comment) domain.org>\r\nSubject: env\r\n\r\nbody\r\n",
        1_795_600_100,
    );
    d.feed(b"b SELECT INBOX\r\nc FETCH 2 ENVELOPE\r\n");
    let out = String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned();
    let from = "((\"Real Name\" NIL \"user\" \"example.org\"))";
    let want = format!(
        "* 2 FETCH (ENVELOPE (NIL \"env\" {from} {from} {from} \
         ((\"Routed\" \"@relay.example,@hop.example\" \"joe\" \"x.example\")) \
         ((NIL NIL \"user\" \"domain.org\")) NIL NIL NIL))\r\n"
    );
    assert!(out.contains(&want), "{out}");
    for (query, hits) in [
        ("SEARCH FROM \"Real Name\"", "* SEARCH 2"),
        ("SEARCH FROM user@example.org", "* SEARCH 2"),
        ("SEARCH CC user@domain.org", "* SEARCH 2"),
        ("SEARCH CC comment", "* SEARCH"),
        ("SEARCH TO joe@x.example", "* SEARCH 2"),
    ] {
        d.feed(format!("s {query}\r\n").as_bytes());
        let out = String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned();
        assert_eq!(
            out,
            format!("{hits}\r\ns OK SEARCH completed\r\n"),
            "{query}"
        );
    }
}

/// Item 5: parts of a multipart/digest default to message/rfc822 (RFC 2046 §5.1.5).
#[test]
fn digest_parts_are_messages() {
    let mut d = driver();
    d.store.deliver(
        1,
        b"Subject: digest\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
--m\r\nContent-Type: multipart/digest; boundary=\"d\"\r\n\r\n\
--d\r\n\r\nSubject: inner one\r\nFrom: a@b.example\r\n\r\nfirst body\r\n\
--d\r\nContent-Type: text/plain\r\n\r\nnot a message\r\n--d--\r\n--m--\r\n",
        1_795_600_100,
    );
    d.feed(b"b SELECT INBOX\r\nc FETCH 2 (BODY.PEEK[1.1.HEADER] BODY.PEEK[1.1.TEXT] BODY.PEEK[1.2])\r\n");
    let out = String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned();
    assert!(
        out.contains("BODY[1.1.HEADER] {41}\r\nSubject: inner one\r\nFrom: a@b.example\r\n\r\n"),
        "{out}"
    );
    assert!(out.contains("BODY[1.1.TEXT] {10}\r\nfirst body"), "{out}");
    assert!(out.contains("BODY[1.2] {13}\r\nnot a message"), "{out}");
    d.feed(b"d FETCH 2 BODYSTRUCTURE\r\n");
    let out = String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned();
    assert!(
        out.contains("((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 51 (NIL \"inner one\""),
        "{out}"
    );
}

/// Item 5: a `Content-Transfer-Encoding: binary` part never puts NUL in an ordinary
/// literal: BODY[] sends 0x80 for it (sizes unchanged), BINARY[] a literal8.
#[test]
fn nul_bytes_only_travel_in_literal8() {
    let mut d = driver();
    let mut msg = b"Subject: nul\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    msg.extend_from_slice(b"a\0b\0c");
    msg.extend_from_slice(b"\r\n--b--\r\n");
    d.store.deliver(1, &msg, 1_795_600_100);
    d.feed(b"b SELECT INBOX\r\nc FETCH 2 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[1])\r\n");
    let sent = std::mem::take(&mut d.sent);
    let at = sent
        .windows(9)
        .position(|w| w == b"c OK FETC")
        .expect("reply");
    let fetch = &sent[..at];
    assert!(!fetch.contains(&0), "{}", String::from_utf8_lossy(fetch));
    let text = String::from_utf8_lossy(fetch);
    assert!(
        text.contains(&format!("RFC822.SIZE {}", msg.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("BODY[] {{{}}}", msg.len())),
        "{text}"
    );
    assert!(fetch.windows(5).any(|w| w == b"a\x80b\x80c"), "{text}");
    d.feed(b"d FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])\r\n");
    let sent = std::mem::take(&mut d.sent);
    assert!(sent.windows(10).any(|w| w == b"~{5}\r\na\0b\0"), "{sent:?}");
    assert!(String::from_utf8_lossy(&sent).contains("BINARY.SIZE[1] 5"));
}

/// Item 6: the first CONDSTORE-enabling command in a selected mailbox reports
/// HIGHESTMODSEQ (RFC 7162 §3.1), once.
#[test]
fn the_first_fetch_modseq_reports_highestmodseq() {
    let out = replies("b SELECT INBOX\r\nc FETCH 1 (MODSEQ)\r\nd FETCH 1 (MODSEQ)\r\n");
    assert!(
        out.contains(
            "b OK [READ-WRITE] SELECT completed\r\n* OK [HIGHESTMODSEQ 1] Highest\r\n\
             * 1 FETCH (MODSEQ (1))\r\nc OK FETCH completed\r\n* 1 FETCH (MODSEQ (1))\r\nd OK"
        ),
        "{out}"
    );
}

/// Item 7: LIST (SUBSCRIBED RECURSIVEMATCH) and LSUB show the parents of subscribed
/// names a `%` pattern misses — as they are (RFC 5258 §3.5), with CHILDINFO only
/// when the descendant is not listed itself; LSUB flags them `\Noselect` (RFC 3501
/// §6.3.9).
#[test]
fn recursive_match_and_lsub_show_parents_of_subscribed_children() {
    let setup = "b CREATE Fruit/Apple\r\nc CREATE Fruit/Pear\r\nd SUBSCRIBE Fruit/Apple\r\n\
                 e SUBSCRIBE Ghost/Child\r\nf SUBSCRIBE Moo\r\n";
    let out = replies(&format!(
        "{setup}g LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %\r\n"
    ));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("* LIST")).collect();
    assert_eq!(
        rows,
        // Subscribed names first, then the parents RECURSIVEMATCH adds.
        [
            "* LIST (\\NonExistent \\HasNoChildren \\Subscribed) \"/\" \"Moo\"",
            "* LIST (\\HasChildren) \"/\" \"Fruit\" (\"CHILDINFO\" (\"SUBSCRIBED\"))",
            "* LIST (\\NonExistent) \"/\" \"Ghost\" (\"CHILDINFO\" (\"SUBSCRIBED\"))",
        ],
        "{out}"
    );
    // With `*` the children are listed themselves: no parent rows, no CHILDINFO.
    let out = replies(&format!(
        "{setup}g LIST (SUBSCRIBED RECURSIVEMATCH) \"\" *\r\n"
    ));
    assert!(!out.contains("CHILDINFO"), "{out}");
    assert!(out.contains("\"Fruit/Apple\""), "{out}");
    // A subscribed parent with a subscribed child it hides carries CHILDINFO too.
    let out = replies(&format!(
        "{setup}g SUBSCRIBE Fruit\r\nh LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %\r\n"
    ));
    assert!(
        out.contains(
            "* LIST (\\HasChildren \\Subscribed) \"/\" \"Fruit\" (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{out}"
    );
    let out = replies(&format!("{setup}g LSUB \"\" %\r\nh LSUB \"\" Fruit/%\r\n"));
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("* LSUB")).collect();
    assert_eq!(
        rows,
        [
            "* LSUB (\\Noselect) \"/\" \"Fruit\"",
            "* LSUB (\\Noselect) \"/\" \"Ghost\"",
            "* LSUB (\\Noselect) \"/\" \"Moo\"",
            "* LSUB () \"/\" \"Fruit/Apple\"",
        ],
        "{out}"
    );
}
