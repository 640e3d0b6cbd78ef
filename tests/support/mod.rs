//! Harness for end-to-end tests: real processes, real sockets, local
//! stand-ins for "the internet" on 127.0.0.1 only.

#![allow(dead_code)]

pub mod dns;
pub mod gateway;
pub mod nats;
pub mod raw;
pub mod tls;
pub mod upstream;

use std::path::PathBuf;

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
