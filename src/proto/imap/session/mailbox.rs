//! SELECT/EXAMINE (with CONDSTORE and QRESYNC resynchronisation), CREATE, DELETE,
//! RENAME and STATUS: the commands that name a mailbox. Writes go out as
//! [`Action::Write`]; nothing here touches the store directly.

use super::*;

impl Session {
    // Longer than ~80 lines: the SELECT response, line by line in RFC 9051 §6.3.2 order.
    pub(super) fn select(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        read_only: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let params = match command::select_args(args) {
            Ok(p) => p,
            Err(e) => return self.bad(tag, &e, out),
        };
        if params.qresync.is_some() && !self.qresync {
            return self.bad(tag, "QRESYNC must be enabled first (ENABLE QRESYNC)", out);
        }
        if self.selected.take().is_some() {
            out.line("* OK [CLOSED] Previous mailbox closed");
        }
        let Some(mb) = store
            .account()
            .and_then(|a| a.mailbox(&normalize(&self.stored_name(params.mailbox.clone()))))
        else {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
            return;
        };
        if params.condstore {
            self.condstore = true;
        }
        let at = Viewpoint::current(mb);
        let keywords = mb.keywords.clone();
        let room = keywords.len() < self.config.keywords_per_mailbox_max;
        flags_lines(out, &keywords, read_only, room);
        out.line(&format!("* {} EXISTS", mb.messages.len()));
        let mut recent = recent::Recent::default();
        if !self.rev2 {
            recent.take_new(mb, read_only);
            out.line(&format!("* {} RECENT", recent.count(mb)));
            let first_unseen = match mb.counts.unseen {
                0 => None,
                _ => mb.messages.iter().position(|m| m.flags & flags::SEEN == 0),
            };
            if let Some(first) = first_unseen {
                out.line(&format!("* OK [UNSEEN {}] First unseen", first + 1));
            }
        }
        if self.rev2 {
            // IMAP4rev2 requires the mailbox's LIST response (its canonical name).
            let attrs: Vec<&str> = special_use_attr(mb.special_use).into_iter().collect();
            self.list_line(out, "LIST", &mb.name, &attrs, None);
        }
        out.line(&format!("* OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        out.line(&format!("* OK [MAILBOXID ({})] Ok", mb.object_id()));
        out.line(&format!(
            "* OK [UIDNEXT {}] Predicted next UID",
            mb.uid_next
        ));
        out.line(&format!(
            "* OK [HIGHESTMODSEQ {}] Highest",
            mb.highest_modseq
        ));
        if let Some(q) = &params.qresync {
            if q.uidvalidity == mb.uidvalidity {
                let vanished = vanished_since(mb, q.modseq, q.known_uids.as_ref());
                if !vanished.is_empty() {
                    out.line(&format!(
                        "* VANISHED (EARLIER) {}",
                        SequenceSet::compact(&vanished)
                    ));
                }
                for m in changed_since(mb, q.modseq) {
                    let Ok(i) = mb.messages.binary_search_by_key(&m.uid, |e| e.uid) else {
                        continue;
                    };
                    let flags = m.flags | recent_bit(&recent, m.uid);
                    flags_update(out, i + 1, m, flags, true, true);
                }
            }
        }
        self.selected = Some(Selected {
            id: mb.id,
            read_only,
            at,
            reported_modseq: mb.highest_modseq,
            keywords,
            recent,
            saved: SequenceSet::SAVED,
            live: Vec::new(),
        });
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        out.line(&format!("{tag} OK [{mode}] {verb} completed"));
    }

    pub(super) fn mailbox_arg(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        what: &str,
        out: &mut Outbox,
    ) -> Option<String> {
        match self.mailbox_name(args.first()) {
            Some(m) => Some(normalize(&m)),
            None => {
                self.bad(tag, &format!("{what} needs a mailbox name"), out);
                None
            }
        }
    }

    pub(super) fn create(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(name) = self.mailbox_arg(tag, args, "CREATE", out) else {
            return;
        };
        let special = match args.get(1..).unwrap_or(&[]) {
            [] => SpecialUse::None,
            [Token::List(options)] => match create_use(options) {
                Ok(special) => special,
                Err(CreateUse::Unsupported(why)) => {
                    // RFC 6154 §5.1: a special use that cannot be set refuses the CREATE.
                    out.line(&format!("{tag} NO [USEATTR] {why}"));
                    return;
                }
                Err(CreateUse::Syntax) => {
                    return self.bad(tag, "CREATE options are (USE (attributes))", out)
                }
            },
            _ => return self.bad(tag, "CREATE takes a mailbox name (and USE options)", out),
        };
        let exists = |n: &str| {
            store.account().is_some_and(|a| a.mailbox(n).is_some())
                || DEFAULT_MAILBOXES.iter().any(|(d, _)| mailbox_name_eq(d, n))
        };
        if exists(&name) {
            out.line(&format!("{tag} NO [ALREADYEXISTS] Mailbox already exists"));
            return;
        }
        // Superior names are created too (RFC 9051 §6.3.4).
        let mut names = Vec::new();
        let mut prefix = String::new();
        for (i, level) in name.split(DELIMITER).enumerate() {
            if i > 0 {
                prefix.push(DELIMITER);
            }
            prefix.push_str(level);
            if !exists(&prefix) {
                names.push(prefix.clone());
            }
        }
        if !self.check_new_names(tag, &name, names.len(), store.account(), out) {
            return;
        }
        self.pending = Some(Pending::Create {
            tag: tag.to_string(),
            name,
        });
        out.actions
            .push(Action::Write(Change::Create { names, special }.into()));
    }

    pub(super) fn delete(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(name) = self.mailbox_arg(tag, args, "DELETE", out) else {
            return;
        };
        let Some(mb) = store.account().and_then(|a| a.mailbox(&name)) else {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
            return;
        };
        if mb.is_default() {
            out.line(&format!(
                "{tag} NO [CANNOT] {} is a default mailbox and cannot be deleted",
                mb.name
            ));
            return;
        }
        self.pending = Some(Pending::Delete {
            tag: tag.to_string(),
            mailbox: mb.id,
        });
        out.actions
            .push(Action::Write(Change::Delete { mailbox: mb.id }.into()));
    }

    pub(super) fn rename(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let (Some(from), Some(to)) = (
            self.mailbox_name(args.first()),
            self.mailbox_name(args.get(1)),
        ) else {
            return self.bad(tag, "RENAME needs two mailbox names", out);
        };
        let (from, to) = (normalize(&from), normalize(&to));
        let Some(account) = store.account() else {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
            return;
        };
        let Some(mb) = account.mailbox(&from) else {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
            return;
        };
        // Renaming INBOX creates a mailbox; other renames keep the count.
        let adding = usize::from(mb.special_use == SpecialUse::Inbox);
        if !self.check_new_names(tag, &to, adding, Some(account), out) {
            return;
        }
        if account.mailbox(&to).is_some()
            || DEFAULT_MAILBOXES
                .iter()
                .any(|(d, _)| mailbox_name_eq(d, &to))
        {
            out.line(&format!("{tag} NO [ALREADYEXISTS] Target mailbox exists"));
            return;
        }
        self.pending = Some(Pending::Simple {
            tag: tag.to_string(),
            done: "RENAME completed",
        });
        if mb.special_use == SpecialUse::Inbox {
            // INBOX stays, empty; its messages move to the new name (RFC 9051 §6.3.6).
            out.actions
                .push(Action::Write(Change::RenameInbox { to }.into()));
            return;
        }
        if mb.is_default() {
            self.pending = None;
            out.line(&format!(
                "{tag} NO [CANNOT] {} is a default mailbox and cannot be renamed",
                mb.name
            ));
            return;
        }
        let child_prefix = format!("{}{DELIMITER}", mb.name);
        let mut renames = vec![(mb.id, to.clone())];
        for m in &account.mailboxes {
            if let Some(rest) = m.name.strip_prefix(&child_prefix) {
                renames.push((m.id, format!("{to}{DELIMITER}{rest}")));
            }
        }
        out.actions
            .push(Action::Write(Change::Rename { renames }.into()));
    }

    pub(super) fn status(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(name) = self.mailbox_name(args.first()) else {
            return self.bad(tag, "STATUS needs a mailbox name", out);
        };
        let items = match args.get(1) {
            Some(Token::List(items)) => command::status_items(items),
            _ => Err("STATUS needs a list of items".into()),
        };
        let items = match items {
            Ok(i) => i,
            Err(e) => return self.bad(tag, &e, out),
        };
        let Some(mb) = store.account().and_then(|a| a.mailbox(&normalize(&name))) else {
            out.line(&format!("{tag} NO [NONEXISTENT] No such mailbox"));
            return;
        };
        status_line(out, &self.shown_name(&mb.name), mb, &items);
        out.line(&format!("{tag} OK STATUS completed"));
    }
}

/// Why a CREATE's USE option was refused.
enum CreateUse {
    /// `NO [USEATTR]` with this text.
    Unsupported(&'static str),
    Syntax,
}

/// The special use a `CREATE name (USE (attr))` asks for (RFC 6154 §3): one of the
/// attributes a mailbox can carry here; `\All` and `\Flagged` are virtual
/// mailboxes, which this store does not have.
fn create_use(options: &[Token<'_>]) -> Result<SpecialUse, CreateUse> {
    let [Token::Atom(word), Token::List(attrs)] = options else {
        return Err(CreateUse::Syntax);
    };
    if !word.eq_ignore_ascii_case("USE") {
        return Err(CreateUse::Syntax);
    }
    let mut special = SpecialUse::None;
    for attr in attrs {
        let Some(name) = attr.as_str() else {
            return Err(CreateUse::Syntax);
        };
        let this =
            match name.to_ascii_lowercase().as_str() {
                "\\sent" => SpecialUse::Sent,
                "\\drafts" => SpecialUse::Drafts,
                "\\trash" => SpecialUse::Trash,
                "\\junk" => SpecialUse::Junk,
                "\\archive" => SpecialUse::Archive,
                "\\all" | "\\flagged" => return Err(CreateUse::Unsupported(
                    "\\All and \\Flagged are virtual mailboxes, which this server does not have",
                )),
                _ => {
                    return Err(CreateUse::Unsupported(
                        "Unknown special-use attribute (RFC 6154 defines the valid ones)",
                    ))
                }
            };
        if special != SpecialUse::None && special != this {
            return Err(CreateUse::Unsupported(
                "A mailbox carries one special-use attribute here",
            ));
        }
        special = this;
    }
    Ok(special)
}

/// `* STATUS name (…)`; `name` as the session shows it ([`Session::shown_name`]).
pub(super) fn status_line(out: &mut Outbox, name: &str, mb: &MailboxIndex, items: &[StatusItem]) {
    let mut fields = Vec::new();
    for item in items {
        fields.push(match item {
            StatusItem::Messages => format!("MESSAGES {}", mb.messages.len()),
            StatusItem::UidNext => format!("UIDNEXT {}", mb.uid_next),
            StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
            // Kept by the index as messages change: no scan of the mailbox.
            StatusItem::Unseen => format!("UNSEEN {}", mb.counts.unseen),
            StatusItem::Deleted => format!("DELETED {}", mb.counts.deleted),
            StatusItem::DeletedStorage => format!("DELETED-STORAGE {}", mb.counts.deleted_bytes),
            StatusItem::Size => format!("SIZE {}", mb.counts.bytes),
            StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", mb.highest_modseq),
            StatusItem::MailboxId => format!("MAILBOXID ({})", mb.object_id()),
            // Not yet shown as recent to any session (RFC 3501 §6.3.10).
            StatusItem::Recent => {
                let from = mb.messages.partition_point(|m| m.uid < mb.recent_from());
                format!("RECENT {}", mb.messages.len() - from)
            }
        });
    }
    let mut line = b"* STATUS ".to_vec();
    render::mailbox_name(&mut line, name);
    line.extend_from_slice(format!(" ({})\r\n", fields.join(" ")).as_bytes());
    out.reply.extend_from_slice(&line);
}

/// Messages changed or added after MODSEQ `since` (QRESYNC SELECT), in UID order.
fn changed_since(mb: &MailboxIndex, since: u64) -> Vec<&MessageEntry> {
    let appended = mb.appended_since(since);
    let first_new = appended.first().map_or(u32::MAX, |m| m.uid);
    let mut out = flags_changed_since(mb, since, first_new.saturating_sub(1));
    out.sort_unstable_by_key(|m| m.uid);
    out.extend(appended.iter().filter(|m| m.modseq > since));
    out
}

/// UIDs the client may know (its known-uids, or all below UIDNEXT) that were
/// expunged after MODSEQ `since`, from the tombstones (RFC 7162 §3.2.5.1). Past
/// the tombstones' horizon, every such UID that is gone (the RFC allows more).
pub(super) fn vanished_since(
    mb: &MailboxIndex,
    since: u64,
    known: Option<&SequenceSet>,
) -> Vec<u32> {
    let largest = mb.uid_next.saturating_sub(1);
    let named = |u: u32| known.is_none_or(|k| k.contains(u, largest));
    if let Some(tombstones) = mb.expunged_since(since) {
        let mut out: Vec<u32> = tombstones
            .iter()
            .map(|t| t.1)
            .filter(|u| named(*u))
            .collect();
        out.sort_unstable();
        out.dedup();
        return out;
    }
    let mut out = Vec::new();
    let mut present = mb.messages.iter().map(|m| m.uid).peekable();
    for u in 1..=largest {
        while present.peek().is_some_and(|p| *p < u) {
            present.next();
        }
        if present.peek() != Some(&u) && named(u) {
            out.push(u);
        }
    }
    out
}
