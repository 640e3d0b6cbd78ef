//! `/v1/tokens` (maintainer): control API tokens kept in the store, besides
//! the `--admin-tokens` file. A token is made here and shown once; the
//! store keeps its SHA-256. It may be bound to teams.

use http::StatusCode;
use serde::Deserialize;

use super::super::auth::Role;
use super::super::problem::Problem;
use super::super::tenancy;
use super::{Answer, Call, committed, parse, store_problem};

/// Prefix of the tokens made here.
const TOKEN_PREFIX: &str = "cgt_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    List,
    Create,
    Revoke(String),
}

impl Route {
    pub fn parse(method: &str, rest: &[&str]) -> Option<Route> {
        Some(match (method, rest) {
            ("GET", []) => Route::List,
            ("POST", []) => Route::Create,
            ("DELETE", [name]) => Route::Revoke(name.to_string()),
            _ => return None,
        })
    }

    pub fn action(&self) -> Option<&'static str> {
        match self {
            Route::List => None,
            Route::Create => Some("token_create"),
            Route::Revoke(_) => Some("token_revoke"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Who holds it: every audit line and history row names it.
    name: String,
    role: Role,
    /// Bind it to these teams; absent: every team.
    #[serde(default)]
    teams: Vec<String>,
}

pub(super) async fn handle(route: &Route, call: &mut Call<'_>) -> Answer {
    // Tokens decide who may do anything: only an unbound maintainer makes them.
    tenancy::check_global(call.actor, "control API tokens")?;
    match route {
        Route::List => {
            let tokens: Vec<_> = call
                .db()?
                .tokens()
                .await
                .map_err(store_problem)?
                .iter()
                .map(clawgress_control::Token::view)
                .collect();
            Ok((StatusCode::OK, serde_json::json!({ "tokens": tokens })))
        }
        Route::Create => {
            let body: CreateBody = parse(
                call.body,
                r#"{"name": "dana-data-ops", "role": "operator", "teams": ["data"]}"#,
            )?;
            let name = body.name.trim().to_string();
            if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control() || c == '/') {
                return Err(Problem::bad(
                    "`name` must be 1 to 100 characters without '/' or control characters",
                    "name the person or service that holds it, e.g. \"dana-data-ops\"",
                ));
            }
            if body.teams.iter().any(|t| t.trim().is_empty() || t.trim() != t) {
                return Err(Problem::bad(
                    "a team in `teams` is empty or has surrounding spaces",
                    "e.g. \"teams\": [\"data\"]",
                ));
            }
            if call.gateway.admin_tokens.file_names(&name) {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "already_exists",
                    format!("the admin tokens file already has an actor '{name}'"),
                )
                .hint("give the store token another name: audit lines must tell the two apart"));
            }
            call.details.insert("name".to_string(), name.clone());
            call.details.insert("role".to_string(), body.role.as_str().to_string());
            call.details.insert("teams".to_string(), body.teams.join(","));
            let (secret, digest) = clawgress_control::new_secret(TOKEN_PREFIX);
            let (token, revision) = call
                .db()?
                .create_token(&call.author(), &name, body.role.as_str(), &body.teams, &digest)
                .await
                .map_err(store_problem)?;
            let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Tokens, revision).await;
            let answer = serde_json::json!({
                "token": token.view(),
                "secret": secret,
                "note": "the token is shown once; only its SHA-256 is kept",
            });
            Ok(committed(StatusCode::CREATED, answer, propagation, call.details))
        }
        Route::Revoke(name) => {
            let version = call.version(None)?;
            call.details.insert("name".to_string(), name.clone());
            let (token, revision) = call
                .db()?
                .delete_token(&call.author(), name, version)
                .await
                .map_err(store_problem)?;
            let propagation = crate::store::after_commit(call.gateway, clawgress_control::Kind::Tokens, revision).await;
            Ok(committed(
                StatusCode::OK,
                serde_json::json!({"revoked": token.view()}),
                propagation,
                call.details,
            ))
        }
    }
}
