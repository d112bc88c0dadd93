//! A selected mailbox as one session sees it: its sequence numbers and UIDs, without a
//! copy of the mailbox's UID list.
//!
//! A session sees every message of the mailbox up to the last UID it was told of
//! (`known_last`), plus **ghosts**: messages expunged (by anyone) after the last time
//! it reported expunges (`expunges_seen`, a MODSEQ). Ghosts keep their sequence
//! numbers until the session may announce them (RFC 9051 §7.5.1: not during FETCH,
//! STORE or SEARCH). Both halves come from the store — the UID-ordered messages and
//! the mailbox's expunge tombstones — so SELECT costs nothing per message, a lookup
//! O(log n) plus the ghosts, and a session holds no per-message memory. Must never
//! materialize the mailbox's UIDs.

use crate::store::index::{MailboxIndex, MessageEntry};

/// What a session has been told about its selected mailbox.
#[derive(Debug, Clone, Copy)]
pub struct Viewpoint {
    /// The largest UID announced (by SELECT's EXISTS or a later one).
    pub known_last: u32,
    /// Expunges with a MODSEQ up to this one have been announced.
    pub expunges_seen: u64,
}

impl Viewpoint {
    /// Everything the mailbox holds now, announced.
    pub fn current(mb: &MailboxIndex) -> Viewpoint {
        Viewpoint {
            known_last: mb.messages.last().map_or(0, |m| m.uid),
            expunges_seen: mb.highest_modseq,
        }
    }

    /// Whether the tombstones still cover this viewpoint (compaction may drop old
    /// ones; a session older than them can no longer number its messages).
    pub fn is_reconstructible(&self, mb: &MailboxIndex) -> bool {
        mb.expunged_since(self.expunges_seen).is_some()
    }
}

/// The session's messages, numbered: `index` `i` is sequence number `i + 1`.
pub struct View<'a> {
    /// The mailbox's messages with a UID up to `known_last`.
    messages: &'a [MessageEntry],
    /// UIDs up to `known_last` expunged since `expunges_seen`, sorted.
    ghosts: Vec<u32>,
}

impl<'a> View<'a> {
    pub fn new(mb: &'a MailboxIndex, at: Viewpoint) -> View<'a> {
        let end = mb.messages.partition_point(|m| m.uid <= at.known_last);
        let mut ghosts: Vec<u32> = mb
            .expunged_since(at.expunges_seen)
            .unwrap_or(&[])
            .iter()
            .map(|t| t.1)
            .filter(|u| *u <= at.known_last)
            .collect();
        ghosts.sort_unstable();
        ghosts.dedup();
        View {
            messages: mb.messages.get(..end).unwrap_or(&[]),
            ghosts,
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len() + self.ghosts.len()
    }

    /// The largest UID in the view (what `*` means in a UID set).
    pub fn last_uid(&self) -> u32 {
        let present = self.messages.last().map_or(0, |m| m.uid);
        present.max(self.ghosts.last().copied().unwrap_or(0))
    }

    /// The index of `uid` in the view (sequence number minus one).
    pub fn index_of(&self, uid: u32) -> Option<usize> {
        match self.ghosts.binary_search(&uid) {
            Ok(g) => Some(g + self.messages.partition_point(|m| m.uid < uid)),
            Err(g) => self
                .messages
                .binary_search_by_key(&uid, |m| m.uid)
                .ok()
                .map(|at| at + g),
        }
    }

    /// How many of the view's UIDs are below `uid`.
    pub fn count_below(&self, uid: u32) -> usize {
        self.messages.partition_point(|m| m.uid < uid) + self.ghosts.partition_point(|g| *g < uid)
    }

    /// The view's (index, UID) pairs from index `start` on, in order.
    pub fn iter_from(&self, start: usize) -> Walk<'_> {
        // Ghosts among the first `start` entries: ghost `g` sits at index
        // `g + (messages below it)`, which grows with `g`.
        let ghosts_before = partition_point_by(self.ghosts.len(), |g| {
            let uid = self.ghosts.get(g).copied().unwrap_or(u32::MAX);
            g + self.messages.partition_point(|m| m.uid < uid) < start
        });
        Walk {
            view: self,
            message: start.saturating_sub(ghosts_before),
            ghost: ghosts_before,
        }
    }

    /// (index, UID) of every ghost, in order: what an expunge report announces.
    pub fn ghosts(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.ghosts
            .iter()
            .enumerate()
            .map(|(g, uid)| (g + self.messages.partition_point(|m| m.uid < *uid), *uid))
    }
}

/// The first `i` in `0..len` for which `below(i)` is false (`below` is monotone).
fn partition_point_by(len: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Walks a [`View`] in order, merging its messages and ghosts.
pub struct Walk<'v> {
    view: &'v View<'v>,
    message: usize,
    ghost: usize,
}

impl Iterator for Walk<'_> {
    type Item = (usize, u32);

