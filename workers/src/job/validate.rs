//! Turning bytes into a [`Job`], or into an error that names the field.

use std::time::Duration;

use serde_json::Value;

use super::{AgentJob, ExtractSpec, FetchMode, Job, SCHEMA_VERSION, ScrapeJob, Step, Take};

/// Why a job was refused. Never retried: the same bytes would fail again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{field}: {problem} ({hint})")]
pub struct JobError {
    /// Where: `url`, `extract.title.selector`, `steps[2].click`.
    pub field: String,
    pub problem: String,
    /// What to write instead.
    pub hint: String,
    /// The job id, when the bytes got far enough to have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl JobError {
    fn new(field: impl Into<String>, problem: impl Into<String>, hint: impl Into<String>) -> JobError {
        JobError {
            field: field.into(),
            problem: problem.into(),
            hint: hint.into(),
            job_id: None,
        }
    }
}

const MAX_ID: usize = 128;
const MAX_JOB_BYTES: usize = 1 << 20;
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const PROVIDERS: [&str; 3] = ["openai", "anthropic", "gemini"];
/// Headers a job may not set: credentials belong to the worker, and
/// connection-level headers to the client.
const FORBIDDEN_HEADERS: [&str; 8] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "transfer-encoding",
    "content-length",
    "te",
];

/// Parses and validates one job. `has_credential` says whether this worker
/// holds a credential for an agent.
pub fn parse_job(bytes: &[u8], has_credential: impl Fn(&str) -> bool) -> Result<Job, JobError> {
    if bytes.len() > MAX_JOB_BYTES {
        return Err(JobError::new(
            "(job)",
            format!("the job is {} bytes; at most {MAX_JOB_BYTES}", bytes.len()),
            "send large bodies by reference, not inline",
        ));
    }
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
        JobError::new(
            "(job)",
            format!("not valid JSON: {e}"),
            r#"a job is one JSON object, e.g. {"version": 1, "type": "scrape", "id": "j1", "agent": "scraper-001", "url": "https://example.com/"}"#,
        )
    })?;
    let job_id = value.get("id").and_then(Value::as_str).map(str::to_string);
    let with_id = |mut error: JobError| {
        error.job_id = job_id.clone();
        error
    };
    let Some(object) = value.as_object_mut() else {
        return Err(JobError::new(
            "(job)",
            "a job must be a JSON object",
            "wrap the fields in { }",
        ));
    };
    match object.remove("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(other) => {
            return Err(with_id(JobError::new(
                "version",
                format!("version {other} is not supported by this worker"),
                format!("write \"version\": {SCHEMA_VERSION}"),
            )));
        }
        None => {
            return Err(with_id(JobError::new(
                "version",
                "missing",
                format!("write \"version\": {SCHEMA_VERSION}"),
            )));
        }
    }
    let kind = match object.remove("type") {
        Some(Value::String(kind)) if kind == "scrape" || kind == "agent" => kind,
        _ => {
            return Err(with_id(JobError::new(
                "type",
                "must be \"scrape\" or \"agent\"",
                "write \"type\": \"scrape\"",
            )));
        }
    };
    // Each kind is read directly (not through a tagged enum) so the error
    // path names the field.
    let path_error = |e: serde_path_to_error::Error<serde_json::Error>| {
        let field = e.path().to_string();
        with_id(JobError::new(
            if field == "." { "(job)".to_string() } else { field },
            e.inner().to_string(),
            "see the job schema in the README",
        ))
    };
    let job = if kind == "scrape" {
        Job::Scrape(serde_path_to_error::deserialize(value).map_err(path_error)?)
    } else {
        Job::Agent(serde_path_to_error::deserialize(value).map_err(path_error)?)
    };
    check(&job, &has_credential).map_err(with_id)?;
    Ok(job)
}

