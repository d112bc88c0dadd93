//! IMAP QUOTA (RFC 9208) and the limits APPEND and COPY obey, against the real
//! session over the in-memory store (the real index): `NO [OVERQUOTA]` before a
//! continuation is sent, MOVE inside the account allowed, expunging frees room, and
//! the usage the index keeps incrementally matches the messages.

use std::sync::Arc;

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;
use shardmail::store::change::Change;
use shardmail::users::Quota;

const MESSAGE: &str = "Subject: q\r\n\r\nhello\r\n";

fn driver(quota: Quota, messages: usize) -> Driver {
    let mut d = Driver::new(
        Arc::new(ImapConfig {
            hostname: "imap.example".into(),
            tls_available: true,
            ..ImapConfig::default()
        }),
        true,
    );
    d.store.quota = quota;
    for _ in 0..messages {
        d.store.deliver(1, MESSAGE.as_bytes(), 1_795_600_000);
    }
    d.feed(b"a LOGIN bob pw\r\n");
    take(&mut d);
    d
}

fn take(d: &mut Driver) -> String {
    String::from_utf8_lossy(&std::mem::take(&mut d.sent)).into_owned()
}

fn append(d: &mut Driver, tag: &str) -> String {
    d.feed(format!("{tag} APPEND INBOX {{{}}}\r\n", MESSAGE.len()).as_bytes());
    let first = take(d);
    if !first.starts_with('+') {
        return first;
    }
    d.feed(format!("{MESSAGE}\r\n").as_bytes());
    take(d)
}

#[test]
fn a_full_account_refuses_append_and_copy_but_not_move() {
    let mut d = driver(
        Quota {
            storage: None,
            messages: Some(3),
        },
        2,
    );
    assert!(append(&mut d, "b").contains("b OK [APPENDUID"));
    // Refused before the continuation: the client never sends the bytes.
    let refused = append(&mut d, "c");
    assert!(refused.starts_with("c NO [OVERQUOTA]"), "{refused}");
    // LITERAL+: the bytes come anyway and are discarded; the session goes on.
    d.feed(format!("d APPEND INBOX {{{}+}}\r\n{MESSAGE}\r\n", MESSAGE.len()).as_bytes());
    assert!(take(&mut d).starts_with("d NO [OVERQUOTA]"));
    d.feed(b"e SELECT INBOX\r\nf COPY 1 Archive\r\n");
    let reply = take(&mut d);
    assert!(reply.contains("f NO [TRYCREATE]") || reply.contains("f NO [OVERQUOTA]"));
    d.feed(b"g COPY 1 Trash\r\n");
    assert!(take(&mut d).contains("g NO [OVERQUOTA]"));
    d.feed(b"h MOVE 1 Trash\r\n");
    assert!(take(&mut d).contains("h OK"), "a move stores nothing new");

    d.feed(b"i GETQUOTAROOT INBOX\r\n");
    assert_eq!(
        take(&mut d),
        "* QUOTAROOT \"INBOX\" \"\"\r\n* QUOTA \"\" (MESSAGE 3 3)\r\ni OK GETQUOTAROOT completed\r\n"
    );
    // Expunging frees room at once (no scan: the index keeps the usage).
    d.feed(b"j SELECT Trash\r\nk STORE 1 +FLAGS (\\Deleted)\r\nl EXPUNGE\r\n");
    take(&mut d);
    d.feed(b"m GETQUOTA \"\"\r\n");
    assert_eq!(
        take(&mut d),
        "* QUOTA \"\" (MESSAGE 2 3)\r\nm OK GETQUOTA completed\r\n"
    );
    assert!(append(&mut d, "n").contains("n OK [APPENDUID"));
}

#[test]
fn storage_is_reported_in_kib_and_setquota_is_the_administrators() {
    let mut d = driver(
        Quota {
            storage: Some(10 * 1024),
            messages: None,
        },
        0,
    );
    let big = "x".repeat(9 * 1024);
    d.feed(format!("b APPEND INBOX {{{}}}\r\n", big.len()).as_bytes());
    assert!(take(&mut d).starts_with('+'));
    d.feed(format!("{big}\r\n").as_bytes());
    assert!(take(&mut d).contains("b OK"));
    d.feed(b"c GETQUOTAROOT INBOX\r\n");
    assert!(take(&mut d).contains("* QUOTA \"\" (STORAGE 9 10)\r\n"));
    // 2 KiB more does not fit.
    d.feed(b"d APPEND INBOX {2048}\r\n");
    assert!(take(&mut d).starts_with("d NO [OVERQUOTA]"));
    d.feed(b"e SETQUOTA \"\" (STORAGE 99999)\r\nf GETQUOTA other\r\n");
    let reply = take(&mut d);
    assert!(reply.contains("e NO [NOPERM]"), "{reply}");
    assert!(reply.contains("f NO [NONEXISTENT]"), "{reply}");
    // No limits: an empty resource list.
    let mut open = driver(Quota::default(), 1);
    open.feed(b"g GETQUOTA \"\"\r\n");
    assert_eq!(
        take(&mut open),
        "* QUOTA \"\" ()\r\ng OK GETQUOTA completed\r\n"
    );
}

#[test]
fn status_counts_and_usage_follow_every_change_without_a_scan() {
    let mut d = driver(Quota::default(), 4);
    d.store.apply(
        Change::Store {
            mailbox: 1,
            changes: vec![(1, 1 | 8, Vec::new()), (2, 8, Vec::new())],
        }
        .into(),
    );
    d.feed(b"b STATUS INBOX (MESSAGES UNSEEN DELETED DELETED-STORAGE SIZE)\r\n");
    let len = MESSAGE.len();
    assert_eq!(
        take(&mut d),
        format!(
            "* STATUS \"INBOX\" (MESSAGES 4 UNSEEN 3 DELETED 2 DELETED-STORAGE {} SIZE {})\r\n\
             b OK STATUS completed\r\n",
            2 * len,
            4 * len
        )
    );
    d.store.apply(
        Change::Expunge {
            mailbox: 1,
            uids: vec![1, 2],
        }
        .into(),
    );
    let acct = &d.store.index.accounts[&d.store.account];
    let inbox = acct.mailbox("INBOX").expect("inbox");
    assert_eq!(inbox.counts.deleted, 0);
    assert_eq!(inbox.counts.unseen, 2);
    assert_eq!(inbox.counts.bytes, 2 * len as u64);
    assert_eq!(acct.usage.messages, 2);
    assert_eq!(acct.usage.bytes, 2 * len as u64);
}
