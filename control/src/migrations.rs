//! The store's migrations, embedded in the binary: one set for SQLite and
//! PostgreSQL (portable SQL only), applied by sqlx's migrator at start.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::AnyPool;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// Version, description, SQL; in order. A released migration is never
/// edited: sqlx refuses a database whose applied checksum differs.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "control store", include_str!("../migrations/0001_control_store.sql"))];

/// The embedded list as sqlx's migrator reads migrations. (Built without
/// sqlx's `migrate!` macro, which would need its compile-time machinery.)
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        Box::pin(async move {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Applies whatever has not been applied yet, under the migrator's lock (so
/// two gateways starting on one PostgreSQL do not race).
pub async fn run(pool: &AnyPool) -> Result<(), sqlx::migrate::MigrateError> {
    let migrator = Migrator::new(Embedded).await?;
    migrator.run(pool).await
}
