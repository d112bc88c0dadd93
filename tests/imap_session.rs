//! IMAP session transcripts in memory (the real session over an in-memory account
//! that applies changes through the real index), each replayed whole and in 1-, 2-,
//! 7- and 100-byte fragments with identical output; plus property tests: any input,
//! split anywhere, never panics and gives the same replies.

use std::sync::Arc;

use proptest::prelude::*;
use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

fn config() -> Arc<ImapConfig> {
    Arc::new(ImapConfig {
        hostname: "imap.example".into(),
        tls_available: true,
        allow_plaintext_auth: false,
        command_bytes_max: 1024,
        literal_bytes_max: 4096,
        depth_max: 8,
        bad_commands_max: 6,
        auth_failures_max: 2,
        ..ImapConfig::default()
    })
}

const MSG1: &[u8] = b"From: Alice <alice@a.example>\r\nTo: bob@b.example\r\nSubject: first\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@a.example>\r\n\r\nHello Bob.\r\n";
const MSG2: &[u8] = b"From: Carol <carol@c.example>\r\nTo: bob@b.example\r\nSubject: second\r\n\r\nQuarterly report.\r\n";

/// A driver logged in over TLS with two messages in INBOX (unless `empty`).
fn driver(tls: bool, seeded: bool) -> Driver {
    let mut d = Driver::new(config(), tls);
    if seeded {
        d.store.deliver(1, MSG1, 1_795_600_000);
        d.store.deliver(1, MSG2, 1_795_600_100);
    }
    d
}

/// Runs `input` fed in `chunk`-byte pieces; returns what the server sent. A line
/// `--` separates phases: the client waits for the replies before the next phase
/// (after STARTTLS, IDLE, or a synchronizing literal it has no continuation for).
fn run(input: &[u8], chunk: usize, tls: bool) -> String {
    let mut d = driver(tls, true);
    let text = String::from_utf8_lossy(input).into_owned();
    for phase in text.split("--\r\n") {
        for piece in phase.as_bytes().chunks(chunk.max(1)) {
            d.feed(piece);
        }
    }
    String::from_utf8_lossy(&d.sent).into_owned()
}

/// Checks a transcript whole and in fragments; returns the output.
fn transcript(input: &str, tls: bool) -> String {
    let input = input.replace('\n', "\r\n");
    let whole = run(input.as_bytes(), usize::MAX, tls);
    for chunk in [1, 2, 7, 100] {
        assert_eq!(
            run(input.as_bytes(), chunk, tls),
            whole,
            "split into {chunk}-byte pieces"
        );
    }
    whole
}

fn lines(output: &str) -> Vec<&str> {
    output.split("\r\n").filter(|l| !l.is_empty()).collect()
}

/// What SELECT INBOX answers for the two seeded messages (IMAP4rev1, read-write).
const INBOX_SELECTED: [&str; 9] = [
    "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
    "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted",
    "* 2 EXISTS",
    "* 2 RECENT",
    "* OK [UNSEEN 1] First unseen",
    "* OK [UIDVALIDITY 1000] UIDs valid",
    "* OK [MAILBOXID (F1-1000)] Ok",
    "* OK [UIDNEXT 3] Predicted next UID",
    "* OK [HIGHESTMODSEQ 2] Highest",
];

/// Checks the output; the greeting and the login reply (long CAPABILITY lines, checked
/// once by `login`) are left out unless `all`.
fn assert_after_login(input: &str, tls: bool, all: bool, expected: &[&str]) {
    let out = transcript(input, tls);
    let got: Vec<&str> = lines(&out)
        .into_iter()
        .filter(|l| all || !(l.starts_with("* OK [CAPABILITY") || l.contains(" OK [CAPABILITY")))
        .collect();
    assert_eq!(got, expected, "full output:\n{out}");
}

