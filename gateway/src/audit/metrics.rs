//! The audit trail's Prometheus metrics: the writer's, and the shipper's
//! backlog (the local file is the write-ahead queue of the audit streams).

use prometheus::{IntCounter, IntGauge, Registry};

/// The writer's and the shipper's metrics. Cheap to clone (each is an `Arc`).
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    pub lines_written: IntCounter,
    pub write_errors: IntCounter,
    /// `reserve()` refused because every slot was taken.
    pub queue_full: IntCounter,
    /// Slots reserved by in-flight requests plus events waiting to be written.
    pub queue_depth: IntGauge,
    /// Slots dropped without a record: a request that may have been served
    /// without an audit line. Should stay at zero; alert if not.
    pub slots_abandoned: IntCounter,
    /// Responses whose record the writer did not confirm within the bound:
    /// cut (`fail_mode: closed`) or released (`open`).
    pub confirm_timeouts: IntCounter,
    /// Signed checkpoints written (`--audit-key`).
    pub checkpoints: IntCounter,
    /// Bytes of the trail written but not yet acknowledged by the audit streams.
    pub backlog_bytes: IntGauge,
    /// Age of the oldest record not yet acknowledged by the audit streams.
    pub backlog_age_seconds: IntGauge,
    /// `--audit-wal-max-bytes`: the bound on the backlog.
    pub backlog_max_bytes: IntGauge,
    /// 1 while the backlog is at its bound (`fail_mode` decides).
    pub backlog_full: IntGauge,
    /// Records acknowledged by the audit streams.
    pub shipped: IntCounter,
    /// Publishes that failed or timed out (each is retried).
    pub ship_errors: IntCounter,
    /// 1 while the shipper is connected and its streams are usable.
    pub shipper_up: IntGauge,
}

impl AuditMetrics {
    /// Registers every audit metric in `registry`. `queue_full_help` says
    /// what a full queue means for this process (refused requests, SERVFAIL).
    pub fn register(registry: &Registry, queue_full_help: &str) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        Ok(AuditMetrics {
            lines_written: counter("audit_lines_written_total", "Audit lines written")?,
            write_errors: counter("audit_write_errors_total", "Audit write or fsync failures")?,
            queue_full: counter("audit_queue_full_total", queue_full_help)?,
            queue_depth: gauge(
                "audit_queue_depth",
                "Audit slots reserved by in-flight requests or waiting to be written",
            )?,
            slots_abandoned: counter(
                "audit_slots_abandoned_total",
                "Audit slots released without a record (possible unaudited request)",
            )?,
            confirm_timeouts: counter(
                "audit_confirm_timeouts_total",
                "Responses whose audit record was not confirmed written in time",
            )?,
            checkpoints: counter("audit_checkpoints_total", "Signed audit checkpoints written")?,
            backlog_bytes: gauge(
                "audit_wal_backlog_bytes",
                "Audit bytes written locally but not yet acknowledged by the audit streams",
            )?,
            backlog_age_seconds: gauge(
                "audit_wal_backlog_age_seconds",
                "Age of the oldest audit record not yet acknowledged by the audit streams",
            )?,
            backlog_max_bytes: gauge(
                "audit_wal_max_bytes",
                "The bound on unshipped audit bytes (--audit-wal-max-bytes); 0 when not shipping",
            )?,
            backlog_full: gauge("audit_wal_full", "1 while the unshipped audit backlog is at its bound")?,
            shipped: counter("audit_shipped_total", "Audit records acknowledged by the audit streams")?,
            ship_errors: counter(
                "audit_ship_errors_total",
                "Audit stream publishes that failed or timed out (retried)",
            )?,
            shipper_up: gauge(
                "audit_shipper_up",
                "1 while the audit shipper is connected and its streams are usable",
            )?,
        })
    }

    /// Metrics registered nowhere, for tools and tests.
    pub fn detached() -> prometheus::Result<Self> {
        AuditMetrics::register(&Registry::new(), "queue full")
    }
}
