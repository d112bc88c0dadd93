//! Delivery status notifications (RFC 3464 multipart/report, RFC 3461 fields), pure.
//!
//! A bounce (Action: failed) or a delay notice (Action: delayed) for one queued message:
//! a human-readable part, the machine-readable delivery-status, and the original
//! message's header section (text/rfc822-headers). Sent from `MAILER-DAEMON@host` with
//! a null envelope sender, so a DSN never causes another DSN.

use std::time::SystemTime;

use memchr::memmem;

use crate::proto::rfc5322_date;
use crate::proto::smtp::notify::Ret;

/// What the notice reports (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
    /// Stored in the recipient's mailbox here (NOTIFY=SUCCESS).
    Delivered,
    /// Handed to a next hop that does not do DSN (NOTIFY=SUCCESS): no further
    /// notice will come.
    Relayed,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// One recipient's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1` (or `4.4.1` for a delay).
    pub status: String,
    /// The remote server, if one answered.
    pub remote_mta: Option<String>,
    /// The remote reply or our own reason.
    pub diagnostic: String,
    /// The sender's ORCPT: address type and address.
    pub original_recipient: Option<(String, String)>,
}

/// Everything the notice says.
#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// Envelope sender of the original message: the notice's recipient.
    pub to: &'a str,
    pub action: DsnAction,
    pub arrival: SystemTime,
    pub now: SystemTime,
    pub recipients: &'a [RecipientStatus],
    pub original: &'a [u8],
    /// For delays: until when delivery will be retried.
    pub retry_until: Option<SystemTime>,
    /// The sender's ENVID, reported back as Original-Envelope-Id.
    pub envid: Option<&'a str>,
    /// The sender's RET: `Full` returns the whole message, else its header section.
    pub ret: Option<Ret>,
}

impl Dsn<'_> {
    /// The complete notice message, CRLF line ends.
    pub fn build(&self) -> Vec<u8> {
        let boundary = format!("{}/{}", self.queue_id, self.hostname);
        let (subject, intro) = match self.action {
            DsnAction::Failed => (
                "Undelivered Mail Returned to Sender",
                "Your message could not be delivered to one or more recipients.\r\nThis is a permanent error; the message was not delivered to:",
            ),
            DsnAction::Delayed => (
                "Delayed Mail (still being retried)",
                "Your message has not been delivered yet to the recipients below.\r\nNo action is required: delivery will be retried.",
            ),
            DsnAction::Delivered => (
                "Successful Mail Delivery Report",
                "Your message was delivered to the mailboxes of these recipients:",
            ),
            DsnAction::Relayed => (
                "Successful Mail Relay Report",
                "Your message was handed to the next mail server for these recipients.\r\nThat server does not send delivery notices, so none will follow:",
            ),
        };
        let mut m = String::new();
        m.push_str(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
            self.hostname
        ));
        m.push_str(&format!("To: <{}>\r\n", self.to));
        m.push_str(&format!("Subject: {subject}\r\n"));
        m.push_str(&format!("Date: {}\r\n", rfc5322_date(self.now)));
        m.push_str(&format!(
            "Message-ID: <{}.dsn@{}>\r\n",
            self.queue_id, self.hostname
        ));
        m.push_str("Auto-Submitted: auto-replied\r\n");
        m.push_str("MIME-Version: 1.0\r\n");
        m.push_str(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
        ));
        m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
        m.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ));
        m.push_str(&format!(
            "This is the mail system at host {}.\r\n\r\n{intro}\r\n\r\n",
            self.hostname
        ));
        for r in self.recipients {
            m.push_str(&format!("<{}>: {}\r\n", r.address, r.diagnostic));
        }
        m.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        ));
        if let Some(envid) = self.envid {
            m.push_str(&format!(
                "Original-Envelope-Id: {}\r\n",
                crate::proto::smtp::notify::xtext_encode(envid)
            ));
        }
        m.push_str(&format!("Reporting-MTA: dns; {}\r\n", self.hostname));
        m.push_str(&format!("X-Shardmail-Queue-ID: {}\r\n", self.queue_id));
        m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(self.arrival)));
        let action = self.action.as_str();
        for r in self.recipients {
            m.push_str("\r\n");
            if let Some((kind, address)) = &r.original_recipient {
                m.push_str(&format!(
                    "Original-Recipient: {kind}; {}\r\n",
                    one_line(address)
                ));
            }
            m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
            m.push_str(&format!("Action: {action}\r\n"));
            m.push_str(&format!("Status: {}\r\n", r.status));
            if let Some(mta) = &r.remote_mta {
                m.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
            }
            m.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                one_line(&r.diagnostic)
            ));
            if let (DsnAction::Delayed, Some(until)) = (self.action, self.retry_until) {
                m.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
            }
        }
        // RET=FULL asks for the whole message; a failure without RET gets the headers
        // (as Postfix does), and so does every other notice.
        let full = self.ret == Some(Ret::Full) && self.action == DsnAction::Failed;
        let (kind, returned) = if full {
            ("message/rfc822", self.original)
        } else {
            ("text/rfc822-headers", header_section(self.original))
        };
        m.push_str(&format!("\r\n--{boundary}\r\nContent-Type: {kind}\r\n\r\n"));
        let mut out = m.into_bytes();
        out.extend_from_slice(returned);
        if full && !returned.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        out
    }
}

