//! EHLO, HELO and LMTP's LHLO: the greeting checks (a client naming us), and the
//! extensions each port advertises. Part of the pure [`Session`]; no IO.

use super::*;

impl Session {
    pub(super) fn hello(
        &mut self,
        domain: &str,
        esmtp: bool,
        dir: &dyn Directory,
        out: &mut Outbox,
    ) {
        let named = domain.trim_end_matches('.').to_ascii_lowercase();
        // An LMTP client is an MTA on this host, which may well share our name.
        if self.own_names.contains(&named) && self.config.port != Port::Lmtp {
            self.refused_helo = Some(domain.to_string());
            let event = self.rate_event(RateCount::FailedCommands, "", None);
            if let Some(reply) = dir.rate_limited(event) {
                return self.refuse_for_rate(&reply, out);
            }
            out.line(&format!(
                "550 5.7.1 <{domain}>: Helo command rejected: you are not me"
            ));
            return self.count_bad_command(out);
        }
        self.helo = Some(domain.to_string());
        self.esmtp = esmtp;
        self.transaction = None;
        let host = &self.config.hostname;
        if !esmtp {
            out.line(&format!("250 {host}"));
            return;
        }
        let mut lines = vec![
            format!("{host} Hello {domain} [{}]", self.peer),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.message_size_max),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.tls {
            lines.push("REQUIRETLS".to_string());
        }
        if self.config.tls_available && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            out.line(&format!("250{}{l}", if i == last { ' ' } else { '-' }));
        }
    }

    /// Whether MAIL needs a login first (the submission ports).
    pub(super) fn requires_auth(&self) -> bool {
        matches!(self.config.port, Port::Submission | Port::Submissions)
    }

    pub(super) fn auth_offered(&self) -> bool {
        self.requires_auth()
            && self.authenticated.is_none()
            && (self.tls || self.config.allow_plaintext_auth)
    }
}
