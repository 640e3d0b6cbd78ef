//! Real `nats-server`s with JetStream, clustered through routes on
//! loopback, each with its own store; any of them can be killed (`kill -9`)
//! and started again on the same ports and store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::{binary, free_port};

pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    routes: String,
    _dir: tempfile::TempDir,
}

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` servers and waits until JetStream answers on each, or
    /// returns `None` after printing why the calling test is skipped.
    pub async fn start(size: usize) -> Option<NatsCluster> {
        let Some(binary) = binary() else {
            super::skip(
                "nats-server not found (install it with `./deploy/local/prereqs.sh nats`, \
                 or set CLAWGRESS_NATS_SERVER); `make test` installs it",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                store: dir.path().join(format!("n{i}")),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            })
            .collect();
        let routes = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = NatsCluster {
            binary,
            nodes,
            routes,
            _dir: dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_listening(i);
        }
        cluster.wait_jetstream().await;
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("nats log");
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &node.port.to_string(), "-n", &node.name])
            .arg("-sd")
            .arg(&node.store)
            .args(["--cluster_name", "clawgress-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.cluster_port)])
            .args(["--routes", &self.routes])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        node.child = Some(child);
    }

    fn wait_listening(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server {i} did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Until the cluster has a JetStream leader (account info answers).
    pub async fn wait_jetstream(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(self.url(self.live()[0])).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "JetStream did not come up on the cluster within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every server, comma-separated (`--nats`).
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Servers running now.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// `kill -9` server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Server `i` again, same ports, same store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
