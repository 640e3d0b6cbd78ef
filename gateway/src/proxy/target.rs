//! Where a request goes: its host, port and protocol, the addresses it may
//! be sent to (SSRF rules, a transparent connection's original address),
//! and whether it already went through this gateway.

use std::net::IpAddr;

use clawgress_policies::matcher::Protocol;
use http::{Request, header};
use hyper::body::Incoming;

use crate::context::{RequestContext, RequestKind, audit_path};
use crate::decision::{Refusal, RequestProblem};
use crate::dns::{AddressClass, ResolveError, ResolveSource, Resolved, RestrictedKind, classify};
use crate::metrics::DnsResult;

/// A transparent connection may only go where the client was going, and
/// only if the gateway's own resolution of the name includes that address:
/// then a fronted SNI or Host, or a name the client resolved itself to
/// somewhere else, goes nowhere. Explicit requests dial the checked address.
pub(super) fn pinned_to_original(ctx: &RequestContext, checked: IpAddr, addrs: &[IpAddr]) -> Result<IpAddr, Refusal> {
    let Some(original) = ctx.original_destination else {
        return Ok(checked);
    };
    let wanted = original.ip().to_canonical();
    if addrs.iter().any(|ip| ip.to_canonical() == wanted) {
        Ok(wanted)
    } else {
        Err(Refusal::DestinationMismatch { original })
    }
}

/// Every resolved address must pass, not just the first: a name that mixes
/// public and private answers is a rebinding attempt. Returns the one address
/// that will be dialed.
///
/// `private_ok` (a `localhost` rule or `allow_private: true`) opens private
/// ranges but never cloud-metadata addresses: a spoofed or careless DNS answer
/// must not turn an internal-service rule into a credential leak. Only a name
/// the operator pinned in `dns.static_hosts` (`pinned`) may point anywhere.
pub(super) fn check_addresses(addrs: &[IpAddr], private_ok: bool, pinned: bool) -> Result<IpAddr, Refusal> {
    let first = *addrs
        .first()
        .ok_or(Refusal::Request(RequestProblem::MissingAuthority))?;
    if pinned {
        return Ok(first);
    }
    for ip in addrs {
        if let AddressClass::Restricted(kind) = classify(*ip)
            && (!private_ok || kind == RestrictedKind::CloudMetadata)
        {
            return Err(Refusal::PrivateAddress(kind));
        }
    }
    Ok(first)
}

/// The port of an authority: the scheme's default when absent, and a
/// refusal when present but not a usable port (`:99999`, `:0`, `:abc`),
/// rather than silently falling back to the default.
fn authority_port(authority: &http::uri::Authority, default: Option<u16>) -> Result<u16, Refusal> {
    let malformed = Refusal::Request(RequestProblem::MissingAuthority);
    let has_port = authority
        .as_str()
        .rsplit_once(':')
        .is_some_and(|(_, tail)| !tail.contains(']'));
    match (authority.port_u16(), has_port, default) {
        (Some(0), _, _) => Err(malformed),
        (Some(port), _, _) => Ok(port),
        (None, false, Some(default)) => Ok(default),
        _ => Err(malformed),
    }
}

/// Host, port, protocol and audit path of a proxy-shaped request.
pub(super) fn request_target(
    kind: RequestKind,
    req: &Request<Incoming>,
) -> Result<(&str, u16, Protocol, Option<String>), Refusal> {
    let uri = req.uri();
    match kind {
        RequestKind::Connect => {
            let authority = uri
                .authority()
                .ok_or(Refusal::Request(RequestProblem::MissingAuthority))?;
            let port = authority
                .port_u16()
                .ok_or(Refusal::Request(RequestProblem::MissingAuthority))?;
            // A tunnel carries TLS in the intended use; the rule's protocol
            // for a tunnel is https whatever the port.
            Ok((authority.host(), port, Protocol::Https, None))
        }
        RequestKind::Forward | RequestKind::Intercepted => {
            let scheme = uri
                .scheme_str()
                .ok_or(Refusal::Request(RequestProblem::NotProxyRequest))?;
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(Refusal::Request(RequestProblem::UnsupportedScheme));
            }
            let authority = uri
                .authority()
                .ok_or(Refusal::Request(RequestProblem::MissingAuthority))?;
            if authority.as_str().contains('@') {
                // userinfo in a proxied URL is a classic confusion vector.
                return Err(Refusal::Request(RequestProblem::MissingAuthority));
            }
            let port = authority_port(authority, Some(80))?;
            Ok((authority.host(), port, Protocol::Http, Some(audit_path(uri.path()))))
        }
    }
}

const VIA_TOKEN: &str = "clawgress";

pub(super) fn is_loop(req: &Request<Incoming>) -> bool {
    req.headers().get_all(header::VIA).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|hop| hop.trim().ends_with(VIA_TOKEN)))
    })
}

/// Lookups that went to a name server, by outcome; static and cached answers
/// are not lookups.
pub(super) fn dns_result(resolved: &Result<Resolved, ResolveError>) -> Option<DnsResult> {
    match resolved {
        Ok(r) if r.source == ResolveSource::Dns => Some(DnsResult::Resolved),
        Ok(_) => None,
        Err(ResolveError::NotFound { .. }) => Some(DnsResult::NotFound),
        Err(ResolveError::Timeout { .. }) => Some(DnsResult::Timeout),
        Err(_) => Some(DnsResult::Error),
    }
}
