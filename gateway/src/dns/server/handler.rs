//! One query, start to finish: read → identify → decide → answer → record.
//!
//! [`DnsHandler::answer`] takes the bytes a client sent and returns the
//! bytes to send back (or nothing), so the listeners stay dumb and the
//! tests can feed it anything. Every query, answered or dropped, leaves one
//! `dns_query` audit line and one `dns_queries_total` count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::Request;

use super::answer::{CachedResponse, MAX_CACHED_BYTES, secs};
use super::metrics::DnsMetrics;
use super::name::QueryName;
use super::policy::{DnsSnapshot, NameVerdict};
use super::reply::{self, rcode_text};
use super::upstream::{Upstream, UpstreamError};
use crate::audit::{AuditIdentity, AuditSink, DnsDecision, DnsEvent, DnsTransport, EnforcementMode, new_request_id};
use crate::control::ControlStore;
use crate::dns::refused_target;
use crate::identity::{Identity, IdentityResolver};

/// Everything a query needs; shared by every listener task.
pub struct DnsHandler {
    pub(super) policy: ArcSwap<DnsSnapshot>,
    pub(super) identities: ArcSwap<IdentityResolver>,
    pub(super) control: Arc<ControlStore>,
    pub(super) audit: AuditSink,
    pub(super) metrics: Arc<DnsMetrics>,
    pub(super) upstream: Upstream,
}

/// What the decision came to, before it is encoded.
enum Outcome {
    /// An rcode and no records.
    Refusal {
        decision: DnsDecision,
        rcode: ResponseCode,
        reason: &'static str,
    },
    /// What upstream (or the cache) said, for an allowed name.
    Forwarded {
        decision: DnsDecision,
        response: Arc<CachedResponse>,
        source: &'static str,
    },
    /// `dns.static_hosts`: the record, or none when the question asks for
    /// the other address family (NODATA).
    Pinned {
        decision: DnsDecision,
        record: Option<Box<Record>>,
    },
}

fn refusal(decision: DnsDecision, rcode: ResponseCode, reason: &'static str) -> Outcome {
    Outcome::Refusal {
        decision,
        rcode,
        reason,
    }
}

fn refused(reason: &'static str) -> Outcome {
    refusal(DnsDecision::Refused, ResponseCode::Refused, reason)
}

impl DnsHandler {
    /// The reply to one packet, or `None` when nothing should be sent (no
    /// readable header, or a response sent to us). Never panics on input.
    pub async fn answer(&self, packet: &[u8], client: SocketAddr, transport: DnsTransport) -> Option<Vec<u8>> {
        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        // Reserved first: a query we cannot record is a query we do not
        // answer (SERVFAIL), as the gateway does with requests.
        let slot = self.audit.reserve().ok();
        let mut event = DnsEvent::new(new_request_id(), client, transport, DnsDecision::Dropped);
        let reply = self.respond(packet, &mut event, slot.is_some()).await;
        event.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.metrics.record_query(event.decision);
        if event.alert {
            self.metrics.alerts.inc();
        }
        if let Some(slot) = slot {
            let routine = event.decision == DnsDecision::Answered && !event.alert;
            if routine && !self.policy.load().query_logging {
                slot.release();
            } else {
                slot.record(event);
            }
        }
        reply
    }

