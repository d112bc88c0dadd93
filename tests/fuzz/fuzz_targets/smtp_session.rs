//! Fuzz target: a whole SMTP session fed arbitrary bytes, split at a fuzzer-chosen
//! point, never panics, never consumes more than it was given, and answers the same
//! whether the input arrives whole or in two pieces.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shardmail::proto::smtp::{Action, Directory, Outbox, Port, Resolution, Session, SessionConfig};

struct Dir;
impl Directory for Dir {
    fn resolve(&self, address: &str) -> Resolution {
        if address.ends_with("@example.org") {
            Resolution::Local { account: 1, mailbox: address.into() }
        } else {
            Resolution::NotLocal
        }
    }
}

fn drive(parts: &[&[u8]]) -> Vec<u8> {
    let config = Rc::new(SessionConfig {
        hostname: "mx.example".into(),
        port: Port::Submission,
        tls_available: true,
        allow_plaintext_auth: true,
        message_size_max: 1024,
        line_bytes_max: 512,
        recipients_max: 10,
        bad_commands_max: 1000,
        auth_failures_max: 1000,
        postmaster_domain: "example.org".into(),
        policies: Default::default(),
        sender_login_match: true,
    });
    let mut s = Session::new(config, IpAddr::V4(Ipv4Addr::LOCALHOST), 1, false);
    let mut out = Outbox::default();
    let mut trace = Vec::new();
    let mut pending = Vec::new();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for part in parts {
        pending.extend_from_slice(part);
        loop {
            let used = s.receive(&pending, now, &Dir, &mut out);
            assert!(used <= pending.len());
            pending.drain(..used);
            trace.append(&mut out.reply);
            let actions = std::mem::take(&mut out.actions);
            if actions.is_empty() {
                break;
            }
            for a in actions {
                match a {
                    Action::Deliver(env) => s.delivered(&env.id, Ok(()), &mut out),
                    Action::Authenticate { username, .. } => s.auth_result(Some(username), &mut out),
                    Action::StartTls => s.tls_established(),
                    Action::CheckSpf { .. } => s.spf_checked(shardmail::auth::policy::SpfKind::Fail, &mut out),
                    Action::Close => {}
                }
                trace.append(&mut out.reply);
            }
        }
    }
    trace
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let at = usize::from(split).min(input.len());
    let whole = drive(&[input]);
    let split = drive(&[&input[..at], &input[at..]]);
    assert_eq!(whole, split);
});
