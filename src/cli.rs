//! The command line: `run`, `check`, `simulate`, `plan`, `report`, `forecast`, `migrate`, `init`. Errors end here as messages (anyhow);
//! exit code 1 for problems found, 2 for bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::delivery;
use crate::project;
use crate::runtime::Runtime;
use crate::server::{self, AppState};
use crate::settings::{self, Settings};
use crate::store::{Store, redact};

/// `println!` that stops quietly when stdout is closed (`autofunnel report … | head`) instead
/// of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "autofunnel",
    version,
    about = "Marketing funnels as files: run, check and report them"
)]
struct Cli {
    /// Project folder (holds autofunnel.toml, funnels/ and templates/).
    #[arg(short = 'C', long = "project", global = true, default_value = ".")]
    project: PathBuf,
    /// Settings file to use instead of <project>/autofunnel.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the log of what a command does (its own and its libraries') on stderr; `run`
    /// logs at this level anyway. `-vv` for debug. `AUTOFUNNEL_LOG` overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, load the funnels and serve HTTP until stopped (Ctrl-C).
    Run {
        /// What this process does, comma-separated: `scheduler` (timers, events, entries),
        /// `sender` (emails and webhook calls), `http` (forms, APIs, dashboard). Default all
        /// three; a split needs PostgreSQL, which every process shares.
        #[arg(long, value_delimiter = ',', default_values = ["scheduler", "sender", "http"])]
        role: Vec<Role>,
    },
    /// Check funnels and templates like a compiler: every problem, with file:line:col.
    Check {
        /// Funnel files or project folders (default: the project folder).
        paths: Vec<PathBuf>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Show what the funnels as they are now on disk would do to the leads in flight.
    Plan,
    /// Run a virtual lead through a funnel and print what it receives and when.
    Simulate {
        /// Funnel id, or path to a funnel file.
        funnel: String,
        /// The lead: `timezone=Europe/Moscow first_name=Anna city=Moscow` (other fields take
        /// the funnel's samples).
        #[arg(long, default_value = "")]
        lead: String,
        /// Events at virtual times: `1h confirm; 2d3h purchase webinar-ticket; 4d click course-offer-a`.
        #[arg(long, default_value = "")]
        script: String,
        /// Start time (RFC 3339); default now.
        #[arg(long)]
        start: Option<String>,
        /// How far to simulate.
        #[arg(long, default_value = "90d")]
        horizon: String,
        /// Write every email, rendered for this lead, into DIR.
        #[arg(long, value_name = "DIR")]
        render: Option<PathBuf>,
    },
    /// Write a starter project into DIR: the course funnel (lead magnet → tripwire → main
    /// product → upsell) or, with `--example welcome`, a welcome series.
    Init {
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = crate::scaffold::Example::Course)]
        example: crate::scaffold::Example,
    },
    /// Bring leads in from a CSV file (another service's export): columns matched to the
    /// lead's and the funnels' fields by header, repeated and known addresses merged,
    /// unsubscribed and suppressed ones kept so, refused rows written with the reason.
    Import {
        file: PathBuf,
        /// Enroll the imported leads (but the unsubscribed and suppressed) into this funnel.
        #[arg(long)]
        funnel: Option<String>,
        /// Tag every imported lead; repeatable.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The leads confirmed their subscription elsewhere: import them confirmed.
        #[arg(long, requires = "consent_source")]
        confirmed: bool,
        /// Where and how they confirmed it, kept as the consent's proof.
        #[arg(long, value_name = "TEXT", requires = "confirmed")]
        consent_source: Option<String>,
        /// `COLUMN=FIELD` for a column named otherwise, `COLUMN=` to leave one out; repeatable.
        #[arg(long = "map", value_name = "COLUMN=FIELD")]
        maps: Vec<String>,
        /// Read and check every row and say what would happen; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where the refused rows go (default: FILE.rejects.csv beside the file).
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// Write every lead to a CSV file (`-` for the standard output), fields as columns.
    Export { file: PathBuf },
    /// Copy the SQLite database into FILE (a new file) while `autofunnel run` goes on: one
    /// consistent snapshot, compacted and checked. PostgreSQL: use pg_dump (README, Backups).
    Backup { file: PathBuf },
    /// Why nothing happened yet: where each funnel's live runs wait (stage, step, the next
    /// wake-up) and the outbox (queued, when the oldest became due, sent, failed).
    Status,
    /// Read a funnel: per stage, leads in, where they went, conversion, revenue, time in stage.
    Report {
        /// Funnel id.
        funnel: String,
        /// First day of the period (YYYY-MM-DD or RFC 3339, UTC); default midnight 30 days before `--to`.
        #[arg(long)]
        from: Option<String>,
        /// End of the period, exclusive (YYYY-MM-DD or RFC 3339, UTC); default now.
        #[arg(long)]
        to: Option<String>,
        /// `entry`: leads counted in the period they entered the funnel, their later progress
        /// credited to it; `calendar`: each stage entry counted when it happened.
        #[arg(long, value_enum, default_value = "entry")]
        cohort: CohortArg,
        /// Also the report of each day, week (from Monday) or month of the period.
        #[arg(long, value_name = "day|week|month")]
        by: Option<String>,
        /// Conversion window: only what a lead did within this time of entering the funnel
        /// counts (`7d`, `2w`, `36h`).
        #[arg(long, value_name = "DURATION")]
        window: Option<String>,
        /// `table`, `csv`, `json`, or `svg` (the funnel chart, for slides).
        #[arg(long, value_enum, default_value = "table")]
        format: FormatArg,
        /// Also the report of each group of leads by `utm_source`, `utm_medium`,
        /// `utm_campaign`, `channel`, `form` (their first touch), `variant` (the A/B variant a
        /// run got) or `field:NAME` (a lead field); repeat for several.
        #[arg(long, value_name = "KEY")]
        slice: Vec<String>,
        /// Per email instead: queued, accepted, opens, clicks, click-to-open, unsubscribes,
        /// bounces, complaints, next-stage conversion and clicks by link.
        #[arg(long, conflicts_with_all = ["slice", "by"])]
        emails: bool,
        /// A/B verdicts instead: per `split` step and variant, leads, clicks, next-stage
        /// conversion, revenue per lead, the chance each is best, a p-value and a verdict.
        #[arg(long, conflicts_with_all = ["slice", "emails", "by"])]
        ab: bool,
        /// Attribution instead: the period's purchases credited to the touches before them by
        /// MODEL (`first`, `last`, `linear`, `time_decay`, `position`), per channel, source and
        /// campaign.
        #[arg(long, value_name = "MODEL", conflicts_with_all = ["slice", "emails", "ab", "by", "window"])]
        attribution: Option<String>,
        /// How far before a purchase a touch still counts, in days (with `--attribution`).
        #[arg(long, requires = "attribution")]
        lookback: Option<String>,
        /// The time zone days, weeks and months are counted in (an IANA name such as
        /// Europe/Moscow); default `report_timezone` (UTC).
        #[arg(long)]
        tz: Option<String>,
    },
    /// What-if: leads per stage, conversions and revenue over the next days from the observed
    /// rates and inflow, with an 80% interval; the baseline and a changed scenario side by side.
    Forecast {
        /// Funnel id.
        funnel: String,
        /// How many days ahead.
        #[arg(long, default_value = "30")]
        days: String,
        /// Leads entering: `200/day`, `1400/week`, `6000/month`; default the observed rate.
        #[arg(long)]
        inflow: Option<String>,
        /// A changed conversion: `STAGE=+20%` (relative), `STAGE=35%` (absolute); repeatable.
        #[arg(long, value_name = "STAGE=CHANGE")]
        set: Vec<String>,
        /// Days of history the rates and the inflow are read from.
        #[arg(long, default_value = "90")]
        observe: String,
        /// `table` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        format: FormatArg,
        /// The time zone days are shown in; default `report_timezone` (UTC).
        #[arg(long)]
        tz: Option<String>,
    },
}

