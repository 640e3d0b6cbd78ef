//! The last-known-good copy of the control state on disk: what a replica
//! enforces when it starts without NATS, and the store itself when the
//! gateway runs standalone.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ControlError, ControlItem, ControlSnapshot};

/// The file inside the state directory.
pub const LKG_FILE: &str = "control.json";

/// The order of [`save`] calls, and the newest written to each path.
static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WRITTEN: std::sync::Mutex<BTreeMap<std::path::PathBuf, u64>> = std::sync::Mutex::new(BTreeMap::new());

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastKnownGood {
    revision: u64,
    items: BTreeMap<String, serde_json::Value>,
    /// Per-key revisions; older copies lack them (every key then counts as
    /// written at `revision`).
    #[serde(default)]
    revisions: BTreeMap<String, u64>,
}

/// `Ok(None)`: there is no copy. `Err`: there is one, and it cannot be
/// trusted (unreadable or torn); the caller must not treat that as "empty".
pub fn load(path: &Path) -> Result<Option<ControlSnapshot>, String> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read the control state {}: {error}", path.display())),
    };
    let lkg: LastKnownGood = serde_json::from_slice(&text).map_err(|error| {
        format!(
            "the control state {} is unreadable ({error}); it may hold an emergency block, so it is not ignored. \
             Fix or move it aside once you know the current state",
            path.display()
        )
    })?;
    let mut items = BTreeMap::new();
    let mut revisions = BTreeMap::new();
    for (key, value) in lkg.items {
        if let Some(item) = ControlItem::decode_failing_closed(&key, value.to_string().as_bytes()) {
            revisions.insert(key.clone(), lkg.revisions.get(&key).copied().unwrap_or(lkg.revision));
            items.insert(key, item);
        }
    }
    tracing::info!(path = %path.display(), revision = lkg.revision, "loaded the last-known-good control state");
    Ok(Some(ControlSnapshot::from_parts(items, revisions, lkg.revision)))
}

/// Written to a temporary file, synced, and renamed over the old one: a
/// crash leaves either the old copy or the new one, never half of one.
pub async fn save(path: &Path, snapshot: &ControlSnapshot) -> Result<(), ControlError> {
    let lkg = LastKnownGood {
        revision: snapshot.revision,
        items: snapshot
            .items()
            .iter()
            .filter_map(|(key, item)| Some((key.clone(), serde_json::from_slice(&item.to_json()).ok()?)))
            .collect(),
        revisions: snapshot.revisions().clone(),
    };
    let bytes = serde_json::to_vec_pretty(&lkg).unwrap_or_default();
    let path = path.to_path_buf();
    // Callers save in order (under the store's lock), but a caller whose
    // task is cancelled leaves its write running on the blocking pool, next
    // to the one after it: the writes take turns, and an older one that
    // comes last is skipped.
    let order = SAVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let written = tokio::task::spawn_blocking(move || {
        let mut newest = WRITTEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if newest.get(&path).is_some_and(|&written| written > order) {
            return Ok(());
        }
        write_atomically(&path, &bytes).map_err(|e| (path.clone(), e))?;
        newest.insert(path, order);
        Ok(())
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err((path, source))) => Err(ControlError::Save {
            path: path.display().to_string(),
            source,
        }),
        Err(_) => Err(ControlError::Save {
            path: String::new(),
            source: std::io::Error::other("the save task failed"),
        }),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}
