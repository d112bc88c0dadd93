//! The Sendmail milter protocol, version 6, from the MTA's side (as Postfix speaks it):
//! the packets we send ([`wire`]), the replies we accept ([`Reply`], [`Decoder`]), one
//! message's conversation ([`Conversation`]) and the changes a milter may make to the
//! message ([`edit`]).
//!
//! Owns the wire format and the order of the stages. Never does IO, never trusts a
//! milter's lengths: a packet longer than [`PACKET_MAX`] or a change that would grow
//! the message past the caller's limit ends the conversation with an error, which the
//! IO layer turns into the milter's `default_action`.

mod conversation;
pub mod edit;
pub mod wire;

pub use conversation::{
    quit, Conversation, ConversationError, Flow, Outcome, Transaction, Verdict,
};
pub use edit::Edit;

/// The protocol version we speak.
pub const VERSION: u32 = 6;

/// The largest body chunk we send (libmilter's `MILTER_CHUNK_SIZE`).
pub const CHUNK: usize = 65_535;

/// The largest packet we accept from a milter: a body replacement chunk with room to
/// spare. libmilter never sends more than 64 KiB at once.
pub const PACKET_MAX: usize = 1 << 20;

/// Commands (MTA to milter), `SMFIC_*` in libmilter's `mfdef.h`.
pub mod command {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// What a milter may ask to do (`SMFIF_*`): the ones we offer.
pub mod action {
    pub const ADD_HEADERS: u32 = 0x01;
    pub const CHANGE_BODY: u32 = 0x02;
    pub const CHANGE_HEADERS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    /// Everything we carry out. Recipient and sender changes (`ADDRCPT`, `DELRCPT`,
    /// `CHGFROM`) are not offered: a filter that rewrites the envelope belongs before
    /// the recipients were accepted, and we replay the stages after DATA.
    pub const OFFERED: u32 = ADD_HEADERS | CHANGE_BODY | CHANGE_HEADERS | QUARANTINE;
}

/// Protocol steps a milter may ask us to skip or not to wait for (`SMFIP_*`).
pub mod protocol {
    pub const NO_CONNECT: u32 = 0x01;
    pub const NO_HELO: u32 = 0x02;
    pub const NO_MAIL: u32 = 0x04;
    pub const NO_RCPT: u32 = 0x08;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NO_REPLY_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const NO_REPLY_CONNECT: u32 = 0x1000;
    pub const NO_REPLY_HELO: u32 = 0x2000;
    pub const NO_REPLY_MAIL: u32 = 0x4000;
    pub const NO_REPLY_RCPT: u32 = 0x8000;
    pub const NO_REPLY_DATA: u32 = 0x10000;
    pub const NO_REPLY_UNKNOWN: u32 = 0x20000;
    pub const NO_REPLY_EOH: u32 = 0x40000;
    pub const NO_REPLY_BODY: u32 = 0x80000;
    /// Everything we honour. Not offered: rejected recipients (`RCPT_REJ`), header
    /// values with their leading space (`HDR_LEADSPC`) and bigger body chunks.
    pub const OFFERED: u32 = NO_CONNECT
        | NO_HELO
        | NO_MAIL
        | NO_RCPT
        | NO_BODY
        | NO_HEADERS
        | NO_EOH
        | NO_REPLY_HEADER
        | NO_UNKNOWN
        | NO_DATA
        | SKIP
        | NO_REPLY_CONNECT
        | NO_REPLY_HELO
        | NO_REPLY_MAIL
        | NO_REPLY_RCPT
        | NO_REPLY_DATA
        | NO_REPLY_UNKNOWN
        | NO_REPLY_EOH
        | NO_REPLY_BODY;
}

/// One reply from a milter (`SMFIR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The answer to our option negotiation.
    Negotiate {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Continue,
    /// Accept the message: no more stages, no changes.
    Accept,
    /// Reject with the MTA's default text.
    Reject,
    /// Try again later, with the MTA's default text.
    Tempfail,
    /// Accept and throw away.
    Discard,
    /// Reject or try later with this reply (`550 5.7.1 text`).
    ReplyCode(String),
    /// Hold the message (for us: deliver to Junk), with a reason.
    Quarantine(String),
    /// Skip the rest of the body.
    Skip,
    /// Still working: wait longer.
    Progress,
    /// Drop the connection (treated as a tempfail).
    ConnectionFail,
    /// A change to the message at the end of the body.
    Edit(Edit),
    /// A reply we never offered (recipient or sender changes, symbol lists): its code.
    Unsupported(u8),
}

/// Why a milter's bytes could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A length of 0 or more than [`PACKET_MAX`].
    BadLength(usize),
    /// A reply whose payload does not fit its code.
    Malformed(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadLength(n) => write!(f, "packet length {n} out of range"),
            WireError::Malformed(c) => {
                write!(f, "malformed reply '{}'", char::from(*c).escape_default())
            }
        }
    }
}

/// Splits a milter's byte stream into replies. Holds at most one partial packet.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    /// Bytes read from the milter.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete reply, `None` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, WireError> {
        let Some(header) = self.buffer.first_chunk::<4>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*header) as usize;
        if length == 0 || length > PACKET_MAX {
            return Err(WireError::BadLength(length));
        }
        let Some(packet) = self.buffer.get(4..4 + length) else {
            return Ok(None);
        };
        let reply = wire::parse_reply(packet)?;
        self.buffer.drain(..4 + length);
        Ok(Some(reply))
    }

    /// Bytes held for a partial packet.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn framed(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(code);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn replies_decode_in_any_fragmentation() {
        let mut stream = framed(b'c', b"");
        stream.extend(framed(b'h', b"X-Spam\0yes\0"));
        stream.extend(framed(b'y', b"550 5.7.1 no thanks\0"));
        let expected = vec![
            Reply::Continue,
            Reply::Edit(Edit::Add {
                name: "X-Spam".into(),
                value: "yes".into(),
            }),
            Reply::ReplyCode("550 5.7.1 no thanks".into()),
        ];
        for size in 1..stream.len() {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(size) {
                decoder.feed(piece);
                while let Some(r) = decoder.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, expected, "in pieces of {size}");
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        let mut decoder = Decoder::default();
        decoder.feed(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next_reply(),
            Err(WireError::BadLength(u32::MAX as usize))
        );
        let mut decoder = Decoder::default();
        decoder.feed(&[0, 0, 0, 0]);
        assert_eq!(decoder.next_reply(), Err(WireError::BadLength(0)));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for (code, payload) in [
            (b'O', &b"\0\0"[..]),
            (b'h', b"no-terminator"),
            (b'i', b"\0\0"),
            (b'm', b"\0\0\0\x01Name\0"),
        ] {
            let mut decoder = Decoder::default();
            decoder.feed(&framed(code, payload));
            assert_eq!(decoder.next_reply(), Err(WireError::Malformed(code)));
        }
    }
}
