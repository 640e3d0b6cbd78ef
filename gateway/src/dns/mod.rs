//! Names and addresses as the gateway sees them: parsing the request's host,
//! resolving it with the gateway's own caching resolver, and classifying every
//! resulting address before anything is dialed.
//!
//! The three steps are separate on purpose: the proxy parses once
//! ([`parse_host`]), resolves once ([`Resolver::resolve`]), checks each address
//! ([`classify`]) and then dials exactly the address it checked, so a second
//! lookup (DNS rebinding) can never slip a different address in.
//!
//! [`server`] is the other side: `clawgress dns`, the DNS control server
//! that answers agents' own lookups by the same policy.

mod cache;
mod host;
mod resolver;
pub mod server;
mod ssrf;

pub use host::{Host, HostError, parse_host};
pub use resolver::{ResolveError, ResolveSource, Resolved, Resolver, ResolverConfig};
pub use ssrf::{AddressClass, RestrictedKind, classify, refused_target};

#[cfg(test)]
mod test_dns_server;
#[cfg(test)]
mod tests;
