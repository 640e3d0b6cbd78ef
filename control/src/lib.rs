//! The control plane's store (seed 001 §5.8, §6.1): agents, policy versions,
//! control API tokens and the change history, in SQL through sqlx.
//!
//! SQLite (a file under the state directory) by default; PostgreSQL for
//! HA. One set of migrations serves both ([`migrations`]), and queries are
//! plain runtime-checked `sqlx::query` through the `Any` driver, so a build
//! needs no database and no `DATABASE_URL`.
//!
//! Gateways never read the database on the request path: every change is
//! published as a [`Snapshot`] (the whole registry, the token list, the
//! policy in force) to the NATS KV bucket [`BUCKET`], and each replica
//! applies it from its watch.
//!
//! Every write is one transaction that first bumps the store's revision
//! (which serializes writers), checks the version the caller names
//! (compare-and-set: [`StoreError::Stale`]), writes, and appends a row to
//! the change history.
//!
//! | module | job |
//! |---|---|
//! | [`model`] | agents, policy versions, tokens, history rows, snapshots |
//! | [`agents`] | the agent registry: create, import, update, rotate, delete |
//! | [`policies`] | policy versions: upload, activate, roll back |
//! | [`tokens`] | control API tokens kept in the store |
//! | [`history`] | the change history and the snapshots built from the store |
//! | [`diff`] | a readable diff of two policy versions |
//! | [`migrations`] | the embedded migrations |

pub mod agents;
pub mod diff;
pub mod history;
pub mod migrations;
pub mod model;
pub mod policies;
pub mod tokens;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

pub use model::*;

/// How long a caller waits for a database connection before the store
/// counts as unreachable (the API answers 503 rather than hanging).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a store operation failed. Each maps to one API status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no {what} '{id}' in the store")]
    NotFound { what: &'static str, id: String },
    #[error("{what} '{id}' already exists")]
    Exists { what: &'static str, id: String },
    #[error(
        "{what} '{id}' is at version {current}, not {expected}: it changed since you read it; read it again and retry with \"version\": {current} if your change still applies"
    )]
    Stale {
        what: &'static str,
        id: String,
        expected: i64,
        current: i64,
    },
    /// The change does not fit the store's state (the same text uploaded
    /// twice, a version already active, nothing to roll back to).
    #[error("{0}")]
    Conflict(String),
    /// The change would leave the store invalid (overlapping sources, a
    /// duplicate SPIFFE ID...).
    #[error("{0}")]
    Invalid(String),
    #[error("the control store's database is unreachable ({0}); gateways keep serving the last published snapshot")]
    Unavailable(String),
    #[error("the control store's database failed: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(error.to_string())
            }
            _ => StoreError::Database(error.to_string()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A connection pool to the store's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Store {
    // The URL may carry a password: only the redacted form is ever shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("database", &self.shown).finish()
    }
}

/// The URL without the password between `:` and `@`, for logs and answers.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user_info, host)) => {
                let user = user_info.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Store {
    /// Connects to `url` (`sqlite:///path/control.db` or
    /// `postgres://user:pass@host/db`) and applies the migrations. A SQLite
    /// file is created when missing.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let shown = redacted(url);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "--database {shown} is neither sqlite:PATH nor postgres://...; \
                 e.g. --database sqlite:///var/lib/clawgress/control.db or --database postgres://clawgress@db/clawgress"
            )));
        };
        if backend == Backend::Sqlite {
            // SQLite makes the file, not the directories above it.
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            let path = std::path::Path::new(path.split('?').next().unwrap_or_default());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let url = match backend {
            // Created if missing; WAL lets readers go on while one writes.
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(&url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {shown}: {e}")))?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        migrations::run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("cannot migrate {shown}: {e}")))?;
        Ok(Store { pool, backend, shown })
    }

    /// The SQLite store under `state_dir` (`control.db`): the default.
    pub fn sqlite_url(state_dir: &std::path::Path) -> String {
        format!("sqlite://{}", state_dir.join("control.db").display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the database answers now.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The revision of the last change (0 for a new store).
    pub async fn revision(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM store_meta WHERE name = 'revision'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write: bumps the store revision first, which takes the
    /// write lock (SQLite) or the row lock (PostgreSQL) that serializes
    /// every writer, so checks made inside the transaction hold until it
    /// commits.
    pub(crate) async fn begin(&self) -> Result<(Transaction<'static, Any>, i64)> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("UPDATE store_meta SET value = value + 1 WHERE name = 'revision' RETURNING value")
            .fetch_one(&mut *tx)
            .await?;
        let revision: i64 = row.try_get(0)?;
        Ok((tx, revision))
    }
}

/// Milliseconds since the epoch, as the store keeps times.
pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Reads a JSON list of strings kept in a TEXT column.
pub(crate) fn string_list(row: &AnyRow, column: &str) -> Result<Vec<String>> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Database(format!("column {column} is not a JSON list: {e}")))
}

pub(crate) fn json_list(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_string())
}

/// A fresh secret: 32 random bytes, hex, after a prefix that says what it is
/// (so a leaked one is recognized). Returns the secret and its SHA-256.
pub fn new_secret(prefix: &str) -> (String, String) {
    use sha2::Digest as _;
    let bytes: [u8; 32] = rand::random();
    let secret = format!("{prefix}{}", hex::encode(bytes));
    let digest = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    (secret, digest)
}

#[cfg(test)]
mod tests;
