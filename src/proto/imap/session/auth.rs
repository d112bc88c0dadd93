//! LOGIN, AUTHENTICATE (the shared SASL mechanisms, with SASL-IR) and UNAUTHENTICATE
//! (RFC 8437): the not-authenticated state's commands and the answers the IO layer
//! gives them after checking a login. Never checks a secret itself (the IO layer
//! does, off the shard's reactor).

use super::*;
use crate::proto::sasl::{self, Exchange, InProgress as _, Mechanism, SaslError, Secret, Step};

impl Session {
    pub(super) fn login(&mut self, tag: &str, args: &[Token<'_>], out: &mut Outbox) {
        if !self.login_allowed() {
            out.line(&format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS or the IMAPS port first (tls.allow_plaintext_auth)"));
            return;
        }
        let (Some(user), Some(pass), None) = (
            args.first().and_then(Token::as_str),
            args.get(1).and_then(Token::as_str),
            args.get(2),
        ) else {
            return self.bad(tag, "LOGIN needs a user name and a password", out);
        };
        self.pending = Some(Pending::Login {
            tag: tag.to_string(),
        });
        out.actions.push(Action::Authenticate {
            mechanism: "LOGIN",
            username: user.into_owned(),
            secret: Secret::Password(pass.into_owned()),
        });
    }

    pub(super) fn authenticate(&mut self, tag: &str, args: &[Token<'_>], out: &mut Outbox) {
        let Some(name) = args.first().and_then(Token::as_str) else {
            return self.bad(tag, "AUTHENTICATE needs a mechanism", out);
        };
        let Some(mechanism) =
            Mechanism::parse(&name).filter(|m| sasl::offered(self.tls, false).contains(m))
        else {
            out.line(&format!(
                "{tag} NO [CANNOT] Unsupported mechanism; this connection offers {}",
                sasl::offered_names(self.tls, false)
            ));
            return;
        };
        if !self.login_allowed() {
            out.line(&format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS or the IMAPS port first (tls.allow_plaintext_auth)"));
            return;
        }
        let exchange = Exchange::new(mechanism, self.tls);
        let step = match args.get(1).and_then(Token::as_str) {
            Some(initial) => {
                self.sasl = Some(Box::new(exchange));
                match sasl::decode(initial.as_bytes()) {
                    Ok(response) => self.sasl_respond(&response),
                    Err(e) => Err(e),
                }
            }
            None => {
                let first = exchange.first_challenge();
                self.sasl = Some(Box::new(exchange));
                Ok(first)
            }
        };
        self.sasl_step(tag.to_string(), step, out);
    }

    fn sasl_respond(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        self.sasl.respond(response)
    }

    /// A line answering a challenge (`sasl_tag` was set).
    pub(super) fn sasl_line(&mut self, line: &[u8], out: &mut Outbox) {
        let Some(tag) = self.sasl_tag.take() else {
            return;
        };
        if let Some(user) = self.sasl_success.take() {
            // The answer to the success data: empty completes the login.
            self.sasl = None;
            if line.is_empty() {
                return self.complete_login(tag, user, out);
            }
            out.line(&format!("{tag} BAD AUTHENTICATE cancelled after success"));
            out.actions.push(Action::Unauthenticated);
            return;
        }
        let step = match sasl::decode(line) {
            Ok(response) => self.sasl_respond(&response),
            Err(e) => Err(e),
        };
        self.sasl_step(tag, step, out);
    }

    /// The IO layer's answer to [`Action::SaslCredentials`].
    pub fn sasl_credentials(
        &mut self,
        verifier: sasl::scram::Verifier,
        channel: &sasl::scram::ChannelBinding,
        out: &mut Outbox,
    ) {
        let Some(Pending::Login { tag }) = self.pending.take() else {
            return;
        };
        let step = self.sasl.credentials(verifier, channel);
        self.sasl_step(tag, step, out);
    }

    fn sasl_step(&mut self, tag: String, step: Result<Step, SaslError>, out: &mut Outbox) {
        match step {
            Ok(Step::Challenge(data)) => {
                out.line(&format!("+ {}", sasl::encode(&data)));
                self.sasl_tag = Some(tag);
            }
            Ok(Step::Credentials { username }) => {
                self.pending = Some(Pending::Login { tag });
                out.actions.push(Action::SaslCredentials { username });
            }
            Ok(Step::Check { username, secret }) => {
                let mechanism = self.sasl.mechanism_name();
                self.pending = Some(Pending::Login { tag });
                out.actions.push(Action::Authenticate {
                    mechanism,
                    username,
                    secret,
                });
            }
            Err(e) => {
                self.sasl = None;
                match e {
                    SaslError::Cancelled => out.line(&format!("{tag} BAD AUTHENTICATE cancelled")),
                    e if e.is_auth_failure() => {
                        out.line(&format!(
                            "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials"
                        ));
                        self.count_auth_failure(out);
                    }
                    _ => self.bad(&tag, "Invalid SASL response", out),
                }
            }
        }
    }

    /// The login checked out; the account is open on this shard. A mechanism with
    /// success data (SCRAM's server signature) sends it as a last challenge, and the
    /// tagged OK follows its empty answer.
    pub fn logged_in(&mut self, user: String, out: &mut Outbox) {
        let Some(Pending::Login { tag }) = self.pending.take() else {
            return;
        };
        match self.sasl.as_mut().and_then(|e| e.success_data()) {
            Some(data) => {
                out.line(&format!("+ {}", sasl::encode(&data)));
                self.sasl_tag = Some(tag);
                self.sasl_success = Some(user);
            }
            None => {
                self.sasl = None;
                self.complete_login(tag, user, out);
            }
        }
    }

    fn complete_login(&mut self, tag: String, user: String, out: &mut Outbox) {
        self.state = State::Authenticated;
        self.user = Some(user);
        out.line(&format!(
            "{tag} OK [CAPABILITY {}] Logged in",
            self.capabilities()
        ));
    }

    /// UNAUTHENTICATE (RFC 8437): back to the not-authenticated state on the same
    /// connection, keeping TLS; everything the login brought (the mailbox, ENABLEd
    /// extensions) is dropped, so the next login starts as a new session would.
    pub(super) fn unauthenticate(&mut self, tag: &str, out: &mut Outbox) {
        self.state = State::NotAuthenticated;
        self.user = None;
        self.selected = None;
        self.condstore = false;
        self.qresync = false;
        self.rev2 = false;
        self.utf8_accept = false;
        self.notify = None;
        out.line(&format!("{tag} OK UNAUTHENTICATE completed"));
        out.actions.push(Action::Unauthenticated);
    }

    /// COMPRESS DEFLATE (RFC 4978): the IO layer decides whether a deflate slot is
    /// free ([`Session::compression_decided`]); the OK goes out uncompressed, then both
    /// directions deflate. Once on, it stays on (UNAUTHENTICATE included).
    pub(super) fn compress(&mut self, tag: &str, args: &[Token<'_>], out: &mut Outbox) {
        if !matches!(args, [Token::Atom(m)] if m.eq_ignore_ascii_case("DEFLATE")) {
            return self.bad(tag, "COMPRESS takes one mechanism: DEFLATE", out);
        }
        if self.compressed {
            out.line(&format!(
                "{tag} NO [COMPRESSIONACTIVE] DEFLATE is already on"
            ));
            return;
        }
        self.pending = Some(Pending::Compress {
            tag: tag.to_string(),
        });
        out.actions.push(Action::Compress);
    }

    /// The IO layer's answer to [`Action::Compress`]: `allowed` if a slot under
    /// `limits.imap_compress_sessions_max` was free. When it was, the OK is queued
    /// and the IO layer sends it, then deflates everything after it.
    pub fn compression_decided(&mut self, allowed: bool, out: &mut Outbox) {
        let Some(Pending::Compress { tag }) = self.pending.take() else {
            return;
        };
        if allowed {
            self.compressed = true;
            out.line(&format!("{tag} OK DEFLATE active"));
        } else {
            out.line(&format!(
                "{tag} NO [LIMIT] Too many compressed sessions on this server \
                 (limits.imap_compress_sessions_max); go on without COMPRESS"
            ));
        }
    }

    pub fn login_failed(&mut self, refusal: LoginRefusal, out: &mut Outbox) {
        let Some(Pending::Login { tag }) = self.pending.take() else {
            return;
        };
        self.sasl = None;
        match refusal {
            LoginRefusal::BadCredentials => {
                out.line(&format!(
                    "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials"
                ));
                self.count_auth_failure(out);
            }
            LoginRefusal::Temporary => {
                out.line(&format!(
                    "{tag} NO [UNAVAILABLE] Temporary failure; try again later"
                ));
            }
            LoginRefusal::Throttled => {
                out.line(&format!(
                    "{tag} NO [UNAVAILABLE] Too many failed logins; try again later"
                ));
                self.count_auth_failure(out);
            }
            LoginRefusal::TooManySessions => out.line(&format!(
                "{tag} NO [LIMIT] Too many sessions for this account \
                 (limits.sessions_per_user_max)"
            )),
        }
    }

    /// One more failed (or refused) login on this connection; at
    /// `limits.auth_failures_max` the connection ends.
    pub(super) fn count_auth_failure(&mut self, out: &mut Outbox) {
        self.auth_failures += 1;
        if self.auth_failures >= self.config.auth_failures_max {
            out.line("* BYE Too many failed logins");
            self.close(out);
        }
    }
}
