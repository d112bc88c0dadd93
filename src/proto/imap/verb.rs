//! The IMAP command names this server knows, each declared once with the session
//! states it is valid in, whether it has a `UID` form, and the capability that
//! advertises it. The session dispatches on [`Verb`] with an exhaustive `match`, so a
//! command added here and not handled there (or the reverse) does not compile, and the
//! CAPABILITY list is derived from the same table. Owns names only: never parses
//! arguments or touches session state.

/// Where in the session a command may be given (RFC 9051 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Any state (CAPABILITY, NOOP, LOGOUT, ID).
    Any,
    /// Before login only.
    NotAuthenticated,
    /// After login, with or without a mailbox selected.
    Authenticated,
    /// With a mailbox selected.
    Selected,
}

macro_rules! verbs {
    ($( $verb:ident $name:literal $allowed:ident uid=$uid:literal cap=$cap:expr; )*) => {
        /// A command name, parsed once (case-insensitively).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Verb { $($verb,)* }

        impl Verb {
            /// Every verb, in declaration order.
            pub const ALL: &'static [Verb] = &[$(Verb::$verb,)*];

            /// The verb named `name` (already upper-cased by the tokenizer).
            pub fn parse(name: &str) -> Option<Verb> {
                match name {
                    $($name => Some(Verb::$verb),)*
                    _ => None,
                }
            }

            /// The command's name as sent.
            pub fn name(self) -> &'static str {
                match self { $(Verb::$verb => $name,)* }
            }

            /// The states the command is valid in.
            pub fn allowed(self) -> Allowed {
                match self { $(Verb::$verb => Allowed::$allowed,)* }
            }

            /// Whether `UID <verb>` exists (RFC 9051 §6.4.9, RFC 4315, RFC 6851).
            pub fn has_uid_form(self) -> bool {
                match self { $(Verb::$verb => $uid,)* }
            }

            /// The capability that advertises this command, when it is an extension.
            pub fn capability(self) -> Option<&'static str> {
                match self { $(Verb::$verb => $cap,)* }
            }
        }
    };
}

verbs! {
    Capability "CAPABILITY" Any uid=false cap=None;
    Noop "NOOP" Any uid=false cap=None;
    Logout "LOGOUT" Any uid=false cap=None;
    Id "ID" Any uid=false cap=Some("ID");
    StartTls "STARTTLS" NotAuthenticated uid=false cap=None;
    Login "LOGIN" NotAuthenticated uid=false cap=None;
    Authenticate "AUTHENTICATE" NotAuthenticated uid=false cap=Some("SASL-IR");
    Enable "ENABLE" Authenticated uid=false cap=Some("ENABLE");
    Compress "COMPRESS" Authenticated uid=false cap=Some("COMPRESS=DEFLATE");
    Namespace "NAMESPACE" Authenticated uid=false cap=Some("NAMESPACE");
    Select "SELECT" Authenticated uid=false cap=None;
    Examine "EXAMINE" Authenticated uid=false cap=None;
    Create "CREATE" Authenticated uid=false cap=Some("CREATE-SPECIAL-USE");
    Delete "DELETE" Authenticated uid=false cap=None;
    Rename "RENAME" Authenticated uid=false cap=None;
    Subscribe "SUBSCRIBE" Authenticated uid=false cap=None;
    Unsubscribe "UNSUBSCRIBE" Authenticated uid=false cap=None;
    List "LIST" Authenticated uid=false cap=Some("LIST-EXTENDED");
    Lsub "LSUB" Authenticated uid=false cap=None;
    Status "STATUS" Authenticated uid=false cap=Some("STATUS=SIZE");
    GetQuota "GETQUOTA" Authenticated uid=false cap=Some("QUOTA");
    GetQuotaRoot "GETQUOTAROOT" Authenticated uid=false cap=Some("QUOTA");
    SetQuota "SETQUOTA" Authenticated uid=false cap=Some("QUOTA");
    Append "APPEND" Authenticated uid=false cap=None;
    SetMetadata "SETMETADATA" Authenticated uid=false cap=Some("METADATA");
    GetMetadata "GETMETADATA" Authenticated uid=false cap=Some("METADATA");
    Idle "IDLE" Authenticated uid=false cap=Some("IDLE");
    Notify "NOTIFY" Authenticated uid=false cap=Some("NOTIFY");
    Unauthenticate "UNAUTHENTICATE" Authenticated uid=false cap=Some("UNAUTHENTICATE");
    Check "CHECK" Selected uid=false cap=None;
    Close "CLOSE" Selected uid=false cap=None;
    Unselect "UNSELECT" Selected uid=false cap=Some("UNSELECT");
    Expunge "EXPUNGE" Selected uid=true cap=Some("UIDPLUS");
    Search "SEARCH" Selected uid=true cap=Some("ESEARCH");
    Sort "SORT" Selected uid=true cap=Some("SORT");
    CancelUpdate "CANCELUPDATE" Selected uid=false cap=Some("CONTEXT=SEARCH CONTEXT=SORT");
    Thread "THREAD" Selected uid=true cap=Some("THREAD=ORDEREDSUBJECT THREAD=REFERENCES");
    Fetch "FETCH" Selected uid=true cap=None;
    Store "STORE" Selected uid=true cap=None;
    Copy "COPY" Selected uid=true cap=None;
    Move "MOVE" Selected uid=true cap=Some("MOVE");
}

impl Verb {
    /// Whether the command may be given now.
    pub fn allowed_in(self, logged_in: bool, selected: bool) -> bool {
        match self.allowed() {
            Allowed::Any => true,
            Allowed::NotAuthenticated => !logged_in,
            Allowed::Authenticated => logged_in,
            Allowed::Selected => logged_in && selected,
        }
    }

    /// The reply text when the command is not valid now.
    pub fn refusal(self, logged_in: bool) -> &'static str {
        match self.allowed() {
            _ if !logged_in => "Log in first",
            Allowed::NotAuthenticated => "Already logged in",
            _ => "No mailbox selected",
        }
    }
}

/// The capabilities the commands bring, in declaration order, each once.
pub fn command_capabilities() -> Vec<&'static str> {
    let mut caps: Vec<&'static str> = Vec::new();
    for cap in Verb::ALL.iter().filter_map(|v| v.capability()) {
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_parses_back_from_its_name() {
        for v in Verb::ALL {
            assert_eq!(Verb::parse(v.name()), Some(*v));
        }
        assert_eq!(Verb::parse("XYZZY"), None);
    }

    #[test]
    fn uid_forms_are_the_rfc_ones() {
        let uid: Vec<&str> = Verb::ALL
            .iter()
            .filter(|v| v.has_uid_form())
            .map(|v| v.name())
            .collect();
        assert_eq!(
            uid,
            ["EXPUNGE", "SEARCH", "SORT", "THREAD", "FETCH", "STORE", "COPY", "MOVE"]
        );
    }

    #[test]
    fn states_gate_as_rfc_9051_section_3_says() {
        assert!(Verb::Noop.allowed_in(false, false));
        assert!(Verb::Login.allowed_in(false, false));
        assert!(!Verb::Login.allowed_in(true, false));
        assert!(!Verb::Select.allowed_in(false, false));
        assert!(Verb::Select.allowed_in(true, true));
        assert!(!Verb::Fetch.allowed_in(true, false));
        assert_eq!(Verb::Fetch.refusal(true), "No mailbox selected");
        assert_eq!(Verb::Login.refusal(true), "Already logged in");
        assert_eq!(Verb::Fetch.refusal(false), "Log in first");
    }
}
