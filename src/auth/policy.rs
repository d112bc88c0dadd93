//! What to do with SPF, DKIM, ARC and DMARC verdicts: the operator's policy, pure.
//!
//! Verdicts arrive as plain enums ([`SpfKind`], [`MessageVerdict`]); decisions come out
//! as SMTP replies. The same code decides for every port and every test. No DNS, no IO.
//! Policy is global (`[auth]`) with per-recipient-domain overrides
//! (`[auth.domains."example.org"]`); when a message has recipients in several domains
//! the strictest decision wins.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// An SPF result (RFC 7208 §2.6), without the borrowed details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfKind {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

/// What an SPF hard fail does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfFailAction {
    /// `550 5.7.23` at RCPT, before any data is sent.
    Reject,
    /// Record `spf=fail` in Authentication-Results and let DMARC decide.
    Mark,
}

/// What a DMARC failure under a given published policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcAction {
    /// `550 5.7.1`.
    Reject,
    /// Deliver to the recipient's Junk mailbox.
    Quarantine,
    /// Deliver to INBOX; the result is only recorded.
    Mark,
}

/// What a temporary DNS failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TempErrorAction {
    /// `451 4.7.x`: the sender retries later. Never a silent pass.
    Defer,
    /// Accept and record `temperror`.
    Mark,
}

/// The policy for one recipient domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub spf_fail: SpfFailAction,
    /// For a DMARC failure where the sender published `p=reject`.
    pub dmarc_reject: DmarcAction,
    /// For a DMARC failure where the sender published `p=quarantine`.
    pub dmarc_quarantine: DmarcAction,
    pub temperror: TempErrorAction,
}

impl Default for Policy {
    /// Safe defaults: honour the sender's DMARC policy, let SPF alone feed DMARC (a bare
    /// SPF fail also hits legitimate forwarded mail), and never pass on a DNS error.
    fn default() -> Self {
        Policy {
            spf_fail: SpfFailAction::Mark,
            dmarc_reject: DmarcAction::Reject,
            dmarc_quarantine: DmarcAction::Quarantine,
            temperror: TempErrorAction::Defer,
        }
    }
}

/// Global policy plus per-domain overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub default: Policy,
    /// Keyed by lowercase recipient domain.
    pub domains: HashMap<String, Policy>,
}

impl Policies {
    pub fn for_domain(&self, domain: &str) -> &Policy {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .unwrap_or(&self.default)
    }

    pub fn for_address(&self, address: &str) -> &Policy {
        self.for_domain(address.rsplit_once('@').map_or("", |(_, d)| d))
    }
}

/// The RCPT-time decision for one recipient given the SPF result of MAIL FROM.
pub fn spf_reply(spf: SpfKind, policy: &Policy) -> Option<&'static str> {
    match spf {
        SpfKind::Fail if policy.spf_fail == SpfFailAction::Reject => Some(
            "550 5.7.23 SPF validation failed: the sender's domain does not authorise this host",
        ),
        SpfKind::TempError if policy.temperror == TempErrorAction::Defer => {
            Some("451 4.7.24 SPF validation error (temporary DNS failure), try again later")
        }
        _ => None,
    }
}

/// What the sender's DMARC record asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedPolicy {
    Reject,
    Quarantine,
    None,
}

impl SpfKind {
    /// The RFC 8601 result name, as in Authentication-Results and the delivery log.
    pub fn name(self) -> &'static str {
        match self {
            SpfKind::Pass => "pass",
            SpfKind::Fail => "fail",
            SpfKind::SoftFail => "softfail",
            SpfKind::Neutral => "neutral",
            SpfKind::None => "none",
            SpfKind::TempError => "temperror",
            SpfKind::PermError => "permerror",
        }
    }
}

/// DMARC's verdict on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcKind {
    Pass,
    Fail,
    TempError,
    PermError,
    None,
}

impl DmarcKind {
    /// The RFC 8601 result name.
    pub fn name(self) -> &'static str {
        match self {
            DmarcKind::Pass => "pass",
            DmarcKind::Fail => "fail",
            DmarcKind::TempError => "temperror",
            DmarcKind::PermError => "permerror",
            DmarcKind::None => "none",
        }
    }
}

/// Everything the decision needs from a message verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    pub dmarc: DmarcKind,
    pub published: PublishedPolicy,
    /// The RFC5322.From domain DMARC evaluated.
    pub from_domain: String,
    /// Some DKIM signature could not be checked because of a DNS error.
    pub dkim_temperror: bool,
    /// The DKIM signatures in one word (for the log): `pass` if one passed, else
    /// `temperror`, `permerror` or `fail` for the first that did not, `none` without any.
    pub dkim: &'static str,
    /// The `d=` domains of the DKIM signatures that passed (lowercase, once each).
    pub dkim_domains: Vec<String>,
    /// The complete `Authentication-Results:` header, CRLF-terminated.
    pub header: String,
}

