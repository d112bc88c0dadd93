//! `\Recent` for IMAP4rev1 sessions (RFC 3501 §2.3.2): which of the selected
//! mailbox's messages this session was the first to see. A read-write SELECT, and
//! every later report of new messages, claims the mailbox's unclaimed UIDs
//! ([`MailboxIndex::claim_recent`]) so no other session sees them as recent; EXAMINE
//! shows them without claiming (RFC 3501 §6.3.2). IMAP4rev2 has no `\Recent`, so a
//! session that enabled it claims nothing. Memory per session is bounded: at most
//! [`RANGES_MAX`] UID ranges, the oldest forgotten first.

use crate::store::index::MailboxIndex;

/// UID ranges kept per session: claims made at different times by different
/// sessions interleave, so one range per report of new mail.
const RANGES_MAX: usize = 32;

/// The UIDs this session shows as recent: `[from, to)` ranges, oldest first.
#[derive(Debug, Default, Clone)]
pub(super) struct Recent {
    ranges: Vec<(u32, u32)>,
}

impl Recent {
    /// Takes (or, read-only, looks at) what no session has seen yet.
    pub(super) fn take_new(&mut self, mb: &MailboxIndex, read_only: bool) {
        let from = if read_only {
            mb.recent_from()
        } else {
            mb.claim_recent()
        };
        let to = mb.uid_next;
        if from >= to {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if last.1 == from || (read_only && last.0 <= from) {
                // Adjacent to the previous claim, or (read-only) the same unclaimed run.
                last.1 = last.1.max(to);
                return;
            }
        }
        if self.ranges.len() == RANGES_MAX {
            self.ranges.remove(0);
        }
        self.ranges.push((from, to));
    }

    pub(super) fn contains(&self, uid: u32) -> bool {
        self.ranges
            .iter()
            .any(|&(from, to)| (from..to).contains(&uid))
    }

    /// Messages of `mb` this session shows as recent: O(ranges × log n).
    pub(super) fn count(&self, mb: &MailboxIndex) -> usize {
        self.ranges
            .iter()
            .map(|&(from, to)| {
                let start = mb.messages.partition_point(|m| m.uid < from);
                let end = mb.messages.partition_point(|m| m.uid < to);
                end - start
            })
            .sum()
    }
}
