//! A project folder: its settings, funnels and templates, loaded and checked together.
//! `autofunnel check` and `autofunnel run` both load through here, so what runs has passed
//! exactly the checks a marketer sees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::funnel::validate::{Context, validate};
use crate::funnel::{self, Diagnostic, Funnel, Pos, Severity, Sink};
use crate::settings::Settings;
use crate::templates::TemplateSet;

/// Everything a project holds once it has passed `check`.
pub struct Project {
    pub funnels: Vec<Funnel>,
    pub templates: BTreeMap<String, TemplateSet>,
}

impl Project {
    /// The hosts of every literal link in the templates.
    pub fn link_hosts(&self) -> BTreeSet<String> {
        self.templates
            .values()
            .flat_map(|t| t.link_hosts())
            .collect()
    }
}

/// What `check` found.
#[derive(Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    pub funnels: usize,
    pub templates: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    /// The one-line summary printed after the diagnostics.
    pub fn summary(&self) -> String {
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        if self.errors() == 0 {
            format!(
                "ok: {} and {} checked, {}",
                plural(self.funnels, "funnel"),
                plural(self.templates, "template"),
                plural(self.warnings(), "warning")
            )
        } else {
            format!(
                "{}, {} in {}",
                plural(self.errors(), "error"),
                plural(self.warnings(), "warning"),
                plural(self.funnels, "funnel")
            )
        }
    }
}