#[test]
fn login() {
    let input = "a1 CAPABILITY\na2 LOGIN bob pw\na3 STARTTLS\n--\na4 CAPABILITY\na5 LOGIN bob wrong\na6 LOGIN bob pw\na7 LOGOUT\n".to_string();
    assert_after_login(&input, false, true, &[
        "* OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL- CONDSTORE QRESYNC SPECIAL-USE LIST-STATUS BINARY CHILDREN OBJECTID WITHIN SEARCHRES ESORT SORT=DISPLAY PREVIEW UTF8=ACCEPT MULTIAPPEND CATENATE METADATA-SERVER SAVEDATE ID SASL-IR ENABLE COMPRESS=DEFLATE NAMESPACE CREATE-SPECIAL-USE LIST-EXTENDED STATUS=SIZE QUOTA METADATA IDLE NOTIFY UNAUTHENTICATE UNSELECT UIDPLUS ESEARCH SORT CONTEXT=SEARCH CONTEXT=SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES MOVE QUOTA=RES-STORAGE QUOTA=RES-MESSAGE APPENDLIMIT=4096 STARTTLS LOGINDISABLED] imap.example shardmail IMAP ready",
        "* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL- CONDSTORE QRESYNC SPECIAL-USE LIST-STATUS BINARY CHILDREN OBJECTID WITHIN SEARCHRES ESORT SORT=DISPLAY PREVIEW UTF8=ACCEPT MULTIAPPEND CATENATE METADATA-SERVER SAVEDATE ID SASL-IR ENABLE COMPRESS=DEFLATE NAMESPACE CREATE-SPECIAL-USE LIST-EXTENDED STATUS=SIZE QUOTA METADATA IDLE NOTIFY UNAUTHENTICATE UNSELECT UIDPLUS ESEARCH SORT CONTEXT=SEARCH CONTEXT=SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES MOVE QUOTA=RES-STORAGE QUOTA=RES-MESSAGE APPENDLIMIT=4096 STARTTLS LOGINDISABLED",
        "a1 OK CAPABILITY completed",
        "a2 NO [PRIVACYREQUIRED] Use STARTTLS or the IMAPS port first (tls.allow_plaintext_auth)",
        "a3 OK Begin TLS negotiation now",
        "* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL- CONDSTORE QRESYNC SPECIAL-USE LIST-STATUS BINARY CHILDREN OBJECTID WITHIN SEARCHRES ESORT SORT=DISPLAY PREVIEW UTF8=ACCEPT MULTIAPPEND CATENATE METADATA-SERVER SAVEDATE ID SASL-IR ENABLE COMPRESS=DEFLATE NAMESPACE CREATE-SPECIAL-USE LIST-EXTENDED STATUS=SIZE QUOTA METADATA IDLE NOTIFY UNAUTHENTICATE UNSELECT UIDPLUS ESEARCH SORT CONTEXT=SEARCH CONTEXT=SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES MOVE QUOTA=RES-STORAGE QUOTA=RES-MESSAGE APPENDLIMIT=4096 AUTH=SCRAM-SHA-256-PLUS AUTH=SCRAM-SHA-256 AUTH=PLAIN",
        "a4 OK CAPABILITY completed",
        "a5 NO [AUTHENTICATIONFAILED] Invalid credentials",
        "a6 OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ CONDSTORE QRESYNC SPECIAL-USE LIST-STATUS BINARY CHILDREN OBJECTID WITHIN SEARCHRES ESORT SORT=DISPLAY PREVIEW UTF8=ACCEPT MULTIAPPEND CATENATE METADATA-SERVER SAVEDATE ID SASL-IR ENABLE COMPRESS=DEFLATE NAMESPACE CREATE-SPECIAL-USE LIST-EXTENDED STATUS=SIZE QUOTA METADATA IDLE NOTIFY UNAUTHENTICATE UNSELECT UIDPLUS ESEARCH SORT CONTEXT=SEARCH CONTEXT=SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES MOVE QUOTA=RES-STORAGE QUOTA=RES-MESSAGE APPENDLIMIT=4096] Logged in",
        "* BYE shardmail logging out",
        "a7 OK LOGOUT completed",
    ]);
}

