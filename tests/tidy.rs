//! The tree keeps its architecture: a module imports nothing across a boundary ARCHITECTURE.md
//! forbids, and no two modules of `src/` import each other, directly or round a loop. The
//! imports are read from the source (`crate::…` paths, `super::…` between sibling files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules and what each may never import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The pure core: no IO, no database, no HTTP.
    (
        "domain",
        &[
            "funnel", "engine", "runtime", "store", "server", "delivery", "cli",
        ],
    ),
    (
        "funnel",
        &["engine", "runtime", "store", "server", "delivery", "cli"],
    ),
    (
        "engine",
        &["runtime", "store", "server", "delivery", "cli", "project"],
    ),
    // The database knows rows and domain values, not the engine or its callers.
    (
        "store",
        &["engine", "runtime", "server", "delivery", "cli", "project"],
    ),
    // Payment notifications are read without IO.
    (
        "payments",
        &[
            "engine", "runtime", "store", "server", "delivery", "cli", "project",
        ],
    ),
    // The sender sees only its outbox handle.
    ("delivery", &["runtime", "server", "cli"]),
    ("metrics", &["delivery", "runtime", "server", "cli"]),
    // Handlers write through the runtime; links are signed by `tokens`, not `delivery`.
    ("server", &["delivery", "engine", "cli"]),
    ("runtime", &["server", "delivery", "cli"]),
    // Reports are pure: rows and a time in, figures out.
    (
        "report",
        &["engine", "runtime", "server", "delivery", "cli"],
    ),
];

/// Which module a source file belongs to: `src/store/batch.rs` → (`store`, `batch`),
/// `src/store/mod.rs` → (`store`, ``), `src/lib.rs` → (`lib`, ``).
fn module_of(rel: &Path) -> (String, String) {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [file] => (file.clone(), String::new()),
        [top, file, ..] if file == "mod" => (top.clone(), String::new()),
        [top, file, ..] => (top.clone(), file.clone()),
        [] => (String::new(), String::new()),
    }
}

/// The first segment of every path that follows `prefix` (`crate::`, `super::`), braces
/// included: `crate::{store::Store, domain}` gives `store` and `domain`.
fn heads(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    at_start = true;
                    item.clear();
                    continue;
                }
                if at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        out.insert(std::mem::take(&mut item));
                        at_start = false;
                    }
                }
            }
            if at_start && !item.is_empty() {
                out.insert(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Source without comments (line and doc comments), so prose naming a module is no import.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Tree {
    /// Top-level module → the top-level modules it imports.
    top: BTreeMap<String, BTreeSet<String>>,
    /// (module, file) → the sibling files of the same folder module it imports.
    siblings: BTreeMap<(String, String), BTreeSet<String>>,
}

/// Every `.rs` file under `src`.
fn rust_files(src: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn read_tree(src: &Path) -> Tree {
    let files = rust_files(src);
    let mut tree = Tree {
        top: BTreeMap::new(),
        siblings: BTreeMap::new(),
    };
    let names: BTreeMap<String, BTreeSet<String>> =
        files.iter().fold(BTreeMap::new(), |mut m, f| {
            let (top, file) = module_of(f.strip_prefix(src).unwrap());
            m.entry(top).or_default().insert(file);
            m
        });
    for f in &files {
        let (top, file) = module_of(f.strip_prefix(src).unwrap());
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let imports = tree.top.entry(top.clone()).or_default();
        for h in heads(&code, "crate::") {
            if h != top && names.contains_key(&h) {
                imports.insert(h);
            }
        }
        if !file.is_empty() {
            let own = &names[&top];
            let mut sib: BTreeSet<String> = heads(&code, "super::")
                .into_iter()
                .filter(|h| own.contains(h) && *h != file)
                .collect();
            let within = code.replace(&format!("crate::{top}::"), "super::");
            sib.extend(
                heads(&within, "super::")
                    .into_iter()
                    .filter(|h| own.contains(h) && *h != file && !h.is_empty()),
            );
            tree.siblings.insert((top, file), sib);
        }
    }
    tree
}

/// A loop in `graph`, as the list of its nodes, if there is one.
fn find_loop(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_nothing_across_a_forbidden_boundary() {
    let tree = read_tree(&crate::util::root().join("src"));
    let mut wrong = Vec::new();
    for (module, never) in FORBIDDEN {
        let imports = tree
            .top
            .get(*module)
            .unwrap_or_else(|| panic!("no module `{module}` in src/"));
        for n in imports.iter().filter(|i| never.contains(&i.as_str())) {
            wrong.push(format!("`{module}` imports `{n}`"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_two_modules_import_each_other() {
    let tree = read_tree(&crate::util::root().join("src"));
    let mut graph = tree.top.clone();
    // The binary's entry points sit above everything by design.
    graph.remove("lib");
    graph.remove("main");
    if let Some(cycle) = find_loop(&graph) {
        panic!("modules import each other: {}", cycle.join(" → "));
    }
    let mut by_folder: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for ((top, file), sib) in &tree.siblings {
        by_folder
            .entry(top.clone())
            .or_default()
            .insert(file.clone(), sib.clone());
    }
    for (top, graph) in by_folder {
        if let Some(cycle) = find_loop(&graph) {
            panic!("files of `{top}` import each other: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_imports_as_written() {
    let code = "use crate::{store::Store, domain::{Email, LeadId}};\nlet x = crate::engine::step;\n\
                use super::batch::Params;\n// crate::server is prose\n";
    let code = code_of(code);
    assert_eq!(
        heads(&code, "crate::"),
        ["domain", "engine", "store"].map(String::from).into()
    );
    assert_eq!(heads(&code, "super::"), ["batch"].map(String::from).into());
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_loop(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_loop(&g),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}

/// Where `word` is named in the code of `src/` (comments left out) as a word of its own, by
/// file (relative to `src/`).
fn named(word: &str) -> BTreeSet<String> {
    let src = crate::util::root().join("src");
    let mut out = BTreeSet::new();
    for f in rust_files(&src) {
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        let own = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if code.match_indices(word).any(|(i, _)| {
            !own(code[..i].chars().next_back()) && !own(code[i + word.len()..].chars().next())
        }) {
            out.insert(f.strip_prefix(&src).unwrap().display().to_string());
        }
    }
    out
}

/// The write path keeps one way to the counters: facts become counters only in
/// `Tally::count` (the rest of `Tally` that makes them is private to `tally.rs`, which the
/// compiler holds), and the stored counters are written, read and made again only by
/// `store/counts.rs` — every other write hands its facts to `counts::Counting`.
#[test]
fn counters_are_written_in_one_place() {
    for table in ["report_counts", "report_hours"] {
        assert_eq!(
            named(table),
            BTreeSet::from(["store/counts.rs".to_string()]),
            "the counters' table {table} is named outside store/counts.rs"
        );
    }
    let makers: BTreeSet<String> = ["tally.rs", "store/counts.rs"].map(String::from).into();
    assert!(
        named("Tally::by_day").is_subset(&makers),
        "stored counters (Tally::by_day) are made outside store/counts.rs: {:?}",
        named("Tally::by_day")
    );
}