    fn next(&mut self) -> Option<(usize, u32)> {
        let index = self.message + self.ghost;
        let m = self.view.messages.get(self.message).map(|m| m.uid);
        let g = self.view.ghosts.get(self.ghost).copied();
        let uid = match (m, g) {
            (Some(m), Some(g)) if g < m => {
                self.ghost += 1;
                g
            }
            (Some(m), _) => {
                self.message += 1;
                m
            }
            (None, Some(g)) => {
                self.ghost += 1;
                g
            }
            (None, None) => return None,
        };
        Some((index, uid))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::store::index::{BlobCache, Index, Op};

    /// A mailbox with UIDs 1..=n, then `expunged` removed (each its own MODSEQ).
    fn mailbox(n: u32, expunged: &[u32]) -> Index {
        let mut index = Index::default();
        let mut blobs = BlobCache::default();
        let mut ops = vec![
            Op::MailboxCreate {
                account: 1,
                id: 1,
                uidvalidity: 1,
                special: crate::store::SpecialUse::Inbox,
                name: "INBOX".into(),
            },
            Op::Blob {
                blob: 0,
                offset: 0,
                len: 1,
            },
        ];
        for uid in 1..=n {
            ops.push(Op::Append {
                account: 1,
                mailbox: 1,
                uid,
                modseq: u64::from(uid),
                internal_date: 0,
                flags: 0,
                blob: 0,
                keywords: Vec::new(),
                save_date: 0,
                resolved: None,
            });
        }
        for (i, uid) in expunged.iter().enumerate() {
            ops.push(Op::Expunge {
                account: 1,
                mailbox: 1,
                uid: *uid,
                modseq: u64::from(n) + 1 + i as u64,
            });
        }
        for op in ops {
            index.apply(op, &mut blobs).expect("applies");
        }
        index
    }

    #[test]
    fn ghosts_keep_their_sequence_numbers_until_announced() {
        let before = mailbox(10, &[]);
        let at = Viewpoint::current(before.accounts[&1].mailbox_by_id(1).expect("mb"));
        let after = mailbox(10, &[3, 7, 10]);
        let mb = after.accounts[&1].mailbox_by_id(1).expect("mb");
        let view = View::new(mb, at);
        let all: Vec<(usize, u32)> = view.iter_from(0).collect();
        let expected: Vec<(usize, u32)> = (0..10).map(|i| (i, i as u32 + 1)).collect();
        assert_eq!(all, expected);
        assert_eq!(view.len(), 10);
        assert_eq!(view.last_uid(), 10);
        for (i, uid) in &expected {
            assert_eq!(view.index_of(*uid), Some(*i));
            assert_eq!(view.iter_from(*i).next(), Some((*i, *uid)));
        }
        assert_eq!(view.count_below(8), 7);
        assert_eq!(
            view.ghosts().collect::<Vec<_>>(),
            vec![(2, 3), (6, 7), (9, 10)]
        );
        // Once announced, the view is what the mailbox holds.
        let now = View::new(mb, Viewpoint::current(mb));
        let uids: Vec<u32> = now.iter_from(0).map(|(_, u)| u).collect();
        assert_eq!(uids, vec![1, 2, 4, 5, 6, 8, 9]);
        assert_eq!(now.index_of(3), None);
        assert_eq!(now.iter_from(7).next(), None);
    }

    proptest::proptest! {
        /// Against the obvious model: the UIDs the session knew, minus nothing (ghosts
        /// stay until announced), in order.
        #[test]
        fn the_view_numbers_like_a_copied_uid_list(
            n in 0u32..60,
            gone_before in proptest::collection::vec(1u32..60, 0..10),
            gone_after in proptest::collection::vec(1u32..80, 0..20),
        ) {
            let gone_before: Vec<u32> = dedup(gone_before.into_iter().filter(|u| *u <= n).collect());
            let earlier = mailbox(n, &gone_before);
            let at = Viewpoint::current(earlier.accounts[&1].mailbox_by_id(1).expect("mb"));
            let mut all_gone = gone_before.clone();
            all_gone.extend(gone_after.into_iter().filter(|u| *u <= n && !gone_before.contains(u)));
            let all_gone = dedup_keep_order(all_gone);
            let later = mailbox(n, &all_gone);
            let view = View::new(later.accounts[&1].mailbox_by_id(1).expect("mb"), at);
            let model: Vec<u32> = (1..=n).filter(|u| !gone_before.contains(u)).collect();
            proptest::prop_assert_eq!(view.len(), model.len());
            proptest::prop_assert_eq!(view.last_uid(), model.last().copied().unwrap_or(0));
            for start in 0..=model.len() {
                let walked: Vec<u32> = view.iter_from(start).map(|(_, u)| u).collect();
                proptest::prop_assert_eq!(&walked[..], &model[start..]);
            }
            for uid in 0..=n + 1 {
                proptest::prop_assert_eq!(view.index_of(uid), model.iter().position(|u| *u == uid));
                proptest::prop_assert_eq!(view.count_below(uid), model.iter().filter(|u| **u < uid).count());
            }
        }
    }

    fn dedup(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v.dedup();
        v
    }

    fn dedup_keep_order(v: Vec<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        for u in v {
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }
}
