//! SASL (RFC 4422) for SMTP AUTH (RFC 4954), IMAP AUTHENTICATE and POP3 AUTH
//! (RFC 5034): one [`Exchange`] per login runs the mechanism (PLAIN RFC 4616, LOGIN,
//! SCRAM-SHA-256 and -PLUS in [`scram`]) and tells the protocol what to do next
//! ([`Step`]); each protocol only frames challenges and turns a [`SaslError`] into its
//! own reply. Pure: the IO layer looks up verifiers and checks secrets.

use base64::Engine as _;

pub mod scram;

/// Why a client response was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    Cancelled,
    BadBase64,
    /// Not `authzid NUL authcid NUL passwd`.
    Malformed,
    NotUtf8,
    /// An authorization identity other than the user: we do not support proxy logins,
    /// so this is a failed authentication.
    AuthzMismatch,
    /// SCRAM channel binding refused: `-PLUS` without a binding, a binding without
    /// `-PLUS`, a type this connection cannot give, data that does not match, or the
    /// `y` flag where we offered `-PLUS` (a downgrade). A failed authentication.
    ChannelBinding,
}

impl SaslError {
    /// The error means a failed authentication (counted like a wrong password), not
    /// a malformed exchange.
    pub fn is_auth_failure(self) -> bool {
        matches!(self, SaslError::AuthzMismatch | SaslError::ChannelBinding)
    }
}

/// A SASL mechanism this server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    /// The obsolete LOGIN exchange (SMTP only: Outlook and old phones still use it).
    Login,
    ScramSha256,
    ScramSha256Plus,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::Login,
            Mechanism::ScramSha256,
            Mechanism::ScramSha256Plus,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        }
    }

    /// `-PLUS` needs a TLS channel to bind to.
    pub fn needs_tls(self) -> bool {
        self == Mechanism::ScramSha256Plus
    }
}

/// The mechanisms a connection offers, best first: `-PLUS` only over TLS, LOGIN only
/// where the protocol has it (`login`). Every mechanism needs TLS unless
/// `tls.allow_plaintext_auth` (the protocols check): even SCRAM gives an
/// eavesdropper what a dictionary attack needs.
pub fn offered(tls: bool, login: bool) -> Vec<Mechanism> {
    let mut list = Vec::with_capacity(4);
    if tls {
        list.push(Mechanism::ScramSha256Plus);
    }
    list.push(Mechanism::ScramSha256);
    list.push(Mechanism::Plain);
    if login {
        list.push(Mechanism::Login);
    }
    list
}

