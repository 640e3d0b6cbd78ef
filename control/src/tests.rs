//! The store on a real SQLite file in a temporary directory: migrations,
//! compare-and-set, all-or-nothing writes, history, snapshots, diffs.

use super::*;
use crate::agents::Validate;
use crate::policies::{Activate, Upload};

fn author(name: &str) -> Author {
    Author {
        name: name.to_string(),
        role: "maintainer".to_string(),
    }
}

fn spec(id: &str, team: &str, sources: &[&str]) -> NewAgent {
    NewAgent {
        id: id.to_string(),
        team: team.to_string(),
        project: "crawl".to_string(),
        environment: "dev".to_string(),
        role: "scraper".to_string(),
        key_sha256: Some("ab".repeat(32)),
        disabled: false,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        spiffe_ids: Vec::new(),
    }
}

/// A stand-in for the gateway's agents-file rules: no two agents may
/// claim the same source.
fn no_shared_sources(agents: &[Agent]) -> Result<(), String> {
    let mut seen = std::collections::HashMap::new();
    for agent in agents {
        for source in &agent.sources {
            if let Some(other) = seen.insert(source.clone(), agent.id.clone()) {
                return Err(format!(
                    "source {source} of agent `{}` overlaps agent `{other}`",
                    agent.id
                ));
            }
        }
    }
    Ok(())
}

const CHECK: Validate<'static> = &no_shared_sources;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
    (dir, store)
}

/// The end-to-end tests' PostgreSQL harness, shared (it calls
/// `super::skip` and `super::nats::free_port`, defined here).
#[allow(dead_code)]
#[path = "../../tests/support/postgres.rs"]
mod postgres;

fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("unnamed test").to_string();
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(path) = std::env::var_os("CLAWGRESS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = log.write_all(format!("{test}\t{}\n", reason.replace('\n', " ")).as_bytes());
        }
    }
}

mod nats {
    pub fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }
}

/// Every scenario again on a real PostgreSQL (one database each): the same
/// migrations, the same statements, the same answers.
#[tokio::test]
async fn the_same_store_on_postgresql() {
    let Some(server) = postgres::Postgres::start() else {
        return;
    };
    let open = |name: &str| {
        let url = server.database(name);
        async move { Store::open(&url).await.unwrap() }
    };
    let store = open("stale").await;
    assert_eq!(store.backend(), Backend::Postgres);
    stale_versions(&store).await;
    concurrent_writers(&open("concurrent").await).await;
    policy_versions(&open("policies").await).await;
    tokens_and_history(&open("tokens").await).await;
    // Migrations apply once: opening again finds them done.
    let url = format!("postgres://clawgress@127.0.0.1:{}/stale", server.port);
    assert_eq!(Store::open(&url).await.unwrap().agents().await.unwrap().len(), 0);
}

#[tokio::test]
async fn migrations_apply_once_and_a_reopened_store_keeps_its_data() {
    let (dir, store) = store().await;
    assert_eq!(store.backend(), Backend::Sqlite);
    assert_eq!(store.revision().await.unwrap(), 0);
    store
        .create_agents(&author("mia"), vec![spec("a-1", "data", &[])], false, "create", CHECK)
        .await
        .unwrap();
    store.close().await;
    let again = Store::open(&Store::sqlite_url(dir.path())).await.unwrap();
    assert_eq!(again.agents().await.unwrap().len(), 1);
    assert_eq!(again.revision().await.unwrap(), 1);
}

#[tokio::test]
async fn a_stale_version_is_refused_and_nothing_is_half_applied() {
    stale_versions(&store().await.1).await;
}

