//! The host edge: one nftables ruleset for a gateway host in front of a
//! workload subnet, so that workloads without proxy settings still leave
//! only through the gateway (issue 13 §3).
//!
//! What the ruleset does to packets from the workload subnets:
//! - TCP to any port an allowlist rule names (every group and
//!   `project_allowlist`) is redirected to the transparent listener, which
//!   decides per connection like the explicit proxy does;
//! - UDP and TCP port 53, whatever the address, is redirected to the DNS
//!   control server;
//! - to the host itself only the transparent, DNS and explicit-proxy ports
//!   and replies of established connections are accepted;
//! - everything else is dropped and counted in named counters (QUIC, ICMP,
//!   IPv6 included), and nothing is routed for workloads.
//!
//! The host's own egress out of the egress interface is rewritten to the
//! fixed egress IP.
//!
//! Choices made here, on purpose:
//! - The ports of expired rules are redirected too. The ruleset is a
//!   function of the policy text, not of the day it was compiled; the
//!   gateway refuses and audits a connection an expired rule no longer
//!   allows, which tells more than a silent drop at the edge.
//! - A rule without ports cannot be loaded (`ports` is required and not
//!   empty), so "no ports" never means "every port". A rule built in code
//!   with an empty list is refused here, at its line, for the same reason.
//! - A rule naming port 53 cannot be honoured: the edge sends every port-53
//!   connection to the DNS control server. It is refused at its line.
//! - Role limits, domains and protocols are the gateway's business: the
//!   edge works per port, and every allowlisted port reaches the gateway.
//! - Workloads are recognised by source address. An IPv6 workload subnet
//!   gets the same rules as an IPv4 one; link-local IPv6 carries no
//!   workload address, so with only IPv4 subnets the header asks for IPv6
//!   to be turned off on the workload interfaces.

mod settings;

use std::collections::BTreeMap;
use std::fmt::{self, Display};
use std::net::IpAddr;

use ipnet::IpNet;

pub use settings::{EdgeSettings, EgressIp, InterfaceName, WorkloadCidr};

use crate::compile::CompileError;
use crate::diagnostic::{Diagnostic, PolicyError};
use crate::load::PolicyBundle;
use crate::model::{AllowRule, PROJECT_GROUP};
use crate::values::Port;

/// The table every rule lives in; loading the ruleset replaces it and
/// touches nothing else on the host.
pub const TABLE: &str = "clawgress";

/// The port workloads send DNS to, whatever resolver they are configured with.
const DNS: u16 = 53;

/// The named counters, in the order `nft list counters` shows them, with
/// the comment an operator reads there.
pub const COUNTERS: [(&str, &str); 5] = [
    (
        "drop_spoofed",
        "workload source address arriving on an interface that does not route back to it",
    ),
    (
        "drop_quic",
        "UDP 443 (QUIC, HTTP/3) from workloads; clients fall back to TCP, which the gateway sees",
    ),
    (
        "drop_icmp",
        "ICMP and ICMPv6 from workloads (ICMP tunnels); IPv6 neighbour discovery passes",
    ),
    (
        "drop_forward",
        "other packets from workloads to addresses beyond this host, and anything routed to or from workloads",
    ),
    (
        "drop_host",
        "other packets from workloads to this host, outside the transparent, DNS and proxy ports",
    ),
];

/// The ruleset for `bundle` at the host edge described by `settings`.
pub fn render(bundle: &PolicyBundle, settings: &EdgeSettings) -> Result<String, CompileError> {
    settings.check()?;
    let ports = redirect_ports(bundle)?;
    Ok(Ruleset {
        bundle,
        settings,
        ports,
    }
    .to_string())
}

