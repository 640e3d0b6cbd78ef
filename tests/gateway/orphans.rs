//! Browsers never outlive their worker (issue 16 §4): a scheduler killed
//! with `kill -9` (as the OOM killer would) takes its Chromium process tree
//! with it (the parent-death signal of `clawgress`'s browser launcher), and
//! the next scheduler removes the profile directory it left behind.

use std::path::{Path, PathBuf};

use super::shutdown::{Proc, Setup, strings};
use super::*;

/// Pids of the processes whose command line has `needle`, and of every
/// process in their process groups (a browser's zygotes do not name the
/// profile, but share its group).
fn browser_tree(needle: &str) -> Vec<u32> {
    let mut leaders = Vec::new();
    let mut all = Vec::new();
    for (pid, pgid, cmdline) in processes() {
        if cmdline.contains(needle) {
            leaders.push(pgid);
            all.push(pid);
        }
    }
    for (pid, pgid, _) in processes() {
        if leaders.contains(&pgid) && !all.contains(&pid) {
            all.push(pid);
        }
    }
    all
}

/// (pid, process group, command line) of every live process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // State, then ppid, then pgid; a zombie is as good as gone.
        let (Some(state), Some(pgid)) = (fields.first(), fields.get(2).and_then(|g| g.parse().ok())) else {
            continue;
        };
        if *state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        found.push((pid, pgid, cmdline));
    }
    found
}

fn alive(pid: u32) -> bool {
    processes().iter().any(|(p, _, _)| *p == pid)
}

fn profiles(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("clawgress-browser-"))
        })
        .collect()
}

#[tokio::test]
async fn a_killed_scheduler_leaves_no_browser_and_no_profile_behind() {
    if clawgress_workers::chromium::find_browser().is_none() {
        support::skip("no Chromium installed (./deploy/local/prereqs.sh chromium; `make test` does)");
        return;
    }
    let Some(s) = Setup::start().await else { return };
    let (_gateway, proxy) = s.gateway("5s", "gateway");
    let scheduler = |name: &str| {
        let scheduler = Proc::spawn(
            s.dir.path(),
            name,
            &strings(&[
                "scheduler",
                "--nats",
                &s.nats.url,
                "--gateway",
                &format!("http://{proxy}"),
                "--credentials",
                &s.path("credentials.yaml"),
                "--chromium",
                "auto",
            ]),
        );
        scheduler.logged("scheduler pulling jobs");
        scheduler
    };
    let mut first = scheduler("scheduler");
    // Two jobs, so the browser has pages open and is kept for the next job.
    let jobs: Vec<String> = (0..2)
        .map(|i| {
            serde_json::json!({
                "version": 1, "type": "scrape", "id": format!("browser-{i}"), "agent": SCRAPER.0,
                "url": format!("http://site.test:{}/hold", s.origin.addr.port()), "fetch": "chromium",
            })
            .to_string()
        })
        .collect();
    let file = s.dir.path().join("jobs.jsonl");
    std::fs::write(&file, jobs.join("\n")).expect("jobs");
    let submitted = std::process::Command::new(support::clawgress_bin())
        .args(["submit", "--nats", &s.nats.url])
        .arg(&file)
        .output()
        .expect("clawgress submit");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );

    // The pages are loading (the origin holds them): the browser is busy.
    let needle = format!("--user-data-dir={}/clawgress-browser-", s.dir.path().display());
    wait_until(|| s.origin.requests.load(std::sync::atomic::Ordering::SeqCst) >= 2).await;
    let tree = browser_tree(&needle);
    assert!(
        tree.len() >= 3,
        "a browser with its helper processes is running: {tree:?}; log:\n{}",
        first.log()
    );
    assert_eq!(profiles(s.dir.path()).len(), 1, "one profile directory while it runs");

    first.signal("KILL");
    let _ = first.exits_within(Duration::from_secs(5), "scheduler, kill -9");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = tree.iter().copied().filter(|pid| alive(*pid)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "browser processes outlived their scheduler: {:?}",
            processes()
                .into_iter()
                .filter(|(pid, _, _)| left.contains(pid))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(browser_tree(&needle).is_empty(), "nothing names the profile any more");
    // Nobody was left to remove it: the next scheduler's start does.
    assert_eq!(profiles(s.dir.path()).len(), 1);
    let mut second = scheduler("scheduler-again");
    assert!(
        profiles(s.dir.path()).is_empty(),
        "the dead scheduler's profile was swept: {:?}; log:\n{}",
        profiles(s.dir.path()),
        second.log()
    );
    second.signal("TERM");
    let _ = second.exits_within(Duration::from_secs(35), "the second scheduler");
    s.origin.release.notify_waiters();
}
