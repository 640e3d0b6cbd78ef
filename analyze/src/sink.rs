//! Where anomalies go: a JSON line each on the output, a message on
//! `alerts.<severity>` (kept in the stream `ALERTS` for the dashboard and
//! whoever is on call), and, for `quarantine` and `rate_reduction`, a
//! change through a gateway's control API, which writes it to the control
//! store every replica follows and audits it as an `admin_action`.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use async_nats::jetstream;
use clawgress_policies::model::AlertAction;

use crate::anomaly::{Anomaly, Enforcement};

/// The stream that keeps published anomalies.
pub const ALERTS_STREAM: &str = "ALERTS";
/// Their subjects: `alerts.<info|warning|medium|high|critical>`.
pub const ALERTS_SUBJECTS: &str = "alerts.>";
/// How long an action may take before it is reported failed.
const ACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway's control API, with a token that has the operator role.
#[derive(Debug, Clone)]
pub struct ControlApi {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl ControlApi {
    pub fn new(base: &str, token: String) -> ControlApi {
        ControlApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(ACTION_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Holds the anomaly's agent; the answer's outcome for the record.
    async fn hold(&self, anomaly: &Anomaly, per_minute: u32) -> String {
        let mut body = serde_json::json!({
            "agent_id": anomaly.agent_id,
            "reason": format!("{} ({}): {}", anomaly.condition_name(), anomaly.severity.as_str(), anomaly.detail),
            "anomaly_id": anomaly.id,
            "request_id": anomaly.request_id,
        });
        if anomaly.action == AlertAction::RateReduction {
            body["mode"] = "rate_reduction".into();
            body["per_minute"] = per_minute.into();
        }
        let sent = self
            .http
            .post(format!("{}/v1/quarantine", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => "ok".to_string(),
            Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => "already".to_string(),
            Ok(response) => {
                let status = response.status();
                let problem: serde_json::Value = response.json().await.unwrap_or_default();
                format!(
                    "failed: {status} {}",
                    problem["detail"].as_str().unwrap_or("(no detail)")
                )
            }
            Err(error) => format!("failed: cannot reach {}: {error}", self.base),
        }
    }
}

/// Where anomalies are written.
pub struct Sink {
    out: Option<Box<dyn Write + Send>>,
    nats: Option<jetstream::Context>,
    control: Option<ControlApi>,
    rate_reduction_per_minute: u32,
    /// Agents this run already held: one request to the API per agent.
    held: HashSet<String>,
    published: u64,
}

impl Sink {
    pub fn new(
        out: Option<Box<dyn Write + Send>>,
        nats: Option<jetstream::Context>,
        control: Option<ControlApi>,
        rate_reduction_per_minute: u32,
    ) -> Sink {
        Sink {
            out,
            nats,
            control,
            rate_reduction_per_minute,
            held: HashSet::new(),
            published: 0,
        }
    }

    /// Creates the `ALERTS` stream if it is missing (an operator's own
    /// settings for it are left alone).
    pub async fn ensure_stream(js: &jetstream::Context) -> anyhow::Result<()> {
        if js.get_stream(ALERTS_STREAM).await.is_ok() {
            return Ok(());
        }
        js.create_stream(jetstream::stream::Config {
            name: ALERTS_STREAM.to_string(),
            description: Some("clawgress analyze: anomalies by severity".to_string()),
            subjects: vec![ALERTS_SUBJECTS.to_string()],
            max_age: Duration::from_secs(30 * 86_400),
            max_messages: 1_000_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the stream {ALERTS_STREAM} for {ALERTS_SUBJECTS}: {e}"))?;
        Ok(())
    }

    /// Takes the anomaly's action (if it changes the control store), then
    /// writes and publishes it.
    pub async fn emit(&mut self, mut anomaly: Anomaly) -> anyhow::Result<()> {
        if matches!(anomaly.action, AlertAction::Quarantine | AlertAction::RateReduction) {
            let outcome = match &self.control {
                None => "dry_run".to_string(),
                Some(_) if self.held.contains(&anomaly.agent_id) => "already".to_string(),
                Some(api) => {
                    let outcome = api.hold(&anomaly, self.rate_reduction_per_minute).await;
                    if outcome == "ok" || outcome == "already" {
                        self.held.insert(anomaly.agent_id.clone());
                    } else {
                        tracing::error!(agent = %anomaly.agent_id, "{} not applied: {outcome}", anomaly.action.as_str());
                    }
                    outcome
                }
            };
            anomaly.enforcement = Some(Enforcement {
                action: anomaly.action,
                outcome,
            });
        }
        let json = serde_json::to_vec(&anomaly)?;
        if let Some(out) = self.out.as_mut() {
            out.write_all(&json)?;
            out.write_all(b"\n")?;
        }
        if let Some(js) = &self.nats {
            // Published through JetStream so a full or missing stream is
            // an error here, not a silent loss.
            js.publish(anomaly.subject_name(), json.into())
                .await
                .map_err(|e| anyhow::anyhow!("cannot publish on {}: {e}", anomaly.subject_name()))?
                .await
                .map_err(|e| anyhow::anyhow!("the stream {ALERTS_STREAM} did not take an anomaly: {e}"))?;
            self.published += 1;
        }
        Ok(())
    }

    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }

    pub fn published(&self) -> u64 {
        self.published
    }
}

impl Anomaly {
    fn condition_name(&self) -> &'static str {
        use crate::anomaly::Condition;
        match self.condition {
            Condition::BlockedDomain => "request to blocked domain",
            Condition::RepeatedBlocked => "repeated blocked requests",
            Condition::CertificateError => "certificate error",
            Condition::RateLimitExceeded => "rate limit exceeded",
            Condition::UnusualTraffic => "unusual traffic pattern",
            Condition::DataExfiltration => "data exfiltration attempt",
        }
    }
}
