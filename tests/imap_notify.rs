//! NOTIFY (RFC 5465) as transcripts: one session watches while another changes the
//! account (the store is handed between two drivers, as two connections share a
//! shard's partition; `notify()` is the IO layer's wake-up on a change). End to end
//! with imaplib: tests/e2e/test_imap_rfc.py.

use shardmail::proto::imap::memstore::{Driver, MemStore};

fn connection() -> Driver {
    let mut d = Driver::standard();
    d.say("a LOGIN bob pw\r\n");
    d
}

/// The other connection's turn with the shared store; it is woken as the IO layer
/// would wake it, and what it sends unasked is returned.
fn hand(from: &mut Driver, to: &mut Driver) -> String {
    to.store = std::mem::replace(&mut from.store, MemStore::new());
    to.sent.clear();
    to.notify();
    String::from_utf8_lossy(&std::mem::take(&mut to.sent)).into_owned()
}

const MSG: &[u8] = b"Subject: hello\r\n\r\nbody\r\n";

#[test]
fn other_mailboxes_report_status_and_names_and_the_selected_one_fetches() {
    let (mut watcher, mut other) = (connection(), connection());
    watcher.say("b CREATE Work\r\nc CREATE Old\r\n");
    let out = watcher.say(
        "d SELECT INBOX\r\n\
         e NOTIFY SET STATUS (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) \
         (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))\r\n",
    );
    // STATUS: every watched mailbox now, the selected one excepted.
    assert!(
        out.contains("* STATUS \"Work\" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY "),
        "{out}"
    );
    assert!(!out.contains("* STATUS \"INBOX\""), "{out}");
    assert!(out.contains("e OK NOTIFY completed"), "{out}");

    // Another session appends to Work and INBOX gets a delivery: pushed without a
    // command — a STATUS for Work, EXISTS and the asked-for FETCH for INBOX.
    hand(&mut watcher, &mut other);
    other.say("x SELECT Work\r\n");
    other.say(&format!("y APPEND Work {{{}}}\r\n", MSG.len()));
    other.feed(MSG);
    other.say("\r\n");
    other.store.deliver(1, MSG, 1_795_600_000);
    let pushed = hand(&mut other, &mut watcher);
    assert!(
        pushed.contains("* STATUS \"Work\" (MESSAGES 1 UIDNEXT 2 "),
        "{pushed}"
    );
    assert!(pushed.contains("* 1 EXISTS\r\n"), "{pushed}");
    assert!(pushed.contains("* 1 FETCH (UID 1 FLAGS ("), "{pushed}");
    // Nothing repeats when nothing changed.
    watcher.sent.clear();
    watcher.notify();
    assert!(
        watcher.sent.is_empty(),
        "{}",
        String::from_utf8_lossy(&watcher.sent)
    );

    // Flags in another mailbox; a rename, a delete, a subscription.
    hand(&mut watcher, &mut other);
    other.say("z STORE 1 +FLAGS (\\Seen)\r\n");
    other.say("r RENAME Old Older\r\ns CREATE Gone\r\nt DELETE Gone\r\nu SUBSCRIBE Work\r\n");
    let pushed = hand(&mut other, &mut watcher);
    assert!(
        pushed.contains("* STATUS \"Work\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY"),
        "{pushed}"
    );
    assert!(pushed.contains("UNSEEN 0)"), "{pushed}");
    assert!(
        pushed.contains("* LIST () \"/\" \"Older\" (\"OLDNAME\" (\"Old\"))"),
        "{pushed}"
    );
    assert!(
        pushed.contains("* LIST (\\Subscribed) \"/\" \"Work\""),
        "{pushed}"
    );
    // Created and deleted between two looks: nothing to say about it.
    assert!(!pushed.contains("Gone"), "{pushed}");

    // An expunge in the selected mailbox is pushed between commands.
    hand(&mut watcher, &mut other);
    other.say("v SELECT INBOX\r\nw STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n");
    let pushed = hand(&mut other, &mut watcher);
    assert!(pushed.contains("* 1 EXPUNGE\r\n"), "{pushed}");
    // NOTIFY NONE: quiet again.
    watcher.say("f NOTIFY NONE\r\n");
    hand(&mut watcher, &mut other);
    other.store.deliver(1, MSG, 1_795_600_001);
    let pushed = hand(&mut other, &mut watcher);
    assert_eq!(pushed, "");
}

#[test]
fn notify_refuses_what_it_cannot_do() {
    let mut d = connection();
    for (cmd, reply) in [
        (
            "b NOTIFY SET (SELECTED (MessageNew))\r\n",
            "b BAD MessageNew and MessageExpunge",
        ),
        ("c NOTIFY SET (PERSONAL (FlagChange))\r\n", "c BAD"),
        (
            "d NOTIFY SET (SELECTED (MailboxName))\r\n",
            "d BAD SELECTED takes message events",
        ),
        (
            "e NOTIFY SET (PERSONAL (AnnotationChange))\r\n",
            "e NO [BADEVENT (",
        ),
        (
            "f NOTIFY SET (SELECTED (MessageNew (BODY[]) MessageExpunge))\r\n",
            "f BAD MessageNew takes FETCH items",
        ),
        (
            "g NOTIFY SET (ELSEWHERE (MessageNew MessageExpunge))\r\n",
            "g BAD Unknown NOTIFY filter",
        ),
        ("h NOTIFY\r\n", "h BAD"),
        ("i NOTIFY SET\r\n", "i BAD"),
    ] {
        let out = d.say(cmd);
        assert!(out.starts_with(reply), "{cmd}: {out}");
    }
    let out = d.say(
        "j NOTIFY SET (SUBTREE (Work) (MessageNew MessageExpunge)) (MAILBOXES INBOX NONE)\r\n",
    );
    assert!(out.starts_with("j OK"), "{out}");
}
