//! NOTIFY (RFC 5465): changes pushed to the client as they happen, in the selected
//! mailbox (EXISTS, EXPUNGE, FETCH FLAGS, and FETCH of chosen items for new mail) and
//! in others (`STATUS` for new, expunged and flag-changed mail, `LIST` for mailboxes
//! created, deleted or renamed and for subscription changes).
//!
//! The IO layer wakes the session whenever the account changes while it waits for a
//! command (as for IDLE), and [`Session::changed`] calls [`Session::notify_changes`]:
//! it compares what the account holds now with what this session last reported, per
//! watched mailbox — O(mailboxes), bounded by `limits.mailboxes_per_account_max` —
//! and reports the difference. Events this server does not produce
//! (per-message annotations, METADATA changes) are refused with `BADEVENT`. Part of the
//! sans-IO session: no IO.

use std::collections::BTreeMap;

use super::super::command::{self, FetchAtt};
use super::super::lexer::Token;
use super::super::render;
use super::fetch::fetch_items_into;
use super::view::View;
use super::{normalize, status_line, Mailstore, Outbox, Session};
use crate::proto::imap::command::StatusItem;
use crate::store::index::{AccountIndex, MailboxIndex};

/// The events of one filter, as bits.
const MESSAGE_NEW: u8 = 1;
const MESSAGE_EXPUNGE: u8 = 2;
const FLAG_CHANGE: u8 = 4;
const MAILBOX_NAME: u8 = 8;
const SUBSCRIPTION_CHANGE: u8 = 16;

/// New messages in the selected mailbox fetched for the client at most per wake-up
/// (more are announced by EXISTS only): one bounded step (DESIGN.md §10).
const NEW_FETCHES_MAX: usize = 1000;

/// Which mailboxes a filter names (RFC 5465 §6).
#[derive(Debug, Clone)]
enum Filter {
    Selected { delayed: bool },
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

#[derive(Debug, Clone)]
struct Group {
    filter: Filter,
    events: u8,
}

/// What one watched mailbox looked like when last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    uidvalidity: u32,
    messages: usize,
    uid_next: u32,
    unseen: u32,
    highest_modseq: u64,
}

impl Seen {
    fn of(mb: &MailboxIndex) -> Seen {
        Seen {
            uidvalidity: mb.uidvalidity,
            messages: mb.messages.len(),
            uid_next: mb.uid_next,
            unseen: mb.counts.unseen,
            highest_modseq: mb.highest_modseq,
        }
    }
}

/// A session's NOTIFY SET and what it has reported so far.
#[derive(Debug, Clone, Default)]
pub(super) struct Notify {
    groups: Vec<Group>,
    /// FETCH items sent with each new message of the selected mailbox.
    new_items: Vec<FetchAtt>,
    /// Per watched mailbox id: what was last reported.
    seen: BTreeMap<u32, Seen>,
    /// Mailbox names by id, when some filter watches MailboxName.
    names: BTreeMap<u32, String>,
    /// Subscriptions, when some filter watches SubscriptionChange.
    subscribed: Vec<String>,
}

impl Notify {
    /// The events for the selected mailbox, and whether they wait for a command.
    fn selected_events(&self) -> Option<(u8, bool)> {
        self.groups.iter().find_map(|g| match g.filter {
            Filter::Selected { delayed } => Some((g.events, delayed)),
            _ => None,
        })
    }

    /// The events watched for mailbox `name` (other than as the selected one): the
    /// first filter that names it decides.
    fn events_for(&self, name: &str, account: &AccountIndex) -> u8 {
        for g in &self.groups {
            let hit = match &g.filter {
                Filter::Selected { .. } => false,
                Filter::Inboxes => name == "INBOX",
                Filter::Personal => true,
                Filter::Subscribed => account.subscribed.iter().any(|s| s == name),
                Filter::Subtree(roots) => roots.iter().any(|r| {
                    name == r
                        || name
                            .strip_prefix(r.as_str())
                            .is_some_and(|t| t.starts_with('/'))
                }),
                Filter::Mailboxes(names) => names.iter().any(|n| n == name),
            };
            if hit {
                return g.events;
            }
        }
        0
    }

    fn watches(&self, bits: u8) -> bool {
        self.groups.iter().any(|g| g.events & bits != 0)
    }

