//! What keeps the gateway's record and rules trustworthy, as configured on
//! its command line: how durable a confirmed audit record is
//! (`--audit-fsync`), whether the trail is signed (`--audit-key`), where it
//! is shipped and how much may wait for that (`--audit-replicas`,
//! `--audit-wal-max-bytes`), and which keys a policy bundle must be signed
//! by (`--policy-key`).
//!
//! These are the host's settings, not the policy's: the disk, the key files
//! and the NATS topology differ between gateways that share one bundle, and
//! a bundle must not be able to turn off its own signature check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clawgress_policies::signing::{KeyRing, SigningKey};
use clawgress_policies::{PolicyBundle, PolicyError};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::audit::{self, AuditMetrics, AuditSink, AuditWriterHandle, CheckpointConfig, FsyncPolicy, WriterOptions};

/// The gateway's audit and signing settings.
#[derive(Debug, Clone)]
pub struct IntegrityOptions {
    pub fsync: FsyncPolicy,
    /// Ed25519 private key for checkpoints (`clawgress keys init`).
    pub audit_key: Option<PathBuf>,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// Audit stream replicas (with `--nats`); `None` follows the gateway's
    /// `--replicas`.
    pub replicas: Option<clawgress_nats::Replicas>,
    /// Unshipped trail allowed before `egress.fail_mode` decides.
    pub wal_max_bytes: u64,
    /// Public keys a policy bundle must be signed by; empty: unsigned
    /// bundles are taken.
    pub policy_keys: Vec<PathBuf>,
}

/// A signed checkpoint after this many records by default.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// ... or this long after the first unsigned record.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// 1 GiB of unshipped trail: hours of a busy gateway's records.
pub const WAL_MAX_BYTES: u64 = 1 << 30;

impl Default for IntegrityOptions {
    fn default() -> Self {
        IntegrityOptions {
            fsync: FsyncPolicy::default(),
            audit_key: None,
            checkpoint_every: CHECKPOINT_EVERY,
            checkpoint_interval: CHECKPOINT_INTERVAL,
            replicas: None,
            wal_max_bytes: WAL_MAX_BYTES,
            policy_keys: Vec::new(),
        }
    }
}

impl IntegrityOptions {
    /// The trusted policy keys, or `None` when bundles need no signature.
    pub fn policy_keys(&self) -> anyhow::Result<Option<Arc<KeyRing>>> {
        if self.policy_keys.is_empty() {
            return Ok(None);
        }
        let ring = KeyRing::load(&self.policy_keys).context("cannot load --policy-key")?;
        Ok(Some(Arc::new(ring)))
    }

    /// Opens the trail and starts its writer with these settings.
    pub fn start_writer(
        &self,
        path: &Path,
        capacity: usize,
        metrics: AuditMetrics,
    ) -> anyhow::Result<(AuditSink, AuditWriterHandle)> {
        let checkpoints = match &self.audit_key {
            Some(key) => Some(CheckpointConfig {
                key: Arc::new(SigningKey::load(key).context("cannot load --audit-key")?),
                every_records: self.checkpoint_every.max(1),
                interval: self.checkpoint_interval.max(Duration::from_millis(10)),
            }),
            None => None,
        };
        if let Some(config) = &checkpoints {
            tracing::info!(key_id = config.key.key_id(), "audit checkpoints are signed");
        }
        let options = WriterOptions {
            capacity,
            fsync: self.fsync,
            checkpoints,
        };
        audit::start_writer_with(path, options, metrics)
            .with_context(|| format!("cannot open the audit trail {}", path.display()))
    }

    /// Starts shipping the trail to the audit streams on `nats_url`;
    /// `replicas` unless `--audit-replicas` says otherwise.
    pub fn start_shipper(
        &self,
        nats_url: &str,
        replicas: clawgress_nats::Replicas,
        trail: &Path,
        sink: &AuditSink,
        writer: &AuditWriterHandle,
    ) -> audit::ship::Shipper {
        audit::ship::Shipper::start(
            audit::ship::ShipConfig {
                nats_url: nats_url.to_string(),
                trail: trail.to_owned(),
                replicas: self.replicas.unwrap_or(replicas),
                wal_max_bytes: self.wal_max_bytes.max(1),
            },
            writer.written(),
            sink.backlog().clone(),
            sink.metrics().clone(),
        )
    }
}

/// Loads the policy bundle, checking its signature when keys are given.
pub fn load_policy(path: &Path, keys: Option<&KeyRing>) -> Result<PolicyBundle, PolicyError> {
    match keys {
        Some(keys) => clawgress_policies::load_file_verified(path, keys).map(|(bundle, signature)| {
            tracing::info!(key_id = %signature.key_id, "policy bundle signature verified");
            bundle
        }),
        None => clawgress_policies::load_file(path),
    }
}

/// The `reason` of a `policy_rejected` line for a bundle that failed to load.
pub fn rejection_reason(error: &PolicyError) -> &'static str {
    match error {
        PolicyError::Unsigned { problem, .. } => problem.code(),
        _ => "invalid_bundle",
    }
}

/// Which keys a bundle must be signed by, and the count of bundles refused.
pub struct PolicyTrust {
    pub keys: Option<Arc<KeyRing>>,
    /// `policy_rejected_total{reason}`.
    rejected: IntCounterVec,
}

impl PolicyTrust {
    pub fn new(keys: Option<Arc<KeyRing>>, registry: Registry) -> prometheus::Result<Self> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "policy_rejected_total",
                "Policy bundles refused on reload (the last good one stays), by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        // At 0 from the start: a series born at 1 hides its first increase.
        for reason in REJECTION_REASONS {
            rejected.with_label_values(&[reason]);
        }
        Ok(PolicyTrust { keys, rejected })
    }

    pub fn count_rejection(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
}

/// Every `reason` a rejection can have.
pub const REJECTION_REASONS: [&str; 5] = [
    "signature_missing",
    "signature_malformed",
    "unknown_key",
    "bad_signature",
    "invalid_bundle",
];
