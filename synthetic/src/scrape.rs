//! Synthetic Scrape: each target is a real job on NATS, fetched by the real
//! workers through the gateway; the result must hold every expected
//! element.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clawgress_scheduler::result::{JobResult, ResultStatus};
use clawgress_scheduler::streams;
use clawgress_workers::job::{ExtractSpec, FetchMode, Job, Priority, RetryPolicy, ScrapeJob, Take};
use futures_util::StreamExt;
use serde_json::Value;

use crate::Run;
use crate::config::{Expectation, ScrapeCheck, Target};
use crate::report::{Case, Outcome};

const CHECK: &str = "scrape";

pub async fn run(env: &Run<'_>, check: &ScrapeCheck) -> Vec<Case> {
    let started = Instant::now();
    let connected = async {
        let (client, js) = streams::connect(&env.checks.nats).await?;
        streams::ensure_streams(&js, streams::Replicas::Auto).await?;
        Ok::<_, streams::SetupError>((client, js))
    };
    let (client, js) = match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => return unreachable_nats(check, started, &format!("{}: {error}", env.checks.nats)),
        Err(_) => return unreachable_nats(check, started, &format!("{}: no answer in 10 s", env.checks.nats)),
    };
    let runs = check
        .targets
        .iter()
        .enumerate()
        .map(|(index, target)| one(env, &client, &js, check, &target.value, index));
    let cases = futures_util::future::join_all(runs).await;
    let _ = client.flush().await;
    cases
}

fn unreachable_nats(check: &ScrapeCheck, started: Instant, why: &str) -> Vec<Case> {
    check
        .targets
        .iter()
        .map(|target| Case {
            check: CHECK,
            name: target.value.name.clone(),
            duration: started.elapsed(),
            outcome: Outcome::Error(format!(
                "cannot reach NATS at {why}; is the pipeline running (make up)?"
            )),
            details: Vec::new(),
        })
        .collect()
}

/// The job for a target: one extraction per expectation, named by its
/// position, and for browsers a wait for the first element expected.
pub fn job_for(target: &Target, agent: &str, id: String, timeout: Duration) -> Job {
    let fetch = match target.fetch.as_str() {
        "http" => FetchMode::Http,
        "chromium" => FetchMode::Chromium,
        "steel" => FetchMode::Steel,
        _ => FetchMode::Auto,
    };
    let extract: BTreeMap<String, ExtractSpec> = target
        .expect
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                format!("expect_{i}"),
                ExtractSpec {
                    selector: e.selector.clone(),
                    take: Take::Text,
                    list: e.count.is_some(),
                    required: false,
                },
            )
        })
        .collect();
    let wait_for = (fetch != FetchMode::Http)
        .then(|| target.expect.iter().find(|e| !e.selector.starts_with('/')))
        .flatten()
        .map(|e| e.selector.clone());
    Job::Scrape(ScrapeJob {
        id,
        agent: agent.to_string(),
        url: target.url.clone(),
        method: "GET".into(),
        headers: BTreeMap::new(),
        body: None,
        fetch,
        extract,
        wait_for,
        screenshot: false,
        timeout: timeout.clamp(Duration::from_secs(1), Duration::from_secs(600)),
        priority: Priority::High,
        // A synthetic check reports what happens; it does not paper over a
        // flaky target with many retries.
        retry: RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        },
    })
}

