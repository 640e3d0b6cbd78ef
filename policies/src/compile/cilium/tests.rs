use super::{CiliumSettings, NodeLabel, render};
use crate::compile::CompileError;
use crate::load::{PolicyBundle, load_str};

const DEFAULT_YAML: &str = include_str!("../../../default.yaml");

fn bundle(yaml: &str) -> PolicyBundle {
    load_str(yaml, "cilium.yaml").unwrap_or_else(|e| panic!("the test policy must load:\n{e}"))
}

fn files(yaml: &str, settings: &CiliumSettings) -> std::collections::BTreeMap<String, String> {
    render(&bundle(yaml), settings).unwrap_or_else(|e| panic!("must compile:\n{e}"))
}

fn with_ips(ips: &[&str]) -> CiliumSettings {
    CiliumSettings {
        egress_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        ..CiliumSettings::default()
    }
}

/// The text of one file without its comment lines.
fn body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

const RULES: &str = r#"
allowlist:
  ai:
    - domain: api.openai.com
      ports: [443]
      protocols: [https]
    - domain: "*.mirror.example"
      ports: [443]
      protocols: [https]
  plain:
    - domain: files.example.org
      ports: [8080, 80]
      protocols: [http]
    - domain: pinned.example.org
      ports: [80, 8080]
      protocols: [http]
  local:
    - domain: localhost
      ports: [3002]
      protocols: [http]
project_blocklist:
  - domain: "*.competitor.com"
dns:
  static_hosts:
    pinned.example.org: 10.0.0.12
    unlisted.example.org: 10.0.0.13
"#;

#[test]
fn the_shipped_policy_compiles_to_the_six_manifests_and_their_kustomization() {
    let out = files(DEFAULT_YAML, &CiliumSettings::default());
    let names: Vec<&str> = out.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "default-deny.yaml",
            "dns.yaml",
            "egress-gateway-policy.yaml",
            "egress-to-gateway.yaml",
            "gateway-egress.yaml",
            "in-cluster.yaml",
            "kustomization.yaml"
        ]
    );
    let kustomization = &out["kustomization.yaml"];
    for name in &names[..6] {
        assert!(kustomization.contains(&format!("  - {name}\n")), "{kustomization}");
    }
    // The seed's localhost rules are listed as left out, with their lines.
    let gateway = &out["gateway-egress.yaml"];
    assert!(
        gateway
            .contains("#   cilium.yaml:53 storage: localhost ports 3002, 6333: names the gateway pod's own loopback"),
        "{gateway}"
    );
    assert!(
        gateway.contains("#   cilium.yaml:64 synthetic_checks: localhost ports 3011"),
        "{gateway}"
    );
    assert!(gateway.contains("#   cilium.yaml:81 project_allowlist: api.custom-service.com expires 2025-03-01"));
    assert!(!body(gateway).contains("localhost"), "{gateway}");
}

#[test]
fn the_seed_policy_is_kept_word_for_word() {
    let out = files(RULES, &CiliumSettings::default());
    let seed = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: scraper-egress-allow
  namespace: ai
spec:
  endpointSelector:
    matchLabels:
      role: scraper
  egress:
    - toEndpoints:
        - matchLabels:
            app: egress-gateway
      toPorts:
        - ports:
            - port: \"3128\"
              protocol: TCP
";
    assert!(
        out["egress-to-gateway.yaml"].contains(seed),
        "{}",
        out["egress-to-gateway.yaml"]
    );
    // And the versions that reach the gateway's namespace, per role and namespace.
    let body = body(&out["egress-to-gateway.yaml"]);
    for namespace in ["ai", "scraping"] {
        for role in ["scraper", "ai-agent"] {
            let head = format!(
                "  name: {role}-egress-to-gateway\n  namespace: {namespace}\nspec:\n  endpointSelector:\n    \
                 matchLabels:\n      role: {role}\n  egress:\n    - toEndpoints:\n        - matchLabels:\n            \
                 \"k8s:io.kubernetes.pod.namespace\": clawgress\n            app: egress-gateway\n"
            );
            assert!(body.contains(&head), "{head}\n{body}");
        }
    }
}

#[test]
fn allowlisted_names_are_grouped_by_port_set_and_wildcards_cover_every_depth() {
    let out = files(RULES, &CiliumSettings::default());
    let gateway = body(&out["gateway-egress.yaml"]);
    let https = "    - toFQDNs:\n        - matchName: api.openai.com\n        - matchPattern: \"**.mirror.example\"\n      \
                 toPorts:\n        - ports:\n            - port: \"443\"\n              protocol: TCP\n";
    assert!(gateway.contains(https), "{gateway}");
    let http = "    - toFQDNs:\n        - matchName: files.example.org\n        - matchName: pinned.example.org\n      \
                toPorts:\n        - ports:\n            - port: \"80\"\n              protocol: TCP\n            - port: \
                \"8080\"\n              protocol: TCP\n";
    assert!(gateway.contains(http), "{gateway}");
    // A pinned static host is dialed without DNS: its address is allowed on
    // its rule's ports; an unlisted pin allows nothing.
    assert!(
        gateway.contains("    - toCIDRSet:\n        - cidr: \"10.0.0.12/32\"\n"),
        "{gateway}"
    );
    assert!(!gateway.contains("10.0.0.13"), "{gateway}");
    // The blocklist cannot be subtracted; it is listed as left out.
    assert!(out["gateway-egress.yaml"].contains("project_blocklist: *.competitor.com: Cilium only adds allows"));
    // DNS: the allowlist's names and the cluster's, in both workload namespaces.
    let dns = body(&out["dns.yaml"]);
    assert_eq!(
        dns.matches("            - matchPattern: \"**.cluster.local\"\n")
            .count(),
        2,
        "{dns}"
    );
    assert_eq!(
        dns.matches("            - matchName: api.openai.com\n").count(),
        2,
        "{dns}"
    );
    assert!(!dns.contains("competitor"), "{dns}");
}