/// The funnel files of a folder (`*.yaml`, `*.yml`), sorted.
pub fn funnel_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Loads and checks the project; `only` limits the reported funnels to those files (the others
/// are still read, since forms are shared across funnels). The project is returned only when
/// there are no errors.
pub fn check(settings: &Settings, only: Option<&[PathBuf]>) -> (Option<Project>, Report) {
    let mut report = Report::default();
    let files = funnel_files(&settings.funnels_dir);
    if files.is_empty() && only.is_none() {
        report.diagnostics.push(Diagnostic {
            file: settings.funnels_dir.clone(),
            pos: Pos::START,
            severity: Severity::Error,
            message: "no funnel files (*.yaml) found here".into(),
        });
    }
    let wanted = |f: &Path| only.is_none_or(|o| o.iter().any(|w| same_file(w, f)));

    // Pass 1: parse every funnel file.
    let mut parsed: Vec<(Funnel, Sink)> = Vec::new();
    let mut ids: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in &files {
        let mut sink = Sink::new(file);
        if let Some(f) = funnel::load_file(file, file, &mut sink) {
            if let Some(first) = ids.get(f.id.value.as_str()) {
                sink.error(
                    f.id.pos,
                    format!(
                        "duplicate funnel id \"{}\" (also {})",
                        f.id.value,
                        first.display()
                    ),
                );
            }
            ids.insert(f.id.value.to_string(), file.clone());
            parsed.push((f, sink));
        } else if wanted(file) {
            report.funnels += 1;
            report.diagnostics.extend(sink.diagnostics);
        }
    }

    // Forms are project-wide: a form name may be used by one funnel only.
    let mut forms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (f, _) in &parsed {
        for form in f.entry.forms() {
            forms
                .entry(form.id.to_string())
                .or_default()
                .push(f.id.value.to_string());
        }
    }
    for (f, sink) in &mut parsed {
        for t in &f.entry.triggers {
            if let funnel::EntryTrigger::Form(form) = &t.value {
                let others: Vec<&String> = forms[form.id.as_str()]
                    .iter()
                    .filter(|o| *o != f.id.value.as_str())
                    .collect();
                if let Some(other) = others.first() {
                    sink.error(t.pos, format!("form \"{}\" is also the entry of funnel \"{other}\": a form starts one funnel", form.id));
                }
            }
        }
    }

    // Pass 2: templates and cross-references.
    let mut templates = BTreeMap::new();
    let mut funnels = Vec::new();
    for (mut f, mut sink) in parsed {
        read_consent_texts(&mut f, settings, &mut sink);
        let dir = settings.templates_dir.join(f.id.value.as_str());
        let (set, template_diags) = TemplateSet::load(&dir);
        let cx = Context {
            templates: set.all_names().map(str::to_string).collect(),
            forms: forms.keys().cloned().collect(),
            webhooks: settings.webhooks.keys().cloned().collect(),
            default_from: settings.from.is_some(),
        };
        validate(&f, &cx, &mut sink);
        for w in f.webhooks.values() {
            if let Some(why) = unsigned(&w.id.to_string(), w.secret_env.as_deref()) {
                sink.warning(f.id.pos, why);
            }
        }
        let render_diags = render_all(&f, &set, settings);
        if wanted(&f.file) {
            report.funnels += 1;
            report.templates += set.names().count();
            report.diagnostics.extend(sink.diagnostics);
            report.diagnostics.extend(template_diags);
            if settings.link_hosts.is_empty() {
                report.diagnostics.extend(set.data_links());
            }
            report.diagnostics.extend(set.unguarded_fields());
            report.diagnostics.extend(render_diags);
        }
        templates.insert(f.id.value.to_string(), set);
        funnels.push(f);
    }
    if only.is_none() {
        let toml = |severity, message| Diagnostic {
            file: PathBuf::from(crate::settings::FILE_NAME),
            pos: Pos::START,
            severity,
            message,
        };
        for (name, w) in &settings.webhooks {
            if let Some(why) = unsigned(name, w.secret_env.as_deref()) {
                report.diagnostics.push(toml(Severity::Warning, why));
            }
            for e in &w.events {
                if crate::domain::Lifecycle::parse(e).is_none() {
                    let known: Vec<&str> = crate::domain::Lifecycle::ALL
                        .iter()
                        .map(|l| l.as_str())
                        .collect();
                    report.diagnostics.push(toml(
                        Severity::Error,
                        format!(
                            "webhooks.{name}.events: no event \"{e}\" (the events are: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            for f in &w.funnels {
                if !funnels.iter().any(|x: &Funnel| x.id.value.as_str() == f) {
                    report.diagnostics.push(toml(
                        Severity::Warning,
                        format!("webhooks.{name}.funnels: no funnel \"{f}\" here"),
                    ));
                }
            }
        }
        match crate::payments::accounts(&settings.payments, &|v| std::env::var(v).ok()) {
            Err(e) => report.diagnostics.push(toml(Severity::Error, e)),
            Ok(accounts) => {
                for a in accounts.values() {
                    if let Some(why) = &a.unusable {
                        report.diagnostics.push(toml(
                            Severity::Warning,
                            format!("{why}: its notifications would be refused"),
                        ));
                    }
                    for (item, product) in &a.products {
                        if !funnels
                            .iter()
                            .any(|f| f.products.keys().any(|p| p.as_str() == product))
                        {
                            report.diagnostics.push(toml(
                                Severity::Warning,
                                format!(
                                    "payments.{}.products: \"{item}\" maps to \"{product}\", which no funnel declares",
                                    a.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    report
        .diagnostics
        .sort_by(|a, b| (&a.file, a.pos, &a.message).cmp(&(&b.file, b.pos, &b.message)));
    report.diagnostics.dedup();
    let project = (report.errors() == 0).then_some(Project { funnels, templates });
    (project, report)
}

/// Reads each form's consent text and keeps the SHA-256 of its content; a text that is not
/// there, cannot be read or is blank is an error where the funnel names it.
fn read_consent_texts(f: &mut Funnel, settings: &Settings, sink: &mut Sink) {
    use sha2::Digest as _;
    for t in &mut f.entry.triggers {
        let funnel::EntryTrigger::Form(form) = &mut t.value else {
            continue;
        };
        let Some(c) = &mut form.consent else {
            continue;
        };
        let file = crate::settings::join_clean(&settings.project_dir, Path::new(&c.path));
        match std::fs::read(&file) {
            Ok(bytes) if String::from_utf8_lossy(&bytes).trim().is_empty() => {
                sink.error(c.pos, format!("consent: {} is empty", file.display()));
            }
            Ok(bytes) if std::str::from_utf8(&bytes).is_err() => {
                sink.error(
                    c.pos,
                    format!("consent: {} is not UTF-8 text", file.display()),
                );
            }
            Ok(bytes) => c.sha256 = Some(hex::encode(sha2::Sha256::digest(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => sink.error(
                c.pos,
                format!(
                    "consent: {} does not exist (the text the form shows, a file of the project)",
                    file.display()
                ),
            ),
            Err(e) => sink.error(
                c.pos,
                format!("consent: cannot read {} ({e})", file.display()),
            ),
        }
    }
}

/// Why a webhook's calls would go out unsigned: its `secret_env` names a variable this
/// process does not have (`run` signs with what it sees at each call).
fn unsigned(name: &str, secret_env: Option<&str>) -> Option<String> {
    let var = secret_env?;
    let set = std::env::var(var).is_ok_and(|v| !v.is_empty());
    (!set).then(|| {
        format!(
            "webhook \"{name}\": secret_env {var} is not set here, so its calls would go unsigned"
        )
    })
}

/// A fingerprint of every file under the funnels and templates folders (path, size, modified
/// time): when it changes, `run` checks the project again and reloads it if it passes.
pub fn fingerprint(settings: &Settings) -> u64 {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>, depth: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() && depth < 8 {
                walk(&path, out, depth + 1);
            } else if meta.is_file() {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut files = Vec::new();
    walk(&settings.funnels_dir, &mut files, 0);
    walk(&settings.templates_dir, &mut files, 0);
    files.sort();
    let text = format!("{files:?}");
    crate::engine::fnv1a(text.as_bytes())
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Renders every template the funnel sends, in the context of each stage that sends it, for a
/// sample lead; an undefined variable or a failing filter is reported at its template line.
fn render_all(f: &Funnel, set: &TemplateSet, settings: &Settings) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    let mut try_render = |name: &str, stage: Option<&funnel::Stage>| {
        let key = (
            name.to_string(),
            stage.map(|s| s.id.value.to_string()).unwrap_or_default(),
        );
        if !set.contains(name) || !done.insert(key) {
            return;
        }
        let cx = sample_context(f, stage, settings);
        if let Err(mut d) = set.render(name, &cx) {
            if let Some(s) = stage {
                d.message = format!("{} (rendering for stage \"{}\")", d.message, s.id.value);
            }
            out.push(d);
        }
    };
    if let Some(t) = &f.entry.double_opt_in {
        try_render(t.value.as_str(), None);
    }
    for stage in &f.stages {
        for step in &stage.steps {
            if let funnel::Action::Send(send) = &step.action {
                for t in send.templates() {
                    try_render(t.value.as_str(), Some(stage));
                }
            }
        }
    }
    out
}

/// The variables a template sees, made by the sender's own
/// [`crate::context::context`] for a sample lead (every field its sample), on a
/// sample day with the stage's deadline its full length away.
pub fn sample_context(
    f: &Funnel,
    stage: Option<&funnel::Stage>,
    settings: &Settings,
) -> tera::Context {
    use chrono::TimeZone as _;
    let mut fields = serde_json::Map::new();
    for (name, _, sample) in funnel::BUILTIN_FIELDS {
        fields.insert(name.to_string(), json!(sample));
    }
    for (name, def) in &f.fields {
        fields.insert(name.to_string(), def.sample.clone());
    }
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 1, 15, 10, 0, 0)
        .single()
        .expect("a sample day");
    let lead = crate::context::lead_of_fields(1, fields, None, 0, now);
    let deadline = stage
        .and_then(|s| s.deadline)
        .map(|d| now + chrono::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(0)));
    let stage = stage.map(|s| s.id.value.as_str());
    crate::context::context(
        f,
        stage,
        &lead,
        deadline,
        &settings.base_url,
        b"sample",
        now,
    )
}
