//! Kubernetes with Cilium: the policy as CiliumNetworkPolicy and
//! CiliumEgressGatewayPolicy manifests, so that pods in the workload
//! namespaces leave the cluster only through the egress gateway, and the
//! gateway only towards what the allowlist names (issue 14).
//!
//! [`render`] returns file name → YAML text; `clawgress policy compile
//! --target cilium --out DIR` writes them, and `cilium/` holds the files
//! for `policies/default.yaml`, checked in. What each file does is in
//! `cilium/README.md`.
//!
//! Choices made here, on purpose:
//! - The output is a function of the policy text and the flags, never of the
//!   day: rules with an expiry date are compiled like the others (the
//!   gateway stops honouring them; its refusal is audited, a drop here
//!   would not be), and the files list them.
//! - `*.example.com` (any depth below example.com) is Cilium's
//!   `**.example.com`; `*.example.com` there would match one level only.
//! - `localhost` rules name the gateway pod's own loopback, which Cilium does
//!   not police and where nothing of ours listens in a cluster: they are
//!   left out, and the files say so with each rule's `file:line`.
//! - Names under the cluster's domain, and single-label names (which the
//!   resolver expands with the pod's search path into the cluster's
//!   domain), are refused at their line: a Service's traffic carries the
//!   identity of its pods, which `toFQDNs` never selects.
//! - `project_blocklist` is left out: Cilium adds allows, it cannot take a
//!   name back out of a wildcard. The gateway refuses those names.
//! - `dns.static_hosts` entries that an allowlist rule covers become
//!   `toCIDRSet` rules with that rule's ports (the gateway dials the pinned
//!   address without asking DNS, so `toFQDNs` would never learn it);
//!   loopback pins are left out like `localhost` rules.

mod egress_gateway;
mod settings;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};

pub use settings::{CiliumSettings, ClusterDomain, EGRESS_IP_LABEL, NodeLabel, egress_ip_label_value};

use crate::compile::CompileError;
use crate::diagnostic::{Diagnostic, PolicyError};
use crate::load::PolicyBundle;
use crate::model::{AllowRule, PROJECT_GROUP};
use crate::pattern::DomainPattern;
use yaml::{Node, document, labels, map, str};

/// Where the gateway runs and how its pods are labelled (seed 000:
/// `app: egress-gateway`); `deploy/k8s` uses the same names.
pub const GATEWAY_NAMESPACE: &str = "clawgress";
pub const GATEWAY_APP: &str = "egress-gateway";
/// The namespaces whose pods may leave only through the gateway (seed 000).
pub const WORKLOAD_NAMESPACES: [&str; 2] = ["ai", "scraping"];
/// The pod roles that may reach the gateway (seed 000's micro-segmentation).
pub const WORKLOAD_ROLES: [&str; 2] = ["scraper", "ai-agent"];
/// The in-cluster peers of the platform, as `deploy/k8s` labels them.
pub const NATS_APP: &str = "nats";
pub const SCHEDULER_APP: &str = "clawgress-scheduler";
pub const STEEL_APP: &str = "steel";
/// The synthetic checks' CronJob pods (`app.kubernetes.io/name`).
pub const SYNTHETIC_NAME: &str = "clawgress-synthetic";
/// Namespace label Cilium gives every endpoint; a selector without it only
/// sees the policy's own namespace.
const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

const PROXY_PORT: &str = "3128";
const ADMIN_PORT: &str = "9128";
const NATS_PORT: &str = "4222";
const STEEL_PORT: &str = "3000";
const NATS_ROUTE_PORT: &str = "6222";
/// Cilium's `toPorts[].ports` takes at most this many entries.
const MAX_PORTS_PER_RULE: usize = 40;

/// The manifests for `bundle`, as file name → YAML text, sorted by name.
pub fn render(bundle: &PolicyBundle, settings: &CiliumSettings) -> Result<BTreeMap<String, String>, CompileError> {
    settings.check()?;
    let plan = Plan::new(bundle, settings)?;
    let header = plan.header(settings);
    let mut files = BTreeMap::new();
    let mut add = |name: &str, body: String| {
        files.insert(name.to_string(), format!("{}{body}", comment_block(&header)));
    };
    add(DEFAULT_DENY, plan.default_deny());
    add(TO_GATEWAY, plan.to_gateway());
    add(DNS, plan.workload_dns());
    add(GATEWAY_EGRESS, plan.gateway_egress());
    add(IN_CLUSTER, plan.in_cluster());
    add(EGRESS_GATEWAY, egress_gateway::render(settings));
    let resources: Vec<Node> = files.keys().map(|name| str(name.as_str())).collect();
    let kustomization = map([
        ("apiVersion", str("kustomize.config.k8s.io/v1beta1")),
        ("kind", str("Kustomization")),
        ("resources", Node::Seq(resources)),
    ]);
    let mut text = comment_block(&header);
    text.push_str(&document(&[], &kustomization)["---\n".len()..]);
    files.insert("kustomization.yaml".to_string(), text);
    Ok(files)
}

