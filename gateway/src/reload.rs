//! Policy and agent-registry reload: on SIGHUP and whenever a file's
//! content changes. A file that fails validation is refused; the last good
//! version stays in force, and an error line and a metric say so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::Gateway;
use crate::identity::IdentityResolver;
use crate::state::PolicySnapshot;

pub struct Watched {
    policy: PathBuf,
    agents: PathBuf,
    /// How often file contents are compared. Content, not mtime: editors and
    /// config-map mounts replace files in ways mtime does not always show.
    interval: Duration,
    /// The contents in force: taken before they are loaded, so an edit made
    /// while the process starts is seen as a change (taken when the watcher
    /// first ran, such an edit would pass for the loaded version).
    policy_seen: Option<[u8; 32]>,
    agents_seen: Option<[u8; 32]>,
}

impl Watched {
    /// Call before loading the files.
    pub fn before_loading(policy: PathBuf, agents: PathBuf, interval: Duration) -> Watched {
        Watched {
            policy_seen: digest(&policy),
            agents_seen: digest(&agents),
            policy,
            agents,
            interval,
        }
    }
}

/// Whatever holds a policy and an agent registry that can be swapped while
/// it serves: the gateway, the DNS control server. Each returns whether
/// the new file is now in force.
pub trait Reload: Send + Sync + 'static {
    fn reload_policy(&self, path: &Path) -> bool;
    fn reload_agents(&self, path: &Path) -> bool;
}

impl Reload for Gateway {
    fn reload_policy(&self, path: &Path) -> bool {
        reload_policy(self, path)
    }

    fn reload_agents(&self, path: &Path) -> bool {
        reload_agents(self, path)
    }
}

pub async fn watch_files<T: Reload>(target: Arc<T>, watched: Watched, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file change only");
            None
        }
    };
    let (mut policy_seen, mut agents_seen) = (watched.policy_seen, watched.agents_seen);
    loop {
        let forced = tokio::select! {
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = tokio::time::sleep(watched.interval) => false,
            _ = shutdown.changed() => return,
        };
        let policy_now = digest(&watched.policy);
        if forced || policy_now != policy_seen {
            policy_seen = policy_now;
            target.reload_policy(&watched.policy);
        }
        let agents_now = digest(&watched.agents);
        if forced || agents_now != agents_seen {
            agents_seen = agents_now;
            target.reload_agents(&watched.agents);
        }
    }
}

pub fn reload_policy(gateway: &Gateway, path: &Path) -> bool {
    // The store's active version rules while there is one; the file is
    // what comes back when the store has none.
    if let Some((id, digest)) = gateway.store.active_policy() {
        tracing::info!(
            "the policy file changed, but version {id} ({digest}) from the control store is in force; the file is not applied"
        );
        return false;
    }
    // Under --policy-key the signature is checked on the exact bytes loaded.
    let built = crate::integrity::load_policy(path, gateway.policy_trust.keys.as_deref())
        .map_err(|e| (crate::integrity::rejection_reason(&e), e.to_string()))
        .and_then(|bundle| {
            PolicySnapshot::build(&bundle, Some(&gateway.policy.load()))
                .map_err(|e| ("invalid_bundle", format!("{e:#}")))
                .map(|s| (bundle, s))
        });
    match built {
        Ok((bundle, snapshot)) => {
            crate::log_policy_warnings(&bundle);
            let version = snapshot.version.clone();
            let (concurrent, pending) = snapshot.containment_limits();
            gateway.containment.set_limits(concurrent, pending);
            gateway.policy.store(Arc::new(snapshot));
            gateway.metrics.record_policy_reload_success(&version);
            tracing::info!(%version, "policy reloaded");
            true
        }
        Err((reason, message)) => {
            let current = gateway.policy.load().version.clone();
            let message = message.replace('\n', " | ");
            gateway.metrics.record_policy_reload_failure();
            gateway.policy_trust.count_rejection(reason);
            tracing::error!(
                reason,
                "policy reload refused; version {current} stays in force. {message}"
            );
            // On the record too (and in audit.alert): a bundle that fails its
            // signature may be someone trying to change the rules. Past the
            // backlog bound if need be: this line must not be the one refused.
            let event = crate::audit::PolicyEvent::rejected(&path.display().to_string(), reason, &message, &current);
            match gateway.audit.reserve_past_backlog() {
                Ok(slot) => slot.record(event),
                Err(error) => tracing::error!(%error, "cannot record the policy rejection in the audit trail"),
            }
            false
        }
    }
}

pub fn reload_agents(gateway: &Gateway, path: &Path) -> bool {
    match load_agents(path) {
        Some(resolver) => crate::store::agents_file_reloaded(gateway, resolver),
        None => false,
    }
}

/// The agent registry at `path` for a reload, with the log line either way;
/// `None`: it is broken, and the caller keeps the registry it has.
pub fn load_agents(path: &Path) -> Option<IdentityResolver> {
    match IdentityResolver::load(path) {
        Ok(resolver) => {
            tracing::info!(agents = resolver.agent_count(), "agent registry reloaded");
            Some(resolver)
        }
        Err(error) => {
            tracing::error!(
                "agent registry reload refused; the previous registry stays in force. {}",
                error.to_string().replace('\n', " | ")
            );
            None
        }
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|bytes| Sha256::digest(&bytes).into())
}
