//! The writes a session asks of the store and how they end: [`Write`] (the store's own
//! `Change`, with APPEND's message bytes), [`Written`] and [`WriteFailure`] (what
//! comes back), and [`Session::written`], which completes the command that waited for
//! it. A tagged OK for a change is produced
//! here and only here, after the IO layer reports it durable. No IO.

use super::*;

/// A durable change to the account: the store's own [`Change`] (one definition of
/// each change, planned by `store::change`), and for APPEND the messages' bytes, which
/// the IO layer spools and summarizes first.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub change: Change,
    pub bodies: Option<Bodies>,
}

impl From<Change> for Write {
    fn from(change: Change) -> Write {
        Write {
            change,
            bodies: None,
        }
    }
}

impl Write {
    /// The store's change, and APPEND's messages.
    pub fn into_change(self) -> (Change, Option<Bodies>) {
        (self.change, self.bodies)
    }
}

/// APPEND's messages on their way to the store: their bytes back to back (the IO layer
/// finishes spooling them) and each one's length, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bodies {
    pub bytes: crate::proto::Incoming,
    pub lengths: Vec<u64>,
}

impl Bodies {
    /// Each message's byte range within the whole body of `len` bytes (once spooled),
    /// in order; a body shorter than the lengths say ends the last ranges early.
    pub fn ranges(lengths: &[u64], len: usize) -> Vec<std::ops::Range<usize>> {
        let mut at = 0usize;
        lengths
            .iter()
            .map(|&n| {
                let end = at.saturating_add(n as usize).min(len);
                let range = at..end;
                at = end;
                range
            })
            .collect()
    }
}

impl From<Outcome> for Written {
    fn from(o: Outcome) -> Written {
        match o {
            Outcome::Done => Written::Done,
            Outcome::Appended { uids } => Written::Appended { uids },
            Outcome::Stored(s) => Written::Stored(s),
            Outcome::Copied(c) => Written::Copied(c),
        }
    }
}

/// The outcome of a [`Write`].
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Done,
    /// The new messages' UIDs, in order.
    Appended {
        uids: Vec<u32>,
    },
    /// (UID, new MODSEQ) of each message changed.
    Stored(Vec<(u32, u64)>),
    /// (source UID, new UID) pairs.
    Copied(Vec<(u32, u32)>),
    /// The change was not made.
    Failed(WriteFailure),
}

/// Why a [`Write`] was not made, as the client hears it. The IO layer logs the
/// details (file names, OS errors); none of them reach the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// The disk (or `store.reserve_free_bytes`) has no room for new data; the change
    /// can be retried once space is freed (RFC 5530 `OVERQUOTA`).
    NoSpace,
    /// The request conflicts with the mailbox state (it exists already, was deleted
    /// meanwhile, a limit); the text is ours, for the client.
    Cannot(String),
    /// The store failed temporarily (RFC 5530 `UNAVAILABLE`).
    Unavailable,
}

impl WriteFailure {
    /// The `NO` response after the tag.
    pub fn response(&self) -> String {
        match self {
            WriteFailure::NoSpace => {
                "NO [OVERQUOTA] Not enough disk space on the server; try again later".into()
            }
            WriteFailure::Cannot(text) => format!("NO [CANNOT] {text}"),
            WriteFailure::Unavailable => {
                "NO [UNAVAILABLE] Temporary server failure; try again later".into()
            }
        }
    }
}

impl Session {
    /// A [`Write`] finished (durably, or not at all).
    // Longer than ~80 lines: one arm per kind of write being completed.
    pub fn written(&mut self, result: Written, store: &dyn Mailstore, out: &mut Outbox) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if let Written::Failed(failure) = &result {
            let tag = match &pending {
                Pending::StartTls | Pending::Compress { .. } => return,
                Pending::Login { tag }
                | Pending::Simple { tag, .. }
                | Pending::Create { tag, .. }
                | Pending::Append { tag, .. }
                | Pending::Copy { tag, .. }
                | Pending::Expunge { tag, .. }
                | Pending::Delete { tag, .. } => tag.clone(),
                Pending::Store(p) => p.tag.clone(),
                Pending::Fetch(p) => p.tag.clone(),
                Pending::List(_)
                | Pending::FetchSteps(_)
                | Pending::SearchSteps(_)
                | Pending::SortSteps(_) => return,
            };
            out.line(&format!("{tag} {}", failure.response()));
            return;
        }
        match pending {
            Pending::StartTls
            | Pending::Compress { .. }
            | Pending::Login { .. }
            | Pending::List(_)
            | Pending::FetchSteps(_)
            | Pending::SearchSteps(_)
            | Pending::SortSteps(_) => {}
            Pending::Simple { tag, done } => {
                self.update(store, out, true, &HashSet::new());
                out.line(&format!("{tag} OK {done}"));
            }
            Pending::Create { tag, name } => {
                self.update(store, out, true, &HashSet::new());
                match store.account().and_then(|a| a.mailbox(&name)) {
                    Some(mb) => out.line(&format!(
                        "{tag} OK [MAILBOXID ({})] CREATE completed",
                        mb.object_id()
                    )),
                    None => out.line(&format!("{tag} OK CREATE completed")),
                }
            }
            Pending::Delete { tag, mailbox } => {
                if self.selected_mailbox() == Some(mailbox) {
                    self.selected = None;
                    out.line("* OK [CLOSED] Mailbox deleted");
                }
                out.line(&format!("{tag} OK DELETE completed"));
            }
            Pending::Append { tag, uidvalidity } => {
                self.update(store, out, true, &HashSet::new());
                match result {
                    Written::Appended { uids } => out.line(&format!(
                        "{tag} OK [APPENDUID {uidvalidity} {}] APPEND completed",
                        SequenceSet::compact(&uids)
                    )),
                    _ => out.line(&format!("{tag} OK APPEND completed")),
                }
            }
            Pending::Store(p) => {
                let changed = match &result {
                    Written::Stored(c) => c.clone(),
                    _ => Vec::new(),
                };
                self.finish_store(p, &changed, store, out);
            }
            Pending::Fetch(p) => self.fetch_step(p, store, out),
            Pending::Copy {
                tag,
                uid,
                moving,
                uidvalidity,
            } => {
                let pairs = match result {
                    Written::Copied(p) => p,
                    _ => Vec::new(),
                };
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                    let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
                    format!(
                        "[COPYUID {uidvalidity} {} {}] ",
                        join_uids(&src),
                        join_uids(&dst)
                    )
                };
                if moving {
                    if !code.is_empty() {
                        out.line(&format!("* OK {code}Moved"));
                    }
                    self.update(store, out, true, &HashSet::new());
                    out.line(&format!("{tag} OK MOVE completed"));
                } else {
                    self.update(store, out, uid, &HashSet::new());
                    out.line(&format!("{tag} OK {code}COPY completed"));
                }
            }
            Pending::Expunge { tag, closing } => {
                if closing {
                    self.selected = None;
                    out.line(&format!("{tag} OK CLOSE completed"));
                } else {
                    self.update(store, out, true, &HashSet::new());
                    out.line(&format!("{tag} OK EXPUNGE completed"));
                }
            }
        }
    }
}
