//! SEARCH and UID SEARCH (RFC 9051 §6.4.4, ESEARCH, CONDSTORE MODSEQ), answered in
//! steps of bounded work; matching itself is [`super::super::search`]'s.

use super::*;

impl Session {
    pub(super) fn search(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let parsed = command::search_args(args).and_then(|s| {
            // RFC 6855 §3: once UTF8=ACCEPT is on, text is UTF-8 and CHARSET is refused.
            if s.charset && self.utf8_accept {
                return Err("No CHARSET after ENABLE UTF8=ACCEPT (RFC 6855)".into());
            }
            Ok(s)
        });
        let SearchArgs { ret, key, .. } = match parsed {
            Ok(s) => s,
            Err(e) => {
                // A failed SEARCH leaves `$` empty (RFC 5182 §2.1).
                if let Some(sel) = self.selected.as_mut() {
                    sel.saved = SequenceSet::SAVED;
                }
                if e.starts_with("[BADCHARSET") {
                    out.line(&format!("{tag} NO {e}"));
                    return;
                }
                return self.bad(tag, &e, out);
            }
        };
        if ret.update && !uid {
            return self.bad(
                tag,
                "RETURN (UPDATE) needs UID SEARCH: sequence numbers change with every expunge",
                out,
            );
        }
        let job = SearchPending::new(tag, uid, ret, key, None);
        self.begin_search(job, store, out);
    }

    /// Starts a SEARCH, SORT or THREAD: `$` substituted, CONDSTORE enabled by a
    /// MODSEQ key, the range the key can match found, then the first step.
    pub(super) fn begin_search(
        &mut self,
        mut job: SearchPending,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        if let Some(sel) = &self.selected {
            job.key = with_saved(
                std::mem::replace(&mut job.key, command::SearchKey::All),
                &sel.saved,
            );
        }
        job.reads_message = search::reads_message(&job.key);
        job.with_modseq = search::uses_modseq(&job.key);
        if job.with_modseq {
            self.condstore_on(store, out);
        }
        if self.selected.is_none() {
            return;
        }
        if let (Some(sel), Some(mb)) = (&self.selected, self.mailbox(store)) {
            let view = View::new(mb, sel.at);
            (job.next, job.end) = search_bounds(&job.key, &view).unwrap_or((0, view.len()));
        }
        self.search_step(job, store, out);
    }

    /// Evaluates the key on messages `job.next + 1…` until the step's work
    /// (`SEARCH_STEP_UNITS`) is spent; the last step answers. Between steps other
    /// sessions may expunge: a message gone meanwhile simply does not match.
    pub(super) fn search_step(
        &mut self,
        mut job: SearchPending,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let (Some(sel), Some(mb)) = (&self.selected, self.mailbox(store)) else {
            out.line(&format!("{} OK SEARCH completed", job.tag));
            return;
        };
        let view = View::new(mb, sel.at);
        let largest_seq = view.len() as u32;
        let largest_uid = view.last_uid();
        let mut spent = 0;
        for (_, u) in view.iter_from(job.next) {
            if job.next >= job.end {
                break;
            }
            if spent >= SEARCH_STEP_UNITS {
                self.pending = Some(Pending::SearchSteps(job));
                return;
            }
            let seq = job.next as u32 + 1;
            job.next += 1;
            spent += 1;
            let Ok(at) = mb.messages.binary_search_by_key(&u, |m| m.uid) else {
                continue;
            };
            let Some(entry) = mb.messages.get(at) else {
                continue;
            };
            if job.reads_message {
                spent += entry.len as usize / 256;
            }
            let bytes = || store.bytes(entry);
            let summary = || store.summary(entry).ok();
            let mut candidate =
                Candidate::new(seq, entry, largest_seq, largest_uid, &bytes, &summary);
            candidate.recent = sel.recent.contains(entry.uid);
            candidate.now = self.now;
            if search::matches(&job.key, &candidate) {
                spent += job.record(seq, entry, &candidate);
            }
        }
        self.finish_search(job, store, out);
    }

    /// The last step of a SEARCH (or the hand-over of a SORT's or THREAD's matches to
    /// their ordering): `$` saved, the answer, the live result kept.
    fn finish_search(&mut self, job: SearchPending, store: &dyn Mailstore, out: &mut Outbox) {
        let SearchPending {
            tag,
            uid,
            ret,
            key,
            with_modseq,
            hits,
            hit_uids,
            hit_modseqs,
            highest,
            order,
            ordered,
            ..
        } = job;
        if let Some(order) = order {
            let max = self.config.thread_messages_max;
            if order.is_thread() && ordered.len() > max {
                // Threading's last pass is one step: bounded by the operator's limit.
                out.line(&format!(
                    "{tag} NO [LIMIT] THREAD over {} messages; at most {max} \
                     (limits.imap_thread_messages_max): narrow the search",
                    ordered.len()
                ));
                return;
            }
            let job = sort_command::SortJob::new(tag, uid, ret, order, ordered, key);
            return self.sort_step(job, store, out);
        }
        if ret.save {
            if let Some(sel) = self.selected.as_mut() {
                sel.saved = saved_result(&ret, hit_uids);
            }
        }
        if !ret.save_only() {
            let extended = ret.extended || self.rev2;
            let modseq = with_modseq.then(|| reported_modseq(&ret, &hit_modseqs, highest));
            out.line(&search_reply(&tag, uid, &ret, extended, &hits, modseq));
        }
        self.update(store, out, uid, &HashSet::new());
        let refused = if ret.update {
            let live = context::LiveSearch::search(tag.clone(), ret, key, hits);
            self.keep_live(live)
        } else {
            None
        };
        match refused {
            Some(code) => out.line(&format!("{tag} OK {code}")),
            None => out.line(&format!("{tag} OK SEARCH completed")),
        }
    }
}

