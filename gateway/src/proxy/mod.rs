//! The explicit forward proxy: one pipeline of phases over one
//! [`RequestContext`].
//!
//! identify → classify → decide → (forward | tunnel) → record
//!
//! `admit` runs the first three phases and either returns what the last
//! phases need or a [`Refusal`]; refusals become responses in
//! [`crate::response`] and audit lines in [`crate::record`], each in one place.

pub mod body;
mod forward;
pub mod head;
mod intercept;
pub mod mtls;
pub mod server;
mod target;
pub mod transparent;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use clawgress_policies::matcher::{DenyReason, MatchOutcome, MatchRequest, Protocol};
use http::{Method, Request, Response, header};
use hyper::body::Incoming;

use crate::Gateway;
use crate::audit::AuditSlot;
use crate::context::{Destination, Outcome, RequestContext, RequestKind, decision_span};
use crate::control::ControlVerdict;
use crate::decision::{Enforcement, Refusal, RequestProblem};
use crate::dns::{AddressClass, Host, classify, parse_host};
use crate::limits::{LimitKey, LimitVerdict};
use crate::metrics::DecisionLabel;
use crate::record::record;
use crate::response::refusal_response;
use crate::state::PolicySnapshot;
use body::ProxyBody;
use clawgress_policies::model::{FailMode, ThrottleAction};
use target::{check_addresses, dns_result, is_loop, pinned_to_original, request_target};

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The explicit proxy port: the agent names itself (`Proxy-Authorization`)
    /// and its destination (absolute-form or CONNECT).
    Explicit,
    /// Redirected to the transparent listener by nftables: the agent is its
    /// source address, the destination the connection's original one.
    Transparent { original: SocketAddr },
    /// The mTLS listener: requests shaped as on the explicit port, the
    /// agent named by the client certificate (an `Arc<MtlsPeer>` in the
    /// request's extensions).
    Mtls,
}

impl Entry {
    /// Proxy-shaped requests: absolute-form or CONNECT.
    fn is_proxy(self) -> bool {
        matches!(self, Entry::Explicit | Entry::Mtls)
    }
}

/// The proxy's answer to one request. Never an error: every failure is a
/// response the client can read.
pub async fn handle(gateway: Arc<Gateway>, client: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
    handle_entry(gateway, client, Entry::Explicit, req).await
}

/// [`handle`], for a request that came in as `entry` says.
pub(crate) async fn handle_entry(
    gateway: Arc<Gateway>,
    client: SocketAddr,
    entry: Entry,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let kind = if req.method() == Method::CONNECT && entry.is_proxy() {
        RequestKind::Connect
    } else {
        RequestKind::Forward
    };
    let (span, trace_id) = decision_span(req.headers().get("traceparent"));
    let mut ctx = RequestContext::new(client, req.method().clone(), kind, trace_id);
    ctx.span = span;
    if let Entry::Transparent { original } = entry {
        ctx.original_destination = Some(original);
        ctx.record_client = true;
    }
    if entry == Entry::Mtls {
        ctx.client_certificate = mtls::peer(&req).map(|peer| peer.record.clone());
    }

    // Reserve the audit record first: a request we could not record is a
    // request we must not serve (fail closed).
    let slot = match gateway.audit.reserve() {
        Ok(slot) => Some(slot),
        // Unless this agent's environment is configured to fail open.
        Err(unavailable) if audit_fails_open(&gateway, entry, client, &req) => {
            ctx.fail_open = Some("audit_sink");
            gateway.metrics.record_fail_open("audit_sink");
            // The streams are behind, not the file: keep writing the file
            // past its bound (never drop a record); else the log keeps it.
            let past_backlog = (unavailable == crate::audit::AuditUnavailable::BacklogFull)
                .then(|| gateway.audit.reserve_past_backlog().ok())
                .flatten();
            Some(past_backlog.unwrap_or_else(|| AuditSlot::fail_open(&gateway.audit)))
        }
        Err(_) => None,
    };
    let Some(slot) = slot else {
        let refusal = Refusal::AuditUnavailable;
        let response = refusal_response(&ctx, &refusal);
        gateway.metrics.record_request(
            DecisionLabel::Deny,
            refusal.reason(),
            Some(refusal.status().as_u16()),
            ctx.started.elapsed(),
        );
        return response;
    };

    let policy = gateway.policy.load_full();
    match admit(&gateway, &policy, &mut ctx, entry, &req).await {
        Ok(()) => match kind {
            RequestKind::Connect => tunnel::open(gateway, policy, ctx, slot, req).await,
            RequestKind::Forward | RequestKind::Intercepted => forward::forward(gateway, policy, ctx, slot, req).await,
        },
        Err(refusal) => refuse_answered(&gateway, ctx, slot, refusal).await,
    }
}

