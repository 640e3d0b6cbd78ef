//! The audit streams: one per class, each with the retention the seed asks
//! for (§4.3), and which subjects a line goes to.

use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};

const DAY: u64 = 24 * 3600;

/// A class of audit lines: its subject, stream and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStream {
    pub subject: &'static str,
    pub stream: &'static str,
    pub max_age: Duration,
}

/// Every audit stream. Retention: allowed 30 d, denied 1 y, rate limited
/// 90 d, alerts 2 y (seed 002 §4.3). Not in the seed:
/// - `audit.admin` (operator actions, policy rejections, the writer's own
///   markers and every signed checkpoint): 2 y, like alerts. Changes to what
///   agents may reach are the evidence an incident review starts from, and
///   the checkpoints must outlive every record they vouch for.
/// - `audit.dns`: 1 y. One stream holds answered and refused names alike,
///   and refused names are denied requests (1 y); whatever looks like
///   exfiltration carries `alert: true` and is kept 2 y in `audit.alert`.
pub const STREAMS: [AuditStream; 6] = [
    AuditStream {
        subject: "audit.allowed",
        stream: "AUDIT_ALLOWED",
        max_age: Duration::from_secs(30 * DAY),
    },
    AuditStream {
        subject: "audit.denied",
        stream: "AUDIT_DENIED",
        max_age: Duration::from_secs(365 * DAY),
    },
    AuditStream {
        subject: "audit.rate_limited",
        stream: "AUDIT_RATE_LIMITED",
        max_age: Duration::from_secs(90 * DAY),
    },
    AuditStream {
        subject: "audit.alert",
        stream: "AUDIT_ALERT",
        max_age: Duration::from_secs(2 * 365 * DAY),
    },
    AuditStream {
        subject: "audit.admin",
        stream: "AUDIT_ADMIN",
        max_age: Duration::from_secs(2 * 365 * DAY),
    },
    AuditStream {
        subject: "audit.dns",
        stream: "AUDIT_DNS",
        max_age: Duration::from_secs(365 * DAY),
    },
];

const ALLOWED: usize = 0;
const DENIED: usize = 1;
const RATE_LIMITED: usize = 2;
const ALERT: usize = 3;
const ADMIN: usize = 4;
const DNS: usize = 5;

/// A re-send of the same line (same hash) within this window is stored once.
/// NATS's default: the server keeps every id of the window in memory, so a
/// long window costs memory at high rates. A restart or outage shorter than
/// this re-sends nothing twice.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// The stream configuration for `stream` with `replicas` copies.
pub fn config(stream: &AuditStream, replicas: usize) -> stream::Config {
    stream::Config {
        name: stream.stream.to_string(),
        subjects: vec![stream.subject.to_string()],
        max_age: stream.max_age,
        num_replicas: replicas,
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        duplicate_window: DEDUP_WINDOW,
        ..Default::default()
    }
}

/// The streams a line of type `kind` goes to: its class, and `audit.alert`
/// too when it says `alert: true`. Lines of types this gateway does not know
/// (a newer writer's) go to `audit.admin` rather than nowhere.
pub fn classes(kind: &str, alert: bool) -> impl Iterator<Item = &'static AuditStream> {
    let class = match kind {
        "egress_request" => ALLOWED,
        "egress_denied" => DENIED,
        "egress_rate_limited" => RATE_LIMITED,
        "dns_query" => DNS,
        _ => ADMIN,
    };
    std::iter::once(&STREAMS[class]).chain(alert.then_some(&STREAMS[ALERT]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(kind: &str, alert: bool) -> Vec<&'static str> {
        classes(kind, alert).map(|s| s.subject).collect()
    }

    #[test]
    fn each_line_goes_to_its_class_and_alerts_also_to_audit_alert() {
        assert_eq!(subjects("egress_request", false), ["audit.allowed"]);
        assert_eq!(subjects("egress_request", true), ["audit.allowed", "audit.alert"]);
        assert_eq!(subjects("egress_denied", true), ["audit.denied", "audit.alert"]);
        assert_eq!(subjects("egress_rate_limited", false), ["audit.rate_limited"]);
        assert_eq!(subjects("dns_query", false), ["audit.dns"]);
        for kind in [
            "admin_action",
            "checkpoint",
            "audit_chain_resumed",
            "policy_rejected",
            "new_kind",
        ] {
            assert_eq!(subjects(kind, false), ["audit.admin"], "{kind}");
        }
        assert_eq!(subjects("policy_rejected", true), ["audit.admin", "audit.alert"]);
    }

    #[test]
    fn retention_follows_the_seed() {
        let age = |subject: &str| {
            STREAMS
                .iter()
                .find(|s| s.subject == subject)
                .map(|s| s.max_age.as_secs() / DAY)
        };
        assert_eq!(age("audit.allowed"), Some(30));
        assert_eq!(age("audit.denied"), Some(365));
        assert_eq!(age("audit.rate_limited"), Some(90));
        assert_eq!(age("audit.alert"), Some(730));
    }
}
