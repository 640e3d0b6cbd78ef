//! Illegal Destination: with the scraper's identity, ask the gateway for an
//! unlisted domain and an unlisted IP that both lead to the runner's own
//! listener. Passes only if the gateway refuses, the audit trail has an
//! `egress_denied` line with `alert: true` for each request, and the
//! listener saw no connection at all.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Run;
use crate::config::IllegalCheck;
use crate::fixtures::Tripwire;
use crate::report::{Case, Outcome};

const CHECK: &str = "illegal_destination";
/// Time for a connection that got through to reach the listener before it
/// is counted.
const GRACE: Duration = Duration::from_millis(500);

pub async fn run(env: &Run<'_>, check: &IllegalCheck) -> Vec<Case> {
    let started = Instant::now();
    let tripwire = match Tripwire::bind(check.listen).await {
        Ok(tripwire) => tripwire,
        Err(error) => {
            return check
                .urls
                .iter()
                .map(|url| Case {
                    check: CHECK,
                    name: url.value.clone(),
                    duration: started.elapsed(),
                    outcome: Outcome::Error(format!(
                        "cannot listen on {} for the illegal destination: {error}; pick a free illegal_destination.listen",
                        check.listen
                    )),
                    details: Vec::new(),
                })
                .collect();
        }
    };
    // The audit query starts a minute before the requests: the runner's
    // and the gateway's clocks may differ (lines are matched by request id).
    let since = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut cases = Vec::new();
    for url in &check.urls {
        cases.push(one(env, check, &url.value, since).await);
    }
    tokio::time::sleep(GRACE).await;
    let connections = tripwire.connections();
    for case in &mut cases {
        case.details.push(format!(
            "the runner's listener on {} saw {connections} connection(s)",
            tripwire.addr
        ));
        if connections > 0 && !matches!(case.outcome, Outcome::Error(_)) {
            case.outcome = Outcome::Failed(format!(
                "traffic reached the illegal destination: {connections} connection(s) from {:?}",
                tripwire.peers()
            ));
        }
    }
    cases
}

async fn one(env: &Run<'_>, check: &IllegalCheck, url: &str, since: chrono::DateTime<chrono::Utc>) -> Case {
    let started = Instant::now();
    let mut details = Vec::new();
    let outcome = attempt(env, check, url, since, &mut details).await;
    Case {
        check: CHECK,
        name: url.to_string(),
        duration: started.elapsed(),
        outcome,
        details,
    }
}

async fn attempt(
    env: &Run<'_>,
    check: &IllegalCheck,
    url: &str,
    since: chrono::DateTime<chrono::Utc>,
    details: &mut Vec<String>,
) -> Outcome {
    let response = match env.proxied.get(url).timeout(Duration::from_secs(15)).send().await {
        Ok(response) => response,
        Err(error) if error.is_connect() => {
            return Outcome::Error(format!(
                "cannot reach the gateway at {}: {error}",
                env.checks.gateway.proxy
            ));
        }
        Err(error) => return Outcome::Failed(format!("no answer from the gateway: {error}")),
    };
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let reason = body["reason"].as_str().unwrap_or("-").to_string();
    details.push(format!(
        "gateway answered {} reason {reason}, request {}",
        status.as_u16(),
        request_id.as_deref().unwrap_or("-")
    ));
    if status == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return Outcome::Error(format!(
            "the gateway did not accept agent {}'s key (407); check agent.key_env",
            env.checks.agent.id
        ));
    }
    if status != reqwest::StatusCode::FORBIDDEN {
        return Outcome::Failed(format!("the gateway did not refuse: it answered {status}"));
    }
    let Some(request_id) = request_id else {
        return Outcome::Failed("the refusal carries no X-Request-Id to find in the audit trail".into());
    };
    match crate::audit::line(env, &request_id, since, check.audit_timeout).await {
        Ok(line) => {
            let kind = line["type"].as_str().unwrap_or("-");
            let alert = line["alert"].as_bool().unwrap_or(false);
            details.push(format!(
                "audit: type {kind}, alert {alert}, reason {}",
                line["reason"].as_str().unwrap_or("-")
            ));
            if kind == "egress_denied" && alert {
                Outcome::Passed
            } else {
                Outcome::Failed(format!(
                    "the audit line for {request_id} says type {kind}, alert {alert}; expected egress_denied with alert true"
                ))
            }
        }
        Err(outcome) => outcome,
    }
}
