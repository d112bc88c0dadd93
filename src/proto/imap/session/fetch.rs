//! FETCH and UID FETCH (RFC 9051 §6.4.5, BINARY, CONDSTORE CHANGEDSINCE, QRESYNC
//! VANISHED), answered in steps of bounded work and output (DESIGN.md §10). Large
//! literals are spliced from the log ([`Action::Splice`]), never copied; NUL bytes
//! travel only in literal8.

use super::*;

impl Session {
    // Longer than ~80 lines: argument checks in the order RFC 9051 and RFC 7162 state them.
    pub(super) fn fetch(
        &mut self,
        tag: &str,
        args: &[Token<'_>],
        uid: bool,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let Some(set) = args.first().and_then(Token::as_str) else {
            return self.bad(tag, "FETCH needs a sequence set", out);
        };
        let set = match SequenceSet::parse(&set) {
            Ok(s) => s,
            Err(e) => return self.bad(tag, &e, out),
        };
        let (mut items, modifiers) = match command::fetch_items(args.get(1..).unwrap_or(&[])) {
            Ok(i) => i,
            Err(e) => return self.bad(tag, &e, out),
        };
        if modifiers.vanished && (!uid || !self.qresync) {
            return self.bad(tag, "VANISHED needs UID FETCH and QRESYNC enabled", out);
        }
        if modifiers.changed_since.is_some() || items.contains(&FetchAtt::ModSeq) {
            self.condstore_on(store, out);
        }
        if uid && !items.contains(&FetchAtt::Uid) {
            items.insert(0, FetchAtt::Uid);
        }
        if self.condstore && modifiers.changed_since.is_some() && !items.contains(&FetchAtt::ModSeq)
        {
            items.push(FetchAtt::ModSeq);
        }
        let targets = match self.resolve(&set, uid, store) {
            Ok(t) => t,
            Err(e) => return self.bad(tag, &e, out),
        };
        if modifiers.vanished {
            // UIDs of the set expunged after CHANGEDSINCE (RFC 7162 §3.2.6).
            if let Some(mb) = self.mailbox(store) {
                let since = modifiers.changed_since.unwrap_or(0);
                let vanished = vanished_since(mb, since, Some(&set));
                if !vanished.is_empty() {
                    out.line(&format!(
                        "* VANISHED (EARLIER) {}",
                        SequenceSet::compact(&vanished)
                    ));
                }
            }
        }
        let mut job = FetchPending {
            tag: tag.to_string(),
            uid,
            targets: targets.iter().map(|t| t.1).collect(),
            items,
            modifiers,
            next: 0,
        };
        let read_only = self.selected.as_ref().is_none_or(|s| s.read_only);
        if job.items.iter().any(FetchAtt::sets_seen) && !read_only {
            if let Some(mb) = self.mailbox(store) {
                let changes: Vec<(u32, u32, Vec<String>)> = job
                    .targets
                    .iter()
                    .filter_map(|u| {
                        let m = mb
                            .messages
                            .get(mb.messages.binary_search_by_key(u, |m| m.uid).ok()?)?;
                        (m.flags & flags::SEEN == 0)
                            .then(|| (m.uid, m.flags | flags::SEEN, m.keywords.to_vec()))
                    })
                    .collect();
                if !changes.is_empty() {
                    // \Seen is set first (durably); the FETCH is answered after.
                    if !job.items.contains(&FetchAtt::Flags) {
                        job.items.push(FetchAtt::Flags);
                    }
                    self.pending = Some(Pending::Fetch(job));
                    out.actions.push(Action::Write(
                        Change::Store {
                            mailbox: mb.id,
                            changes,
                        }
                        .into(),
                    ));
                    return;
                }
            }
        }
        self.fetch_step(job, store, out);
    }

    /// Answers FETCH for `job.targets[job.next..]` until the step's share is used
    /// (`FETCH_STEP_MESSAGES`, `limits.output_buffer_bytes_max` of reply and spliced
    /// bytes); then the job waits in `pending` for the IO layer to send what is
    /// queued. The last step reports changes and the tagged OK.
    pub(super) fn fetch_step(
        &mut self,
        mut job: FetchPending,
        store: &dyn Mailstore,
        out: &mut Outbox,
    ) {
        let keywords_max = self.config.keywords_per_mailbox_max;
        let output_max = self.config.output_bytes_max;
        let wants_flags = job.items.contains(&FetchAtt::Flags);
        if job.next == 0 && wants_flags {
            if let (Some(mb), Some(sel)) = (self.mailbox(store), self.selected.as_mut()) {
                announce_keywords(sel, mb, keywords_max, out);
            }
        }
        let mut failed = false;
        if let (Some(sel), Some(mb)) = (&self.selected, self.mailbox(store)) {
            let view = View::new(mb, sel.at);
            let (mut answered, mut spliced) = (0, 0);
            while let Some(u) = job.targets.get(job.next).copied() {
                if answered > 0
                    && (answered >= FETCH_STEP_MESSAGES || out.reply.len() + spliced >= output_max)
                {
                    self.pending = Some(Pending::FetchSteps(job));
                    return;
                }
                job.next += 1;
                let Some(seq) = view.index_of(u).map(|i| i as u32 + 1) else {
                    continue;
                };
                let Ok(at) = mb.messages.binary_search_by_key(&u, |m| m.uid) else {
                    continue; // expunged by another session meanwhile
                };
                let Some(entry) = mb.messages.get(at) else {
                    continue;
                };
                if job
                    .modifiers
                    .changed_since
                    .is_some_and(|c| entry.modseq <= c)
                {
                    continue;
                }
                answered += 1;
                let actions_before = out.actions.len();
                let flags = sel.flags_of(entry);
                if let Err(e) = fetch_one(out, seq, entry, flags, &job.items, store) {
                    failed = true;
                    out.line(&format!(
                        "{} NO [{e}] Cannot decode part of message {seq}",
                        job.tag
                    ));
                    break;
                }
                spliced += out
                    .actions
                    .get(actions_before..)
                    .unwrap_or(&[])
                    .iter()
                    .map(|a| match a {
                        Action::Splice { len, .. } => *len,
                        _ => 0,
                    })
                    .sum::<usize>();
            }
        }
        let reported: HashSet<u32> = if wants_flags {
            job.targets.iter().copied().collect()
        } else {
            HashSet::new()
        };
        self.update(store, out, job.uid, &reported);
        if !failed {
            out.line(&format!("{} OK FETCH completed", job.tag));
        }
    }
}

/// Writes one `* n FETCH (...)` response; `Err` names a response code on failure.
pub(super) fn fetch_one(
    out: &mut Outbox,
    seq: u32,
    entry: &MessageEntry,
    flags: u32,
    items: &[FetchAtt],
    store: &dyn Mailstore,
) -> Result<(), &'static str> {
    let mut splices: Vec<(usize, u64, usize)> = Vec::new();
    let result = fetch_items_into(
        &mut out.reply,
        &mut splices,
        seq,
        entry,
        flags,
        items,
        store,
    );
    for (at, offset, len) in splices {
        out.actions.push(Action::Splice { at, offset, len });
    }
    result
}

