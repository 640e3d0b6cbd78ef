//! Runs the real `clawgress gateway` binary with a policy and an agent
//! registry written to a temporary directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct GatewayProc {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub audit: PathBuf,
    pub policy: PathBuf,
    pub agents: PathBuf,
    stderr: PathBuf,
}

impl GatewayProc {
    pub fn start(policy_yaml: &str, agents_yaml: &str) -> GatewayProc {
        Self::start_with(policy_yaml, agents_yaml, &[])
    }

    pub fn start_with(policy_yaml: &str, agents_yaml: &str, extra: &[&str]) -> GatewayProc {
        Self::start_with_env(policy_yaml, agents_yaml, extra, &[])
    }

    /// With extra environment variables (e.g. an OTLP endpoint).
    pub fn start_with_env(policy_yaml: &str, agents_yaml: &str, extra: &[&str], env: &[(&str, &str)]) -> GatewayProc {
        Self::launch(None, policy_yaml, agents_yaml, extra, env)
    }

    /// Inside a network namespace (`ip netns exec NS clawgress gateway ...`).
    pub fn start_in(netns: &str, policy_yaml: &str, agents_yaml: &str, extra: &[&str]) -> GatewayProc {
        Self::launch(Some(netns), policy_yaml, agents_yaml, extra, &[])
    }

    fn launch(
        netns: Option<&str>,
        policy_yaml: &str,
        agents_yaml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> GatewayProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.yaml");
        let agents = dir.path().join("agents.yaml");
        let audit = dir.path().join("audit.jsonl");
        let stderr = dir.path().join("gateway.log");
        std::fs::write(&policy, policy_yaml).expect("write policy");
        std::fs::write(&agents, agents_yaml).expect("write agents");
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(super::clawgress_bin());
                command
            }
            None => Command::new(super::clawgress_bin()),
        };
        let mut child = command
            .arg("gateway")
            // Defaults, unless the caller chose.
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(["--admin", "127.0.0.1:0", "--watch-interval-ms", "100"])
            .arg("--policy")
            .arg(&policy)
            .arg("--agents")
            .arg(&agents)
            .arg("--audit")
            .arg(&audit)
            .args(extra)
            // Never the user's own state directory.
            .args(if extra.contains(&"--state-dir") {
                Vec::new()
            } else {
                vec!["--state-dir".into(), dir.path().join("state").into_os_string()]
            })
            .env("CLAWGRESS_LOG", "info")
            .envs(env.iter().copied())
            .env(
                "CLAWGRESS_TEST_JWT_SECRET",
                "jwt-test-secret-that-is-long-enough-0123456789",
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn clawgress gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Drained for the gateway's whole life: a closed pipe would
            // fail its later prints.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut proxy, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                let _ = child.kill();
                panic!("gateway did not start; its log:\n{log}");
            };
            let addr = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            proxy = proxy.or_else(|| addr("proxy listening on "));
            admin = admin.or_else(|| addr("admin listening on "));
        }
        GatewayProc {
            child,
            proxy: proxy.unwrap_or_else(|| unreachable!()),
            admin: admin.unwrap_or_else(|| unreachable!()),
            dir,
            audit,
            policy,
            agents,
            stderr,
        }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}")))
            .collect()
    }

    /// The audit line for a request id, waiting for the asynchronous writer.
    pub async fn audit_for(&self, request_id: &str) -> serde_json::Value {
        self.wait_audit(|line| line["request_id"] == request_id).await
    }

    pub async fn wait_audit(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.audit_lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit line; audit:\n{:#?}",
                self.audit_lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let response = super::raw::send(
            self.admin,
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close",
            b"",
        )
        .await;
        assert_eq!(response.status, 200);
        String::from_utf8(response.body).expect("metrics are UTF-8")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits for an exit already asked for: a second signal would end the
    /// drain at once (exit 130).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not stop within 20 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
