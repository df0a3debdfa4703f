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