const DEFAULT_DENY: &str = "default-deny.yaml";
const TO_GATEWAY: &str = "egress-to-gateway.yaml";
const DNS: &str = "dns.yaml";
const GATEWAY_EGRESS: &str = "gateway-egress.yaml";
const IN_CLUSTER: &str = "in-cluster.yaml";
const EGRESS_GATEWAY: &str = "egress-gateway-policy.yaml";

fn comment_block(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("{}\n", format!("# {l}").trim_end()))
        .collect()
}

/// A name `toFQDNs` and `rules.dns` select: exactly, or by pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Fqdn {
    Name(String),
    Pattern(String),
}

impl Fqdn {
    fn of(pattern: &DomainPattern) -> Fqdn {
        match pattern {
            DomainPattern::Exact(name) => Fqdn::Name(name.clone()),
            DomainPattern::Wildcard { suffix } => Fqdn::Pattern(format!("**.{suffix}")),
        }
    }

    fn node(&self) -> Node {
        match self {
            Fqdn::Name(name) => map([("matchName", str(name.as_str()))]),
            Fqdn::Pattern(pattern) => map([("matchPattern", str(pattern.as_str()))]),
        }
    }
}

/// What the policy turns into, gathered once for every file.
struct Plan {
    source: String,
    version: String,
    /// Allowlisted names by the sorted ports their rules name.
    fqdns_by_ports: BTreeMap<Vec<u16>, BTreeSet<Fqdn>>,
    /// Pinned addresses of allowlisted static hosts, by ports.
    cidrs_by_ports: BTreeMap<Vec<u16>, BTreeSet<String>>,
    /// Every name that may resolve: the allowlist's and the cluster's.
    resolvable: BTreeSet<Fqdn>,
    /// Policy entries that are not in the manifests, and why.
    left_out: Vec<String>,
    /// Rules compiled although they end on a date.
    expiring: Vec<String>,
}

