use super::{COUNTERS, EdgeSettings, EgressIp, InterfaceName, WorkloadCidr, render};
use crate::compile::CompileError;
use crate::load::{PolicyBundle, load_str};
use crate::model::Ports;
use crate::values::Port;

const DEFAULT_YAML: &str = include_str!("../../../default.yaml");

fn settings(cidrs: &[&str]) -> EdgeSettings {
    EdgeSettings {
        workload_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        egress_ip: "203.0.113.7".parse().unwrap(),
        egress_iface: "eth0".parse().unwrap(),
        transparent_port: port(15001),
        dns_port: port(5353),
        proxy_port: port(3128),
    }
}

fn port(n: u16) -> Port {
    Port::new(n).unwrap()
}

fn bundle(yaml: &str) -> PolicyBundle {
    load_str(yaml, "edge.yaml").unwrap_or_else(|e| panic!("the test policy must load:\n{e}"))
}

fn ruleset(yaml: &str, cidrs: &[&str]) -> String {
    render(&bundle(yaml), &settings(cidrs)).unwrap_or_else(|e| panic!("must compile:\n{e}"))
}

/// The lines outside comments, trimmed, for matching rules exactly.
fn rules(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn has_rule(text: &str, rule: &str) -> bool {
    rules(text).contains(&rule)
}

const GROUPS: &str = r#"
allowlist:
  ai:
    - domain: api.openai.com
      ports: [443]
      protocols: [https]
  mirrors:
    roles: [scraper]
    rules:
      - domain: "*.mirror.example"
        ports: [8080, 443]
        protocols: [http, https]
project_allowlist:
  - domain: old.example.com
    ports: [8443]
    protocols: [https]
    expires: "2020-01-01"
"#;

#[test]
fn ports_of_every_group_and_the_project_allowlist_are_redirected_once() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    assert!(text.contains("\t\telements = { 443, 8080, 8443 }\n"), "{text}");
    assert!(
        has_rule(&text, "tcp dport @redirect_ports redirect to :15001"),
        "{text}"
    );
    // The header says which groups asked for each port; the expired rule
    // counts, so the gateway refuses and audits what it no longer allows.
    assert!(text.contains("#   443    ai, mirrors\n"), "{text}");
    assert!(text.contains("#   8080   mirrors\n"), "{text}");
    assert!(text.contains("#   8443   project_allowlist\n"), "{text}");
}

#[test]
fn the_shipped_policy_redirects_its_four_ports() {
    let text = ruleset(DEFAULT_YAML, &["10.42.0.0/24"]);
    assert!(text.contains("\t\telements = { 443, 3002, 3011, 6333 }\n"), "{text}");
    assert_eq!(
        text,
        ruleset(DEFAULT_YAML, &["10.42.0.0/24"]),
        "the output is a function of its input"
    );
}

#[test]
fn an_empty_allowlist_redirects_no_tcp() {
    let text = ruleset("allowlist: {}\n", &["10.42.0.0/24"]);
    assert!(
        text.contains("\tset redirect_ports {\n\t\ttype inet_service\n\t}\n"),
        "{text}"
    );
    assert!(text.contains("#   none: the allowlist is empty"), "{text}");
}

#[test]
fn dns_goes_to_the_control_server_and_the_host_accepts_only_the_gateway_ports() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    for rule in [
        "meta l4proto { tcp, udp } th dport 53 redirect to :5353",
        "fib daddr type local return",
        "ct state established,related accept",
        "tcp dport { 15001, 3128 } accept",
        "meta l4proto { tcp, udp } th dport 5353 accept",
        "ip saddr @workload_v4 jump workload_redirect",
        "ip saddr @workload_v4 jump workload_guard",
        "ip saddr @workload_v4 jump workload_input",
        "ip saddr @workload_v4 counter name drop_forward drop",
        "ip daddr @workload_v4 counter name drop_forward drop",
    ] {
        assert!(has_rule(&text, rule), "missing `{rule}` in\n{text}");
    }
    // The DNS redirect comes before the local-destination exit, so a
    // workload asking this host's port 53 reaches the control server too.
    let dns = text.find("th dport 53 redirect").unwrap();
    let local = text.find("fib daddr type local return").unwrap();
    assert!(dns < local);
}

#[test]
fn every_counter_is_declared_and_used() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    for (name, _) in COUNTERS {
        assert!(text.contains(&format!("\tcounter {name} {{\n")), "{name} not declared");
        assert!(
            text.contains(&format!("counter name {name} drop")),
            "{name} never counts"
        );
    }
    assert!(has_rule(&text, "udp dport 443 counter name drop_quic drop"));
    assert!(has_rule(
        &text,
        "meta l4proto { icmp, ipv6-icmp } counter name drop_icmp drop"
    ));
    assert!(has_rule(
        &text,
        "fib saddr . iif oif missing counter name drop_spoofed drop"
    ));
}

