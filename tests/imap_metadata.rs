//! METADATA and METADATA-SERVER (RFC 5464) as transcripts over the in-memory store
//! (which replays what it logs, as recovery does): server and mailbox entries, NIL to
//! remove, DEPTH and MAXSIZE, binary values, names checked, the per-account limit,
//! rename and delete. End to end with imaplib: tests/e2e/test_imap_rfc.py.

use shardmail::proto::imap::memstore::Driver;

fn connection(metadata_bytes_max: usize) -> Driver {
    Driver::logged_in(|c| c.metadata_bytes_max = metadata_bytes_max)
}

#[test]
fn server_and_mailbox_entries_are_set_read_and_removed() {
    let mut d = connection(256 * 1024);
    let out = d.say(
        "b SETMETADATA \"\" (/shared/Comment \"Server note\")\r\n\
         c SETMETADATA INBOX (/private/comment \"mine\" /shared/comment {5}\r\nhello /private/vendor/x/y \"deep\")\r\n\
         d GETMETADATA \"\" /shared/comment\r\n\
         e GETMETADATA INBOX (/private/comment /shared/comment /private/missing)\r\n",
    );
    assert!(out.contains("b OK SETMETADATA completed"), "{out}");
    assert!(out.contains("c OK SETMETADATA completed"), "{out}");
    // Names compare without case.
    assert!(
        out.contains("* METADATA \"\" (/shared/comment \"Server note\")"),
        "{out}"
    );
    assert!(
        out.contains("* METADATA \"INBOX\" (/private/comment \"mine\" /shared/comment \"hello\" /private/missing NIL)"),
        "{out}"
    );
    // DEPTH: 1 is the children, infinity every descendant.
    let out = d.say(
        "f GETMETADATA (DEPTH 1) INBOX /private\r\n\
         g GETMETADATA (DEPTH infinity) INBOX /private\r\n",
    );
    assert!(
        out.contains("* METADATA \"INBOX\" (/private/comment \"mine\")\r\nf OK"),
        "{out}"
    );
    assert!(out.contains("/private/vendor/x/y \"deep\""), "{out}");
    // MAXSIZE leaves out longer values and says how long the longest was.
    let out = d.say("h GETMETADATA (MAXSIZE 4) INBOX (/private/comment /shared/comment)\r\n");
    assert!(out.contains("(/private/comment \"mine\")"), "{out}");
    assert!(out.contains("h OK [METADATA LONGENTRIES 5]"), "{out}");
    // NIL removes; a value with NUL comes back as literal8.
    let out = d.say(
        "i SETMETADATA INBOX (/private/comment NIL /shared/bin ~{3}\r\na\0b)\r\n\
         j GETMETADATA INBOX (/private/comment /shared/bin)\r\n",
    );
    assert!(out.contains("i OK"), "{out}");
    assert!(
        out.contains("(/private/comment NIL /shared/bin ~{3}\r\na\0b)"),
        "{out}"
    );
}

#[test]
fn names_are_checked_and_the_account_limit_holds() {
    let mut d = connection(1024);
    for bad in [
        "/comment",
        "/private",
        "/private/",
        "/private//x",
        "/private/a*",
        "/shared/%",
        "/privatex/y",
    ] {
        let out = d.say(&format!("b SETMETADATA INBOX ({bad} \"v\")\r\n"));
        assert!(
            out.starts_with("b BAD Invalid METADATA entry name"),
            "{bad}: {out}"
        );
    }
    let out = d.say("c SETMETADATA Nowhere (/private/comment \"v\")\r\n");
    assert!(out.starts_with("c NO [NONEXISTENT]"), "{out}");
    let big = "x".repeat(1100);
    let out = d.say(&format!("d SETMETADATA INBOX (/private/big \"{big}\")\r\n"));
    assert!(out.starts_with("d NO [METADATA MAXSIZE 1024]"), "{out}");
    let half = "y".repeat(600);
    let out = d.say(&format!(
        "e SETMETADATA INBOX (/private/one \"{half}\")\r\n\
         f SETMETADATA \"\" (/private/two \"{half}\")\r\n\
         g SETMETADATA INBOX (/private/one \"{half}\")\r\n\
         h SETMETADATA INBOX (/private/one NIL)\r\n\
         i SETMETADATA \"\" (/private/two \"{half}\")\r\n"
    ));
    assert!(out.contains("e OK"), "{out}");
    // Over the account's total, wherever the entry goes: nothing of it is stored.
    assert!(out.contains("f NO [METADATA TOOMANY]"), "{out}");
    // Replacing an entry counts the new value, not both.
    assert!(out.contains("g OK"), "{out}");
    assert!(out.contains("h OK"), "{out}");
    assert!(out.contains("i OK"), "{out}");
}

#[test]
fn a_renamed_mailbox_keeps_its_entries_and_a_deleted_one_loses_them() {
    let mut d = connection(256 * 1024);
    let out = d.say(
        "b CREATE Work\r\n\
         c SETMETADATA Work (/private/comment \"projects\")\r\n\
         d RENAME Work Projects\r\n\
         e GETMETADATA Projects /private/comment\r\n\
         f DELETE Projects\r\n\
         g CREATE Projects\r\n\
         h GETMETADATA Projects /private/comment\r\n",
    );
    assert!(
        out.contains("* METADATA \"Projects\" (/private/comment \"projects\")\r\ne OK"),
        "{out}"
    );
    assert!(
        out.contains("* METADATA \"Projects\" (/private/comment NIL)\r\nh OK"),
        "{out}"
    );
}
