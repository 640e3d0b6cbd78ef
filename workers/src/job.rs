//! The job schema, version 1: what publishers put on `jobs.<type>.<priority>`.
//!
//! A job is JSON. Parsing is strict (unknown fields are refused) and every
//! error names the field it is about (`extract.title.selector`), because the
//! answer to an invalid job is a validation error on the results subject,
//! read by whoever published it.

mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use validate::{JobError, parse_job, valid_id};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One unit of work. Read with [`parse_job`] (which reports the failing
/// field); written with the `type` tag and no `version` (the publisher adds
/// it, see [`Job::to_json`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    Scrape(ScrapeJob),
    Agent(AgentJob),
}

impl Job {
    /// The job as publishers write it, with `version`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["version"] = SCHEMA_VERSION.into();
        serde_json::to_vec(&value).unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        match self {
            Job::Scrape(job) => &job.id,
            Job::Agent(job) => &job.id,
        }
    }

    pub fn agent(&self) -> &str {
        match self {
            Job::Scrape(job) => &job.agent,
            Job::Agent(job) => &job.agent,
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Job::Scrape(_) => JobKind::Scrape,
            Job::Agent(_) => JobKind::Agent,
        }
    }

    pub fn priority(&self) -> Priority {
        match self {
            Job::Scrape(job) => job.priority,
            Job::Agent(job) => job.priority,
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        match self {
            Job::Scrape(job) => job.retry,
            Job::Agent(job) => job.retry,
        }
    }
}

/// `scrape` or `agent`: the second token of the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Scrape,
    Agent,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Scrape => "scrape",
            JobKind::Agent => "agent",
        }
    }
}

/// The third token of the subject; high is drained before normal, normal
/// before low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Which backend fetches the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchMode {
    /// Plain HTTP (reqwest), no JavaScript.
    Http,
    /// Headless Chromium.
    Chromium,
    /// A Steel Browser session.
    Steel,
    /// HTTP first; a browser when the page needs one.
    #[default]
    Auto,
}

/// A page to fetch and what to take from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeJob {
    /// Unique per job; the dedup key (`Nats-Msg-Id`) and the result key.
    pub id: String,
    /// The agent whose identity the fetch uses at the gateway. Never a secret:
    /// the worker holds the credential.
    pub agent: String,
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub fetch: FetchMode,
    /// Named values to extract, in order.
    #[serde(default)]
    pub extract: BTreeMap<String, ExtractSpec>,
    /// A selector to wait for before extracting (browsers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
    /// Take a PNG screenshot (browsers only).
    #[serde(default)]
    pub screenshot: bool,
    /// Whole-job time limit, e.g. `"30s"`.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// What to take for one name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "ExtractText")]
pub struct ExtractSpec {
    pub selector: String,
    pub take: Take,
    /// Every match as a list, instead of the first.
    pub list: bool,
    /// A missing match fails the job (and makes `auto` try a browser).
    pub required: bool,
}

/// `"h1"` is short for `{"selector": "h1"}` (the text of the first match).
#[derive(Deserialize)]
#[serde(untagged)]
enum ExtractText {
    Short(String),
    Full(ExtractFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractFull {
    selector: String,
    #[serde(default)]
    take: TakeText,
    #[serde(default)]
    attr: Option<String>,
    #[serde(default)]
    list: bool,
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum TakeText {
    #[default]
    Text,
    Html,
    Attr,
}

/// The part of a matched element to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Take {
    /// Its text, whitespace collapsed.
    Text,
    /// Its inner HTML.
    Html,
    /// One attribute's value.
    Attr(String),
    /// `take: attr` without `attr`: refused by validation.
    MissingAttr,
}

/// Written back in the long form it is read in.
impl Serialize for ExtractSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("selector", &self.selector)?;
        match &self.take {
            Take::Text | Take::MissingAttr => map.serialize_entry("take", "text")?,
            Take::Html => map.serialize_entry("take", "html")?,
            Take::Attr(name) => {
                map.serialize_entry("take", "attr")?;
                map.serialize_entry("attr", name)?;
            }
        }
        map.serialize_entry("list", &self.list)?;
        map.serialize_entry("required", &self.required)?;
        map.end()
    }
}

impl From<ExtractText> for ExtractSpec {
    fn from(text: ExtractText) -> Self {
        match text {
            ExtractText::Short(selector) => ExtractSpec {
                selector,
                take: Take::Text,
                list: false,
                required: false,
            },
            ExtractText::Full(full) => ExtractSpec {
                selector: full.selector,
                take: match (full.take, full.attr) {
                    (TakeText::Attr, Some(name)) => Take::Attr(name),
                    (TakeText::Attr, None) => Take::MissingAttr,
                    (TakeText::Html, _) => Take::Html,
                    (TakeText::Text, _) => Take::Text,
                },
                list: full.list,
                required: full.required,
            },
        }
    }
}

/// How often and how patiently a failed job is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retried).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay; each later one doubles it, with jitter.
    #[serde(default = "default_base_delay", with = "duration_text")]
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_attempts(),
            base_delay: default_base_delay(),
        }
    }
}

/// A browser session driven step by step, with LLM calls through the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJob {
    pub id: String,
    pub agent: String,
    #[serde(default)]
    pub budget: Budget,
    pub steps: Vec<Step>,
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// Limits an agent job stops at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// LLM tokens in and out, summed over the job's `llm` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: default_max_steps(),
            max_tokens: None,
        }
    }
}

/// One step of an agent job; each is an object with exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Goto(String),
    Click(String),
    Fill { selector: String, value: String },
    WaitFor(String),
    Extract(BTreeMap<String, ExtractSpec>),
    Screenshot {},
    Evaluate(String),
    Llm(LlmCall),
}

/// A chat call to an AI provider, made through the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmCall {
    /// `openai`, `anthropic` or `gemini`.
    pub provider: String,
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Override the provider's base URL (e.g. a local or proxied endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_attempts() -> u32 {
    3
}

fn default_base_delay() -> Duration {
    Duration::from_secs(1)
}

fn default_max_steps() -> u32 {
    50
}

/// Durations as the policy writes them: `"30s"`, `"500ms"`, `"2m"`.
mod duration_text {
    use std::time::Duration;

    use clawgress_policies::values::DurationSpec;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", duration.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<DurationSpec>()
            .map(|spec| spec.duration())
            .map_err(|e| serde::de::Error::custom(format!("{}; {}", e.problem, e.hint)))
    }
}

#[cfg(test)]
mod tests;
