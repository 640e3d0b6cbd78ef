//! The CiliumEgressGatewayPolicy: the gateway pods' traffic to the outside
//! is SNATed on the egress nodes to fixed addresses (seed 000 §1). The
//! addresses come from the flags, not the policy.

use super::settings::{CiliumSettings, EGRESS_IP_LABEL, egress_ip_label_value};
use super::yaml::{Node, document, labels, map, str};
use super::{GATEWAY_APP, GATEWAY_NAMESPACE};
use crate::compile::nftables::EgressIp;

pub(super) fn render(settings: &CiliumSettings) -> String {
    let label = &settings.egress_node_label;
    let gateway_node = |ip: Option<&EgressIp>| {
        let mut selector = vec![(label.key.clone(), str(label.value.as_str()))];
        let mut entry = Vec::new();
        if let Some(ip) = ip {
            selector.push((EGRESS_IP_LABEL.to_string(), str(egress_ip_label_value(ip))));
            entry.push(("egressIP".to_string(), str(ip.to_string())));
        }
        entry.insert(
            0,
            ("nodeSelector".to_string(), map([("matchLabels", Node::Map(selector))])),
        );
        Node::Map(entry)
    };
    let mut comment = vec![
        "SNAT: the gateway pods' traffic to the outside leaves through a node labelled".to_string(),
        format!("{label}, so the world sees fixed addresses (seed 000 §1). Cilium applies it to"),
        "traffic leaving the cluster only; in-cluster peers see the pods' own addresses.".to_string(),
    ];
    let mut cidrs = vec![str("0.0.0.0/0")];
    let mut spec = vec![(
        "selectors",
        Node::Seq(vec![map([(
            "podSelector",
            map([(
                "matchLabels",
                labels(&[("app", GATEWAY_APP), ("io.kubernetes.pod.namespace", GATEWAY_NAMESPACE)]),
            )]),
        )])]),
    )];
    match settings.egress_ips.as_slice() {
        [] => {
            comment.push("No --egress-ip: the node's first IPv4 address on its default route.".to_string());
            spec.push(("egressGateway", gateway_node(None)));
        }
        ips => {
            comment.extend([
                format!("Each address lives on its own node: label that node {EGRESS_IP_LABEL}=<address>"),
                "too (IPv6 spelled with '-'). Cilium picks one node per entry; `egressGateway` repeats".to_string(),
                "the first entry because the schema requires it, and is ignored beside `egressGateways`.".to_string(),
            ]);
            if ips.iter().any(|ip| ip.addr().is_ipv6()) {
                cidrs.push(str("::/0"));
            }
            spec.push(("egressGateway", gateway_node(ips.first())));
            if ips.len() > 1 {
                spec.push((
                    "egressGateways",
                    Node::Seq(ips.iter().map(|ip| gateway_node(Some(ip))).collect()),
                ));
            }
        }
    }
    spec.insert(1, ("destinationCIDRs", Node::Seq(cidrs)));
    let object = map([
        ("apiVersion", str("cilium.io/v2")),
        ("kind", str("CiliumEgressGatewayPolicy")),
        ("metadata", map([("name", str("clawgress-egress-gateway"))])),
        (
            "spec",
            Node::Map(spec.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ),
    ]);
    document(&comment, &object)
}
