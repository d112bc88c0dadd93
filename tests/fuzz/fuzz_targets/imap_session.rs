//! Fuzz target: an IMAP session (over the in-memory account, logged in and with a
//! mailbox selected when the first byte says so) fed arbitrary bytes, split at a
//! fuzzer-chosen point, never panics and answers the same whole or in two pieces.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use shardmail::proto::imap::memstore::Driver;
use shardmail::proto::imap::session::ImapConfig;

const MESSAGE: &[u8] = b"From: A <a@x.example>\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--b--\r\n";

fn drive(setup: u8, parts: &[&[u8]]) -> Vec<u8> {
    let config = Arc::new(ImapConfig {
        hostname: "imap.example".into(),
        tls_available: true,
        allow_plaintext_auth: false,
        command_bytes_max: 512,
        literal_bytes_max: 2048,
        depth_max: 8,
        bad_commands_max: 1000,
        auth_failures_max: 1000,
        ..ImapConfig::default()
    });
    let mut d = Driver::new(config, setup & 1 == 1);
    d.store.deliver(1, MESSAGE, 1_795_600_000);
    d.store.deliver(1, b"Subject: plain\r\n\r\ntext\r\n", 1_795_600_100);
    d.store.deliver(
        1,
        b"Message-ID: <m3@x>\r\nReferences: <m1@x> <m2@x>\r\nIn-Reply-To: <m2@x>\r\nFrom: \"B\" <b@y.example> (c)\r\nSubject: Re: [l] s (fwd)\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nx\r\n",
        1_795_600_200,
    );
    if setup & 2 == 2 {
        d.feed(b"a LOGIN bob pw\r\nb SELECT INBOX\r\n");
    }
    for part in parts {
        d.feed(part);
        assert!(d.pending.len() <= 4 * 1024, "unbounded pending input");
    }
    // A synchronizing literal's continuation depends on where input stops, and so
    // does what survives STARTTLS (plaintext pipelined behind it is dropped): compare
    // up to the first STARTTLS.
    let text = String::from_utf8_lossy(&d.sent).replace("+ Ready for literal data\r\n", "");
    let cut = text.find("OK Begin TLS negotiation now").unwrap_or(text.len());
    text[..cut].as_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else { return };
    let Some((&split, input)) = rest.split_first() else { return };
    let at = usize::from(split).min(input.len());
    assert_eq!(drive(setup, &[input]), drive(setup, &[&input[..at], &input[at..]]));
});
