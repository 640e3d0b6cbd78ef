//! What the host edge needs besides the policy: the workload subnets, the
//! egress address and interface, and the gateway's own ports.
//!
//! Each value checks itself when parsed, so a bad flag is refused by the
//! command line with the flag's name; [`EdgeSettings::check`] then refuses
//! combinations that cannot work. Messages name the flags that set the
//! values because that is where a person fixes them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::compile::CompileError;
use crate::values::Port;

/// Everything [`super::render`] needs besides the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// The subnets the workloads send from (`--workload-cidr`, at least one).
    pub workload_cidrs: Vec<WorkloadCidr>,
    /// The fixed source address of the gateway host's egress (`--egress-ip`).
    pub egress_ip: EgressIp,
    /// The interface that egress leaves through (`--egress-iface`).
    pub egress_iface: InterfaceName,
    /// The gateway's transparent listener (`--transparent-port`).
    pub transparent_port: Port,
    /// The DNS control server (`--dns-port`).
    pub dns_port: Port,
    /// The gateway's explicit proxy (`--proxy-port`, 3128 by default).
    pub proxy_port: Port,
}

impl EdgeSettings {
    /// Refuses combinations of otherwise valid values that cannot work.
    pub fn check(&self) -> Result<(), CompileError> {
        let refuse = |message: String| Err(CompileError::Setting(message));
        if self.workload_cidrs.is_empty() {
            return refuse(
                "--workload-cidr is missing: the edge needs the workload subnet, e.g. --workload-cidr 10.42.0.0/24"
                    .to_string(),
            );
        }
        for (i, a) in self.workload_cidrs.iter().enumerate() {
            for b in &self.workload_cidrs[i + 1..] {
                if overlaps(&a.0, &b.0) {
                    return refuse(format!(
                        "--workload-cidr {a} and --workload-cidr {b} overlap; give each subnet once (the wider one covers the other)"
                    ));
                }
            }
            if a.0.contains(&self.egress_ip.0) {
                return refuse(format!(
                    "--egress-ip {} lies inside --workload-cidr {a}: packets from the internet would be taken for workload traffic; \
                     the egress IP is the host's address on --egress-iface {}, outside every workload subnet",
                    self.egress_ip, self.egress_iface
                ));
            }
        }
        let ports = [
            ("--transparent-port", self.transparent_port),
            ("--dns-port", self.dns_port),
            ("--proxy-port", self.proxy_port),
        ];
        for (i, (flag_a, a)) in ports.iter().enumerate() {
            for (flag_b, b) in &ports[i + 1..] {
                if a == b {
                    return refuse(format!(
                        "{flag_a} and {flag_b} are both {a}: the transparent listener, the DNS server and the \
                         explicit proxy each need their own port"
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn has_ipv6_workloads(&self) -> bool {
        self.workload_cidrs.iter().any(|c| matches!(c.0, IpNet::V6(_)))
    }
}

/// Two prefix-aligned networks overlap exactly when one contains the other.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A workload subnet: a network address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadCidr(IpNet);

impl WorkloadCidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl fmt::Display for WorkloadCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ranges whose sources the host itself uses or receives from every
/// network: rules keyed on them would catch the host's own traffic or its
/// router's neighbour discovery, not workloads.
const RESERVED: [(IpNet, &str); 10] = [
    (v4(0, 0, 0, 0, 8), "\"this network\""),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved and broadcast"),
    (v6(Ipv6Addr::UNSPECIFIED, 128), "the unspecified address"),
    (v6(Ipv6Addr::LOCALHOST, 128), "loopback"),
    (v6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96), "IPv4-mapped"),
    (v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), "link-local"),
    (v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), "multicast"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(addr: Ipv6Addr, prefix: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V6(addr), prefix)
}

impl FromStr for WorkloadCidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let net: IpNet = text.parse().map_err(|_| match text.parse::<IpAddr>() {
            Ok(ip) => format!(
                "'{text}' has no prefix length; write the subnet, e.g. 10.42.0.0/24, or {ip}/{} for one address",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            Err(_) => format!("'{text}' is not a CIDR; write a subnet like 10.42.0.0/24 or fd00:42::/64"),
        })?;
        if net.prefix_len() == 0 {
            return Err(format!(
                "'{text}' is every address: the host's own and the internet's traffic would be taken for workloads; \
                 write the workload subnet, e.g. 10.42.0.0/24"
            ));
        }
        if net.trunc() != net {
            return Err(format!("'{text}' has host bits set; write the subnet {}", net.trunc()));
        }
        for (reserved, name) in RESERVED {
            if overlaps(&net, &reserved) {
                return Err(format!(
                    "'{text}' overlaps {reserved} ({name}), which no workload may send from; use the workloads' own subnet"
                ));
            }
        }
        Ok(WorkloadCidr(net))
    }
}

/// The fixed address the gateway host's egress leaves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressIp(IpAddr);

impl EgressIp {
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for EgressIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EgressIp {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let ip: IpAddr = text.parse().map_err(|_| {
            format!(
                "'{text}' is not an IP address; write the host's public address, e.g. 203.0.113.7 (no prefix, no port)"
            )
        })?;
        let unusable = match ip {
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped (write the IPv4 address itself)"),
            ip if ip.is_unspecified() => Some("the unspecified address"),
            ip if ip.is_loopback() => Some("loopback"),
            ip if ip.is_multicast() => Some("multicast"),
            _ => None,
        };
        match unusable {
            Some(why) => Err(format!(
                "'{text}' is {why}, not an address egress can leave from; write the address on the egress interface"
            )),
            None => Ok(EgressIp(ip)),
        }
    }
}

/// A network interface name as Linux and nft accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceName(String);

impl InterfaceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Linux takes up to 15 bytes (IFNAMSIZ less the NUL). The character set
/// is narrower than Linux's on purpose: the name is written inside an nft
/// string, where `"` and `\` break quoting and a trailing `*` is a wildcard
/// that would match more than one interface.
const MAX_INTERFACE_NAME: usize = 15;

impl FromStr for InterfaceName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= MAX_INTERFACE_NAME
            && text != "."
            && text != ".."
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(InterfaceName(text.to_string()))
        } else {
            Err(format!(
                "'{text}' is not an interface name: 1-{MAX_INTERFACE_NAME} letters, digits, '-', '_' or '.' \
                 (no wildcards), as `ip -br link` lists them, e.g. eth0 or enp1s0"
            ))
        }
    }
}
