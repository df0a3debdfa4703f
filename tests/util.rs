//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the expected file; `UPDATE_EXPECT=1` rewrites the file instead.
pub fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with UPDATE_EXPECT=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs (UPDATE_EXPECT=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// The PostgreSQL server URL for tests, from `AUTOFUNNEL_TEST_POSTGRES_URL`; `None` (and a
/// note on stderr) when unset. CI sets it, and there a missing server fails the run.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("AUTOFUNNEL_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: CI must set AUTOFUNNEL_TEST_POSTGRES_URL");
            }
            eprintln!(
                "SKIPPED {test}: AUTOFUNNEL_TEST_POSTGRES_URL is not set, PostgreSQL not tested"
            );
            None
        }
    }
}

/// One test per backend for each `name => body`: `name::sqlite` on a fresh SQLite file and
/// `name::postgres` on a fresh PostgreSQL database (see `store::on_sqlite`/`on_postgres`).
macro_rules! on_both_backends {
    ($($name:ident => $body:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    crate::store::on_sqlite(super::$body).await;
                }

                #[tokio::test]
                async fn postgres() {
                    crate::store::on_postgres(stringify!($name), super::$body).await;
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

/// Writes a project's files (`funnels/…`, `templates/…`) into `dir` and loads it as `run`
/// would; panics with the diagnostics if it does not pass `check`.
pub fn project_of(
    dir: &Path,
    files: &[(&str, &str)],
) -> std::sync::Arc<autofunnel::project::Project> {
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let settings = autofunnel::settings::Settings {
        funnels_dir: dir.join("funnels"),
        templates_dir: dir.join("templates"),
        project_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let (p, report) = autofunnel::project::check(&settings, None);
    std::sync::Arc::new(p.unwrap_or_else(|| panic!("{:?}", report.diagnostics)))
}

/// The real server on a port of 127.0.0.1 chosen by the system.
pub struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds port 0 first, so `state` may be built knowing the address (`Server::bind`).
    pub async fn bind() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        (listener, base)
    }

    pub fn start(listener: tokio::net::TcpListener, state: autofunnel::server::AppState) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(autofunnel::server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Server { stop, task }
    }

    /// Stops it and waits until the requests in flight are done.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// A server state over the engine `rt` with every token, secret and limit off; a test turns
/// on what it needs: `AppState { admin_token: Some(…), ..off(&rt) }`.
pub fn off(rt: &std::sync::Arc<autofunnel::runtime::Runtime>) -> autofunnel::server::AppState {
    autofunnel::server::AppState::new(rt.clone(), b"link secret")
}

/// A funnel id from a test's literal.
pub fn fid(id: &str) -> autofunnel::domain::FunnelId {
    autofunnel::domain::FunnelId::parse(id).unwrap()
}

/// The engine over `store` running the project's funnels, as node `node-a`.
pub async fn engine(
    store: &autofunnel::store::Store,
    project: &autofunnel::project::Project,
    now: chrono::DateTime<chrono::Utc>,
) -> std::sync::Arc<autofunnel::runtime::Runtime> {
    std::sync::Arc::new(
        autofunnel::runtime::Runtime::new(store.clone(), project.funnels.clone(), "node-a", now)
            .await
            .unwrap(),
    )
}

/// An HTTP client (rustls with ring made the process's TLS default first).
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap()
}

/// An HTTP client's builder, as [`http`] makes it.
pub fn http_builder() -> reqwest::ClientBuilder {
    autofunnel::delivery::webhook::install_tls();
    reqwest::Client::builder()
}