/// What happens to a message after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Inbox,
    Junk,
    /// A permanent refusal; the reply line.
    Reject(String),
    /// A temporary refusal; the reply line.
    Defer(String),
}

impl Disposition {
    fn severity(&self) -> u8 {
        match self {
            Disposition::Inbox => 0,
            Disposition::Junk => 1,
            Disposition::Defer(_) => 2,
            Disposition::Reject(_) => 3,
        }
    }

    /// The stricter of two decisions.
    pub fn stricter(self, other: Disposition) -> Disposition {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// The decision for one recipient's policy.
pub fn disposition(verdict: &MessageVerdict, policy: &Policy) -> Disposition {
    let defer = || {
        Disposition::Defer(
            "451 4.7.0 Temporary DNS failure while checking DKIM/DMARC, try again later".into(),
        )
    };
    let temporary = verdict.dmarc == DmarcKind::TempError
        || (verdict.dmarc == DmarcKind::Fail && verdict.dkim_temperror);
    if temporary {
        return match policy.temperror {
            TempErrorAction::Defer => defer(),
            TempErrorAction::Mark => Disposition::Inbox,
        };
    }
    if verdict.dmarc != DmarcKind::Fail {
        return Disposition::Inbox;
    }
    let action = match verdict.published {
        PublishedPolicy::Reject => policy.dmarc_reject,
        PublishedPolicy::Quarantine => policy.dmarc_quarantine,
        PublishedPolicy::None => DmarcAction::Mark,
    };
    match action {
        DmarcAction::Reject => Disposition::Reject(format!(
            "550 5.7.1 Email rejected per DMARC policy for {}",
            verdict.from_domain
        )),
        DmarcAction::Quarantine => Disposition::Junk,
        DmarcAction::Mark => Disposition::Inbox,
    }
}

/// The strictest decision over all recipients.
pub fn disposition_for<'a>(
    verdict: &MessageVerdict,
    policies: &Policies,
    recipients: impl IntoIterator<Item = &'a str>,
) -> Disposition {
    recipients
        .into_iter()
        .map(|r| disposition(verdict, policies.for_address(r)))
        .fold(Disposition::Inbox, Disposition::stricter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(dmarc: DmarcKind, published: PublishedPolicy) -> MessageVerdict {
        MessageVerdict {
            dmarc,
            published,
            from_domain: "sender.example".into(),
            dkim_temperror: false,
            dkim: "none",
            dkim_domains: Vec::new(),
            header: String::new(),
        }
    }

    #[test]
    fn defaults_follow_the_published_policy() {
        let p = Policy::default();
        let d = disposition(&verdict(DmarcKind::Fail, PublishedPolicy::Reject), &p);
        assert!(matches!(d, Disposition::Reject(r) if r.starts_with("550 5.7.1")));
        assert_eq!(
            disposition(&verdict(DmarcKind::Fail, PublishedPolicy::Quarantine), &p),
            Disposition::Junk
        );
        assert_eq!(
            disposition(&verdict(DmarcKind::Fail, PublishedPolicy::None), &p),
            Disposition::Inbox
        );
        assert_eq!(
            disposition(&verdict(DmarcKind::Pass, PublishedPolicy::Reject), &p),
            Disposition::Inbox
        );
        let d = disposition(&verdict(DmarcKind::TempError, PublishedPolicy::None), &p);
        assert!(matches!(d, Disposition::Defer(r) if r.starts_with("451 4.7.")));
        assert_eq!(spf_reply(SpfKind::Fail, &p), None);
        assert!(spf_reply(SpfKind::TempError, &p).is_some_and(|r| r.starts_with("451 4.7.24")));
    }

    #[test]
    fn per_domain_overrides_and_strictest_wins() {
        let mut policies = Policies::default();
        let lenient = Policy {
            dmarc_reject: DmarcAction::Mark,
            ..Policy::default()
        };
        policies.domains.insert("lenient.example".into(), lenient);
        let v = verdict(DmarcKind::Fail, PublishedPolicy::Reject);
        assert_eq!(
            disposition_for(&v, &policies, ["a@lenient.example"]),
            Disposition::Inbox
        );
        let both = disposition_for(&v, &policies, ["a@lenient.example", "b@strict.example"]);
        assert!(matches!(both, Disposition::Reject(_)));
        let strict_spf = Policy {
            spf_fail: SpfFailAction::Reject,
            ..Policy::default()
        };
        assert!(spf_reply(SpfKind::Fail, &strict_spf).is_some_and(|r| r.starts_with("550 5.7.23")));
    }
}
