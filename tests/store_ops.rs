//! Store operations IMAP needs (groundwork for issue 3), on a real partition in a
//! glommio executor: APPEND with flags/keywords/date, STORE, CREATE, RENAME, DELETE,
//! COPY. After each scenario the partition is reopened twice — replaying the log alone,
//! then from the snapshot — and the index must be identical to the live one.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use shardmail::config::{Durability, StoreOptions};
use shardmail::store::{flags, Index, Partition, StoreError, Summary};

const ACCOUNT: u64 = 0xA11CE;

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Group,
        checkpoint_bytes: u64::MAX,
        ..StoreOptions::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shardmail-storeops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run<T>(f: impl std::future::Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor (RLIMIT_MEMLOCK?)")
        .run(f)
}

fn message(subject: &str) -> (Vec<u8>, Vec<u8>) {
    let m = format!("From: a@x.example\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n")
        .into_bytes();
    let s = Summary::parse(&m).to_bytes();
    (m, s)
}

/// Reopens the partition twice (log only, then snapshot) and returns both indexes.
fn reopen_both(dir: &Path) -> (Index, Index) {
    let d = dir.to_path_buf();
    let from_log = run(async move {
        let _ = std::fs::remove_file(d.join("index.snap"));
        let p = Partition::open(0, &d, options())
            .await
            .expect("reopen from the log");
        p.checkpoint().expect("snapshot");
        let index = p.index().clone();
        index
    });
    let d = dir.to_path_buf();
    let from_snapshot = run(async move {
        let p = Partition::open(0, &d, options())
            .await
            .expect("reopen from the snapshot");
        let index = p.index().clone();
        index
    });
    (from_log, from_snapshot)
}

#[test]
fn imap_operations_are_durable_and_replay_identically() {
    let dir = temp_dir("ops");
    let d = dir.clone();
    let live = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        let (m1, s1) = message("one");
        p.deliver(&[ACCOUNT], 1, &m1, &s1, 1000)
            .await
            .expect("deliver");
        let sent = p
            .mailbox_id(ACCOUNT, "Sent")
            .expect("default mailboxes exist");
        let (m2, s2) = message("two");
        let keywords = vec!["$MDNSent".to_string()];
        let uid = p
            .append(ACCOUNT, sent, &m2, &s2, flags::SEEN, &keywords, 1234)
            .await
            .expect("append");
        assert_eq!(uid, 1);
        let changed = p
            .store_flags(
                ACCOUNT,
                1,
                &[
                    (1, flags::FLAGGED, vec!["$Forwarded".into()]),
                    (99, flags::SEEN, vec![]),
                ],
            )
            .await
            .expect("store");
        assert_eq!(changed.len(), 1, "a missing UID is skipped");
        let projects = p
            .create_mailbox(ACCOUNT, "Projects", 2000)
            .await
            .expect("create");
        assert!(projects > 5);
        assert!(matches!(
            p.create_mailbox(ACCOUNT, "Projects", 2000).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            p.create_mailbox(ACCOUNT, "inbox", 2000).await,
            Err(StoreError::Invalid(_))
        ));
        let pairs = p.copy(ACCOUNT, 1, &[1, 42], projects).await.expect("copy");
        assert_eq!(pairs, vec![(1, 1)]);
        p.rename_mailbox(ACCOUNT, projects, "Archive/2026")
            .await
            .expect("rename");
        let temp = p
            .create_mailbox(ACCOUNT, "Temp", 2000)
            .await
            .expect("create");
        p.delete_mailbox(ACCOUNT, temp).await.expect("delete");
        assert!(matches!(
            p.delete_mailbox(ACCOUNT, temp).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(
            p.create_mailbox(ACCOUNT, "Temp", 2000)
                .await
                .expect("re-create")
                > temp,
            "ids never reused"
        );

        let index = p.index();
        let acct = index.accounts.get(&ACCOUNT).expect("account");
        let inbox = acct.mailbox("INBOX").expect("inbox");
        assert_eq!(inbox.messages[0].flags, flags::FLAGGED);
        assert_eq!(
            inbox.messages[0].keywords[..],
            vec!["$Forwarded".to_string()][..]
        );
        let archived = acct.mailbox("Archive/2026").expect("renamed");
        assert_eq!(archived.messages.len(), 1);
        assert_eq!(
            archived.messages[0].blob, inbox.messages[0].blob,
            "COPY shares the stored bytes"
        );
        assert_eq!(
            archived.messages[0].keywords[..],
            ["$Forwarded".to_string()]
        );
        let sent_box = acct.mailbox("Sent").expect("sent");
        assert_eq!(
            (
                sent_box.messages[0].internal_date,
                sent_box.messages[0].flags
            ),
            (1234, flags::SEEN)
        );
        assert!(acct.mailbox("Projects").is_none());
        let msg = p.message(ACCOUNT, archived.id, 1).expect("bytes");
        assert_eq!(&*msg, m1.as_slice());
        index.clone()
    });
    let (from_log, from_snapshot) = reopen_both(&dir);
    assert_eq!(from_log.accounts, live.accounts);
    assert_eq!(from_snapshot.accounts, live.accounts);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn changes_queued_while_a_mailbox_is_deleted_replay_cleanly() {
    let dir = temp_dir("race");
    let d = dir.clone();
    run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        let (m, s) = message("x");
        p.deliver(&[ACCOUNT], 1, &m, &s, 1).await.expect("deliver");
        let doomed = p
            .create_mailbox(ACCOUNT, "Doomed", 1)
            .await
            .expect("create");
        p.copy(ACCOUNT, 1, &[1], doomed).await.expect("copy");
        // Both pass their checks before either is durable: the flag change lands in
        // the log after the delete.
        let (p1, p2) = (Rc::clone(&p), Rc::clone(&p));
        let delete = glommio::spawn_local(async move { p1.delete_mailbox(ACCOUNT, doomed).await });
        let flag = glommio::spawn_local(async move {
            p2.store_flags(ACCOUNT, doomed, &[(1, flags::SEEN, vec![])])
                .await
        });
        delete.await.expect("delete");
        let _ = flag.await; // either outcome is fine; the log must stay replayable
    });
    let (from_log, from_snapshot) = reopen_both(&dir);
    let acct = from_log.accounts.get(&ACCOUNT).expect("account");
    assert!(acct.mailbox("Doomed").is_none());
    assert_eq!(from_log.accounts, from_snapshot.accounts);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A mailbox name stored before names were validated (or by a damaged index) must not