async fn stale_versions(store: &Store) {
    let mia = author("mia");
    store
        .create_agents(
            &mia,
            vec![spec("a-1", "data", &["10.0.0.0/24"])],
            false,
            "create",
            CHECK,
        )
        .await
        .unwrap();
    let (updated, revision) = store
        .update_agent(
            &mia,
            "a-1",
            1,
            "update",
            |a| {
                a.project = "other".to_string();
                Ok(serde_json::json!({}))
            },
            CHECK,
        )
        .await
        .unwrap();
    assert_eq!((updated.version, updated.project.as_str(), revision), (2, "other", 2));

    // Someone still holding version 1 loses, and is told the current one.
    let stale = store
        .update_agent(&mia, "a-1", 1, "update", |_| Ok(serde_json::json!({})), CHECK)
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            StoreError::Stale {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{stale}"
    );
    assert!(stale.to_string().contains("\"version\": 2"), "{stale}");

    // A change the validator refuses leaves no trace: not the row, not the
    // history, not the revision.
    let refused = store
        .create_agents(
            &mia,
            vec![
                spec("a-2", "data", &["10.0.1.0/24"]),
                spec("a-3", "data", &["10.0.0.0/24"]),
            ],
            false,
            "create",
            CHECK,
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Invalid(_)), "{refused}");
    assert_eq!(store.agents().await.unwrap().len(), 1);
    assert_eq!(store.revision().await.unwrap(), 2);
    let history = store
        .history(&history::HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].action, "update");

    let exists = store
        .create_agents(&mia, vec![spec("a-1", "data", &[])], false, "create", CHECK)
        .await
        .unwrap_err();
    assert!(matches!(exists, StoreError::Exists { .. }));
    // An import run twice skips what it already made.
    let again = store
        .create_agents(&mia, vec![spec("a-1", "data", &[])], true, "import", CHECK)
        .await
        .unwrap();
    assert_eq!((again.agents.len(), again.skipped.len(), again.revision), (0, 1, 0));
    assert_eq!(store.revision().await.unwrap(), 2);

    let gone = store.delete_agent(&mia, "a-1", 1).await.unwrap_err();
    assert!(matches!(gone, StoreError::Stale { .. }));
    store.delete_agent(&mia, "a-1", 2).await.unwrap();
    assert!(store.agent("a-1").await.unwrap().is_none());
    assert!(matches!(
        store.delete_agent(&mia, "a-1", 2).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

#[tokio::test]
async fn concurrent_writers_are_serialized_and_exactly_one_wins() {
    concurrent_writers(&store().await.1).await;
}

async fn concurrent_writers(store: &Store) {
    let mia = author("mia");
    store
        .create_agents(&mia, vec![spec("a-1", "data", &[])], false, "create", CHECK)
        .await
        .unwrap();
    let attempts = (0..6).map(|i| {
        let store = store.clone();
        let mia = mia.clone();
        tokio::spawn(async move {
            store
                .update_agent(
                    &mia,
                    "a-1",
                    1,
                    "update",
                    move |a| {
                        a.project = format!("p{i}");
                        Ok(serde_json::json!({}))
                    },
                    CHECK,
                )
                .await
        })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Stale { .. }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.agent("a-1").await.unwrap().unwrap().version, 2);
}

const POLICY_A: &str = "allowlist:\n  web:\n    - domain: a.example\n      ports: [443]\n      protocols: [https]\n";
const POLICY_B: &str = "allowlist:\n  web:\n    - domain: a.example\n      ports: [443, 8443]\n      protocols: [https]\n    - domain: b.example\n      ports: [443]\n      protocols: [https]\nproject_blocklist:\n  - domain: bad.example\n";

fn upload<'a>(name: &'a str, body: &'a str, digest: &'a str) -> Upload<'a> {
    Upload {
        name,
        comment: "",
        body,
        digest,
        signed_by: None,
    }
}

#[tokio::test]
async fn policy_versions_activate_roll_back_and_publish_snapshots() {
    policy_versions(&store().await.1).await;
}

async fn policy_versions(store: &Store) {
    let mia = author("mia");
    assert!(store.snapshot(Kind::Policy).await.unwrap().is_none());
    let (a, _) = store
        .upload_policy(&mia, upload("a.yaml", POLICY_A, "aaaa"))
        .await
        .unwrap();
    let (b, _) = store
        .upload_policy(&mia, upload("b.yaml", POLICY_B, "bbbb"))
        .await
        .unwrap();
    assert_eq!((a.id, b.id), (1, 2));
    let duplicate = store
        .upload_policy(&mia, upload("c.yaml", POLICY_A, "aaaa"))
        .await
        .unwrap_err();
    assert!(duplicate.to_string().contains("version 1"), "{duplicate}");
    // Uploaded is not active: gateways keep their file.
    assert!(store.snapshot(Kind::Policy).await.unwrap().is_none());

    let ok = |_: &PolicyVersion, _: &str| Ok(());
    let (state, _, _) = store.activate_policy(&mia, Activate::Version(1), 0, ok).await.unwrap();
    assert_eq!(
        state,
        PolicyState {
            active_id: Some(1),
            version: 1
        }
    );
    let stale = store
        .activate_policy(&mia, Activate::Version(2), 0, ok)
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Stale { current: 1, .. }), "{stale}");
    let refused = store
        .activate_policy(&mia, Activate::Version(2), 1, |_, _| Err("expired".to_string()))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Invalid(_)));
    store.activate_policy(&mia, Activate::Version(2), 1, ok).await.unwrap();
    let Some(Snapshot::Policy(active)) = store.snapshot(Kind::Policy).await.unwrap() else {
        panic!("no policy snapshot");
    };
    assert_eq!((active.id, active.body.as_str()), (2, POLICY_B));

    let (state, version, revision) = store.activate_policy(&mia, Activate::Rollback, 2, ok).await.unwrap();
    assert_eq!((state.active_id, version.id), (Some(1), 1));
    let Some(snapshot) = store.snapshot(Kind::Policy).await.unwrap() else {
        panic!("no policy snapshot");
    };
    assert_eq!(snapshot.revision(), revision);
    let activations = store.activations(10).await.unwrap();
    assert_eq!(
        activations.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["rollback", "activate", "activate"]
    );
    // The agents snapshot is independent of the policy's.
    assert!(store.snapshot(Kind::Agents).await.unwrap().is_none());
}

