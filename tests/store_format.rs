//! The log format's one definition: every op encodes and decodes to itself (property
//! test); unknown kinds and versions fail loudly; a planned MOVE is one commit; and a
//! log written by an earlier shardmail (`tests/fixtures/`) still opens byte-exact.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shardmail::config::{Durability, StoreOptions};
use shardmail::store::change::{self, Change, Reservations};
use shardmail::store::index::{Index, Op, SpecialUse};
use shardmail::store::layout::{Scanner, FILE_MAGIC};
use shardmail::store::{partition, Partition, Summary};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/ .ü]{0,40}"
}

fn keywords() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[$A-Za-z]{1,20}", 0..5)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            name(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))
        )
            .prop_map(|(account, mailbox, entry, value)| Op::Metadata {
                account,
                mailbox,
                entry,
                value,
            }),
        (any::<u64>(), any::<u32>(), any::<u32>(), 0u8..6, name()).prop_map(
            |(account, id, uidvalidity, s, name)| Op::MailboxCreate {
                account,
                id,
                uidvalidity,
                special: [
                    SpecialUse::None,
                    SpecialUse::Inbox,
                    SpecialUse::Sent,
                    SpecialUse::Drafts,
                    SpecialUse::Trash,
                    SpecialUse::Junk
                ][s as usize],
                name,
            }
        ),
        (
            (any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>()),
            (any::<i64>(), any::<u32>(), any::<u64>(), any::<u32>()),
            keywords()
        )
            .prop_map(
                |(
                    (account, mailbox, uid, modseq),
                    (internal_date, flags, blob, save_date),
                    keywords,
                )| {
                    Op::Append {
                        account,
                        mailbox,
                        uid,
                        modseq,
                        internal_date,
                        flags,
                        blob,
                        keywords,
                        save_date,
                        resolved: None,
                    }
                }
            ),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            keywords()
        )
            .prop_map(
                |(account, mailbox, uid, modseq, flags, keywords)| Op::Flags {
                    account,
                    mailbox,
                    uid,
                    modseq,
                    flags,
                    keywords,
                }
            ),
        (any::<u64>(), any::<u32>(), name()).prop_map(|(account, mailbox, name)| {
            Op::MailboxRename {
                account,
                mailbox,
                name,
            }
        }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(account, mailbox)| Op::MailboxDelete { account, mailbox }),
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(account, mailbox, uid, modseq)| Op::Expunge {
                account,
                mailbox,
                uid,
                modseq,
            }
        ),
        (any::<u64>(), any::<bool>(), name()).prop_map(|(account, subscribed, name)| {
            Op::Subscription {
                account,
                subscribed,
                name,
            }
        }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(account, mailbox, uid_next, highest_modseq, history_floor)| Op::MailboxState {
                    account,
                    mailbox,
                    uid_next,
                    highest_modseq,
                    history_floor,
                }
            ),
    ]
}

proptest! {
    #[test]
    fn every_op_round_trips(ops in proptest::collection::vec(op(), 0..20)) {
        let mut log = FILE_MAGIC.to_vec();
        change::encode(&mut log, &ops, &[]);
        let decoded: Vec<Op> = Scanner::new(&log, 0)
            .map(|r| Op::decode(&r).expect("decodes"))
            .collect();
        prop_assert_eq!(decoded, ops);
    }
}

#[test]
fn a_move_is_one_commit() {
    let mut index = Index::default();
    let mut numbers = Reservations::default();
    let mut blobs = shardmail::store::index::BlobCache::default();
    let ops = numbers.default_mailboxes(&index, 1, 100);
    index.apply_all(ops, &mut blobs).expect("defaults");
    let blob = change::BlobAt {
        blob: 64,
        offset: 100,
        len: 17,
    };
    let append = Change::Append {
        mailbox: 1,
        messages: vec![change::NewMessage {
            flags: 0,
            keywords: vec![],
            internal_date: 1,
        }],
    };
    let planned = change::plan(&index, 1, &append, 1, &mut numbers, &[blob]).expect("plan");
    index.apply_all(planned.ops, &mut blobs).expect("append");
    let moving = Change::Copy {
        from: 1,
        uids: vec![1],
        to: 4,
        expunge_source: true,
    };
    let planned = change::plan(&index, 1, &moving, 1, &mut numbers, &[]).expect("plan");
    let kinds: Vec<&str> = planned
        .ops
        .iter()
        .map(|o| match o {
            Op::Append { mailbox: 4, .. } => "append to Trash",
            Op::Expunge { mailbox: 1, .. } => "expunge from INBOX",
            _ => "other",
        })
        .collect();
    // Both halves in the ops of one change: one commit, one fdatasync, one record
    // stream applied together — after a crash the message is in exactly one mailbox.
    assert_eq!(kinds, ["append to Trash", "expunge from INBOX"]);
    index.apply_all(planned.ops, &mut blobs).expect("move");
    let account = &index.accounts[&1];
    assert!(account.mailbox_by_id(1).expect("inbox").messages.is_empty());
    assert_eq!(account.mailbox_by_id(4).expect("trash").messages.len(), 1);
}