/// How a temporary entry appears in the audit line and metrics.
fn temporary_allow(entry: &crate::control::TempAllow) -> clawgress_policies::AllowedBy {
    clawgress_policies::AllowedBy {
        policy_id: Arc::from(format!("control.allow.{}", entry.id)),
        group: Arc::from("temporary"),
        private_ok: false,
        tls: Default::default(),
        tls_origination: false,
        rate_limit: None,
    }
}

/// Whether the requesting agent (if it identifies) is in an environment
/// whose `egress.fail_mode` is `open`.
fn audit_fails_open(gateway: &Gateway, entry: Entry, client: SocketAddr, req: &Request<Incoming>) -> bool {
    let identities = gateway.identities.load();
    let identity = match entry {
        Entry::Explicit => identities.identify(req.headers().get(header::PROXY_AUTHORIZATION)),
        Entry::Transparent { .. } => identities.by_source(client.ip()),
        Entry::Mtls => mtls::peer(req)
            .ok_or(crate::identity::IdentityError::Missing)
            .and_then(|peer| identities.by_certificate(&peer.names)),
    };
    let Ok(identity) = identity else {
        return false;
    };
    gateway.policy.load().fail_mode_for(&identity.environment) == FailMode::Open
}

/// Records a refusal for a connection that is closed rather than answered
/// (the transparent listener's); returns the answer it would have had.
fn refuse(gateway: &Gateway, ctx: RequestContext, slot: AuditSlot, refusal: Refusal) -> Response<ProxyBody> {
    let response = refusal_response(&ctx, &refusal);
    record(gateway, ctx, slot, Outcome::Refused(refusal)).detach();
    response
}

/// Answers with a refusal once its record is in the trail: a client never
/// holds an answer that a crash could leave unrecorded.
async fn refuse_answered(
    gateway: &Gateway,
    ctx: RequestContext,
    slot: AuditSlot,
    refusal: Refusal,
) -> Response<ProxyBody> {
    let response = refusal_response(&ctx, &refusal);
    crate::record::confirmed(gateway, record(gateway, ctx, slot, Outcome::Refused(refusal))).await;
    response
}

/// Where a request is going, as its first phase read it: from the request
/// line (explicit), or from the Host header, SNI and original destination
/// (transparent).
pub(crate) struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    pub path: Option<String>,
    /// The port was written out (an explicit `:80` is kept by TLS origination).
    pub explicit_port: bool,
    /// The body's declared length, for containment.
    pub declared: u64,
}

