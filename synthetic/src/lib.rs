//! `clawgress synthetic run`: the seed's three acceptance checks against a
//! running platform, for CI and for a CronJob next to production.
//!
//! | module | check |
//! |---|---|
//! | [`scrape`] | Synthetic Scrape: targets fetched as real jobs, elements asserted |
//! | [`illegal`] | Illegal Destination: refused, audited with an alert, nothing reached |
//! | [`rate_limit`] | Rate Limit: a burst, correct 429s, backoff completes, rate never exceeded |
//! | [`fixtures`] | the local sites `--serve-fixtures` serves, and the tripwire listener |
//! | [`report`] | the human summary and JUnit XML |
//! | [`config`] | `checks.yaml` |
//! | [`audit`] | the gateway's audit lines, read back as evidence |

pub mod audit;
pub mod config;
pub mod fixtures;
pub mod illegal;
pub mod rate_limit;
pub mod report;
pub mod scrape;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{Checks, ConfigError};
use report::Case;

/// What `clawgress synthetic run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub file: PathBuf,
    /// Serve the fixture sites named in `fixtures.listen` for the run.
    pub serve_fixtures: bool,
    /// Only these checks (`scrape`, `illegal_destination`, `rate_limit`);
    /// empty for all.
    pub only: Vec<String>,
}

/// One run's shared parts.
pub struct Run<'a> {
    pub checks: &'a Checks,
    /// Through the gateway, with the agent's credential.
    pub proxied: reqwest::Client,
    /// To the admin port, never through the proxy.
    pub direct: reqwest::Client,
    pub fixtures: Option<Arc<fixtures::FixtureLog>>,
    /// Makes this run's job ids unique.
    pub run_id: String,
}

/// What a run found.
pub struct Outcome {
    pub cases: Vec<Case>,
    pub duration: Duration,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(Case::passed)
    }

    pub fn summary(&self) -> String {
        report::summary(&self.cases, self.duration)
    }

    pub fn junit(&self) -> String {
        report::junit(&self.cases, self.duration, self.started_at)
    }
}

pub const CHECK_NAMES: [&str; 3] = ["scrape", "illegal_destination", "rate_limit"];

/// Runs the checks; a configuration problem is an error, a failing check
/// is a failed case.
pub async fn run(options: &Options) -> Result<Outcome, ConfigError> {
    for name in &options.only {
        if !CHECK_NAMES.contains(&name.as_str()) {
            return Err(ConfigError(format!(
                "--only {name}: the checks are {}",
                CHECK_NAMES.join(", ")
            )));
        }
    }
    let checks = Checks::load(&options.file)?;
    let base = options.file.parent().unwrap_or(std::path::Path::new("."));
    let key = agent_key(&checks, base)?;
    let proxy = reqwest::Proxy::all(&checks.gateway.proxy)
        .map_err(|e| ConfigError(format!("gateway.proxy {}: {e}", checks.gateway.proxy)))?
        .basic_auth(&checks.agent.id, &key);
    let proxied = reqwest::Client::builder()
        .proxy(proxy)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| ConfigError(format!("cannot build the HTTP client: {e}")))?;
    let direct = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ConfigError(format!("cannot build the HTTP client: {e}")))?;
    let fixtures = if options.serve_fixtures {
        let Some(config) = &checks.fixtures else {
            return Err(ConfigError(format!(
                "{}: --serve-fixtures needs a `fixtures: {{listen: 127.0.0.1:3011}}` section",
                options.file.display()
            )));
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
            ConfigError(format!(
                "cannot serve the fixtures on {}: {e} (is another run still going?)",
                config.listen
            ))
        })?;
        Some(fixtures::serve_sites(listener))
    } else {
        None
    };
    let run = Run {
        checks: &checks,
        proxied,
        direct,
        fixtures,
        run_id: format!(
            "{}-{:04x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S"),
            rand::random::<u16>()
        ),
    };
    let wanted = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let mut cases = Vec::new();
    if let Some(check) = checks.scrape.as_ref().filter(|_| wanted("scrape")) {
        cases.extend(scrape::run(&run, check).await);
    }
    if let Some(check) = checks
        .illegal_destination
        .as_ref()
        .filter(|_| wanted("illegal_destination"))
    {
        cases.extend(illegal::run(&run, check).await);
    }
    if let Some(check) = checks.rate_limit.as_ref().filter(|_| wanted("rate_limit")) {
        cases.extend(rate_limit::run(&run, check).await);
    }
    if cases.is_empty() {
        return Err(ConfigError(format!(
            "{}: none of the selected checks is configured",
            options.file.display()
        )));
    }
    Ok(Outcome {
        cases,
        duration: started.elapsed(),
        started_at,
    })
}

/// The agent's key, from the environment or a file (relative to the check
/// file's directory). Never printed.
fn agent_key(checks: &Checks, base: &std::path::Path) -> Result<String, ConfigError> {
    let agent = &checks.agent;
    let key = match (&agent.key_env, &agent.key_file) {
        (Some(name), _) => std::env::var(name).map_err(|_| {
            ConfigError(format!(
                "agent.key_env: {name} is not set; export it with agent {}'s API key",
                agent.id
            ))
        })?,
        (None, Some(path)) => std::fs::read_to_string(base.join(path))
            .map_err(|e| ConfigError(format!("agent.key_file {}: {e}", base.join(path).display())))?
            .trim()
            .to_string(),
        (None, None) => return Err(ConfigError("agent: give key_env or key_file".into())),
    };
    if key.is_empty() {
        return Err(ConfigError(format!("agent {}'s key is empty", agent.id)));
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
