//! SMTP AUTH (RFC 4954): PLAIN and LOGIN exchanges, their replies, and the failure
//! count that ends a guessing session. Part of the pure [`Session`]: the password check
//! itself is an [`Action::Authenticate`] for the IO layer.

use super::{Action, Outbox, Session, State};
use crate::proto::sasl::{self, SaslError};

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
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                Some(ir) => self.sasl_plain(ir.as_bytes(), out),
                None => {
                    out.line("334 ");
                    self.state = State::AuthPlain;
                }
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial.map(|ir| sasl_text(ir.as_bytes(), out)) {
                Some(Some(user)) => {
                    out.line("334 UGFzc3dvcmQ6");
                    self.state = State::AuthLoginPass(user);
                }
                Some(None) => {}
                None => {
                    out.line("334 VXNlcm5hbWU6");
                    self.state = State::AuthLoginUser;
                }
            }
        } else {
            out.line("504 5.5.4 Unrecognized authentication type");
        }
    }

    pub(super) fn sasl_plain(&mut self, response: &[u8], out: &mut Outbox) {
        match sasl::plain(response) {
            Ok(c) => self.authenticate("PLAIN", c.username, c.password, out),
            Err(SaslError::AuthzMismatch) => self.auth_failed(out),
            Err(e) => sasl_refusal(e, out),
        }
    }

    pub(super) fn authenticate(
        &mut self,
        mechanism: &'static str,
        username: String,
        password: String,
        out: &mut Outbox,
    ) {
        self.state = State::Waiting;
        out.actions.push(Action::Authenticate {
            mechanism,
            username,
            password,
        });
    }

    /// Result of [`Action::Authenticate`]. The IO layer has already applied the
    /// failure delay (`limits.auth_failure_delay_ms`).
    pub fn auth_result(&mut self, user: Option<String>, out: &mut Outbox) {
        match user {
            Some(user) => {
                self.state = State::Command;
                self.authenticated = Some(user);
                out.line("235 2.7.0 Authentication successful");
            }
            None => self.auth_failed(out),
        }
    }

    /// The login was not checked: the server's password checks are all busy
    /// (`limits.password_threads`). Not the client's fault: no failure is counted.
    pub fn auth_busy(&mut self, out: &mut Outbox) {
        self.state = State::Command;
        out.line("454 4.7.0 Temporary authentication failure: server busy; try again later");
    }

    /// The login was not checked: its source or account is backed off after failed
    /// logins (`limits.login_*`). Counts as a failure for this connection.
    pub fn auth_throttled(&mut self, out: &mut Outbox) {
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
pub(super) fn sasl_refusal(e: SaslError, out: &mut Outbox) {
    out.line(match e {
        SaslError::Cancelled => "501 5.0.0 Authentication cancelled",
        SaslError::BadBase64 => "501 5.5.2 Cannot decode base64 response",
        SaslError::Malformed => "501 5.5.2 Malformed PLAIN response",
        SaslError::NotUtf8 | SaslError::AuthzMismatch => "501 5.5.2 Response is not UTF-8",
    });
}

pub(super) fn sasl_text(response: &[u8], out: &mut Outbox) -> Option<String> {
    sasl::decode_text(response)
        .map_err(|e| sasl_refusal(e, out))
        .ok()
}