impl Plan {
    fn new(bundle: &PolicyBundle, settings: &CiliumSettings) -> Result<Plan, PolicyError> {
        let doc = &bundle.document;
        let groups = doc
            .allowlist
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.rules.as_slice()))
            .chain([(PROJECT_GROUP, doc.project_allowlist.as_slice())]);
        let cluster = settings.cluster_domain.as_str();
        let mut plan = Plan {
            source: bundle.source.clone(),
            version: bundle.version.clone(),
            fqdns_by_ports: BTreeMap::new(),
            cidrs_by_ports: BTreeMap::new(),
            resolvable: BTreeSet::from([Fqdn::Pattern(format!("**.{cluster}"))]),
            left_out: Vec::new(),
            expiring: Vec::new(),
        };
        let mut problems = Vec::new();
        let mut covering: Vec<&AllowRule> = Vec::new();
        for (group, rules) in groups {
            for rule in rules {
                let at = format!("{}:{}", bundle.source, rule.domain.line);
                let ports = sorted_ports(rule);
                let port_list = join(&ports);
                if rule.is_localhost() {
                    plan.left_out.push(format!(
                        "{at} {group}: {} ports {port_list}: names the gateway pod's own loopback, which Cilium \
                         does not police and where nothing listens in a cluster",
                        *rule.domain
                    ));
                    continue;
                }
                if let Some(problem) = inexpressible(bundle, rule, group, cluster) {
                    problems.push(problem);
                    continue;
                }
                if let Some(expires) = &rule.expires {
                    plan.expiring
                        .push(format!("{at} {group}: {} expires {}", *rule.domain, expires.value));
                }
                let fqdn = Fqdn::of(&rule.domain);
                plan.resolvable.insert(fqdn.clone());
                plan.fqdns_by_ports.entry(ports).or_default().insert(fqdn);
                covering.push(rule);
            }
        }
        for entry in &doc.project_blocklist {
            plan.left_out.push(format!(
                "{}:{} project_blocklist: {}: Cilium only adds allows; the gateway refuses it",
                bundle.source, entry.domain.line, *entry.domain
            ));
        }
        for (name, ip) in &doc.dns.static_hosts {
            let Some(rule) = covering.iter().find(|r| r.domain.matches(name)) else {
                continue;
            };
            if ip.is_loopback() {
                plan.left_out.push(format!(
                    "{}: dns.static_hosts {name}: {ip} is the gateway pod's own loopback",
                    bundle.source
                ));
                continue;
            }
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            plan.cidrs_by_ports
                .entry(sorted_ports(rule))
                .or_default()
                .insert(format!("{ip}/{prefix}"));
        }
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(PolicyError::Invalid(problems))
        }
    }

    fn header(&self, settings: &CiliumSettings) -> Vec<String> {
        let mut command = format!("clawgress policy compile --target cilium --policy {}", self.source);
        for ip in &settings.egress_ips {
            command.push_str(&format!(" --egress-ip {ip}"));
        }
        if settings.egress_node_label.to_string() != NodeLabel::DEFAULT {
            command.push_str(&format!(" --egress-node-label {}", settings.egress_node_label));
        }
        if settings.cluster_domain.as_str() != ClusterDomain::DEFAULT {
            command.push_str(&format!(" --cluster-domain {}", settings.cluster_domain));
        }
        command.push_str(" --out DIR");
        vec![
            format!("Generated from policy version {} by:", self.version),
            format!("  {}", command.replace(['\n', '\r'], "?")),
            "Compile again when the policy changes; do not edit. What each file does: cilium/README.md.".to_string(),
        ]
    }

    fn default_deny(&self) -> String {
        let why = [
            "Default-deny egress for every pod of the namespace (seed 000). `enableDefaultDeny.egress:",
            "true` says it outright; the empty rule `egress: [{}]` allows no peer and is how Cilium",
            "releases before that field spelled it. Not `egressDeny`: a deny wins over every allow,",
            "so the allows in the other files could never open anything. Not `egress: []`: an empty",
            "list is dropped when the object is read, and a policy without egress rules does not",
            "switch egress to default deny. Ingress is left as it is (`ingress: false`).",
        ]
        .map(String::from);
        let mut out = String::new();
        for (i, namespace) in WORKLOAD_NAMESPACES.into_iter().enumerate() {
            let spec = map([
                ("endpointSelector", Node::Map(Vec::new())),
                (
                    "enableDefaultDeny",
                    map([("egress", Node::Bool(true)), ("ingress", Node::Bool(false))]),
                ),
                ("egress", Node::Seq(vec![Node::Map(Vec::new())])),
            ]);
            let comment = if i == 0 { &why[..] } else { &[] };
            out.push_str(&document(comment, &cnp("default-deny-egress", namespace, spec)));
        }
        out
    }

    fn to_gateway(&self) -> String {
        let mut out = document(
            &[
                "Seed 000's policy, word for word. It selects `app: egress-gateway` in its own".to_string(),
                "namespace (`ai`) only, where no gateway runs: the policies below, which name the".to_string(),
                "gateway's namespace, are the ones that open the way.".to_string(),
            ],
            &cnp(
                "scraper-egress-allow",
                "ai",
                map([
                    (
                        "endpointSelector",
                        map([("matchLabels", labels(&[("role", "scraper")]))]),
                    ),
                    (
                        "egress",
                        Node::Seq(vec![map([
                            (
                                "toEndpoints",
                                Node::Seq(vec![map([("matchLabels", labels(&[("app", GATEWAY_APP)]))])]),
                            ),
                            ("toPorts", port_rules(&[(PROXY_PORT, "TCP")])),
                        ])]),
                    ),
                ]),
            ),
        );
        for namespace in WORKLOAD_NAMESPACES {
            for role in WORKLOAD_ROLES {
                let comment = [format!(
                    "Pods with role: {role} in {namespace} reach the gateway's proxy port, and nothing else here."
                )];
                let spec = map([
                    ("endpointSelector", map([("matchLabels", labels(&[("role", role)]))])),
                    (
                        "egress",
                        Node::Seq(vec![to_endpoints(gateway(), &[(PROXY_PORT, "TCP")])]),
                    ),
                ]);
                out.push_str(&document(
                    &comment,
                    &cnp(&format!("{role}-egress-to-gateway"), namespace, spec),
                ));
            }
        }
        out
    }

    fn workload_dns(&self) -> String {
        let mut out = String::new();
        for (i, namespace) in WORKLOAD_NAMESPACES.into_iter().enumerate() {
            let comment: Vec<String> = if i == 0 {
                let mut lines: Vec<String> = [
                    "DNS through kube-dns, and only for the names the allowlist names (seed 002 §6.2) and",
                    "the cluster's own (Services; the search path also tries every name under it first).",
                    "Cilium's DNS proxy answers other names REFUSED; set the agent's",
                    "--tofqdns-dns-reject-response-code=nameError for the seed's NXDOMAIN.",
                ]
                .map(String::from)
                .into();
                lines.extend(self.left_out_lines());
                lines
            } else {
                Vec::new()
            };
            let spec = map([
                ("endpointSelector", Node::Map(Vec::new())),
                ("egress", Node::Seq(vec![self.dns_rule()])),
            ]);
            out.push_str(&document(&comment, &cnp("dns-allowlisted-names", namespace, spec)));
        }
        out
    }

    fn gateway_egress(&self) -> String {
        let mut rules = vec![self.dns_rule(), to_endpoints(nats(), &[(NATS_PORT, "TCP")])];
        for (ports, fqdns) in &self.fqdns_by_ports {
            rules.push(map([
                ("toFQDNs", Node::Seq(fqdns.iter().map(Fqdn::node).collect())),
                ("toPorts", tcp_ports(ports)),
            ]));
        }
        for (ports, cidrs) in &self.cidrs_by_ports {
            let set = cidrs.iter().map(|c| map([("cidr", str(c.as_str()))])).collect();
            rules.push(map([("toCIDRSet", Node::Seq(set)), ("toPorts", tcp_ports(ports))]));
        }
        let mut comment: Vec<String> = [
            "The gateway's own egress: DNS (the allowlisted names and the cluster's; Cilium learns",
            "the addresses `toFQDNs` allows from these answers), NATS, and each allowlisted name on",
            "the ports its rules name, grouped by port set. Nothing else: a gateway told to go",
            "elsewhere is stopped here too. Temporary allows (`clawgress egress allow-temp`) are",
            "runtime state this file cannot know: add the name to the policy and compile again.",
        ]
        .map(String::from)
        .into();
        comment.extend(self.left_out_lines());
        if !self.expiring.is_empty() {
            comment.push("Compiled although they expire (the gateway stops honouring them on the date):".to_string());
            comment.extend(self.expiring.iter().map(|l| format!("  {l}")));
        }
        let spec = map([
            (
                "endpointSelector",
                map([("matchLabels", labels(&[("app", GATEWAY_APP)]))]),
            ),
            ("egress", Node::Seq(rules)),
        ]);
        document(&comment, &cnp("egress-gateway-egress", GATEWAY_NAMESPACE, spec))
    }

    fn in_cluster(&self) -> String {
        let comment = [
            "The scheduler's in-cluster peers under scraping's default deny: NATS (jobs and results),",
            "the Steel servers (REST and CDP share the port), and the gateways' admin port (the audit",
            "check of Steel pages). Its fetches go through the gateway's proxy port (role: scraper).",
        ]
        .map(String::from);
        let steel = labels(&[(NAMESPACE_LABEL, "scraping"), ("app", STEEL_APP)]);
        let spec = map([
            (
                "endpointSelector",
                map([("matchLabels", labels(&[("app", SCHEDULER_APP)]))]),
            ),
            (
                "egress",
                Node::Seq(vec![
                    to_endpoints(nats(), &[(NATS_PORT, "TCP")]),
                    to_endpoints(steel, &[(STEEL_PORT, "TCP")]),
                    to_endpoints(gateway(), &[(ADMIN_PORT, "TCP")]),
                ]),
            ),
        ]);
        let mut out = document(&comment, &cnp("scheduler-in-cluster", "scraping", spec));
        let comment = [
            "Who may talk to NATS: whoever can write $KV.clawgress-control.> changes the gateways'",
            "control state unaudited (README: Operator control). The gateways, the schedulers and the",
            "synthetic checks as clients, the servers among themselves on the route port. The",
            "kubelet's probes come from the node, which Cilium lets through.",
        ]
        .map(String::from);
        let clients = [
            gateway(),
            labels(&[(NAMESPACE_LABEL, "scraping"), ("app", SCHEDULER_APP)]),
            labels(&[
                (NAMESPACE_LABEL, GATEWAY_NAMESPACE),
                ("app.kubernetes.io/name", SYNTHETIC_NAME),
            ]),
        ];
        let from = |peers: Vec<Node>, ports: &[(&str, &str)]| {
            map([
                (
                    "fromEndpoints",
                    Node::Seq(peers.into_iter().map(|p| map([("matchLabels", p)])).collect()),
                ),
                ("toPorts", port_rules(ports)),
            ])
        };
        let spec = map([
            ("endpointSelector", map([("matchLabels", labels(&[("app", NATS_APP)]))])),
            (
                "ingress",
                Node::Seq(vec![
                    from(clients.to_vec(), &[(NATS_PORT, "TCP")]),
                    from(vec![nats()], &[(NATS_ROUTE_PORT, "TCP")]),
                ]),
            ),
        ]);
        out.push_str(&document(&comment, &cnp("nats-clients", GATEWAY_NAMESPACE, spec)));
        out
    }

    /// DNS to kube-dns, through Cilium's DNS proxy, for the names that may
    /// resolve.
    fn dns_rule(&self) -> Node {
        let kube_dns = labels(&[(NAMESPACE_LABEL, "kube-system"), ("k8s:k8s-app", "kube-dns")]);
        map([
            ("toEndpoints", Node::Seq(vec![map([("matchLabels", kube_dns)])])),
            (
                "toPorts",
                Node::Seq(vec![map([
                    ("ports", Node::Seq(vec![port("53", "UDP"), port("53", "TCP")])),
                    (
                        "rules",
                        map([("dns", Node::Seq(self.resolvable.iter().map(Fqdn::node).collect()))]),
                    ),
                ])]),
            ),
        ])
    }

    fn left_out_lines(&self) -> Vec<String> {
        if self.left_out.is_empty() {
            return Vec::new();
        }
        let mut lines = vec!["Left out of the policy (cilium/README.md says why):".to_string()];
        lines.extend(self.left_out.iter().map(|l| format!("  {l}")));
        lines
    }
}