#[test]
fn unknown_record_kinds_and_versions_fail_loudly() {
    let mut log = FILE_MAGIC.to_vec();
    let payload = 7u64.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[7, 9]), &payload);
    // MailboxDelete (kind 7) at version 9: a format this build does not know.
    log.extend_from_slice(&8u32.to_le_bytes());
    log.extend_from_slice(&crc.to_le_bytes());
    log.extend_from_slice(&[7, 9, 0, 0, 0, 0, 0, 0]);
    log.extend_from_slice(&payload);
    let record = Scanner::new(&log, 0)
        .next()
        .expect("a record, not a torn tail");
    let e = Op::decode(&record).expect_err("refused");
    assert!(e.reason.contains("newer shardmail"), "{}", e.reason);
    assert_eq!(e.offset, FILE_MAGIC.len() as u64);
}

// ---- Fixtures: data directories written by earlier shardmail builds ----

const FIXTURE_USER: &str = "fixture@example.test";

/// Copies a fixture into a fresh directory (a test must never write to the checked-in
/// one: opening it appends nothing, but a later write would).
fn fixture_copy(name: &str, test: &str) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let to = std::env::temp_dir().join(format!(
        "shardmail-fixture-{name}-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&to);
    copy_tree(&from, &to);
    to
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("fixture present") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `mailbox file-name crc32c` per exported message, sorted: the form the fixture's
/// `export.txt` was written in by `tests/fixtures/generate.py`.
fn export_listing(data: &Path) -> Vec<String> {
    let out = data.join("export-out");
    let _ = std::fs::remove_dir_all(&out);
    let report = shardmail::export::export(data, FIXTURE_USER, &out).expect("export");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let mut lines = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read export") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let mailbox = path
                .parent()
                .and_then(Path::parent)
                .and_then(|b| b.strip_prefix(&out).ok())
                .expect("box/cur/file");
            let data = std::fs::read(&path).expect("read message");
            lines.push(format!(
                "{} {} {:08x}",
                mailbox.display(),
                path.file_name().expect("name").to_string_lossy(),
                crc32c::crc32c(&data)
            ));
        }
    }
    lines.sort();
    lines
}

fn expected_listing(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("export.txt");
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .expect("export.txt")
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn fixture_account(data: &Path) -> (u64, PathBuf) {
    let db = shardmail::users::UserDb::load(data).expect("users.json");
    let id = db.user(FIXTURE_USER).expect("fixture user").id;
    let meta = shardmail::store::meta(data).expect("store.json");
    let part = shardmail::store::partition_of(id, meta.partitions);
    (id, shardmail::store::partition_dir(data, part))
}

fn run<T>(f: impl std::future::Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor (RLIMIT_MEMLOCK?)")
        .run(f)
}

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Group,
        checkpoint_bytes: u64::MAX,
        ..StoreOptions::default()
    }
}