/// A part of `autofunnel run` a process may take on alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Role {
    Scheduler,
    Sender,
    Http,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CohortArg {
    Entry,
    Calendar,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Table,
    Csv,
    Json,
    /// The funnel chart as an SVG image (the dashboard's), for slides.
    Svg,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command's output is its answer: the log stays out of it unless asked for; the
    // server's job logs what it does.
    let level = match (cli.verbose, matches!(cli.command, Command::Run { .. })) {
        (0, false) => "warn",
        (0 | 1, _) => "info",
        _ => "debug",
    };
    init_tracing(level);
    let result = match cli.command {
        Command::Check { ref paths } => check(&cli.project, cli.config.as_deref(), paths),
        Command::Init { ref dir, example } => init(dir, example),
        Command::Import {
            ref file,
            ref funnel,
            ref tags,
            confirmed,
            ref consent_source,
            ref maps,
            dry_run,
            ref rejects,
        } => {
            let args = crate::transfer::ImportArgs {
                file: file.clone(),
                funnel: funnel.clone(),
                tags: tags.clone(),
                confirmed,
                consent_source: consent_source.clone(),
                maps: maps.clone(),
                dry_run,
                rejects: rejects.clone(),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            block_on(import(&cli, args))
        }
        Command::Export { ref file } => block_on(export(&cli, file)),
        Command::Backup { ref file } => block_on(backup(&cli, file)),
        Command::Status => block_on(status(&cli)),
        Command::Simulate {
            ref funnel,
            ref lead,
            ref script,
            ref start,
            ref horizon,
            ref render,
        } => crate::simulate::run(
            &cli.project,
            cli.config.as_deref(),
            funnel,
            lead,
            script,
            start.as_deref(),
            horizon,
            render.as_deref(),
        ),
        Command::Run { ref role } => block_on(run(cli.project.clone(), cli.config.clone(), role)),
        Command::Migrate => block_on(migrate(cli.project.clone(), cli.config.clone())),
        Command::Plan => block_on(plan(cli.project.clone(), cli.config.clone())),
        Command::Report {
            ref funnel,
            ref from,
            ref to,
            cohort,
            ref by,
            ref window,
            format,
            ref slice,
            emails,
            ab,
            ref attribution,
            ref lookback,
            ref tz,
        } => {
            use crate::report::request::{Params, What};
            let what = match (emails, ab, attribution) {
                (_, _, Some(_)) => What::Attribution,
                (_, true, _) => What::Ab,
                (true, _, _) => What::Emails,
                _ => What::Funnel,
            };
            let params = Params {
                from: from.clone(),
                to: to.clone(),
                cohort: (what != What::Attribution).then(|| match cohort {
                    CohortArg::Entry => "entry".into(),
                    CohortArg::Calendar => "calendar".into(),
                }),
                by: by.clone(),
                window: window.clone(),
                slice: slice.clone(),
                model: attribution.clone(),
                lookback: lookback.clone(),
                tz: tz.clone(),
                ..Params::default()
            };
            block_on(report(&cli, funnel, what, params, format))
        }
        Command::Forecast {
            ref funnel,
            ref days,
            ref inflow,
            ref set,
            ref observe,
            format,
            ref tz,
        } => {
            let params = crate::report::request::Params {
                days: Some(days.clone()),
                inflow: inflow.clone(),
                set: set.clone(),
                observe: Some(observe.clone()),
                tz: tz.clone(),
                ..Default::default()
            };
            let what = crate::report::request::What::Forecast;
            block_on(report(&cli, funnel, what, params, format))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTOFUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn block_on(f: impl Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// Checks each project named by `paths`; a funnel file is checked within its project.
fn check(project: &Path, config: Option<&Path>, paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let targets: Vec<PathBuf> = if paths.is_empty() {
        vec![project.to_path_buf()]
    } else {
        paths.to_vec()
    };
    let mut failed = false;
    for target in targets {
        let (report, _) = if target.is_file() {
            let dir = target.parent().unwrap_or(Path::new("."));
            let root = match dir.file_name().and_then(|n| n.to_str()) {
                Some("funnels") => dir.parent().unwrap_or(Path::new(".")),
                _ => dir,
            };
            let mut s = Settings::load(root, config)?;
            s.funnels_dir = dir.to_path_buf();
            let (p, r) = project::check(&s, Some(std::slice::from_ref(&target)));
            (r, p.is_some())
        } else if target.is_dir() {
            let s = Settings::load(&target, config)?;
            let (p, r) = project::check(&s, None);
            (r, p.is_some())
        } else {
            anyhow::bail!("{}: no such file or folder", target.display());
        };
        for d in &report.diagnostics {
            out!("{d}");
        }
        out!("{}", report.summary());
        failed |= report.errors() > 0;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The project's funnels, checked; when they do not pass, their problems on stderr and an
/// error.
fn checked_project(settings: &Settings) -> anyhow::Result<project::Project> {
    let (loaded, checked) = project::check(settings, None);
    loaded.ok_or_else(|| {
        for d in &checked.diagnostics {
            eprintln!("{d}");
        }
        anyhow::anyhow!(
            "the funnels do not pass `autofunnel check` ({})",
            checked.summary()
        )
    })
}

/// `autofunnel import`: usage errors exit 2 before anything is stored.
async fn import(cli: &Cli, args: crate::transfer::ImportArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.project, cli.config.as_deref())?;
    let loaded = checked_project(&settings)?;
    let store = if args.dry_run {
        open_for_reading(&settings).await?
    } else {
        Some(open_store(&settings).await?)
    };
    let project = std::sync::Arc::new(loaded);
    match crate::transfer::import(store.as_ref(), project, &args, chrono::Utc::now()).await {
        Ok(summary) => {
            let lines = crate::transfer::describe(
                &summary,
                &args.file,
                args.dry_run,
                args.funnel.as_deref(),
            );
            for line in lines {
                out!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => match e.downcast_ref::<crate::transfer::Usage>() {
            Some(usage) => {
                eprintln!("error: {usage}");
                Ok(ExitCode::from(2))
            }
            None => Err(e),
        },
    }
}

/// `autofunnel status`: read only, in `report_timezone`.
async fn status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.project, cli.config.as_deref())?;
    let zone = settings.report_zone()?;
    let Some(store) = open_for_reading(&settings).await? else {
        eprintln!("{}", no_database(&settings));
        return Ok(ExitCode::SUCCESS);
    };
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| {
        if t <= now {
            "now (due)".to_string()
        } else {
            t.with_timezone(&zone)
                .format("%a %Y-%m-%d %H:%M %Z")
                .to_string()
        }
    };
    // What a step is, when the funnels load: a send that waits is held by the send window or
    // the frequency cap.
    let loaded = project::check(&settings, None).0;
    let keyword = |funnel: &str, stage: &str, step: &str| {
        let f = loaded
            .as_ref()?
            .funnels
            .iter()
            .find(|f| f.id.value.as_str() == funnel)?;
        let s = f
            .stage(stage)?
            .steps
            .iter()
            .find(|s| s.id.as_str() == step)?;
        Some(s.action.keyword())
    };
    let waiting = store.waiting().await?;
    if waiting.is_empty() {
        out!("no lead is in a funnel");
    }
    let mut funnel = "";
    for w in &waiting {
        if w.funnel != funnel {
            funnel = &w.funnel;
            out!("{funnel}");
        }
        let where_ = match &w.step_id {
            Some(step) => format!("stage {}, step {step}", w.stage),
            None => format!("stage {}", w.stage),
        };
        let why = if w.status == "unconfirmed" {
            "waiting for the double opt-in click".to_string()
        } else {
            let held = w
                .step_id
                .as_deref()
                .and_then(|s| keyword(&w.funnel, &w.stage, s))
                .filter(|k| *k == "send" && w.next_wake.is_some_and(|t| t > now))
                .map_or(
                    "",
                    |_| " (a send held by the send window or the frequency cap)",
                );
            match w.next_wake {
                Some(t) => format!("next wake-up {}{held}", at(t)),
                None => "waiting for an event".to_string(),
            }
        };
        out!("  {where_}: {} run(s), {why}", w.runs);
    }
    let counts = store.outbox_counts().await?;
    let n = |s: &str| counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let oldest = match store.oldest_queued().await? {
        Some(t) => format!(", the oldest due {}", at(t)),
        None => String::new(),
    };
    out!(
        "outbox: {} queued{oldest}, {} sending, {} sent, {} failed, {} suppressed",
        n("queued"),
        n("sending"),
        n("sent"),
        n("failed"),
        n("suppressed")
    );
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// `autofunnel export FILE`.
async fn export(cli: &Cli, file: &Path) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.project, cli.config.as_deref())?;
    let store = open_for_reading(&settings).await?;
    if store.is_none() {
        eprintln!("{}", no_database(&settings));
    }
    if file == Path::new("-") {
        crate::transfer::export(store.as_ref(), std::io::stdout().lock()).await?;
    } else {
        let f = std::fs::File::create(file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        let n = crate::transfer::export(store.as_ref(), std::io::BufWriter::new(f)).await?;
        out!("exported {n} leads to {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup(cli: &Cli, file: &Path) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.project, cli.config.as_deref())?;
    if !settings.database_url.starts_with("sqlite:") {
        eprintln!("backup: the database is PostgreSQL: back it up with pg_dump (README, Backups)");
        return Ok(ExitCode::from(2));
    }
    if file.exists() {
        eprintln!(
            "backup: {} exists; name a new file (a backup never overwrites one)",
            file.display()
        );
        return Ok(ExitCode::from(2));
    }
    let Some(store) = Store::open_existing(&settings.database_url).await? else {
        eprintln!("{}", no_database(&settings));
        return Ok(ExitCode::from(2));
    };
    // Written beside the file and renamed into place: FILE is a whole backup or absent.
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let started = std::time::Instant::now();
    let (leads, runs) = match store.backup(&partial).await {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e).with_context(|| format!("cannot back up into {}", file.display()));
        }
    };
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot move the backup to {}", file.display()))?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    out!(
        "backed up {leads} leads and {runs} runs into {} ({:.1} MB, {:.1} s)",
        file.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn init(dir: &Path, example: crate::scaffold::Example) -> anyhow::Result<ExitCode> {
    for path in crate::scaffold::init(dir, example)? {
        out!("created {}", path.display());
    }
    out!(
        "next: cd {} && autofunnel check && autofunnel run",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The database for a read command (`report`, `forecast`, `plan`), never migrated or made:
/// `None` when there is none yet; an error saying to run `autofunnel migrate` when it is
/// behind this build.
async fn open_for_reading(settings: &Settings) -> anyhow::Result<Option<Store>> {
    let url = &settings.database_url;
    let Some(mut store) = Store::open_existing(url).await? else {
        return Ok(None);
    };
    let pending = store.pending_migrations().await?;
    if let Some(last) = pending.last() {
        anyhow::bail!(
            "the database at {} is behind this autofunnel ({} migration(s) to apply, up to \
             {last}): run `autofunnel migrate`",
            redact(url),
            pending.len()
        );
    }
    store.read_counters_as_kept().await?;
    Ok(Some(store))
}

/// The line a read command prints (on stderr) when there is no database yet.
fn no_database(settings: &Settings) -> String {
    format!(
        "no database yet at {} (`autofunnel run` or `autofunnel migrate` makes it): nothing has been stored",
        redact(&settings.database_url)
    )
}

/// The lifecycle events each project-wide webhook subscribes to (`events = [...]`).
fn subscriptions(settings: &Settings) -> anyhow::Result<Vec<crate::store::Subscription>> {
    use crate::domain::Lifecycle;
    let mut out = Vec::new();
    for (name, w) in &settings.webhooks {
        if w.events.is_empty() {
            continue;
        }
        let events = w
            .events
            .iter()
            .map(|e| {
                Lifecycle::parse(e).ok_or_else(|| {
                    let known: Vec<&str> = Lifecycle::ALL.iter().map(|l| l.as_str()).collect();
                    anyhow::anyhow!(
                        "`webhooks.{name}.events`: no event \"{e}\" (the events are: {})",
                        known.join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push(crate::store::Subscription {
            webhook: name.clone(),
            events,
            funnels: w.funnels.clone(),
        });
    }
    Ok(out)
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let zone = settings.report_zone()?;
    // The zone and fields set before migrating: an upgrade's recount makes the counters as
    // they are to be kept, and `count_in` has nothing left to count again.
    let mut store = Store::connect_pooled(&settings.database_url, settings.database_connections)
        .await?
        .with_zone(zone)
        .with_fields(&settings.report_fields);
    let applied = store.migrate().await?;
    for m in &applied {
        tracing::info!(migration = %m, "applied");
    }
    if store
        .count_in(zone, &settings.report_fields, chrono::Utc::now())
        .await?
    {
        tracing::info!(zone = %zone, fields = ?settings.report_fields, "the report counters were made again per day of report_timezone and by report_fields");
    }
    Ok(store)
}

async fn migrate(project: PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&project, config.as_deref())?;
    let zone = settings.report_zone()?;
    let mut store = Store::connect(&settings.database_url)
        .await?
        .with_zone(zone)
        .with_fields(&settings.report_fields);
    let applied = store.migrate().await?;
    if store
        .count_in(zone, &settings.report_fields, chrono::Utc::now())
        .await?
    {
        println!(
            "counted the report counters again per day of {zone}, by the fields [{}]",
            settings.report_fields.join(", ")
        );
    }
    if applied.is_empty() {
        out!("{}: up to date", redact(&settings.database_url));
    }
    for m in applied {
        out!("applied {m}");
    }
    store.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn plan(project: PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&project, config.as_deref())?;
    let loaded = checked_project(&settings)?;
    let Some(store) = open_for_reading(&settings).await? else {
        eprintln!("{}", no_database(&settings));
        return Ok(ExitCode::SUCCESS);
    };
    let plans = crate::plan::plan(&store, &loaded.funnels).await?;
    out!("{}", crate::plan::render(&plans).0.trim_end());
    Ok(ExitCode::SUCCESS)
}

/// Any report: the request checked as the API checks it, the rows read, the answer printed.
/// A bad argument or an unknown funnel is a usage error (exit 2).
async fn report(
    cli: &Cli,
    funnel: &str,
    what: crate::report::request::What,
    params: crate::report::request::Params,
    format: FormatArg,
) -> anyhow::Result<ExitCode> {
    use crate::report::render;
    use crate::report::request::{Answer, Request};
    let usage = |message: String| {
        eprintln!("error: {message}");
        Ok(ExitCode::from(2))
    };
    let settings = Settings::load(&cli.project, cli.config.as_deref())?;
    let mut params = params;
    if params.tz.is_none() {
        params.tz = Some(settings.report_timezone.clone());
    }
    let loaded = checked_project(&settings)?;
    let Some(f) = loaded
        .funnels
        .iter()
        .find(|f| f.id.value.as_str() == funnel)
    else {
        let known: Vec<&str> = loaded.funnels.iter().map(|f| f.id.value.as_str()).collect();
        return usage(format!(
            "no funnel \"{funnel}\" (the funnels are: {})",
            known.join(", ")
        ));
    };
    let now = chrono::Utc::now();
    let req = match Request::parse(what, &params, now) {
        Ok(r) => r,
        Err(e) => return usage(format!("--{}: {}", e.param, e.message)),
    };
    let made = match open_for_reading(&settings).await? {
        Some(store) => crate::runtime::report::make(&store, f, &req, now).await,
        None => {
            eprintln!("{}", no_database(&settings));
            let empty = crate::store::ReportData::Rows(crate::store::ReportRows {
                funnel: f.id.value.to_string(),
                ..Default::default()
            });
            crate::report::request::answer(f, &empty, &req, now).map_err(Into::into)
        }
    };
    let answer = match made {
        Ok(a) => a,
        Err(crate::runtime::report::ReportFailed::Report(e)) => {
            return usage(format!("--{}: {e}", e.param()));
        }
        Err(crate::runtime::report::ReportFailed::Store(e)) => return Err(e.into()),
    };
    let text = match (format, &answer) {
        (FormatArg::Json, a) => serde_json::to_string_pretty(a)?,
        (FormatArg::Table, Answer::Funnel(r)) => render::funnel_table(r),
        (FormatArg::Csv, Answer::Funnel(r)) => render::funnel_csv(r),
        (FormatArg::Table, Answer::Emails(r)) => render::email_table(r),
        (FormatArg::Csv, Answer::Emails(r)) => render::email_csv(r),
        (FormatArg::Table, Answer::Ab(r)) => render::ab_table(r),
        (FormatArg::Table, Answer::Attribution(r)) => render::attribution_table(r),
        (FormatArg::Csv, Answer::Ab(r)) => render::ab_csv(r),
        (FormatArg::Csv, Answer::Attribution(r)) => render::attribution_csv(r),
        (FormatArg::Table, Answer::Forecast(r)) => render::forecast_table(r),
        (FormatArg::Csv, Answer::Forecast(_)) => {
            return usage("`forecast` answers as a table or JSON".to_string());
        }
        (FormatArg::Svg, Answer::Funnel(r)) => {
            let title = format!("{} — {}", r.report.name, r.report.funnel);
            let lang =
                crate::locale::Language::parse(settings.ui_language.as_deref().unwrap_or("en"))
                    .unwrap_or_default();
            crate::dashboard::svg::funnel(&r.report, lang, &title)
        }
        (FormatArg::Svg, _) => {
            return usage("--format svg draws the funnel report's chart: not with --emails, --ab, --attribution or forecast".to_string());
        }
    };
    out!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

async fn run(
    project: PathBuf,
    config: Option<PathBuf>,
    roles: &[Role],
) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&project, config.as_deref())?;
    settings.check_secrets()?;
    let has = |r: Role| roles.contains(&r);
    // One process serves a SQLite file, and frees at its start whatever claims are left.
    if !(has(Role::Scheduler) && has(Role::Sender) && has(Role::Http))
        && settings.database_url.starts_with("sqlite:")
    {
        eprintln!(
            "error: --role splits the work among processes that share one PostgreSQL database; \
             a SQLite database is served by one process with every role"
        );
        return Ok(ExitCode::from(2));
    }
    // Taken before the files are read, so an edit made while starting is reloaded.
    let files = project::fingerprint(&settings);
    let (loaded, report) = project::check(&settings, None);
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    let Some(loaded) = loaded else {
        eprintln!("{}", report.summary());
        eprintln!("error: the funnels do not pass `autofunnel check`; nothing was started");
        return Ok(ExitCode::FAILURE);
    };
    let payments = crate::payments::accounts(&settings.payments, &|v| std::env::var(v).ok())
        .map_err(|e| anyhow::anyhow!(e))?;
    for why in payments.values().filter_map(|a| a.unusable.as_ref()) {
        tracing::warn!("{why}: its notifications are answered 503 until it is");
    }
    let store = open_store(&settings)
        .await?
        .with_subscriptions(subscriptions(&settings)?);
    let freed = store.release_stale_claims().await?;
    if freed > 0 {
        tracing::info!(
            rows = freed,
            "took back the claims a stopped process still held"
        );
    }
    std::fs::create_dir_all(&settings.outbox_dir).with_context(|| {
        format!(
            "cannot create the outbox folder {}",
            settings.outbox_dir.display()
        )
    })?;
    let listener = match has(Role::Http) {
        true => Some(TcpListener::bind(settings.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (set `listen` in {})",
                settings.listen,
                settings::FILE_NAME
            )
        })?),
        false => None,
    };
    // Installed before the start is announced, so a SIGHUP from then on never kills the process.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    // Likewise SIGTERM: from the announcement on it stops the process cleanly.
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    #[cfg(not(unix))]
    let terminate = ();
    let addr = match &listener {
        Some(l) => l.local_addr()?.to_string(),
        None => "-".into(),
    };
    tracing::info!(
        addr = %addr,
        roles = ?roles,
        database = %redact(&settings.database_url),
        funnels = loaded.funnels.len(),
        "autofunnel is running"
    );
    // Each funnel: where its forms post, its runs in flight and its emails waiting, so a first
    // signup that shows nothing yet can be looked for (`autofunnel status` says why it waits).
    let counts = store.funnel_counts().await.unwrap_or_default();
    let count = |what: &str, funnel: &str, status: &str| -> i64 {
        counts
            .iter()
            .filter(|(w, f, s, _)| w == what && f == funnel && s == status)
            .map(|c| c.3)
            .sum()
    };
    for f in &loaded.funnels {
        let id = f.id.value.as_str();
        let base = settings.base_url.trim_end_matches('/');
        let forms: Vec<String> = f
            .entry
            .forms()
            .map(|form| format!("{base}/f/{}", form.id))
            .collect();
        tracing::info!(
            funnel = id,
            forms = %forms.join(" "),
            in_flight = count("enrollments", id, "active"),
            emails_queued = count("emails", id, "queued"),
            "funnel loaded"
        );
    }
    let owner = format!(
        "node-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let project = std::sync::Arc::new(loaded);
    let runtime = Runtime::new(
        store.clone(),
        project.funnels.clone(),
        &owner,
        chrono::Utc::now(),
    )
    .await?;
    // Events a stopped process stored without starting their funnels: started before anything
    // new comes in (later ones, a minute old, by the scheduler loop).
    let started = chrono::Utc::now();
    if has(Role::Scheduler) {
        if let Err(e) = runtime.resume_entries(started, started).await {
            tracing::error!(error = %e, "cannot start the funnels of stored events; the scheduler tries again in a minute");
        }
        // Likewise the funnels that tags and events of committed transitions start.
        if let Err(e) = runtime.resume_pending(started, started).await {
            tracing::error!(error = %e, "cannot start the funnels of kept entries; the scheduler tries again in a minute");
        }
    }
    let transport = match &settings.smtp_url {
        Some(url) => {
            let mut target = delivery::smtp::Target::parse(url)
                .map_err(|e| anyhow::anyhow!("bad `smtp_url`: {e}"))?;
            if let Some(file) = &settings.smtp_ca_file {
                let pem = std::fs::read(file)
                    .with_context(|| format!("cannot read `smtp_ca_file` {}", file.display()))?;
                target = target
                    .with_ca(pem)
                    .map_err(|e| anyhow::anyhow!("`smtp_ca_file` {}: {e}", file.display()))?;
            }
            delivery::Transport::smtp(target, settings.smtp_connections)
        }
        None => delivery::Transport::Folder(settings.outbox_dir.clone()),
    };
    // One stop signal for the server and the scheduler.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let runtime = std::sync::Arc::new(runtime);
    let secret = settings.secret_bytes()?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let hooks = std::sync::Arc::new(
        delivery::webhook::Hooks::new(store.outbox(), project.clone())
            .with_shared(&settings.webhooks)
            .with_per_endpoint(settings.webhook_concurrency)
            .with_metrics(metrics.clone()),
    );
    let sender = std::sync::Arc::new(
        delivery::Sender::new(
            store.outbox(),
            project,
            transport,
            &settings.base_url,
            &secret,
        )
        .with_rate(settings.send_rate)
        .with_tracking(settings.track_clicks, settings.track_opens)
        .with_link_hosts(&settings.link_hosts)
        .with_dkim(dkim_of(&settings)?)
        .with_metrics(metrics.clone()),
    );
    let scheduler = {
        let (rt, done, on) = (runtime.clone(), until_stopped(), has(Role::Scheduler));
        tokio::spawn(async move {
            if on {
                rt.run(done).await
            }
        })
    };
    let sending = {
        let (s, done, on) = (sender.clone(), until_stopped(), has(Role::Sender));
        tokio::spawn(async move {
            if on {
                s.run(done).await
            }
        })
    };
    let calling = {
        let (h, done, on) = (hooks.clone(), until_stopped(), has(Role::Sender));
        tokio::spawn(async move {
            if on {
                h.run(done).await
            }
        })
    };
    #[cfg(unix)]
    let reloader = tokio::spawn(reload_on_sighup(
        hangup,
        files,
        runtime.clone(),
        sender.clone(),
        hooks.clone(),
        settings.clone(),
        until_stopped(),
    ));
    #[cfg(not(unix))]
    let reloader = tokio::spawn(async {});
    let state = AppState {
        runtime: runtime.clone(),
        hooks_secret: settings
            .hooks_secret
            .as_ref()
            .map(|s| std::sync::Arc::from(s.as_bytes())),
        secret: std::sync::Arc::from(secret.as_slice()),
        api_token: settings.api_token.as_deref().map(std::sync::Arc::from),
        admin_token: settings.admin_token.as_deref().map(std::sync::Arc::from),
        metrics,
        signup_limit: server::signup::limiter_behind(
            settings.signups_per_ip_per_minute,
            settings.trusted_networks()?,
        ),
        report_zone: settings.report_zone()?,
        payments: server::pay::Payments::new(payments),
        trusted_proxies: std::sync::Arc::from(settings.trusted_networks()?),
        outbox_dir: settings
            .smtp_url
            .is_none()
            .then(|| std::sync::Arc::from(settings.outbox_dir.as_path())),
        ui_language: settings.ui_language()?,
        https: settings.base_url.starts_with("https://"),
        signed_out: Default::default(),
    }
    .remembering_sign_outs()
    .await?;
    let mut server = match listener {
        Some(listener) => tokio::spawn(server::serve(listener, state, until_stopped())),
        None => {
            let done = until_stopped();
            tokio::spawn(async move {
                done.await;
                Ok(())
            })
        }
    };
    let served = tokio::select! {
        r = &mut server => r,
        _ = shutdown_signal(terminate) => {
            let _ = stop.send(true);
            server.await
        }
    };
    let _ = stop.send(true);
    // Signups the server was storing finish before the scheduler stops.
    runtime.settle().await;
    served.context("the HTTP server task failed")??;
    scheduler.await.context("the scheduler task failed")?;
    sending.await.context("the sender task failed")?;
    calling.await.context("the webhook task failed")?;
    reloader.await.context("the reload task failed")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How often `run` looks for edited funnel and template files.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// On SIGHUP, or when a file under the funnels or templates folder changed, the project is
/// checked again; its funnels replace the running ones only if they pass.
#[cfg(unix)]
/// The DKIM signer the settings ask for: all of `dkim_selector`, `dkim_domain` and
/// `dkim_key_file`, or none.
fn dkim_of(s: &Settings) -> anyhow::Result<Option<lettre::message::dkim::DkimConfig>> {
    match (&s.dkim_selector, &s.dkim_domain, &s.dkim_key_file) {
        (None, None, None) => Ok(None),
        (Some(selector), Some(domain), Some(file)) => {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read `dkim_key_file` {}", file.display()))?;
            delivery::dkim(selector, domain, &key)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("`dkim_key_file` {}: {e}", file.display()))
        }
        _ => anyhow::bail!("DKIM needs all of `dkim_selector`, `dkim_domain` and `dkim_key_file`"),
    }
}

async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    mut seen: u64,
    runtime: std::sync::Arc<Runtime>,
    sender: std::sync::Arc<delivery::Sender>,
    hooks: std::sync::Arc<delivery::webhook::Hooks>,
    settings: Settings,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = hup.recv() => {}
            _ = watch.tick() => {
                let now = project::fingerprint(&settings);
                if now == seen {
                    continue;
                }
                tracing::info!("funnel or template files changed; checking them");
            }
        }
        seen = project::fingerprint(&settings);
        let (loaded, report) = project::check(&settings, None);
        match loaded {
            Some(p) => {
                let n = p.funnels.len();
                match runtime.reload(p.funnels.clone(), chrono::Utc::now()).await {
                    Ok(()) => {
                        let p = std::sync::Arc::new(p);
                        hooks.reload(p.clone());
                        sender.reload(p);
                        tracing::info!(funnels = n, "reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload failed; the running funnels stay")
                    }
                }
            }
            None => {
                for d in &report.diagnostics {
                    tracing::warn!("{d}");
                }
                tracing::warn!("{}; the running funnels stay", report.summary());
            }
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
#[cfg(unix)]
async fn shutdown_signal(mut terminate: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
}

#[cfg(not(unix))]
async fn shutdown_signal(_: ()) {
    let _ = tokio::signal::ctrl_c().await;
}
