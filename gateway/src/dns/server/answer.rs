//! What an upstream answer becomes before a client sees it: TTLs capped at
//! the policy's, only the sections a stub resolver needs, and the addresses
//! it would send the client to, for the rebinding check.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::rdata::svcb::{SVCB, SvcParamValue};
use hickory_server::proto::rr::{RData, Record, RecordType};

/// Answers bigger than this are passed on but not cached: a flood of huge
/// answers must not fill memory (the cache is bounded in entries).
pub(super) const MAX_CACHED_BYTES: usize = 8 * 1024;

/// An upstream answer as the server keeps and serves it.
#[derive(Debug)]
pub(super) struct CachedResponse {
    /// `NOERROR` (with or without records) or `NXDOMAIN`.
    pub rcode: ResponseCode,
    /// TTLs already capped.
    answers: Vec<Record>,
    /// The SOA of a negative answer (downstream caches read it for their own
    /// negative TTL); other authority and additional records are dropped.
    authorities: Vec<Record>,
    stored: Instant,
}

impl CachedResponse {
    /// Keeps `message` under the policy's limits. `Ok` carries how long it
    /// may be cached; `Err` is the reason for a SERVFAIL (upstream failures
    /// are passed on, never cached).
    pub(super) fn from_upstream(
        message: Message,
        cache_ttl: Duration,
        negative_ttl: Duration,
        now: Instant,
    ) -> Result<(CachedResponse, Duration), &'static str> {
        let rcode = message.metadata.response_code;
        let negative = match rcode {
            ResponseCode::NoError => message.answers.is_empty(),
            ResponseCode::NXDomain => true,
            _ => return Err("upstream_failure"),
        };
        let (cap, answers, authorities) = if negative {
            let soa = message
                .authorities
                .into_iter()
                .filter(|r| r.record_type() == RecordType::SOA)
                .take(1);
            (negative_ttl, Vec::new(), soa.collect())
        } else {
            (cache_ttl, message.answers, Vec::new())
        };
        let cap = secs(cap);
        let mut lifetime = cap;
        let mut capped = |mut records: Vec<Record>| {
            for record in &mut records {
                record.ttl = record.ttl.min(cap);
                lifetime = lifetime.min(record.ttl);
            }
            records
        };
        let answers = capped(answers);
        let authorities = capped(authorities);
        if negative {
            // The upstream's SOA TTL says nothing about how long we keep it.
            lifetime = cap;
        }
        let response = CachedResponse {
            rcode,
            answers,
            authorities,
            stored: now,
        };
        Ok((response, Duration::from_secs(u64::from(lifetime))))
    }

    /// The sections as of `now`: each TTL less the time spent in the cache.
    pub(super) fn records_at(&self, now: Instant) -> (Vec<Record>, Vec<Record>) {
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        let aged = |records: &[Record]| {
            records
                .iter()
                .map(|record| {
                    let mut record = record.clone();
                    record.ttl = record.ttl.saturating_sub(age);
                    record
                })
                .collect()
        };
        (aged(&self.answers), aged(&self.authorities))
    }

    pub(super) fn answer_count(&self) -> u16 {
        u16::try_from(self.answers.len()).unwrap_or(u16::MAX)
    }

    /// Every address the answer would send a client to: A and AAAA records
    /// and the address hints of HTTPS and SVCB records (browsers connect
    /// to those).
    pub(super) fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.answers.iter().flat_map(|record| addresses_of(&record.data))
    }
}

fn addresses_of(data: &RData) -> Vec<IpAddr> {
    match data {
        RData::A(a) => vec![IpAddr::V4(a.0)],
        RData::AAAA(aaaa) => vec![IpAddr::V6(aaaa.0)],
        RData::HTTPS(https) => hints(&https.0),
        RData::SVCB(svcb) => hints(svcb),
        _ => Vec::new(),
    }
}

fn hints(svcb: &SVCB) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (_, value) in &svcb.svc_params {
        match value {
            SvcParamValue::Ipv4Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V4(a.0))),
            SvcParamValue::Ipv6Hint(hint) => out.extend(hint.0.iter().map(|a| IpAddr::V6(a.0))),
            _ => {}
        }
    }
    out
}

/// Whole seconds for a record TTL, saturating.
pub(super) fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
