//! `\Recent` (issue 13, item 1; RFC 3501 §2.3.2, §6.3.1–2, §6.4.4): a message is
//! recent in exactly one session, the first read-write session to learn of it;
//! EXAMINE shows recent messages without taking them; IMAP4rev2 sessions never see
//! the flag. Two sessions share one store by handing it between two drivers, as two
//! connections share a shard's partition. Also UNAUTHENTICATE (RFC 8437).

use shardmail::proto::imap::memstore::{Driver, MemStore};

fn connection() -> Driver {
    let mut d = Driver::standard();
    d.say("a LOGIN bob pw\r\n");
    d
}

/// Moves the shared store from `from` to `to` (the other connection's turn).
fn hand(from: &mut Driver, to: &mut Driver) {
    to.store = std::mem::replace(&mut from.store, MemStore::new());
    to.notify();
}

fn say(d: &mut Driver, input: &str) -> String {
    d.say(input)
}

const MSG: &[u8] = b"Subject: hello\r\n\r\nbody\r\n";

#[test]
fn exactly_one_session_sees_a_message_as_recent() {
    let (mut first, mut second) = (connection(), connection());
    first.store.deliver(1, MSG, 1_795_600_000);
    first.store.deliver(1, MSG, 1_795_600_001);
    let out = say(&mut first, "b SELECT INBOX\r\nc FETCH 1:* FLAGS\r\n");
    assert!(out.contains("* 2 RECENT\r\n"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS (\\Recent))\r\n"), "{out}");
    assert!(out.contains("* 2 FETCH (FLAGS (\\Recent))\r\n"), "{out}");

    // The second session comes later: nothing is recent for it.
    hand(&mut first, &mut second);
    let out = say(
        &mut second,
        "b SELECT INBOX\r\nc FETCH 1 FLAGS\r\nd SEARCH RECENT\r\ne SEARCH OLD\r\nf STATUS INBOX (RECENT)\r\n",
    );
    assert!(out.contains("* 0 RECENT\r\n"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS ())\r\n"), "{out}");
    assert!(out.contains("* SEARCH\r\nd OK"), "{out}");
    assert!(out.contains("* SEARCH 1 2\r\ne OK"), "{out}");
    assert!(out.contains("* STATUS \"INBOX\" (RECENT 0)"), "{out}");

    // A delivery while the second session is selected is recent for it alone.
    second.store.deliver(1, MSG, 1_795_600_002);
    let out = say(&mut second, "g NOOP\r\nh SEARCH RECENT\r\n");
    assert_eq!(
        out,
        "* 3 EXISTS\r\n* 1 RECENT\r\ng OK NOOP completed\r\n* SEARCH 3\r\nh OK SEARCH completed\r\n"
    );
    hand(&mut second, &mut first);
    let out = say(
        &mut first,
        "d NOOP\r\ne SEARCH RECENT\r\nf STORE 1 +FLAGS.SILENT (\\Seen)\r\ng SEARCH NEW\r\nh FETCH 3 FLAGS\r\n",
    );
    assert!(out.starts_with("* 3 EXISTS\r\n* 2 RECENT\r\nd OK"), "{out}");
    assert!(out.contains("* SEARCH 1 2\r\ne OK"), "{out}");
    // NEW is RECENT UNSEEN.
    assert!(out.contains("* SEARCH 2\r\ng OK"), "{out}");
    assert!(out.contains("* 3 FETCH (FLAGS ())\r\n"), "{out}");
    // \Recent is the server's to set.
    let out = say(&mut first, "i STORE 1 +FLAGS (\\Recent)\r\n");
    assert!(out.starts_with("i BAD"), "{out}");
}

#[test]
fn examine_shows_recent_messages_without_taking_them() {
    let (mut looker, mut reader) = (connection(), connection());
    looker.store.deliver(1, MSG, 1_795_600_000);
    let out = say(&mut looker, "b EXAMINE INBOX\r\nc FETCH 1 FLAGS\r\n");
    assert!(out.contains("* 1 RECENT\r\n"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS (\\Recent))"), "{out}");
    let out = say(&mut looker, "d STATUS INBOX (RECENT)\r\n");
    assert!(out.contains("(RECENT 1)"), "{out}");
    hand(&mut looker, &mut reader);
    let out = say(&mut reader, "b SELECT INBOX\r\n");
    assert!(out.contains("* 1 RECENT\r\n"), "{out}");
    let out = say(&mut reader, "c STATUS INBOX (RECENT)\r\n");
    assert!(out.contains("(RECENT 0)"), "{out}");
}

#[test]
fn imap4rev2_sessions_neither_see_nor_take_recent() {
    let (mut modern, mut classic) = (connection(), connection());
    modern.store.deliver(1, MSG, 1_795_600_000);
    let out = say(
        &mut modern,
        "b ENABLE IMAP4rev2\r\nc SELECT INBOX\r\nd FETCH 1 FLAGS\r\n",
    );
    assert!(!out.contains("RECENT"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS ())"), "{out}");
    hand(&mut modern, &mut classic);
    let out = say(&mut classic, "b SELECT INBOX\r\n");
    assert!(out.contains("* 1 RECENT\r\n"), "{out}");
}

#[test]
fn unauthenticate_returns_to_the_greeting_state_on_the_same_connection() {
    let mut d = connection();
    d.store.deliver(1, MSG, 1_795_600_000);
    let out = say(
        &mut d,
        "b ENABLE CONDSTORE\r\nc SELECT INBOX\r\nd UNAUTHENTICATE\r\ne SELECT INBOX\r\nf CAPABILITY\r\n",
    );
    assert!(out.contains("d OK UNAUTHENTICATE completed\r\n"), "{out}");
    assert!(out.contains("e BAD Log in first\r\n"), "{out}");
    assert!(out.contains(" AUTH=PLAIN"), "{out}");
    // A new login starts afresh: CONDSTORE is off again (no MODSEQ in FETCH).
    let out = say(
        &mut d,
        "g LOGIN bob pw\r\nh SELECT INBOX\r\ni FETCH 1 FLAGS\r\n",
    );
    assert!(out.contains("g OK"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS ())\r\n"), "{out}");
    let out = say(&mut d, "j UNAUTHENTICATE\r\nk UNAUTHENTICATE\r\n");
    assert!(out.contains("j OK"), "{out}");
    assert!(out.contains("k BAD Log in first"), "{out}");
}