#[test]
fn default_deny_selects_every_pod_of_both_workload_namespaces() {
    let out = files(RULES, &CiliumSettings::default());
    let text = body(&out["default-deny.yaml"]);
    for namespace in ["ai", "scraping"] {
        let doc = format!(
            "  name: default-deny-egress\n  namespace: {namespace}\nspec:\n  endpointSelector: {{}}\n  \
             enableDefaultDeny:\n    egress: true\n    ingress: false\n  egress:\n    - {{}}\n"
        );
        assert!(text.contains(&doc), "{text}");
    }
}

#[test]
fn names_cilium_cannot_select_are_refused_at_their_line() {
    let yaml = "allowlist:\n  internal:\n    - domain: qdrant.db.svc.cluster.local\n      ports: [6333]\n      \
                protocols: [http]\n    - domain: intranet\n      ports: [80]\n      protocols: [http]\n";
    let Err(CompileError::Policy(error)) = render(&bundle(yaml), &CiliumSettings::default()) else {
        panic!("must be refused");
    };
    let text = error.to_string();
    assert!(text.contains("cilium.yaml:3:"), "{text}");
    assert!(
        text.contains("names the cluster's own domain (cluster.local)"),
        "{text}"
    );
    assert!(text.contains("cilium.yaml:6:"), "{text}");
    assert!(text.contains("is a single-label name"), "{text}");
    assert!(text.contains("hint: write the fully qualified name"), "{text}");
}

#[test]
fn egress_addresses_each_select_the_node_that_holds_them() {
    let none = files(RULES, &CiliumSettings::default());
    let text = body(&none["egress-gateway-policy.yaml"]);
    assert!(
        text.ends_with("  egressGateway:\n    nodeSelector:\n      matchLabels:\n        egress-gateway: \"true\"\n"),
        "{text}"
    );
    let two = files(RULES, &with_ips(&["203.0.113.7", "2001:db8::1"]));
    let text = body(&two["egress-gateway-policy.yaml"]);
    assert!(
        text.contains("  destinationCIDRs:\n    - \"0.0.0.0/0\"\n    - \"::/0\"\n"),
        "{text}"
    );
    let first = "nodeSelector:\n      matchLabels:\n        egress-gateway: \"true\"\n        clawgress.io/egress-ip: \
                 \"203.0.113.7\"\n    egressIP: \"203.0.113.7\"\n";
    assert!(text.contains(&format!("  egressGateway:\n    {first}")), "{text}");
    assert!(
        text.contains("        clawgress.io/egress-ip: \"2001-0db8-0000-0000-0000-0000-0000-0001\"\n      egressIP: \"2001:db8::1\"\n"),
        "{text}"
    );
    assert_eq!(text.matches("egressIP:").count(), 3, "{text}");
    // The command that made the files is in their header.
    assert!(two["egress-gateway-policy.yaml"].contains(
        "#   clawgress policy compile --target cilium --policy cilium.yaml --egress-ip 203.0.113.7 --egress-ip 2001:db8::1 --out DIR\n"
    ));
}

#[test]
fn settings_that_cannot_work_are_refused_with_the_flag() {
    let twice = with_ips(&["203.0.113.7", "203.0.113.7"]);
    let error = render(&bundle(RULES), &twice).unwrap_err().to_string();
    assert!(error.contains("--egress-ip 203.0.113.7 is given twice"), "{error}");
    let clash = CiliumSettings {
        egress_node_label: "clawgress.io/egress-ip=x".parse().unwrap(),
        ..CiliumSettings::default()
    };
    assert!(render(&bundle(RULES), &clash).is_err());
    for bad in [
        "egress-gateway",
        "-bad=true",
        "ok=bad value",
        "a/b/c=x",
        "Big.Prefix/x=y",
    ] {
        assert!(bad.parse::<NodeLabel>().is_err(), "{bad}");
    }
    let label: NodeLabel = "node.example.com/egress=".parse().unwrap();
    assert_eq!(label.to_string(), "node.example.com/egress=");
    assert!("cluster.local.".parse::<super::ClusterDomain>().is_ok());
    assert!("not a domain".parse::<super::ClusterDomain>().is_err());
}

#[test]
fn the_output_is_the_same_on_every_run() {
    let a = files(DEFAULT_YAML, &with_ips(&["203.0.113.7"]));
    let b = files(DEFAULT_YAML, &with_ips(&["203.0.113.7"]));
    assert_eq!(a, b);
}
