//! What a job's outcome leads to: a result, a Nak with a delay (the
//! gateway's `retry_after`, backoff, a busy host or Steel pool), or the
//! dead-letter queue; and storing results before acking.

use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Context, Message};
use clawgress_workers::JobError;
use clawgress_workers::job::{Job, JobKind};
use clawgress_workers::outcome::{Disposition, FetchError};

use super::fetch::Done;
use super::{MAX_GATEWAY_WAIT, Shared};
use crate::result::{DeadLetter, JobResult, ResultError, ResultStatus};
use crate::streams;

pub(super) async fn decide(
    shared: &Shared,
    message: &Message,
    job: &Job,
    outcome: Result<Done, FetchError>,
    delivered: u32,
    started: Instant,
) {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
    let attempts = real_attempts(shared, sequence, delivered);
    let mut result = JobResult::finished(job.id(), job.kind(), ResultStatus::Ok, attempts, started);
    result.agent = Some(job.agent().to_string());
    let error = match outcome {
        Ok(done) => {
            result.fetch = done.summary;
            result.data = done.data;
            result.screenshot = done.screenshot;
            finish(shared, message, &result, None).await;
            return;
        }
        Err(error) => error,
    };
    let described = describe(&error);
    match error.disposition() {
        Disposition::Deny => {
            result.status = ResultStatus::Denied;
            result.error = Some(described);
            finish(shared, message, &result, None).await;
        }
        // The gateway (or a busy Steel pool) said when: waiting is not a
        // failed attempt.
        Disposition::Retry { after: Some(delay) }
            if matches!(
                error,
                FetchError::RateLimited { .. }
                    | FetchError::BreakerOpen { .. }
                    | FetchError::SteelBusy
                    | FetchError::HostBusy
            ) && note_wait(shared, sequence) < MAX_GATEWAY_WAIT =>
        {
            tracing::info!(job = job.id(), ?delay, error = %error, "waiting, not failing");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Disposition::Retry { after } if attempts < job.retry().max_attempts => {
            let delay = after.unwrap_or_else(|| crate::retry::backoff(job.retry().base_delay, attempts));
            tracing::info!(job = job.id(), attempt = attempts, ?delay, error = %error, "retrying later");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Disposition::Retry { .. } | Disposition::Fail => {
            result.status = ResultStatus::Failed;
            result.error = Some(described.clone());
            let dead = DeadLetter {
                job_id: job.id().to_string(),
                kind: job.kind(),
                job: serde_json::from_slice(&message.payload).unwrap_or_default(),
                attempts,
                last_error: described,
                failed_at: chrono::Utc::now(),
            };
            finish(shared, message, &result, Some(dead)).await;
        }
    }
}

/// Deliveries minus the gateway-directed waits this scheduler saw.
pub(super) fn real_attempts(shared: &Shared, sequence: u64, delivered: u32) -> u32 {
    let waits = shared
        .waits
        .lock()
        .map(|w| w.get(&sequence).map_or(0, |(n, _)| *n))
        .unwrap_or(0);
    delivered.saturating_sub(waits).max(1)
}

/// Counts one more wait for this message; returns how long it has waited.
fn note_wait(shared: &Shared, sequence: u64) -> Duration {
    let Ok(mut waits) = shared.waits.lock() else {
        return Duration::ZERO;
    };
    if waits.len() > 100_000 {
        waits.retain(|_, (_, since)| since.elapsed() < MAX_GATEWAY_WAIT);
    }
    let entry = waits.entry(sequence).or_insert((0, Instant::now()));
    entry.0 += 1;
    entry.1.elapsed()
}

fn describe(error: &FetchError) -> ResultError {
    let (reason, policy_id) = match error {
        FetchError::Denied { reason, policy_id, .. } => (Some(reason.clone()), Some(policy_id.clone())),
        FetchError::Gateway { reason, .. } => (Some(reason.clone()), None),
        _ => (None, None),
    };
    ResultError {
        code: error.code().to_string(),
        message: error.to_string(),
        field: None,
        hint: None,
        reason,
        policy_id,
    }
}

pub(super) fn invalid(kind: JobKind, id: &str, error: &JobError, attempts: u32, started: Instant) -> JobResult {
    let mut result = JobResult::finished(id, kind, ResultStatus::Invalid, attempts, started);
    result.error = Some(ResultError {
        code: "validation".to_string(),
        message: format!("{}: {}", error.field, error.problem),
        field: Some(error.field.clone()),
        hint: Some(error.hint.clone()),
        reason: None,
        policy_id: None,
    });
    result
}

/// Stores the dead letter (if any) and the result, and only then acks; if
/// either cannot be stored, the job goes back to the stream.
pub(super) async fn finish(shared: &Shared, message: &Message, result: &JobResult, dead: Option<DeadLetter>) {
    // Ids per delivery of this stream message: a redelivery after a lost
    // ack republishes without duplicating, and a replayed job (a new stream
    // message) is never mistaken for the old one.
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
    if let Some(dead) = dead {
        let subject = streams::dlq_subject(dead.kind);
        let payload = serde_json::to_vec(&dead).unwrap_or_default();
        let id = format!("{}-dlq-{sequence}", dead.job_id);
        if let Err(error) = publish(&shared.js, subject, Some(id), payload).await {
            tracing::error!(job = %result.job_id, %error, "cannot store the dead letter; the job goes back to the stream");
            let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    }
    let subject = streams::result_subject(result.kind, &result.job_id);
    let payload = serde_json::to_vec(result).unwrap_or_default();
    let id = format!("{}-{sequence}-{}", result.job_id, result.attempts);
    if let Err(error) = publish(&shared.js, subject, Some(id), payload).await {
        tracing::error!(job = %result.job_id, %error, "cannot store the result; the job goes back to the stream");
        let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        return;
    }
    if let Ok(mut waits) = shared.waits.lock() {
        waits.remove(&sequence);
    }
    shared
        .metrics
        .job_finished(result.kind.as_str(), result.status.as_str());
    if let Err(error) = message.double_ack().await {
        // The result is stored; a redelivery republishes the same result.
        tracing::warn!(job = %result.job_id, %error, "ack not confirmed");
    }
}

async fn publish(js: &Context, subject: String, id: Option<String>, payload: Vec<u8>) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = id {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
