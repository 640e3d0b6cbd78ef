//! `synthetic/checks.yaml`: where the gateway and NATS are, whose identity
//! the checks use, and the three checks. Unknown keys are refused, and
//! every error names the file and line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    pub gateway: GatewayConfig,
    /// NATS, where the scrape jobs are published.
    #[serde(default = "default_nats")]
    pub nats: String,
    pub agent: AgentConfig,
    /// What `--serve-fixtures` serves, and where.
    #[serde(default)]
    pub fixtures: Option<FixturesConfig>,
    #[serde(default)]
    pub scrape: Option<ScrapeCheck>,
    #[serde(default)]
    pub illegal_destination: Option<IllegalCheck>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The proxy, e.g. `http://127.0.0.1:3128`.
    pub proxy: String,
    /// The admin port, where the audit trail is read back.
    pub admin: String,
    /// The environment variable holding a control-API token with the
    /// `viewer` role (reading the audit trail needs it).
    #[serde(default = "default_admin_token_env")]
    pub admin_token_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The identity the checks use: a scraper's, as a scraper pod would.
    pub id: String,
    /// The environment variable holding its API key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// Or a file holding it (relative to this file's directory).
    #[serde(default)]
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixturesConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeCheck {
    /// How long one target's job may take, queueing included.
    #[serde(default = "default_scrape_timeout", with = "duration_text")]
    pub timeout: Duration,
    pub targets: Vec<Spanned<Target>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub url: String,
    /// `http`, `chromium`, `steel` or `auto`, as in a job.
    #[serde(default = "default_fetch")]
    pub fetch: String,
    pub expect: Vec<Expectation>,
}

