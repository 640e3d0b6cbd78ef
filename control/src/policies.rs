//! Policy versions: uploaded texts (validated by the caller exactly like
//! `clawgress policy check`), kept forever with who uploaded them; one is
//! active at a time. Activation and rollback name the state version they
//! change, so two maintainers cannot silently undo each other.

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::history::{Change, record};
use crate::model::{Activation, Author, Kind, PolicyState, PolicyVersion};
use crate::{Result, Store, StoreError, from_millis, millis};

const COLUMNS: &str = "id, digest, name, comment, signed_by, created_at, created_by";

fn version(row: &AnyRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        id: row.try_get("id")?,
        digest: row.try_get("digest")?,
        name: row.try_get("name")?,
        comment: row.try_get("comment")?,
        signed_by: row.try_get("signed_by")?,
        created_at: from_millis(row.try_get("created_at")?),
        created_by: row.try_get("created_by")?,
    })
}

pub(crate) async fn state(conn: &mut AnyConnection) -> Result<PolicyState> {
    let row = sqlx::query("SELECT active_id, version FROM policy_state WHERE name = 'active'")
        .fetch_one(conn)
        .await?;
    Ok(PolicyState {
        active_id: row.try_get("active_id")?,
        version: row.try_get("version")?,
    })
}

pub(crate) async fn get(conn: &mut AnyConnection, id: i64) -> Result<Option<(PolicyVersion, String)>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS}, body FROM policy_versions WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => Ok(Some((version(&row)?, row.try_get("body")?))),
        None => Ok(None),
    }
}

/// A text to keep as a new version: already validated by the caller.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub name: &'a str,
    pub comment: &'a str,
    pub body: &'a str,
    /// The bundle's version (12 hex digits of the SHA-256 of `body`).
    pub digest: &'a str,
    pub signed_by: Option<&'a str>,
}

/// Whether an activation is a plain one or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activate {
    /// This version.
    Version(i64),
    /// The version active before the current one.
    Rollback,
}

impl Store {
    /// Every version, newest first, without texts.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersion>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM policy_versions ORDER BY id DESC"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(version).collect()
    }

    /// A version and its text.
    pub async fn policy(&self, id: i64) -> Result<Option<(PolicyVersion, String)>> {
        let mut conn = self.pool().acquire().await?;
        get(&mut conn, id).await
    }

    /// The id of the version whose digest is `digest`.
    pub async fn policy_by_digest(&self, digest: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM policy_versions WHERE digest = $1")
            .bind(digest)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn policy_state(&self) -> Result<PolicyState> {
        let mut conn = self.pool().acquire().await?;
        state(&mut conn).await
    }

    /// The last `limit` activations and rollbacks, newest first.
    pub async fn activations(&self, limit: i64) -> Result<Vec<Activation>> {
        let rows = sqlx::query(&format!(
            "SELECT revision, policy_id, action, at, actor FROM policy_activations ORDER BY revision DESC LIMIT {}",
            limit.clamp(1, 1000)
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Activation {
                    revision: row.try_get("revision")?,
                    policy_id: row.try_get("policy_id")?,
                    action: row.try_get("action")?,
                    at: from_millis(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                })
            })
            .collect()
    }

    /// Keeps a new version (not active yet). The same text twice is
    /// `Exists` naming the version that has it.
    pub async fn upload_policy(&self, author: &Author, upload: Upload<'_>) -> Result<(PolicyVersion, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let existing = sqlx::query("SELECT id FROM policy_versions WHERE digest = $1")
            .bind(upload.digest)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            let id: i64 = row.try_get(0)?;
            return Err(StoreError::Conflict(format!(
                "this text is already kept as version {id} (digest {}); activate that one",
                upload.digest
            )));
        }
        let next = sqlx::query("SELECT MAX(id) FROM policy_versions")
            .fetch_one(&mut *tx)
            .await?
            .try_get::<Option<i64>, _>(0)?
            .unwrap_or(0)
            + 1;
        let version = PolicyVersion {
            id: next,
            digest: upload.digest.to_string(),
            name: upload.name.to_string(),
            comment: upload.comment.to_string(),
            signed_by: upload.signed_by.map(str::to_string),
            created_at: Utc::now(),
            created_by: author.name.clone(),
        };
        sqlx::query(&format!(
            "INSERT INTO policy_versions ({COLUMNS}, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(version.id)
        .bind(version.digest.as_str())
        .bind(version.name.as_str())
        .bind(version.comment.as_str())
        .bind(version.signed_by.as_deref())
        .bind(millis(version.created_at))
        .bind(version.created_by.as_str())
        .bind(upload.body)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            Change {
                revision,
                author,
                action: "upload",
                kind: Kind::Policy,
                target: &version.id.to_string(),
                team: None,
                detail: serde_json::json!({
                    "digest": version.digest,
                    "name": version.name,
                    "comment": version.comment,
                    "signed_by": version.signed_by,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((version, revision))
    }

    /// Makes a version the active one, if the state is still at `expected`.
    /// A rollback goes to the version that was active before the current
    /// one (run twice, it goes forward again). `check` sees the chosen
    /// version's text before anything is written (the caller re-validates
    /// it: a version kept under other rules, or now past an expiry, is
    /// refused).
    pub async fn activate_policy(
        &self,
        author: &Author,
        which: Activate,
        expected: i64,
        check: impl FnOnce(&PolicyVersion, &str) -> Result<(), String>,
    ) -> Result<(PolicyState, PolicyVersion, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let current = state(&mut tx).await?;
        if current.version != expected {
            return Err(StoreError::Stale {
                what: "the active policy",
                id: current
                    .active_id
                    .map_or("none".to_string(), |id| format!("version {id}")),
                expected,
                current: current.version,
            });
        }
        let target = match which {
            Activate::Version(id) => id,
            Activate::Rollback => {
                let active = current.active_id.ok_or_else(|| {
                    StoreError::Conflict("no policy version is active, so there is nothing to roll back".to_string())
                })?;
                let row = sqlx::query(
                    "SELECT policy_id FROM policy_activations WHERE policy_id <> $1 ORDER BY revision DESC LIMIT 1",
                )
                .bind(active)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) => row.try_get(0)?,
                    None => {
                        return Err(StoreError::Conflict(format!(
                            "version {active} is the only one ever activated: there is nothing to roll back to"
                        )));
                    }
                }
            }
        };
        let (version, body) = get(&mut tx, target).await?.ok_or_else(|| StoreError::NotFound {
            what: "policy version",
            id: target.to_string(),
        })?;
        if current.active_id == Some(target) {
            return Err(StoreError::Conflict(format!("version {target} is already active")));
        }
        check(&version, &body).map_err(StoreError::Invalid)?;
        let next = PolicyState {
            active_id: Some(target),
            version: expected + 1,
        };
        sqlx::query("UPDATE policy_state SET active_id = $1, version = $2 WHERE name = 'active' AND version = $3")
            .bind(target)
            .bind(next.version)
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        let action = match which {
            Activate::Version(_) => "activate",
            Activate::Rollback => "rollback",
        };
        sqlx::query(
            "INSERT INTO policy_activations (revision, policy_id, action, at, actor) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(revision)
        .bind(target)
        .bind(action)
        .bind(millis(Utc::now()))
        .bind(author.name.as_str())
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            Change {
                revision,
                author,
                action,
                kind: Kind::Policy,
                target: &target.to_string(),
                team: None,
                detail: serde_json::json!({
                    "digest": version.digest,
                    "previous": current.active_id,
                    "state_version": next.version,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((next, version, revision))
    }
}
