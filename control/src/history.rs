//! The change history (one row per change, in store order) and the
//! snapshots gateways apply, built from what is committed.

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::model::{Author, HistoryEntry, Kind, Snapshot};
use crate::{Result, Store, StoreError, from_millis, millis};

/// Most history rows one read returns.
pub const MAX_LIMIT: i64 = 1000;

/// One change as it goes into the history.
pub(crate) struct Change<'a> {
    pub revision: i64,
    pub author: &'a Author,
    pub action: &'a str,
    pub kind: Kind,
    pub target: &'a str,
    /// The team the change concerns (an agent's), for team-scoped readers.
    pub team: Option<&'a str>,
    pub detail: serde_json::Value,
}

/// Appends `change` inside the caller's transaction: it commits with the
/// change or not at all.
pub(crate) async fn record(tx: &mut Transaction<'static, Any>, change: Change<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO change_history (revision, at, actor, role, action, kind, target, team, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(change.revision)
    .bind(millis(Utc::now()))
    .bind(change.author.name.as_str())
    .bind(change.author.role.as_str())
    .bind(change.action)
    .bind(change.kind.history_kind())
    .bind(change.target)
    .bind(change.team)
    .bind(change.detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which history rows to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// `agent`, `policy` or `token`.
    pub kind: Option<String>,
    pub target: Option<String>,
    /// Only rows about these teams (a team-scoped reader); `None`: all.
    pub teams: Option<Vec<String>>,
    /// Rows before this revision (paging back).
    pub before: Option<i64>,
    pub limit: i64,
}

fn entry(row: &AnyRow) -> Result<HistoryEntry> {
    let detail: String = row.try_get("detail")?;
    Ok(HistoryEntry {
        revision: row.try_get("revision")?,
        at: from_millis(row.try_get("at")?),
        actor: row.try_get("actor")?,
        role: row.try_get("role")?,
        action: row.try_get("action")?,
        kind: row.try_get("kind")?,
        target: row.try_get("target")?,
        team: row.try_get("team")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

impl Store {
    /// The newest changes first.
    pub async fn history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>> {
        let limit = filter.limit.clamp(1, MAX_LIMIT);
        // Filters are few and fixed: the statement is built from constant
        // pieces, the values always bound.
        let mut sql = String::from(
            "SELECT revision, at, actor, role, action, kind, target, team, detail FROM change_history WHERE 1 = 1",
        );
        let mut next = 1;
        let mut placeholder = || {
            let p = format!("${next}");
            next += 1;
            p
        };
        if filter.kind.is_some() {
            sql.push_str(&format!(" AND kind = {}", placeholder()));
        }
        if filter.target.is_some() {
            sql.push_str(&format!(" AND target = {}", placeholder()));
        }
        if filter.before.is_some() {
            sql.push_str(&format!(" AND revision < {}", placeholder()));
        }
        let teams = filter.teams.clone().unwrap_or_default();
        if filter.teams.is_some() {
            if teams.is_empty() {
                return Ok(Vec::new());
            }
            let list: Vec<String> = teams.iter().map(|_| placeholder()).collect();
            sql.push_str(&format!(" AND team IN ({})", list.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY revision DESC, target LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        if let Some(kind) = &filter.kind {
            query = query.bind(kind.as_str());
        }
        if let Some(target) = &filter.target {
            query = query.bind(target.as_str());
        }
        if let Some(before) = filter.before {
            query = query.bind(before);
        }
        for team in &teams {
            query = query.bind(team.as_str());
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(entry).collect()
    }

    /// The revision of the last change of `kind` (0: never changed).
    pub async fn kind_revision(&self, kind: Kind) -> Result<i64> {
        let mut conn = self.pool().acquire().await?;
        kind_revision(&mut conn, kind).await
    }

    /// The snapshot of `kind` as committed now; `None` while the store has
    /// nothing of that kind to say (never changed, or no policy active), in
    /// which case gateways keep their files.
    ///
    /// Read in one transaction that sees one committed state (SQLite's read
    /// transaction; PostgreSQL's repeatable read), so the revision it claims
    /// is exactly that of its content.
    pub async fn snapshot(&self, kind: Kind) -> Result<Option<Snapshot>> {
        let mut tx = self.pool().begin().await?;
        if self.backend() == crate::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let revision = kind_revision(&mut tx, kind).await?;
        if revision == 0 {
            return Ok(None);
        }
        let snapshot = match kind {
            Kind::Agents => Some(Snapshot::Agents(crate::model::AgentsSnapshot {
                revision,
                agents: crate::agents::list(&mut tx).await?,
            })),
            Kind::Tokens => Some(Snapshot::Tokens(crate::model::TokensSnapshot {
                revision,
                tokens: crate::tokens::list(&mut tx).await?,
            })),
            Kind::Policy => match crate::policies::state(&mut tx).await?.active_id {
                Some(id) => {
                    let (version, body) = crate::policies::get(&mut tx, id)
                        .await?
                        .ok_or_else(|| StoreError::Database(format!("the active policy version {id} is missing")))?;
                    Some(Snapshot::Policy(crate::model::PolicySnapshot {
                        revision,
                        id,
                        digest: version.digest,
                        name: version.name,
                        body,
                    }))
                }
                None => None,
            },
        };
        tx.rollback().await?;
        Ok(snapshot)
    }
}

/// The policy's snapshot changes with activations only (an upload does not
/// change what is in force).
async fn kind_revision(conn: &mut AnyConnection, kind: Kind) -> Result<i64> {
    let query = match kind {
        Kind::Policy => sqlx::query("SELECT MAX(revision) FROM policy_activations"),
        _ => sqlx::query("SELECT MAX(revision) FROM change_history WHERE kind = $1").bind(kind.history_kind()),
    };
    let row = query.fetch_one(&mut *conn).await?;
    Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
}
