//! Every shipped profile in `tuning/` loads and validates (a typo in a key fails here).

use std::path::Path;

use shardmail::config::Config;

#[test]
fn all_profiles_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tuning/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(Some(&path), &[], None)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(config.shards >= 1, "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected default, throughput, low-latency and small-vps profiles"
    );
    let default = Config::load(Some(&dir.join("default.toml")), &[], None).expect("default");
    assert_eq!(default.listen.smtp[0].port(), 25);
    assert_eq!(default.listen.submission[0].port(), 587);
}
