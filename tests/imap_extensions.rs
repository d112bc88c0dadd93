//! Extensions of issue 13, as transcripts over the in-memory store: OBJECTID (RFC
//! 8474), WITHIN (RFC 5032), LITERAL- before login (RFC 7888 §5). Each is also
//! checked end to end with imaplib (tests/e2e/test_imap_rfc.py).

use shardmail::proto::imap::memstore::Driver;

const NOW: i64 = 1_795_675_500;

fn connection() -> Driver {
    let mut d = Driver::standard();
    d.now = NOW;
    d
}

fn say(d: &mut Driver, input: &str) -> String {
    d.say(input)
}

/// The value inside `NAME (…)` of the first line that has it.
fn object_id(out: &str, name: &str) -> String {
    let at = out.find(&format!("{name} (")).expect(name) + name.len() + 2;
    out[at..].split(')').next().unwrap_or_default().to_string()
}

#[test]
fn objectid_emailid_survives_copy_and_mailboxid_survives_rename() {
    let mut d = connection();
    d.store
        .deliver(1, b"Subject: one\r\n\r\nfirst\r\n", NOW - 100);
    d.store
        .deliver(1, b"Subject: two\r\n\r\nsecond\r\n", NOW - 50);
    say(&mut d, "a LOGIN bob pw\r\n");
    let created = say(&mut d, "b CREATE Work\r\n");
    let work = object_id(&created, "MAILBOXID");
    assert!(work.starts_with('F'), "{created}");
    let out = say(
        &mut d,
        "c SELECT INBOX\r\nd FETCH 1:2 (EMAILID THREADID)\r\ne COPY 1 Work\r\n",
    );
    assert!(out.contains("* OK [MAILBOXID (F1-"), "{out}");
    let first = object_id(&out, "EMAILID");
    assert!(
        out.contains(&format!("* 1 FETCH (EMAILID ({first}) THREADID NIL)")),
        "{out}"
    );
    assert!(
        !out.contains(&format!("* 2 FETCH (EMAILID ({first})")),
        "distinct: {out}"
    );
    assert!(first.len() <= 255 && first.bytes().all(|b| b.is_ascii_alphanumeric()));
    // The copy is the same message: same EMAILID; SEARCH EMAILID finds it.
    let out = say(
        &mut d,
        &format!("f RENAME Work Projects\r\ng STATUS Projects (MAILBOXID)\r\nh SELECT Projects\r\ni FETCH 1 EMAILID\r\nj SEARCH EMAILID {first}\r\nk SEARCH THREADID T1\r\n"),
    );
    assert!(out.contains(&format!("(MAILBOXID ({work}))")), "{out}");
    assert!(
        out.contains(&format!("* OK [MAILBOXID ({work})] Ok")),
        "{out}"
    );
    assert!(
        out.contains(&format!("* 1 FETCH (EMAILID ({first}))")),
        "{out}"
    );
    assert!(out.contains("* SEARCH 1\r\nj OK"), "{out}");
    assert!(out.contains("* SEARCH\r\nk OK"), "{out}");
}

#[test]
fn within_counts_seconds_back_from_now() {
    let mut d = connection();
    d.store.deliver(1, b"Subject: old\r\n\r\nx\r\n", NOW - 7200);
    d.store.deliver(1, b"Subject: new\r\n\r\ny\r\n", NOW - 60);
    let out = say(
        &mut d,
        "a LOGIN bob pw\r\nb SELECT INBOX\r\nc SEARCH YOUNGER 3600\r\nd SEARCH OLDER 3600\r\ne SEARCH YOUNGER 10\r\nf SEARCH OLDER x\r\n",
    );
    assert!(out.contains("* SEARCH 2\r\nc OK"), "{out}");
    assert!(out.contains("* SEARCH 1\r\nd OK"), "{out}");
    assert!(out.contains("* SEARCH\r\ne OK"), "{out}");
    assert!(out.contains("f BAD"), "{out}");
}

