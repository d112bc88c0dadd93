//! SMTP AUTH (RFC 4954): framing of the shared SASL [`Exchange`] (334 challenges,
//! `*` to cancel), its replies, and the failure count that ends a guessing session.
//! Part of the pure [`Session`]: verifiers are looked up and secrets checked by the IO
//! layer ([`Action::SaslCredentials`], [`Action::Authenticate`]).

use super::{Action, Outbox, Session, State};
use crate::proto::sasl::{self, scram, Exchange, InProgress as _, Mechanism, SaslError, Step};

impl Session {
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<&str>, out: &mut Outbox) {
        if !self.requires_auth() {
            return out.line("502 5.5.1 AUTH is not available on this port; use submission");
        }
        if !self.esmtp {
            return out.line("503 5.5.1 Send EHLO first");
        }
        if self.authenticated.is_some() {
            return out.line("503 5.5.1 Already authenticated");
        }
        if self.transaction.is_some() {
            return out.line("503 5.5.1 AUTH not allowed during a mail transaction");
        }
        if !self.tls && !self.config.allow_plaintext_auth {
            return out
                .line("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        let Some(mechanism) =
            Mechanism::parse(mechanism).filter(|m| sasl::offered(self.tls, true).contains(m))
        else {
            return out.line("504 5.5.4 Unrecognized authentication type");
        };
        let exchange = Exchange::new(mechanism, self.tls);
        let step = match initial {
            Some(ir) => match sasl::decode(ir.as_bytes()) {
                Ok(response) => {
                    self.sasl = Some(Box::new(exchange));
                    return self.sasl_respond(&response, out);
                }
                Err(e) => return sasl_refusal(e, out),
            },
            None => exchange.first_challenge(),
        };
        self.sasl = Some(Box::new(exchange));
        self.sasl_step(Ok(step), out);
    }

    /// A response line during an exchange (the state was `Sasl`).
    pub(super) fn sasl_line(&mut self, line: &[u8], out: &mut Outbox) {
        match sasl::decode(line) {
            Ok(response) => self.sasl_respond(&response, out),
            Err(e) => {
                self.sasl = None;
                sasl_refusal(e, out);
                self.count_bad_command(out);
            }
        }
    }

    fn sasl_respond(&mut self, response: &[u8], out: &mut Outbox) {
        let step = self.sasl.respond(response);
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
                out.line(&format!("334 {}", sasl::encode(&data)));
                self.state = State::Sasl;
            }
            Ok(Step::Credentials { username }) => {
                self.state = State::Waiting;
                out.actions.push(Action::SaslCredentials { username });
            }
            Ok(Step::Check { username, secret }) => {
                self.state = State::Waiting;
                let mechanism = self.sasl.mechanism_name();
                out.actions.push(Action::Authenticate {
                    mechanism,
                    username,
                    secret,
                });
            }
            Err(e) => {
                self.sasl = None;
                self.state = State::Command;
                if e.is_auth_failure() {
                    self.auth_failed(out);
                } else {
                    sasl_refusal(e, out);
                }
            }
        }
    }

    /// Result of [`Action::Authenticate`]. The IO layer has already applied the
    /// failure delay (`limits.auth_failure_delay_ms`). A mechanism with data to send
    /// on success (SCRAM's server signature) sends it as a last challenge first.
    pub fn auth_result(&mut self, user: Option<String>, out: &mut Outbox) {
        let success_data = self.sasl.as_mut().and_then(|e| e.success_data());
        self.sasl = None;
        match (user, success_data) {
            (Some(user), Some(data)) => {
                out.line(&format!("334 {}", sasl::encode(&data)));
                self.state = State::SaslSuccess(user);
            }
            (Some(user), None) => self.authenticated_as(user, out),
            (None, _) => self.auth_failed(out),
        }
    }

    /// The client's answer to the success data: empty, or the exchange is cancelled.
    pub(super) fn sasl_success_line(&mut self, user: String, line: &[u8], out: &mut Outbox) {
        match sasl::decode(line) {
            Ok(response) if response.is_empty() => self.authenticated_as(user, out),
            Ok(_) => out.line("501 5.5.2 Expected an empty response"),
            Err(e) => sasl_refusal(e, out),
        }
    }

    fn authenticated_as(&mut self, user: String, out: &mut Outbox) {
        self.state = State::Command;
        self.authenticated = Some(user);
        out.line("235 2.7.0 Authentication successful");
    }

    /// The login was not checked: the server's password checks are all busy
    /// (`limits.password_threads`). Not the client's fault: no failure is counted.
    pub fn auth_busy(&mut self, out: &mut Outbox) {
        self.sasl = None;
        self.state = State::Command;
        out.line("454 4.7.0 Temporary authentication failure: server busy; try again later");
    }

    /// The login was not checked: its source or account is backed off after failed
    /// logins (`limits.login_*`). Counts as a failure for this connection.
    pub fn auth_throttled(&mut self, out: &mut Outbox) {
        self.sasl = None;
        self.state = State::Command;
        self.auth_failures += 1;
        out.line("454 4.7.0 Too many failed authentications; try again later");
        if self.auth_failures >= self.config.auth_failures_max {
            out.line(&format!(
                "421 4.7.0 {} Too many failed authentications, closing connection",
                self.config.hostname
            ));
            self.close(out);
        }
    }

    pub(super) fn auth_failed(&mut self, out: &mut Outbox) {
        self.sasl = None;
        self.state = State::Command;
        self.auth_failures += 1;
        if self.auth_failures >= self.config.auth_failures_max {
            out.line("535 5.7.8 Authentication credentials invalid");
            out.line(&format!(
                "421 4.7.0 {} Too many failed authentications, closing connection",
                self.config.hostname
            ));
            return self.close(out);
        }
        out.line("535 5.7.8 Authentication credentials invalid");
    }
}

/// The reply for a SASL response we cannot use.
fn sasl_refusal(e: SaslError, out: &mut Outbox) {
    out.line(match e {
        SaslError::Cancelled => "501 5.0.0 Authentication cancelled",
        SaslError::BadBase64 => "501 5.5.2 Cannot decode base64 response",
        SaslError::Malformed => "501 5.5.2 Malformed SASL response",
        SaslError::NotUtf8 => "501 5.5.2 Response is not UTF-8",
        SaslError::AuthzMismatch | SaslError::ChannelBinding => {
            "535 5.7.8 Authentication credentials invalid"
        }
    });
}
