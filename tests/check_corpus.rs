//! `check` on a corpus of broken funnels: each file's diagnostics must equal its expected file
//! (`tests/corpus/expected/<name>.txt`), byte for byte.

use std::path::PathBuf;

use autofunnel::project;
use autofunnel::settings::Settings;

use crate::util::{expect_file, root};

fn corpus_settings() -> Settings {
    Settings {
        funnels_dir: PathBuf::from("tests/corpus/funnels"),
        templates_dir: PathBuf::from("tests/corpus/templates"),
        ..Settings::default()
    }
}

#[test]
fn every_corpus_file_gives_exactly_its_expected_diagnostics() {
    let settings = corpus_settings();
    let files = project::funnel_files(&settings.funnels_dir);
    assert!(files.len() >= 15, "corpus has only {} files", files.len());
    let mut names = Vec::new();
    for file in files {
        let (loaded, report) = project::check(&settings, Some(std::slice::from_ref(&file)));
        assert!(
            loaded.is_none(),
            "{} passed check but is in the corpus of broken funnels",
            file.display()
        );
        assert!(report.errors() > 0);
        let mut out: String = report
            .diagnostics
            .iter()
            .map(|d| format!("{d}\n"))
            .collect();
        out.push_str(&report.summary());
        out.push('\n');
        let stem = file.file_stem().unwrap().to_str().unwrap().to_string();
        expect_file(
            &root().join(format!("tests/corpus/expected/{stem}.txt")),
            &out,
        );
        names.push(stem);
    }
    // Every expected file belongs to a corpus file, so none is stale.
    for e in std::fs::read_dir(root().join("tests/corpus/expected")).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(names.contains(&stem), "stale expected file {}", p.display());
    }
}

#[test]
fn the_whole_corpus_reports_every_file_in_one_run() {
    let (_, report) = project::check(&corpus_settings(), None);
    let reported: std::collections::BTreeSet<_> =
        report.diagnostics.iter().map(|d| d.file.clone()).collect();
    let silent: Vec<_> = project::funnel_files(&corpus_settings().funnels_dir)
        .into_iter()
        .filter(|f| {
            let templates =
                std::path::Path::new("tests/corpus/templates").join(f.file_stem().unwrap());
            !reported.iter().any(|r| r == f || r.starts_with(&templates))
        })
        .collect();
    assert!(
        silent.is_empty(),
        "no diagnostics for {silent:?} or their templates when the whole corpus is checked"
    );
}
