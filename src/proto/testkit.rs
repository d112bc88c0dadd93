//! One sans-IO test driver for the protocol sessions: feed input whole or in pieces,
//! answer each action with a closure, collect the replies as bytes and as a `S:`/`A:`
//! transcript. The SMTP and POP3 transcript tests, property tests and fuzz targets
//! use it instead of each writing its own IO loop. (IMAP's `imap::memstore::Driver`
//! is the IMAP counterpart: it also plays the store, applying writes through the
//! real index and writing splices from its log, which an answer closure could not.)
//!
//! Test support only: never used by the server; it does what the IO layer does
//! (replies flushed before actions are carried out, input dropped where the IO
//! layer drops it) and nothing more.

use super::Outbox;

/// A session as the driver sees it: its `receive` with whatever else it needs (a
/// clock, a directory, a store) bound in.
pub trait Machine {
    type Action;
    /// The transcript's label for what the machine sends: `S` for a server session,
    /// `C` for the SMTP client.
    const SENDS_AS: &'static str = "S";
    /// Consumes complete commands from `input`; returns the bytes used.
    fn receive(&mut self, input: &[u8], out: &mut Outbox<Self::Action>) -> usize;
    /// Work is left that needs no input (a long reply in steps).
    fn wants_resume(&self) -> bool {
        false
    }
    fn is_closed(&self) -> bool;
}

/// What the closure answering an action can do besides calling the session.
pub struct Turn<'a, A> {
    pub out: &'a mut Outbox<A>,
    /// The transcript: push `A: …` lines to record what the action did.
    pub log: &'a mut Vec<String>,
    drop_input: bool,
}

impl<A> Turn<'_, A> {
    /// Forget input received but not yet consumed, as the IO layer does after
    /// STARTTLS (plaintext pipelined behind it must not be read as TLS data).
    pub fn drop_input(&mut self) {
        self.drop_input = true;
    }
}