#[test]
fn select() {
    let input = "a LOGIN bob pw\nb SELECT INBOX\nc FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)\nd FETCH 2 (BODY[TEXT])\ne FETCH 2 FLAGS\nf STATUS INBOX (MESSAGES UNSEEN UIDNEXT HIGHESTMODSEQ SIZE)\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[],
            &INBOX_SELECTED[..],
            &[
            "b OK [READ-WRITE] SELECT completed",
            "* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE 146 INTERNALDATE \"25-Nov-2026 09:46:40 +0000\" ENVELOPE (\"Wed, 25 Nov 2026 10:00:00 +0000\" \"first\" ((\"Alice\" NIL \"alice\" \"a.example\")) ((\"Alice\" NIL \"alice\" \"a.example\")) ((\"Alice\" NIL \"alice\" \"a.example\")) ((NIL NIL \"bob\" \"b.example\")) NIL NIL NIL \"<1@a.example>\"))",
            "* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE 88 INTERNALDATE \"25-Nov-2026 09:48:20 +0000\" ENVELOPE (NIL \"second\" ((\"Carol\" NIL \"carol\" \"c.example\")) ((\"Carol\" NIL \"carol\" \"c.example\")) ((\"Carol\" NIL \"carol\" \"c.example\")) ((NIL NIL \"bob\" \"b.example\")) NIL NIL NIL NIL))",
            "c OK FETCH completed",
            "* 2 FETCH (BODY[TEXT] {19}",
            "Quarterly report.",
            " FLAGS (\\Seen \\Recent))",
            "d OK FETCH completed",
            "* 2 FETCH (FLAGS (\\Seen \\Recent))",
            "e OK FETCH completed",
            "* STATUS \"INBOX\" (MESSAGES 2 UNSEEN 1 UIDNEXT 3 HIGHESTMODSEQ 3 SIZE 234)",
            "f OK STATUS completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn store() {
    let input = "a LOGIN bob pw\nb ENABLE CONDSTORE\nc SELECT INBOX\nd STORE 1 +FLAGS (\\Flagged $Work)\ne UID STORE 2 FLAGS.SILENT (\\Deleted)\nf STORE 1:2 (UNCHANGEDSINCE 3) -FLAGS (\\Flagged)\ng EXPUNGE\nh FETCH 1 (FLAGS MODSEQ)\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[
            "* ENABLED CONDSTORE",
            "b OK ENABLE completed",
            ],
            &INBOX_SELECTED[..],
            &[
            "c OK [READ-WRITE] SELECT completed",
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] Flags permitted",
            "* 1 FETCH (FLAGS (\\Flagged \\Recent $Work) MODSEQ (3))",
            "d OK STORE completed",
            "e OK STORE completed",
            "* 1 FETCH (FLAGS (\\Recent $Work) MODSEQ (5))",
            "f OK [MODIFIED 2] Conditional STORE failed for some messages",
            "* 2 EXPUNGE",
            "g OK EXPUNGE completed",
            "* 1 FETCH (FLAGS (\\Recent $Work) MODSEQ (5))",
            "h OK FETCH completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn mailboxes() {
    let input = "a LOGIN bob pw\nb CREATE Work/2026\nc LIST \"\" *\nd RENAME Work Projects\ne LIST \"\" Projects/%\nf SUBSCRIBE Projects\ng LSUB \"\" *\nh LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES))\ni DELETE Projects/2026\nj DELETE Sent\nk CREATE INBOX\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            "b OK [MAILBOXID (F7-1795675507)] CREATE completed",
            "* LIST (\\HasNoChildren) \"/\" \"INBOX\"",
            // INBOX first, then byte order.
            "* LIST (\\HasNoChildren \\Drafts) \"/\" \"Drafts\"",
            "* LIST (\\HasNoChildren \\Junk) \"/\" \"Junk\"",
            "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"",
            "* LIST (\\HasNoChildren \\Trash) \"/\" \"Trash\"",
            "* LIST (\\HasChildren) \"/\" \"Work\"",
            "* LIST (\\HasNoChildren) \"/\" \"Work/2026\"",
            "c OK LIST completed",
            "d OK RENAME completed",
            "* LIST (\\HasNoChildren) \"/\" \"Projects/2026\"",
            "e OK LIST completed",
            "f OK SUBSCRIBE completed",
            "* LSUB () \"/\" \"Projects\"",
            "g OK LSUB completed",
            "* LIST (\\HasChildren \\Subscribed) \"/\" \"Projects\"",
            "* STATUS \"Projects\" (MESSAGES 0)",
            "h OK LIST completed",
            "i OK DELETE completed",
            "j NO [CANNOT] Sent is a default mailbox and cannot be deleted",
            "k NO [ALREADYEXISTS] Mailbox already exists",
        ],
    );
}

