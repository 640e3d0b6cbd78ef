//! The record phase: one audit line and one set of metric updates per
//! request, built from the request context and how the request ended.
//!
//! Once a request has been admitted, a [`Finisher`] owns its context and its
//! audit slot. Whatever happens next (the upstream fails, the client goes
//! away before the response head, the response streams to its end, a tunnel
//! is cut at shutdown) the finisher records exactly once: explicitly, or on
//! drop. Traffic that reached an upstream can never go unrecorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clawgress_policies::matcher::Protocol as RuleProtocol;
use http::Response;

use crate::Gateway;
use crate::audit::{
    AuditIdentity, AuditSlot, Confirmation, EgressEvent, EnforcementMode, Protocol, RequestSummary, ResponseSummary,
    Verdict,
};
use crate::context::{Outcome, RequestContext, RequestKind};
use crate::decision::{Enforcement, Refusal};
use crate::metrics::{DecisionLabel, NO_REASON};
use crate::proxy::body::{ProxyBody, Transfer};
use crate::response::refusal_response;

pub struct Finisher {
    // Boxed: the context is large, and the finisher rides inside every
    // streamed response body.
    pending: Option<Box<Pending>>,
}

struct Pending {
    gateway: Arc<Gateway>,
    ctx: RequestContext,
    slot: AuditSlot,
    transfer: Arc<Transfer>,
    /// Status and time to the response head, once the upstream answered.
    head: Option<(u16, Duration)>,
    reset: bool,
    /// Why the gateway itself ended the exchange early, if it did.
    cut: Option<&'static str>,
}

impl Finisher {
    pub fn new(gateway: Arc<Gateway>, ctx: RequestContext, slot: AuditSlot, transfer: Arc<Transfer>) -> Self {
        Finisher {
            pending: Some(Box::new(Pending {
                gateway,
                ctx,
                slot,
                transfer,
                head: None,
                reset: false,
                cut: None,
            })),
        }
    }

    /// The upstream answered (or the tunnel was set up) with `status`.
    pub fn served(&mut self, status: u16) {
        if let Some(p) = self.pending.as_mut() {
            p.head = Some((status, p.ctx.started.elapsed()));
        }
    }

    /// The upstream broke the exchange after it had started.
    pub fn upstream_reset(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            p.reset = true;
        }
    }

    /// The gateway ended the exchange itself (an emergency block cut a tunnel).
    pub fn cut(&mut self, reason: &'static str) {
        if let Some(p) = self.pending.as_mut() {
            p.cut = Some(reason);
        }
    }

    pub fn context(&self) -> Option<&RequestContext> {
        self.pending.as_ref().map(|p| &p.ctx)
    }

    /// For what is learned after the answer (a tunnel's ClientHello).
    pub fn context_mut(&mut self) -> Option<&mut RequestContext> {
        self.pending.as_mut().map(|p| &mut p.ctx)
    }

    /// Records the exchange now; the confirmation resolves once the record
    /// is in the trail.
    pub fn finish(mut self) -> Confirmation {
        match self.pending.take() {
            Some(pending) => pending.record(None),
            None => Confirmation::done(),
        }
    }

    /// Whether this agent's `egress.fail_mode` is `open`: a response whose
    /// record cannot be confirmed is then released rather than cut.
    pub fn fails_open(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| {
            p.ctx.identity.as_ref().is_some_and(|identity| {
                p.gateway.policy.load().fail_mode_for(&identity.environment)
                    == clawgress_policies::model::FailMode::Open
            })
        })
    }

    /// Answers with a refusal and records it, with whatever bytes already
    /// went out. Nobody waits for the record: for a connection that is
    /// closed rather than answered.
    pub fn refuse(mut self, refusal: Refusal) -> Response<ProxyBody> {
        match self.pending.take() {
            Some(pending) => {
                let response = refusal_response(&pending.ctx, &refusal);
                pending.record(Some(refusal)).detach();
                response
            }
            None => Response::new(ProxyBody::empty()),
        }
    }

    /// [`Finisher::refuse`] for a refusal the client will read: the answer
    /// is released only once its record is in the trail (or the wait for it
    /// gave up, see [`confirmed`]).
    pub async fn refuse_confirmed(mut self, refusal: Refusal) -> Response<ProxyBody> {
        match self.pending.take() {
            Some(pending) => {
                let gateway = pending.gateway.clone();
                let response = refusal_response(&pending.ctx, &refusal);
                confirmed(&gateway, pending.record(Some(refusal))).await;
                response
            }
            None => Response::new(ProxyBody::empty()),
        }
    }
}

