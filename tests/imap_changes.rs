//! What a session learns of changes made elsewhere, from the store's change history
//! (expunge tombstones, the flag-change log, UID order): QRESYNC's `VANISHED
//! (EARLIER)` names only what was expunged after the client's MODSEQ (RFC 7162
//! §3.2.5.1), and a session that looked before the flag-change log's horizon still
//! hears of every change, once.

use std::sync::Arc;

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;
use shardmail::store::change::Change;
use shardmail::store::index::FLAG_CHANGES_KEPT;

fn driver(messages: usize) -> Driver {
    let mut d = Driver::new(
        Arc::new(ImapConfig {
            hostname: "imap.example".into(),
            tls_available: true,
            ..ImapConfig::default()
        }),
        true,
    );
    for i in 0..messages {
        let m = format!("From: a@example.org\r\nSubject: {i}\r\n\r\nbody {i}\r\n");
        d.store.deliver(1, m.as_bytes(), 1_795_600_000 + i as i64);
    }
    d
}

fn take(d: &mut Driver) -> String {
    String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned()
}

/// The number after `key` in the first line that has it (`UIDVALIDITY`, `HIGHESTMODSEQ`).
fn code(text: &str, key: &str) -> u64 {
    let at = text.find(key).expect(key) + key.len() + 1;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn expunge(d: &mut Driver, uids: Vec<u32>) {
    d.store.apply(Change::Expunge { mailbox: 1, uids }.into());
}

#[test]
fn vanished_earlier_names_only_what_went_after_the_clients_modseq() {
    let mut d = driver(6);
    d.feed(b"a LOGIN bob pw\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\n");
    let selected = take(&mut d);
    let (validity, before) = (
        code(&selected, "UIDVALIDITY"),
        code(&selected, "HIGHESTMODSEQ"),
    );
    d.feed(b"d UNSELECT\r\n");
    expunge(&mut d, vec![2]);
    d.feed(b"e SELECT INBOX\r\n");
    let middle = code(&take(&mut d), "HIGHESTMODSEQ");
    d.feed(b"f UNSELECT\r\n");
    expunge(&mut d, vec![4, 5]);
    take(&mut d);

    // Knowing the mailbox as of `middle`: only 4 and 5 went since.
    d.feed(format!("g SELECT INBOX (QRESYNC ({validity} {middle}))\r\n").as_bytes());
    let reply = take(&mut d);
    assert!(reply.contains("* VANISHED (EARLIER) 4:5\r\n"), "{reply}");
    // As of `before`: 2 as well; limited to the client's known UIDs: only those.
    d.feed(format!("h SELECT INBOX (QRESYNC ({validity} {before}))\r\n").as_bytes());
    let reply = take(&mut d);
    assert!(reply.contains("* VANISHED (EARLIER) 2,4:5\r\n"), "{reply}");
    d.feed(format!("i SELECT INBOX (QRESYNC ({validity} {before} 1:3))\r\n").as_bytes());
    let reply = take(&mut d);
    assert!(reply.contains("* VANISHED (EARLIER) 2\r\n"), "{reply}");
    // UID FETCH … (CHANGEDSINCE m VANISHED) answers from the same history.
    d.feed(format!("j UID FETCH 1:* (FLAGS) (CHANGEDSINCE {middle} VANISHED)\r\n").as_bytes());
    let reply = take(&mut d);
    assert!(reply.starts_with("* VANISHED (EARLIER) 4:5\r\n"), "{reply}");
    assert!(reply.ends_with("j OK FETCH completed\r\n"), "{reply}");
}

#[test]
fn a_qresync_select_reports_flag_changes_and_new_messages_since_the_clients_modseq() {
    let mut d = driver(600);
    d.feed(b"a LOGIN bob pw\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\n");
    let selected = take(&mut d);
    let (validity, seen) = (
        code(&selected, "UIDVALIDITY"),
        code(&selected, "HIGHESTMODSEQ"),
    );
    d.feed(b"d UNSELECT\r\n");
    d.store.apply(
        Change::Store {
            mailbox: 1,
            changes: vec![(7, 1, Vec::new())],
        }
        .into(),
    );
    for i in 0..2 {
        d.store
            .deliver(1, format!("Subject: new {i}\r\n\r\nx\r\n").as_bytes(), 1);
    }
    take(&mut d);
    d.feed(format!("e SELECT INBOX (QRESYNC ({validity} {seen}))\r\n").as_bytes());
    let reply = take(&mut d);
    let fetches: Vec<&str> = reply.lines().filter(|l| l.contains(" FETCH (")).collect();
    assert_eq!(fetches.len(), 3, "{reply}");
    assert!(
        fetches[0].starts_with("* 7 FETCH (UID 7 FLAGS (\\Seen)"),
        "{reply}"
    );
    assert!(fetches[1].starts_with("* 601 FETCH (UID 601 "), "{reply}");
    assert!(fetches[2].starts_with("* 602 FETCH (UID 602 "), "{reply}");
}

#[test]
fn a_session_older_than_the_flag_change_log_still_hears_every_change_once() {
    let mut d = driver(3);
    d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    take(&mut d);
    // Message 3 changes first, then 1 and 2 change so often that the log forgets
    // the change of 3: the session must fall back to reading the mailbox.
    d.store.apply(
        Change::Store {
            mailbox: 1,
            changes: vec![(3, 4, Vec::new())],
        }
        .into(),
    );
    for i in 0..FLAG_CHANGES_KEPT + 10 {
        let uid = 1 + (i % 2) as u32;
        let flags = if i % 4 < 2 { 1 } else { 2 };
        d.store.apply(
            Change::Store {
                mailbox: 1,
                changes: vec![(uid, flags, Vec::new())],
            }
            .into(),
        );
    }
    d.feed(b"c NOOP\r\n");
    let reply = take(&mut d);
    let fetches: Vec<&str> = reply.lines().filter(|l| l.contains(" FETCH (")).collect();
    assert_eq!(fetches.len(), 3, "each changed message once: {reply}");
    // The session was first to select the mailbox: its messages are \Recent here.
    for (seq, flags) in [
        (1, "\\Seen \\Recent"),
        (2, "\\Seen \\Recent"),
        (3, "\\Flagged \\Recent"),
    ] {
        assert!(
            fetches.contains(&format!("* {seq} FETCH (FLAGS ({flags}))").as_str()),
            "{seq}: {reply}"
        );
    }
    // A session that looked recently reads the log: one change, one line.
    d.store.apply(
        Change::Store {
            mailbox: 1,
            changes: vec![(2, 0, Vec::new())],
        }
        .into(),
    );
    d.feed(b"d NOOP\r\n");
    assert_eq!(
        take(&mut d),
        "* 2 FETCH (FLAGS (\\Recent))\r\nd OK NOOP completed\r\n"
    );
}

/// A SEARCH bounded by a UID or sequence set reads only that part of the mailbox:
/// one step, however large the mailbox (without the bounds, 10,000 messages take
/// three steps of 4,096). EXPUNGE with nothing marked `\Deleted` reads nothing.
#[test]
fn bounded_searches_read_only_their_range() {
    let mut d = driver(10_000);
    d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    take(&mut d);
    let before = d.steps;
    d.feed(b"n NOOP\r\n");
    let one_step = d.steps - before;
    take(&mut d);
    let before = d.steps;
    d.feed(b"c UID SEARCH UID 9995:* NOT DELETED\r\n");
    assert_eq!(
        take(&mut d),
        "* SEARCH 9995 9996 9997 9998 9999 10000\r\nc OK SEARCH completed\r\n"
    );
    assert_eq!(d.steps - before, one_step, "answered in one step");
    let before = d.steps;
    d.feed(b"d SEARCH 2,9998:* SUBJECT 9\r\n");
    assert_eq!(
        take(&mut d),
        "* SEARCH 9998 9999 10000\r\nd OK SEARCH completed\r\n"
    );
    assert!(
        d.steps - before > one_step,
        "a hull of 2..10000 is still walked in steps"
    );
    d.feed(b"e EXPUNGE\r\n");
    assert_eq!(take(&mut d), "e OK EXPUNGE completed\r\n");
}