#[test]
fn copymove() {
    let input = "a LOGIN bob pw\nb SELECT INBOX\nc COPY 1 Trash\nd UID MOVE 2 Junk\ne COPY 1 Nowhere\nf STATUS Trash (MESSAGES)\ng STATUS Junk (MESSAGES)\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[],
            &INBOX_SELECTED[..],
            &[
                "b OK [READ-WRITE] SELECT completed",
                "c OK [COPYUID 1003 1 1] COPY completed",
                "* OK [COPYUID 1004 2 1] Moved",
                "* 2 EXPUNGE",
                "d OK MOVE completed",
                "e NO [TRYCREATE] No such mailbox",
                "* STATUS \"Trash\" (MESSAGES 1)",
                "f OK STATUS completed",
                "* STATUS \"Junk\" (MESSAGES 1)",
                "g OK STATUS completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn append() {
    let input = format!("a LOGIN bob pw\nb SELECT INBOX\nc APPEND INBOX (\\Seen $Junk) \"25-Nov-2026 10:00:00 +0100\" {{12}}\n--\nSubject: x\n\nd APPEND INBOX {{3+}}\nabc\ne APPEND INBOX {{99999}}\n--\nf APPEND INBOX {{5000+}}\n{}\ng NOOP\nh FETCH 3:4 (FLAGS INTERNALDATE BODY.PEEK[])\n", "x".repeat(5000));
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[],
            &INBOX_SELECTED[..],
            &[
            "b OK [READ-WRITE] SELECT completed",
            "+ Ready for literal data",
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk \\*)] Flags permitted",
            "* 3 EXISTS",
            "* 3 RECENT",
            "c OK [APPENDUID 1000 3] APPEND completed",
            "* 4 EXISTS",
            "* 4 RECENT",
            "d OK [APPENDUID 1000 4] APPEND completed",
            "e NO [TOOBIG] Literal larger than limits.message_size_max (4096 bytes)",
            "f NO [TOOBIG] Literal larger than limits.message_size_max (4096 bytes)",
            "g OK NOOP completed",
            "* 3 FETCH (FLAGS (\\Seen \\Recent $Junk) INTERNALDATE \"25-Nov-2026 09:00:00 +0000\" BODY[] {12}",
            "Subject: x",
            ")",
            "* 4 FETCH (FLAGS (\\Recent) INTERNALDATE \"26-Nov-2026 06:45:00 +0000\" BODY[] {3}",
            "abc)",
            "h OK FETCH completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn search() {
    let input = "a LOGIN bob pw\nb SELECT INBOX\nc SEARCH FROM alice\nd SEARCH OR SUBJECT second BODY hello\ne UID SEARCH RETURN (MIN COUNT) ALL\nf SEARCH CHARSET KOI8-R ALL\ng SEARCH SENTON 25-Nov-2026\nh SEARCH NOT 1\ni SEARCH BOGUS\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[],
            &INBOX_SELECTED[..],
            &[
                "b OK [READ-WRITE] SELECT completed",
                "* SEARCH 1",
                "c OK SEARCH completed",
                "* SEARCH 1 2",
                "d OK SEARCH completed",
                "* ESEARCH (TAG \"e\") UID MIN 1 COUNT 2",
                "e OK SEARCH completed",
                "f NO [BADCHARSET (UTF-8 US-ASCII)] KOI8-R is not supported",
                "* SEARCH 1 2",
                "g OK SEARCH completed",
                "* SEARCH 2",
                "h OK SEARCH completed",
                "i BAD unknown search key: BOGUS",
            ],
        ]
        .concat(),
    );
}

#[test]
fn bad() {
    let input =
        "a NOOP\nb FETCH 1 FLAGS\nc\n* LOGIN\nd LOGIN\ne SELECT\nf FOO\ng BAR\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            "a OK NOOP completed",
            "b BAD Log in first",
            "* BAD Syntax error: a tag and a command are needed",
            "* BAD Invalid tag",
            "d BAD LOGIN needs a user name and a password",
            "e BAD Log in first",
            "f BAD Unknown command FOO",
            "* BYE Too many invalid commands",
        ],
    );
}