#[tokio::test]
async fn tokens_are_kept_as_digests_and_history_filters_by_team() {
    tokens_and_history(&store().await.1).await;
}

async fn tokens_and_history(store: &Store) {
    let mia = author("mia");
    let (secret, digest) = new_secret("cgt_");
    assert!(secret.starts_with("cgt_") && secret.len() == 68);
    let (token, _) = store
        .create_token(&mia, "otto", "operator", &["data".to_string()], &digest)
        .await
        .unwrap();
    assert!(!token.view().to_string().contains(&digest));
    assert!(matches!(
        store.create_token(&mia, "otto", "viewer", &[], "00").await.unwrap_err(),
        StoreError::Exists { .. }
    ));
    store
        .create_agents(
            &mia,
            vec![spec("a-1", "data", &[]), spec("b-1", "builders", &[])],
            false,
            "create",
            CHECK,
        )
        .await
        .unwrap();
    let data_only = store
        .history(&history::HistoryFilter {
            teams: Some(vec!["data".to_string()]),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(data_only.len(), 1);
    assert_eq!(data_only[0].target, "a-1");
    let Some(Snapshot::Tokens(tokens)) = store.snapshot(Kind::Tokens).await.unwrap() else {
        panic!("no tokens snapshot");
    };
    assert_eq!(tokens.tokens[0].token_sha256, digest);
    store.delete_token(&mia, "otto", 1).await.unwrap();
    let Some(Snapshot::Tokens(tokens)) = store.snapshot(Kind::Tokens).await.unwrap() else {
        panic!("a store that had tokens publishes an empty list, not nothing");
    };
    assert!(tokens.tokens.is_empty());
}

#[test]
fn the_diff_reads_as_a_unified_diff_and_lists_rule_changes() {
    let text = diff::unified("v1 a.yaml", POLICY_A, "v2 b.yaml", POLICY_B);
    assert!(text.starts_with("--- v1 a.yaml\n+++ v2 b.yaml\n@@"), "{text}");
    assert!(text.contains("+    - domain: b.example"), "{text}");
    let a = clawgress_policies::load_str(POLICY_A, "a.yaml").unwrap();
    let b = clawgress_policies::load_str(POLICY_B, "b.yaml").unwrap();
    let changes = diff::allowlist_changes(&a.document, &b.document);
    assert_eq!(changes.added.len(), 1);
    assert_eq!(changes.added[0].domain, "b.example");
    assert_eq!(changes.changed.len(), 1);
    assert_eq!(changes.blocklist_added, ["bad.example"]);
    let summary = changes.summary();
    assert!(summary.contains("+ allow web b.example"), "{summary}");
    assert!(summary.contains("~ allow web a.example"), "{summary}");
    assert!(diff::allowlist_changes(&a.document, &a.document).is_empty());
}

#[test]
fn urls_are_shown_without_passwords() {
    assert_eq!(
        redacted("postgres://app:s3cret@db:5432/x"),
        "postgres://app:***@db:5432/x"
    );
    assert_eq!(redacted("sqlite:///var/lib/c.db"), "sqlite:///var/lib/c.db");
}