/// Waits (at most [`crate::audit::CONFIRM_TIMEOUT`]) for a refusal's record
/// before the refusal is sent; whether it came. A refusal goes out either
/// way: it serves nothing, and its record is still queued.
pub async fn confirmed(gateway: &Gateway, confirmation: Confirmation) -> bool {
    match confirmation.within(crate::audit::CONFIRM_TIMEOUT).await {
        Ok(()) => true,
        Err(unconfirmed) => {
            gateway.audit.metrics().confirm_timeouts.inc();
            tracing::warn!("{unconfirmed}; the refusal is sent anyway");
            false
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            // Dropped before an answer: the client went away (or the worker
            // stopped) while the upstream exchange was under way.
            let refusal = pending.head.is_none().then_some(Refusal::ClientClosed);
            pending.record(refusal).detach();
        }
    }
}

impl Pending {
    fn record(self: Box<Self>, refusal: Option<Refusal>) -> Confirmation {
        let Pending {
            gateway,
            mut ctx,
            slot,
            transfer,
            head,
            reset,
            cut,
        } = *self;
        ctx.bytes_out = transfer.bytes_out.load(Ordering::Relaxed);
        ctx.bytes_in = transfer.bytes_in.load(Ordering::Relaxed);
        match (refusal, head) {
            (Some(refusal), _) => record_refused(&gateway, ctx, slot, &refusal),
            (None, Some((status, head_latency))) => {
                if reset {
                    gateway.metrics.record_upstream_reset();
                }
                record_served(&gateway, ctx, slot, status, head_latency, reset, cut)
            }
            (None, None) => record_refused(&gateway, ctx, slot, &Refusal::ClientClosed),
        }
    }
}

/// Records a request that ended before anything was sent upstream.
pub fn record(gateway: &Gateway, ctx: RequestContext, slot: AuditSlot, outcome: Outcome) -> Confirmation {
    match outcome {
        Outcome::Served { status } => {
            let head = ctx.started.elapsed();
            record_served(gateway, ctx, slot, status, head, false, None)
        }
        Outcome::Refused(refusal) => record_refused(gateway, ctx, slot, &refusal),
    }
}

/// Settles the request's budget reservation (in the background: it may be
/// a NATS round trip): to the provider's usage when it reported one, in
/// full when the request reached the provider but usage is unknown, and to
/// nothing when nothing was sent.
fn settle_budget(gateway: &Gateway, ctx: &RequestContext, reached: bool) {
    let Some(reservation) = ctx.budget.clone() else {
        return;
    };
    let usage = ctx
        .ai
        .as_ref()
        .and_then(|ai| ai.tokens_in.zip(ai.tokens_out).or(ai.tokens_in.map(|i| (i, 0))));
    let store = gateway.budget_store.clone();
    let settle = async move {
        match (usage, reached) {
            (Some((tokens_in, tokens_out)), _) => {
                crate::budgets::settle_usage(&store, &reservation, tokens_in, tokens_out).await
            }
            (None, true) => crate::budgets::settle(&store, &reservation, None).await,
            (None, false) => crate::budgets::settle(&store, &reservation, Some((0, Some(0)))).await,
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(settle);
        }
        Err(_) => tracing::warn!("no runtime to settle a budget reservation; it stays reserved until its window ends"),
    }
}