/// Identify, classify and decide. On success `ctx` carries the identity, the
/// checked destination (with the exact address to dial) and the rule that
/// allowed it.
async fn admit(
    gateway: &Gateway,
    policy: &PolicySnapshot,
    ctx: &mut RequestContext,
    entry: Entry,
    req: &Request<Incoming>,
) -> Result<(), Refusal> {
    let identities = gateway.identities.load();
    // A redirected request's audit line names its agent and where it was
    // going, whatever is wrong with the request.
    let sourced = match entry {
        Entry::Transparent { .. } => identities.by_source(ctx.client.ip()),
        Entry::Explicit | Entry::Mtls => Err(crate::identity::IdentityError::Missing),
    };
    if let Entry::Transparent { original } = entry {
        ctx.identity = sourced.as_ref().ok().cloned();
        ctx.destination = Some(Destination {
            host: Arc::from(original.ip().to_string()),
            port: original.port(),
            protocol: Protocol::Http,
            path: Some(crate::context::audit_path(req.uri().path())),
            addr: None,
        });
    }
    // Shape first: an origin-form request is answered before anything else,
    // so a client that mistook us for the origin gets a clear 400.
    let (host, port, protocol, path) = match entry {
        Entry::Explicit | Entry::Mtls => request_target(ctx.kind, req)?,
        Entry::Transparent { original } => transparent::http_target(req, original)?,
    };
    let target = Target {
        host,
        port,
        protocol,
        path,
        explicit_port: req.uri().authority().and_then(|a| a.port_u16()).is_some(),
        declared: body::declared_length(req.headers()).unwrap_or(0),
    };

    // Identify: the credential, from where its agent may use it; or, for a
    // redirected connection, the source address alone.
    let identity = match entry {
        Entry::Explicit => {
            let credential = req.headers().get(header::PROXY_AUTHORIZATION);
            let identity = identities.identify(credential).map_err(|error| {
                // The refusal's audit line still says where the request was
                // going and whom it claimed to be.
                note_unidentified(ctx, &target, credential);
                Refusal::Identity(error)
            })?;
            ctx.identity = Some(identity.clone());
            if let Err(mismatch) = identities.check_source(&identity, ctx.client.ip()) {
                ctx.record_client = true;
                return Err(Refusal::Identity(mismatch));
            }
            identity
        }
        Entry::Transparent { .. } => sourced.map_err(Refusal::Identity)?,
        Entry::Mtls => mtls::identify(&identities, ctx, req)?,
    };
    if is_loop(req) {
        ctx.identity = Some(identity);
        return Err(Refusal::Request(RequestProblem::ProxyLoop));
    }
    decide(gateway, policy, ctx, identity, target).await
}

/// What a request refused for its credential tells the audit: the
/// destination it asked for (normalized when the host parses) and the agent
/// id a Basic credential claims, never its key.
fn note_unidentified(ctx: &mut RequestContext, target: &Target<'_>, credential: Option<&http::HeaderValue>) {
    let host: Arc<str> = match parse_host(target.host) {
        Ok(Host::Domain(name)) => Arc::from(name.as_str()),
        Ok(Host::Ip(ip)) => Arc::from(ip.to_string()),
        Err(_) => Arc::from(target.host),
    };
    ctx.destination = Some(Destination {
        host,
        port: target.port,
        protocol: target.protocol,
        path: target.path.clone(),
        addr: None,
    });
    ctx.claimed_agent = crate::identity::IdentityResolver::claimed_agent_id(credential);
}