fn check(job: &Job, has_credential: &impl Fn(&str) -> bool) -> Result<(), JobError> {
    check_id(job.id())?;
    if job.agent().is_empty() {
        return Err(JobError::new(
            "agent",
            "empty",
            "name the agent whose identity the job uses",
        ));
    }
    if !has_credential(job.agent()) {
        return Err(JobError::new(
            "agent",
            format!("this worker holds no credential for agent '{}'", job.agent()),
            "add the agent to the workers' credentials file (clawgress up --credentials FILE)",
        ));
    }
    let retry = job.retry();
    if !(1..=20).contains(&retry.max_attempts) {
        return Err(JobError::new("retry.max_attempts", "must be 1..=20", "e.g. 3"));
    }
    if retry.base_delay > Duration::from_secs(3600) {
        return Err(JobError::new("retry.base_delay", "at most 1h", "e.g. \"1s\""));
    }
    match job {
        Job::Scrape(scrape) => check_scrape(scrape),
        Job::Agent(agent) => check_agent(agent),
    }
}

/// Whether `id` can be a job id (and so a subject token).
pub fn valid_id(id: &str) -> bool {
    check_id(id).is_ok()
}

fn check_id(id: &str) -> Result<(), JobError> {
    let hint = "letters, digits, '-' and '_', at most 128: it becomes a NATS subject token";
    if id.is_empty() || id.len() > MAX_ID {
        return Err(JobError::new("id", "empty or longer than 128 characters", hint));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(JobError::new(
            "id",
            format!("'{id}' has characters a subject cannot carry"),
            hint,
        ));
    }
    Ok(())
}

fn check_timeout(timeout: Duration) -> Result<(), JobError> {
    if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(600) {
        return Err(JobError::new("timeout", "must be between 1s and 10m", "e.g. \"30s\""));
    }
    Ok(())
}

