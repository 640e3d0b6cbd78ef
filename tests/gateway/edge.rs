//! The host edge: `clawgress policy compile --target nftables` on the
//! shipped policy, checked by nft itself. `nft -c` parses and resolves the
//! ruleset without touching the host; it does not ask the kernel whether
//! each expression may sit in its hook, so the ruleset is also loaded, twice,
//! into a network namespace that dies with the command (`unshare --net`).
//! No packet is sent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::support;

const DEFAULT_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.yaml");

/// `nft` on PATH or where Debian puts it, or `None` after recording the skip.
fn nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        support::skip("nft not found (./deploy/local/prereqs.sh nftables; `make test` installs it)");
    }
    found
}

fn compile(extra: &[&str]) -> Output {
    Command::new(support::clawgress_bin())
        .args(["policy", "compile", "--target", "nftables", "--policy", DEFAULT_POLICY])
        .args([
            "--egress-iface",
            "eth0",
            "--transparent-port",
            "15001",
            "--dns-port",
            "5353",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Compiles the default policy for `cidrs` into a file and has nft check it.
fn compile_and_check(cidrs: &[&str], egress_ip: &str) {
    let Some(nft) = nft() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("edge.nft");
    let mut args = vec!["--egress-ip", egress_ip, "--out", ruleset.to_str().unwrap()];
    for cidr in cidrs {
        args.extend(["--workload-cidr", cidr]);
    }
    let compiled = compile(&args);
    assert!(compiled.status.success(), "{}", text(&compiled.stderr));
    let written = std::fs::read_to_string(&ruleset).unwrap();
    assert!(written.contains("elements = { 443, 3002, 3011, 6333 }"), "{written}");

    let checked = Command::new(&nft).arg("-c").arg("-f").arg(&ruleset).output().unwrap();
    assert!(
        checked.status.success(),
        "nft -c refused the ruleset:\n{}\n{written}",
        text(&checked.stderr)
    );
    load_in_a_throwaway_namespace(&nft, &ruleset, &written);
}

fn load_in_a_throwaway_namespace(nft: &Path, ruleset: &Path, written: &str) {
    let usable = Command::new("unshare").args(["--net", "true"]).output();
    if !usable.is_ok_and(|o| o.status.success()) {
        support::skip("unshare --net is not available here: the ruleset was only checked with nft -c, not loaded");
        return;
    }
    let (nft, ruleset) = (nft.display(), ruleset.display());
    let loaded = Command::new("unshare")
        .args(["--net", "sh", "-c"])
        .arg(format!(
            "{nft} -f {ruleset} && {nft} -f {ruleset} && {nft} list counters table inet clawgress"
        ))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "the kernel refused the ruleset (or a reload of it):\n{}\n{written}",
        text(&loaded.stderr)
    );
    let counters = text(&loaded.stdout);
    for name in ["drop_spoofed", "drop_quic", "drop_icmp", "drop_forward", "drop_host"] {
        assert!(counters.contains(&format!("counter {name} {{")), "{counters}");
    }
}

#[test]
fn the_shipped_policy_compiles_to_a_ruleset_nft_accepts() {
    compile_and_check(&["10.42.0.0/24"], "203.0.113.7");
}

#[test]
fn an_ipv6_workload_subnet_compiles_to_a_ruleset_nft_accepts() {
    compile_and_check(&["fd00:42::/64"], "2001:db8::7");
    compile_and_check(&["10.42.0.0/24", "fd00:42::/64"], "203.0.113.7");
}

#[test]
fn without_out_the_ruleset_goes_to_standard_output() {
    let compiled = compile(&["--workload-cidr", "10.42.0.0/24", "--egress-ip", "203.0.113.7"]);
    assert!(compiled.status.success(), "{}", text(&compiled.stderr));
    assert!(text(&compiled.stdout).starts_with("#!/usr/sbin/nft -f\n"));
    // The shipped policy's expired entries are mentioned, not mixed into the ruleset.
    assert!(text(&compiled.stderr).contains("`clawgress policy check"));
}

#[test]
fn bad_flags_name_the_flag_and_the_fix() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--workload-cidr", "10.42.0.5/24", "--egress-ip", "203.0.113.7"],
            "--workload-cidr <CIDR>': '10.42.0.5/24' has host bits set; write the subnet 10.42.0.0/24",
        ),
        (
            &["--workload-cidr", "10.42.0.0/24", "--egress-ip", "127.0.0.1"],
            "--egress-ip <IP>': '127.0.0.1' is loopback",
        ),
        (
            &["--workload-cidr", "10.42.0.0/24", "--egress-ip", "10.42.0.1"],
            "--egress-ip 10.42.0.1 lies inside --workload-cidr 10.42.0.0/24",
        ),
        (
            &[
                "--workload-cidr",
                "10.42.0.0/24",
                "--egress-ip",
                "203.0.113.7",
                "--proxy-port",
                "5353",
            ],
            "--dns-port and --proxy-port are both 5353",
        ),
        (&["--egress-ip", "203.0.113.7"], "--workload-cidr <CIDR>"),
    ];
    for (args, expected) in cases {
        let compiled = compile(args);
        assert_eq!(compiled.status.code(), Some(2), "{args:?}");
        assert!(
            text(&compiled.stderr).contains(expected),
            "{args:?}: {}",
            text(&compiled.stderr)
        );
        assert!(compiled.stdout.is_empty());
    }
    let unknown = Command::new(support::clawgress_bin())
        .args(["policy", "compile", "--target", "iptables", "--policy", DEFAULT_POLICY])
        .output()
        .unwrap();
    assert!(
        text(&unknown.stderr).contains("unknown target 'iptables'; the known targets are: nftables"),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn a_policy_entry_the_edge_cannot_express_is_named_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("resolvers.yaml");
    std::fs::write(
        &policy,
        "allowlist:\n  resolvers:\n    - domain: dns.example\n      ports: [53]\n      protocols: [https]\n",
    )
    .unwrap();
    let compiled = Command::new(support::clawgress_bin())
        .args(["policy", "compile", "--target", "nftables", "--policy"])
        .arg(&policy)
        .args(["--workload-cidr", "10.42.0.0/24", "--egress-ip", "203.0.113.7"])
        .args([
            "--egress-iface",
            "eth0",
            "--transparent-port",
            "15001",
            "--dns-port",
            "5353",
        ])
        .output()
        .unwrap();
    assert_eq!(compiled.status.code(), Some(2));
    let stderr = text(&compiled.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:15: resolvers rule dns.example allows port 53",
            policy.display()
        )),
        "{stderr}"
    );
}
