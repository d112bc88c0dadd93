//! Logins: the failed-login throttle, the password pool, app passwords and the
//! verified-login cache, in the one order every protocol uses.
//!
//! A login is checked against, in turn: the throttle ([`admission::LoginThrottle`],
//! which may answer "try later" computing no hash), the account's app passwords
//! (microseconds), the verified-login cache, and only then argon2 on the shared pool
//! ([`passwords::Passwords`]). Each attempt is logged once (`shardmail::login`, which
//! fail2ban reads) and counted. Never blocks the reactor; never parses a protocol.

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::proto::sasl::Secret;

use super::passwords::Verified;
use super::{admission, store, Shard};

/// A login to check: who, from where, over what.
#[derive(Debug)]
pub struct LoginAttempt {
    /// `smtp`, `imap` or `pop3`.
    pub protocol: &'static str,
    /// `PLAIN`, `LOGIN` (SMTP AUTH LOGIN or the IMAP command), `USER` (POP3 USER/PASS).
    pub mechanism: &'static str,
    pub username: String,
    pub secret: Secret,
    pub ip: IpAddr,
}

/// The outcome of [`Shard::checked_login`].
#[derive(Debug)]
pub enum LoginCheck {
    /// The password matches; the account's canonical address.
    Ok(String),
    /// Wrong user or password (already delayed).
    Refused,
    /// Backed off after failed logins; no password was checked (already delayed).
    Throttled,
    /// The password pool's queue is full (`limits.password_threads`): nothing was
    /// checked; not the client's fault, so not counted as a failure.
    Busy,
}

/// How long a login waits for another check of the same source or account to
/// finish before it is answered "try later".
const LOGIN_WAIT_MAX: Duration = Duration::from_secs(30);
const LOGIN_WAIT_POLL: Duration = Duration::from_millis(10);

/// What [`Shard::verify_password`] found.
#[derive(Debug)]
pub enum Verdict {
    /// The account's canonical address, and what proved it.
    Ok(String, Credential),
    /// Wrong user, password or app password (or one not scoped to this protocol).
    Wrong,
    /// The password pool's queue was full: nothing was checked.
    Busy,
}

/// The secret a login was accepted with (the login log says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The account password, checked with argon2.
    Password,
    /// The account password, matched in the verified-login cache.
    Cached,
    /// An app password, by its label.
    AppPassword(String),
    /// A SCRAM proof checked against the account's stored verifier.
    Scram,
}

impl Credential {
    pub fn name(&self) -> &'static str {
        match self {
            Credential::Password => "password",
            Credential::Cached => "cached",
            Credential::AppPassword(_) => "app-password",
            Credential::Scram => "scram",
        }
    }

    pub fn label(&self) -> Option<&str> {
        match self {
            Credential::AppPassword(label) => Some(label),
            _ => None,
        }
    }
}

/// The outcome of [`Shard::mailbox_login`].
pub enum MailboxLogin {
    /// Wrong user or password (already delayed).
    Refused,
    /// Backed off after failed logins (already delayed).
    Throttled,
    /// The account vanished meanwhile, or the password pool is full: a temporary
    /// failure.
    Unavailable,
    /// Logged in; `owner` is the shard whose partition holds the account.
    Accepted {
        user: String,
        account: u64,
        owner: usize,
    },
}

impl Shard {
    /// A password check under the failed-login throttle (`limits.login_*`): waits
    /// while another check for the same source or account runs, refuses at once —
    /// computing no hash — while either is backed off, and records the outcome. A
    /// failure or refusal is answered only after `limits.auth_failure_delay_ms`
    /// (counted in `failures`).
    pub async fn checked_login(&self, attempt: LoginAttempt, failures: &Cell<u64>) -> LoginCheck {
        let (protocol, mechanism, ip) = (attempt.protocol, attempt.mechanism, attempt.ip);
        let key = crate::users::normalize(&attempt.username)
            .unwrap_or_else(|| attempt.username.to_lowercase());
        let (outcome, credential) = self.checked_login_inner(&key, attempt, failures).await;
        // One line per attempt, for the operator and fail2ban (contrib/fail2ban): the
        // user name is the client's, so it is a string field: quoted and
        // escaped in text lines, a JSON string in JSON lines.
        let (result, r) = match &outcome {
            LoginCheck::Ok(_) => ("ok", 0),
            LoginCheck::Refused => ("failed", 1),
            LoginCheck::Throttled => ("throttled", 2),
            LoginCheck::Busy => ("busy", 3),
        };
        let p = crate::metrics::PROTOCOLS
            .iter()
            .position(|x| *x == protocol)
            .unwrap_or(0);
        crate::metrics::bump(&self.metrics.logins, p, r);
        tracing::info!(
            target: "shardmail::login",
            protocol,
            mechanism,
            ip = %ip,
            user = key.as_str(),
            result,
            credential = credential.as_ref().map(Credential::name),
            app_password = credential.as_ref().and_then(Credential::label),
            "login"
        );
        outcome
    }

