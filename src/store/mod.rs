//! Persistence through sqlx: PostgreSQL for production and several replicas, SQLite as the
//! embedded default.
//!
//! One SQL text serves both engines through sqlx's `Any` driver (both accept `$n` parameters,
//! `ON CONFLICT` and `RETURNING`), so there is no per-engine copy of a query to drift apart. The
//! price is that queries are not checked at compile time against one engine; the store tests run
//! every query on both real engines instead, which checks more than either one could.

mod agents;
mod conversations;
mod history;
mod inbox;
mod leader;
mod relay;
mod transactions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

pub use agents::{AgentRecord, BridgeRoom};
pub use conversations::RoomConversation;
pub use history::HistoryImport;
pub use inbox::{InboxEvent, InboxRow, InboxState, NewInboxEvent};
pub use leader::{Leadership, SessionLock};
pub use relay::{RoomSettings, SentMessage, TurnRecord};
pub use transactions::{TransactionOutcome, transaction_key};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(StoreError::Config(
                "database_url must start with sqlite:// or postgres://".into(),
            ))
        }
    }

    fn migrator(self) -> &'static sqlx::migrate::Migrator {
        match self {
            Self::Postgres => &POSTGRES_MIGRATIONS,
            Self::Sqlite => &SQLITE_MIGRATIONS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database config: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Kept for sessions that must live outside the pool (the leadership lock).
    url: std::sync::Arc<str>,
    /// SQLite has one writer; queueing here is fair, where its busy handler sleeps in growing
    /// steps and turns contention into 100 ms stalls.
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The room after which the next claim of room heads looks first (see `claim_room_heads`).
    claim_cursor: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Store {
    /// Connects without running migrations (see [`Store::migrate`]).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        if backend == Backend::Sqlite {
            prepare_sqlite_file(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; FULL makes a commit durable
                        // before we acknowledge a transaction to the homeserver.
                        connection
                            .execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            backend,
            url: url.into(),
            sqlite_writer: Default::default(),
            claim_cursor: Default::default(),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.backend.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Migrations known to this binary that the database has not applied yet.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        let applied: Vec<(i64,)> = match sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(&self.pool)
            .await
        {
            Ok(rows) => rows,
            // No bookkeeping table yet: nothing has been applied.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(self
            .backend
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .filter(|m| !applied.iter().any(|(v,)| *v == m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// A cheap round trip, for `/ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Held around write transactions: serialises them on SQLite, free on PostgreSQL.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.lock().await),
            Backend::Postgres => None,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes the database's directory (0700) and a missing database file (0600) before SQLite opens
/// them: they hold every message people sent, whatever the umask. SQLite gives `-wal` and `-shm`
/// the database file's mode. A missing file is created unless the URL asks for `mode=ro` or
/// `mode=rw`, so `sqlite://path` works as the default URL (`?mode=rwc`) does.
fn prepare_sqlite_file(url: &str) -> Result<(), StoreError> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mode = url::form_urlencoded::parse(params.as_bytes())
        .find(|(key, _)| key == "mode")
        .map(|(_, value)| value.into_owned());
    if database.is_empty() || database == ":memory:" || mode.as_deref() == Some("memory") {
        return Ok(());
    }
    // sqlx decodes the path the same way, to allow `?` and `#` in file names.
    let path = percent_encoding::percent_decode_str(database)
        .decode_utf8()
        .map_err(|e| StoreError::Config(format!("the database path is not UTF-8 once decoded: {e}")))?;
    let path = std::path::Path::new(&*path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir_builder().create(parent).map_err(|e| {
            StoreError::Config(format!(
                "cannot create the database directory {}: {e}",
                parent.display()
            ))
        })?;
    }
    if matches!(mode.as_deref(), None | Some("rwc")) {
        match private_file_options().open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::Config(format!(
                    "cannot create the database file {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

fn private_dir_builder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Milliseconds since the Unix epoch, the one time format in every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}
