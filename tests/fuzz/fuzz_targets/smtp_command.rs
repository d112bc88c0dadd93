//! Fuzz target: the SMTP command parser must never panic on any line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = shardmail::proto::smtp::command::parse(line);
});