fn record_served(
    gateway: &Gateway,
    mut ctx: RequestContext,
    slot: AuditSlot,
    status: u16,
    head_latency: Duration,
    reset: bool,
    cut: Option<&'static str>,
) -> Confirmation {
    let elapsed = ctx.started.elapsed();
    settle_budget(gateway, &ctx, true);
    let (label, reason, verdict, policy_id) = match &ctx.would_deny {
        Some((reason, policy_id)) => (
            DecisionLabel::WouldDeny,
            *reason,
            Verdict::WouldDeny { reason, alert: true },
            policy_id.to_string(),
        ),
        None => (DecisionLabel::Allow, NO_REASON, allowed(&ctx), allowed_policy_id(&ctx)),
    };
    let (label, reason) = if reset {
        (DecisionLabel::Error, "upstream_reset")
    } else {
        (label, reason)
    };
    gateway.metrics.record_request(label, reason, Some(status), elapsed);
    gateway.metrics.record_bytes(ctx.bytes_out, ctx.bytes_in);
    tally(gateway, &ctx, label, reason);

    let mut event = event(&mut ctx, verdict, policy_id);
    event.response = Some(ResponseSummary {
        status,
        latency_ms: head_latency.as_millis() as u64,
        size_bytes: ctx.bytes_in,
    });
    if reset {
        event.upstream_error = Some("upstream_reset");
    }
    if cut.is_some() {
        event.upstream_error = cut;
    }
    slot.record_confirmed(event)
}

fn record_refused(gateway: &Gateway, mut ctx: RequestContext, slot: AuditSlot, refusal: &Refusal) -> Confirmation {
    let elapsed = ctx.started.elapsed();
    settle_budget(gateway, &ctx, ctx.bytes_out > 0);
    let status = refusal.status().as_u16();
    let reason = refusal.reason();
    gateway.metrics.record_bytes(ctx.bytes_out, ctx.bytes_in);
    let event = if refusal.is_failure_after_allow() {
        // The policy allowed it; the exchange then failed. That is an error,
        // not a denial, and the bytes that went out are on the record.
        gateway
            .metrics
            .record_request(DecisionLabel::Error, reason, Some(status), elapsed);
        tally(gateway, &ctx, DecisionLabel::Error, reason);
        let (verdict, policy_id) = (allowed(&ctx), allowed_policy_id(&ctx));
        let mut event = event(&mut ctx, verdict, policy_id);
        event.upstream_error = Some(reason);
        event.response = Some(ResponseSummary {
            status,
            latency_ms: elapsed.as_millis() as u64,
            size_bytes: 0,
        });
        event
    } else if matches!(refusal, Refusal::RateLimited(_) | Refusal::AgentRateReduced { .. })
        || matches!(refusal, Refusal::Contained(overflow) if overflow.is_retryable())
    {
        // Load refusals, not policy denials: the agent may retry later.
        gateway
            .metrics
            .record_request(DecisionLabel::RateLimited, reason, Some(status), elapsed);
        tally(gateway, &ctx, DecisionLabel::RateLimited, reason);
        event(
            &mut ctx,
            Verdict::RateLimited { reason },
            refusal.policy_id().to_string(),
        )
    } else {
        gateway
            .metrics
            .record_request(DecisionLabel::Deny, reason, Some(status), elapsed);
        tally(gateway, &ctx, DecisionLabel::Deny, reason);
        event(
            &mut ctx,
            Verdict::Deny {
                reason,
                alert: refusal.alert(),
            },
            refusal.policy_id().to_string(),
        )
    };
    slot.record_confirmed(event)
}

