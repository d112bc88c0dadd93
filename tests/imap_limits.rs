//! The IMAP session under hostile or huge input (issue 11, DESIGN.md §10): long
//! replies come in steps of bounded size, matching is linear, names and counts are
//! limited, every refusal says which limit. In memory, over the real session and the
//! real index (`proto::imap::memstore`).

use std::sync::Arc;

use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;
use shardmail::store::change::Change;

fn config(tweak: impl FnOnce(&mut ImapConfig)) -> Arc<ImapConfig> {
    let mut c = ImapConfig {
        hostname: "imap.example".into(),
        ..ImapConfig::default()
    };
    tweak(&mut c);
    Arc::new(c)
}

/// A logged-in session (over TLS) with `mailboxes` extra mailboxes `box/00001`…
fn logged_in(config: Arc<ImapConfig>, mailboxes: usize) -> Driver {
    let mut d = Driver::new(config, true);
    d.store
        .deliver(1, b"Subject: x\r\n\r\nbody\r\n", 1_795_600_000);
    if mailboxes > 0 {
        let names = (0..mailboxes).map(|i| format!("box/{i:05}")).collect();
        d.store.apply(
            Change::Create {
                names,
                special: shardmail::store::index::SpecialUse::None,
            }
            .into(),
        );
    }
    d.feed(b"a LOGIN bob pw\r\n");
    d.sent.clear();
    d
}

fn sent(d: &Driver) -> String {
    String::from_utf8_lossy(&d.sent).into_owned()
}

#[test]
fn list_of_many_mailboxes_comes_in_bounded_steps() {
    let mut d = logged_in(config(|c| c.output_bytes_max = 16 * 1024), 5000);
    let steps = d.steps;
    d.feed(b"l LIST \"\" *\r\n");
    let out = sent(&d);
    let lines: Vec<&str> = out.lines().collect();
    // INBOX, Drafts, Junk, Sent, Trash, the implied parent "box", 5000 children.
    assert_eq!(lines.len(), 5 + 1 + 5000 + 1, "{}", &out[..400]);
    assert_eq!(lines.last(), Some(&"l OK LIST completed"));
    assert_eq!(
        lines.first(),
        Some(&"* LIST (\\HasNoChildren) \"/\" \"INBOX\"")
    );
    assert!(out.contains("* LIST (\\Noselect \\HasChildren) \"/\" \"box\"\r\n"));
    let listed: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(listed.len(), lines.len(), "a name listed twice");
    assert!(
        d.steps - steps > 10,
        "answered in {} steps",
        d.steps - steps
    );
    assert!(
        d.largest_step_reply < 16 * 1024 + 4096,
        "{}",
        d.largest_step_reply
    );
    // The same answer in one go when the bound is large.
    let mut whole = logged_in(config(|c| c.output_bytes_max = 64 << 20), 5000);
    whole.feed(b"l LIST \"\" *\r\n");
    let whole_out = sent(&whole);
    let chunked: Vec<&str> = out.lines().collect();
    // Within one step the walk also stops after a fixed amount of work, so compare
    // as sets plus the fixed first and last lines.
    let mut a: Vec<&str> = whole_out.lines().collect();
    let mut b = chunked.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
}

#[test]
fn list_steps_survive_mailboxes_changing_between_them() {
    let mut d = logged_in(config(|c| c.output_bytes_max = 16 * 1024), 3000);
    // Pipeline a CREATE behind the LIST: it runs only after the LIST's last step.
    d.feed(b"l LIST \"\" box/%\r\nc CREATE box/zzz\r\n");
    let out = sent(&d);
    assert_eq!(out.matches("* LIST").count(), 3000);
    assert!(
        out.contains("l OK LIST completed\r\nc OK [MAILBOXID ("),
        "{out}"
    );
    assert!(out.ends_with("] CREATE completed\r\n"), "{out}");
}

