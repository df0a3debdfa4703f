//! What the benchmark binaries share.

/// Starts the process's peak resident set size again from what it holds now (Linux: `5` to
/// `/proc/self/clear_refs`), so the next [`peak_rss_mb`] is the peak of what follows.
#[allow(dead_code)]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size so far, in MB (Linux `VmHWM`).
#[allow(dead_code)]
pub fn peak_rss_mb() -> f64 {
    peak_rss_mb_of("self")
}

/// Another process's peak resident set size so far, in MB (`pid`, or `self`).
pub fn peak_rss_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Another process's resident set size now, in MB (Linux `VmRSS`).
#[allow(dead_code)]
pub fn rss_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) the process has used so far, in seconds.
#[allow(dead_code)]
pub fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of the file: `utime`, `stime`.
    self_stat_seconds(11, 12)
}

/// CPU time (user + system) of the children this process has waited for, in seconds (a load
/// generator run to its end).
#[allow(dead_code)]
pub fn children_cpu_seconds() -> f64 {
    // Fields 16 and 17 of the file: `cutime`, `cstime`.
    self_stat_seconds(13, 14)
}

/// The sum of two tick counts of `/proc/self/stat` (Linux, 100 ticks per second), in seconds;
/// `a` and `b` count the fields after the command name from 0.
#[allow(dead_code)]
fn self_stat_seconds(a: usize, b: usize) -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(a)?.parse::<f64>().ok()? + f.get(b)?.parse::<f64>().ok()?)
        })
        .map(|ticks| ticks / 100.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) used so far by every process whose command name is `name`
/// and their ended children (Linux `/proc/PID/stat`, 100 ticks per second): a database
/// server's processes.
#[allow(dead_code)]
pub fn cpu_seconds_of_command(name: &str) -> f64 {
    let mut ticks = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, after)) = s.rsplit_once(')') else {
            continue;
        };
        if head.split_once('(').map(|(_, c)| c) != Some(name) {
            continue;
        }
        let f: Vec<&str> = after.split_whitespace().collect();
        // Its own time and that of its children it has waited for (a server's backends
        // that have ended count in the server's main process).
        ticks += (11..=14)
            .filter_map(|i| f.get(i)?.parse::<f64>().ok())
            .sum::<f64>();
    }
    ticks / 100.0
}

/// The benchmark's arguments (without the `--bench` cargo adds).
pub fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect()
}

/// The value after `--name`, parsed.
#[allow(dead_code)]
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// The first argument that is a number and not the value of a `--flag`.
#[allow(dead_code)]
pub fn count(args: &[String]) -> Option<usize> {
    args.iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .find_map(|(_, a)| a.parse().ok())
}

/// A program of postfix's (`smtp-sink`, `smtp-source`), wherever Debian put it.
#[allow(dead_code)]
pub fn tool(name: &str) -> anyhow::Result<String> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Ok(p.display().to_string());
        }
    }
    anyhow::bail!(
        "{name} not found: install the Debian package `postfix` (apt-get install postfix)"
    )
}

/// The number a query of one row and one column gives (a `COUNT(*)`).
#[allow(dead_code)]
pub async fn query_count(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    use anyhow::Context as _;
    use sea_orm::ConnectionTrait as _;
    let st = sea_orm::Statement::from_string(db.get_database_backend(), sql.to_string());
    let row = db
        .query_one_raw(st)
        .await?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

/// The database a bench runs on: `--database URL` (a PostgreSQL database, emptied first), else
/// a SQLite file at `file`.
#[allow(dead_code)]
pub async fn database_url(args: &[String], file: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use sea_orm::ConnectionTrait as _;
    match flag::<String>(args, "--database") {
        Some(u) => {
            let db = sea_orm::Database::connect(&u).await?;
            db.execute_unprepared("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                .await
                .context("cannot empty the PostgreSQL database")?;
            Ok(u)
        }
        None => Ok(format!("sqlite://{}?mode=rwc", file.display())),
    }
}

/// The example project in this repository (`funnels/`, `templates/`), loaded as `run` does.
#[allow(dead_code)]
pub fn example_project() -> anyhow::Result<std::sync::Arc<autofunnel::project::Project>> {
    let settings = autofunnel::settings::Settings {
        funnels_dir: "funnels".into(),
        templates_dir: "templates".into(),
        ..Default::default()
    };
    let (p, report) = autofunnel::project::check(&settings, None);
    Ok(std::sync::Arc::new(
        p.ok_or_else(|| anyhow::anyhow!("{}", report.summary()))?,
    ))
}

/// A release `autofunnel run` process, killed when dropped.
#[allow(dead_code)]
pub struct Node {
    pub child: std::process::Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `autofunnel run` on `project` with the database `url`, listening on `port` (no
/// limit of signups per address), its log appended to `log`, and waits until it answers
/// `/healthz` (at most 60 s).
#[allow(dead_code)]
pub async fn start_run(
    project: &std::path::Path,
    url: &str,
    port: u16,
    log: &std::path::Path,
) -> anyhow::Result<Node> {
    use anyhow::Context as _;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut node = Node {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_autofunnel"))
            .arg("--project")
            .arg(project)
            .arg("run")
            .env("AUTOFUNNEL_DATABASE_URL", url)
            .env("AUTOFUNNEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUTOFUNNEL_SIGNUPS_PER_IP_PER_MINUTE", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start autofunnel run")?,
    };
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    loop {
        if let Some(s) = node.child.try_wait()? {
            anyhow::bail!("autofunnel run exited at start ({s})");
        }
        let up = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            return Ok(node);
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!("autofunnel run did not answer /healthz within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