#[test]
fn an_ipv6_workload_subnet_gets_ipv6_rules() {
    let text = ruleset(GROUPS, &["fd00:42::/64"]);
    assert!(
        text.contains("\tset workload_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { fd00:42::/64 }\n")
    );
    assert!(!text.contains("workload_v4"), "no IPv4 subnet, no IPv4 set:\n{text}");
    for rule in [
        "ip6 saddr @workload_v6 jump workload_redirect",
        "ip6 saddr @workload_v6 jump workload_guard",
        "ip6 saddr @workload_v6 jump workload_input",
        "ip6 saddr @workload_v6 counter name drop_forward drop",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 return",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
    ] {
        assert!(has_rule(&text, rule), "missing `{rule}` in\n{text}");
    }
    assert!(!text.contains("disable_ipv6"));
}

#[test]
fn both_families_side_by_side() {
    let text = ruleset(GROUPS, &["10.42.0.0/24", "10.43.0.0/16", "fd00:42::/64"]);
    assert!(text.contains("elements = { 10.42.0.0/24, 10.43.0.0/16 }"));
    assert!(text.contains("elements = { fd00:42::/64 }"));
    assert!(has_rule(&text, "ip saddr @workload_v4 jump workload_input"));
    assert!(has_rule(&text, "ip6 saddr @workload_v6 jump workload_input"));
}

#[test]
fn ipv4_only_workloads_are_told_to_turn_ipv6_off() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    assert!(!text.contains("ip6 saddr"), "{text}");
    assert!(!text.contains("nd-neighbor"), "{text}");
    assert!(text.contains("sysctl -w net.ipv6.conf.<interface>.disable_ipv6=1"));
}

#[test]
fn the_header_carries_the_host_settings_and_the_command_again() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    for line in [
        "#   sysctl -w net.ipv4.ip_forward=0",
        "#   sysctl -w net.ipv6.conf.all.forwarding=0",
        "#   sysctl -w net.ipv4.conf.all.route_localnet=0",
        "#   nft list counters table inet clawgress",
        "#     must list 203.0.113.7; if it does not: ip addr add 203.0.113.7/32 dev eth0",
        "#   clawgress policy compile --target nftables --policy edge.yaml --workload-cidr 10.42.0.0/24 \
         --egress-ip 203.0.113.7 --egress-iface eth0 --transparent-port 15001 --dns-port 5353 --proxy-port 3128",
    ] {
        assert!(text.contains(&format!("{line}\n")), "missing `{line}` in\n{text}");
    }
    assert!(text.contains("rp_filter"));
    // One table, replaced whole: declared, deleted, then defined.
    assert!(text.contains("table inet clawgress\ndelete table inet clawgress\n\ntable inet clawgress {\n"));
    assert!(!text.contains("flush ruleset"), "other tables on the host are not ours");
}

#[test]
fn only_the_hosts_own_egress_is_rewritten_to_the_egress_ip() {
    let text = ruleset(GROUPS, &["10.42.0.0/24"]);
    let snat: Vec<&str> = rules(&text).into_iter().filter(|r| r.contains("snat")).collect();
    assert_eq!(
        snat,
        [
            "chain egress_snat {",
            "meta nfproto ipv4 oifname \"eth0\" fib saddr type local snat ip to 203.0.113.7"
        ]
    );
    let mut v6 = settings(&["fd00:42::/64"]);
    v6.egress_ip = "2001:db8::7".parse().unwrap();
    let text = render(&bundle(GROUPS), &v6).unwrap();
    assert!(has_rule(
        &text,
        "meta nfproto ipv6 oifname \"eth0\" fib saddr type local snat ip6 to 2001:db8::7"
    ));
    assert!(text.contains("ip addr add 2001:db8::7/128 dev eth0"));
}

#[test]
fn a_rule_for_port_53_is_refused_at_its_line() {
    let yaml =
        "allowlist:\n  resolvers:\n    - domain: dns.example\n      ports: [853, 53]\n      protocols: [https]\n";
    let error = render(&bundle(yaml), &settings(&["10.42.0.0/24"])).unwrap_err();
    let CompileError::Policy(error) = error else {
        panic!("not a policy error: {error}")
    };
    let problem = &error.diagnostics()[0];
    assert_eq!(
        (problem.origin.as_str(), problem.line, problem.column),
        ("edge.yaml", 3, 15)
    );
    assert!(
        problem.message.contains("resolvers rule dns.example allows port 53"),
        "{problem}"
    );
    assert!(problem.hint.as_deref().unwrap_or_default().contains("remove 53"));
}

