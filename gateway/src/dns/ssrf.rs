//! Which addresses an agent may be sent to without an explicit exception.
//!
//! Built from the IANA IPv4 and IPv6 special-purpose address registries.
//! IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are
//! judged by the IPv4 address they reach, so `::ffff:127.0.0.1` and
//! `64:ff9b::a9fe:a9fe` are caught like the addresses they stand for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The verdict for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable: subject to the policy, not to the SSRF guard.
    Public,
    /// Never dialed unless something explicitly allows it.
    Restricted(RestrictedKind),
}

impl AddressClass {
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }
}

/// Why an address is restricted. The codes from [`RestrictedKind::as_str`]
/// appear in denials and audit lines, so they are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestrictedKind {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Cloud instance metadata and platform endpoints (credentials live there).
    CloudMetadata,
    /// 100.64/10, shared address space for carrier-grade NAT.
    Cgnat,
    /// 224/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8 ("this network": Linux dials 0.0.0.0 as localhost) and ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 240/4 and IPv6 space outside global unicast or deprecated (IPv4-compatible).
    Reserved,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated, still routed inside some networks).
    SiteLocal,
    /// 192.0.0/24 and 2001::/23: IETF protocol assignments.
    ProtocolAssignment,
    /// 192.88.99/24: the deprecated 6to4 relay anycast.
    Relay6to4,
    /// 2001::/32: the IPv4 endpoint is obfuscated, so it cannot be checked.
    Teredo,
    /// 100::/64: discard-only.
    Discard,
    /// 2001:10::/28 and 2001:20::/28: cryptographic identifiers, not locators.
    Orchid,
    /// 64:ff9b:1::/48: local-use NAT64 whose IPv4 layout is operator-specific.
    LocalNat64,
}

impl RestrictedKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RestrictedKind::Loopback => "loopback",
            RestrictedKind::Private => "private",
            RestrictedKind::LinkLocal => "link_local",
            RestrictedKind::CloudMetadata => "cloud_metadata",
            RestrictedKind::Cgnat => "cgnat",
            RestrictedKind::Multicast => "multicast",
            RestrictedKind::Unspecified => "unspecified",
            RestrictedKind::Broadcast => "broadcast",
            RestrictedKind::Reserved => "reserved",
            RestrictedKind::Documentation => "documentation",
            RestrictedKind::Benchmarking => "benchmarking",
            RestrictedKind::UniqueLocal => "unique_local",
            RestrictedKind::SiteLocal => "site_local",
            RestrictedKind::ProtocolAssignment => "protocol_assignment",
            RestrictedKind::Relay6to4 => "relay_6to4",
            RestrictedKind::Teredo => "teredo",
            RestrictedKind::Discard => "discard",
            RestrictedKind::Orchid => "orchid",
            RestrictedKind::LocalNat64 => "local_nat64",
        }
    }
}

/// Classifies one address; the caller checks every address it may dial.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether `ip` may be handed to an agent for a destination its rule
/// allows: `None` when it may, else why not. `private_ok` (a `localhost`
/// rule or `allow_private: true`) opens restricted ranges but never cloud
/// metadata: a spoofed or careless DNS answer must not turn an
/// internal-service rule into a credential leak. The proxy's address check
/// and the DNS control server's rebinding check apply this same rule.
pub fn refused_target(ip: IpAddr, private_ok: bool) -> Option<RestrictedKind> {
    match classify(ip) {
        AddressClass::Public => None,
        AddressClass::Restricted(kind) if private_ok && kind != RestrictedKind::CloudMetadata => None,
        AddressClass::Restricted(kind) => Some(kind),
    }
}

/// Metadata endpoints that are reachable from inside a cloud instance and
/// hand out credentials. Some sit in public or CGNAT space, which is why they
/// are listed by address rather than by range.
const CLOUD_METADATA_V4: [Ipv4Addr; 4] = [
    // AWS, GCP, Azure IMDS, OpenStack, Oracle, DigitalOcean.
    Ipv4Addr::new(169, 254, 169, 254),
    // AWS ECS task metadata and credentials.
    Ipv4Addr::new(169, 254, 170, 2),
    // Alibaba Cloud metadata.
    Ipv4Addr::new(100, 100, 100, 200),
    // Azure WireServer: a public-range address only the platform answers.
    Ipv4Addr::new(168, 63, 129, 16),
];

