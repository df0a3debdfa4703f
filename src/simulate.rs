//! `autofunnel simulate`: the engine's simulation of one virtual lead, printed as a timeline on
//! the lead's wall clock with each email's subject, and optionally every email rendered.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::RunStatus;
use crate::engine::sim;
use crate::funnel::time::Duration;
use crate::funnel::{BUILTIN_FIELDS, Funnel};
use crate::project;
use crate::settings::Settings;

#[allow(clippy::too_many_arguments)]
pub fn run(
    project_dir: &Path,
    config: Option<&Path>,
    funnel: &str,
    lead: &str,
    script: &str,
    start: Option<&str>,
    horizon: &str,
    render: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(project_dir, config)?;
    let (loaded, report) = project::check(&settings, None);
    let Some(loaded) = loaded else {
        for d in &report.diagnostics {
            eprintln!("{d}");
        }
        bail!(
            "the project does not pass `autofunnel check` ({})",
            report.summary()
        );
    };
    let id = Path::new(funnel)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(funnel);
    let f = loaded
        .funnels
        .iter()
        .find(|f| f.id.value.as_str() == id)
        .ok_or_else(|| {
            let ids: Vec<&str> = loaded.funnels.iter().map(|f| f.id.value.as_str()).collect();
            anyhow!("no funnel \"{id}\"; the project has: {}", ids.join(", "))
        })?;
    let templates = &loaded.templates[f.id.value.as_str()];

    let mut facts = sim::parse_lead(lead).map_err(|e| anyhow!(e))?;
    // What `--lead` does not give is a sample value, and the output says which.
    let mut samples: Vec<String> = Vec::new();
    let declared = f
        .fields
        .iter()
        .map(|(n, d)| (n.to_string(), d.sample.clone()));
    let builtin = BUILTIN_FIELDS
        .iter()
        .map(|(n, _, sample)| (n.to_string(), json!(sample)));
    for (name, sample) in builtin.chain(declared) {
        if let std::collections::btree_map::Entry::Vacant(slot) = facts.fields.entry(name) {
            samples.push(format!("{}={}", slot.key(), plain(&sample)));
            slot.insert(sample);
        }
    }
    let script = sim::parse_script(script).map_err(|e| anyhow!(e))?;
    let start: DateTime<Utc> = match start {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .with_context(|| {
                format!("--start \"{s}\": expected a time like 2026-11-23T09:00:00+03:00")
            })?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let horizon = Duration::parse(horizon).map_err(|e| anyhow!("--horizon: {e}"))?;
    let tz = facts.timezone.unwrap_or(f.timezone);

    let started = std::time::Instant::now();
    let run = sim::simulate(f, facts.clone(), start, &script, horizon);
    let elapsed = started.elapsed();

    if let Some(dir) = render {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = format!(
        "{} for lead {} ({}), {} from {}\n",
        f.id.value,
        facts.id,
        tz.name(),
        horizon,
        start.with_timezone(&tz).format("%a %Y-%m-%d %H:%M")
    );
    if !samples.is_empty() {
        let _ = writeln!(
            out,
            "sample values, for what --lead does not give: {}",
            samples.join(", ")
        );
    }
    let mut sent = 0;
    let mut emails = run.emails.iter();
    for line in sim::render(&run.lines, tz).lines().zip(&run.lines) {
        let (text, l) = line;
        let _ = write!(out, "{text}");
        if l.what.starts_with("send ")
            && let Some(e) = emails.next()
        {
            // Made as the sender makes it: the lead's fields then, the run's deadline and
            // the time left to it at the moment of sending.
            let cx = context(f, e, &facts, start, &settings);
            match templates.render(&e.template, &cx) {
                Ok(r) => {
                    let _ = write!(out, "  «{}»", r.subject);
                    sent += 1;
                    if let Some(dir) = render {
                        write_email(dir, sent, &e.template, f, &e.at, &r)?;
                    }
                }
                Err(d) => {
                    let _ = write!(out, "  (cannot render: {d})");
                }
            }
        }
        out.push('\n');
    }
    let end = match run.state.status {
        RunStatus::Exited(o) => format!("exited {}", o.name()),
        RunStatus::Unconfirmed => "still waiting for the double opt-in".to_string(),
        RunStatus::Active => format!("still in stage {}", run.state.stage),
    };
    let _ = writeln!(
        out,
        "{sent} emails; {end}; simulated in {:.1} ms",
        elapsed.as_secs_f64() * 1000.0
    );
    // Stops quietly when stdout is closed (`… | head`).
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// A value as a sample list shows it: text without quotes.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The template context of a simulated email, made by the sender's own
/// [`crate::context::context`] from the simulated lead as it was then.
fn context(
    f: &Funnel,
    e: &sim::SimEmail,
    facts: &crate::engine::LeadFacts,
    start: DateTime<Utc>,
    settings: &Settings,
) -> tera::Context {
    let fields = e.fields.iter().map(|(k, v)| (k.clone(), v.clone()));
    let lead = crate::context::lead_of_fields(facts.id, fields, facts.timezone, e.score, start);
    let (base, secret) = (&settings.base_url, b"simulated");
    crate::context::context(f, Some(&e.stage), &lead, e.deadline, base, secret, e.at)
}

fn write_email(
    dir: &Path,
    n: usize,
    template: &str,
    f: &Funnel,
    at: &DateTime<Utc>,
    r: &crate::templates::Rendered,
) -> anyhow::Result<()> {
    let base: PathBuf = dir.join(format!("{n:03}-{template}"));
    let from = f.from.as_ref().map(|m| m.to_string()).unwrap_or_default();
    let header = format!(
        "From: {from}\nDate: {}\nSubject: {}\n\n",
        at.to_rfc2822(),
        r.subject
    );
    std::fs::write(base.with_extension("txt"), format!("{header}{}", r.text))
        .and_then(|_| std::fs::write(base.with_extension("html"), &r.html))
        .with_context(|| format!("cannot write {}", base.display()))
}