/// The header section of a message, including its final CRLF (not the blank line).
fn header_section(message: &[u8]) -> &[u8] {
    match memmem::find(message, b"\r\n\r\n") {
        Some(i) => message.get(..i + 2).unwrap_or(message),
        None => message,
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The RFC 3463 status to report for a reply: its enhanced code, else one derived from
/// the basic code class.
pub fn status_for(code: u16, enhanced: Option<&str>) -> String {
    match enhanced {
        Some(e) => e.to_string(),
        None if code >= 500 => "5.0.0".into(),
        None => "4.0.0".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn report_has_three_parts_and_original_headers() {
        let original = b"From: a@x.example\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let recipients = [RecipientStatus {
            address: "b@y.example".into(),
            status: "5.1.1".into(),
            remote_mta: Some("mx.y.example".into()),
            diagnostic: "550 5.1.1 no such user".into(),
            original_recipient: Some(("rfc822".into(), "bee@y.example".into())),
        }];
        let dsn = Dsn {
            hostname: "mx.x.example",
            queue_id: "ABC",
            to: "a@x.example",
            action: DsnAction::Failed,
            arrival: SystemTime::UNIX_EPOCH,
            now: SystemTime::UNIX_EPOCH,
            recipients: &recipients,
            original,
            retry_until: None,
            envid: Some("QQ 1"),
            ret: None,
        };
        let text = String::from_utf8(dsn.build()).unwrap();
        assert!(text.contains("Original-Envelope-Id: QQ+201\r\n"));
        assert!(text.contains("Original-Recipient: rfc822; bee@y.example\r\nFinal-Recipient:"));
        assert!(text.contains("report-type=delivery-status"));
        assert!(text
            .contains("Final-Recipient: rfc822; b@y.example\r\nAction: failed\r\nStatus: 5.1.1"));
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: a@x.example\r\nSubject: hi\r\n"
        ));
        assert!(!text.contains("secret body"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 4, "multipart + 3 parts");
        let full = String::from_utf8(
            Dsn {
                ret: Some(Ret::Full),
                ..dsn.clone()
            }
            .build(),
        )
        .unwrap();
        assert!(full.contains("Content-Type: message/rfc822\r\n\r\nFrom: a@x.example"));
        assert!(full.contains("secret body"));
        let delivered = String::from_utf8(
            Dsn {
                action: DsnAction::Delivered,
                ret: Some(Ret::Full),
                ..dsn
            }
            .build(),
        )
        .unwrap();
        assert!(delivered.contains("Action: delivered") && !delivered.contains("secret body"));
    }
}
