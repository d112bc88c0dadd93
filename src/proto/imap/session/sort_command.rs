//! SORT and UID SORT (RFC 5256, with ESORT's RETURN options, RFC 5267, and RFC 5957
//! DISPLAYFROM/DISPLAYTO) and THREAD=ORDEREDSUBJECT: a SEARCH whose matches also
//! keep their sort key, made in the same bounded steps as the search (DESIGN.md
//! §10), then ordered by a sort that is itself done in bounded steps ([`StepSort`]),
//! and the reply.

use std::cmp::Ordering;

use super::super::sort::{self, KeyPart, SortBy, Threadable};
use super::*;

/// What a SEARCH's matches are ordered by.
#[derive(Debug)]
pub(super) enum Order {
    Sort(Vec<SortBy>),
    Thread,
    /// THREAD=REFERENCES: each match keeps its ids, subject and date; it orders
    /// them itself, so nothing is sorted first.
    References,
}

/// One match: what is reported (UID or sequence number), its sequence number (the
/// final tiebreak) and its key — or, for THREAD=REFERENCES, what threading needs.
#[derive(Debug)]
pub(super) struct Ordered {
    number: u32,
    seq: u32,
    key: Vec<KeyPart>,
    referencing: Option<Box<sort::Referencing>>,
}

impl Order {
    /// Whether the key needs the message's envelope (read from the log).
    pub(super) fn needs_summary(&self) -> bool {
        match self {
            Order::Sort(criteria) => criteria.iter().any(|c| c.criterion.needs_summary()),
            Order::Thread | Order::References => true,
        }
    }

    /// THREAD (either algorithm), whose last pass is one step.
    pub(super) fn is_thread(&self) -> bool {
        matches!(self, Order::Thread | Order::References)
    }

    /// Whether the key needs the header block (References is not in the envelope).
    pub(super) fn needs_headers(&self) -> bool {
        matches!(self, Order::References)
    }

