//! Fresh databases for tests: a SQLite file in a temp dir, or a new database on the PostgreSQL
//! server that `scripts/test` names in `LETTA_MATRIX_TEST_POSTGRES_URL`.

use letta_matrix::store::Store;
use sqlx::Connection;

pub const POSTGRES_ENV: &str = "LETTA_MATRIX_TEST_POSTGRES_URL";
/// `scripts/test` gives each run its own prefix here (`letta_matrix_t_<run>_`) and drops the run's
/// databases when it ends, or when a later run finds it dead.
pub const POSTGRES_PREFIX_ENV: &str = "LETTA_MATRIX_TEST_POSTGRES_PREFIX";
/// The prefix without `scripts/test`.
pub const POSTGRES_PREFIX: &str = "letta_matrix_t_";

pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        Self { url, _dir: Some(dir) }
    }

    /// A new, empty database on the test server, so tests never see each other's rows.
    pub async fn postgres() -> Self {
        let base = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!("{POSTGRES_ENV} is not set: run the tests through scripts/test, which creates the database")
        });
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).unwrap();
        let prefix = std::env::var(POSTGRES_PREFIX_ENV).unwrap_or_else(|_| POSTGRES_PREFIX.to_owned());
        let name = format!("{prefix}{}", hex::encode(random));
        sqlx::any::install_default_drivers();
        let mut admin = sqlx::AnyConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {base}: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("the URL names a database");
        Self {
            url: format!("{prefix}/{name}"),
            _dir: None,
        }
    }

    pub async fn open(&self) -> Store {
        let store = Store::connect(&self.url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}