#[test]
fn a_rule_without_ports_is_refused_not_read_as_every_port() {
    let mut policy = bundle(GROUPS);
    policy.document.allowlist.groups[1].rules[0].ports = Ports(Vec::new());
    let error = render(&policy, &settings(&["10.42.0.0/24"])).unwrap_err().to_string();
    assert!(
        error.starts_with("edge.yaml:10:17: mirrors rule *.mirror.example lists no ports"),
        "{error}"
    );
}

#[test]
fn settings_that_contradict_each_other_name_their_flags() {
    type Change = fn(&mut EdgeSettings);
    let cases: [(Change, &str); 5] = [
        (|s| s.workload_cidrs.clear(), "--workload-cidr is missing"),
        (
            |s| s.workload_cidrs.push("10.42.0.16/28".parse().unwrap()),
            "--workload-cidr 10.42.0.0/24 and --workload-cidr 10.42.0.16/28 overlap",
        ),
        (
            |s| s.egress_ip = "10.42.0.1".parse().unwrap(),
            "--egress-ip 10.42.0.1 lies inside --workload-cidr 10.42.0.0/24",
        ),
        (|s| s.dns_port = port(3128), "--dns-port and --proxy-port are both 3128"),
        (
            |s| s.transparent_port = port(3128),
            "--transparent-port and --proxy-port are both 3128",
        ),
    ];
    for (change, expected) in cases {
        let mut edge = settings(&["10.42.0.0/24"]);
        change(&mut edge);
        let error = render(&bundle(GROUPS), &edge).unwrap_err();
        assert!(matches!(error, CompileError::Setting(_)));
        assert!(error.to_string().starts_with(expected), "{error}");
    }
}

#[test]
fn workload_cidrs_are_checked_when_parsed() {
    let refused = [
        ("10.42.0.5/24", "has host bits set; write the subnet 10.42.0.0/24"),
        (
            "10.42.0.5",
            "has no prefix length; write the subnet, e.g. 10.42.0.0/24, or 10.42.0.5/32",
        ),
        ("fd00::1", "or fd00::1/128 for one address"),
        ("0.0.0.0/0", "is every address"),
        ("::/0", "is every address"),
        ("127.0.0.0/8", "overlaps 127.0.0.0/8 (loopback)"),
        ("169.254.0.0/16", "(link-local)"),
        ("fe80::/64", "overlaps fe80::/10 (link-local)"),
        ("ff02::/16", "(multicast)"),
        ("::ffff:10.0.0.0/104", "(IPv4-mapped)"),
        ("10.42.0.0/33", "is not a CIDR"),
        ("ten/8", "is not a CIDR"),
    ];
    for (text, expected) in refused {
        let error = text.parse::<WorkloadCidr>().unwrap_err();
        assert!(error.contains(expected), "{text}: {error}");
    }
    for accepted in [
        "10.42.0.0/24",
        "198.18.0.0/15",
        "10.42.0.7/32",
        "fd00:42::/64",
        "2001:db8:1::/48",
    ] {
        assert_eq!(accepted.parse::<WorkloadCidr>().unwrap().to_string(), accepted);
    }
}

#[test]
fn egress_ips_and_interfaces_are_checked_when_parsed() {
    for (text, expected) in [
        ("127.0.0.1", "is loopback"),
        ("0.0.0.0", "is the unspecified address"),
        ("224.0.0.1", "is multicast"),
        ("255.255.255.255", "is the broadcast address"),
        ("fe80::1", "is link-local"),
        ("::ffff:203.0.113.7", "IPv4-mapped"),
        ("203.0.113.7/32", "is not an IP address"),
    ] {
        let error = text.parse::<EgressIp>().unwrap_err();
        assert!(error.contains(expected), "{text}: {error}");
    }
    assert!("2001:db8::7".parse::<EgressIp>().is_ok());
    for name in ["eth0", "enp1s0", "br-workload", "wg0.100", "a23456789012345"] {
        assert_eq!(name.parse::<InterfaceName>().unwrap().as_str(), name);
    }
    for name in [
        "",
        "a234567890123456",
        "eth*",
        "eth0\"",
        "eth 0",
        "..",
        "eth0/1",
        "éth0",
    ] {
        let error = name.parse::<InterfaceName>().unwrap_err();
        assert!(error.contains("is not an interface name"), "{name}: {error}");
    }
    for text in ["0", "65536", "-1", "https"] {
        let error = text.parse::<Port>().unwrap_err();
        assert!(error.contains("ports are 1-65535"), "{text}: {error}");
    }
    assert_eq!("65535".parse::<Port>(), Ok(port(65535)));
}

#[test]
fn a_line_break_in_the_file_name_stays_inside_its_comment() {
    let policy = load_str("allowlist: {}\n", "edge.yaml\nflush ruleset").unwrap();
    let text = render(&policy, &settings(&["10.42.0.0/24"])).unwrap();
    assert!(!rules(&text).iter().any(|line| line.starts_with("flush")), "{text}");
}
