//! `autofunnel import` and `autofunnel export`: a seller's subscribers moved in from another
//! service (a CSV file read in batches, each row mapped by [`crate::leads_csv`], the refused
//! ones written to a rejects file with the reason, the rest stored and optionally enrolled)
//! and out again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::domain::{Consent, FunnelId, LeadId, Tag};
use crate::leads_csv::{self, Mapping};
use crate::project::Project;
use crate::runtime::{Enrolled, Runtime};
use crate::store::{Import, ImportRow, Store};

/// Rows stored (and enrolled) in one transaction.
pub const BATCH: usize = 5_000;

/// What `autofunnel import` was asked.
#[derive(Debug, Clone, Default)]
pub struct ImportArgs {
    pub file: PathBuf,
    pub funnel: Option<String>,
    pub tags: Vec<String>,
    pub confirmed: bool,
    pub consent_source: Option<String>,
    pub maps: Vec<String>,
    pub dry_run: bool,
    pub rejects: Option<PathBuf>,
    pub progress: bool,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: usize,
    pub new: usize,
    /// Rows whose address already had a lead.
    pub merged: usize,
    /// Rows whose address an earlier row of the file gave.
    pub repeated: usize,
    /// Refused rows by reason (the column, or the row's shape).
    pub refused: BTreeMap<String, usize>,
    pub suppressed: usize,
    pub enrolled: usize,
    pub not_enrolled: usize,
    pub ignored_columns: Vec<String>,
    pub rejects_file: Option<PathBuf>,
}

impl Summary {
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// A usage error (exit 2), said before anything is stored.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The delimiter of a file from its header line: `;` (spreadsheets in many locales), a tab,
/// or `,`.
fn delimiter(first_line: &[u8]) -> u8 {
    let count = |c: u8| first_line.iter().filter(|b| **b == c).count();
    [b';', b'\t']
        .into_iter()
        .find(|c| count(*c) > count(b','))
        .unwrap_or(b',')
}

/// Imports `args.file` into `store` (`None`: no database yet, only with `--dry-run`).
pub async fn import(
    store: Option<&Store>,
    project: Arc<Project>,
    args: &ImportArgs,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Summary> {
    let tags: Vec<Tag> = args
        .tags
        .iter()
        .map(|t| Tag::parse(t).map_err(|e| Usage(format!("--tag {t}: {e}"))))
        .collect::<Result<_, _>>()?;
    let funnel = match &args.funnel {
        None => None,
        Some(f) => {
            let known: Vec<&str> = project
                .funnels
                .iter()
                .map(|x| x.id.value.as_str())
                .collect();
            if !known.contains(&f.as_str()) {
                return Err(Usage(format!(
                    "--funnel {f}: no such funnel (the funnels are: {})",
                    known.join(", ")
                ))
                .into());
            }
            Some(FunnelId::parse(f).map_err(|e| Usage(e.to_string()))?)
        }
    };
    let open = || {
        std::fs::File::open(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))
    };
    let size = open()?.metadata().map(|m| m.len()).unwrap_or(0);
    let mut start = Vec::with_capacity(64 * 1024);
    std::io::Read::read_to_end(&mut std::io::Read::take(open()?, 64 * 1024), &mut start)?;
    let first_line = start.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter(first_line))
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(256 * 1024, open()?));
    let header: Vec<String> = reader
        .byte_headers()
        .with_context(|| format!("{}: no header row", args.file.display()))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    if header.iter().all(|h| h.trim().is_empty()) {
        return Err(Usage(format!(
            "{} has no header row: the first line names the columns (email, first_name, …)",
            args.file.display()
        ))
        .into());
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mapping = Mapping::new(
        &header_refs,
        &crate::funnel::settable_fields(&project.funnels),
        &args.maps,
    )
    .map_err(Usage)?;
    let runtime = match (store, &funnel, args.dry_run) {
        (Some(s), Some(_), false) => Some(
            Runtime::new(
                s.clone(),
                project.funnels.clone(),
                &format!("import-{}", std::process::id()),
                now,
            )
            .await?,
        ),
        _ => None,
    };
    let how = Import {
        consent: if args.confirmed {
            Consent::Confirmed
        } else {
            Consent::Pending
        },
        update: true,
        consent_source: args.consent_source.as_deref(),
    };
    let progress = if args.progress {
        indicatif::ProgressBar::new(size).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {percent:>3}% {msg} ({elapsed}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut summary = Summary {
        ignored_columns: mapping.ignored().iter().map(|c| c.to_string()).collect(),
        ..Summary::default()
    };
    let mut rejects: Option<csv::Writer<std::fs::File>> = None;
    let rejects_path = args.rejects.clone().unwrap_or_else(|| {
        let stem = args.file.file_stem().unwrap_or_default().to_string_lossy();
        args.file.with_file_name(format!("{stem}.rejects.csv"))
    });
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut batch: Vec<ImportRow> = Vec::with_capacity(BATCH);
    // Whether each row of the batch is its address's first in the file.
    let mut first: Vec<bool> = Vec::with_capacity(BATCH);
    let mut record = csv::ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut record).with_context(|| {
            format!(
                "{}: cannot read past line {}",
                args.file.display(),
                summary.rows + 1
            )
        })?;
        if more {
            summary.rows += 1;
            let line = record.position().map_or(0, |p| p.line());
            let read = if record.len() != header.len() {
                Err(format!(
                    "has {} columns, the header {}",
                    record.len(),
                    header.len()
                ))
            } else {
                match record
                    .iter()
                    .map(std::str::from_utf8)
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(values) => mapping.row(&values, &tags),
                    Err(_) => Err("not UTF-8 (save the file as UTF-8)".to_string()),
                }
            };
            match read {
                Ok(row) => {
                    let new_here = seen.insert(row.email.as_str().to_string());
                    if !new_here {
                        summary.repeated += 1;
                    }
                    first.push(new_here);
                    batch.push(row);
                }
                Err(why) => {
                    let kind = why.split(':').next().unwrap_or(&why).to_string();
                    *summary.refused.entry(kind).or_default() += 1;
                    if !args.dry_run {
                        let w = match &mut rejects {
                            Some(w) => w,
                            None => {
                                let mut w = csv::WriterBuilder::new()
                                    .flexible(true)
                                    .from_path(&rejects_path)
                                    .with_context(|| {
                                        format!("cannot write {}", rejects_path.display())
                                    })?;
                                let mut h = vec!["line".to_string(), "reason".to_string()];
                                h.extend(header.iter().cloned());
                                w.write_record(&h)?;
                                rejects.insert(w)
                            }
                        };
                        let mut r = csv::ByteRecord::new();
                        r.push_field(line.to_string().as_bytes());
                        r.push_field(why.as_bytes());
                        for f in record.iter() {
                            r.push_field(f);
                        }
                        w.write_byte_record(&r)?;
                    }
                }
            }
        }
        if batch.len() >= BATCH || (!more && !batch.is_empty()) {
            store_batch(
                store,
                runtime.as_ref(),
                funnel.as_ref(),
                (&batch, &first),
                how,
                args.dry_run,
                now,
                &mut summary,
            )
            .await?;
            batch.clear();
            first.clear();
            progress.set_position(reader.position().byte());
            progress.set_message(format!("{} rows", summary.rows));
        }
        if !more {
            break;
        }
    }
    if let Some(mut w) = rejects {
        w.flush()?;
        summary.rejects_file = Some(rejects_path);
    }
    progress.finish_and_clear();
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn store_batch(
    store: Option<&Store>,
    runtime: Option<&Runtime>,
    funnel: Option<&FunnelId>,
    (batch, first): (&[ImportRow], &[bool]),
    how: Import<'_>,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    // What was stored and suppressed before: read for a dry run, told by the import else.
    let (stored, suppressed, imported) = match (store, dry_run) {
        (Some(s), false) => {
            let i = s.import(batch, how, now).await?;
            (i.known, i.suppressed, Some(i.ids))
        }
        (Some(s), true) => {
            let emails: Vec<&str> = batch.iter().map(|r| r.email.as_str()).collect();
            let stored = s.stored_among(&emails).await?;
            (stored, s.suppressed_among(&emails).await?, None)
        }
        (None, _) => Default::default(),
    };
    // Counted by address, the first time the file gives it.
    for (r, _) in batch.iter().zip(first).filter(|(_, f)| **f) {
        if stored.contains(r.email.as_str()) {
            summary.merged += 1;
        } else {
            summary.new += 1;
        }
        if suppressed.contains(r.email.as_str()) || r.unsubscribed {
            summary.suppressed += 1;
        }
    }
    let Some(ids) = imported else {
        return Ok(());
    };
    if let (Some(rt), Some(funnel)) = (runtime, funnel) {
        let mut once = std::collections::HashSet::new();
        let leads: Vec<LeadId> = batch
            .iter()
            .zip(&ids)
            .filter(|(r, id)| {
                !(r.unsubscribed || suppressed.contains(r.email.as_str())) && once.insert(**id)
            })
            .map(|(_, id)| *id)
            .collect();
        for e in rt.enroll_many(&leads, funnel, now).await? {
            match e {
                Enrolled::New(_) => summary.enrolled += 1,
                Enrolled::AlreadyIn(_) | Enrolled::NotAgain => summary.not_enrolled += 1,
            }
        }
    }
    Ok(())
}

