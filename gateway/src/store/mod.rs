//! The control plane's store (`clawgress-control`) as a gateway sees it.
//!
//! A replica started with `--database` **holds** the store: it opens the
//! database (SQLite under the state directory, or PostgreSQL shared by
//! several holders) and serves the store's write API on its admin port.
//! Every replica, holder or not, **applies** the store's snapshots (agents,
//! tokens, the policy in force) from the NATS KV bucket `clawgress-store`:
//! the request path never touches the database, and a database that is
//! down stops changes, not traffic.
//!
//! After a commit the holder publishes the kind it changed; a publish that
//! fails (NATS down, the process dying between commit and publish) is made
//! good by [`publish::converge`], which re-publishes whatever the database
//! holds that the bucket does not, every few seconds and at start. Each
//! snapshot carries the store revision it was read at, and the bucket only
//! ever moves forward (compare-and-set on the key), so holders racing each
//! other cannot put an older snapshot over a newer one.
//!
//! Without NATS the holder applies its own commits directly (standalone).
//! Each replica keeps what it applied in `<state dir>/store.json`, so a
//! restart without NATS (or the database) starts from it.

pub mod apply;
mod bucket;
mod lkg;
mod publish;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use clawgress_control::{Kind, Snapshot};
use tokio::sync::{Notify, OnceCell, watch};

use crate::Gateway;
use crate::identity::IdentityResolver;

pub use bucket::BUCKET;

/// How long an API change waits for its snapshot to be in force here.
const APPLY_WAIT: Duration = Duration::from_secs(3);
/// How long the gateway's start waits for the database and the bucket.
const START_WAIT: Duration = Duration::from_secs(5);

/// The store database of a holder, opened in the background (a PostgreSQL
/// that is down at start must not keep the gateway from serving).
pub struct Holder {
    url: String,
    pub shown: String,
    db: OnceCell<clawgress_control::Store>,
    /// Why it could not be opened yet, for the API's answers.
    last_error: Mutex<Option<String>>,
}

/// Why the store's API cannot answer on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAvailable {
    /// This replica was started without `--database`.
    NotHere,
    /// The database has not been reached yet (or since it went away).
    Opening(String),
}

/// How far a committed change got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Propagation {
    pub revision: i64,
    /// In the bucket (or, standalone, nothing to publish to).
    pub published: bool,
    /// In force on this replica.
    pub applied: bool,
}

pub struct StoreLink {
    holder: Option<Holder>,
    nats_url: Option<String>,
    lkg_path: PathBuf,
    /// The `--policy` file: in force while the store has no active policy,
    /// and where relative paths in stored policies are resolved.
    pub policy_file: PathBuf,
    pub policy_dir: PathBuf,
    /// The agents file's registry (its agents and its JWT settings): what
    /// store agents are laid over, and what is in force without them.
    pub file_identities: ArcSwap<IdentityResolver>,
    /// The `--agents` file: an empty store starts with its agents.
    pub agents_file: PathBuf,
    /// Replicas of the bucket when this replica creates it.
    replicas: clawgress_nats::Replicas,
    applied: Mutex<lkg::Applied>,
    /// The bucket has been read once since start.
    synced: AtomicBool,
    /// Wakes the publisher (a commit happened).
    nudge: Notify,
    bucket: arc_swap::ArcSwapOption<async_nats::jetstream::kv::Store>,
}

impl std::fmt::Debug for StoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLink")
            .field("holder", &self.holder.as_ref().map(|h| &h.shown))
            .finish_non_exhaustive()
    }
}