#[test]
fn idle() {
    let input = "a LOGIN bob pw\nb SELECT INBOX\nc IDLE\n--\nDONE\nd NOOP\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &[],
            &INBOX_SELECTED[..],
            &[
                "b OK [READ-WRITE] SELECT completed",
                "+ idling",
                "c OK IDLE terminated",
                "d OK NOOP completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn sections() {
    let input = "a LOGIN bob pw\nb EXAMINE INBOX\nc FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject From)] BODY.PEEK[]<0.10> BODYSTRUCTURE BINARY.SIZE[1])\nd FETCH 1 FLAGS\n".to_string();
    assert_after_login(&input, true, false, &[
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* OK [PERMANENTFLAGS ()] Read-only mailbox",
        "* 2 EXISTS",
        "* 2 RECENT",
        "* OK [UNSEEN 1] First unseen",
        "* OK [UIDVALIDITY 1000] UIDs valid",
        "* OK [MAILBOXID (F1-1000)] Ok",
        "* OK [UIDNEXT 3] Predicted next UID",
        "* OK [HIGHESTMODSEQ 2] Highest",
        "b OK [READ-ONLY] EXAMINE completed",
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {49}",
        "From: Alice <alice@a.example>",
        "Subject: first",
        " BODY[]<0> {10}",
        "From: Alic BODYSTRUCTURE (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 12 1 NIL NIL NIL NIL) BINARY.SIZE[1] 12)",
        "c OK FETCH completed",
        "* 1 FETCH (FLAGS (\\Recent))",
        "d OK FETCH completed",
    ]);
}

#[test]
fn qresync() {
    let input = "a LOGIN bob pw\nb ENABLE QRESYNC\nc SELECT INBOX (QRESYNC (1000 1))\nd UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &[
            &["* ENABLED QRESYNC", "b OK ENABLE completed"],
            &INBOX_SELECTED[..],
            &[
                "* 2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (2))",
                "c OK [READ-WRITE] SELECT completed",
                "* 2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (2))",
                "d OK FETCH completed",
            ],
        ]
        .concat(),
    );
}

#[test]
fn authenticate() {
    let input = "a AUTHENTICATE PLAIN AGJvYgBwdw==\nb LOGOUT\n".to_string();
    assert_after_login(
        &input,
        true,
        false,
        &["* BYE shardmail logging out", "b OK LOGOUT completed"],
    );
}

/// Output since the last call.
fn take(d: &mut Driver) -> String {
    String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned()
}

#[test]
fn idle_reports_a_delivery_and_an_expunge_at_once() {
    let mut d = driver(true, true);
    d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\nc IDLE\r\n");
    assert!(take(&mut d).ends_with("+ idling\r\n"));
    d.store.deliver(1, MSG2, 1_795_700_000);
    d.notify();
    assert_eq!(take(&mut d), "* 3 EXISTS\r\n* 3 RECENT\r\n");
    // Another session expunges UID 1: inside IDLE the expunge is reported at once.
    d.store.apply(
        shardmail::store::change::Change::Expunge {
            mailbox: 1,
            uids: vec![1],
        }
        .into(),
    );
    d.notify();
    assert_eq!(take(&mut d), "* 1 EXPUNGE\r\n");
    d.feed(b"DONE\r\n");
    assert_eq!(take(&mut d), "c OK IDLE terminated\r\n");
    // Outside IDLE nothing is pushed.
    d.store.deliver(1, MSG1, 1_795_700_100);
    d.notify();
    assert_eq!(take(&mut d), "");
    d.feed(b"d NOOP\r\n");
    assert_eq!(
        take(&mut d),
        "* 3 EXISTS\r\n* 3 RECENT\r\nd OK NOOP completed\r\n"
    );
}

#[test]
fn expunge_by_another_session_waits_for_a_command_that_allows_it() {
    let mut d = driver(true, true);
    d.feed(b"a LOGIN bob pw\r\nb ENABLE CONDSTORE\r\nc SELECT INBOX\r\n");
    take(&mut d);
    d.store.apply(
        shardmail::store::change::Change::Expunge {
            mailbox: 1,
            uids: vec![1],
        }
        .into(),
    );
    d.store.apply(
        shardmail::store::change::Change::Store {
            mailbox: 1,
            changes: vec![(2, 1, vec!["$Seen-elsewhere".into()])],
        }
        .into(),
    );
    // FETCH must not report the expunge (RFC 9051 §7.5.1); the flag change may go.
    d.feed(b"d FETCH 2 (UID)\r\n");
    assert_eq!(
        take(&mut d),
        "* 2 FETCH (UID 2)\r\n\
         * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Seen-elsewhere)\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Seen-elsewhere \\*)] Flags permitted\r\n\
         * 2 FETCH (FLAGS (\\Seen \\Recent $Seen-elsewhere) MODSEQ (4))\r\nd OK FETCH completed\r\n"
    );
    d.feed(b"e NOOP\r\n");
    assert_eq!(take(&mut d), "* 1 EXPUNGE\r\ne OK NOOP completed\r\n");
    // QRESYNC clients get VANISHED instead.
    let mut q = driver(true, true);
    q.feed(b"a LOGIN bob pw\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\n");
    take(&mut q);
    q.store.apply(
        shardmail::store::change::Change::Expunge {
            mailbox: 1,
            uids: vec![2],
        }
        .into(),
    );
    q.feed(b"d NOOP\r\n");
    assert_eq!(take(&mut q), "* VANISHED 2\r\nd OK NOOP completed\r\n");
}

