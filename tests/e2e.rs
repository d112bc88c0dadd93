//! Runs the end-to-end suite in `tests/e2e/` (Python's smtplib against the real
//! binary on loopback) as part of `cargo test`, so one command runs everything.

use std::process::Command;

#[test]
fn python_end_to_end_suite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let output = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            dir,
            "-p",
            "test_*.py",
        ])
        .env("SHARDMAIL_BIN", env!("CARGO_BIN_EXE_shardmail"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir)
        .output()
        .expect("python3 is needed for the end-to-end tests (.ci/run installs it)");
    let report = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{report}");
    assert!(
        output.status.success(),
        "end-to-end suite failed:\n{report}"
    );
}
