//! SORT and UID SORT (RFC 5256, with ESORT's RETURN options, RFC 5267, and RFC 5957
//! DISPLAYFROM/DISPLAYTO) and THREAD=ORDEREDSUBJECT: a SEARCH whose matches also
//! keep their sort key, made in the same bounded steps as the search (DESIGN.md
//! §10), then one O(n log n) sort of the keys and the reply.

use super::super::sort::{self, KeyPart, SortBy, Threadable};
use super::*;

/// What a SEARCH's matches are ordered by.
#[derive(Debug)]
pub(super) enum Order {
    Sort(Vec<SortBy>),
    Thread,
}

/// One match: what is reported (UID or sequence number), its sequence number (the
/// final tiebreak) and its key.
#[derive(Debug)]
pub(super) struct Ordered {
    number: u32,
    seq: u32,
    key: Vec<KeyPart>,
}

impl Order {
    /// Whether the key needs the message's envelope (read from the log).
    pub(super) fn needs_summary(&self) -> bool {
        match self {
            Order::Sort(criteria) => criteria.iter().any(|c| c.criterion.needs_summary()),
            Order::Thread => true,
        }
    }

    pub(super) fn item(
        &self,
        number: u32,
        seq: u32,
        entry: &MessageEntry,
        summary: Option<&Summary>,
    ) -> Ordered {
        let key = match self {
            Order::Sort(criteria) => sort::key_of(criteria, entry, summary),
            Order::Thread => vec![
                KeyPart::Text(sort::base_subject(
                    summary
                        .and_then(|s| s.envelope.subject.as_deref())
                        .unwrap_or(""),
                )),
                KeyPart::Number(sort::sent_date(summary, entry)),
            ],
        };
        Ordered { number, seq, key }
    }
}

impl SearchPending {
    pub(super) fn new(
        tag: &str,
        uid: bool,
        ret: command::SearchReturn,
        key: command::SearchKey,
        order: Option<Order>,
    ) -> SearchPending {
        SearchPending {
            tag: tag.to_string(),
            uid,
            ret,
            key,
            with_modseq: false,
            reads_message: false,
            next: 0,
            end: usize::MAX,
            hits: Vec::new(),
            order,
            ordered: Vec::new(),
            hit_uids: Vec::new(),
            hit_modseqs: Vec::new(),
            highest: 0,
        }
    }
}

impl Session {
    /// `SORT [RETURN (…)] (criteria) charset keys…`.
    pub(super) fn sort(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let parsed = sort::sort_args(args)
            .and_then(|(ret, criteria, keys)| Ok((command::search_keys(ret, keys)?, criteria)));
        match parsed {
            Ok((SearchArgs { ret, key }, criteria)) => {
                let job = SearchPending::new(tag, uid, ret, key, Some(Order::Sort(criteria)));
                self.begin_search(job, store, out);
            }
            Err(e) if e.starts_with("[BADCHARSET") => out.line(&format!("{tag} NO {e}")),
            Err(e) => self.bad(tag, &e, out),
        }
    }

    /// `THREAD algorithm charset keys…`.
    pub(super) fn thread(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let parsed = sort::thread_algorithm(args.first())
            .and_then(|()| sort::charset(args.get(1)))
            .and_then(|()| {
                command::search_keys(
                    command::SearchReturn::default(),
                    args.get(2..).unwrap_or(&[]),
                )
            });
        match parsed {
            Ok(SearchArgs { ret, key }) => {
                let job = SearchPending::new(tag, uid, ret, key, Some(Order::Thread));
                self.begin_search(job, store, out);
            }
            Err(e) if e.starts_with("[BADCHARSET") => out.line(&format!("{tag} NO {e}")),
            Err(e) => self.bad(tag, &e, out),
        }
    }

    /// The last step of a SORT or THREAD: order the matches and answer.
    #[allow(clippy::too_many_arguments)] // the finished job's parts, one each
    pub(super) fn finish_ordered(
        &mut self,
        tag: &str,
        uid: bool,
        ret: &command::SearchReturn,
        order: &Order,
        mut ordered: Vec<Ordered>,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let done = match order {
            Order::Sort(criteria) => {
                ordered.sort_by(|a, b| {
                    sort::compare(criteria, &a.key, &b.key).then(a.seq.cmp(&b.seq))
                });
                let numbers: Vec<u32> = ordered.iter().map(|o| o.number).collect();
                out.line(&sort_reply(tag, uid, ret, &numbers));
                "SORT completed"
            }
            Order::Thread => {
                let messages = ordered
                    .into_iter()
                    .map(|o| {
                        let mut key = o.key.into_iter();
                        let subject = match key.next() {
                            Some(KeyPart::Text(s)) => s,
                            _ => String::new(),
                        };
                        let date = match key.next() {
                            Some(KeyPart::Number(d)) => d,
                            _ => 0,
                        };
                        Threadable {
                            number: o.number,
                            subject,
                            date,
                        }
                    })
                    .collect();
                out.line(&format!("* THREAD {}", sort::ordered_subject(messages)));
                "THREAD completed"
            }
        };
        self.update(store, out, uid, &HashSet::new());
        out.line(&format!("{tag} OK {done}"));
    }
}

/// `* SORT n…`, or with RETURN the ESORT form (RFC 5267 §3.1: MIN and MAX are the
/// first and last in sort order, ALL lists them in sort order).
fn sort_reply(tag: &str, uid: bool, ret: &command::SearchReturn, numbers: &[u32]) -> String {
    if !ret.extended {
        let mut line = String::from("* SORT");
        for n in numbers {
            line.push_str(&format!(" {n}"));
        }
        return line;
    }
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    if let (Some(first), Some(last)) = (numbers.first(), numbers.last()) {
        if ret.min {
            line.push_str(&format!(" MIN {first}"));
        }
        if ret.max {
            line.push_str(&format!(" MAX {last}"));
        }
        if ret.all {
            line.push_str(&format!(" ALL {}", SequenceSet::compact(numbers)));
        }
    }
    if ret.count {
        line.push_str(&format!(" COUNT {}", numbers.len()));
    }
    line
}
