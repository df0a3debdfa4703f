//! Parser round-trips: every construct of the language parses without a diagnostic, prints as
//! the expected canonical YAML, and parsing that print gives the same funnel again.

use std::path::Path;

use autofunnel::funnel::{self, Sink, print};

use crate::util::{expect_file, root};

fn parse(path: &Path, text: &str) -> funnel::Funnel {
    let mut sink = Sink::new(path);
    let f = funnel::parse_text(path, text, &mut sink);
    assert!(
        sink.diagnostics.is_empty(),
        "{}: {:#?}",
        path.display(),
        sink.diagnostics
    );
    f.expect("parsed")
}

#[test]
fn every_construct_round_trips() {
    let dir = root().join("tests/constructs/src");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let first = parse(&path, &std::fs::read_to_string(&path).unwrap());
        let printed = print::to_yaml(&first);
        expect_file(
            &root().join(format!("tests/constructs/printed/{stem}.yaml")),
            &printed,
        );
        // The printed text names the same file, so it parses under the same id.
        let second = parse(&path, &printed);
        assert_eq!(
            print::to_yaml(&second),
            printed,
            "{stem}: printing is not a fixpoint"
        );
        assert_eq!(second.stages.len(), first.stages.len());
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn example_funnels_round_trip() {
    for path in autofunnel::project::funnel_files(&root().join("funnels")) {
        let first = parse(&path, &std::fs::read_to_string(&path).unwrap());
        let printed = print::to_yaml(&first);
        let second = parse(&path, &printed);
        assert_eq!(print::to_yaml(&second), printed, "{}", path.display());
    }
}