/// let `shardmail export` write outside `--out`: such mailboxes are refused, the rest
/// exported.
#[test]
fn export_refuses_names_that_would_leave_the_output_directory() {
    let data = temp_dir("export-escape");
    shardmail::store::init(&data, 1).expect("store.json");
    shardmail::users::UserDb::update(&data, |db| {
        db.users.insert(
            "eve@x.example".into(),
            shardmail::users::User {
                id: ACCOUNT,
                password: String::new(),
                scram: None,
                created: 0,
                quota: shardmail::users::Quota::default(),
                senders: shardmail::users::SenderLists::default(),
                app_passwords: Vec::new(),
            },
        );
        Ok(())
    })
    .expect("users.json");
    let part = shardmail::store::partition_dir(&data, 0);
    run(async move {
        let p = Partition::open(0, &part, options()).await.expect("open");
        let (m, s) = message("hello");
        p.deliver(&[ACCOUNT], 1, &m, &s, 1).await.expect("deliver");
        // The store itself does not judge names (the IMAP session does): write the
        // hostile ones straight through it.
        for name in ["../escaped", "INBOX/../../../escaped2", "/abs", "ok/child"] {
            let id = p.create_mailbox(ACCOUNT, name, 2).await.expect("create");
            let (m, s) = message(name);
            p.append(ACCOUNT, id, &m, &s, 0, &[], 3)
                .await
                .expect("append");
        }
        p.checkpoint().expect("snapshot");
    });
    let out = data.join("out");
    let report = shardmail::export::export(&data, "eve@x.example", &out).expect("export");
    assert_eq!(report.refused.len(), 3, "{:?}", report.refused);
    assert!(out.join("ok/child/cur").is_dir());
    assert!(out.join("INBOX/cur").is_dir());
    assert!(!data.join("escaped").exists() && !out.join("../escaped").exists());
    let mut files = Vec::new();
    let mut stack = vec![data];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains("shardmail,S=") {
                files.push(path);
            }
        }
    }
    assert!(files.iter().all(|f| f.starts_with(&out)), "{files:?}");
    assert_eq!(files.len(), 2, "INBOX and ok/child: {files:?}");
}