/// The names of [`offered`], space-separated.
pub fn offered_names(tls: bool, login: bool) -> String {
    offered(tls, login)
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a protocol must do next in an [`Exchange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge (the protocol base64-encodes it) and feed the client's
    /// answer to [`Exchange::respond`].
    Challenge(Vec<u8>),
    /// SCRAM: the IO layer looks up the account's verifier (or a decoy) and the
    /// channel's binding data, and calls [`Exchange::credentials`].
    Credentials { username: String },
    /// The IO layer checks the login (throttle, secret) and answers the protocol;
    /// on success the protocol sends [`Exchange::success_data`] first, if any.
    Check { username: String, secret: Secret },
}

/// What proves a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A password (or app password) to verify.
    Password(String),
    /// A SCRAM proof, already checked against the account's verifier (or a decoy,
    /// which never matches).
    Proof { matched: bool },
}

/// One SASL authentication in progress.
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    /// `-PLUS` was offered on this connection (a `y` flag is then a downgrade).
    offered_plus: bool,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    Start,
    LoginPassword(String),
    ScramFirst(Box<scram::ServerFirst>),
    ScramFinal(Box<scram::Awaiting>),
    /// Sent to the IO layer; SCRAM's `v=` waits here for a successful check.
    Checking(Option<Vec<u8>>),
}

impl Exchange {
    pub fn new(mechanism: Mechanism, offered_plus: bool) -> Exchange {
        Exchange {
            mechanism,
            offered_plus,
            phase: Phase::Start,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The first challenge when the client gave no initial response.
    pub fn first_challenge(&self) -> Step {
        match self.mechanism {
            Mechanism::Login => Step::Challenge(b"Username:".to_vec()),
            _ => Step::Challenge(Vec::new()),
        }
    }

    /// The client's (decoded) response to the last challenge, or its initial response.
    pub fn respond(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Checking(None));
        match (self.mechanism, phase) {
            (Mechanism::Plain, Phase::Start) => {
                let c = plain_decoded(response)?;
                Ok(check(c.username, Secret::Password(c.password)))
            }
            (Mechanism::Login, Phase::Start) => {
                self.phase = Phase::LoginPassword(text(response)?);
                Ok(Step::Challenge(b"Password:".to_vec()))
            }
            (Mechanism::Login, Phase::LoginPassword(user)) => {
                Ok(check(user, Secret::Password(text(response)?)))
            }
            (Mechanism::ScramSha256 | Mechanism::ScramSha256Plus, Phase::Start) => {
                let plus = self.mechanism == Mechanism::ScramSha256Plus;
                let first = scram::client_first(response, plus, self.offered_plus)?;
                let username = first.username.clone();
                self.phase = Phase::ScramFirst(Box::new(first));
                Ok(Step::Credentials { username })
            }
            (_, Phase::ScramFinal(awaiting)) => {
                let proven = awaiting.client_final(response)?;
                self.phase = Phase::Checking(Some(proven.server_final));
                Ok(check(
                    awaiting.username().to_string(),
                    Secret::Proof {
                        matched: proven.matched,
                    },
                ))
            }
            _ => Err(SaslError::Malformed),
        }
    }

    /// SCRAM: the account's verifier (a decoy for an unknown account) and this
    /// connection's channel binding data; gives the server's first message.
    pub fn credentials(
        &mut self,
        verifier: scram::Verifier,
        channel: &scram::ChannelBinding,
    ) -> Result<Step, SaslError> {
        let Phase::ScramFirst(first) = std::mem::replace(&mut self.phase, Phase::Checking(None))
        else {
            return Err(SaslError::Malformed);
        };
        let (awaiting, message) = first.challenge(verifier, channel)?;
        self.phase = Phase::ScramFinal(Box::new(awaiting));
        Ok(Step::Challenge(message))
    }

    /// After the IO layer accepted the login: what the mechanism sends with success
    /// (SCRAM's `v=`), which the protocols send as one more challenge answered by an
    /// empty response (RFC 4422 §5: "additional data with success").
    pub fn success_data(&mut self) -> Option<Vec<u8>> {
        match &mut self.phase {
            Phase::Checking(data) => data.take(),
            _ => None,
        }
    }
}

/// The exchange a protocol holds between lines: the same three calls in every
/// protocol, with "no exchange in progress" as a malformed response.
pub trait InProgress {
    fn respond(&mut self, response: &[u8]) -> Result<Step, SaslError>;
    fn credentials(
        &mut self,
        verifier: scram::Verifier,
        channel: &scram::ChannelBinding,
    ) -> Result<Step, SaslError>;
    /// The mechanism's name for the login log.
    fn mechanism_name(&self) -> &'static str;
}

impl InProgress for Option<Box<Exchange>> {
    fn respond(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        self.as_mut().ok_or(SaslError::Malformed)?.respond(response)
    }

    fn credentials(
        &mut self,
        verifier: scram::Verifier,
        channel: &scram::ChannelBinding,
    ) -> Result<Step, SaslError> {
        self.as_mut()
            .ok_or(SaslError::Malformed)?
            .credentials(verifier, channel)
    }

    fn mechanism_name(&self) -> &'static str {
        self.as_ref().map_or("PLAIN", |e| e.mechanism().name())
    }
}

fn check(username: String, secret: Secret) -> Step {
    Step::Check { username, secret }
}

fn text(response: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(response.to_vec()).map_err(|_| SaslError::NotUtf8)
}

/// Base64 of a challenge, for the wire.
pub fn encode(challenge: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(challenge)
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| "no random numbers from the system".to_string())
}

/// Decodes one base64 response line (`=` is the empty response).
pub fn decode(response: &[u8]) -> Result<Vec<u8>, SaslError> {
    match response {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => base64::engine::general_purpose::STANDARD
            .decode(response)
            .map_err(|_| SaslError::BadBase64),
    }
}

/// Decodes a base64 response that must be UTF-8 text (LOGIN's user name and password).
pub fn decode_text(response: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(decode(response)?).map_err(|_| SaslError::NotUtf8)
}

/// A user name and password from PLAIN or LOGIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Decodes a PLAIN response (base64).
pub fn plain(response: &[u8]) -> Result<Credentials, SaslError> {
    plain_decoded(&decode(response)?)
}

/// A PLAIN response already decoded.
fn plain_decoded(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| SaslError::NotUtf8)
    };
    let (authz, username, password) = (text(authz)?, text(user)?, text(pass)?);
    if !authz.is_empty() && authz != username {
        return Err(SaslError::AuthzMismatch);
    }
    Ok(Credentials { username, password })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_forms() {
        let c = plain(b"AGFsaWNlAHNlY3JldA==").unwrap(); // \0alice\0secret
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "secret")
        );
        assert!(plain(b"YWxpY2UAYWxpY2UAc2VjcmV0").is_ok()); // alice\0alice\0secret
        assert_eq!(
            plain(b"Ym9iAGFsaWNlAHNlY3JldA=="),
            Err(SaslError::AuthzMismatch)
        );
        assert_eq!(plain(b"*"), Err(SaslError::Cancelled));
        assert_eq!(plain(b"!!"), Err(SaslError::BadBase64));
        assert_eq!(plain(b"YWxpY2U="), Err(SaslError::Malformed));
        assert_eq!(decode(b"=").unwrap(), Vec::<u8>::new());
    }
}