/// Literals at least this long are spliced from the log rather than copied.
pub(super) const SPLICE_BYTES_MIN: usize = 16 * 1024;

/// Past this much reply, every literal is spliced: `FETCH 1:* BODY[]` over a large
/// mailbox must not copy the mailbox into memory.
pub(super) const REPLY_COPY_BYTES_MAX: usize = 1024 * 1024;

/// Writes a literal of `data`, a slice of `message` (the stored bytes of `entry`) or
/// derived from it: spliced from the log when it is a large slice of the message,
/// copied otherwise. `literal8` allows NUL (BINARY).
pub(super) fn literal_of(
    r: &mut Vec<u8>,
    splices: &mut Vec<(usize, u64, usize)>,
    message: &[u8],
    entry: &MessageEntry,
    data: &[u8],
    literal8: bool,
) {
    let base = message.as_ptr() as usize;
    let start = (data.as_ptr() as usize).wrapping_sub(base);
    let inside = start <= message.len() && start + data.len() <= message.len();
    let big = data.len() >= SPLICE_BYTES_MIN || r.len() >= REPLY_COPY_BYTES_MAX;
    let has_nul = memchr::memchr(0, data).is_some();
    // NUL outside a literal8 must be converted (render::literal), so is copied.
    if !(inside && big) || (has_nul && !literal8) {
        return render::literal(r, data, literal8);
    }
    let prefix = if has_nul { "~" } else { "" };
    r.extend_from_slice(format!("{prefix}{{{}}}\r\n", data.len()).as_bytes());
    splices.push((r.len(), entry.offset + start as u64, data.len()));
}

