//! The agent registry in the store: create (one or an imported file's
//! worth), update, rotate, disable, delete. Every write checks the whole
//! registry it would leave behind with the caller's `validate` (the
//! gateway's own agents-file rules: ids, labels, overlapping `sources`,
//! duplicate `spiffe_ids`) before it commits.

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::history::{Change, record};
use crate::model::{Agent, Author, Kind, NewAgent};
use crate::{Result, Store, StoreError, from_millis, json_list, millis, string_list};

/// Judges a whole registry: `Err` says what is wrong (and where).
pub type Validate<'a> = &'a (dyn Fn(&[Agent]) -> Result<(), String> + Send + Sync);

const COLUMNS: &str = "id, team, project, environment, role, key_sha256, previous_key_sha256, previous_key_until, \
     disabled, sources, spiffe_ids, version, created_at, updated_at, updated_by";

fn agent(row: &AnyRow) -> Result<Agent> {
    Ok(Agent {
        id: row.try_get("id")?,
        team: row.try_get("team")?,
        project: row.try_get("project")?,
        environment: row.try_get("environment")?,
        role: row.try_get("role")?,
        key_sha256: row.try_get("key_sha256")?,
        previous_key_sha256: row.try_get("previous_key_sha256")?,
        previous_key_until: row.try_get::<Option<i64>, _>("previous_key_until")?.map(from_millis),
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        sources: string_list(row, "sources")?,
        spiffe_ids: string_list(row, "spiffe_ids")?,
        version: row.try_get("version")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        updated_by: row.try_get("updated_by")?,
    })
}

pub(crate) async fn list(conn: &mut AnyConnection) -> Result<Vec<Agent>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM agents ORDER BY id"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(agent).collect()
}