async fn one(
    env: &Run<'_>,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    check: &ScrapeCheck,
    target: &Target,
    index: usize,
) -> Case {
    let started = Instant::now();
    let id = format!("synthetic-{}-{index}", env.run_id);
    let job = job_for(target, &env.checks.agent.id, id.clone(), check.timeout);
    let case = |outcome: Outcome, details: Vec<String>| Case {
        check: CHECK,
        name: target.name.clone(),
        duration: started.elapsed(),
        outcome,
        details,
    };
    if let Err(error) = clawgress_workers::parse_job(&job.to_json(), |_| true) {
        return case(
            Outcome::Error(format!("the target makes an invalid job: {error}")),
            Vec::new(),
        );
    }
    // Subscribed before publishing, so the result cannot slip past.
    let mut results = match client.subscribe(streams::result_subject(job.kind(), &id)).await {
        Ok(subscription) => subscription,
        Err(error) => {
            return case(
                Outcome::Error(format!("cannot subscribe for the result: {error}")),
                Vec::new(),
            );
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    let subject = streams::job_subject(job.kind(), job.priority());
    // With an OTLP endpoint, the check's job is a trace of its own, named
    // in the case's evidence: a failing check leads straight to its spans.
    let span = tracing::debug_span!(
        target: "clawgress_synthetic::scrape",
        "publish",
        otel.kind = "producer",
        job.id = %id,
        messaging.destination = %subject,
    );
    let trace = clawgress_telemetry::trace_id(&span);
    if let Some(traceparent) = clawgress_telemetry::traceparent(&span) {
        headers.insert(clawgress_telemetry::TRACEPARENT, traceparent.as_str());
    }
    drop(span);
    let published = async {
        js.publish_with_headers(subject, headers, job.to_json().into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    if let Err(error) = published.await {
        return case(Outcome::Error(format!("cannot publish the job: {error}")), Vec::new());
    }
    let wait = check.timeout + Duration::from_secs(5);
    let message = match tokio::time::timeout(wait, results.next()).await {
        Ok(Some(message)) => message,
        _ => {
            return case(
                Outcome::Failed(format!(
                    "no result for job {id} in {} s: is a scheduler consuming jobs.scrape.high?",
                    wait.as_secs()
                )),
                Vec::new(),
            );
        }
    };
    let result: JobResult = match serde_json::from_slice(&message.payload) {
        Ok(result) => result,
        Err(error) => {
            return case(
                Outcome::Error(format!("unreadable result for {id}: {error}")),
                Vec::new(),
            );
        }
    };
    let (mut outcome, mut details) = judge(target, &result);
    if let Some(trace) = trace {
        details.push(format!("trace {trace}"));
    }
    if outcome == Outcome::Passed
        && let Some(request_id) = result.fetch.as_ref().and_then(|f| f.request_id.as_deref())
    {
        outcome = audited(env, request_id, &mut details).await;
    }
    case(outcome, details)
}

/// The page came through the gateway, under the checks' agent: its audit
/// line says so. Without a control-API token this is noted, not failed.
async fn audited(env: &Run<'_>, request_id: &str, details: &mut Vec<String>) -> Outcome {
    if std::env::var(&env.checks.gateway.admin_token_env).is_err() {
        details.push(format!(
            "audit not checked: {} is not set",
            env.checks.gateway.admin_token_env
        ));
        return Outcome::Passed;
    }
    let since = chrono::Utc::now() - chrono::Duration::seconds(600);
    match crate::audit::line(env, request_id, since, Duration::from_secs(10)).await {
        Ok(line) => {
            let (kind, agent) = (
                line["type"].as_str().unwrap_or("-"),
                line["agent_id"].as_str().unwrap_or("-"),
            );
            details.push(format!(
                "audited by the gateway: {kind}, agent {agent}, allowed by {}",
                line["allowed_by"].as_str().unwrap_or("-")
            ));
            if kind != "egress_request" || agent != env.checks.agent.id {
                Outcome::Failed(format!(
                    "the gateway recorded request {request_id} as {kind} for agent {agent}"
                ))
            } else {
                Outcome::Passed
            }
        }
        Err(outcome) => outcome,
    }
}

/// Whether a result holds what the target expects, and the evidence.
pub fn judge(target: &Target, result: &JobResult) -> (Outcome, Vec<String>) {
    let mut details = Vec::new();
    if let Some(fetch) = &result.fetch {
        details.push(format!(
            "job {} fetched by {} ({}), status {}, gateway request {}",
            result.job_id,
            fetch.tier,
            target.url,
            fetch.status,
            fetch.request_id.as_deref().unwrap_or("-")
        ));
    }
    if result.status != ResultStatus::Ok {
        let why = result.error.as_ref().map_or_else(
            || "no error given".to_string(),
            |e| format!("{}: {}", e.code, e.message),
        );
        return (
            Outcome::Failed(format!("job {} ended {:?}: {why}", result.job_id, result.status).to_lowercase()),
            details,
        );
    }
    let mut missing = Vec::new();
    for (i, expectation) in target.expect.iter().enumerate() {
        let value = result.data.get(&format!("expect_{i}")).unwrap_or(&Value::Null);
        match met(expectation, value) {
            Ok(seen) => details.push(format!("{} → {seen}", expectation.selector)),
            Err(why) => missing.push(format!("{}: {why}", expectation.selector)),
        }
    }
    if missing.is_empty() {
        (Outcome::Passed, details)
    } else {
        (Outcome::Failed(missing.join("; ")), details)
    }
}

fn met(expectation: &Expectation, value: &Value) -> Result<String, String> {
    let texts: Vec<String> = match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().map(text_of).collect(),
        other => vec![text_of(other)],
    };
    if texts.is_empty() || texts.iter().all(String::is_empty) {
        return Err("not found".into());
    }
    if let Some(count) = expectation.count
        && texts.len() < count
    {
        return Err(format!("{} found, at least {count} expected", texts.len()));
    }
    if let Some(text) = &expectation.text
        && !texts.iter().any(|t| t.contains(text.as_str()))
    {
        return Err(format!("text {:?} expected, found {:?}", text, clip(&texts[0])));
    }
    Ok(match expectation.count {
        Some(_) => format!("{} found", texts.len()),
        None => format!("{:?}", clip(&texts[0])),
    })
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(80);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}