/// The ports of every allowlist rule, each with the groups that name it
/// (in file order), or every rule the edge cannot honour.
fn redirect_ports(bundle: &PolicyBundle) -> Result<BTreeMap<Port, Vec<&str>>, PolicyError> {
    let doc = &bundle.document;
    let groups = doc
        .allowlist
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.rules.as_slice()))
        .chain([(PROJECT_GROUP, doc.project_allowlist.as_slice())]);
    let mut ports: BTreeMap<Port, Vec<&str>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (group, rules) in groups {
        for rule in rules {
            if rule.ports.0.is_empty() {
                problems.push(
                    at_rule(bundle, rule, format!("{group} rule {} lists no ports", *rule.domain))
                        .with_hint("list the ports it may reach, e.g. ports: [443]; the edge never reads \"no ports\" as every port"),
                );
            }
            for port in &rule.ports.0 {
                if port.get() == DNS {
                    problems.push(
                        at_rule(
                            bundle,
                            rule,
                            format!(
                                "{group} rule {} allows port 53, which the host edge sends to the DNS control server, \
                                 never to the gateway",
                                *rule.domain
                            ),
                        )
                        .with_hint("remove 53 from its ports; workloads resolve allowlisted names through the DNS control server"),
                    );
                    continue;
                }
                let named_by = ports.entry(*port).or_default();
                if !named_by.contains(&group) {
                    named_by.push(group);
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(ports)
    } else {
        Err(PolicyError::Invalid(problems))
    }
}

fn at_rule(bundle: &PolicyBundle, rule: &AllowRule, message: String) -> Diagnostic {
    Diagnostic::new(&bundle.source, rule.domain.line, rule.domain.column, message)
}

struct Ruleset<'a> {
    bundle: &'a PolicyBundle,
    settings: &'a EdgeSettings,
    ports: BTreeMap<Port, Vec<&'a str>>,
}

/// Neighbour discovery is link-local (hop limit 255) and never routed;
/// without it IPv6 workloads cannot reach this host at all.
const NEIGHBOUR_DISCOVERY: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255";

impl Ruleset<'_> {
    fn cidrs(&self, v6: bool) -> Vec<IpNet> {
        self.settings
            .workload_cidrs
            .iter()
            .map(WorkloadCidr::net)
            .filter(|net| matches!(net, IpNet::V6(_)) == v6)
            .collect()
    }

    /// One rule per workload family present: `ip saddr @workload_v4 <then>`.
    fn per_family(&self, field: &str, then: &str) -> Vec<String> {
        [(false, "ip", "workload_v4"), (true, "ip6", "workload_v6")]
            .into_iter()
            .filter(|(v6, _, _)| !self.cidrs(*v6).is_empty())
            .map(|(_, family, set)| format!("{family} {field} @{set} {then}"))
            .collect()
    }

    /// The comment block at the top: what the ruleset does, and the host
    /// settings it relies on, as commands to run.
    fn header(&self) -> Vec<String> {
        let s = self.settings;
        let (egress, iface) = (s.egress_ip, &s.egress_iface);
        let (transparent, dns, proxy) = (s.transparent_port, s.dns_port, s.proxy_port);
        let mut command = format!(
            "clawgress policy compile --target nftables --policy {}",
            comment_safe(&self.bundle.source)
        );
        for cidr in &s.workload_cidrs {
            command.push_str(&format!(" --workload-cidr {cidr}"));
        }
        command.push_str(&format!(
            " --egress-ip {egress} --egress-iface {iface} --transparent-port {transparent} --dns-port {dns} \
             --proxy-port {proxy}"
        ));
        let mut lines = vec![
            format!(
                "Clawgress host edge, compiled from policy version {}:",
                self.bundle.version
            ),
            format!("  {command}"),
            "Compile again when the policy or a setting changes; do not edit.".to_string(),
            String::new(),
            format!("Load (re-runnable: replaces table inet {TABLE}, touches nothing else):"),
            "  nft -c -f FILE && nft -f FILE".to_string(),
            "What was dropped, by reason:".to_string(),
            format!("  nft list counters table inet {TABLE}"),
            String::new(),
            format!("From the workloads ({}):", join(s.workload_cidrs.iter(), ", ")),
            format!("  TCP to a port the allowlist names  -> the transparent listener, :{transparent}"),
            format!("  UDP and TCP port 53, any address   -> the DNS control server, :{dns}"),
            format!(
                "  to this host: TCP :{transparent} (transparent), TCP :{proxy} (explicit proxy), \
                 UDP/TCP :{dns} (DNS), replies"
            ),
            "  everything else (QUIC, ICMP, IPv6 too) -> dropped and counted; nothing is routed".to_string(),
            format!("This host's own egress out of {iface} leaves from {egress}."),
            String::new(),
            "Ports the allowlist names, and the groups naming them:".to_string(),
        ];
        if self.ports.is_empty() {
            lines.push("  none: the allowlist is empty, so no TCP is redirected".to_string());
        }
        for (port, groups) in &self.ports {
            lines.push(format!("  {:<5}  {}", port.to_string(), groups.join(", ")));
        }
        lines.push(String::new());
        lines.extend(self.host_settings());
        lines
    }

    fn host_settings(&self) -> Vec<String> {
        let s = self.settings;
        let (egress, iface) = (s.egress_ip, &s.egress_iface);
        let (family, other, prefix, route_probe) = match egress.addr() {
            IpAddr::V4(_) => ("IPv4", "IPv6", 32, "ip route get 1.1.1.1"),
            IpAddr::V6(_) => ("IPv6", "IPv4", 128, "ip -6 route get 2606:4700:4700::1111"),
        };
        let mut lines: Vec<String> = [
            "Host settings this ruleset relies on (persist the sysctls in",
            "/etc/sysctl.d/60-clawgress-edge.conf, the same lines without `sysctl -w`):",
            "  sysctl -w net.ipv4.ip_forward=0",
            "  sysctl -w net.ipv6.conf.all.forwarding=0",
            "    This host routes nothing for workloads; redirected connections are",
            "    delivered to local listeners, which needs no forwarding.",
            "  sysctl -w net.ipv4.conf.all.route_localnet=0",
            "    Not needed: `redirect` sends to the address of the interface a packet",
            "    came in on, never to 127.0.0.1, so the transparent listener and the DNS",
            "    server must listen on that address or on 0.0.0.0 / [::].",
            "  rp_filter: keep the distribution's value. Chain edge_guard drops workload",
            "    sources arriving on an interface that does not route back to them",
            "    (fib saddr . iif), for IPv6 as well, which rp_filter does not cover.",
        ]
        .map(String::from)
        .into();
        if !s.has_ipv6_workloads() {
            lines.extend(
                [
                    "  No IPv6 workload subnet: workloads must have no IPv6. On each workload-facing",
                    "  interface: sysctl -w net.ipv6.conf.<interface>.disable_ipv6=1",
                    "    (link-local IPv6 carries no workload address, so these rules cannot see it)",
                ]
                .map(String::from),
            );
        }
        lines.extend([
            format!("  ip -br addr show dev {iface}"),
            format!("    must list {egress}; if it does not: ip addr add {egress}/{prefix} dev {iface}"),
            format!("  {route_probe}"),
            format!("    must say `dev {iface}`; then no ip rule is needed. Otherwise egress leaves"),
            format!("    elsewhere, unrewritten: ip route replace default via <router on {iface}> dev {iface}"),
            format!("  This host's {other} egress keeps the source address routing picks: the egress IP is {family}."),
        ]);
        lines
    }

    fn sets(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (v6, name, kind) in [(false, "workload_v4", "ipv4_addr"), (true, "workload_v6", "ipv6_addr")] {
            let cidrs = self.cidrs(v6);
            if !cidrs.is_empty() {
                let elements = format!("elements = {{ {} }}", join(cidrs.iter(), ", "));
                block(
                    out,
                    "set",
                    name,
                    &[format!("type {kind}"), "flags interval".into(), elements],
                )?;
            }
        }
        let mut ports = vec!["type inet_service".to_string()];
        if !self.ports.is_empty() {
            ports.push(format!("elements = {{ {} }}", join(self.ports.keys(), ", ")));
        }
        block(out, "set", "redirect_ports", &ports)
    }
}

