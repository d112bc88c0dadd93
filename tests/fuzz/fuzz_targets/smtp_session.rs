//! Fuzz target: a whole SMTP session fed arbitrary bytes, split at a fuzzer-chosen
//! point, never panics, never consumes more than it was given, and answers the same
//! whether the input arrives whole or in two pieces (driven by `proto::testkit`).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use shardmail::proto::smtp::{Action, Directory, Port, Resolution, Session, SessionConfig};
use shardmail::proto::testkit::{Driver, Smtp};

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
    let session = Session::new(config, IpAddr::V4(Ipv4Addr::LOCALHOST), 1, false);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut d = Driver::new(Smtp { session, now, directory: Dir });
    for part in parts {
        d.feed(part, usize::MAX, &mut |smtp, action, turn| {
            let s = &mut smtp.session;
            match action {
                Action::Deliver(env) => s.delivered(&env.id, &Ok(()), turn.out),
                Action::Authenticate { username, .. } => s.auth_result(Some(username), turn.out),
                Action::StartTls => s.tls_established(),
                Action::CheckSpf { .. } => s.spf_checked(shardmail::auth::policy::SpfKind::Fail, turn.out),
                Action::Close => {}
            }
        });
    }
    d.sent
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let at = usize::from(split).min(input.len());
    let whole = drive(&[input]);
    let split = drive(&[&input[..at], &input[at..]]);
    assert_eq!(whole, split);
});
