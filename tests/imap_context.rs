//! CONTEXT=SEARCH, CONTEXT=SORT and PARTIAL (RFC 5267 §4, RFC 9394 ranges) as
//! transcripts: a live UID SEARCH or UID SORT result follows new mail, flag changes
//! and expunges with ADDTO, REMOVEFROM (positions in the result's order) and new
//! COUNTs; CANCELUPDATE ends it; the per-session limit answers NOUPDATE; PARTIAL pages
//! SEARCH and SORT results. End to end with imaplib:
//! tests/e2e/test_imap_rfc.py.

use shardmail::proto::imap::memstore::Driver;

fn connection(search_updates_max: usize) -> Driver {
    Driver::logged_in(|c| c.search_updates_max = search_updates_max)
}

fn deliver(d: &mut Driver, subject: &str) {
    let m = format!("Subject: {subject}\r\n\r\nbody\r\n");
    d.store.deliver(1, m.as_bytes(), 1_795_600_000);
}

#[test]
fn a_live_search_follows_the_mailbox() {
    let mut d = connection(8);
    for s in ["a", "b", "a"] {
        deliver(&mut d, s);
    }
    let out = d.say(
        "b SELECT INBOX\r\n\
         c UID SEARCH RETURN (UPDATE ALL) SUBJECT a\r\n\
         e UID SEARCH RETURN (UPDATE COUNT) UNSEEN\r\n",
    );
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID ALL 1,3\r\nc OK SEARCH completed"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID COUNT 3\r\ne OK"),
        "{out}"
    );
    // New mail, told with EXISTS: matching is added at its place.
    deliver(&mut d, "a");
    let out = d.say("f NOOP\r\n");
    assert!(out.contains("* 4 EXISTS\r\n"), "{out}");
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID ADDTO (3 4)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID COUNT 4\r\n"),
        "{out}"
    );
    // A flag change re-checks the message (UNSEEN no longer matches it).
    let out = d.say("g STORE 1 +FLAGS (\\Seen)\r\n");
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID COUNT 3\r\n"),
        "{out}"
    );
    assert!(!out.contains("TAG \"c\""), "{out}");
    // An expunge removes it from where it was.
    let out = d.say("h STORE 3 +FLAGS.SILENT (\\Deleted)\r\ni EXPUNGE\r\n");
    assert!(out.contains("* 3 EXPUNGE\r\n"), "{out}");
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID REMOVEFROM (2 3)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID COUNT 2\r\n"),
        "{out}"
    );
    // CANCELUPDATE: no more about c.
    let out = d.say("j CANCELUPDATE \"c\"\r\nk CANCELUPDATE \"zz\"\r\n");
    assert!(out.contains("j OK CANCELUPDATE completed"), "{out}");
    assert!(out.contains("k BAD No live search with tag zz"), "{out}");
    deliver(&mut d, "a");
    let out = d.say("l NOOP\r\n");
    assert!(!out.contains("TAG \"c\""), "{out}");
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID COUNT 3\r\n"),
        "{out}"
    );
    // Selecting again ends every live search.
    let out = d.say("m SELECT INBOX\r\n");
    deliver(&mut d, "a");
    let out = out + &d.say("n NOOP\r\n");
    assert!(!out.contains("ESEARCH"), "{out}");
}

#[test]
fn updates_are_for_uid_search_and_bounded_per_session() {
    let mut d = connection(1);
    deliver(&mut d, "a");
    let out = d.say(
        "b SELECT INBOX\r\n\
         c SEARCH RETURN (UPDATE) ALL\r\n\
         d SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL\r\n\
         e UID SEARCH RETURN (UPDATE) ALL\r\n\
         f UID SEARCH RETURN (UPDATE CONTEXT) ALL\r\n",
    );
    assert!(
        out.contains("c BAD RETURN (UPDATE) needs UID SEARCH"),
        "{out}"
    );
    assert!(
        out.contains("d BAD RETURN (UPDATE) needs UID SORT"),
        "{out}"
    );
    assert!(out.contains("e OK SEARCH completed"), "{out}");
    // The result still comes; only its updates are refused.
    assert!(out.contains("* ESEARCH (TAG \"f\") UID ALL 1\r\n"), "{out}");
    assert!(
        out.contains(
            "f OK [NOUPDATE \"f\"] At most 1 live searches (limits.imap_search_updates_max)"
        ),
        "{out}"
    );
}

#[test]
fn partial_pages_search_and_sort_results() {
    let mut d = connection(8);
    for s in ["c", "a", "d", "b", "e"] {
        deliver(&mut d, s);
    }
    let out = d.say(
        "b SELECT INBOX\r\n\
         c UID SEARCH RETURN (PARTIAL 2:3) ALL\r\n\
         d UID SEARCH RETURN (PARTIAL -1:-2 COUNT) ALL\r\n\
         e SEARCH RETURN (PARTIAL 9:20) ALL\r\n\
         f SORT RETURN (PARTIAL 1:2) (SUBJECT) UTF-8 ALL\r\n\
         g SEARCH RETURN (PARTIAL 0:3) ALL\r\n\
         h SEARCH RETURN (PARTIAL 1:-3) ALL\r\n",
    );
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID PARTIAL (2:3 2:3)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"d\") UID COUNT 5 PARTIAL (-1:-2 4:5)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") PARTIAL (9:20 NIL)\r\n"),
        "{out}"
    );
    // In sort order: a (2), b (4).
    assert!(
        out.contains("* ESEARCH (TAG \"f\") PARTIAL (1:2 2,4)\r\n"),
        "{out}"
    );
    assert!(out.contains("g BAD PARTIAL takes a range"), "{out}");
    assert!(out.contains("h BAD PARTIAL takes a range"), "{out}");
}

#[test]
fn a_live_sort_places_new_matches_in_sort_order() {
    let mut d = connection(8);
    for s in ["b", "d", "f"] {
        deliver(&mut d, s);
    }
    let out = d.say(
        "b SELECT INBOX\r\n\
         c UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN\r\n\
         e UID SORT RETURN (UPDATE COUNT MIN) (REVERSE SUBJECT) UTF-8 ALL\r\n",
    );
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID ALL 1:3\r\nc OK SORT completed"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID MIN 3 COUNT 3\r\ne OK"),
        "{out}"
    );
    // "c" sorts between "b" and "d": position 2 of c, position 3 of the reverse.
    deliver(&mut d, "c");
    let out = d.say("f NOOP\r\n");
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID ADDTO (2 4)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID MIN 3 COUNT 4\r\n"),
        "{out}"
    );
    // Seen: out of c's result (UNSEEN), from its place in sort order.
    let out = d.say("g STORE 2 +FLAGS (\\Seen)\r\n");
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID REMOVEFROM (3 2)\r\n"),
        "{out}"
    );
    assert!(!out.contains("TAG \"e\""), "{out}");
    // Expunged: gone from both.
    let out = d.say("h STORE 1 +FLAGS.SILENT (\\Deleted)\r\ni EXPUNGE\r\n");
    assert!(
        out.contains("* ESEARCH (TAG \"c\") UID REMOVEFROM (1 1)\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID MIN 3 COUNT 3\r\n"),
        "{out}"
    );
}