/// AWS IMDS over IPv6 (Nitro instances).
const CLOUD_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use RestrictedKind as K;
    if CLOUD_METADATA_V4.contains(&ip) {
        return AddressClass::Restricted(K::CloudMetadata);
    }
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        (0, _, _) => K::Unspecified,
        (10, _, _) => K::Private,
        (100, 64..=127, _) => K::Cgnat,
        (127, _, _) => K::Loopback,
        (169, 254, _) => K::LinkLocal,
        (172, 16..=31, _) => K::Private,
        (192, 0, 0) => K::ProtocolAssignment,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => K::Documentation,
        (192, 88, 99) => K::Relay6to4,
        (192, 168, _) => K::Private,
        (198, 18..=19, _) => K::Benchmarking,
        (224..=239, _, _) => K::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => K::Broadcast,
        (240..=255, _, _) => K::Reserved,
        _ => return AddressClass::Public,
    };
    AddressClass::Restricted(kind)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use RestrictedKind as K;
    let seg = ip.segments();
    let restricted = AddressClass::Restricted;

    if ip == CLOUD_METADATA_V6 {
        return restricted(K::CloudMetadata);
    }
    if ip.is_unspecified() {
        return restricted(K::Unspecified);
    }
    if ip.is_loopback() {
        return restricted(K::Loopback);
    }
    // ::ffff:0:0/96, IPv4-mapped: a dual-stack socket dials the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // ::/96, IPv4-compatible (deprecated) and ::ffff:0:0:0/96, IPv4-translated:
    // no legitimate destination, and some stacks still map them to IPv4.
    if seg[..6] == [0; 6] || seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return restricted(K::Reserved);
    }
    // 64:ff9b::/96, the well-known NAT64 prefix (RFC 6052 fixes the layout):
    // the translator dials the embedded IPv4 address, so that decides.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(low_v4(ip));
    }
    // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): the operator picks the
    // prefix length, so the embedded address cannot be located reliably.
    // Report the common /96 layout's address if it is restricted (a clearer
    // denial), and refuse the rest: public sites also answer over IPv4.
    if seg[..3] == [0x64, 0xff9b, 1] {
        return match classify_v4(low_v4(ip)) {
            AddressClass::Restricted(kind) => restricted(kind),
            AddressClass::Public => restricted(K::LocalNat64),
        };
    }
    // 100::/64, discard-only.
    if seg[..4] == [0x100, 0, 0, 0] {
        return restricted(K::Discard);
    }
    // 2002::/16, 6to4: the relay forwards to the IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        let o = ip.octets();
        return classify_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Inside 2001::/23 (IETF protocol assignments) the specific blocks first.
    if seg[0] == 0x2001 && seg[1] < 0x0200 {
        let kind = match seg[1] {
            0 => K::Teredo,
            0x2 if seg[2] == 0 => K::Benchmarking,
            // ORCHID (2001:10::/28) and ORCHIDv2 (2001:20::/28).
            0x10..=0x2f => K::Orchid,
            _ => K::ProtocolAssignment,
        };
        return restricted(kind);
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return restricted(K::Documentation);
    }
    // 3fff::/20, documentation (RFC 9637).
    if seg[0] == 0x3fff && seg[1] & 0xf000 == 0 {
        return restricted(K::Documentation);
    }
    // 5f00::/16, SRv6 SIDs (RFC 9602): not globally reachable.
    if seg[0] == 0x5f00 {
        return restricted(K::Reserved);
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => restricted(K::UniqueLocal),
        s if s & 0xffc0 == 0xfe80 => restricted(K::LinkLocal),
        s if s & 0xffc0 == 0xfec0 => restricted(K::SiteLocal),
        s if s & 0xff00 == 0xff00 => restricted(K::Multicast),
        // Only 2000::/3 is allocated as global unicast; anything else that
        // reached here is unassigned or special.
        s if s & 0xe000 == 0x2000 => AddressClass::Public,
        _ => restricted(K::Reserved),
    }
}

/// The IPv4 address in the last 32 bits (the RFC 6052 /96 layout).
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}