/// Why Cilium cannot express `rule`, if it cannot.
fn inexpressible(bundle: &PolicyBundle, rule: &AllowRule, group: &str, cluster: &str) -> Option<Diagnostic> {
    let base = rule.domain.base();
    let at = |message: String, hint: &str| {
        Diagnostic::new(&bundle.source, rule.domain.line, rule.domain.column, message).with_hint(hint)
    };
    if base == cluster || base.ends_with(&format!(".{cluster}")) {
        return Some(at(
            format!(
                "{group} rule {} names the cluster's own domain ({cluster}): a Service's traffic carries its \
                 pods' identity, which Cilium's toFQDNs never selects",
                *rule.domain
            ),
            "allow in-cluster destinations with a CiliumNetworkPolicy toEndpoints rule beside cilium/, and \
             remove the rule (or compile with the right --cluster-domain)",
        ));
    }
    if !base.contains('.') {
        return Some(at(
            format!(
                "{group} rule {} is a single-label name: in a pod the resolver expands it with the search path \
                 into the cluster's domain, so no query ever asks for it as written",
                *rule.domain
            ),
            "write the fully qualified name, e.g. qdrant.example.com",
        ));
    }
    None
}

fn sorted_ports(rule: &AllowRule) -> Vec<u16> {
    let set: BTreeSet<u16> = rule.ports.0.iter().map(|p| p.get()).collect();
    set.into_iter().collect()
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

fn cnp(name: &str, namespace: &str, spec: Node) -> Node {
    map([
        ("apiVersion", str("cilium.io/v2")),
        ("kind", str("CiliumNetworkPolicy")),
        ("metadata", map([("name", str(name)), ("namespace", str(namespace))])),
        ("spec", spec),
    ])
}

fn gateway() -> Node {
    labels(&[(NAMESPACE_LABEL, GATEWAY_NAMESPACE), ("app", GATEWAY_APP)])
}

fn nats() -> Node {
    labels(&[(NAMESPACE_LABEL, GATEWAY_NAMESPACE), ("app", NATS_APP)])
}

fn to_endpoints(selector: Node, ports: &[(&str, &str)]) -> Node {
    map([
        ("toEndpoints", Node::Seq(vec![map([("matchLabels", selector)])])),
        ("toPorts", port_rules(ports)),
    ])
}

fn port(number: &str, protocol: &str) -> Node {
    map([("port", str(number)), ("protocol", str(protocol))])
}

fn port_rules(ports: &[(&str, &str)]) -> Node {
    let ports = ports.iter().map(|(n, p)| port(n, p)).collect();
    Node::Seq(vec![map([("ports", Node::Seq(ports))])])
}

/// TCP on each port (HTTP and HTTPS both), in rules of at most
/// [`MAX_PORTS_PER_RULE`] ports.
fn tcp_ports(ports: &[u16]) -> Node {
    Node::Seq(
        ports
            .chunks(MAX_PORTS_PER_RULE)
            .map(|chunk| {
                let ports = chunk.iter().map(|p| port(&p.to_string(), "TCP")).collect();
                map([("ports", Node::Seq(ports))])
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