#[test]
fn commands_pipelined_behind_a_write_wait_for_it() {
    let mut d = driver(true, true);
    d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\nc STORE 1 +FLAGS (\\Seen)\r\nd SEARCH SEEN\r\ne LOGOUT\r\n");
    let out = take(&mut d);
    let store = out.find("c OK STORE").unwrap_or(usize::MAX);
    let search = out.find("* SEARCH 1\r\nd OK").unwrap_or(0);
    assert!(store < search, "{out}");
    assert!(d.closed);
}

#[test]
fn a_vanished_client_mid_append_stores_nothing() {
    let mut d = driver(true, true);
    d.feed(b"a LOGIN bob pw\r\nb APPEND INBOX {100}\r\n");
    assert!(take(&mut d).ends_with("+ Ready for literal data\r\n"));
    d.feed(&[b'x'; 60]);
    // The connection drops here: nothing was handed to the store.
    let inbox = d.store.index.accounts[&d.store.account]
        .mailboxes
        .iter()
        .find(|m| m.id == 1)
        .map(|m| m.messages.len());
    assert_eq!(inbox, Some(2));
}

#[test]
fn failed_logins_disconnect() {
    let mut d = driver(true, false);
    d.feed(b"a LOGIN bob no\r\nb LOGIN bob no\r\nc LOGIN bob pw\r\n");
    let out = take(&mut d);
    assert!(out.contains("a NO [AUTHENTICATIONFAILED]"), "{out}");
    assert!(out.ends_with("* BYE Too many failed logins\r\n"), "{out}");
    assert!(d.closed);
}

#[test]
fn over_long_lines_get_bad_and_the_session_goes_on() {
    let mut d = driver(true, false);
    let mut long = b"a NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 3000));
    long.extend_from_slice(b"\r\nb NOOP\r\n");
    d.feed(&long);
    let out = take(&mut d);
    assert!(
        out.contains("a BAD Command line longer than 1024 bytes"),
        "{out}"
    );
    assert!(out.ends_with("b OK NOOP completed\r\n"), "{out}");
}

fn command_strategy() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a LOGIN bob pw",
        "b SELECT INBOX",
        "c EXAMINE Trash",
        "d FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE ENVELOPE)",
        "e STORE 1 +FLAGS (\\Deleted $X)",
        "f EXPUNGE",
        "g SEARCH OR FROM alice NOT SEEN",
        "h APPEND INBOX {5+}\r\nhello",
        "i COPY 1:* Trash",
        "j UID MOVE 1 Junk",
        "k CREATE a/b",
        "l RENAME a z",
        "m LIST \"\" *",
        "n STATUS INBOX (MESSAGES UIDNEXT)",
        "o IDLE\r\nDONE",
        "p CLOSE",
        "q ENABLE QRESYNC",
        "r UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
        "s BOGUS",
        "t FETCH 99 FLAGS",
        "u NOOP",
    ])
    .prop_map(|s| s.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any bytes, split anywhere: no panic, and the replies do not depend on the split.
    #[test]
    fn arbitrary_input_never_panics(input in prop::collection::vec(any::<u8>(), 0..600), cut in 1usize..50) {
        let mut whole = driver(true, true);
        whole.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
        whole.feed(&input);
        let mut split = driver(true, true);
        split.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
        for piece in input.chunks(cut) {
            split.feed(piece);
        }
        // A synchronizing literal's continuation appears only when the input stops
        // right after its header, so compare without those lines.
        // Plaintext pipelined behind STARTTLS is dropped: compare up to it.
        let strip = |d: &Driver| {
            let text = String::from_utf8_lossy(&d.sent).replace("+ Ready for literal data\r\n", "");
            let cut = text.find("OK Begin TLS negotiation now").unwrap_or(text.len());
            text[..cut].to_string()
        };
        prop_assert_eq!(strip(&whole), strip(&split));
    }

    /// Valid command sequences, split anywhere, give the same replies.
    #[test]
    fn command_sequences_are_split_invariant(commands in prop::collection::vec(command_strategy(), 1..12), cut in 1usize..40) {
        let input: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
        prop_assert_eq!(run(input.as_bytes(), cut, true), run(input.as_bytes(), usize::MAX, true));
    }
}

