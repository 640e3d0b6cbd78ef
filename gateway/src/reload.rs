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
    pub policy: PathBuf,
    pub agents: PathBuf,
    /// How often file contents are compared. Content, not mtime: editors and
    /// config-map mounts replace files in ways mtime does not always show.
    pub interval: Duration,
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
    let mut policy_seen = digest(&watched.policy);
    let mut agents_seen = digest(&watched.agents);
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
    let built = clawgress_policies::load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|bundle| {
            PolicySnapshot::build(&bundle, Some(&gateway.policy.load()))
                .map_err(|e| format!("{e:#}"))
                .map(|s| (bundle, s))
        });
    match built {
        Ok((bundle, snapshot)) => {
            for warning in &bundle.warnings {
                tracing::warn!("{warning}");
            }
            let version = snapshot.version.clone();
            let (concurrent, pending) = snapshot.containment_limits();
            gateway.containment.set_limits(concurrent, pending);
            gateway.policy.store(Arc::new(snapshot));
            gateway.metrics.record_policy_reload_success(&version);
            tracing::info!(%version, "policy reloaded");
            true
        }
        Err(message) => {
            let current = gateway.policy.load().version.clone();
            gateway.metrics.record_policy_reload_failure();
            tracing::error!(
                "policy reload refused; version {current} stays in force. {}",
                message.replace('\n', " | ")
            );
            false
        }
    }
}

pub fn reload_agents(gateway: &Gateway, path: &Path) -> bool {
    match load_agents(path) {
        Some(resolver) => {
            gateway.identities.store(Arc::new(resolver));
            true
        }
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