/// The per-agent and per-host counts, and the dashboard's latest denials.
fn tally(gateway: &Gateway, ctx: &RequestContext, label: DecisionLabel, reason: &'static str) {
    let agent = ctx.identity.as_ref().map(|i| &*i.agent_id);
    let host = ctx.destination.as_ref().map(|d| &*d.host);
    // A request refused for its credential (407) was not denied its
    // destination: keep that out of the top denied domains. Transparent
    // connections name no credential; their destinations count as before.
    let denied_host = host.filter(|_| agent.is_some() || ctx.original_destination.is_some());
    gateway.metrics.record_parties(label, agent, denied_host);
    if !ctx.span.is_disabled() {
        ctx.span
            .record("agent", agent.unwrap_or(crate::metrics::ANONYMOUS_AGENT));
        ctx.span.record("destination", host.unwrap_or("-"));
        ctx.span.record("decision", label.as_str());
        ctx.span.record("reason", reason);
    }
    if label == DecisionLabel::Deny {
        gateway.dashboard.note_denial(crate::dashboard::Denial {
            at: ctx.timestamp,
            agent: agent.map(str::to_string),
            claimed_agent: ctx.claimed_agent.clone(),
            host: host.map(str::to_string),
            port: ctx.destination.as_ref().map(|d| d.port),
            reason,
            request_id: ctx.request_id.to_string(),
        });
    }
}

fn allowed(ctx: &RequestContext) -> Verdict {
    match &ctx.would_deny {
        Some((reason, _)) => Verdict::WouldDeny { reason, alert: true },
        None => Verdict::Allow {
            allowed_by: ctx.allowed_by.as_ref().map(|a| a.group.to_string()),
        },
    }
}

fn allowed_policy_id(ctx: &RequestContext) -> String {
    match &ctx.would_deny {
        Some((_, policy_id)) => policy_id.to_string(),
        None => ctx
            .allowed_by
            .as_ref()
            .map(|a| a.policy_id.to_string())
            .unwrap_or_default(),
    }
}

/// The audit event of a finished request; the inspection results move
/// into it rather than being copied.
fn event(ctx: &mut RequestContext, verdict: Verdict, policy_id: String) -> EgressEvent {
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
    let mut request = RequestSummary::new(
        ctx.method.as_str(),
        destination.map_or("", |d| &*d.host),
        destination.map(|d| d.port),
        destination.and_then(|d| d.path.as_deref()),
    );
    request.size_bytes = (ctx.bytes_out > 0).then_some(ctx.bytes_out);
    request.body_sha256 = ctx.body_sha256.clone();
    let mode = match ctx.enforcement {
        Enforcement::Enforce => EnforcementMode::Enforce,
        Enforcement::Report => EnforcementMode::Report,
    };
    let mut event = EgressEvent::new(ctx.request_id, identity, request, verdict, policy_id, mode);
    event.timestamp = ctx.timestamp;
    event.trace_id = ctx.trace_id.clone();
    event.fail_open = ctx.fail_open;
    event.policy_version = ctx.policy_version.as_ref().map(|v| v.to_string());
    event.destination_ip = ctx.destination_ip();
    event.destination_asn = ctx.geo.and_then(|g| g.asn);
    event.destination_geo = ctx.geo.and_then(|g| g.country);
    event.protocol = destination.map(|d| match d.protocol {
        RuleProtocol::Http => Protocol::Http,
        RuleProtocol::Https => Protocol::Https,
    });
    event.tunnel = ctx.kind == RequestKind::Connect;
    event.mode = match (&ctx.client_certificate, ctx.original_destination) {
        (Some(_), _) => Some("mtls"),
        (None, Some(_)) => Some("transparent"),
        (None, None) => None,
    };
    event.original_destination = ctx.original_destination;
    event.client_ip = ctx.record_client.then(|| ctx.client.ip().to_canonical());
    event.claimed_agent_id = ctx.claimed_agent.take();
    event.bytes_out = ctx.bytes_out;
    event.bytes_in = ctx.bytes_in;
    event.latency_ms = ctx.started.elapsed().as_millis() as u64;
    event.dlp_matches = std::mem::take(&mut ctx.dlp_matches);
    event.dlp_skipped = ctx.uninspected;
    event.alert = ctx.alert;
    event.tls = ctx.tls.take();
    if let Some(certificate) = &ctx.client_certificate {
        event.tls.get_or_insert_with(Default::default).client_certificate = Some((**certificate).clone());
    }
    event.ai = ctx.ai.take();
    event.budget = ctx.budget.take();
    event
}