/// MULTIAPPEND's messages go into one commit, large and small bodies mixed (a large
/// one is written from its own buffer): every message is there after a reopen,
/// byte-exact, with consecutive UIDs.
#[test]
fn a_multiappend_is_one_commit_of_every_message() {
    use shardmail::store::change::{Change, NewMessage, Outcome};
    use shardmail::store::StoredMessage;
    let dir = temp_dir("multiappend");
    let d = dir.clone();
    let large: Vec<u8> = [
        b"Subject: large\r\n\r\n".as_slice(),
        &b"0123456789abcde\r\n".repeat(30_000),
    ]
    .concat();
    let bodies = vec![message("one").0, large, message("three").0];
    let expected = bodies.clone();
    let live = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        p.ensure_account(ACCOUNT, 1).await.expect("account");
        let stored: Vec<(StoredMessage, Vec<u8>)> = bodies
            .iter()
            .map(|b| {
                let m = StoredMessage::new(bytes::Bytes::new(), bytes::Bytes::from(b.clone()));
                (m, Summary::parse(b).to_bytes())
            })
            .collect();
        let messages: Vec<(&StoredMessage, &[u8])> =
            stored.iter().map(|(m, s)| (m, s.as_slice())).collect();
        let change = Change::Append {
            mailbox: 1,
            messages: (0..3)
                .map(|i| NewMessage {
                    flags: if i == 1 { flags::SEEN } else { 0 },
                    keywords: Vec::new(),
                    internal_date: 100 + i,
                })
                .collect(),
        };
        let outcome = p
            .execute(ACCOUNT, change, 1, &messages)
            .await
            .expect("append");
        assert_eq!(
            outcome,
            Outcome::Appended {
                uids: vec![1, 2, 3]
            }
        );
        let index = p.index().clone();
        index
    });
    let (from_log, from_snapshot) = reopen_both(&dir);
    assert_eq!(from_log, live);
    assert_eq!(from_snapshot, live);
    let d = dir.clone();
    run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        for (uid, body) in (1..=3).zip(&expected) {
            let got = p.message(ACCOUNT, 1, uid).expect("stored");
            assert_eq!(&got[..], &body[..], "message {uid}");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// METADATA entries (RFC 5464) are durable: replayed from the log, kept in the
/// snapshot and by compaction; a renamed mailbox keeps its entries, a deleted one
/// loses them.
#[test]
fn metadata_is_durable_through_replay_snapshot_and_compaction() {
    use shardmail::store::change::Change;
    let dir = temp_dir("metadata");
    let d = dir.clone();
    let set = |mailbox: u32, entries: &[(&str, Option<&[u8]>)]| Change::SetMetadata {
        mailbox,
        entries: entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(<[u8]>::to_vec)))
            .collect(),
    };
    let changes = vec![
        set(0, &[("/shared/comment", Some(b"server note"))]),
        set(1, &[("/private/comment", Some(b"inbox\0binary"))]),
        set(1, &[("/private/x", Some(b"gone soon"))]),
        set(1, &[("/private/x", None)]),
    ];
    let live = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        p.ensure_account(ACCOUNT, 1).await.expect("account");
        for c in changes {
            p.execute(ACCOUNT, c, 1, &[]).await.expect("set");
        }
        let work = p.create_mailbox(ACCOUNT, "Work", 1).await.expect("create");
        p.execute(
            ACCOUNT,
            set(work, &[("/private/vendor/a", Some(b"w"))]),
            1,
            &[],
        )
        .await
        .expect("set");
        p.rename_mailbox(ACCOUNT, work, "Projects")
            .await
            .expect("rename");
        let doomed = p
            .create_mailbox(ACCOUNT, "Doomed", 1)
            .await
            .expect("create");
        p.execute(
            ACCOUNT,
            set(doomed, &[("/private/comment", Some(b"d"))]),
            1,
            &[],
        )
        .await
        .expect("set");
        p.delete_mailbox(ACCOUNT, doomed).await.expect("delete");
        let index = p.index().clone();
        index
    });
    let acct = &live.accounts[&ACCOUNT];
    let entries: Vec<(u32, &str, &[u8])> = acct
        .metadata
        .iter()
        .map(|a| (a.mailbox, a.entry.as_str(), a.value.as_slice()))
        .collect();
    let work = acct.mailbox("Projects").expect("renamed").id;
    assert_eq!(
        entries,
        vec![
            (0, "/shared/comment", &b"server note"[..]),
            (1, "/private/comment", &b"inbox\0binary"[..]),
            (work, "/private/vendor/a", &b"w"[..]),
        ]
    );
    let (from_log, from_snapshot) = reopen_both(&dir);
    assert_eq!(from_log, live);
    assert_eq!(from_snapshot, live);
    let report =
        shardmail::store::compact::compact(&dir, &|_| true, &mut |_, _| {}).expect("compact");
    let _ = report;
    let loaded = shardmail::store::partition::load(&dir).expect("opens");
    assert_eq!(loaded.index.accounts[&ACCOUNT].metadata, acct.metadata);
    let _ = std::fs::remove_dir_all(&dir);
}
