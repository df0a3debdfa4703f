//! Import benchmark: a CSV of N subscribers as another service exports them (email, name,
//! city, tags; one row in 100 repeating an earlier address, one in 1,000 a bad address) read
//! by `autofunnel import`'s code (`transfer::import`: mapped, checked, stored 5,000 rows to a
//! transaction, refused rows written to the rejects file) into a fresh database; next to it,
//! in the same run, SQLite's own `.import` of the same file into a bare table (no checks, no
//! index but the rowid): the reference.
//!
//! `cargo bench --bench import -- [N] [postgres://…]` (default 1,000,000 rows, SQLite in a
//! temporary folder; a PostgreSQL database given should be an empty scratch one). Needs `sqlite3` (Debian package `sqlite3`).

#[path = "common.rs"]
mod common;

use std::io::Write as _;
use std::process::Command;
use std::time::Instant;

use autofunnel::store::Store;
use autofunnel::transfer::{ImportArgs, import};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FUNNEL: &str = "name: Newsletter\nfrom: \"Shop <shop@example.com>\"\nentry: { api: true }\n\
    fields:\n  plan: { type: text }\n\
    stages:\n  - id: news\n    steps:\n      - wait: 30d\n      - exit: completed\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    autofunnel::allocator::configure();
    let args = common::args();
    let n = common::count(&args).unwrap_or(1_000_000);
    let pg = args.iter().find(|a| a.starts_with("postgres")).cloned();
    let sqlite3 = common::tool("sqlite3")?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("funnels"))?;
    std::fs::write(dir.path().join("funnels/newsletter.yaml"), FUNNEL)?;
    let settings = autofunnel::settings::Settings {
        funnels_dir: dir.path().join("funnels"),
        templates_dir: dir.path().join("templates"),
        ..Default::default()
    };
    let (project, report) = autofunnel::project::check(&settings, None);
    let project =
        std::sync::Arc::new(project.ok_or_else(|| anyhow::anyhow!("{:?}", report.diagnostics))?);

    let file = dir.path().join("subscribers.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        writeln!(w, "Email,First Name,City,Plan,Tags")?;
        for i in 0..n {
            let who = if i % 100 == 99 { i / 2 } else { i };
            if i % 1000 == 999 {
                writeln!(w, "not an address {i},Bad,,,")?;
            } else {
                writeln!(
                    w,
                    "subscriber{who}@example.com,Name{who},City{},{},\"customers, list-{}\"",
                    who % 300,
                    ["free", "gold"][who % 2],
                    who % 7
                )?;
            }
        }
    }
    let mb = std::fs::metadata(&file)?.len() as f64 / 1e6;
    println!("file: {n} rows, {mb:.1} MB");

    let db = pg
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let store = Store::connect(&db).await?;
    store.migrate().await?;
    let a = ImportArgs {
        file: file.clone(),
        tags: vec!["imported".into()],
        ..Default::default()
    };
    common::reset_peak_rss();
    let (t, cpu) = (Instant::now(), common::cpu_seconds());
    let summary = import(Some(&store), project, &a, chrono::Utc::now()).await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds() - cpu;
    println!(
        "autofunnel import: {:.0} rows/s ({secs:.2} s, CPU {cpu:.2} s, peak RSS {:.1} MB): {} new, {} repeated, {} refused",
        n as f64 / secs,
        common::peak_rss_mb(),
        summary.new,
        summary.repeated,
        summary.refused_total()
    );
    store.close().await?;

    let reference = dir.path().join("reference.db");
    let t = Instant::now();
    let out = Command::new(&sqlite3)
        .arg(&reference)
        .arg(".mode csv")
        .arg(format!(".import {} subscribers", file.display()))
        .output()?;
    let ref_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "sqlite3 .import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "sqlite3 .import (reference): {:.0} rows/s ({ref_secs:.2} s)",
        n as f64 / ref_secs
    );
    println!("share: {:.0} %", 100.0 * ref_secs / secs);
    Ok(())
}