impl SearchPending {
    /// Keeps what a match contributes to the answer; returns the extra work units it
    /// cost (a SORT key that read the envelope or the header block).
    fn record(&mut self, seq: u32, entry: &MessageEntry, candidate: &Candidate<'_>) -> usize {
        let number = if self.uid { entry.uid } else { seq };
        if let Some(order) = &self.order {
            // SORT and THREAD keep each match's key; an envelope read from the log
            // costs like reading a bit of text.
            let mut spent = 0;
            let summary = if order.needs_summary() {
                spent += 4;
                candidate.summary()
            } else {
                None
            };
            let headers = if order.needs_headers() {
                let h = candidate.header_block();
                spent += h.len() / 256;
                h
            } else {
                &[]
            };
            self.ordered
                .push(order.item(number, seq, entry, summary, headers));
            return spent;
        }
        self.hits.push(number);
        self.highest = self.highest.max(entry.modseq);
        if self.ret.save {
            self.hit_uids.push(entry.uid);
        }
        if self.with_modseq {
            self.hit_modseqs.push(entry.modseq);
        }
        0
    }
}

/// What SEARCH RETURN (SAVE …) keeps as `$`: with only MIN and/or MAX, only those
/// (RFC 5182 §2.1), else every match.
fn saved_result(ret: &command::SearchReturn, hit_uids: Vec<u32>) -> SequenceSet {
    let ends = (ret.min || ret.max) && !(ret.all || ret.count);
    if !ends {
        return SequenceSet::from_sorted(&hit_uids);
    }
    let mut v: Vec<u32> = [
        hit_uids.first().filter(|_| ret.min),
        hit_uids.last().filter(|_| ret.max),
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    v.dedup();
    SequenceSet::from_sorted(&v)
}

/// The MODSEQ a SEARCH with a MODSEQ key reports: with only MIN and/or MAX, that
/// of the returned message(s), not of every match (RFC 7162 §3.1.5).
fn reported_modseq(ret: &command::SearchReturn, hit_modseqs: &[u64], highest: u64) -> u64 {
    let only_ends = ret.extended && !ret.all && !ret.count;
    if !only_ends {
        return highest;
    }
    let first = hit_modseqs.first().copied().filter(|_| ret.min);
    let last = hit_modseqs.last().copied().filter(|_| ret.max);
    first.max(last).unwrap_or(highest)
}

/// `* SEARCH …` or, for RETURN or IMAP4rev2, `* ESEARCH …`.
fn search_reply(
    tag: &str,
    uid: bool,
    ret: &command::SearchReturn,
    extended: bool,
    hits: &[u32],
    modseq: Option<u64>,
) -> String {
    use std::fmt::Write as _;
    let modseq = modseq.filter(|_| !hits.is_empty());
    if !extended {
        let mut line = String::from("* SEARCH");
        for h in hits {
            let _ = write!(line, " {h}");
        }
        if let Some(m) = modseq {
            let _ = write!(line, " (MODSEQ {m})");
        }
        return line;
    }
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    let all = ret.all || !ret.extended;
    if let (Some(first), Some(last)) = (hits.first(), hits.last()) {
        if ret.min {
            let _ = write!(line, " MIN {first}");
        }
        if ret.max {
            let _ = write!(line, " MAX {last}");
        }
        if all {
            let _ = write!(line, " ALL {}", SequenceSet::compact(hits));
        }
    }
    if ret.count {
        let _ = write!(line, " COUNT {}", hits.len());
    }
    if let Some(range) = ret.partial {
        line.push_str(&command::partial_reply(hits, range));
    }
    if let Some(m) = modseq {
        let _ = write!(line, " MODSEQ {m}");
    }
    line
}

/// The index range `[start, end)` of the view a SEARCH key can match at all, from
/// its UID and sequence sets (through AND); `None` if it is not bounded.
pub(super) fn search_bounds(key: &command::SearchKey, view: &View<'_>) -> Option<(usize, usize)> {
    use command::SearchKey;
    match key {
        SearchKey::Uid(set) => {
            let ranges = set.ranges(view.last_uid());
            let (lo, hi) = (ranges.first()?.0, ranges.last()?.1);
            Some((view.count_below(lo), view.count_below(hi.saturating_add(1))))
        }
        SearchKey::Seq(set) => {
            let ranges = set.ranges(view.len() as u32);
            let (lo, hi) = (ranges.first()?.0, ranges.last()?.1);
            Some((lo.max(1) as usize - 1, (hi as usize).min(view.len())))
        }
        SearchKey::And(keys) => keys
            .iter()
            .filter_map(|k| search_bounds(k, view))
            .reduce(|a, b| (a.0.max(b.0), a.1.min(b.1))),
        _ => None,
    }
}

/// `key` with every `$` (RFC 5182) replaced by the saved UIDs.
fn with_saved(key: command::SearchKey, saved: &SequenceSet) -> command::SearchKey {
    use command::SearchKey;
    match key {
        SearchKey::Seq(set) | SearchKey::Uid(set) if set.is_saved() => {
            SearchKey::Uid(saved.clone())
        }
        SearchKey::Not(k) => SearchKey::Not(Box::new(with_saved(*k, saved))),
        SearchKey::Or(a, b) => SearchKey::Or(
            Box::new(with_saved(*a, saved)),
            Box::new(with_saved(*b, saved)),
        ),
        SearchKey::And(keys) => {
            SearchKey::And(keys.into_iter().map(|k| with_saved(k, saved)).collect())
        }
        other => other,
    }
}
