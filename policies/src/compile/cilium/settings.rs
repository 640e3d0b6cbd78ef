//! What the Cilium manifests need besides the policy: the fixed egress
//! addresses, the label of the nodes that hold them, and the cluster's DNS
//! domain. Each value checks itself when parsed, so a bad flag is refused
//! by the command line with the flag's name and the fix.

use std::fmt;
use std::str::FromStr;

use crate::compile::CompileError;
use crate::compile::nftables::EgressIp;

/// Everything [`super::render`] needs besides the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiliumSettings {
    /// The fixed addresses the gateway's egress leaves with (`--egress-ip`,
    /// repeatable). None: each egress node's own first IPv4 address.
    pub egress_ips: Vec<EgressIp>,
    /// The label of the nodes egress leaves through (`--egress-node-label`,
    /// `egress-gateway=true` by default).
    pub egress_node_label: NodeLabel,
    /// The cluster's DNS domain (`--cluster-domain`, `cluster.local` by
    /// default): in-cluster names resolve under it.
    pub cluster_domain: ClusterDomain,
}

impl Default for CiliumSettings {
    fn default() -> Self {
        CiliumSettings {
            egress_ips: Vec::new(),
            egress_node_label: NodeLabel::DEFAULT.parse().unwrap_or_else(|_| unreachable!()),
            cluster_domain: ClusterDomain::DEFAULT.parse().unwrap_or_else(|_| unreachable!()),
        }
    }
}

impl CiliumSettings {
    /// Refuses combinations of otherwise valid values that cannot work.
    pub fn check(&self) -> Result<(), CompileError> {
        for (i, ip) in self.egress_ips.iter().enumerate() {
            if self.egress_ips[..i].contains(ip) {
                return Err(CompileError::Setting(format!(
                    "--egress-ip {ip} is given twice; list each egress address once"
                )));
            }
        }
        if self.egress_node_label.key == EGRESS_IP_LABEL {
            return Err(CompileError::Setting(format!(
                "--egress-node-label {}: {EGRESS_IP_LABEL} is the label naming each node's egress address; \
                 pick another key, e.g. egress-gateway=true",
                self.egress_node_label
            )));
        }
        Ok(())
    }
}

/// The node label naming which egress address a node holds: with several
/// addresses, each needs its own node (Cilium picks one node per entry).
pub const EGRESS_IP_LABEL: &str = "clawgress.io/egress-ip";

/// The egress address as a label value (`203.0.113.7`, or an IPv6
/// address spelled out with `-` for `:`, which label values cannot hold).
pub fn egress_ip_label_value(ip: &EgressIp) -> String {
    match ip.addr() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// A Kubernetes label `key=value`, as a node selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    pub key: String,
    pub value: String,
}

impl NodeLabel {
    pub const DEFAULT: &'static str = "egress-gateway=true";
}

impl fmt::Display for NodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A label name or value: at most 63 characters, alphanumeric at both
/// ends, `-`, `_` and `.` between (Kubernetes' rule).
fn is_label_word(text: &str) -> bool {
    text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A DNS subdomain: lowercase labels of letters, digits and `-`, at most
/// 253 characters.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

impl FromStr for NodeLabel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let example = "write key=value, e.g. egress-gateway=true or node.example.com/egress=yes";
        let Some((key, value)) = text.trim().split_once('=') else {
            return Err(format!("'{text}' has no '='; {example}"));
        };
        let name_ok = match key.split_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_word(name),
            None => is_label_word(key),
        };
        if !name_ok {
            return Err(format!(
                "'{key}' is not a label key (an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' \
                 or '.', alphanumeric at both ends); {example}"
            ));
        }
        if !value.is_empty() && !is_label_word(value) {
            return Err(format!(
                "'{value}' is not a label value (at most 63 letters, digits, '-', '_' or '.', alphanumeric at both \
                 ends); {example}"
            ));
        }
        Ok(NodeLabel {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

/// The cluster's DNS domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDomain(String);

impl ClusterDomain {
    pub const DEFAULT: &'static str = "cluster.local";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterDomain {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if is_dns_subdomain(&name) {
            Ok(ClusterDomain(name))
        } else {
            Err(format!(
                "'{text}' is not a DNS domain; write the cluster's domain as the kubelet's --cluster-domain has it, \
                 e.g. cluster.local"
            ))
        }
    }
}
