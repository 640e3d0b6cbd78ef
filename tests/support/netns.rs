//! A three-host network of the test's own (deploy/lab/net.sh): `worker`,
//! `edge` and `internet` network namespaces on 198.18.0.0/15. Removed when
//! the [`Lab`] drops, also on failure; a lab left by a killed test run is
//! removed by the next one.
//!
//! Code runs inside a namespace on a tokio runtime whose threads all joined
//! it ([`NsRuntime`]): every socket its tasks open is that host's.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const WORKER_IP: &str = "198.18.1.2";
pub const EDGE_IP: &str = "198.18.1.1";
pub const EGRESS_IP: &str = "198.18.2.10";
/// Addresses of "the internet": two allowed hosts and an unlisted one.
pub const SITE_IP: &str = "198.18.2.2";
pub const OTHER_IP: &str = "198.18.2.3";
pub const UNLISTED_IP: &str = "198.18.2.99";

pub struct Lab {
    pub name: String,
    pub worker: String,
    pub edge: String,
    pub internet: String,
}

fn net_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/lab/net.sh")
}

impl Lab {
    /// The lab, or `None` after recording why the test is skipped.
    pub fn create() -> Option<Lab> {
        if !rustix::process::geteuid().is_root() {
            super::skip("network namespaces need root (run `make test` as root)");
            return None;
        }
        remove_stale_labs();
        let name = format!("cg{}", std::process::id());
        let output = Command::new(net_script()).args(["up", &name]).output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                super::skip(&format!(
                    "cannot create network namespaces here: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
                return None;
            }
            Err(error) => {
                super::skip(&format!("cannot run deploy/lab/net.sh: {error}"));
                return None;
            }
        }
        Some(Lab {
            worker: format!("{name}-w"),
            edge: format!("{name}-e"),
            internet: format!("{name}-i"),
            name,
        })
    }

    /// A command run inside `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// The edge's interface towards the internet.
    pub fn egress_iface(&self) -> String {
        format!("{}-e1", self.name)
    }

    /// A runtime whose threads are inside `ns`.
    pub fn runtime(&self, ns: &str) -> NsRuntime {
        let path = format!("/var/run/netns/{ns}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            })
            .build()
            .expect("namespace runtime");
        NsRuntime(Some(runtime))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(net_script())
            .args(["down", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Labs of test processes that are gone (killed before they could clean up).
fn remove_stale_labs() {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&listed.stdout);
    let mut stale: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|ns| ns.strip_prefix("cg")?.strip_suffix("-w").map(str::to_string))
        .filter(|pid| {
            pid.parse::<u32>()
                .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    stale.dedup();
    for pid in stale {
        let _ = Command::new(net_script()).args(["down", &format!("cg{pid}")]).status();
    }
}

/// A tokio runtime inside a namespace; its tasks stop when it drops.
pub struct NsRuntime(Option<tokio::runtime::Runtime>);

impl NsRuntime {
    /// Runs `future` on the namespace's threads and waits for it.
    pub fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let runtime = self.0.as_ref().expect("runtime");
        match runtime.block_on(runtime.spawn(future)) {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Starts `future` (a server) on the namespace's threads.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.0.as_ref().expect("runtime").spawn(future);
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