async fn insert(tx: &mut Transaction<'static, Any>, a: &Agent) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(a.id.as_str())
    .bind(a.team.as_str())
    .bind(a.project.as_str())
    .bind(a.environment.as_str())
    .bind(a.role.as_str())
    .bind(a.key_sha256.as_deref())
    .bind(a.previous_key_sha256.as_deref())
    .bind(a.previous_key_until.map(millis))
    .bind(i64::from(a.disabled))
    .bind(json_list(&a.sources))
    .bind(json_list(&a.spiffe_ids))
    .bind(a.version)
    .bind(millis(a.created_at))
    .bind(millis(a.updated_at))
    .bind(a.updated_by.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether `id` is at `expected`, in the transaction; the error says which.
fn check_version(current: Option<&Agent>, id: &str, expected: i64) -> Result<Agent> {
    let agent = current.ok_or_else(|| StoreError::NotFound {
        what: "agent",
        id: id.to_string(),
    })?;
    if agent.version != expected {
        return Err(StoreError::Stale {
            what: "agent",
            id: id.to_string(),
            expected,
            current: agent.version,
        });
    }
    Ok(agent.clone())
}

/// What [`Store::create_agents`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub agents: Vec<Agent>,
    /// Ids already in the store, left as they are (`skip_existing`).
    pub skipped: Vec<String>,
    pub revision: i64,
}

impl Store {
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let mut conn = self.pool().acquire().await?;
        list(&mut conn).await
    }

    pub async fn agent(&self, id: &str) -> Result<Option<Agent>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(agent).transpose()
    }

    /// Creates agents, all or none: one that exists is `Exists` unless
    /// `skip_existing` (an import run again). `action` names the change in
    /// the history (`create`, `import`).
    pub async fn create_agents(
        &self,
        author: &Author,
        new: Vec<NewAgent>,
        skip_existing: bool,
        action: &str,
        validate: Validate<'_>,
    ) -> Result<Created> {
        let (mut tx, revision) = self.begin().await?;
        let mut all = list(&mut tx).await?;
        let now = Utc::now();
        let mut created = Vec::new();
        let mut skipped = Vec::new();
        for spec in new {
            if all.iter().any(|a| a.id == spec.id) {
                if skip_existing {
                    skipped.push(spec.id);
                    continue;
                }
                return Err(StoreError::Exists {
                    what: "agent",
                    id: spec.id,
                });
            }
            let agent = Agent {
                id: spec.id,
                team: spec.team,
                project: spec.project,
                environment: spec.environment,
                role: spec.role,
                key_sha256: spec.key_sha256,
                previous_key_sha256: None,
                previous_key_until: None,
                disabled: spec.disabled,
                sources: spec.sources,
                spiffe_ids: spec.spiffe_ids,
                version: 1,
                created_at: now,
                updated_at: now,
                updated_by: author.name.clone(),
            };
            all.push(agent.clone());
            created.push(agent);
        }
        validate(&all).map_err(StoreError::Invalid)?;
        for agent in &created {
            insert(&mut tx, agent).await?;
        }
        // One history row per agent: each agent's history reads on its own.
        for agent in &created {
            record(
                &mut tx,
                Change {
                    revision,
                    author,
                    action,
                    kind: Kind::Agents,
                    target: &agent.id,
                    team: Some(&agent.team),
                    detail: serde_json::json!({"agent": agent.view()}),
                },
            )
            .await?;
        }
        if created.is_empty() {
            // Nothing changed: the revision bump is not kept.
            tx.rollback().await?;
            return Ok(Created {
                agents: created,
                skipped,
                revision: 0,
            });
        }
        tx.commit().await?;
        Ok(Created {
            agents: created,
            skipped,
            revision,
        })
    }

    /// Changes agent `id`, which must be at `expected`: `change` edits it and
    /// returns what the history row says about the change. A rotated key
    /// whose grace period is over is dropped on the way.
    pub async fn update_agent(
        &self,
        author: &Author,
        id: &str,
        expected: i64,
        action: &str,
        change: impl FnOnce(&mut Agent) -> Result<serde_json::Value>,
        validate: Validate<'_>,
    ) -> Result<(Agent, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let mut all = list(&mut tx).await?;
        let index = all.iter().position(|a| a.id == id);
        let mut agent = check_version(index.map(|i| &all[i]), id, expected)?;
        let before_team = agent.team.clone();
        let detail = change(&mut agent)?;
        let now = Utc::now();
        if agent.previous_key_until.is_some_and(|until| until <= now) {
            agent.previous_key_sha256 = None;
            agent.previous_key_until = None;
        }
        agent.id = id.to_string();
        agent.version = expected + 1;
        agent.updated_at = now;
        agent.updated_by = author.name.clone();
        if let Some(i) = index {
            all[i] = agent.clone();
        }
        validate(&all).map_err(StoreError::Invalid)?;
        let updated = sqlx::query(
            "UPDATE agents SET team = $1, project = $2, environment = $3, role = $4, key_sha256 = $5, \
             previous_key_sha256 = $6, previous_key_until = $7, disabled = $8, sources = $9, spiffe_ids = $10, \
             version = $11, updated_at = $12, updated_by = $13 WHERE id = $14 AND version = $15",
        )
        .bind(agent.team.as_str())
        .bind(agent.project.as_str())
        .bind(agent.environment.as_str())
        .bind(agent.role.as_str())
        .bind(agent.key_sha256.as_deref())
        .bind(agent.previous_key_sha256.as_deref())
        .bind(agent.previous_key_until.map(millis))
        .bind(i64::from(agent.disabled))
        .bind(json_list(&agent.sources))
        .bind(json_list(&agent.spiffe_ids))
        .bind(agent.version)
        .bind(millis(agent.updated_at))
        .bind(agent.updated_by.as_str())
        .bind(id)
        .bind(expected)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Unreachable while writers are serialized; never half-applied.
            return Err(StoreError::Database(format!(
                "agent '{id}' changed under the write lock"
            )));
        }
        let mut detail = detail;
        if before_team != agent.team {
            detail["team_before"] = serde_json::Value::String(before_team);
        }
        record(
            &mut tx,
            Change {
                revision,
                author,
                action,
                kind: Kind::Agents,
                target: id,
                team: Some(&agent.team),
                detail,
            },
        )
        .await?;
        tx.commit().await?;
        Ok((agent, revision))
    }

    /// Removes agent `id`, which must be at `expected`.
    pub async fn delete_agent(&self, author: &Author, id: &str, expected: i64) -> Result<(Agent, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let current = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let current = current.as_ref().map(agent).transpose()?;
        let agent = check_version(current.as_ref(), id, expected)?;
        sqlx::query("DELETE FROM agents WHERE id = $1 AND version = $2")
            .bind(id)
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            Change {
                revision,
                author,
                action: "delete",
                kind: Kind::Agents,
                target: id,
                team: Some(&agent.team),
                detail: serde_json::json!({"agent": agent.view()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((agent, revision))
    }
}
