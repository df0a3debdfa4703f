//! Funnel files no one should write: empty, not YAML, binary, 50 MB, nested 10,000 levels
//! deep. Each gets one clear diagnostic — no panic, no hang, no unbounded memory.

use std::path::Path;

use autofunnel::project;
use autofunnel::settings::Settings;

fn check_one(name: &str, contents: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let funnels = dir.path().join("funnels");
    std::fs::create_dir(&funnels).unwrap();
    let file = funnels.join(name);
    std::fs::write(&file, contents).unwrap();
    let settings = Settings {
        funnels_dir: funnels.clone(),
        templates_dir: dir.path().join("templates"),
        ..Settings::default()
    };
    let (loaded, report) = project::check(&settings, None);
    assert!(loaded.is_none());
    report
        .diagnostics
        .iter()
        .map(|d| {
            assert_eq!(d.file, file);
            let shown = d.to_string();
            shown
                .strip_prefix(&format!("{}:", Path::new(&file).display()))
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn empty_file() {
    assert_eq!(
        check_one("empty.yaml", b""),
        ["1:1: the funnel file is empty: it needs at least `stages`"]
    );
}

#[test]
fn not_yaml() {
    assert_eq!(
        check_one("text.yaml", b"stages: [ {\n"),
        ["1:11: invalid YAML: unclosed bracket '{'"]
    );
    assert_eq!(
        check_one("prose.yaml", "Это просто текст, а не воронка.\n".as_bytes()),
        ["1:1: funnel: expected a mapping, found a string"]
    );
}

#[test]
fn binary_file() {
    assert_eq!(
        check_one("bin.yaml", b"stages:\x00\x01\x02"),
        ["1:1: not a text file (binary data at byte 7)"]
    );
    assert_eq!(
        check_one("latin1.yaml", b"name: caf\xe9\n"),
        ["1:1: not UTF-8 text (invalid byte at offset 9)"]
    );
}

#[test]
fn fifty_megabyte_file_is_refused_before_reading() {
    let mut big = b"name: big\n# ".to_vec();
    big.resize(50 * 1024 * 1024, b'x');
    assert_eq!(
        check_one("big.yaml", &big),
        ["1:1: file is 52428800 bytes; at most 1048576 are allowed"]
    );
}

#[test]
fn ten_thousand_levels_deep() {
    let flow = format!("stages: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let d = check_one("flow.yaml", flow.as_bytes());
    assert_eq!(d.len(), 1);
    assert!(
        d[0].ends_with("invalid YAML: nested more than 32 levels deep"),
        "{d:?}"
    );
    // Block nesting needs indentation, so 1,000 levels already fill half a megabyte.
    let block: String = (0..1_000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let d = check_one("block.yaml", block.as_bytes());
    assert_eq!(d.len(), 1);
    assert!(
        d[0].ends_with("invalid YAML: nested more than 32 levels deep"),
        "{d:?}"
    );
}
