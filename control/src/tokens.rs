//! Control API tokens kept in the store, created by a maintainer (the token
//! is shown once; only its SHA-256 is kept), besides the `--admin-tokens`
//! file. Gateways take them from the `tokens` snapshot.

use chrono::Utc;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::history::{Change, record};
use crate::model::{Author, Kind, Token};
use crate::{Result, Store, StoreError, from_millis, json_list, millis, string_list};

const COLUMNS: &str = "name, role, teams, token_sha256, version, created_at, created_by";

fn token(row: &AnyRow) -> Result<Token> {
    Ok(Token {
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        teams: string_list(row, "teams")?,
        token_sha256: row.try_get("token_sha256")?,
        version: row.try_get("version")?,
        created_at: from_millis(row.try_get("created_at")?),
        created_by: row.try_get("created_by")?,
    })
}

pub(crate) async fn list(conn: &mut AnyConnection) -> Result<Vec<Token>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM admin_tokens ORDER BY name"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(token).collect()
}

impl Store {
    pub async fn tokens(&self) -> Result<Vec<Token>> {
        let mut conn = self.pool().acquire().await?;
        list(&mut conn).await
    }

    /// Keeps a new token; `Exists` when the name (or the digest) is taken.
    pub async fn create_token(
        &self,
        author: &Author,
        name: &str,
        role: &str,
        teams: &[String],
        token_sha256: &str,
    ) -> Result<(Token, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let exists = sqlx::query("SELECT name FROM admin_tokens WHERE name = $1 OR token_sha256 = $2")
            .bind(name)
            .bind(token_sha256)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Exists {
                what: "token",
                id: name.to_string(),
            });
        }
        let token = Token {
            name: name.to_string(),
            role: role.to_string(),
            teams: teams.to_vec(),
            token_sha256: token_sha256.to_string(),
            version: 1,
            created_at: Utc::now(),
            created_by: author.name.clone(),
        };
        sqlx::query(&format!(
            "INSERT INTO admin_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(token.name.as_str())
        .bind(token.role.as_str())
        .bind(json_list(&token.teams))
        .bind(token.token_sha256.as_str())
        .bind(token.version)
        .bind(millis(token.created_at))
        .bind(token.created_by.as_str())
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            Change {
                revision,
                author,
                action: "create",
                kind: Kind::Tokens,
                target: name,
                team: None,
                detail: serde_json::json!({"token": token.view()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((token, revision))
    }

    /// Revokes token `name`, which must be at `expected`.
    pub async fn delete_token(&self, author: &Author, name: &str, expected: i64) -> Result<(Token, i64)> {
        let (mut tx, revision) = self.begin().await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM admin_tokens WHERE name = $1"))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let current = row
            .as_ref()
            .map(token)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: name.to_string(),
            })?;
        if current.version != expected {
            return Err(StoreError::Stale {
                what: "token",
                id: name.to_string(),
                expected,
                current: current.version,
            });
        }
        sqlx::query("DELETE FROM admin_tokens WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            Change {
                revision,
                author,
                action: "revoke",
                kind: Kind::Tokens,
                target: name,
                team: None,
                detail: serde_json::json!({"token": current.view()}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((current, revision))
    }
}
