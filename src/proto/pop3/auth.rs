//! POP3 logins: AUTH (RFC 5034) framing of the shared SASL [`Exchange`] (`+`
//! challenges, `*` to cancel, the mechanism list), and the answers the IO layer gives
//! a login ([`Session::logged_in`], [`Session::login_refused`]). Never checks a secret
//! itself.

use super::{Action, LoginRefusal, Maildrop, Outbox, Session, State};
use crate::proto::sasl::{
    self, scram, Exchange, InProgress as _, Mechanism, SaslError, Secret, Step,
};

impl Session {
    pub(super) fn auth(&mut self, args: &str, out: &mut Outbox) {
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let offered = sasl::offered(self.tls, false);
        let (name, initial) = match (words.next(), words.next()) {
            (None, _) => {
                out.line("+OK Supported mechanisms follow");
                for m in offered {
                    out.line(m.name());
                }
                return out.line(".");
            }
            (Some(name), initial) => (name, initial),
        };
        let Some(mechanism) = Mechanism::parse(name).filter(|m| offered.contains(m)) else {
            return out.line("-ERR Unsupported authentication mechanism");
        };
        let exchange = Exchange::new(mechanism, self.tls);
        let step = match initial {
            Some(ir) => {
                self.sasl = Some(Box::new(exchange));
                sasl::decode(ir.as_bytes()).and_then(|r| self.sasl_respond(&r))
            }
            None => {
                let first = exchange.first_challenge();
                self.sasl = Some(Box::new(exchange));
                Ok(first)
            }
        };
        self.sasl_step(step, out);
    }

    fn sasl_respond(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        self.sasl.respond(response)
    }

    pub(super) fn sasl_line(&mut self, line: &[u8], out: &mut Outbox) {
        let step = sasl::decode(line).and_then(|r| self.sasl_respond(&r));
        self.sasl_step(step, out);
    }

    /// The IO layer's answer to [`Action::SaslCredentials`].
    pub fn sasl_credentials(
        &mut self,
        verifier: scram::Verifier,
        channel: &scram::ChannelBinding,
        out: &mut Outbox,
    ) {
        let step = self.sasl.credentials(verifier, channel);
        self.sasl_step(step, out);
    }

    fn sasl_step(&mut self, step: Result<Step, SaslError>, out: &mut Outbox) {
        match step {
            Ok(Step::Challenge(data)) => {
                out.line(&format!("+ {}", sasl::encode(&data)));
                self.state = State::Sasl;
            }
            Ok(Step::Credentials { username }) => {
                self.state = State::Waiting { transaction: false };
                out.actions.push(Action::SaslCredentials { username });
            }
            Ok(Step::Check { username, secret }) => {
                let mechanism = self.sasl.mechanism_name();
                self.authenticate(mechanism, username, secret, out);
            }
            Err(e) => {
                self.sasl = None;
                self.state = State::Authorization { user: None };
                match e {
                    e if e.is_auth_failure() => {
                        self.login_refused(LoginRefusal::BadCredentials, out)
                    }
                    SaslError::Cancelled => out.line("-ERR Authentication cancelled"),
                    SaslError::BadBase64 => out.line("-ERR Cannot decode base64 response"),
                    SaslError::NotUtf8 => out.line("-ERR SASL response is not UTF-8"),
                    _ => out.line("-ERR Malformed SASL response"),
                }
            }
        }
    }

    pub(super) fn authenticate(
        &mut self,
        mechanism: &'static str,
        username: String,
        secret: Secret,
        out: &mut Outbox,
    ) {
        self.state = State::Waiting { transaction: false };
        out.actions.push(Action::Authenticate {
            mechanism,
            username,
            secret,
        });
    }

    /// The login checked out and the maildrop is locked: enter TRANSACTION (after
    /// the empty answer to the mechanism's success data, when it has some).
    pub fn logged_in(&mut self, user: String, maildrop: Maildrop, out: &mut Outbox) {
        self.maildrop = maildrop;
        self.user = Some(user);
        match self.sasl.as_mut().and_then(|e| e.success_data()) {
            Some(data) => {
                out.line(&format!("+ {}", sasl::encode(&data)));
                self.state = State::SaslSuccess;
            }
            None => self.enter_transaction(out),
        }
        self.sasl = None;
    }

    /// The answer to the success data: empty enters TRANSACTION; anything else
    /// abandons a login the IO layer already holds the maildrop for, so the
    /// connection ends (which releases it).
    pub(super) fn sasl_success_line(&mut self, line: &[u8], out: &mut Outbox) {
        if line.is_empty() {
            return self.enter_transaction(out);
        }
        out.line("-ERR Authentication cancelled, closing connection");
        self.close(out);
    }

    fn enter_transaction(&mut self, out: &mut Outbox) {
        let (count, size) = super::totals(&self.maildrop.entries);
        out.line(&format!("+OK Logged in, {count} messages ({size} octets)"));
        self.state = State::Transaction;
    }

    /// The login failed; the failure delay has already been applied by the IO layer.
    pub fn login_refused(&mut self, why: LoginRefusal, out: &mut Outbox) {
        self.sasl = None;
        self.state = State::Authorization { user: None };
        match why {
            LoginRefusal::BadCredentials => {
                out.line("-ERR [AUTH] Authentication failed");
                self.count_auth_failure(out);
            }
            LoginRefusal::InUse => {
                out.line("-ERR [IN-USE] Mailbox is locked by another POP3 session")
            }
            LoginRefusal::Temporary => {
                out.line("-ERR [SYS/TEMP] Mailbox temporarily unavailable, try again later")
            }
            LoginRefusal::Throttled => {
                out.line("-ERR [SYS/TEMP] Too many failed logins; try again later");
                self.count_auth_failure(out);
            }
            LoginRefusal::TooManySessions => out.line(
                "-ERR [SYS/TEMP] Too many sessions for this account \
                 (limits.sessions_per_user_max); try again later",
            ),
        }
    }

    /// One more failed (or refused) login; at `limits.auth_failures_max` the
    /// connection ends.
    fn count_auth_failure(&mut self, out: &mut Outbox) {
        self.auth_failures += 1;
        if self.auth_failures >= self.config.auth_failures_max {
            out.line("-ERR [AUTH] Too many failed logins, closing connection");
            self.close(out);
        }
    }
}
