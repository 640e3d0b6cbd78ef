//! What the pipeline answers on `results.<type>.<job_id>`, and what it
//! keeps on `dlq.<type>`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clawgress_workers::job::JobKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Fetched and extracted.
    Ok,
    /// The gateway's policy refused it; never retried.
    Denied,
    /// Failed after its attempts (also copied to the DLQ).
    Failed,
    /// The job itself is wrong; never retried.
    Invalid,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Ok => "ok",
            ResultStatus::Denied => "denied",
            ResultStatus::Failed => "failed",
            ResultStatus::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub version: u32,
    pub job_id: String,
    #[serde(rename = "type")]
    pub kind: JobKind,
    pub status: ResultStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub attempts: u32,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchSummary>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
    /// Base64 PNG, when the job asked for one (browsers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ResultError>,
}

impl JobResult {
    /// A result finished now, timed from `started`, with nothing fetched or
    /// found yet.
    pub fn finished(
        job_id: &str,
        kind: JobKind,
        status: ResultStatus,
        attempts: u32,
        started: std::time::Instant,
    ) -> JobResult {
        JobResult {
            version: 1,
            job_id: job_id.to_string(),
            kind,
            status,
            agent: None,
            attempts,
            finished_at: Utc::now(),
            duration_ms: started.elapsed().as_millis() as u64,
            fetch: None,
            data: BTreeMap::new(),
            screenshot: None,
            error: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchSummary {
    /// `http`, `chromium` or `steel`: the tier that produced the page.
    pub tier: String,
    pub status: u16,
    pub final_url: String,
    pub hops: Vec<String>,
    /// The gateway's request id of the last hop: find it in the audit trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    /// A stable code: `denied`, `rate_limited`, `timeout`, `validation`, ...
    pub code: String,
    pub message: String,
    /// For validation errors: the field, and what to write instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For denials: the gateway's reason code and policy id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
}

/// A job that ran out of attempts (or cannot succeed), kept for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: String,
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// The job exactly as published.
    pub job: Value,
    pub attempts: u32,
    pub last_error: ResultError,
    pub failed_at: DateTime<Utc>,
}