/// One DOM element (a CSS selector) or JSON value (a JSON Pointer, `/a/0/b`)
/// that must be present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub selector: String,
    /// Its text must contain this.
    #[serde(default)]
    pub text: Option<String>,
    /// At least this many elements match.
    #[serde(default)]
    pub count: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IllegalCheck {
    /// The runner's own listener, where the illegal URLs point: it must
    /// see no connection.
    pub listen: SocketAddr,
    /// An unlisted domain and an unlisted IP (any number of URLs).
    pub urls: Vec<Spanned<String>>,
    /// How long the denial may take to appear in the audit trail.
    #[serde(default = "default_audit_timeout", with = "duration_text")]
    pub audit_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitCheck {
    pub url: String,
    #[serde(default = "default_requests")]
    pub requests: usize,
    /// The limit the gateway is configured with for this agent and URL.
    pub expect: ExpectedLimit,
    #[serde(default)]
    pub backoff: Backoff,
    /// The whole burst must complete within this.
    #[serde(default = "default_deadline", with = "duration_text")]
    pub deadline: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedLimit {
    /// Requests per window, as in the 429 body's `limit`.
    pub limit: u64,
    /// The window, as in the 429 body's `window` (`1s`, `1m`, `1h`).
    pub window: String,
    /// Requests let through at once before the rate applies.
    pub burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "default_backoff_initial", with = "duration_text")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "duration_text")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

fn default_nats() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_admin_token_env() -> String {
    "CLAWGRESS_ADMIN_TOKEN".into()
}
fn default_fetch() -> String {
    "auto".into()
}
fn default_scrape_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_audit_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_requests() -> usize {
    100
}
fn default_deadline() -> Duration {
    Duration::from_secs(180)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(8)
}

/// A configuration problem: where, what, and what to do.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Checks {
    pub fn load(path: &Path) -> Result<Checks, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Checks::parse(&text, &path.display().to_string())
    }

    /// `${NAME}` is replaced by the environment variable NAME first
    /// (`${NAME:-default}` when it may be unset), so one file serves every
    /// cluster (e.g. `${POD_IP}`).
    pub fn parse(text: &str, origin: &str) -> Result<Checks, ConfigError> {
        let text = expand_env(text, origin, |name| std::env::var(name).ok())?;
        let options = serde_saphyr::options! { with_snippet: false };
        let checks: Checks = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
            let at = e
                .location()
                .map_or_else(String::new, |l| format!(":{}:{}", l.line(), l.column()));
            ConfigError(format!(
                "{origin}{at}: {e}\n  hint: see synthetic/checks.yaml for the layout"
            ))
        })?;
        checks.validate(origin)?;
        Ok(checks)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let url = |field: &str, value: &str, line: Option<usize>| {
            let at = line.map_or_else(String::new, |l| format!(":{l}"));
            match url::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
                _ => Err(ConfigError(format!(
                    "{origin}{at}: {field} '{value}' is not an http(s) URL\n  hint: e.g. http://127.0.0.1:3128"
                ))),
            }
        };
        url("gateway.proxy", &self.gateway.proxy, None)?;
        url("gateway.admin", &self.gateway.admin, None)?;
        if self.agent.key_env.is_some() == self.agent.key_file.is_some() {
            return Err(ConfigError(format!(
                "{origin}: agent: give exactly one of key_env and key_file\n  hint: key_env: CLAWGRESS_SYNTHETIC_KEY"
            )));
        }
        if self.scrape.is_none() && self.illegal_destination.is_none() && self.rate_limit.is_none() {
            return Err(ConfigError(format!(
                "{origin}: no checks: add scrape, illegal_destination or rate_limit"
            )));
        }
        if let Some(scrape) = &self.scrape {
            if scrape.targets.is_empty() {
                return Err(ConfigError(format!("{origin}: scrape.targets is empty")));
            }
            for target in &scrape.targets {
                let line = Some(target.referenced.line() as usize);
                url("scrape target url", &target.value.url, line)?;
                if !matches!(target.value.fetch.as_str(), "http" | "chromium" | "steel" | "auto") {
                    return Err(ConfigError(format!(
                        "{origin}:{}: fetch '{}' is not one of http, chromium, steel, auto",
                        target.referenced.line(),
                        target.value.fetch
                    )));
                }
                if target.value.expect.is_empty() {
                    return Err(ConfigError(format!(
                        "{origin}:{}: target '{}' expects nothing, so it could never fail\n  hint: add expect: [{{selector: h1}}]",
                        target.referenced.line(),
                        target.value.name
                    )));
                }
            }
        }
        if let Some(illegal) = &self.illegal_destination {
            if illegal.urls.is_empty() {
                return Err(ConfigError(format!("{origin}: illegal_destination.urls is empty")));
            }
            for u in &illegal.urls {
                url("illegal_destination url", &u.value, Some(u.referenced.line() as usize))?;
            }
        }
        if let Some(rate) = &self.rate_limit {
            url("rate_limit.url", &rate.url, None)?;
            if window_seconds(&rate.expect.window).is_none() || rate.expect.limit == 0 || rate.expect.burst == 0 {
                return Err(ConfigError(format!(
                    "{origin}: rate_limit.expect: limit and burst must be positive and window one of 1s, 1m, 1h, 1d (got {}/{} burst {})\n  hint: copy them from the policy's rate limit for this agent",
                    rate.expect.limit, rate.expect.window, rate.expect.burst
                )));
            }
            if rate.requests == 0 || rate.requests > 10_000 {
                return Err(ConfigError(format!("{origin}: rate_limit.requests must be 1..=10000")));
            }
        }
        Ok(())
    }
}

/// Seconds in a rate window as the gateway writes it.
pub fn window_seconds(window: &str) -> Option<f64> {
    match window {
        "1s" | "s" | "second" => Some(1.0),
        "1m" | "m" | "min" | "minute" => Some(60.0),
        "1h" | "h" | "hour" => Some(3600.0),
        "1d" | "d" | "day" => Some(86_400.0),
        _ => None,
    }
}

pub fn expand_env(text: &str, origin: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        // Comments may mention ${NAME} without meaning it.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start + 2..].find('}') else {
                return Err(ConfigError(format!(
                    "{origin}:{}: `${{` without a closing `}}`",
                    index + 1
                )));
            };
            let expression = &rest[start + 2..start + 2 + len];
            // `${NAME:-default}`, as in a shell.
            let (name, default) = match expression.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expression, None),
            };
            let value = lookup(name).filter(|v| !v.is_empty()).or_else(|| default.map(str::to_string)).ok_or_else(|| {
                ConfigError(format!(
                    "{origin}:{}: the environment variable {name} is not set\n  hint: export {name}=... or write the value in the file",
                    index + 1
                ))
            })?;
            if value.contains('\n') {
                return Err(ConfigError(format!(
                    "{origin}:{}: the environment variable {name} holds a line break",
                    index + 1
                )));
            }
            out.push_str(&value);
            rest = &rest[start + 3 + len..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// `250ms`, `30s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not a duration; write e.g. 250ms, 30s, 2m")))
    }
}
