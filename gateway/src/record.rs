//! The record phase: one audit line and one set of metric updates per
//! request, built from the request context and how the request ended.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clawgress_policies::matcher::Protocol as RuleProtocol;

use crate::Gateway;
use crate::audit::{
    AuditIdentity, AuditSlot, EgressEvent, EnforcementMode, Protocol, RequestSummary, ResponseSummary, Verdict,
};
use crate::context::{Outcome, RequestContext, RequestKind};
use crate::decision::{Enforcement, Refusal};
use crate::metrics::{DecisionLabel, NO_REASON};
use crate::proxy::body::Transfer;

/// Records a request whose response is still streaming: it holds the audit
/// slot until the body ends (or the client goes away) and then records with
/// the final byte counts and latency.
pub struct Finisher {
    gateway: Arc<Gateway>,
    ctx: RequestContext,
    slot: AuditSlot,
    status: u16,
    reset: bool,
}

impl Finisher {
    pub fn new(gateway: Arc<Gateway>, ctx: RequestContext, slot: AuditSlot, status: u16) -> Self {
        Finisher {
            gateway,
            ctx,
            slot,
            status,
            reset: false,
        }
    }

    /// The upstream broke the exchange after it had started.
    pub fn upstream_reset(&mut self) {
        self.reset = true;
    }

    pub fn finish(self, transfer: &Transfer) {
        let Finisher {
            gateway,
            mut ctx,
            slot,
            status,
            reset,
        } = self;
        ctx.bytes_out = transfer.bytes_out.load(Ordering::Relaxed);
        ctx.bytes_in = transfer.bytes_in.load(Ordering::Relaxed);
        if reset {
            gateway.metrics.record_upstream_reset();
        }
        record_served(&gateway, ctx, slot, status, reset);
    }
}

/// Records a request that ended without a streamed response.
pub fn record(gateway: &Gateway, ctx: RequestContext, slot: AuditSlot, outcome: Outcome) {
    match outcome {
        Outcome::Served { status } => record_served(gateway, ctx, slot, status, false),
        Outcome::Refused(refusal) => record_refused(gateway, ctx, slot, &refusal),
    }
}

fn record_served(gateway: &Gateway, ctx: RequestContext, slot: AuditSlot, status: u16, reset: bool) {
    let elapsed = ctx.started.elapsed();
    let (label, reason, verdict, policy_id) = match &ctx.would_deny {
        Some((reason, policy_id)) => (
            DecisionLabel::WouldDeny,
            *reason,
            Verdict::WouldDeny { reason, alert: true },
            policy_id.to_string(),
        ),
        None => {
            let allowed_by = ctx.allowed_by.as_ref();
            (
                DecisionLabel::Allow,
                NO_REASON,
                Verdict::Allow {
                    allowed_by: allowed_by.map(|a| a.group.to_string()),
                },
                allowed_by.map(|a| a.policy_id.to_string()).unwrap_or_default(),
            )
        }
    };
    let (label, reason) = if reset {
        (DecisionLabel::Error, "upstream_reset")
    } else {
        (label, reason)
    };
    gateway.metrics.record_request(label, reason, Some(status), elapsed);
    gateway.metrics.record_bytes(ctx.bytes_out, ctx.bytes_in);

    let mut event = event(gateway, &ctx, verdict, policy_id);
    event.response = Some(ResponseSummary {
        status,
        latency_ms: elapsed.as_millis() as u64,
        size_bytes: ctx.bytes_in,
    });
    if reset {
        event.upstream_error = Some("upstream_reset");
    }
    slot.record(event);
}

fn record_refused(gateway: &Gateway, ctx: RequestContext, slot: AuditSlot, refusal: &Refusal) {
    let elapsed = ctx.started.elapsed();
    let status = refusal.status().as_u16();
    let reason = refusal.reason();
    let event = if let Refusal::Upstream(_) = refusal {
        // The policy allowed it; the upstream failed. That is an error, not a denial.
        gateway
            .metrics
            .record_request(DecisionLabel::Error, reason, Some(status), elapsed);
        let allowed_by = ctx.allowed_by.as_ref();
        let mut event = event(
            gateway,
            &ctx,
            Verdict::Allow {
                allowed_by: allowed_by.map(|a| a.group.to_string()),
            },
            allowed_by.map(|a| a.policy_id.to_string()).unwrap_or_default(),
        );
        event.upstream_error = Some(reason);
        event.response = Some(ResponseSummary {
            status,
            latency_ms: elapsed.as_millis() as u64,
            size_bytes: 0,
        });
        event
    } else {
        gateway
            .metrics
            .record_request(DecisionLabel::Deny, reason, Some(status), elapsed);
        event(
            gateway,
            &ctx,
            Verdict::Deny {
                reason,
                alert: refusal.alert(),
            },
            refusal.policy_id().to_string(),
        )
    };
    slot.record(event);
}

fn event(gateway: &Gateway, ctx: &RequestContext, verdict: Verdict, policy_id: String) -> EgressEvent {
    let identity = ctx
        .identity
        .as_ref()
        .map(|i| AuditIdentity {
            agent_id: Some(i.agent_id.to_string()),
            team_id: Some(i.team.to_string()),
            project_id: Some(i.project.to_string()),
            environment: Some(i.environment.to_string()),
            session_id: i.session_id.as_ref().map(|s| s.to_string()),
            task_slug: None,
        })
        .unwrap_or_default();
    let destination = ctx.destination.as_ref();
    let request = RequestSummary::new(
        ctx.method.as_str(),
        destination.map_or("", |d| &*d.host),
        destination.map(|d| d.port),
        destination.and_then(|d| d.path.as_deref()),
    );
    let mode = match ctx.enforcement {
        Enforcement::Enforce => EnforcementMode::Enforce,
        Enforcement::Report => EnforcementMode::Report,
    };
    let mut event = EgressEvent::new(ctx.request_id, identity, request, verdict, policy_id, mode);
    event.timestamp = ctx.timestamp;
    event.trace_id = ctx.trace_id.clone();
    event.policy_version = Some(gateway.policy.load().version.clone());
    event.destination_ip = ctx.destination_ip();
    event.protocol = destination.map(|d| match d.protocol {
        RuleProtocol::Http => Protocol::Http,
        RuleProtocol::Https => Protocol::Https,
    });
    event.tunnel = ctx.kind == RequestKind::Connect;
    event.bytes_out = ctx.bytes_out;
    event.bytes_in = ctx.bytes_in;
    event.latency_ms = ctx.started.elapsed().as_millis() as u64;
    event
}
