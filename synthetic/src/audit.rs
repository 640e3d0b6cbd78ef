//! Reading the gateway's audit trail back through its control API (a
//! viewer token): the evidence that a request was, or was not, let out.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Run;
use crate::report::Outcome;

/// The audit line of one request, read back through the control API.
pub async fn line(
    env: &Run<'_>,
    request_id: &str,
    since: chrono::DateTime<chrono::Utc>,
    timeout: Duration,
) -> Result<Value, Outcome> {
    let token_env = &env.checks.gateway.admin_token_env;
    let Some(token) = std::env::var(token_env).ok().filter(|t| !t.is_empty()) else {
        return Err(Outcome::Error(format!(
            "{token_env} is not set: the audit trail is read with a control-API token (role viewer)"
        )));
    };
    let mut url = url::Url::parse(&format!("{}/v1/audit", env.checks.gateway.admin.trim_end_matches('/')))
        .map_err(|e| Outcome::Error(format!("gateway.admin: {e}")))?;
    url.query_pairs_mut()
        .append_pair("from", &since.to_rfc3339())
        .append_pair("limit", "100000");
    let deadline = Instant::now() + timeout;
    loop {
        let response = env
            .direct
            .get(url.clone())
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| Outcome::Error(format!("cannot read the audit trail at {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Outcome::Error(format!(
                "the control API refused {token_env} ({status}): it needs a token with the viewer role"
            )));
        }
        if !status.is_success() {
            return Err(Outcome::Error(format!("the audit export answered {status}")));
        }
        let text = response
            .text()
            .await
            .map_err(|e| Outcome::Error(format!("cannot read the audit export: {e}")))?;
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["request_id"].as_str() == Some(request_id));
        if let Some(line) = found {
            return Ok(line);
        }
        if Instant::now() >= deadline {
            return Err(Outcome::Failed(format!(
                "no audit line for request {request_id} after {} s: the denial was not recorded",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
