//! The core is sans-IO: no clock, no files, no sockets, no async runtime, no global
//! randomness. This test reads its sources and fails on any of them, so the rule survives
//! every refactor.

const FORBIDDEN: &[&str] = &["std::time", "std::fs", "std::net", "std::thread", "tokio", "thread_rng", "SystemTime", "Instant::now", "rand::"];

#[test]
fn core_sources_do_no_io() {
    let source_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&source_dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        let text = std::fs::read_to_string(&path).expect("source is readable");
        for (number, line) in text.lines().enumerate() {
            for word in FORBIDDEN {
                assert!(!line.contains(word), "{}:{}: the sans-IO core must not use `{word}`: {line}", path.display(), number + 1);
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "expected to check every core source file, saw {checked}");
}

#[test]
fn core_has_no_io_dependencies() {
    let manifest = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("manifest");
    let dependencies = manifest.split("[dependencies]").nth(1).expect("a dependencies section");
    for line in dependencies.lines().take_while(|line| !line.starts_with('[')) {
        let name = line.split(['=', '.']).next().unwrap_or_default().trim();
        assert!(name.is_empty() || name.starts_with('#') || name == "serde" || name == "bytes", "keel-core may depend only on serde and bytes, found {name}");
    }
}