/// How a test answers one action: with the session, the action, and the turn.
pub type Answer<'f, M> =
    dyn FnMut(&mut M, <M as Machine>::Action, &mut Turn<'_, <M as Machine>::Action>) + 'f;

/// A session and everything it sent.
pub struct Driver<M: Machine> {
    pub machine: M,
    pub out: Outbox<M::Action>,
    /// Input not consumed yet.
    pub pending: Vec<u8>,
    /// Every reply byte, in order.
    pub sent: Vec<u8>,
    /// Replies as `S: line`, interleaved with the `A: …` lines actions logged.
    pub log: Vec<String>,
    /// Calls to `receive`, and the most reply one of them queued (long replies must
    /// come in bounded steps).
    pub steps: usize,
    pub largest_step_reply: usize,
}

impl<M: Machine> Driver<M> {
    pub fn new(machine: M) -> Driver<M> {
        Driver {
            machine,
            out: Outbox::default(),
            pending: Vec::new(),
            sent: Vec::new(),
            log: Vec::new(),
            steps: 0,
            largest_step_reply: 0,
        }
    }

    /// Moves what the session queued to `sent` and `log`.
    pub fn drain(&mut self) {
        let reply = std::mem::take(&mut self.out.reply);
        for line in String::from_utf8_lossy(&reply)
            .split("\r\n")
            .filter(|l| !l.is_empty())
        {
            self.log.push(format!("{}: {line}", M::SENDS_AS));
        }
        self.sent.extend_from_slice(&reply);
    }

    /// Feeds `input` in pieces of `chunk` bytes (`usize::MAX`: whole), running the
    /// session until it needs more input; each action goes to `answer`.
    pub fn feed(&mut self, input: &[u8], chunk: usize, answer: &mut Answer<'_, M>) {
        let pieces: Vec<&[u8]> = if input.is_empty() {
            vec![input]
        } else {
            input.chunks(chunk.max(1)).collect()
        };
        for piece in pieces {
            self.pending.extend_from_slice(piece);
            self.settle(answer);
        }
    }

    fn settle(&mut self, answer: &mut Answer<'_, M>) {
        loop {
            self.drain();
            let actions = std::mem::take(&mut self.out.actions);
            if actions.is_empty() {
                if self.machine.is_closed() {
                    self.pending.clear();
                    return;
                }
                let used = self.machine.receive(&self.pending, &mut self.out);
                self.steps += 1;
                self.largest_step_reply = self.largest_step_reply.max(self.out.reply.len());
                assert!(
                    used <= self.pending.len(),
                    "receive used more than it was given"
                );
                self.pending.drain(..used);
                if self.out.actions.is_empty() && !self.machine.wants_resume() {
                    self.drain();
                    return;
                }
                continue;
            }
            for action in actions {
                let mut turn = Turn {
                    out: &mut self.out,
                    log: &mut self.log,
                    drop_input: false,
                };
                answer(&mut self.machine, action, &mut turn);
                if turn.drop_input {
                    self.pending.clear();
                }
                self.drain();
            }
        }
    }
}

impl Machine for super::pop3::Session {
    type Action = super::pop3::Action;
    fn receive(&mut self, input: &[u8], out: &mut Outbox<Self::Action>) -> usize {
        super::pop3::Session::receive(self, input, out)
    }
    fn wants_resume(&self) -> bool {
        super::pop3::Session::wants_resume(self)
    }
    fn is_closed(&self) -> bool {
        super::pop3::Session::is_closed(self)
    }
}

impl Machine for super::smtp::client::ClientSession {
    type Action = super::smtp::client::ClientAction;
    const SENDS_AS: &'static str = "C";
    fn receive(&mut self, input: &[u8], out: &mut Outbox<Self::Action>) -> usize {
        super::smtp::client::ClientSession::receive(self, input, out)
    }
    fn is_closed(&self) -> bool {
        super::smtp::client::ClientSession::is_closed(self)
    }
}

/// An SMTP session with the clock and directory its `receive` is given.
pub struct Smtp<D: super::smtp::Directory> {
    pub session: super::smtp::Session,
    pub now: std::time::SystemTime,
    pub directory: D,
}

impl<D: super::smtp::Directory> Machine for Smtp<D> {
    type Action = super::smtp::Action;
    fn receive(&mut self, input: &[u8], out: &mut Outbox<Self::Action>) -> usize {
        self.session.receive(input, self.now, &self.directory, out)
    }
    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
}

/// SASL helpers for the protocol transcripts: how a [`Secret`] is logged, the
/// verifier and channel binding the fake IO layer answers with, and a SCRAM client.
pub mod sasl {
    use crate::proto::sasl::scram::{ChannelBinding, Verifier};
    use crate::proto::sasl::Secret;
    use base64::Engine as _;
    use ring::{digest, hmac, pbkdf2};

    /// The password the transcripts accept.
    pub const PASSWORD: &str = "secret";
    pub const SALT: &[u8] = b"shardmail-salt16";

    /// A secret as the transcripts log it: a password as itself, a proof by verdict.
    pub fn shown(secret: &Secret) -> String {
        match secret {
            Secret::Password(p) => p.clone(),
            Secret::Proof { matched: true } => "<proof ok>".into(),
            Secret::Proof { matched: false } => "<proof bad>".into(),
        }
    }

    /// Every account's verifier in the transcripts: [`PASSWORD`] salted with [`SALT`].
    pub fn scram_verifier() -> Verifier {
        Verifier::derive_with(PASSWORD, SALT, 4096)
    }

    /// The channel the fake IO layer reports.
    pub fn binding() -> ChannelBinding {
        ChannelBinding {
            exporter: Some(vec![7; 32]),
            server_end_point: Some(vec![9; 32]),
        }
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    /// A SCRAM-SHA-256 client (RFC 5802) for transcripts: the same arithmetic as any
    /// client, written from the RFC for the tests (the end-to-end suite uses Python's
    /// `scramp`).
    pub struct ScramClient {
        pub gs2_header: String,
        pub cbind_data: Vec<u8>,
        pub client_first_bare: String,
        pub password: String,
    }

    impl ScramClient {
        /// `gs2_header` is `n,,`, `y,,` or `p=tls-exporter,,`; `cbind_data` what the
        /// client believes the channel's binding is.
        pub fn new(user: &str, password: &str, gs2_header: &str, cbind_data: &[u8]) -> Self {
            ScramClient {
                gs2_header: gs2_header.into(),
                cbind_data: cbind_data.to_vec(),
                client_first_bare: format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL"),
                password: password.into(),
            }
        }

        pub fn first(&self) -> String {
            b64(format!("{}{}", self.gs2_header, self.client_first_bare).as_bytes())
        }

        /// The final message for the server's first (base64 in, base64 out), and the
        /// `v=` the server must answer with.
        pub fn last(&self, server_first_b64: &str) -> (String, String) {
            let engine = base64::engine::general_purpose::STANDARD;
            let server_first =
                String::from_utf8(engine.decode(server_first_b64).unwrap_or_default())
                    .unwrap_or_default();
            let field = |k: &str| {
                server_first
                    .split(',')
                    .find_map(|a| a.strip_prefix(k))
                    .unwrap_or_default()
                    .to_string()
            };
            let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
            let salt = engine.decode(salt).unwrap_or_default();
            let rounds = iterations
                .parse()
                .ok()
                .and_then(std::num::NonZeroU32::new)
                .unwrap_or(std::num::NonZeroU32::MIN);
            let mut salted = [0u8; 32];
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                rounds,
                &salt,
                self.password.as_bytes(),
                &mut salted,
            );
            let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
            let client_key = hmac::sign(&key, b"Client Key");
            let stored = digest::digest(&digest::SHA256, client_key.as_ref());
            let mut cbind = self.gs2_header.clone().into_bytes();
            cbind.extend_from_slice(&self.cbind_data);
            let without_proof = format!("c={},r={nonce}", b64(&cbind));
            let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
            let signature = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, stored.as_ref()),
                auth_message.as_bytes(),
            );
            let proof: Vec<u8> = client_key
                .as_ref()
                .iter()
                .zip(signature.as_ref())
                .map(|(k, s)| k ^ s)
                .collect();
            let server_key = hmac::sign(&key, b"Server Key");
            let verifier = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
                auth_message.as_bytes(),
            );
            (
                b64(format!("{without_proof},p={}", b64(&proof)).as_bytes()),
                b64(format!("v={}", b64(verifier.as_ref())).as_bytes()),
            )
        }
    }
}
