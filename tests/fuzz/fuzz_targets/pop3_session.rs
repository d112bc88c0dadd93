//! Fuzz target: a POP3 session fed arbitrary bytes, split at a fuzzer-chosen point,
//! never panics and answers the same whole or in two pieces (driven by
//! `proto::testkit`).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use shardmail::proto::pop3::{Action, Entry, LoginRefusal, Maildrop, Pop3Config, Session};
use shardmail::proto::testkit::Driver;

fn drive(parts: &[&[u8]]) -> Vec<u8> {
    let config = Arc::new(Pop3Config {
        hostname: "pop.example".into(),
        tls_available: true,
        allow_plaintext_auth: true,
        line_bytes_max: 256,
        bad_commands_max: 1000,
        auth_failures_max: 1000,
        output_bytes_max: 256 * 1024,
    });
    let mut d = Driver::new(Session::new(config, false));
    for part in parts {
        d.feed(part, usize::MAX, &mut |s, action, turn| match action {
            Action::Authenticate { username, password, .. } if password == "pw" => {
                let drop = Maildrop {
                    uidvalidity: 1,
                    entries: vec![Entry { uid: 1, size: 10, deleted: false }],
                };
                s.logged_in(username, drop, turn.out)
            }
            Action::Authenticate { .. } => s.login_refused(LoginRefusal::BadCredentials, turn.out),
            Action::Retrieve { .. } => s.retrieved(),
            Action::Update { expunge } => s.updated(Ok(expunge.len()), turn.out),
            Action::StartTls => s.tls_established(),
            Action::Close => {}
        });
    }
    d.sent
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let at = usize::from(split).min(input.len());
    assert_eq!(drive(&[input]), drive(&[&input[..at], &input[at..]]));
});