// Longer than ~80 lines: one arm per FETCH item rendered.
pub(super) fn fetch_items_into(
    r: &mut Vec<u8>,
    splices: &mut Vec<(usize, u64, usize)>,
    seq: u32,
    entry: &MessageEntry,
    flags: u32,
    items: &[FetchAtt],
    store: &dyn Mailstore,
) -> Result<(), &'static str> {
    r.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    let bytes = || store.bytes(entry).unwrap_or(&[]);
    // Read from the log once, and only if an item needs it.
    let summary_cell = OnceCell::new();
    let summary = || {
        summary_cell
            .get_or_init(|| store.summary(entry).ok())
            .as_ref()
            .ok_or("CORRUPTION")
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            r.push(b' ');
        }
        match item {
            FetchAtt::Uid => r.extend_from_slice(format!("UID {}", entry.uid).as_bytes()),
            FetchAtt::EmailId => {
                r.extend_from_slice(format!("EMAILID ({})", render::email_id(bytes())).as_bytes())
            }
            FetchAtt::Preview => {
                r.extend_from_slice(b"PREVIEW ");
                // Cached at delivery; computed here only for messages stored before.
                let text = match summary().ok().and_then(|s| s.preview.clone()) {
                    Some(cached) => (!cached.is_empty()).then_some(cached),
                    None => crate::store::summary::preview(bytes()),
                };
                render::nstring(r, text.as_deref());
            }
            // Threads are not computed; RFC 8474 §5.2 answers NIL then.
            FetchAtt::ThreadId => r.extend_from_slice(b"THREADID NIL"),
            FetchAtt::Flags => {
                r.extend_from_slice(b"FLAGS ");
                render::flag_list(r, flags, &entry.keywords);
            }
            FetchAtt::InternalDate => {
                r.extend_from_slice(b"INTERNALDATE ");
                r.extend_from_slice(render::internal_date(entry.internal_date).as_bytes());
            }
            // RFC 8514 §4: NIL when the save date is not known (logged before them).
            FetchAtt::SaveDate => match entry.save_date {
                0 => r.extend_from_slice(b"SAVEDATE NIL"),
                saved => {
                    r.extend_from_slice(b"SAVEDATE ");
                    r.extend_from_slice(render::internal_date(i64::from(saved)).as_bytes());
                }
            },
            FetchAtt::Rfc822Size => {
                r.extend_from_slice(format!("RFC822.SIZE {}", entry.len).as_bytes())
            }
            FetchAtt::ModSeq => {
                r.extend_from_slice(format!("MODSEQ ({})", entry.modseq).as_bytes())
            }
            FetchAtt::Envelope => {
                r.extend_from_slice(b"ENVELOPE ");
                render::envelope(r, summary()?);
            }
            FetchAtt::Body | FetchAtt::BodyStructure => {
                let extended = *item == FetchAtt::BodyStructure;
                r.extend_from_slice(if extended {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                render::body_structure(r, bytes(), summary()?, extended);
            }
            FetchAtt::Rfc822 => {
                r.extend_from_slice(b"RFC822 ");
                let message = bytes();
                literal_of(r, splices, message, entry, message, false);
            }
            FetchAtt::Rfc822Header | FetchAtt::Rfc822Text => {
                let text = if *item == FetchAtt::Rfc822Header {
                    SectionText::Header
                } else {
                    SectionText::Text
                };
                let data = render::section(
                    bytes(),
                    summary()?,
                    &Section {
                        part: Vec::new(),
                        text: Some(text),
                    },
                );
                r.extend_from_slice(if *item == FetchAtt::Rfc822Header {
                    b"RFC822.HEADER "
                } else {
                    b"RFC822.TEXT "
                });
                render::literal(r, data.as_deref().unwrap_or(&[]), false);
            }
            FetchAtt::BodySection {
                section, partial, ..
            } => {
                let message = bytes();
                let data = render::section(message, summary()?, section);
                r.extend_from_slice(b"BODY[");
                section_name(r, section);
                r.push(b']');
                if let Some((origin, _)) = partial {
                    r.extend_from_slice(format!("<{origin}>").as_bytes());
                }
                r.push(b' ');
                match data {
                    Some(d) => {
                        let d = render::partial(&d, *partial);
                        literal_of(r, splices, message, entry, d, false);
                    }
                    None => r.extend_from_slice(b"NIL"),
                }
            }
            FetchAtt::Binary { part, partial, .. } => {
                let message = bytes();
                let data = render::binary(message, summary()?, part).map_err(binary_error)?;
                r.extend_from_slice(b"BINARY[");
                r.extend_from_slice(part_path(part).as_bytes());
                r.push(b']');
                if let Some((origin, _)) = partial {
                    r.extend_from_slice(format!("<{origin}>").as_bytes());
                }
                r.push(b' ');
                let d = render::partial(&data, *partial);
                literal_of(r, splices, message, entry, d, true);
            }
            FetchAtt::BinarySize { part } => {
                let data = render::binary(bytes(), summary()?, part).map_err(binary_error)?;
                r.extend_from_slice(
                    format!("BINARY.SIZE[{}] {}", part_path(part), data.len()).as_bytes(),
                );
            }
        }
    }
    r.extend_from_slice(b")\r\n");
    Ok(())
}

pub(super) fn binary_error(e: render::BinaryError) -> &'static str {
    match e {
        render::BinaryError::UnknownEncoding => "UNKNOWN-CTE",
        render::BinaryError::NoSuchPart => "NONEXISTENT",
    }
}

pub(super) fn part_path(part: &[u32]) -> String {
    part.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn section_name(r: &mut Vec<u8>, section: &Section) {
    let mut name = part_path(&section.part);
    let text = match &section.text {
        None => None,
        Some(SectionText::Header) => Some("HEADER".to_string()),
        Some(SectionText::Text) => Some("TEXT".to_string()),
        Some(SectionText::Mime) => Some("MIME".to_string()),
        Some(SectionText::HeaderFields { not, fields }) => Some(format!(
            "HEADER.FIELDS{} ({})",
            if *not { ".NOT" } else { "" },
            fields.join(" ")
        )),
    };
    if let Some(t) = text {
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&t);
    }
    r.extend_from_slice(name.as_bytes());
}