/// A log written before records carried versions (every header byte 9 was zero, every
/// cached summary an unversioned archive) exports byte-exact, and every cached summary
/// it decodes equals a fresh parse of its message.
#[test]
fn a_format_v0_log_exports_byte_exact() {
    let data = fixture_copy("format-v0", "export");
    assert_eq!(export_listing(&data), expected_listing("format-v0"));
    let (account, dir) = fixture_account(&data);
    let loaded = partition::load(&dir).expect("opens");
    let log = std::fs::read(dir.join("messages.log")).expect("log");
    let mailboxes = &loaded.index.accounts[&account].mailboxes;
    let mut checked = 0;
    for entry in mailboxes.iter().flat_map(|m| &m.messages) {
        let message = &log[entry.offset as usize..][..entry.len as usize];
        let summary = shardmail::store::op::summary_at(&log, entry.blob, entry.offset, entry.len)
            .expect("the summary reads");
        // An old summary has no cached PREVIEW (computed when fetched); the rest is
        // what a fresh parse finds.
        let fresh = Summary {
            preview: None,
            ..Summary::parse(message)
        };
        assert_eq!(summary, fresh, "uid {}", entry.uid);
        checked += 1;
    }
    assert_eq!(checked, expected_listing("format-v0").len());
    let names: Vec<&str> = mailboxes.iter().map(|m| m.name.as_str()).collect();
    for name in ["Work", "Work/2026", "Trash", "Drafts"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(!names.contains(&"Gone") && !names.contains(&"Projects"));
    let _ = std::fs::remove_dir_all(&data);
}

/// This build appends its own (versioned) records after the old ones; the mixed log
/// replays — from the log alone and from a snapshot — to the same index, and the old
/// messages are untouched.
#[test]
fn a_format_v0_log_takes_new_writes() {
    let data = fixture_copy("format-v0", "writes");
    let (account, dir) = fixture_account(&data);
    let d = dir.clone();
    let live = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        let inbox = p.mailbox_id(account, "INBOX").expect("INBOX");
        let m = b"Subject: after the upgrade\r\n\r\nnew\r\n";
        let s = Summary::parse(m).to_bytes();
        let uid = p
            .append(account, inbox, m, &s, 0, &[], 1_900_000_000)
            .await
            .expect("append");
        assert_eq!(uid, 5, "UIDs continue after the old ones");
        let work = p.mailbox_id(account, "Work").expect("Work");
        p.create_mailbox(account, "After", 1_900_000_000)
            .await
            .expect("create");
        p.copy(account, inbox, &[uid], work).await.expect("copy");
        let index = p.index().clone();
        index
    });
    let _ = std::fs::remove_file(dir.join("index.snap"));
    let d = dir.clone();
    let replayed = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("reopen");
        p.checkpoint().expect("snapshot");
        let index = p.index().clone();
        index
    });
    let from_snapshot = run(async move {
        let p = Partition::open(0, &dir, options()).await.expect("reopen");
        let index = p.index().clone();
        index
    });
    assert_eq!(replayed.accounts, live.accounts);
    assert_eq!(from_snapshot.accounts, live.accounts);
    let now = export_listing(&data);
    for old in expected_listing("format-v0") {
        assert!(now.contains(&old), "{old} survives in {now:?}");
    }
    assert_eq!(now.len(), expected_listing("format-v0").len() + 2);
    let _ = std::fs::remove_dir_all(&data);
}

/// What the index holds per message stays within a cache line: summaries stay in the
/// log (page cache), keywords are a boxed slice (issue "The mailstore at volume":
/// ≤ 64 bytes of heap per message).
#[test]
fn an_index_entry_fits_64_bytes() {
    assert!(std::mem::size_of::<shardmail::store::MessageEntry>() <= 64);
}

/// Compaction of a log holding format-v0 records and new ones: what is live keeps its
/// numbers and bytes (the v0 Blob records are copied verbatim), what was expunged or
/// deleted is gone and stays gone, the counters go on from where they were, and a
/// second compaction is a no-op for the content.
#[test]
fn a_format_v0_log_survives_compaction() {
    use shardmail::store::compact;
    let data = fixture_copy("format-v0", "compact");
    let (account, dir) = fixture_account(&data);
    let d = dir.clone();
    let (before, expunged_uid) = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        let inbox = p.mailbox_id(account, "INBOX").expect("INBOX");
        let m = b"Subject: padding\r\n\r\n".to_vec();
        let big = [m, vec![b'x'; 200_000]].concat();
        let s = Summary::parse(&big).to_bytes();
        let uid = p
            .append(account, inbox, &big, &s, 0, &[], 1_900_000_000)
            .await
            .expect("append");
        p.expunge(account, inbox, &[uid]).await.expect("expunge");
        let index = p.index().clone();
        (index, uid)
    });
    let keep_all = |_: u64| true;
    let stats = compact::stats(&dir, &keep_all).expect("stats");
    assert!(stats.garbage_bytes() >= 200_000, "{stats:?}");
    let report = compact::compact(&dir, &keep_all, &mut |_, _| {}).expect("compact");
    assert!(
        report.after_bytes + 200_000 <= report.before.log_bytes,
        "{report:?}"
    );
    assert!(!compact::staging_dir(&dir).exists());
    let loaded = partition::load(&dir).expect("opens");
    let (old, new) = (&before.accounts[&account], &loaded.index.accounts[&account]);
    assert_eq!(old.mailboxes.len(), new.mailboxes.len());
    for (a, b) in old.mailboxes.iter().zip(&new.mailboxes) {
        assert_eq!(
            (a.id, &a.name, a.uidvalidity, a.uid_next, a.highest_modseq),
            (b.id, &b.name, b.uidvalidity, b.uid_next, b.highest_modseq)
        );
        let uids = |m: &shardmail::store::MailboxIndex| -> Vec<(u32, u64, u32)> {
            m.messages
                .iter()
                .map(|e| (e.uid, e.modseq, e.flags))
                .collect()
        };
        assert_eq!(uids(a), uids(b), "{}", a.name);
    }
    assert_eq!(old.usage, new.usage);
    assert_eq!(export_listing(&data), expected_listing("format-v0"));
    // The next message takes the next UID, not the expunged one's.
    let d = dir.clone();
    let next = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("reopen");
        let inbox = p.mailbox_id(account, "INBOX").expect("INBOX");
        let m = b"Subject: after compaction\r\n\r\nx\r\n";
        let s = Summary::parse(m).to_bytes();
        p.append(account, inbox, m, &s, 0, &[], 1_900_000_100)
            .await
            .expect("append")
    });
    assert_eq!(next, expunged_uid + 1);
    // An account missing from users.json is dropped.
    let report = compact::compact(&dir, &|a| a != account, &mut |_, _| {}).expect("drop");
    assert_eq!(report.dropped_accounts, 1);
    assert!(!partition::load(&dir)
        .expect("opens")
        .index
        .accounts
        .contains_key(&account));
    let _ = std::fs::remove_dir_all(&data);
}