#[test]
fn before_login_non_synchronizing_literals_stop_at_4096_bytes() {
    let mut d = connection();
    let out = say(&mut d, "a CAPABILITY\r\n");
    assert!(
        out.contains(" LITERAL- ") && !out.contains("LITERAL+"),
        "{out}"
    );
    // 4,096 bytes go through without a continuation; one more is refused and its
    // bytes are read and thrown away, not taken as commands.
    let small = "x".repeat(4096);
    let out = say(&mut d, &format!("b LOGIN {{4096+}}\r\n{small} nope\r\n"));
    assert!(out.starts_with("b NO [AUTHENTICATIONFAILED]"), "{out}");
    let big = "y".repeat(4097);
    let out = say(
        &mut d,
        &format!("c LOGIN {{4097+}}\r\n{big} pw\r\nd NOOP\r\n"),
    );
    assert!(out.starts_with("c NO [TOOBIG]"), "{out}");
    assert!(out.contains("LITERAL-"), "{out}");
    assert!(out.ends_with("d OK NOOP completed\r\n"), "{out}");
    let out = say(&mut d, "e LOGIN bob pw\r\n");
    assert!(out.contains("LITERAL+"), "{out}");
}

#[test]
fn searchres_saves_the_result_as_dollar_for_the_next_commands() {
    let mut d = connection();
    for i in 0..5 {
        let flagged = if i % 2 == 0 {
            "Subject: even\r\n\r\nx\r\n"
        } else {
            "Subject: odd\r\n\r\nx\r\n"
        };
        d.store.deliver(1, flagged.as_bytes(), NOW - 100 + i);
    }
    say(&mut d, "a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    // SAVE alone: no ESEARCH, the result is kept.
    let out = say(
        &mut d,
        "c SEARCH RETURN (SAVE) SUBJECT even\r\nd FETCH $ (UID)\r\ne STORE $ +FLAGS.SILENT (\\Flagged)\r\nf SEARCH FLAGGED\r\n",
    );
    assert!(out.starts_with("c OK SEARCH completed\r\n"), "{out}");
    assert!(
        out.contains("* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n* 5 FETCH (UID 5)\r\nd OK"),
        "{out}"
    );
    assert!(out.contains("* SEARCH 1 3 5\r\nf OK"), "{out}");
    // `$` in SEARCH, combined with other keys, and in UID commands.
    let out = say(&mut d, "g SEARCH $ 2:5\r\nh UID SEARCH NOT $\r\n");
    assert!(out.contains("* SEARCH 3 5\r\ng OK"), "{out}");
    assert!(out.contains("* SEARCH 2 4\r\nh OK"), "{out}");
    // SAVE with MIN and MAX keeps only those; an expunged message leaves `$`.
    let out = say(
        &mut d,
        "i UID SEARCH RETURN (SAVE MIN MAX) SUBJECT even\r\nj FETCH $ (UID)\r\n\
         k STORE 1 +FLAGS.SILENT (\\Deleted)\r\nl EXPUNGE\r\nm UID FETCH $ (UID)\r\n",
    );
    assert!(
        out.contains("* ESEARCH (TAG \"i\") UID MIN 1 MAX 5\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* 1 FETCH (UID 1)\r\n* 5 FETCH (UID 5)\r\nj OK"),
        "{out}"
    );
    assert!(out.contains("* 4 FETCH (UID 5)\r\nm OK"), "{out}");
    // A failed SEARCH empties it; selecting again does too.
    let out = say(
        &mut d,
        "n SEARCH RETURN (SAVE) BOGUS\r\no FETCH $ (UID)\r\n",
    );
    assert!(out.contains("n BAD"), "{out}");
    assert!(
        out.contains("o OK FETCH completed\r\n") && !out.contains("* 4 FETCH"),
        "{out}"
    );
    let out = say(
        &mut d,
        "p SEARCH RETURN (SAVE) ALL\r\nq SELECT INBOX\r\nr FETCH $ (UID)\r\n",
    );
    assert!(!out.contains("FETCH (UID"), "{out}");
}

/// SORT (RFC 5256), ESORT (RFC 5267), SORT=DISPLAY (RFC 5957), THREAD=ORDEREDSUBJECT.
#[test]
fn sort_and_thread_by_base_subject_date_and_address() {
    let mut d = connection();
    let msgs: [(&str, &str, &str, i64); 5] = [
        (
            "Re: budget",
            "Zed <a@x.example>",
            "Tue, 1 Dec 2026 10:00:00 +0000",
            5,
        ),
        (
            "lunch",
            "Bob Jones <z@x.example>",
            "Mon, 30 Nov 2026 09:00:00 +0000",
            4,
        ),
        (
            "budget",
            "carol@x.example",
            "Sun, 29 Nov 2026 08:00:00 +0000",
            3,
        ),
        (
            "[team] Fwd: Budget (fwd)",
            "\"Alice\" <m@x.example>",
            "Wed, 2 Dec 2026 12:00:00 +0100",
            2,
        ),
        ("apples", "<b@x.example>", "not a date", 1),
    ];
    for (i, (subject, from, date, arrival)) in msgs.iter().enumerate() {
        let body = format!(
            "Subject: {subject}\r\nFrom: {from}\r\nDate: {date}\r\n\r\n{}\r\n",
            "x".repeat(i * 200)
        );
        d.store
            .deliver(1, body.as_bytes(), NOW - 1000 + arrival * 10);
    }
    say(&mut d, "a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    let out = say(
        &mut d,
        "c SORT (SUBJECT) UTF-8 ALL\r\nd SORT (REVERSE SIZE) US-ASCII ALL\r\n\
         e SORT (FROM) UTF-8 ALL\r\nf SORT (DISPLAYFROM) UTF-8 ALL\r\ng SORT (ARRIVAL) UTF-8 2:4\r\n\
         h UID SORT (DATE) UTF-8 ALL\r\n",
    );
    // Base subjects: apples; budget ×3 (ties in mailbox order); lunch.
    assert!(
        out.contains("* SORT 5 1 3 4 2\r\nc OK SORT completed"),
        "{out}"
    );
    assert!(out.contains("* SORT 5 4 3 2 1\r\nd OK"), "{out}");
    // addr-mailbox: a, b, carol, m, z.
    assert!(out.contains("* SORT 1 5 3 4 2\r\ne OK"), "{out}");
    // Display name, else address: Alice, b@x, Bob Jones, carol@x, Zed.
    assert!(out.contains("* SORT 4 5 2 3 1\r\nf OK"), "{out}");
    assert!(out.contains("* SORT 4 3 2\r\ng OK"), "{out}");
    // Sent date; the message without one sorts by its arrival (the earliest).
    assert!(out.contains("* SORT 5 3 2 1 4\r\nh OK"), "{out}");
    let out = say(
        &mut d,
        "i SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL\r\nj SORT (SUBJECT) KOI8-R ALL\r\n\
         k SORT (REVERSE) UTF-8 ALL\r\nl THREAD ORDEREDSUBJECT UTF-8 ALL\r\nm THREAD REFERENCES UTF-8 ALL\r\n",
    );
    assert!(
        out.contains("* ESEARCH (TAG \"i\") MIN 5 MAX 2 ALL 5,1,3:4,2 COUNT 5\r\ni OK"),
        "{out}"
    );
    assert!(out.contains("j NO [BADCHARSET"), "{out}");
    assert!(out.contains("k BAD"), "{out}");
    // Threads by base subject, each ordered by date, threads by their first date.
    assert!(
        out.contains("* THREAD (5)(3 (1)(4))(2)\r\nl OK THREAD completed"),
        "{out}"
    );
    // No Message-IDs or References here: each message is its own thread, gathered
    // by base subject (RFC 5256 §4 step 5).
    assert!(out.contains("* THREAD "), "{out}");
    assert!(out.contains("m OK THREAD completed"), "{out}");
}

/// THREAD=REFERENCES (RFC 5256 §4): replies under what they reference, a missing
/// parent kept as the thread's root, threads by date.
#[test]
fn thread_references_follows_references_and_in_reply_to() {
    let mut d = connection();
    let mail = [
        ("<a@x>", "", "hello", "Mon, 30 Nov 2026 09:00:00 +0000"),
        (
            "<b@x>",
            "References: <a@x>\r\n",
            "Re: hello",
            "Mon, 30 Nov 2026 10:00:00 +0000",
        ),
        (
            "<c@x>",
            "In-Reply-To: <b@x>\r\n",
            "Re: hello",
            "Mon, 30 Nov 2026 11:00:00 +0000",
        ),
        (
            "<d@x>",
            "References: <a@x>\r\n",
            "Re: hello",
            "Mon, 30 Nov 2026 10:30:00 +0000",
        ),
        ("<e@x>", "", "unrelated", "Sun, 29 Nov 2026 09:00:00 +0000"),
        (
            "<f@x>",
            "References: <gone@x>\r\n",
            "Re: lost",
            "Tue, 1 Dec 2026 09:00:00 +0000",
        ),
        (
            "<g@x>",
            "References: <gone@x>\r\n",
            "Re: lost",
            "Tue, 1 Dec 2026 10:00:00 +0000",
        ),
    ];
    for (id, refs, subject, date) in mail {
        let m =
            format!("Message-ID: {id}\r\n{refs}Subject: {subject}\r\nDate: {date}\r\n\r\nx\r\n");
        d.store.deliver(1, m.as_bytes(), NOW);
    }
    let out = say(
        &mut d,
        "a LOGIN bob pw\r\nb SELECT INBOX\r\nc THREAD REFERENCES UTF-8 ALL\r\nd UID THREAD REFERENCES UTF-8 SUBJECT hello\r\n",
    );
    assert!(
        out.contains("* THREAD (5)(1 (2 3)(4))((6)(7))\r\nc OK THREAD completed"),
        "{out}"
    );
    assert!(out.contains("* THREAD (1 (2 3)(4))\r\nd OK"), "{out}");
}

/// PREVIEW (RFC 8970): decoded text of the first text part, at most 256 characters.
#[test]
fn preview_is_decoded_text_of_at_most_256_characters() {
    let mut d = connection();
    d.store.deliver(
        1,
        b"Subject: p\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Caf=C3=A9   at\r\n  noon?\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>ignored</p>\r\n--b--\r\n",
        NOW,
    );
    let long = format!("Subject: long\r\n\r\n{}\r\n", "word ".repeat(200));
    d.store.deliver(1, long.as_bytes(), NOW);
    d.store.deliver(
        1,
        b"Subject: image\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
        NOW,
    );
    let out = say(
        &mut d,
        "a LOGIN bob pw\r\nb SELECT INBOX\r\nc FETCH 1 (PREVIEW)\r\nd FETCH 3 (PREVIEW (LAZY))\r\ne FETCH 2 PREVIEW\r\nf FETCH 1 (PREVIEW (EAGER))\r\n",
    );
    assert!(
        out.contains("* 1 FETCH (PREVIEW {14}\r\nCafé at noon?)\r\n"),
        "{out}"
    );
    assert!(out.contains("* 3 FETCH (PREVIEW NIL)\r\n"), "{out}");
    let long = out
        .split("* 2 FETCH (PREVIEW \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect(&out);
    assert!(
        long.chars().count() <= 256 && long.starts_with("word word"),
        "{long}"
    );
    assert!(out.contains("f BAD"), "{out}");
}

/// UTF8=ACCEPT (RFC 6855) and IMAP4rev2 see UTF-8 mailbox names; the same mailbox is
/// modified UTF-7 to an IMAP4rev1 session. UTF8 APPEND takes a literal8.
#[test]
fn utf8_sessions_see_utf8_names_and_rev1_sessions_modified_utf7() {
    let mut d = connection();
    let out = say(
        &mut d,
        "a LOGIN bob pw\r\nb ENABLE UTF8=ACCEPT\r\nc CREATE \"Entwürfe/日本語\"\r\nd LIST \"\" \"Entw*\"\r\n\
         e STATUS \"Entwürfe\" (MESSAGES)\r\nf CREATE \"Tom&Jerry\"\r\n",
    );
    assert!(out.contains("* ENABLED UTF8=ACCEPT\r\n"), "{out}");
    assert!(out.contains("c OK"), "{out}");
    assert!(
        out.contains("* LIST (\\HasChildren) \"/\" {9}\r\nEntwürfe\r\n")
            || out.contains("\"Entwürfe\""),
        "{out}"
    );
    assert!(out.contains("日本語"), "{out}");
    assert!(out.contains("f OK"), "{out}");
    let out = say(
        &mut d,
        "g APPEND \"Entwürfe\" UTF8 (~{24}\r\nSubject: caf\u{e9}\r\n\r\nbody\r\n)\r\nh SELECT \"Entwürfe\"\r\n",
    );
    assert!(out.contains("g OK [APPENDUID"), "{out}");
    assert!(out.contains("* 1 EXISTS"), "{out}");
    // The same account through an IMAP4rev1 session: modified UTF-7.
    let mut classic = connection();
    classic.store = std::mem::replace(
        &mut d.store,
        shardmail::proto::imap::memstore::MemStore::new(),
    );
    let out = say(
        &mut classic,
        "a LOGIN bob pw\r\nb LIST \"\" *\r\nc APPEND Entw&APw-rfe UTF8 (~{3}\r\nabc)\r\n",
    );
    assert!(out.contains("\"Entw&APw-rfe\""), "{out}");
    assert!(out.contains("\"Entw&APw-rfe/&ZeVnLIqe-\""), "{out}");
    // A literal `&` is `&-` in modified UTF-7.
    assert!(out.contains("\"Tom&-Jerry\""), "{out}");
    assert!(
        out.contains("c BAD"),
        "UTF8 APPEND needs UTF8=ACCEPT: {out}"
    );
    // RFC 6855 §3: no CHARSET once UTF8=ACCEPT is on (it is fine before, and a
    // search key may be the word itself).
    let out = say(
        &mut classic,
        "d SELECT INBOX\r\ne SEARCH CHARSET UTF-8 ALL\r\n",
    );
    assert!(out.contains("e OK SEARCH"), "{out}");
    let out = say(
        &mut classic,
        "f ENABLE UTF8=ACCEPT\r\ng SEARCH CHARSET UTF-8 ALL\r\nh SEARCH SUBJECT CHARSET\r\n",
    );
    assert!(
        out.contains("g BAD No CHARSET after ENABLE UTF8=ACCEPT"),
        "{out}"
    );
    assert!(out.contains("h OK SEARCH"), "{out}");
}

/// A SORT over more keys than one sort run is ordered in bounded steps (runs, then a
/// merge) and gives exactly the order one sort would.
#[test]
fn a_large_sort_is_answered_in_steps_and_in_the_right_order() {
    use shardmail::proto::imap::sort::base_subject;
    let mut d = connection();
    let count = 7000u32;
    let mut subjects = Vec::new();
    for i in 0..count {
        let subject = format!(
            "{}topic {}",
            ["", "Re: ", "Fwd: "][(i % 3) as usize],
            (i * 7919) % 1009
        );
        d.store.deliver(
            1,
            format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
            NOW,
        );
        subjects.push(subject);
    }
    say(&mut d, "a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    let steps = d.steps;
    let out = say(&mut d, "c SORT (SUBJECT) UTF-8 ALL\r\n");
    assert!(d.steps - steps > 5, "answered in {} steps", d.steps - steps);
    let got: Vec<u32> = out
        .lines()
        .find_map(|l| l.strip_prefix("* SORT "))
        .unwrap_or_else(|| panic!("{}", &out[..200.min(out.len())]))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let mut want: Vec<u32> = (1..=count).collect();
    want.sort_by_key(|&seq| (base_subject(&subjects[seq as usize - 1]), seq));
    assert_eq!(got, want);
    let out = say(&mut d, "d SORT (REVERSE SUBJECT) UTF-8 ALL\r\n");
    let first: u32 = out.split(' ').nth(2).unwrap().trim().parse().unwrap();
    let top = want
        .iter()
        .rev()
        .map(|&s| base_subject(&subjects[s as usize - 1]))
        .next()
        .unwrap();
    assert_eq!(base_subject(&subjects[first as usize - 1]), top);
}

/// THREAD's last pass is one step, so it is bounded by
/// `limits.imap_thread_messages_max`; a narrower search is answered.
#[test]
fn thread_over_too_many_messages_is_refused_with_the_limit_named() {
    use shardmail::proto::imap::session::ImapConfig;
    let mut d = Driver::new(
        std::sync::Arc::new(ImapConfig {
            hostname: "imap.example".into(),
            tls_available: true,
            thread_messages_max: 100,
            ..ImapConfig::default()
        }),
        true,
    );
    for i in 0..150 {
        let subject = if i < 10 { "few" } else { "many" };
        d.store.deliver(
            1,
            format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
            NOW,
        );
    }
    let out = d.say("a LOGIN bob pw\r\nb SELECT INBOX\r\nc THREAD REFERENCES UTF-8 ALL\r\n");
    assert!(
        out.contains(
            "c NO [LIMIT] THREAD over 150 messages; at most 100 (limits.imap_thread_messages_max)"
        ),
        "{out}"
    );
    let out = d.say("d THREAD ORDEREDSUBJECT UTF-8 SUBJECT few\r\ne SORT (SUBJECT) UTF-8 ALL\r\n");
    assert!(out.contains("* THREAD (1 (2)(3)"), "{out}");
    assert!(out.contains("d OK THREAD completed"), "{out}");
    assert!(
        out.contains("e OK SORT completed"),
        "SORT is not limited: {out}"
    );
}

#[test]
fn compress_deflate_is_turned_on_once_after_login() {
    let mut d = connection();
    // Not before login (RFC 4978 §3: authenticated state), one mechanism only.
    let out = say(&mut d, "a COMPRESS DEFLATE\r\n");
    assert!(out.starts_with("a BAD Log in first"), "{out}");
    say(&mut d, "b LOGIN bob pw\r\n");
    let out = say(&mut d, "c COMPRESS GZIP\r\nd COMPRESS\r\n");
    assert!(out.contains("c BAD COMPRESS takes one mechanism"), "{out}");
    assert!(out.contains("d BAD"), "{out}");
    assert!(!d.compressed);
    // The OK goes out, then the IO layer deflates; a command pipelined behind it is
    // read only once the stream deflates (it arrives compressed).
    let out = say(&mut d, "e COMPRESS DEFLATE\r\nf NOOP\r\n");
    assert!(out.starts_with("e OK DEFLATE active"), "{out}");
    assert!(d.compressed);
    assert!(out.contains("f OK"), "{out}");
    let out = say(&mut d, "g COMPRESS DEFLATE\r\n");
    assert!(out.starts_with("g NO [COMPRESSIONACTIVE]"), "{out}");
    // It stays on across UNAUTHENTICATE: a new login cannot turn it on again.
    let out = say(
        &mut d,
        "h UNAUTHENTICATE\r\ni LOGIN bob pw\r\nj COMPRESS DEFLATE\r\n",
    );
    assert!(out.contains("j NO [COMPRESSIONACTIVE]"), "{out}");
}

#[test]
fn savedate_is_when_the_message_entered_the_mailbox() {
    let mut d = connection();
    d.store.now = NOW;
    d.store
        .deliver(1, b"Subject: old\r\n\r\ndelivered\r\n", NOW - 10 * 86_400);
    say(&mut d, "a LOGIN bob pw\r\nb CREATE Work\r\n");
    // An APPEND keeps the client's INTERNALDATE, but it is saved now.
    let out = say(
        &mut d,
        "c APPEND INBOX \"01-Jan-2020 00:00:00 +0000\" {8}\r\nSubject:\r\n\
         d SELECT INBOX\r\ne FETCH 1:2 (INTERNALDATE SAVEDATE)\r\n",
    );
    assert!(
        out.contains("* 1 FETCH (INTERNALDATE \"16-Nov-2026 06:45:00 +0000\" SAVEDATE \"16-Nov-2026 06:45:00 +0000\")"),
        "{out}"
    );
    assert!(
        out.contains("* 2 FETCH (INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" SAVEDATE \"26-Nov-2026 06:45:00 +0000\")"),
        "{out}"
    );
    let out = say(
        &mut d,
        "f SEARCH SAVEDSINCE 26-Nov-2026\r\ng SEARCH SAVEDBEFORE 20-Nov-2026\r\n\
         h SEARCH SAVEDON 16-Nov-2026\r\ni SEARCH SAVEDATESUPPORTED\r\nj SEARCH SINCE 1-Jan-2026\r\n",
    );
    assert!(out.contains("* SEARCH 2\r\nf OK"), "{out}");
    assert!(out.contains("* SEARCH 1\r\ng OK"), "{out}");
    assert!(out.contains("* SEARCH 1\r\nh OK"), "{out}");
    assert!(out.contains("* SEARCH 1 2\r\ni OK"), "{out}");
    assert!(out.contains("* SEARCH 1\r\nj OK"), "{out}");
    // A copy is saved when copied; its INTERNALDATE is the original's.
    d.store.now = NOW + 3 * 86_400;
    let out = say(
        &mut d,
        "k COPY 1 Work\r\nl SELECT Work\r\nm FETCH 1 (INTERNALDATE SAVEDATE)\r\n",
    );
    assert!(
        out.contains("* 1 FETCH (INTERNALDATE \"16-Nov-2026 06:45:00 +0000\" SAVEDATE \"29-Nov-2026 06:45:00 +0000\")"),
        "{out}"
    );
}
