//! SMTP server protocol (RFC 5321 and the ESMTP extensions we advertise), sans-IO.
//!
//! [`command`] parses one line into a borrowed [`command::Command`]; [`data`] reads a
//! DATA body; [`session`] is the state machine that ties them together. No sockets,
//! no glommio, no clock reads live here.

pub mod client;
pub mod command;
pub mod data;
pub mod dsn;
pub mod notify;
pub mod session;

pub use session::{
    Action, DeliveryError, Directory, Envelope, Greylisting, Outbox, Port, RateEvent, Recipient,
    Resolution, SenderVerdict, Session, SessionConfig,
};