/// Classify and decide for an identified agent: the policy, temporary
/// allows, DNS and the address checks, then the per-exchange limits. Shared
/// by every entry: explicit requests, transparent HTTP and transparent TLS.
pub(crate) async fn decide(
    gateway: &Gateway,
    policy: &PolicySnapshot,
    ctx: &mut RequestContext,
    identity: Arc<crate::identity::Identity>,
    target: Target<'_>,
) -> Result<(), Refusal> {
    let Target {
        host,
        port,
        protocol,
        path,
        explicit_port,
        declared,
    } = target;
    ctx.enforcement = policy.enforcement_for(&identity.environment);
    ctx.identity = Some(identity.clone());
    ctx.policy_version = Some(policy.version.clone());

    // Control: an operator's emergency block stops every agent. A replica
    // that cannot know the control state lets `egress.fail_mode` decide.
    if !gateway.control.is_known() {
        if policy.fail_mode_for(&identity.environment) == FailMode::Closed {
            return Err(Refusal::ControlUnavailable);
        }
        ctx.fail_open.get_or_insert("control_store");
        gateway.metrics.record_fail_open("control_store");
    }

    // Classify.
    let host = parse_host(host).map_err(Refusal::MalformedHost)?;
    let host_text: Arc<str> = match &host {
        Host::Domain(name) => Arc::from(name.as_str()),
        Host::Ip(ip) => Arc::from(ip.to_string()),
    };
    ctx.destination = Some(Destination {
        host: host_text.clone(),
        port,
        protocol,
        path,
        addr: None,
    });
    // After classify, so an incident's audit lines show where agents tried to go.
    emergency_check(gateway)?;
    hold_check(gateway, &identity.agent_id, false)?;

    let now = chrono::Utc::now();
    // Decide: the allowlist before DNS, so a denied name is never resolved
    // (seed §6.2: resolution only succeeds for allowlisted names).
    let matched = policy.compiled.evaluate(
        &MatchRequest {
            host: &host_text,
            port,
            protocol,
            role: &identity.role,
        },
        now,
    );
    // TLS origination: a plain-HTTP request for a destination whose rule
    // allows only HTTPS, and says `tls_origination: true`, goes out over the
    // gateway's own verified TLS. Without an explicit port, 80 becomes 443.
    let (matched, port) = match matched {
        MatchOutcome::Deny(denial)
            if protocol == Protocol::Http
                && matches!(
                    denial.reason,
                    DenyReason::ProtocolNotAllowed | DenyReason::PortNotAllowed
                ) =>
        {
            let tls_port = if explicit_port { port } else { 443 };
            let upgraded = policy.compiled.evaluate(
                &MatchRequest {
                    host: &host_text,
                    port: tls_port,
                    protocol: Protocol::Https,
                    role: &identity.role,
                },
                now,
            );
            match upgraded {
                MatchOutcome::Allow(allowed) if allowed.tls_origination => {
                    ctx.originate = true;
                    if let Some(dest) = ctx.destination.as_mut() {
                        dest.port = tls_port;
                        dest.protocol = Protocol::Https;
                    }
                    (MatchOutcome::Allow(allowed), tls_port)
                }
                _ => (MatchOutcome::Deny(denial), port),
            }
        }
        other => (other, port),
    };
    // A live temporary entry (`clawgress egress allow-temp`, or an approved
    // request) opens what the allowlist does not; blocklists still win.
    let matched = match matched {
        MatchOutcome::Deny(denial) if denial.reason.is_open_to_temporary() => {
            // Only a denial pays for a look at the temporary entries.
            match gateway
                .control
                .snapshot()
                .check_for_team(&host_text, port, &identity.team, now)
            {
                ControlVerdict::TempAllowed(entry) => MatchOutcome::Allow(temporary_allow(entry)),
                _ => MatchOutcome::Deny(denial),
            }
        }
        other => other,
    };
    // A literal private address is refused as such, more specific than "not
    // in the allowlist", unless a rule explicitly allows private targets.
    if let Host::Ip(ip) = host
        && let AddressClass::Restricted(kind) = classify(ip)
        && !matches!(&matched, MatchOutcome::Allow(allowed) if allowed.private_ok)
    {
        return Err(Refusal::PrivateAddress(kind));
    }
    let private_ok = match matched {
        MatchOutcome::Allow(allowed_by) => {
            let private_ok = allowed_by.private_ok;
            ctx.allowed_by = Some(allowed_by);
            private_ok
        }
        MatchOutcome::Deny(denial) => {
            let refusal = Refusal::Policy {
                reason: denial.reason,
                policy_id: denial.policy_id,
            };
            if ctx.enforcement == Enforcement::Enforce {
                return Err(refusal);
            }
            ctx.would_deny = Some((refusal.reason(), refusal.policy_id()));
            false
        }
    };

    let ip = match host {
        Host::Ip(ip) => pinned_to_original(ctx, check_addresses(&[ip], private_ok, false)?, &[ip])?,
        Host::Domain(name) => {
            let resolved = policy.resolver.resolve(&name).await;
            if let Some(result) = dns_result(&resolved) {
                gateway.metrics.record_dns_lookup(result);
            }
            let resolved = resolved.map_err(Refusal::Dns)?;
            let first = check_addresses(&resolved.addrs, private_ok, policy.resolver.is_static(&name))?;
            pinned_to_original(ctx, first, &resolved.addrs)?
        }
    };
    if let Some(dest) = ctx.destination.as_mut() {
        dest.addr = Some(SocketAddr::new(ip, dest.port));
    }
    ctx.geo = policy.geoip.as_ref().map(|geoip| geoip.lookup(ip));
    admit_exchange(gateway, policy, ctx, declared).await
}