impl StoreLink {
    /// `database`: the store's URL when this replica holds it.
    pub fn new(
        database: Option<String>,
        nats_url: Option<String>,
        state_dir: &std::path::Path,
        policy_file: PathBuf,
        agents_file: PathBuf,
        file_identities: Arc<IdentityResolver>,
        replicas: clawgress_nats::Replicas,
    ) -> StoreLink {
        let policy_dir = match policy_file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        StoreLink {
            holder: database.map(|url| Holder {
                shown: clawgress_control::redacted(&url),
                url,
                db: OnceCell::new(),
                last_error: Mutex::new(None),
            }),
            nats_url,
            lkg_path: state_dir.join(lkg::FILE),
            policy_file,
            policy_dir,
            file_identities: ArcSwap::new(file_identities),
            agents_file,
            replicas,
            applied: Mutex::new(lkg::Applied::default()),
            synced: AtomicBool::new(false),
            nudge: Notify::new(),
            bucket: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Whether the store is in play at all (a holder, or a bucket to watch).
    pub fn in_use(&self) -> bool {
        self.holder.is_some() || self.nats_url.is_some()
    }

    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// The store's database, for the API.
    pub fn db(&self) -> Result<&clawgress_control::Store, NotAvailable> {
        let holder = self.holder.as_ref().ok_or(NotAvailable::NotHere)?;
        holder.db.get().ok_or_else(|| {
            NotAvailable::Opening(
                lock(&holder.last_error)
                    .clone()
                    .unwrap_or_else(|| format!("{} is being opened", holder.shown)),
            )
        })
    }

    /// The store revision in force here for `kind` (0: the file's).
    pub fn applied_revision(&self, kind: Kind) -> i64 {
        let applied = lock(&self.applied);
        match kind {
            Kind::Agents => applied.agents.as_ref().map_or(0, |s| s.revision),
            Kind::Tokens => applied.tokens.as_ref().map_or(0, |s| s.revision),
            Kind::Policy => applied.policy.as_ref().map_or(0, |s| s.revision),
        }
    }

    /// The store's policy version in force (id, digest), if any.
    pub fn active_policy(&self) -> Option<(i64, String)> {
        lock(&self.applied).policy.as_ref().map(|p| (p.id, p.digest.clone()))
    }

    /// Whether the policy in force comes from the store (then the policy
    /// file's changes are not applied).
    pub fn policy_from_store(&self) -> bool {
        lock(&self.applied).policy.is_some()
    }

    /// The store's agents in force, if any (for a reload of the agents
    /// file, which only changes the JWT settings under them).
    pub fn store_agents(&self) -> Option<Vec<clawgress_control::Agent>> {
        lock(&self.applied).agents.as_ref().map(|s| s.agents.clone())
    }

    fn record_applied(&self, snapshot: Snapshot) {
        let saved = {
            let mut applied = lock(&self.applied);
            match snapshot {
                Snapshot::Agents(s) => applied.agents = Some(s),
                Snapshot::Tokens(s) => applied.tokens = Some(s),
                Snapshot::Policy(s) => applied.policy = Some(s),
            }
            applied.clone()
        };
        self.save(&saved);
    }

    /// Drops `kind`; whether it was in force.
    fn forget(&self, kind: Kind) -> bool {
        let saved = {
            let mut applied = lock(&self.applied);
            let was = match kind {
                Kind::Agents => applied.agents.take().is_some(),
                Kind::Tokens => applied.tokens.take().is_some(),
                Kind::Policy => applied.policy.take().is_some(),
            };
            if !was {
                return false;
            }
            applied.clone()
        };
        self.save(&saved);
        true
    }

    fn save(&self, applied: &lkg::Applied) {
        if let Err(error) = lkg::save(&self.lkg_path, applied) {
            tracing::error!("cannot save the store snapshot {}: {error}", self.lkg_path.display());
        }
    }

    /// What `/v1/store` says about this replica.
    pub fn status(&self) -> serde_json::Value {
        let applied = lock(&self.applied);
        let revision = |r: Option<i64>| r.unwrap_or(0);
        serde_json::json!({
            "holder": self.holder.as_ref().map(|h| serde_json::json!({
                "database": h.shown,
                "open": h.db.get().is_some(),
                "error": lock(&h.last_error).clone(),
            })),
            "bucket": self.nats_url.as_ref().map(|_| serde_json::json!({
                "name": BUCKET,
                "synced": self.synced.load(Ordering::Relaxed),
                "connected": self.bucket.load().is_some(),
            })),
            "applied": {
                "agents": revision(applied.agents.as_ref().map(|s| s.revision)),
                "tokens": revision(applied.tokens.as_ref().map(|s| s.revision)),
                "policy": revision(applied.policy.as_ref().map(|s| s.revision)),
            },
            "policy": applied.policy.as_ref().map(|p| serde_json::json!({"id": p.id, "digest": p.digest, "name": p.name})),
            "agents_from": if applied.agents.is_some() { "store" } else { "file" },
            "policy_from": if applied.policy.is_some() { "store" } else { "file" },
        })
    }
}

/// `--database`'s value as a URL: `sqlite` alone is `control.db` in the
/// state directory.
pub fn database_url(value: &str, state_dir: &std::path::Path) -> String {
    match value {
        "" | "sqlite" => clawgress_control::Store::sqlite_url(state_dir),
        url => url.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts what this replica does with the store: the last applied copy,
/// the database (a holder), the bucket's watch and the publisher (with
/// NATS). Waits (bounded) for the first read of each, so a replica does not
/// begin by serving from its files what the store has replaced.
pub async fn start(gateway: &Arc<Gateway>, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let link = &gateway.store;
    let mut tasks = Vec::new();
    if !link.in_use() {
        return tasks;
    }
    match lkg::load(&link.lkg_path) {
        Ok(Some(saved)) => {
            tracing::info!(path = %link.lkg_path.display(), "applying the last store snapshot this replica saw");
            for snapshot in [
                saved.agents.map(Snapshot::Agents),
                saved.tokens.map(Snapshot::Tokens),
                saved.policy.map(Snapshot::Policy),
            ]
            .into_iter()
            .flatten()
            {
                apply::apply(gateway, snapshot);
            }
        }
        Ok(None) => {}
        Err(error) => tracing::error!("{error}; starting from the files until the store is reached"),
    }
    if link.holder.is_some() {
        tasks.push(tokio::spawn(publish::open_database(gateway.clone(), stop.clone())));
    }
    if let Some(url) = link.nats_url.clone() {
        tasks.push(tokio::spawn(bucket::follow(gateway.clone(), url, stop.clone())));
        if link.holder.is_some() {
            tasks.push(tokio::spawn(publish::converge(gateway.clone(), stop.clone())));
        }
    }
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let database_ready = link.holder.as_ref().is_none_or(|h| h.db.get().is_some());
        let bucket_ready = link.nats_url.is_none() || link.synced.load(Ordering::Relaxed);
        if (database_ready && bucket_ready) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks
}

/// After a commit: publish (or, standalone, apply) the kind that changed,
/// and wait (bounded) until it is in force here, so the API answers once
/// the change works on this replica. A publish that fails is left to the
/// publisher, which converges on the committed state.
pub async fn after_commit(gateway: &Gateway, kind: Kind, revision: i64) -> Propagation {
    let link = &gateway.store;
    let Ok(db) = link.db() else {
        return Propagation {
            revision,
            published: false,
            applied: false,
        };
    };
    if link.nats_url.is_none() {
        let applied = match db.snapshot(kind).await {
            Ok(Some(snapshot)) => apply::apply(gateway, snapshot),
            Ok(None) => {
                apply::clear(gateway, kind);
                true
            }
            Err(error) => {
                tracing::error!(kind = kind.key(), "cannot read the committed change back: {error}");
                false
            }
        };
        return Propagation {
            revision,
            published: true,
            applied,
        };
    }
    let published = match publish::publish(gateway, db, kind).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                kind = kind.key(),
                "the change is committed but not yet published ({error}); the publisher retries"
            );
            link.nudge.notify_one();
            false
        }
    };
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    let applied = loop {
        if link.applied_revision(kind) >= revision {
            break true;
        }
        if !published || tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    Propagation {
        revision,
        published,
        applied,
    }
}

/// The agents file changed: the file's registry (and its JWT settings)
/// is replaced; store agents, when in force, are laid over the new one.
pub fn agents_file_reloaded(gateway: &Gateway, resolver: IdentityResolver) -> bool {
    let link = &gateway.store;
    let resolver = Arc::new(resolver);
    link.file_identities.store(resolver.clone());
    match link.store_agents() {
        Some(agents) => match resolver.with_store_agents(&agents) {
            Ok(combined) => {
                gateway.identities.store(Arc::new(combined));
                true
            }
            Err(error) => {
                tracing::error!("the store's agents do not combine with the new agents file: {error}");
                false
            }
        },
        None => {
            gateway.identities.store(resolver);
            true
        }
    }
}