/// Compaction with the server running: appends keep arriving while it copies (they
/// wait only for the swap), every message reads back byte for byte from the new log,
/// and the partition reopened from disk holds the same mail with the same numbers.
#[test]
fn online_compaction_keeps_what_commits_meanwhile() {
    let data = fixture_copy("format-v0", "online");
    let (account, dir) = fixture_account(&data);
    let d = dir.clone();
    let (live, bytes_of) = run(async move {
        let p = Partition::open(0, &d, options()).await.expect("open");
        let inbox = p.mailbox_id(account, "INBOX").expect("INBOX");
        let message = |i: usize| {
            let mut m = format!("Subject: m{i}\r\n\r\n").into_bytes();
            m.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 20_000));
            m
        };
        let mut uids = Vec::new();
        for i in 0..300 {
            let m = message(i);
            let s = Summary::parse(&m).to_bytes();
            uids.push(
                p.append(account, inbox, &m, &s, 0, &[], 1_900_000_000)
                    .await
                    .expect("append"),
            );
        }
        let gone: Vec<u32> = uids.iter().copied().filter(|u| u % 3 != 0).collect();
        p.expunge(account, inbox, &gone).await.expect("expunge");
        let stored = std::rc::Rc::new(std::cell::Cell::new(0));
        let writer = {
            let (p, stored) = (p.clone(), stored.clone());
            glommio::spawn_local(async move {
                let mut more = Vec::new();
                for i in 300..360 {
                    let m = message(i);
                    let s = Summary::parse(&m).to_bytes();
                    more.push(
                        p.append(account, inbox, &m, &s, 0, &[], 1_900_000_000)
                            .await
                            .expect("append during compaction"),
                    );
                    stored.set(stored.get() + 1);
                    glommio::timer::sleep(std::time::Duration::from_millis(8)).await;
                }
                more
            })
        };
        let keep: shardmail::store::partition::Keep = std::sync::Arc::new(|_| true);
        let report = p.compact_online(keep, 8 << 20).await.expect("compacts");
        // Some appends were committed while it copied (the tail it carried over),
        // others after the swap.
        let during = stored.get();
        assert!(
            during > 0 && during < 60,
            "{during} appends during the compaction"
        );
        let more = writer.await;
        assert!(
            report.after_bytes < report.before.log_bytes / 2,
            "{report:?}"
        );
        assert_eq!(more.len(), 60);
        // Every message reads back from the new log.
        let index = p.index().clone();
        let mut bytes_of = std::collections::BTreeMap::new();
        for e in &index.accounts[&account]
            .mailbox_by_id(inbox)
            .expect("inbox")
            .messages
        {
            let b = p.message(account, inbox, e.uid).expect("readable").to_vec();
            bytes_of.insert(e.uid, b);
        }
        for (i, uid) in uids.iter().chain(&more).enumerate() {
            let kept = !gone.contains(uid);
            assert_eq!(bytes_of.contains_key(uid), kept, "uid {uid}");
            if kept {
                assert_eq!(bytes_of[uid], message(i), "uid {uid}");
            }
        }
        (index, bytes_of)
    });
    assert!(!shardmail::store::compact::staging_dir(&dir).exists());
    let reopened = run(async move {
        let p = Partition::open(0, &dir, options()).await.expect("reopen");
        let index = p.index().clone();
        let inbox = p.mailbox_id(account, "INBOX").expect("INBOX");
        for (uid, bytes) in &bytes_of {
            assert_eq!(
                &p.message(account, inbox, *uid).expect("readable")[..],
                &bytes[..]
            );
        }
        index
    });
    let (a, b) = (&live.accounts[&account], &reopened.accounts[&account]);
    assert_eq!(a.usage, b.usage);
    for (x, y) in a.mailboxes.iter().zip(&b.mailboxes) {
        assert_eq!(
            (x.id, x.uid_next, x.highest_modseq),
            (y.id, y.uid_next, y.highest_modseq)
        );
        assert_eq!(x.messages, y.messages, "{}", x.name);
    }
    let _ = std::fs::remove_dir_all(&data);
}
