//! Harness for end-to-end tests: real processes, real sockets, local
//! stand-ins for "the internet" on 127.0.0.1 only.

#![allow(dead_code)]

pub mod dns;
pub mod gateway;
pub mod mmdb;
pub mod nats;
pub mod nats_cluster;
pub mod netns;
pub mod postgres;
pub mod raw;
pub mod tls;
pub mod upstream;

use std::path::PathBuf;

/// A child process stopped (and reaped) when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        stop_child(&mut self.0, std::time::Duration::from_secs(10));
    }
}

/// Asks a child to stop (SIGTERM) and kills it if it has not within
/// `within`. A process killed outright cannot clean up after itself (a
/// scheduler's browser profiles stay behind until the next one starts),
/// and the suite fails on anything left behind.
pub fn stop_child(child: &mut std::process::Child, within: std::time::Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where skips are recorded, for `make test`'s summary (see [`skip`]).
pub const SKIP_LOG_ENV: &str = "CLAWGRESS_SKIP_LOG";

/// Marks (part of) the running test as SKIPPED with the reason: printed,
/// and appended to `$CLAWGRESS_SKIP_LOG`, from which `make test` lists
/// every skip after the results. A skip is not a pass, and says so.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("unnamed test").to_string();
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        // One short append per line: lines of concurrent tests do not mix.
        if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = log.write_all(format!("{test}\t{}\n", reason.replace('\n', " ")).as_bytes());
        }
    }
}

pub fn clawgress_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clawgress"))
}

pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn basic(agent: &str, key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{key}"))
    )
}
