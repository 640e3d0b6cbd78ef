//! `/v1/policies`: policy versions with history. An upload is validated
//! exactly like `clawgress policy check` (refused at `file:line:column`),
//! and, when the gateway takes signed bundles only (`--policy-key`), its
//! signature too; it is then built as this gateway would run it (GeoIP
//! databases, the interception CA). Uploading does not change what is in
//! force: activation does, and rollback goes back to the version active
//! before.

use clawgress_control::Kind;
use clawgress_control::policies::{Activate, Upload};
use clawgress_policies::{PolicyBundle, PolicyError};
use http::StatusCode;
use serde::Deserialize;

use super::super::auth::Role;
use super::super::problem::Problem;
use super::super::tenancy;
use super::{Answer, Call, committed, parse, query_value, store_problem};
use crate::state::PolicySnapshot;

/// Largest policy text kept: well under NATS's default 1 MiB message,
/// which carries the active version to every replica.
pub const MAX_POLICY_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    List,
    Upload,
    Get(String),
    Diff,
    Activate(String),
    Rollback,
}

impl Route {
    pub fn parse(method: &str, rest: &[&str]) -> Option<Route> {
        Some(match (method, rest) {
            ("GET", []) => Route::List,
            ("POST", []) => Route::Upload,
            ("GET", ["diff"]) => Route::Diff,
            ("POST", ["rollback"]) => Route::Rollback,
            ("GET", [id]) => Route::Get(id.to_string()),
            ("POST", [id, "activate"]) => Route::Activate(id.to_string()),
            _ => return None,
        })
    }

    pub fn role(&self) -> Role {
        match self {
            Route::List | Route::Get(_) | Route::Diff => Role::Viewer,
            Route::Upload => Role::Operator,
            Route::Activate(_) | Route::Rollback => Role::Maintainer,
        }
    }

    pub fn action(&self) -> Option<&'static str> {
        match self {
            Route::List | Route::Get(_) | Route::Diff => None,
            Route::Upload => Some("policy_upload"),
            Route::Activate(_) => Some("policy_activate"),
            Route::Rollback => Some("policy_rollback"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadBody {
    /// The file name: errors name it (`policy.yaml:12:7: ...`).
    name: String,
    /// The policy text, as `clawgress policy check` reads a file.
    body: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    #[serde(default)]
    version: Option<i64>,
}

/// A policy as this gateway would run it: text, signature, then the
/// snapshot build (GeoIP databases, the interception CA).
fn validate(call: &Call<'_>, text: &str, origin: &str) -> Result<(PolicyBundle, Option<String>), Problem> {
    let keys = call.gateway.policy_trust.keys.as_deref();
    let (bundle, signed_by) = crate::store::apply::policy_bundle(text, origin, &call.gateway.store.policy_dir, keys)
        .map_err(|error| invalid_policy(&error))?;
    if call.gateway.tls.ca.is_none()
        && let Some(rule) = crate::state::first_intercept_rule(&bundle.document)
    {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            format!(
                "{origin}:{}: the rule for {} says tls: intercept, but the gateway has no interception CA",
                rule.domain.line, rule.domain.value
            ),
        )
        .hint("create one with `clawgress ca init` and start the gateway with --ca-dir"));
    }
    PolicySnapshot::build(&bundle, None)
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy", format!("{e:#}")))?;
    Ok((bundle, signed_by))
}

fn invalid_policy(error: &PolicyError) -> Problem {
    let (code, hint) = match error {
        PolicyError::Unsigned { .. } => (
            "unsigned_policy",
            "this gateway takes signed bundles only (--policy-key): sign with `clawgress policy sign --key KEY FILE`",
        ),
        _ => (
            "invalid_policy",
            "fix the file and upload again; `clawgress policy check FILE` shows the same",
        ),
    };
    let errors: Vec<_> = error
        .diagnostics()
        .iter()
        .map(|d| serde_json::json!({"line": d.line, "column": d.column, "message": d.message, "hint": d.hint}))
        .collect();
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string())
        .hint(hint)
        .with("errors", errors.into())
}

/// A version named by its number or its digest.
async fn version_id(call: &Call<'_>, text: &str) -> Result<i64, Problem> {
    if let Ok(id) = text.parse::<i64>() {
        return Ok(id);
    }
    call.db()?
        .policy_by_digest(text)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| {
            Problem::new(StatusCode::NOT_FOUND, "not_found", format!("no policy version {text}"))
                .hint("name a version by its number or digest (`clawgress control policy history`)")
        })
}

async fn text_of(call: &Call<'_>, id: i64) -> Result<(clawgress_control::PolicyVersion, String), Problem> {
    call.db()?.policy(id).await.map_err(store_problem)?.ok_or_else(|| {
        Problem::new(StatusCode::NOT_FOUND, "not_found", format!("no policy version {id}"))
            .hint("list them with `clawgress control policy history`")
    })
}

pub(super) async fn handle(route: &Route, call: &mut Call<'_>) -> Answer {
    match route {
        Route::List => list(call).await,
        Route::Get(id) => {
            let id = version_id(call, id).await?;
            let (version, body) = text_of(call, id).await?;
            let mut answer = serde_json::to_value(&version).unwrap_or_default();
            answer["body"] = body.into();
            Ok((StatusCode::OK, answer))
        }
        Route::Diff => diff(call).await,
        Route::Upload => upload(call).await,
        Route::Activate(id) => {
            let id = version_id(call, id).await?;
            activate(call, Activate::Version(id)).await
        }
        Route::Rollback => activate(call, Activate::Rollback).await,
    }
}

