//! Rate Limit: a burst of requests at once, each retried after a 429 with
//! exponential backoff that never waits less than `retry_after`. Passes only
//! if 429s arrive, every one states a correct `retry_after`, all requests
//! complete, and the target never saw more than the configured rate.

use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::Value;

use crate::Run;
use crate::config::{RateLimitCheck, window_seconds};
use crate::report::{Case, Outcome};

const CHECK: &str = "rate_limit";

/// What one 429 said.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub retry_after_header: Option<u64>,
    pub body: Value,
}

#[derive(Debug, Default)]
struct Request {
    completed: Option<Instant>,
    attempts: u32,
    refusals: Vec<Refusal>,
    /// Why it gave up, if it did.
    abandoned: Option<String>,
}

pub async fn run(env: &Run<'_>, check: &RateLimitCheck) -> Vec<Case> {
    let started = Instant::now();
    if let Some(log) = &env.fixtures {
        log.limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
    let deadline = started + check.deadline;
    let requests = (0..check.requests).map(|_| one(&env.proxied, check, deadline));
    let requests: Vec<Request> = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();

    let mut details = Vec::new();
    let completed: Vec<Instant> = requests.iter().filter_map(|r| r.completed).collect();
    let refusals: Vec<&Refusal> = requests.iter().flat_map(|r| &r.refusals).collect();
    details.push(format!(
        "{}/{} completed in {:.1} s; {} × 429; at most {} attempts for one request",
        completed.len(),
        check.requests,
        elapsed.as_secs_f64(),
        refusals.len(),
        requests.iter().map(|r| r.attempts).max().unwrap_or(0)
    ));
    let mut failures = Vec::new();
    if let Some(why) = requests.iter().find_map(|r| r.abandoned.clone()) {
        let abandoned = requests.iter().filter(|r| r.abandoned.is_some()).count();
        failures.push(format!("{abandoned} request(s) did not complete, e.g.: {why}"));
    }
    if refusals.is_empty() {
        failures.push(format!(
            "no 429 in a burst of {}: the limit of {}/{} (burst {}) was not enforced",
            check.requests, check.expect.limit, check.expect.window, check.expect.burst
        ));
    }
    let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();
    for refusal in &refusals {
        *by_reason.entry(reason_of(&refusal.body)).or_default() += 1;
    }
    if !by_reason.is_empty() {
        details.push(format!("429s by reason: {by_reason:?}"));
    }
    if !by_reason.contains_key("rate_limit_exceeded") && !refusals.is_empty() {
        failures.push(format!(
            "no 429 came from the rate limiter (only {by_reason:?}): the {}/{} limit was never reached",
            check.expect.limit, check.expect.window
        ));
    }
    let mut wrong = refusals.iter().filter_map(|r| judge_refusal(r, check).err());
    if let Some(first) = wrong.next() {
        failures.push(format!("{} 429(s) were wrong, e.g.: {first}", 1 + wrong.count()));
    } else if let Some(sample) = refusals.first() {
        let sample = refusals
            .iter()
            .find(|r| reason_of(&r.body) == "rate_limit_exceeded")
            .unwrap_or(sample);
        details.push(format!(
            "every 429 stated retry_after (header and body agree), e.g. {}",
            sample.body
        ));
    }
    // The target's own clock when it is our fixture; otherwise when each
    // success came back, which can only look burstier than the arrivals.
    let arrivals = match &env.fixtures {
        Some(log) => {
            let seen = log
                .limited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if seen.is_empty() { completed.clone() } else { seen }
        }
        None => completed.clone(),
    };
    let period = window_seconds(&check.expect.window).unwrap_or(60.0) / check.expect.limit as f64;
    let peak = peak_excess(&arrivals, period, check.expect.burst);
    details.push(format!(
        "target saw {} request(s); worst stretch: {} in {:.2} s where the limit allows {:.1}",
        arrivals.len(),
        peak.count,
        peak.seconds,
        peak.allowed
    ));
    // One request of slack: admission and arrival are a few milliseconds apart.
    if peak.count as f64 > peak.allowed + 1.0 {
        failures.push(format!(
            "the target saw {} requests in {:.2} s, more than the {}/{} limit with burst {} allows ({:.1})",
            peak.count, peak.seconds, check.expect.limit, check.expect.window, check.expect.burst, peak.allowed
        ));
    }
    let unreachable = completed.is_empty()
        && refusals.is_empty()
        && requests
            .iter()
            .all(|r| r.abandoned.as_deref().is_some_and(|a| a.starts_with("no answer")));
    let outcome = if unreachable {
        Outcome::Error(format!(
            "cannot reach the gateway at {}: {}",
            env.checks.gateway.proxy,
            requests.iter().find_map(|r| r.abandoned.clone()).unwrap_or_default()
        ))
    } else if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(failures.join("; "))
    };
    vec![Case {
        check: CHECK,
        name: format!("{}-request burst to {}", check.requests, check.url),
        duration: elapsed,
        outcome,
        details,
    }]
}