    /// Takes the account's state as reported (after NOTIFY SET, and after each round).
    fn record(&mut self, account: &AccountIndex, selected: Option<u32>) {
        self.seen.clear();
        for mb in &account.mailboxes {
            if Some(mb.id) != selected && self.events_for(&mb.name, account) != 0 {
                self.seen.insert(mb.id, Seen::of(mb));
            }
        }
        if self.watches(MAILBOX_NAME) {
            self.names = account
                .mailboxes
                .iter()
                .map(|m| (m.id, m.name.clone()))
                .collect();
        }
        if self.watches(SUBSCRIPTION_CHANGE) {
            self.subscribed = account.subscribed.clone();
        }
    }
}

/// Parses `NOTIFY SET [STATUS] (filter events) …` (after SET).
fn parse_set(args: &[Token<'_>]) -> Result<(bool, Notify), Refusal> {
    let mut args = args;
    let mut status = false;
    if let Some(Token::Atom(a)) = args.first() {
        if a.eq_ignore_ascii_case("STATUS") {
            status = true;
            args = args.get(1..).unwrap_or(&[]);
        }
    }
    if args.is_empty() {
        return Err(Refusal::Bad(
            "NOTIFY SET needs at least one (filter events)".into(),
        ));
    }
    let mut notify = Notify::default();
    for group in args {
        let Token::List(parts) = group else {
            return Err(Refusal::Bad(
                "NOTIFY SET takes (filter events) groups".into(),
            ));
        };
        let (filter, events) = match parts.as_slice() {
            [Token::Atom(f), events] => (simple_filter(f)?, events),
            [Token::Atom(f), names, events] => (named_filter(f, names)?, events),
            _ => return Err(Refusal::Bad("A NOTIFY group is (filter events)".into())),
        };
        let (bits, new_items) = parse_events(events)?;
        let selected = matches!(filter, Filter::Selected { .. });
        check_events(bits, selected)?;
        if selected {
            notify.new_items = new_items;
        } else if !new_items.is_empty() {
            return Err(Refusal::Bad(
                "MessageNew FETCH items apply to SELECTED only".into(),
            ));
        }
        notify.groups.push(Group {
            filter,
            events: bits,
        });
    }
    Ok((status, notify))
}

fn simple_filter(word: &str) -> Result<Filter, Refusal> {
    Ok(match word.to_ascii_uppercase().as_str() {
        "SELECTED" => Filter::Selected { delayed: false },
        "SELECTED-DELAYED" => Filter::Selected { delayed: true },
        "INBOXES" => Filter::Inboxes,
        "PERSONAL" => Filter::Personal,
        "SUBSCRIBED" => Filter::Subscribed,
        other => return Err(Refusal::Bad(format!("Unknown NOTIFY filter {other}"))),
    })
}

fn named_filter(word: &str, names: &Token<'_>) -> Result<Filter, Refusal> {
    let list: Vec<String> = match names {
        Token::List(items) => items.iter().filter_map(command::mailbox_text).collect(),
        one => command::mailbox_text(one).into_iter().collect(),
    };
    let list: Vec<String> = list.iter().map(|n| normalize(n)).collect();
    match word.to_ascii_uppercase().as_str() {
        "SUBTREE" => Ok(Filter::Subtree(list)),
        "MAILBOXES" => Ok(Filter::Mailboxes(list)),
        other => Err(Refusal::Bad(format!("Unknown NOTIFY filter {other}"))),
    }
}

/// An events list: `NONE` or `(event …)`; MessageNew may carry FETCH items.
fn parse_events(token: &Token<'_>) -> Result<(u8, Vec<FetchAtt>), Refusal> {
    let items = match token {
        Token::Atom(a) if a.eq_ignore_ascii_case("NONE") => return Ok((0, Vec::new())),
        Token::List(items) => items,
        _ => return Err(Refusal::Bad("NOTIFY events are NONE or (event …)".into())),
    };
    let (mut bits, mut fetch) = (0u8, Vec::new());
    let mut unsupported = Vec::new();
    let mut it = items.iter().peekable();
    while let Some(event) = it.next() {
        let Some(name) = event.as_str() else {
            return Err(Refusal::Bad("A NOTIFY event is an atom".into()));
        };
        bits |= match name.to_ascii_uppercase().as_str() {
            "MESSAGENEW" => {
                if let Some(Token::List(att)) = it.peek() {
                    fetch = new_message_items(att)?;
                    it.next();
                }
                MESSAGE_NEW
            }
            "MESSAGEEXPUNGE" => MESSAGE_EXPUNGE,
            "FLAGCHANGE" => FLAG_CHANGE,
            "MAILBOXNAME" => MAILBOX_NAME,
            "SUBSCRIPTIONCHANGE" => SUBSCRIPTION_CHANGE,
            _ => {
                unsupported.push(name.into_owned());
                0
            }
        };
    }
    if !unsupported.is_empty() {
        return Err(Refusal::BadEvent(unsupported));
    }
    Ok((bits, fetch))
}

/// MessageNew's FETCH items: anything but message text (RFC 5465 §5.2 leaves bodies
/// to a FETCH of the client's own; they could be megabytes per new message).
fn new_message_items(att: &[Token<'_>]) -> Result<Vec<FetchAtt>, Refusal> {
    let (items, _) = command::fetch_items(&[Token::List(att.to_vec())]).map_err(Refusal::Bad)?;
    let body = items.iter().any(|i| {
        matches!(
            i,
            FetchAtt::BodySection { .. }
                | FetchAtt::Binary { .. }
                | FetchAtt::Rfc822
                | FetchAtt::Rfc822Header
                | FetchAtt::Rfc822Text
        )
    });
    if body {
        return Err(Refusal::Bad(
            "MessageNew takes FETCH items without message text".into(),
        ));
    }
    Ok(items)
}

/// RFC 5465 §5: MessageNew and MessageExpunge go together, FlagChange needs them;
/// the selected mailbox has no name or subscription events.
fn check_events(bits: u8, selected: bool) -> Result<(), Refusal> {
    let new = bits & MESSAGE_NEW != 0;
    let expunge = bits & MESSAGE_EXPUNGE != 0;
    if new != expunge || (bits & FLAG_CHANGE != 0 && !new) {
        return Err(Refusal::Bad(
            "MessageNew and MessageExpunge go together, and FlagChange needs them (RFC 5465 §5)"
                .into(),
        ));
    }
    if selected && bits & (MAILBOX_NAME | SUBSCRIPTION_CHANGE) != 0 {
        return Err(Refusal::Bad(
            "SELECTED takes message events only (RFC 5465 §6)".into(),
        ));
    }
    Ok(())
}

enum Refusal {
    Bad(String),
    BadEvent(Vec<String>),
}

impl Session {
    /// NOTIFY NONE | NOTIFY SET [STATUS] (filter events) …
    pub(super) fn notify_command(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        match args.split_first() {
            Some((Token::Atom(a), [])) if a.eq_ignore_ascii_case("NONE") => {
                self.notify = None;
                out.line(&format!("{tag} OK NOTIFY completed"));
            }
            Some((Token::Atom(a), rest)) if a.eq_ignore_ascii_case("SET") => {
                let (status, mut notify) = match parse_set(rest) {
                    Ok(parsed) => parsed,
                    Err(Refusal::Bad(e)) => return self.bad(tag, &e, out),
                    Err(Refusal::BadEvent(names)) => {
                        return out.line(&format!(
                            "{tag} NO [BADEVENT (MessageNew MessageExpunge FlagChange \
                             MailboxName SubscriptionChange)] Not supported: {}",
                            names.join(" ")
                        ));
                    }
                };
                let selected = self.selected.as_ref().map(|s| s.id);
                if let Some(account) = store.account() {
                    notify.record(account, selected);
                    if status {
                        for id in notify.seen.keys() {
                            if let Some(mb) = account.mailbox_by_id(*id) {
                                self.notify_status(mb, out);
                            }
                        }
                    }
                }
                self.notify = Some(notify);
                out.line(&format!("{tag} OK NOTIFY completed"));
            }
            _ => self.bad(tag, "NOTIFY takes NONE or SET", out),
        }
    }

    /// Whether the session wants to hear of changes while it waits for a command.
    pub fn notifying(&self) -> bool {
        self.notify.as_ref().is_some_and(|n| !n.groups.is_empty())
    }

    /// The account changed: report what the NOTIFY SET asks for.
    pub(super) fn notify_changes(&mut self, store: &dyn Mailstore, out: &mut Outbox) {
        let Some(mut notify) = self.notify.take() else {
            return;
        };
        let Some(account) = store.account() else {
            self.notify = Some(notify);
            return;
        };
        if let Some((events, delayed)) = notify.selected_events() {
            if events & MESSAGE_NEW != 0 {
                self.notify_selected(&notify.new_items, !delayed, store, out);
            }
        }
        let selected = self.selected.as_ref().map(|s| s.id);
        for mb in &account.mailboxes {
            if Some(mb.id) == selected {
                continue;
            }
            let events = notify.events_for(&mb.name, account);
            let now = Seen::of(mb);
            let before = notify.seen.get(&mb.id).copied();
            let changed = match before {
                None => false, // new: reported by MailboxName, counted from here
                Some(b) => {
                    let messages = b.messages != now.messages
                        || b.uid_next != now.uid_next
                        || b.uidvalidity != now.uidvalidity;
                    let flags = b.unseen != now.unseen || b.highest_modseq != now.highest_modseq;
                    (messages && events & (MESSAGE_NEW | MESSAGE_EXPUNGE) != 0)
                        || (flags && events & FLAG_CHANGE != 0)
                }
            };
            if changed {
                self.notify_status(mb, out);
            }
        }
        if notify.watches(MAILBOX_NAME) {
            self.notify_names(&notify, account, out);
        }
        if notify.watches(SUBSCRIPTION_CHANGE) {
            for name in account
                .subscribed
                .iter()
                .filter(|n| !notify.subscribed.contains(n))
            {
                self.notify_list(out, &["\\Subscribed"], name, None);
            }
            for name in notify
                .subscribed
                .iter()
                .filter(|n| !account.subscribed.contains(n))
            {
                self.notify_list(out, &[], name, None);
            }
        }
        notify.record(account, selected);
        self.notify = Some(notify);
    }

    /// New, expunged and changed messages of the selected mailbox, and the FETCH
    /// items asked for each new one.
    fn notify_selected(
        &mut self,
        items: &[FetchAtt],
        expunges_allowed: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(before) = self.selected.as_ref().map(|s| s.at.known_last) else {
            return;
        };
        self.update(
            store,
            out,
            expunges_allowed,
            &std::collections::HashSet::new(),
        );
        if items.is_empty() {
            return;
        }
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let Some(mb) = store.account().and_then(|a| a.mailbox_by_id(sel.id)) else {
            return;
        };
        let view = View::new(mb, sel.at);
        let first_new = mb.messages.partition_point(|m| m.uid <= before);
        let new = mb.messages.get(first_new..).unwrap_or(&[]);
        let mut splices = Vec::new();
        for entry in new
            .iter()
            .filter(|e| e.uid <= sel.at.known_last)
            .take(NEW_FETCHES_MAX)
        {
            let Some(at) = view.index_of(entry.uid) else {
                continue;
            };
            let flags = sel.flags_of(entry);
            let mut line = Vec::new();
            if fetch_items_into(
                &mut line,
                &mut splices,
                at as u32 + 1,
                entry,
                flags,
                items,
                store,
            )
            .is_ok()
            {
                out.reply.extend_from_slice(&line);
            }
        }
    }

    /// `* STATUS` of a watched mailbox (RFC 5465 §5.2–5.4).
    fn notify_status(&self, mb: &MailboxIndex, out: &mut Outbox) {
        let mut items = vec![
            StatusItem::Messages,
            StatusItem::UidNext,
            StatusItem::UidValidity,
            StatusItem::Unseen,
        ];
        if self.condstore {
            items.push(StatusItem::HighestModSeq);
        }
        status_line(out, &self.shown_name(&mb.name), mb, &items);
    }

    /// LIST responses for mailboxes created, deleted or renamed since last reported.
    fn notify_names(&self, notify: &Notify, account: &AccountIndex, out: &mut Outbox) {
        for mb in &account.mailboxes {
            match notify.names.get(&mb.id) {
                None => self.notify_list(out, &[], &mb.name, None),
                Some(old) if old != &mb.name => self.notify_list(out, &[], &mb.name, Some(old)),
                Some(_) => {}
            }
        }
        for (id, name) in &notify.names {
            if account.mailbox_by_id(*id).is_none() {
                self.notify_list(out, &["\\NonExistent"], name, None);
            }
        }
    }

    /// `* LIST attrs "/" name [("OLDNAME" (old))]`.
    fn notify_list(&self, out: &mut Outbox, attrs: &[&str], name: &str, old: Option<&str>) {
        let oldname = old.map(|old| {
            let mut text = b"(\"OLDNAME\" (".to_vec();
            render::mailbox_name(&mut text, &self.shown_name(old));
            text.extend_from_slice(b"))");
            String::from_utf8_lossy(&text).into_owned()
        });
        self.list_line(out, "LIST", name, attrs, oldname.as_deref());
    }
}