async fn list(call: &Call<'_>) -> Answer {
    let db = call.db()?;
    let state = db.policy_state().await.map_err(store_problem)?;
    let versions = db.policy_versions().await.map_err(store_problem)?;
    let activations = db.activations(50).await.map_err(store_problem)?;
    let in_force = call.gateway.policy.load().version.to_string();
    Ok((
        StatusCode::OK,
        serde_json::json!({
            "active_id": state.active_id,
            "version": state.version,
            "in_force_here": in_force,
            "from": if call.gateway.store.policy_from_store() { "store" } else { "file" },
            "versions": versions,
            "activations": activations,
        }),
    ))
}

async fn diff(call: &Call<'_>) -> Answer {
    let state = call.db()?.policy_state().await.map_err(store_problem)?;
    let named = |name: &str| query_value(call.query, name);
    let to = match named("to") {
        Some(text) => version_id(call, &text).await?,
        None => state
            .active_id
            .ok_or_else(|| Problem::bad("no version is active, so `to` must be named", "e.g. ?from=1&to=2"))?,
    };
    let from = match named("from") {
        Some(text) => version_id(call, &text).await?,
        None => state
            .active_id
            .ok_or_else(|| Problem::bad("no version is active, so `from` must be named", "e.g. ?from=1&to=2"))?,
    };
    let (a, a_text) = text_of(call, from).await?;
    let (b, b_text) = text_of(call, to).await?;
    let a_name = format!("v{} {} ({})", a.id, a.name, a.digest);
    let b_name = format!("v{} {} ({})", b.id, b.name, b.digest);
    let unified = clawgress_control::diff::unified(&a_name, &a_text, &b_name, &b_text);
    // Both were valid when uploaded; one past an expiry date still parses.
    let changes = match (
        clawgress_policies::load_str(&a_text, &a.name),
        clawgress_policies::load_str(&b_text, &b.name),
    ) {
        (Ok(a), Ok(b)) => Some(clawgress_control::diff::allowlist_changes(&a.document, &b.document)),
        _ => None,
    };
    Ok((
        StatusCode::OK,
        serde_json::json!({
            "from": a,
            "to": b,
            "unified": unified,
            "allowlist": changes,
            "summary": changes.as_ref().map(|c| c.summary()),
        }),
    ))
}

async fn upload(call: &mut Call<'_>) -> Answer {
    tenancy::check_global(call.actor, "the policy")?;
    let body: UploadBody = parse(
        call.body,
        r#"{"name": "policy.yaml", "body": "egress: ...", "comment": "open api.example.com"}"#,
    )?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(Problem::bad(
            "`name` must be a file name (no directories), 1 to 200 characters",
            "e.g. \"name\": \"policy.yaml\"",
        ));
    }
    call.details.insert("name".to_string(), name.to_string());
    if body.body.len() > MAX_POLICY_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "policy_too_large",
            format!(
                "{name} is {} bytes; the store keeps policies up to {MAX_POLICY_BYTES} bytes",
                body.body.len()
            ),
        )
        .hint("every replica receives the active version over NATS; split generated content out"));
    }
    let (bundle, signed_by) = validate(call, &body.body, name)?;
    let comment: String = body.comment.unwrap_or_default().chars().take(500).collect();
    let (version, _) = call
        .db()?
        .upload_policy(
            &call.author(),
            Upload {
                name,
                comment: &comment,
                body: &body.body,
                digest: &bundle.version,
                signed_by: signed_by.as_deref(),
            },
        )
        .await
        .map_err(store_problem)?;
    call.details.insert("policy_id".to_string(), version.id.to_string());
    call.details.insert("digest".to_string(), version.digest.clone());
    let warnings: Vec<String> = bundle.warnings.iter().map(ToString::to_string).collect();
    let mut answer = serde_json::to_value(&version).unwrap_or_default();
    answer["warnings"] = warnings.into();
    answer["note"] = format!(
        "uploaded, not active: activate with `clawgress control policy activate {}`",
        version.id
    )
    .into();
    Ok((StatusCode::CREATED, answer))
}

async fn activate(call: &mut Call<'_>, which: Activate) -> Answer {
    tenancy::check_global(call.actor, "the policy")?;
    let body: ActivateBody = parse(call.body, r#"{"version": 4}"#)?;
    let expected = call.version(body.version)?;
    // The chosen text is checked again as it would run now (an expiry may
    // have passed, the keys or the CA may have changed).
    let mut refused = None;
    let checked = |version: &clawgress_control::PolicyVersion, text: &str| {
        validate(call, text, &version.name).map(|_| ()).map_err(|problem| {
            let message = format!("version {} no longer loads here", version.id);
            refused = Some(problem);
            message
        })
    };
    let result = call
        .db()?
        .activate_policy(&call.author(), which, expected, checked)
        .await;
    let (state, version, revision) = match (result, refused) {
        (Ok(done), _) => done,
        (Err(_), Some(problem)) => return Err(problem),
        (Err(error), None) => return Err(store_problem(error)),
    };
    call.details.insert("policy_id".to_string(), version.id.to_string());
    call.details.insert("digest".to_string(), version.digest.clone());
    let propagation = crate::store::after_commit(call.gateway, Kind::Policy, revision).await;
    Ok(committed(
        StatusCode::OK,
        serde_json::json!({"active_id": state.active_id, "version": state.version, "policy": version}),
        propagation,
        call.details,
    ))
}