fn check_url(field: &str, text: &str) -> Result<(), JobError> {
    let url = url::Url::parse(text).map_err(|e| {
        JobError::new(
            field,
            format!("'{text}' is not a URL: {e}"),
            "write an absolute http:// or https:// URL",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(JobError::new(
            field,
            format!("'{text}' is not an http(s) URL with a host"),
            "write an absolute http:// or https:// URL",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(JobError::new(
            field,
            "the URL carries credentials",
            "jobs never carry secrets; the worker holds them",
        ));
    }
    Ok(())
}

fn check_selector(field: &str, selector: &str) -> Result<(), JobError> {
    if crate::extract::is_json_pointer(selector) {
        // RFC 6901: `~` only as `~0` or `~1`.
        let bad_escape = selector
            .split('~')
            .skip(1)
            .any(|rest| !rest.starts_with('0') && !rest.starts_with('1'));
        if bad_escape {
            return Err(JobError::new(
                field,
                format!("'{selector}' is not a JSON Pointer: `~` must be written ~0, and `/` inside a key ~1"),
                "e.g. \"/items/0/name\"",
            ));
        }
        return Ok(());
    }
    scraper::Selector::parse(selector).map(|_| ()).map_err(|e| {
        JobError::new(
            field,
            format!("'{selector}' is not a CSS selector: {e}"),
            "e.g. \"h1\", \"#main .price\", \"a[href]\", or a JSON Pointer such as \"/items/0/name\"",
        )
    })
}

fn check_extract(prefix: &str, extract: &std::collections::BTreeMap<String, ExtractSpec>) -> Result<(), JobError> {
    for (name, spec) in extract {
        if name.is_empty() || name.len() > 64 {
            return Err(JobError::new(
                prefix,
                format!("name '{name}' is empty or too long"),
                "at most 64 characters",
            ));
        }
        check_selector(&format!("{prefix}.{name}.selector"), &spec.selector)?;
        if spec.take == Take::MissingAttr {
            return Err(JobError::new(
                format!("{prefix}.{name}.attr"),
                "take is \"attr\" but no attribute is named",
                "add \"attr\": \"href\" (or the attribute you want)",
            ));
        }
    }
    Ok(())
}

fn check_scrape(job: &ScrapeJob) -> Result<(), JobError> {
    check_url("url", &job.url)?;
    check_timeout(job.timeout)?;
    let method = job.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(JobError::new(
            "method",
            format!("'{}' is not supported", job.method),
            METHODS.join(", "),
        ));
    }
    if job.body.is_some() && matches!(method.as_str(), "GET" | "HEAD") {
        return Err(JobError::new(
            "body",
            format!("a {method} request has no body"),
            "use POST, PUT or PATCH",
        ));
    }
    if job.fetch != FetchMode::Http && job.fetch != FetchMode::Auto && method != "GET" {
        return Err(JobError::new(
            "method",
            "browsers only load pages with GET",
            "use fetch \"http\" for other methods",
        ));
    }
    for (name, value) in &job.headers {
        let field = format!("headers.{name}");
        if FORBIDDEN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(JobError::new(
                field,
                "this header may not be set by a job",
                "credentials belong to the worker, connection headers to the client",
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(JobError::new(
                field,
                "not a valid header",
                "ASCII name and value, no line breaks",
            ));
        }
    }
    check_extract("extract", &job.extract)?;
    if let Some(selector) = &job.wait_for {
        check_selector("wait_for", selector)?;
        if job.fetch == FetchMode::Http {
            return Err(JobError::new(
                "wait_for",
                "waiting for a selector needs a browser",
                "set fetch to \"chromium\", \"steel\" or \"auto\"",
            ));
        }
    }
    if job.screenshot && job.fetch == FetchMode::Http {
        return Err(JobError::new(
            "screenshot",
            "a screenshot needs a browser",
            "set fetch to \"chromium\", \"steel\" or \"auto\"",
        ));
    }
    Ok(())
}

fn check_agent(job: &AgentJob) -> Result<(), JobError> {
    check_timeout(job.timeout)?;
    if job.steps.is_empty() {
        return Err(JobError::new(
            "steps",
            "no steps",
            "e.g. [{\"goto\": \"https://example.com/\"}]",
        ));
    }
    if job.steps.len() > job.budget.max_steps as usize {
        return Err(JobError::new(
            "steps",
            format!(
                "{} steps, but budget.max_steps is {}",
                job.steps.len(),
                job.budget.max_steps
            ),
            "raise budget.max_steps or split the job",
        ));
    }
    for (index, step) in job.steps.iter().enumerate() {
        let at = |name: &str| format!("steps[{index}].{name}");
        match step {
            Step::Goto(url) => check_url(&at("goto"), url)?,
            Step::Click(selector) | Step::WaitFor(selector) => {
                let name = if matches!(step, Step::Click(_)) {
                    "click"
                } else {
                    "wait_for"
                };
                check_selector(&at(name), selector)?;
            }
            Step::Fill { selector, .. } => check_selector(&at("fill.selector"), selector)?,
            Step::Extract(extract) => check_extract(&at("extract"), extract)?,
            Step::Screenshot {} | Step::Evaluate(_) => {}
            Step::Llm(call) => {
                if !PROVIDERS.contains(&call.provider.as_str()) {
                    return Err(JobError::new(
                        at("llm.provider"),
                        format!("'{}' is not supported", call.provider),
                        PROVIDERS.join(", "),
                    ));
                }
                if call.model.is_empty() || call.messages.is_empty() {
                    return Err(JobError::new(
                        at("llm"),
                        "needs a model and at least one message",
                        "e.g. {\"provider\": \"openai\", \"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}",
                    ));
                }
                if let Some(base) = &call.base_url {
                    check_url(&at("llm.base_url"), base)?;
                }
            }
        }
        if index == 0 && !matches!(step, Step::Goto(_) | Step::Llm(_)) {
            return Err(JobError::new(
                at("(step)"),
                "the first browser step must be goto",
                "start with {\"goto\": URL}",
            ));
        }
    }
    Ok(())
}