    pub(super) fn item(
        &self,
        number: u32,
        seq: u32,
        entry: &MessageEntry,
        summary: Option<&Summary>,
        headers: &[u8],
    ) -> Ordered {
        if let Order::References = self {
            let referencing = sort::Referencing {
                number,
                ..referencing(entry, summary, headers)
            };
            return Ordered {
                number,
                seq,
                key: Vec::new(),
                referencing: Some(Box::new(referencing)),
            };
        }
        let key = match self {
            Order::References => Vec::new(),
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
        Ordered {
            number,
            seq,
            key,
            referencing: None,
        }
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
            Ok((SearchArgs { ret, .. }, _)) if ret.update && !uid => self.bad(
                tag,
                "RETURN (UPDATE) needs UID SORT: sequence numbers change with every expunge",
                out,
            ),
            Ok((SearchArgs { ret, key, .. }, criteria)) => {
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
        let parsed = sort::thread_algorithm(args.first()).and_then(|algorithm| {
            sort::charset(args.get(1))?;
            let keys = command::search_keys(
                command::SearchReturn::default(),
                args.get(2..).unwrap_or(&[]),
            )?;
            Ok((algorithm, keys))
        });
        match parsed {
            Ok((algorithm, SearchArgs { ret, key, .. })) => {
                let order = match algorithm {
                    sort::Algorithm::OrderedSubject => Order::Thread,
                    sort::Algorithm::References => Order::References,
                };
                let job = SearchPending::new(tag, uid, ret, key, Some(order));
                self.begin_search(job, store, out);
            }
            Err(e) if e.starts_with("[BADCHARSET") => out.line(&format!("{tag} NO {e}")),
            Err(e) => self.bad(tag, &e, out),
        }
    }

    /// One step of ordering a SORT's or THREAD's matches; the last one answers.
    pub(super) fn sort_step(&mut self, mut job: SortJob, store: &dyn Mailstore, out: &mut Outbox) {
        let criteria = job.criteria();
        let compare = |a: &Ordered, b: &Ordered| {
            sort::compare(&criteria, &a.key, &b.key).then(a.seq.cmp(&b.seq))
        };
        if !job.sorter.step(&compare) {
            self.pending = Some(Pending::SortSteps(job));
            return;
        }
        let SortJob {
            tag,
            uid,
            ret,
            order,
            sorter,
            live_key,
        } = job;
        let sorted = sorter.into_sorted();
        let mut live = None;
        let done = match order {
            Order::Sort(criteria) => {
                let numbers: Vec<u32> = sorted.iter().map(|o| o.number).collect();
                out.line(&sort_reply(&tag, uid, &ret, &numbers));
                if let Some(key) = live_key {
                    let items = sorted.into_iter().map(|o| (o.key, o.number)).collect();
                    live = Some(context::LiveSearch::sorted(
                        tag.clone(),
                        ret,
                        key,
                        criteria,
                        items,
                    ));
                }
                "SORT completed"
            }
            Order::Thread => {
                out.line(&format!("* THREAD {}", threads(sorted)));
                "THREAD completed"
            }
            Order::References => {
                out.line(&format!("* THREAD {}", reference_threads(sorted)));
                "THREAD completed"
            }
        };
        self.update(store, out, uid, &HashSet::new());
        match live.and_then(|l| self.keep_live(l)) {
            Some(code) => out.line(&format!("{tag} OK {code}")),
            None => out.line(&format!("{tag} OK {done}")),
        }
    }
}

/// A SORT or THREAD whose matches are being ordered (see [`StepSort`]).
#[derive(Debug)]
pub(super) struct SortJob {
    tag: String,
    uid: bool,
    ret: command::SearchReturn,
    order: Order,
    sorter: StepSort,
    /// The search key, kept for a live result (RETURN (UPDATE), CONTEXT=SORT).
    live_key: Option<command::SearchKey>,
}

impl SortJob {
    pub(super) fn new(
        tag: String,
        uid: bool,
        ret: command::SearchReturn,
        order: Order,
        items: Vec<Ordered>,
        key: command::SearchKey,
    ) -> SortJob {
        let live_key = ret.update.then_some(key);
        // THREAD links by the keys; a live SORT keeps them to place later matches.
        let keep_keys = matches!(order, Order::Thread) || live_key.is_some();
        // REFERENCES orders the matches itself: they stay in mailbox order here.
        let sorter = if matches!(order, Order::References) {
            StepSort::done(items)
        } else {
            StepSort::new(items, keep_keys)
        };
        SortJob {
            tag,
            uid,
            ret,
            order,
            sorter,
            live_key,
        }
    }

    /// What the keys are compared by: the SORT's criteria, or for THREAD base subject
    /// then sent date (its keys' two parts).
    fn criteria(&self) -> Vec<SortBy> {
        match &self.order {
            Order::Sort(c) => c.clone(),
            Order::References => Vec::new(),
            Order::Thread => [sort::Criterion::Subject, sort::Criterion::Date]
                .into_iter()
                .map(|criterion| SortBy {
                    criterion,
                    reverse: false,
                })
                .collect(),
        }
    }
}

/// Comparisons one step may make: about half a millisecond.
const SORT_STEP_COMPARISONS: usize = 32 * 1024;
/// Sorted in one piece, then merged: 2,048 keys take about 22,000 comparisons.
const SORT_RUN: usize = 2048;

/// A sort in steps of bounded work (DESIGN.md §10): runs of [`SORT_RUN`] keys are
/// sorted one per step, then merged by a heap over the runs' heads, a bounded number
/// of comparisons per step. O(n log n) in all, like one sort, never all at once.
#[derive(Debug)]
pub(super) struct StepSort {
    items: Vec<Ordered>,
    /// Runs `[start, end)` sorted so far (all of `items` once `merging`).
    runs_sorted: usize,
    /// Merge state: each run's next position and end, a heap of run indices by their
    /// head, and the items taken out in order so far (moved one at a time, so no
    /// step moves or frees them all).
    heads: Vec<(usize, usize)>,
    heap: Vec<usize>,
    merged: Vec<Ordered>,
    merging: bool,
    /// The keys are wanted with the result (THREAD groups by them).
    keep_keys: bool,
}

impl StepSort {
    fn new(items: Vec<Ordered>, keep_keys: bool) -> StepSort {
        StepSort {
            keep_keys,
            items,
            runs_sorted: 0,
            heads: Vec::new(),
            heap: Vec::new(),
            merged: Vec::new(),
            merging: false,
        }
    }

    /// Items already in the order wanted.
    fn done(items: Vec<Ordered>) -> StepSort {
        StepSort {
            merged: items,
            merging: true,
            ..StepSort::new(Vec::new(), false)
        }
    }

    fn runs(&self) -> usize {
        self.items.len().div_ceil(SORT_RUN)
    }

    /// Does one step's work; `true` when the order is complete.
    fn step(&mut self, compare: &dyn Fn(&Ordered, &Ordered) -> Ordering) -> bool {
        if !self.merging {
            let start = self.runs_sorted * SORT_RUN;
            let end = (start + SORT_RUN).min(self.items.len());
            if let Some(run) = self.items.get_mut(start..end) {
                run.sort_by(compare);
            }
            self.runs_sorted += 1;
            if self.runs_sorted < self.runs() {
                return false;
            }
            if self.runs() <= 1 {
                self.merged = std::mem::take(&mut self.items);
                return true;
            }
            self.merging = true;
            self.heads = (0..self.runs())
                .map(|r| (r * SORT_RUN, ((r + 1) * SORT_RUN).min(self.items.len())))
                .collect();
            self.heap = (0..self.runs()).collect();
            for i in (0..self.heap.len() / 2).rev() {
                self.sift_down(i, compare);
            }
            self.merged.reserve(self.items.len());
            return false;
        }
        let depth = usize::BITS - self.heap.len().leading_zeros();
        let pops = (SORT_STEP_COMPARISONS / (2 * depth.max(1) as usize)).max(1);
        for _ in 0..pops {
            let Some(&run) = self.heap.first() else {
                return true;
            };
            let Some(head) = self.heads.get_mut(run) else {
                return true;
            };
            if let Some(item) = self.items.get_mut(head.0) {
                // A key no longer compared is freed here, a step's worth at a time,
                // unless the caller needs it afterwards (THREAD).
                let key = std::mem::take(&mut item.key);
                self.merged.push(Ordered {
                    number: item.number,
                    seq: item.seq,
                    key: if self.keep_keys { key } else { Vec::new() },
                    referencing: item.referencing.take(),
                });
            }
            head.0 += 1;
            if head.0 >= head.1 {
                let last = self.heap.len() - 1;
                self.heap.swap(0, last);
                self.heap.pop();
            }
            self.sift_down(0, compare);
        }
        self.heap.is_empty()
    }

    /// The head of run `run`.
    fn head(&self, run: usize) -> Option<&Ordered> {
        self.heads.get(run).and_then(|h| self.items.get(h.0))
    }

    fn sift_down(&mut self, mut i: usize, compare: &dyn Fn(&Ordered, &Ordered) -> Ordering) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            for child in [l, r] {
                let less = match (self.heap.get(child), self.heap.get(least)) {
                    (Some(&c), Some(&m)) => match (self.head(c), self.head(m)) {
                        (Some(a), Some(b)) => compare(a, b) == Ordering::Less,
                        _ => false,
                    },
                    _ => false,
                };
                if less {
                    least = child;
                }
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// The items in order (call once `step` said so).
    fn into_sorted(self) -> Vec<Ordered> {
        self.merged
    }
}

/// THREAD=ORDEREDSUBJECT from matches ordered by (base subject, date, mailbox
/// order): one linear pass.
fn threads(sorted: Vec<Ordered>) -> String {
    let messages = sorted
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
    let messages: Vec<Threadable> = messages;
    sort::ordered_subject_of_sorted(&messages)
}

/// `* SORT n…`, or with RETURN the ESORT form (RFC 5267 §3.1: MIN and MAX are the
/// first and last in sort order, ALL lists them in sort order).
fn sort_reply(tag: &str, uid: bool, ret: &command::SearchReturn, numbers: &[u32]) -> String {
    use std::fmt::Write as _;
    if !ret.extended {
        let mut line = String::with_capacity(7 + numbers.len() * 7);
        line.push_str("* SORT");
        for n in numbers {
            let _ = write!(line, " {n}");
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
    if let Some(range) = ret.partial {
        line.push_str(&command::partial_reply(numbers, range));
    }
    line
}

/// THREAD=REFERENCES from what the matches kept.
fn reference_threads(matches: Vec<Ordered>) -> String {
    let messages: Vec<sort::Referencing> = matches
        .into_iter()
        .filter_map(|o| o.referencing.map(|r| *r))
        .collect();
    sort::references(&messages)
}

/// What THREAD=REFERENCES needs of one message (its number is the caller's): its
/// Message-ID, its References (or failing those its first In-Reply-To id), its
/// base subject, whether that is a reply, and its sent date.
fn referencing(
    entry: &MessageEntry,
    summary: Option<&Summary>,
    headers: &[u8],
) -> sort::Referencing {
    let env = summary.map(|s| &s.envelope);
    let first_id = |raw: Option<&str>| {
        raw.map(sort::message_ids)
            .and_then(|ids| ids.into_iter().next())
    };
    let mut references = render::header_value(headers, "References")
        .map(|r| sort::message_ids(&r))
        .unwrap_or_default();
    if references.is_empty() {
        references.extend(first_id(env.and_then(|e| e.in_reply_to.as_deref())));
    }
    let subject = env.and_then(|e| e.subject.as_deref()).unwrap_or("");
    sort::Referencing {
        number: 0,
        id: first_id(env.and_then(|e| e.message_id.as_deref())),
        references,
        subject: sort::base_subject(subject),
        is_reply: sort::is_reply(subject),
        date: sort::sent_date(summary, entry),
    }
}