/// The per-exchange checks, for a request admitted here and for each
/// request inside an intercepted tunnel: containment, rate limits, the
/// emergency block and the destination's breaker.
async fn admit_exchange(
    gateway: &Gateway,
    policy: &PolicySnapshot,
    ctx: &mut RequestContext,
    declared: u64,
) -> Result<(), Refusal> {
    let (Some(identity), Some(host_text)) = (ctx.identity.clone(), ctx.destination.as_ref().map(|d| d.host.clone()))
    else {
        return Err(Refusal::Request(RequestProblem::MissingAuthority));
    };
    // Containment: this agent's share of the gateway (seed §5.2). Before the
    // limiters, so a request refused here spends no rate capacity, and a
    // request waiting in a limiter's queue holds its slot.
    let admission = gateway
        .containment
        .admit(&identity.agent_id, declared)
        .map_err(Refusal::Contained)?;
    ctx.admission = Some(Arc::new(admission));

    // Limit: after the decision (a denied request spends no capacity), before
    // any byte leaves.
    let key = LimitKey {
        agent: &identity.agent_id,
        project: &identity.project,
        domain: &host_text,
        domain_rate: ctx.allowed_by.as_ref().and_then(|a| a.rate_limit),
    };
    if policy.rate_limits_enabled {
        let verdict = match policy.limits.throttle_action() {
            ThrottleAction::Reject => policy.limits.check(&key),
            action => policy.limits.acquire(&key, action, policy.request_timeout).await,
        };
        if let LimitVerdict::Limited(limited) = verdict {
            return Err(Refusal::RateLimited(limited));
        }
    }

    // Again, after the waits above (DNS, a limiter's queue): a block issued
    // meanwhile stops the request before it leaves. A held agent's pacing
    // is counted here only, once per exchange.
    emergency_check(gateway)?;
    hold_check(gateway, &identity.agent_id, true)?;

    // Breaker: a failing destination fails fast instead of tying up agents.
    ctx.breaker = Some(policy.breakers.admit(&host_text).map_err(Refusal::CircuitOpen)?);
    Ok(())
}

/// An operator's emergency block stops every agent.
fn emergency_check(gateway: &Gateway) -> Result<(), Refusal> {
    gateway
        .control
        .emergency_incident()
        .map_or(Ok(()), |incident_id| Err(Refusal::EmergencyBlock { incident_id }))
}

/// A quarantined agent is refused; a rate-reduced one paced (seed 001
/// §5.7's risk actions, applied from the control store).
fn hold_check(gateway: &Gateway, agent_id: &str, pace: bool) -> Result<(), Refusal> {
    match gateway.control.hold_verdict(agent_id, pace) {
        None => Ok(()),
        Some(crate::control::HoldVerdict::Quarantined(held)) => Err(Refusal::AgentQuarantined(held)),
        Some(crate::control::HoldVerdict::Reduced {
            per_minute,
            retry_after,
        }) => Err(Refusal::AgentRateReduced {
            per_minute,
            retry_after,
        }),
    }
}
