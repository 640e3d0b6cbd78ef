//! A real PostgreSQL from Debian (`deploy/local/prereqs.sh postgres`) on a
//! free port, with its data in a temporary directory: `initdb`, then
//! `postgres` in the foreground. As root both run as the `postgres` user
//! (PostgreSQL refuses root), through `setpriv`, which execs rather than
//! forks, so the child's pid is the server's and killing it stops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Option<Child>,
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// `postgres://clawgress@127.0.0.1:PORT/postgres`
    pub url: String,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

/// The directory holding `initdb` and `postgres`, newest major version first.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAWGRESS_POSTGRES_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    /// Starts a server, or returns `None` after printing why the calling
    /// test is skipped.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            super::skip(
                "PostgreSQL not found under /usr/lib/postgresql (install it with \
                 `./deploy/local/prereqs.sh postgres`, or set CLAWGRESS_POSTGRES_BIN); `make test` installs it",
            );
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().expect("tempdir");
        if as_postgres {
            let chowned = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status();
            if !chowned.is_ok_and(|s| s.success()) {
                super::skip("running as root and there is no `postgres` user to run PostgreSQL as");
                return None;
            }
        }
        let data = dir.path().join("data");
        let init = command(&bin, "initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-U", "clawgress", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        if !init.status.success() {
            super::skip(&format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            ));
            return None;
        }
        let port = super::nats::free_port();
        let mut server = Postgres {
            child: None,
            bin,
            data,
            port,
            url: format!("postgres://clawgress@127.0.0.1:{port}/postgres"),
            dir,
            as_postgres,
        };
        server.launch();
        Some(server)
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        let child = command(&self.bin, "postgres", self.as_postgres)
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postgres did not listen within 20 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new, empty database on this server; its URL.
    pub fn database(&self, name: &str) -> String {
        let created = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "clawgress", name])
            .output()
            .expect("run createdb");
        assert!(
            created.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        format!("postgres://clawgress@127.0.0.1:{}/{name}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown); its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's fast shutdown: clients are cut at once.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
