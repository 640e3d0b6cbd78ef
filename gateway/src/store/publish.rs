//! The holder's side: opening the database (and reopening it after a start
//! without it), and publishing what it commits. The publisher converges:
//! whatever is committed and not yet in the bucket is published, at start,
//! after each commit, and every few seconds, so a publish lost between a
//! commit and a crash (or during a NATS outage) is made good.

use std::sync::Arc;
use std::time::Duration;

use clawgress_control::Kind;
use tokio::sync::watch;

use super::lock;
use crate::Gateway;

/// How often the publisher compares the database with the bucket.
const CONVERGE_EVERY: Duration = Duration::from_secs(5);
const OPEN_RETRY_FIRST: Duration = Duration::from_millis(500);
const OPEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// Opens the holder's database, retrying until it answers. Standalone, the
/// committed state is applied once open (the database is the only source).
pub(super) async fn open_database(gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let Some(holder) = gateway.store.holder() else {
        return;
    };
    let mut delay = OPEN_RETRY_FIRST;
    let db = loop {
        let opened = tokio::select! {
            opened = clawgress_control::Store::open(&holder.url) => opened,
            _ = stop.changed() => return,
        };
        match opened {
            Ok(db) => break db,
            Err(error) => {
                tracing::warn!("control store not open: {error}; retrying");
                *lock(&holder.last_error) = Some(error.to_string());
                // A URL that can never work is said once, loudly, and not retried.
                if matches!(error, clawgress_control::StoreError::Invalid(_)) {
                    tracing::error!("{error}");
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(OPEN_RETRY_MAX);
    };
    tracing::info!(database = %holder.shown, backend = db.backend().as_str(), "control store open");
    *lock(&holder.last_error) = None;
    // Before the API can reach the database: a change made first would
    // make the store look used, and the file's agents would be left out.
    seed_agents(&gateway, &db).await;
    let _ = holder.db.set(db);
    let Ok(db) = gateway.store.db() else { return };
    if gateway.store.nats_url.is_none() {
        for kind in Kind::ALL {
            match db.snapshot(kind).await {
                Ok(Some(snapshot)) => {
                    super::apply::apply(&gateway, snapshot);
                }
                Ok(None) => super::apply::clear(&gateway, kind),
                Err(error) => tracing::error!(kind = kind.key(), "cannot read the store: {error}"),
            }
        }
    } else {
        gateway.store.nudge.notify_one();
    }
}

/// A store that holds no agent starts with the agents file's. Store agents
/// replace the file's, so without this the first agent created in a new
/// store would lock out every agent of the file, and the workers using
/// their keys. An empty store means "the file is in force" either way, so
/// this changes nothing until the store is used, and it is recorded like
/// an import by hand (`admin_action` `agent_import`, a history row).
async fn seed_agents(gateway: &Gateway, db: &clawgress_control::Store) {
    match db.agents().await {
        Ok(agents) if agents.is_empty() => {}
        Ok(_) => return,
        Err(error) => {
            tracing::warn!("cannot read the store's agents: {error}");
            return;
        }
    }
    let path = &gateway.store.agents_file;
    let origin = path.display().to_string();
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let specs = match crate::identity::IdentityResolver::agents_for_import(&text, &origin) {
        Ok(specs) if !specs.is_empty() => specs,
        Ok(_) => return,
        Err(error) => {
            tracing::warn!("the empty control store keeps no agents of {origin}: {error}");
            return;
        }
    };
    let Ok(slot) = gateway.audit.reserve() else {
        tracing::warn!("the audit trail cannot take a record: the empty control store is not seeded from {origin}");
        return;
    };
    let author = clawgress_control::Author {
        name: "clawgress".to_string(),
        role: "system".to_string(),
    };
    let validate = |agents: &[clawgress_control::Agent]| crate::identity::IdentityResolver::check_store_agents(agents);
    let mut event = crate::audit::AdminEvent::new("clawgress", "system", "agent_import");
    event.details.insert("file".to_string(), origin.clone());
    match db.create_agents(&author, specs, true, "import", &validate).await {
        Ok(created) => {
            tracing::info!(
                "the empty control store starts with the {} agents of {origin}",
                created.agents.len()
            );
            event
                .details
                .insert("imported".to_string(), created.agents.len().to_string());
            event.details.insert("outcome".to_string(), "ok".to_string());
        }
        Err(error) => {
            tracing::warn!("the empty control store keeps no agents of {origin}: {error}");
            event.details.insert("outcome".to_string(), "failed".to_string());
        }
    }
    slot.record(event);
}

/// Publishes the committed snapshot of `kind`, if the bucket is behind.
pub(super) async fn publish(gateway: &Gateway, db: &clawgress_control::Store, kind: Kind) -> Result<(), String> {
    let Some(kv) = gateway.store.bucket.load_full() else {
        return Err("NATS is unreachable".to_string());
    };
    // The bucket's state as this replica's watch delivered it: already there.
    let committed = db.kind_revision(kind).await.map_err(|e| e.to_string())?;
    if committed == 0 || gateway.store.applied_revision(kind) >= committed {
        return Ok(());
    }
    match db.snapshot(kind).await.map_err(|e| e.to_string())? {
        Some(snapshot) => {
            if super::bucket::put_if_newer(&kv, &snapshot).await? {
                tracing::info!(
                    kind = kind.key(),
                    revision = snapshot.revision(),
                    "store snapshot published"
                );
            }
            Ok(())
        }
        // Nothing of this kind (no policy active): nothing to publish.
        None => Ok(()),
    }
}

/// Keeps the bucket at the committed state for the gateway's life.
pub(super) async fn converge(gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = gateway.store.nudge.notified() => {}
            () = tokio::time::sleep(CONVERGE_EVERY) => {}
            _ = stop.changed() => return,
        }
        let Ok(db) = gateway.store.db() else { continue };
        if gateway.store.bucket.load().is_none() {
            continue;
        }
        for kind in Kind::ALL {
            if let Err(error) = publish(&gateway, db, kind).await {
                tracing::warn!(kind = kind.key(), "store snapshot not published yet: {error}");
            }
        }
    }
}
