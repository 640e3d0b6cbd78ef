//! The last store snapshots a replica applied, on disk (`store.json` in the
//! state directory): what it enforces when it starts while NATS (or, for
//! the replica holding it, the database) is unreachable.

use std::path::Path;

use clawgress_control::{AgentsSnapshot, PolicySnapshot, TokensSnapshot};
use serde::{Deserialize, Serialize};

/// The file inside the state directory.
pub const FILE: &str = "store.json";

/// What is in force from the store; `None`: that kind comes from its file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    #[serde(default)]
    pub agents: Option<AgentsSnapshot>,
    #[serde(default)]
    pub tokens: Option<TokensSnapshot>,
    #[serde(default)]
    pub policy: Option<PolicySnapshot>,
}

/// `Ok(None)`: no copy. An unreadable copy is an error the caller logs: the
/// replica then starts from its files until the store is reached.
pub fn load(path: &Path) -> Result<Option<Applied>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read the store snapshot {}: {error}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "the store snapshot {} is unreadable ({e}); move it aside",
            path.display()
        )
    })
}

/// Temporary file, sync, rename: a crash leaves the old copy or the new one.
pub fn save(path: &Path, applied: &Applied) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(applied).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    // Owner-only: it holds key and token digests, like the agents file.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