    async fn respond(&self, packet: &[u8], event: &mut DnsEvent, audited: bool) -> Option<Vec<u8>> {
        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            event.reason = Some("no_header");
            return None;
        };
        if header.metadata.message_type == MessageType::Response {
            // Answering answers lets two servers bounce packets forever.
            event.reason = Some("not_a_query");
            return None;
        }
        if !audited {
            let servfail = (DnsDecision::ServFail, ResponseCode::ServFail);
            return Some(header_refusal(event, &header, servfail, "audit_unavailable"));
        }
        let protocol = match event.transport {
            DnsTransport::Udp => Protocol::Udp,
            DnsTransport::Tcp => Protocol::Tcp,
        };
        let Ok(request) = Request::from_bytes(packet.to_vec(), event.client, protocol) else {
            let formerr = (DnsDecision::FormErr, ResponseCode::FormErr);
            return Some(header_refusal(event, &header, formerr, "malformed"));
        };
        let outcome = self.decide(&request, event).await;
        let (rcode, answers, authorities) = match outcome {
            Outcome::Refusal {
                decision,
                rcode,
                reason,
            } => {
                event.decision = decision;
                event.reason = Some(reason);
                (rcode, Vec::new(), Vec::new())
            }
            Outcome::Forwarded {
                decision,
                response,
                source,
            } => {
                event.decision = decision;
                event.source = Some(source);
                event.answers = response.answer_count();
                let (answers, authorities) = response.records_at(Instant::now());
                (response.rcode, answers, authorities)
            }
            Outcome::Pinned { decision, record } => {
                event.decision = decision;
                event.source = Some("static");
                event.answers = u16::from(record.is_some());
                (
                    ResponseCode::NoError,
                    record.into_iter().map(|r| *r).collect(),
                    Vec::new(),
                )
            }
        };
        event.rcode = Some(rcode_text(rcode));
        Some(reply::encode(&request, event.transport, rcode, &answers, &authorities))
    }

    async fn decide(&self, request: &Request, event: &mut DnsEvent) -> Outcome {
        if request.metadata.op_code != OpCode::Query {
            return refusal(DnsDecision::NotImplemented, ResponseCode::NotImp, "opcode_not_query");
        }
        let [query] = request.queries.queries() else {
            return refusal(DnsDecision::FormErr, ResponseCode::FormErr, "question_count");
        };
        let qtype = query.query_type();
        event.qtype = Some(type_text(qtype));
        let name = QueryName::read(query.name());
        event.set_qname(&name.text);
        if let Some(why) = name.alert {
            event.alert = true;
            event.alert_reason = Some(why);
        }
        if query.query_class() != DNSClass::IN {
            return refused("class_not_in");
        }
        match qtype {
            // A whole zone, or everything about a name: never what an agent needs.
            RecordType::ANY => return refused("any_query"),
            RecordType::AXFR | RecordType::IXFR => {
                return refusal(DnsDecision::NotImplemented, ResponseCode::NotImp, "zone_transfer");
            }
            _ => {}
        }

        // Identify: a query carries no credential, only its source address.
        let identity = match self.identities.load().by_source(event.client.ip()) {
            Ok(identity) => identity,
            Err(error) => return refused(error.reason()),
        };
        event.identity = audit_identity(&identity);
        let policy = self.policy.load_full();
        event.policy_version = Some(policy.version.to_string());
        let report = policy.reports_only(&identity.environment);
        if report {
            event.enforcement_mode = EnforcementMode::Report;
        }

        // Control: an emergency block stops every agent, DNS included.
        let control = self.control.snapshot();
        if let Some(block) = control.emergency() {
            event.policy_id = Some(format!("emergency.{}", block.incident_id));
            return refused("emergency_block");
        }
        if !self.control.is_known() && policy.fails_closed(&identity.environment) {
            return refused("control_unavailable");
        }

        // Decide, before anything is sent upstream (seed §6.2: a name outside
        // the allowlist is never resolved).
        let Some(host) = name.host else {
            return refusal(DnsDecision::Nxdomain, ResponseCode::NXDomain, "invalid_name");
        };
        let (private_ok, pinned, decision) = match policy.decide(&host, chrono::Utc::now(), &control) {
            NameVerdict::Allowed {
                policy_id,
                private_ok,
                pinned,
            } => {
                event.policy_id = Some(policy_id.to_string());
                (private_ok, pinned, DnsDecision::Answered)
            }
            NameVerdict::Denied { reason, policy_id } => {
                event.policy_id = Some(policy_id.to_string());
                if !report {
                    return refusal(DnsDecision::Nxdomain, ResponseCode::NXDomain, reason.as_str());
                }
                event.reason = Some(reason.as_str());
                (false, None, DnsDecision::Reported)
            }
        };
        let owner = Name::from(query.name());
        if let Some(ip) = pinned {
            // The operator's pin is the explicit allow for private targets.
            let ttl = secs(policy.cache_ttl);
            let record = match (ip, qtype) {
                (std::net::IpAddr::V4(v4), RecordType::A) => Some(Record::from_rdata(owner, ttl, RData::A(A(v4)))),
                (std::net::IpAddr::V6(v6), RecordType::AAAA) => {
                    Some(Record::from_rdata(owner, ttl, RData::AAAA(AAAA(v6))))
                }
                _ => None,
            };
            return Outcome::Pinned {
                decision,
                record: record.map(Box::new),
            };
        }

        let (response, source) = match self.lookup(&policy, &host, owner, qtype).await {
            Ok(found) => found,
            Err(reason) => return refusal_servfail(reason),
        };
        // Rebinding: an allowed public name must not lead to an internal
        // address, unless its rule says so (and never to cloud metadata).
        if let Some(kind) = response.addresses().find_map(|ip| refused_target(ip, private_ok)) {
            event.restricted = Some(kind.as_str());
            return refused("private_address");
        }
        Outcome::Forwarded {
            decision,
            response,
            source,
        }
    }

    /// The cached answer, or upstream's. `Err` is the SERVFAIL reason.
    async fn lookup(
        &self,
        policy: &DnsSnapshot,
        host: &str,
        name: Name,
        qtype: RecordType,
    ) -> Result<(Arc<CachedResponse>, &'static str), &'static str> {
        let key = format!("{}/{host}", u16::from(qtype));
        if let Some(hit) = policy.cached(&key, Instant::now()) {
            self.metrics.cache_hits.inc();
            return Ok((hit, "cache"));
        }
        self.metrics.cache_misses.inc();
        let exchange = self.upstream.query(&name, qtype).await;
        for (transport, took) in &exchange.timings {
            self.metrics.record_upstream(*transport, *took);
        }
        let failure = |reason: &'static str| {
            self.metrics.record_upstream_failure(reason);
            reason
        };
        let (message, size) = exchange.result.map_err(|error| {
            if let UpstreamError::Failed(message) = &error {
                tracing::debug!(upstream = %self.upstream.addr, "upstream exchange failed: {message}");
            }
            failure(error.reason())
        })?;
        let now = Instant::now();
        let (response, lifetime) =
            CachedResponse::from_upstream(message, policy.cache_ttl, policy.negative_ttl, now).map_err(failure)?;
        let response = Arc::new(response);
        if size <= MAX_CACHED_BYTES {
            policy.remember(&key, response.clone(), lifetime, now);
            self.metrics
                .cache_entries
                .set(i64::try_from(policy.cache_len()).unwrap_or(i64::MAX));
        }
        Ok((response, "upstream"))
    }
}

/// Counts a query in `dns_queries_in_flight` until it is done, however it
/// ends (a task cut off after the drain included).
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn refusal_servfail(reason: &'static str) -> Outcome {
    refusal(DnsDecision::ServFail, ResponseCode::ServFail, reason)
}

/// Encodes a refusal for a message only its header could be read of.
fn header_refusal(
    event: &mut DnsEvent,
    header: &Header,
    (decision, rcode): (DnsDecision, ResponseCode),
    reason: &'static str,
) -> Vec<u8> {
    event.decision = decision;
    event.reason = Some(reason);
    event.rcode = Some(rcode_text(rcode));
    reply::header_only(header, rcode)
}

fn audit_identity(identity: &Identity) -> AuditIdentity {
    AuditIdentity {
        agent_id: Some(identity.agent_id.to_string()),
        team_id: Some(identity.team.to_string()),
        project_id: Some(identity.project.to_string()),
        environment: Some(identity.environment.to_string()),
        session_id: None,
        task_slug: None,
    }
}

/// `A`, `AAAA`, ...; `TYPE65280` for types without a name (RFC 3597).
fn type_text(qtype: RecordType) -> String {
    match qtype {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}
