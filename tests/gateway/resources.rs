//! Issue 16 §6: at start the gateway raises its soft open-files limit to the
//! hard one, says so, and warns when even that is short of what
//! `--max-connections` needs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::support;

const POLICY: &str = "egress:\n  default_action: deny\nallowlist:\n  local:\n    - domain: site.test\n      ports: [80]\n      protocols: [http]\n";

/// What a gateway started under `prlimit --nofile=SOFT:HARD` printed and
/// ended up with: (its start line about open files, its log, the soft and
/// hard limits from /proc/PID/limits).
fn start_under_limit(soft: u64, hard: u64, extra: &[&str]) -> (String, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (policy, agents, log) = (
        dir.path().join("policy.yaml"),
        dir.path().join("agents.yaml"),
        dir.path().join("gateway.log"),
    );
    std::fs::write(&policy, POLICY).expect("write policy");
    std::fs::write(&agents, super::agents_yaml()).expect("write agents");
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(support::clawgress_bin())
        .args(["gateway", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--policy")
        .arg(&policy)
        .arg("--agents")
        .arg(&agents)
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(extra)
        .env("CLAWGRESS_LOG", "info")
        .env(
            "CLAWGRESS_TEST_JWT_SECRET",
            "jwt-test-secret-that-is-long-enough-0123456789",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn prlimit clawgress gateway");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.starts_with("open files limit") => break line,
            Ok(_) => continue,
            Err(_) => {
                support::stop_child(&mut child, Duration::from_secs(5));
                panic!(
                    "no open-files start line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    };
    // prlimit execs the gateway: the child is the gateway itself.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("read /proc/PID/limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    support::stop_child(&mut child, Duration::from_secs(10));
    (line, std::fs::read_to_string(&log).unwrap_or_default(), open_files)
}

fn usable() -> bool {
    if Command::new("prlimit").arg("--version").output().is_err() {
        support::skip("prlimit (util-linux) is not installed");
        return false;
    }
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < 4096) {
        support::skip("the hard open-files limit here is below 4096");
        return false;
    }
    true
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one_at_start() {
    if !usable() {
        return;
    }
    // 1000 connections need 2 × 1000 + 256 descriptors: under 4096.
    let (line, log, limits) = start_under_limit(256, 4096, &["--max-connections", "1000"]);
    assert_eq!(
        line,
        "open files limit 4096 (raised from 256), 2256 needed, --max-connections 1000"
    );
    assert_eq!(limits, "4096 4096", "the soft limit of the running gateway");
    assert!(
        !log.contains("open-files limit is"),
        "no shortfall to warn about:\n{log}"
    );
}

#[test]
fn a_hard_limit_short_of_max_connections_is_warned_about_with_the_fix() {
    if !usable() {
        return;
    }
    // The default --max-connections (8192) needs 16,640.
    let (line, log, _) = start_under_limit(256, 4096, &[]);
    assert_eq!(
        line,
        "open files limit 4096 (raised from 256), 16640 needed, --max-connections 8192"
    );
    assert!(
        log.contains("the open-files limit is 4096, but --max-connections 8192 needs about 16640")
            && log.contains("LimitNOFILE="),
        "the warning names the shortfall and the fix:\n{log}"
    );
}