/// The summary as printed.
pub fn describe(s: &Summary, file: &Path, dry_run: bool, funnel: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let verb = if dry_run { "would import" } else { "imported" };
    out.push(format!(
        "{verb} {}: {} rows; {} new leads, {} merged into leads already stored, {} repeated rows merged, {} refused",
        file.display(),
        s.rows,
        s.new,
        s.merged,
        s.repeated,
        s.refused_total()
    ));
    for (why, n) in &s.refused {
        out.push(format!("  refused {n}: {why}"));
    }
    if let Some(f) = &s.rejects_file {
        out.push(format!(
            "  the refused rows, with the reason, are in {}",
            f.display()
        ));
    }
    if !s.ignored_columns.is_empty() {
        out.push(format!(
            "columns left out: {} (map one with --map \"COLUMN=FIELD\")",
            s.ignored_columns.join(", ")
        ));
    }
    if s.suppressed > 0 {
        out.push(format!(
            "{} addresses are unsubscribed or suppressed: kept so, never mailed or enrolled",
            s.suppressed
        ));
    }
    if let Some(f) = funnel
        && !dry_run
    {
        out.push(format!(
            "enrolled {} into {f} ({} already in it or not allowed back by its re_entry)",
            s.enrolled, s.not_enrolled
        ));
    }
    out
}

/// Writes every lead to `out` as CSV: the lead's columns, then every field some lead has.
pub async fn export(store: Option<&Store>, out: impl std::io::Write) -> anyhow::Result<usize> {
    let mut w = csv::Writer::from_writer(out);
    let fields = match store {
        Some(s) => s.field_names().await?,
        None => Vec::new(),
    };
    w.write_record(leads_csv::header(&fields))?;
    let mut n = 0;
    if let Some(store) = store {
        let mut after = LeadId(0);
        loop {
            let page = store.lead_page(after, 5_000).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.id;
            for (lead, tags) in &page {
                w.write_record(leads_csv::row(lead, tags, &fields))?;
                n += 1;
            }
        }
    }
    w.flush()?;
    Ok(n)
}
