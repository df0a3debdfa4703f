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
    for (name, _, sample) in BUILTIN_FIELDS {
        facts
            .fields
            .entry(name.to_string())
            .or_insert_with(|| json!(sample));
    }
    for (name, def) in &f.fields {
        facts
            .fields
            .entry(name.to_string())
            .or_insert_with(|| def.sample.clone());
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
    let mut sent = 0;
    for line in sim::render(&run.lines, tz).lines().zip(&run.lines) {
        let (text, l) = line;
        let _ = write!(out, "{text}");
        if let Some(template) = l.what.strip_prefix("send ") {
            let cx = context(f, &l.stage, &settings, &run.lead.fields);
            match templates.render(template, &cx) {
                Ok(r) => {
                    let _ = write!(out, "  «{}»", r.subject);
                    sent += 1;
                    if let Some(dir) = render {
                        write_email(dir, sent, template, f, &l.at, &r)?;
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

/// The template context of the stage, with the simulated lead's fields.
fn context(
    f: &Funnel,
    stage: &str,
    settings: &Settings,
    fields: &std::collections::BTreeMap<String, serde_json::Value>,
) -> tera::Context {
    let mut cx = project::sample_context(f, f.stage(stage), settings);
    let mut lead: serde_json::Map<String, serde_json::Value> = fields.clone().into_iter().collect();
    lead.insert("score".into(), json!(0));
    lead.insert("tags".into(), json!([]));
    cx.insert("lead", &lead);
    cx
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