async fn one(client: &reqwest::Client, check: &RateLimitCheck, deadline: Instant) -> Request {
    let mut request = Request::default();
    loop {
        if Instant::now() >= deadline {
            request.abandoned = Some(format!(
                "still refused after {} attempts when the {} s deadline came",
                request.attempts,
                check.deadline.as_secs()
            ));
            return request;
        }
        request.attempts += 1;
        let delay = match client.get(&check.url).timeout(Duration::from_secs(30)).send().await {
            Ok(response) if response.status().is_success() => {
                request.completed = Some(Instant::now());
                let _ = response.bytes().await;
                return request;
            }
            Ok(response) if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                let header = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let retry_after = header.or_else(|| body["retry_after"].as_u64()).unwrap_or(1);
                request.refusals.push(Refusal {
                    retry_after_header: header,
                    body,
                });
                backoff(check, request.attempts, Duration::from_secs(retry_after))
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                request.abandoned = Some(format!("answered {status}: {}", body.trim()));
                return request;
            }
            Err(error) => {
                if request.attempts >= 5 {
                    request.abandoned = Some(format!("no answer after {} attempts: {error}", request.attempts));
                    return request;
                }
                backoff(check, request.attempts, Duration::ZERO)
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(remaining)).await;
    }
}

/// Exponential backoff with jitter, never shorter than the server asked.
pub fn backoff(check: &RateLimitCheck, attempt: u32, retry_after: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let exponential = check
        .backoff
        .initial
        .saturating_mul(1 << exponent)
        .min(check.backoff.max);
    let jitter = rand::rng().random_range(0.0..=0.25);
    retry_after.max(exponential).mul_f64(1.0 + jitter)
}

/// A 429 is right when it says when to come back (the `Retry-After` header
/// and the body's `retry_after` agree, in whole seconds, at least 1). A rate
/// limiter's 429 (the seed's body: `error`, `limit`, `window`, `agent_id`)
/// must also name the configured limit and ask for no longer than one
/// request's share of it. Other 429s (the agent's concurrency cap) only
/// need to say when.
pub fn judge_refusal(refusal: &Refusal, check: &RateLimitCheck) -> Result<(), String> {
    let body = &refusal.body;
    let Some(header) = refusal.retry_after_header else {
        return Err(format!("no Retry-After header (body {body})"));
    };
    if body["retry_after"].as_u64() != Some(header) {
        return Err(format!(
            "Retry-After {header} but the body says {}",
            body["retry_after"]
        ));
    }
    if header == 0 {
        return Err("retry_after 0: a client would retry at once".into());
    }
    if reason_of(body) != "rate_limit_exceeded" {
        return Ok(());
    }
    let (Some(limit), Some(window)) = (body["limit"].as_u64(), body["window"].as_str()) else {
        return Err(format!("the body does not name its limit and window: {body}"));
    };
    if limit != check.expect.limit || window != check.expect.window {
        return Err(format!(
            "refused by a {limit}/{window} limit, but the configured one is {}/{}",
            check.expect.limit, check.expect.window
        ));
    }
    let period = window_seconds(window).unwrap_or(60.0) / limit as f64;
    let longest = period.ceil().max(1.0) as u64;
    if header > longest {
        return Err(format!(
            "retry_after {header} s, but a {limit}/{window} limit frees a slot every {period:.2} s"
        ));
    }
    for field in ["error", "agent_id"] {
        if body[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("the body lacks `{field}`: {body}"));
        }
    }
    Ok(())
}

/// The refusal's reason code: `reason` in problem+json, `error` in the
/// seed's 429 body.
pub fn reason_of(body: &Value) -> &str {
    body["reason"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or("unknown")
}

/// The stretch of arrivals that comes closest to (or over) what a limit of
/// one request per `period` with `burst` allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub count: usize,
    pub seconds: f64,
    pub allowed: f64,
}

pub fn peak_excess(arrivals: &[Instant], period: f64, burst: u64) -> Peak {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut worst = Peak {
        count: 0,
        seconds: 0.0,
        allowed: burst as f64,
    };
    let mut worst_excess = f64::NEG_INFINITY;
    for i in 0..sorted.len() {
        for j in i..sorted.len() {
            let seconds = sorted[j].duration_since(sorted[i]).as_secs_f64();
            let count = j - i + 1;
            let allowed = burst as f64 + seconds / period;
            let excess = count as f64 - allowed;
            if excess > worst_excess {
                worst_excess = excess;
                worst = Peak {
                    count,
                    seconds,
                    allowed,
                };
            }
        }
    }
    worst
}