/// A blank line, `\t<kind> <name> {`, its lines and `\t}`.
fn block(out: &mut fmt::Formatter<'_>, kind: &str, name: &str, lines: &[String]) -> fmt::Result {
    writeln!(out)?;
    writeln!(out, "\t{kind} {name} {{")?;
    for line in lines {
        writeln!(out, "\t\t{line}")?;
    }
    writeln!(out, "\t}}")
}

impl Display for Ruleset<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.settings;
        let (transparent, dns, proxy) = (s.transparent_port, s.dns_port, s.proxy_port);
        let ipv6 = s.has_ipv6_workloads();
        let base = |hook: &str| vec![hook.to_string()];

        writeln!(out, "#!/usr/sbin/nft -f")?;
        for line in self.header() {
            writeln!(out, "{}", format!("# {line}").trim_end())?;
        }
        writeln!(out)?;
        // Declaring then deleting makes the first load and every reload the
        // same: the table is replaced whole, in one transaction.
        writeln!(out, "table inet {TABLE}")?;
        writeln!(out, "delete table inet {TABLE}")?;
        writeln!(out)?;
        writeln!(out, "table inet {TABLE} {{")?;
        for (name, comment) in COUNTERS {
            writeln!(out, "\tcounter {name} {{")?;
            writeln!(out, "\t\tcomment \"{comment}\"")?;
            writeln!(out, "\t}}")?;
        }
        self.sets(out)?;

        let mut redirect = base("type nat hook prerouting priority dstnat; policy accept;");
        redirect.extend(self.per_family("saddr", "jump workload_redirect"));
        block(out, "chain", "edge_redirect", &redirect)?;
        let workload_redirect = [
            "# Names resolve only through the DNS control server, whatever resolver a workload asks.".to_string(),
            format!("meta l4proto {{ tcp, udp }} th dport {DNS} redirect to :{dns}"),
            "# Connections to this host itself (the explicit proxy) keep their port.".to_string(),
            "fib daddr type local return".to_string(),
            format!("tcp dport @redirect_ports redirect to :{transparent}"),
        ];
        block(out, "chain", "workload_redirect", &workload_redirect)?;

        // After the redirect, so that everything a workload may do has this
        // host as its destination; before routing, so that drops are counted
        // even with forwarding off (the kernel would drop those uncounted).
        let mut guard = base("type filter hook prerouting priority dstnat + 10; policy accept;");
        guard.extend(self.per_family("saddr", "jump workload_guard"));
        block(out, "chain", "edge_guard", &guard)?;
        let mut workload_guard = Vec::new();
        if ipv6 {
            workload_guard.push(format!("{NEIGHBOUR_DISCOVERY} return"));
        }
        workload_guard.extend(
            [
                "fib saddr . iif oif missing counter name drop_spoofed drop",
                "fib daddr type local return",
                "jump drop_by_kind",
                "counter name drop_forward drop",
            ]
            .map(String::from),
        );
        block(out, "chain", "workload_guard", &workload_guard)?;

        let mut input = base("type filter hook input priority filter; policy accept;");
        input.extend(self.per_family("saddr", "jump workload_input"));
        block(out, "chain", "edge_input", &input)?;
        let mut workload_input = vec![
            "ct state established,related accept".to_string(),
            format!("tcp dport {{ {transparent}, {proxy} }} accept"),
            format!("meta l4proto {{ tcp, udp }} th dport {dns} accept"),
        ];
        if ipv6 {
            workload_input.push(format!("{NEIGHBOUR_DISCOVERY} accept"));
        }
        workload_input.extend(["jump drop_by_kind", "counter name drop_host drop"].map(String::from));
        block(out, "chain", "workload_input", &workload_input)?;

        // edge_guard already drops what workloads address beyond this host;
        // this keeps routing denied both ways if forwarding is on for
        // something else (Docker turns it on).
        let mut forward = base("type filter hook forward priority filter; policy accept;");
        forward.extend(self.per_family("saddr", "counter name drop_forward drop"));
        forward.extend(self.per_family("daddr", "counter name drop_forward drop"));
        block(out, "chain", "edge_forward", &forward)?;

        let by_kind = [
            "udp dport 443 counter name drop_quic drop",
            "meta l4proto { icmp, ipv6-icmp } counter name drop_icmp drop",
        ];
        block(out, "chain", "drop_by_kind", &by_kind.map(String::from))?;

        // Only locally sourced packets: anything routed through would be a
        // workload's, and those never leave.
        let (nfproto, family) = match s.egress_ip.addr() {
            IpAddr::V4(_) => ("ipv4", "ip"),
            IpAddr::V6(_) => ("ipv6", "ip6"),
        };
        let mut snat = base("type nat hook postrouting priority srcnat; policy accept;");
        snat.push(format!(
            "meta nfproto {nfproto} oifname \"{}\" fib saddr type local snat {family} to {}",
            s.egress_iface, s.egress_ip
        ));
        block(out, "chain", "egress_snat", &snat)?;
        writeln!(out, "}}")
    }
}

fn join<T: Display>(items: impl Iterator<Item = T>, separator: &str) -> String {
    items.map(|item| item.to_string()).collect::<Vec<_>>().join(separator)
}

/// Free text (a file path) inside a `#` comment: a line break would end
/// the comment and turn the rest into rules.
fn comment_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests;