#[test]
fn large_literals_are_spliced_from_the_store_byte_exact() {
    let mut d = driver(true, false);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("line {i:05} of a large message\r\n").as_bytes());
    }
    d.store.deliver(1, &big, 1_795_600_000);
    d.feed(b"a LOGIN bob pw\r\nb EXAMINE INBOX\r\n");
    take(&mut d);
    d.feed(b"c FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT]<100.20000> RFC822.SIZE)\r\n");
    let text_part = &big[16 + 100..16 + 100 + 20000];
    let mut expected = format!("* 1 FETCH (BODY[] {{{}}}\r\n", big.len()).into_bytes();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b" BODY[TEXT]<100> {20000}\r\n");
    expected.extend_from_slice(text_part);
    expected.extend_from_slice(
        format!(" RFC822.SIZE {})\r\nc OK FETCH completed\r\n", big.len()).as_bytes(),
    );
    assert!(d.sent == expected, "spliced output differs");
    assert_eq!(d.splices, 2, "both literals come from the log");
}

#[test]
fn fetching_a_large_mailbox_does_not_copy_it_into_the_reply() {
    let mut d = driver(true, false);
    let message = |i: usize| {
        let mut m = format!("Subject: m{i}\r\n\r\n").into_bytes();
        m.resize(8 * 1024, b'x');
        m
    };
    for i in 0..400 {
        d.store.deliver(1, &message(i), 1_795_600_000);
    }
    d.feed(b"a LOGIN bob pw\r\nb EXAMINE INBOX\r\n");
    take(&mut d);
    d.feed(b"c FETCH 1:* BODY.PEEK[]\r\n");
    // 400 × 8 KiB = 3.2 MB of bodies, answered in steps of at most
    // limits.output_buffer_bytes_max (the default 256 KiB) plus one message.
    assert!(
        d.largest_step_reply < 256 * 1024 + 9 * 1024,
        "one step queued {} bytes",
        d.largest_step_reply
    );
    let out = take(&mut d);
    assert!(out.ends_with("c OK FETCH completed\r\n"));
    assert_eq!(out.matches("FETCH (BODY[] {8192}").count(), 400);
}

#[test]
fn imap4rev2_select_lists_the_mailbox_and_searches_with_esearch() {
    let mut d = driver(true, true);
    d.feed(b"a LOGIN bob pw\r\nb ENABLE IMAP4rev2\r\n");
    take(&mut d);
    d.feed(b"c SELECT inbox\r\nd SEARCH ALL\r\n");
    let out = take(&mut d);
    assert!(out.contains("* LIST () \"/\" \"INBOX\"\r\n"), "{out}");
    assert!(!out.contains("RECENT"), "{out}");
    assert!(out.contains("* ESEARCH (TAG \"d\") ALL 1:2\r\n"), "{out}");
}

#[test]
fn star_ranges_on_an_empty_mailbox_select_nothing() {
    let mut d = driver(true, false);
    d.feed(b"a LOGIN bob pw\r\nb SELECT Trash\r\n");
    take(&mut d);
    d.feed(b"c FETCH 1:* (FLAGS)\r\nd STORE 1:* +FLAGS (\\Seen)\r\ne FETCH 1 FLAGS\r\nf UID FETCH 1:* FLAGS\r\n");
    assert_eq!(
        take(&mut d),
        "c OK FETCH completed\r\nd OK STORE completed\r\n\
         e BAD Invalid sequence number (beyond the mailbox)\r\nf OK FETCH completed\r\n"
    );
}