    async fn checked_login_inner(
        &self,
        key: &str,
        attempt: LoginAttempt,
        failures: &Cell<u64>,
    ) -> (LoginCheck, Option<Credential>) {
        let LoginAttempt {
            protocol,
            username,
            secret,
            ip,
            ..
        } = attempt;
        let give_up = Instant::now() + LOGIN_WAIT_MAX;
        let attempt = loop {
            match self.throttle.gate(ip, key, Instant::now()) {
                admission::Gate::Go(a) => break a,
                admission::Gate::Wait if Instant::now() < give_up => {
                    glommio::timer::sleep(LOGIN_WAIT_POLL).await;
                }
                admission::Gate::Wait | admission::Gate::Locked(_) => {
                    crate::metrics::add(&self.metrics.logins_throttled, 1);
                    crate::metrics::add(failures, 1);
                    glommio::timer::sleep(self.config().limits.auth_failure_delay).await;
                    return (LoginCheck::Throttled, None);
                }
            }
        };
        let guard = admission::InFlight::new(&self.throttle, attempt);
        let verdict = match secret {
            Secret::Password(password) => {
                self.verify_password(&username, password, protocol, ip)
                    .await
            }
            Secret::Proof { matched } => self.scram_verdict(&username, matched),
        };
        match verdict {
            Verdict::Ok(user, credential) => {
                guard.finish(true, Instant::now());
                (LoginCheck::Ok(user), Some(credential))
            }
            Verdict::Busy => {
                drop(guard); // no outcome: nothing was checked
                (LoginCheck::Busy, None)
            }
            Verdict::Wrong => {
                guard.finish(false, Instant::now());
                crate::metrics::add(failures, 1);
                glommio::timer::sleep(self.config().limits.auth_failure_delay).await;
                (LoginCheck::Refused, None)
            }
        }
    }

    /// A POP3/IMAP login: checks the password under the throttle
    /// ([`Shard::checked_login`]) and finds the account and the shard that owns it.
    pub async fn mailbox_login(&self, attempt: LoginAttempt, failures: &Cell<u64>) -> MailboxLogin {
        let user = match self.checked_login(attempt, failures).await {
            LoginCheck::Ok(user) => user,
            LoginCheck::Refused => return MailboxLogin::Refused,
            LoginCheck::Throttled => return MailboxLogin::Throttled,
            LoginCheck::Busy => return MailboxLogin::Unavailable,
        };
        let Some(account) = self.users.borrow().user(&user).map(|u| u.id) else {
            return MailboxLogin::Unavailable; // deleted while we checked
        };
        let owner = store::shard_of(
            store::partition_of(account, self.partitions_total),
            self.config().shards,
        );
        MailboxLogin::Accepted {
            user,
            account,
            owner,
        }
    }

    /// A SCRAM proof's verdict: checked by the mechanism against the account's
    /// verifier; here only the account must still exist (a decoy never matches).
    fn scram_verdict(&self, username: &str, matched: bool) -> Verdict {
        let name = crate::users::normalize(username);
        let exists = name
            .as_deref()
            .is_some_and(|n| self.users.borrow().users.contains_key(n));
        match (matched, name) {
            (true, Some(user)) if exists => Verdict::Ok(user, Credential::Scram),
            _ => Verdict::Wrong,
        }
    }

    /// The account's SCRAM verifier, or a decoy with the same shape (the same salt
    /// for the same unknown name) so the exchange does not tell which accounts exist.
    pub fn scram_verifier(&self, username: &str) -> crate::proto::sasl::scram::Verifier {
        self.refresh_users_now();
        let name = crate::users::normalize(username).unwrap_or_else(|| username.to_string());
        let db = self.users.borrow();
        db.users
            .get(&name)
            .and_then(|u| u.scram.clone())
            .unwrap_or_else(|| crate::proto::sasl::scram::Verifier::decoy(&name))
    }

    /// Checks a login's secret: an app password of the account (scoped to
    /// `protocol`), a cached verification, or argon2 on the password pool. An unknown
    /// account costs the same argon2 as a known one, so timing does not tell them apart.
    pub async fn verify_password(
        &self,
        username: &str,
        password: String,
        protocol: &str,
        ip: IpAddr,
    ) -> Verdict {
        // One stat: a `user passwd`, `user del` or revoked app password applies to the
        // very next login, on every shard.
        self.refresh_users_now();
        let db = self.users.borrow().clone();
        let name = crate::users::normalize(username);
        let account = name
            .as_deref()
            .and_then(|n| db.users.get(n).map(|u| (n, u)));
        if let Some((user, u)) = account {
            if let Some(label) =
                crate::users::app_password::find(&u.app_passwords, &password, protocol)
            {
                return Verdict::Ok(user.to_string(), Credential::AppPassword(label.to_string()));
            }
            if self.passwords.cached(user, &u.password, &password) {
                return Verdict::Ok(user.to_string(), Credential::Cached);
            }
        }
        let ttl = self.config().limits.auth_cache;
        // With the cache on, a login arriving while the same account's password is
        // being verified waits for that run: if it was the same password, the cache
        // now answers.
        // Held until this function returns, after `remember`: dropping it wakes the
        // logins that waited for this run.
        let _lead = match account.filter(|_| !ttl.is_zero()) {
            None => None,
            Some((user, u)) => match self.passwords.join_or_lead(user) {
                Ok(lead) => Some(lead),
                Err(wait) => {
                    let _ = wait.await;
                    if self.passwords.cached(user, &u.password, &password) {
                        return Verdict::Ok(user.to_string(), Credential::Cached);
                    }
                    None // another password, or that run failed: verify this one
                }
            },
        };
        let stored = account.map_or(crate::users::DUMMY_HASH, |(_, u)| u.password.as_str());
        let verified = self
            .passwords
            .verify(ip, stored.to_string(), password.clone())
            .await;
        match (verified, account) {
            (Verified::Match, Some((user, u))) => {
                self.passwords.remember(user, &u.password, &password, ttl);
                Verdict::Ok(user.to_string(), Credential::Password)
            }
            (Verified::Busy, _) => Verdict::Busy,
            _ => Verdict::Wrong,
        }
    }
}