#[test]
fn pathological_list_pattern_answers_at_once() {
    let mut d = logged_in(config(|_| {}), 0);
    let long = format!("{}c", "a".repeat(250));
    d.feed(format!("c CREATE {long}\r\n").as_bytes());
    let started = std::time::Instant::now();
    d.feed(b"l LIST \"\" \"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b\"\r\n");
    d.feed(b"m LIST \"\" \"%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%a%b\"\r\n");
    assert!(sent(&d).ends_with("l OK LIST completed\r\nm OK LIST completed\r\n"));
    // A backtracking matcher needs minutes here; linear matching needs microseconds
    // (the bound is loose so that no host is too slow for it).
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn mailbox_names_that_could_escape_a_directory_are_refused() {
    let mut d = logged_in(config(|_| {}), 0);
    for name in [
        "..",
        ".",
        "../x",
        "INBOX/../../../x",
        "a/./b",
        "/etc",
        "a//b",
        "\"a\\x07b\"",
    ] {
        d.sent.clear();
        d.feed(format!("c CREATE {name}\r\n").as_bytes());
        let out = sent(&d);
        assert!(
            out.starts_with("c NO [CANNOT]") || out.starts_with("c BAD"),
            "{name}: {out}"
        );
        d.sent.clear();
        d.feed(format!("r RENAME Sent2 {name}\r\n").as_bytes());
        assert!(!sent(&d).contains(" OK "), "{name}");
    }
    d.sent.clear();
    d.feed(format!("c CREATE {}\r\n", "x".repeat(256)).as_bytes());
    assert!(
        sent(&d).starts_with("c NO [CANNOT] Each level"),
        "{}",
        sent(&d)
    );
    d.sent.clear();
    d.feed(b"s SUBSCRIBE ../../x\r\n");
    assert!(sent(&d).starts_with("s NO [CANNOT]"), "{}", sent(&d));
}

#[test]
fn mailbox_and_keyword_counts_are_limited() {
    let mut d = logged_in(
        config(|c| {
            c.mailboxes_per_account_max = 8;
            c.keywords_per_mailbox_max = 3;
        }),
        0,
    );
    d.feed(b"a CREATE one\r\nb CREATE two\r\nc CREATE three\r\nd CREATE four\r\ne CREATE x/y\r\n");
    let out = sent(&d);
    assert!(out.contains("a OK [MAILBOXID"), "{out}");
    assert!(out.contains("c OK [MAILBOXID"), "{out}");
    assert!(
        out.contains(
            "d NO [LIMIT] An account holds at most 8 mailboxes (limits.mailboxes_per_account_max)"
        ),
        "{out}"
    );
    assert!(out.contains("e NO [LIMIT]"), "{out}");
    d.sent.clear();
    d.feed(b"s SELECT INBOX\r\nk STORE 1 +FLAGS ($a $b $c)\r\nl STORE 1 +FLAGS ($d)\r\nm STORE 1 -FLAGS ($a)\r\nn STORE 1 +FLAGS ($A)\r\n");
    let out = sent(&d);
    assert!(out.contains("k OK STORE"), "{out}");
    assert!(
        out.contains(
            "l NO [LIMIT] A mailbox carries at most 3 keywords (limits.keywords_per_mailbox_max)"
        ),
        "{out}"
    );
    assert!(out.contains("m OK STORE"), "{out}");
    assert!(
        out.contains("n OK STORE"),
        "known keywords stay usable (any case): {out}"
    );
    // At the limit, PERMANENTFLAGS no longer offers \* (new keywords).
    d.sent.clear();
    d.feed(b"t SELECT INBOX\r\n");
    assert!(
        sent(&d).contains("$a $b $c)] Flags permitted"),
        "{}",
        sent(&d)
    );
    d.sent.clear();
    d.feed(b"u APPEND INBOX ($new) {5+}\r\nhello\r\n");
    assert!(sent(&d).starts_with("u NO [LIMIT]"), "{}", sent(&d));
}

/// A logged-in session with `count` small messages in INBOX, selected.
fn big_mailbox(config: Arc<ImapConfig>, count: usize) -> Driver {
    let mut d = Driver::new(config, true);
    for i in 0..count {
        let body = format!(
            "From: a{i}@x.example\r\nSubject: m{i}\r\n\r\nbody {i} needle{}\r\n",
            i % 7
        );
        d.store.deliver(1, body.as_bytes(), 1_795_600_000);
    }
    d.feed(b"a LOGIN bob pw\r\nb EXAMINE INBOX\r\n");
    d.sent.clear();
    d
}

#[test]
fn fetch_of_a_large_mailbox_comes_in_bounded_steps() {
    let mut d = big_mailbox(config(|c| c.output_bytes_max = 32 * 1024), 20_000);
    let steps = d.steps;
    d.feed(b"f FETCH 1:* (UID BODY.PEEK[HEADER])\r\n");
    let out = sent(&d);
    assert_eq!(out.matches(" FETCH (UID ").count(), 20_000);
    assert!(out.ends_with("f OK FETCH completed\r\n"));
    assert!(d.steps - steps >= 20_000 / 512, "{} steps", d.steps - steps);
    assert!(
        d.largest_step_reply < 32 * 1024 + 1024,
        "{}",
        d.largest_step_reply
    );
}

#[test]
fn pipelined_commands_wait_while_output_is_queued() {
    // A client that pipelines FETCHes without reading: each step stops taking
    // commands once limits.output_buffer_bytes_max is queued.
    let mut d = big_mailbox(config(|c| c.output_bytes_max = 16 * 1024), 300);
    let mut input = Vec::new();
    for i in 0..200 {
        input.extend_from_slice(format!("p{i} FETCH 1:* (BODY.PEEK[HEADER])\r\n").as_bytes());
    }
    d.feed(&input);
    let out = sent(&d);
    assert_eq!(out.matches(" OK FETCH completed").count(), 200);
    assert!(
        d.largest_step_reply < 16 * 1024 + 1024,
        "{}",
        d.largest_step_reply
    );
}

#[test]
fn search_of_a_large_mailbox_comes_in_bounded_steps() {
    let mut d = big_mailbox(config(|_| {}), 20_000);
    let steps = d.steps;
    d.feed(b"s SEARCH TEXT needle3\r\n");
    let out = sent(&d);
    let hits = out.lines().next().unwrap_or("").split(' ').count() - 2;
    assert_eq!(
        hits,
        (0..20_000).filter(|i| i % 7 == 3).count(),
        "{}",
        &out[..200]
    );
    assert!(out.ends_with("s OK SEARCH completed\r\n"));
    assert!(d.steps - steps > 1, "answered in one step");
    // The same search by sequence numbers, then by UID, agree.
    d.sent.clear();
    d.feed(b"u UID SEARCH TEXT needle3\r\n");
    assert_eq!(
        sent(&d).lines().next().unwrap_or("").split(' ').count() - 2,
        hits
    );
}

#[test]
fn large_literals_before_login_are_refused_before_any_continuation() {
    let mut d = Driver::new(config(|_| {}), true);
    d.sent.clear();
    d.feed(b"a LOGIN {52324147}\r\n");
    let out = sent(&d);
    assert!(!out.contains("+ "), "a continuation was sent: {out}");
    assert!(
        out.starts_with("a NO [TOOBIG] Literal larger than limits.preauth_literal_bytes_max (8192 bytes) before login"),
        "{out}"
    );
    // LITERAL+ before login: read and thrown away as it arrives, never buffered.
    d.sent.clear();
    d.feed(b"b LOGIN {100000+}\r\n");
    for _ in 0..100 {
        d.feed(&[b'x'; 1000]);
        assert!(d.pending.len() < 2000, "buffered {} bytes", d.pending.len());
    }
    d.feed(b" pw\r\nc NOOP\r\n");
    let out = sent(&d);
    assert!(out.starts_with("b NO [TOOBIG]"), "{out}");
    assert!(out.contains("c OK NOOP"), "{out}");
    // A small literal still logs in.
    d.sent.clear();
    d.feed(b"d LOGIN {3}\r\n");
    assert!(sent(&d).starts_with("+ "));
    d.feed(b"bob pw\r\n");
    assert!(sent(&d).contains("d OK"), "{}", sent(&d));
}

#[test]
fn append_streams_its_message_and_refuses_before_the_literal() {
    let mut d = logged_in(config(|c| c.literal_bytes_max = 1 << 20), 0);
    d.spill_bytes = 4096;
    // Refused before any continuation: no such mailbox, over APPENDLIMIT, bad flag.
    for (cmd, reply) in [
        ("a APPEND Nowhere {10}\r\n", "a NO [TRYCREATE]"),
        ("b APPEND INBOX {2000000}\r\n", "b NO [TOOBIG]"),
        ("c APPEND INBOX (\\Bogus) {10}\r\n", "c BAD"),
    ] {
        d.sent.clear();
        d.feed(cmd.as_bytes());
        let out = sent(&d);
        assert!(out.starts_with(reply), "{cmd}: {out}");
        assert!(!out.contains("+ "), "{cmd}: continuation sent: {out}");
    }
    // LITERAL+ to a missing mailbox: the bytes are thrown away as they come.
    d.sent.clear();
    d.feed(b"d APPEND Nowhere {20000+}\r\n");
    for _ in 0..20 {
        d.feed(&[b'x'; 1000]);
    }
    d.feed(b"\r\ne NOOP\r\n");
    assert!(sent(&d).starts_with("d NO [TRYCREATE]"), "{}", sent(&d));
    assert!(sent(&d).contains("e OK NOOP"));
    // A 600 KB message arrives in pieces: the session stages at most the spill
    // threshold plus one read, and the stored message is byte-exact.
    let body: Vec<u8> = (0..600_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let message = [b"Subject: big\r\n\r\n".as_slice(), &body].concat();
    d.sent.clear();
    d.feed(format!("f APPEND INBOX (\\Seen) {{{}}}\r\n", message.len()).as_bytes());
    assert!(sent(&d).starts_with("+ Ready"));
    for piece in message.chunks(1500) {
        d.feed(piece);
    }
    d.feed(b"\r\n");
    assert!(sent(&d).contains("f OK [APPENDUID"), "{}", sent(&d));
    assert!(
        d.largest_staged < 4096 + 1500,
        "staged {}",
        d.largest_staged
    );
    d.sent.clear();
    d.feed(b"g SELECT INBOX\r\nh FETCH 2 BODY.PEEK[]\r\n");
    let out = d.sent.clone();
    assert!(
        out.len() > message.len(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let at = memchr::memmem::find(&out, b"BODY[] {").unwrap_or(0);
    let start = at + memchr::memchr(b'\n', &out[at..]).unwrap_or(0) + 1;
    assert_eq!(&out[start..start + message.len()], &message[..]);
    // Something after the literal other than the line's end: refused, nothing stored.
    d.sent.clear();
    d.feed(b"i APPEND INBOX {3+}\r\nabc xyz\r\nj STATUS INBOX (MESSAGES)\r\n");
    let out = sent(&d);
    assert!(out.contains("i BAD APPEND: xyz where"), "{out}");
    assert!(out.contains("(MESSAGES 2)"), "{out}");
}
