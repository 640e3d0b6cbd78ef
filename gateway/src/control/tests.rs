use std::collections::BTreeMap;

use chrono::{Duration, Utc};

use super::*;

fn allow(id: &str, domain: &str, ports: &[u16], hours: i64) -> ControlItem {
    ControlItem::Allow(TempAllow {
        id: id.to_string(),
        domain: parse_domain(domain).unwrap(),
        ports: ports.to_vec(),
        expires_at: Utc::now() + Duration::hours(hours),
        reason: "testing".to_string(),
        task: Some("feat-x".to_string()),
        created_by: "alice".to_string(),
        created_at: Utc::now(),
        request_id: None,
        team: None,
    })
}

fn snapshot(items: Vec<ControlItem>) -> ControlSnapshot {
    let map: BTreeMap<_, _> = items.into_iter().map(|i| (i.key(), i)).collect();
    ControlSnapshot::from_items(map, 1)
}

#[test]
fn temporary_entries_match_their_domain_and_ports_until_they_expire() {
    let s = snapshot(vec![
        allow("tmp-1", "API.New-Service.com.", &[443], 24),
        allow("tmp-2", "*.wild.example", &[443, 80], 1),
        allow("tmp-3", "old.example", &[443], -1),
    ]);
    let now = Utc::now();
    assert!(matches!(s.check("api.new-service.com", 443, now), ControlVerdict::TempAllowed(e) if e.id == "tmp-1"));
    assert_eq!(s.check("api.new-service.com", 80, now), ControlVerdict::NoOpinion);
    assert_eq!(s.check("evilapi.new-service.com", 443, now), ControlVerdict::NoOpinion);
    assert!(matches!(
        s.check("a.wild.example", 80, now),
        ControlVerdict::TempAllowed(_)
    ));
    assert_eq!(s.check("wild.example", 80, now), ControlVerdict::NoOpinion);
    assert_eq!(s.check("old.example", 443, now), ControlVerdict::NoOpinion, "expired");
    assert_eq!(s.temporary(now).count(), 2);
    // It stops by itself: an hour on, the one-hour entry is gone.
    let later = now + Duration::minutes(61);
    assert_eq!(s.check("a.wild.example", 80, later), ControlVerdict::NoOpinion);
}

#[test]
fn an_emergency_block_wins_over_everything_and_restore_lifts_it() {
    let block = ControlItem::Emergency(EmergencyBlock {
        incident_id: "inc-1".to_string(),
        reason: "Security incident".to_string(),
        actor: "root".to_string(),
        since: Utc::now(),
    });
    let s = snapshot(vec![allow("tmp-1", "a.example", &[443], 1), block]);
    assert!(
        matches!(s.check("a.example", 443, Utc::now()), ControlVerdict::EmergencyBlock(b) if b.incident_id == "inc-1")
    );
    let restored = s.with("emergency", None, 2);
    assert!(restored.emergency().is_none());
    assert!(matches!(
        restored.check("a.example", 443, Utc::now()),
        ControlVerdict::TempAllowed(_)
    ));
    assert_eq!(restored.revision, 2);
}

#[test]
fn items_round_trip_through_their_keys_and_unknown_values_are_refused() {
    let item = allow("tmp-9", "x.example", &[443], 1);
    let decoded = ControlItem::decode(&item.key(), &item.to_json()).unwrap();
    assert_eq!(decoded, item);
    assert!(ControlItem::decode("allow.x", b"{\"id\":1}").is_err());
    assert!(ControlItem::decode("allow.x", b"not json").is_err());
    assert!(
        ControlItem::decode("mystery", b"{}")
            .unwrap_err()
            .contains("unknown control key")
    );
    // Fields from a newer version are tolerated (rolling upgrades)...
    let mut value: serde_json::Value = serde_json::from_slice(&item.to_json()).unwrap();
    value["surprise"] = serde_json::json!(true);
    assert_eq!(
        ControlItem::decode(&item.key(), value.to_string().as_bytes()).unwrap(),
        item
    );
    // ...and an emergency block this version cannot read still blocks.
    let unreadable = ControlItem::decode_failing_closed("emergency", b"{\"incident\": 7}");
    assert!(matches!(unreadable, Some(ControlItem::Emergency(b)) if b.incident_id == "unreadable"));
    assert_eq!(ControlItem::decode_failing_closed("allow.x", b"{}"), None);
}

#[test]
fn operator_domains_are_checked_like_policy_domains() {
    assert_eq!(parse_domain("Bücher.example").unwrap(), "xn--bcher-kva.example");
    assert!(parse_domain("*").unwrap_err().contains("every destination"));
    assert!(parse_domain("10.0.0.1").is_err());
    assert!(parse_domain("a.*.example").is_err());
    assert!(parse_domain("*.com").unwrap_err().contains("top-level"));
    assert_eq!(parse_domain("*.example.com").unwrap(), "*.example.com");
    assert!(new_id("req").starts_with("req-"));
    assert_ne!(new_id("req"), new_id("req"));
}

#[test]
fn fuzzed_control_values_never_panic_and_never_decode_as_allows_by_accident() {
    let mut rng = crate::testing::Rng::new(0x0C04_7201);
    let valid = allow("tmp-f", "f.example", &[443], 1).to_json();
    for _ in 0..2000 {
        let mut bytes = valid.clone();
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.byte();
        }
        if let Ok(ControlItem::Allow(entry)) = ControlItem::decode("allow.tmp-f", &bytes) {
            // Whatever survived mutation is still a well-formed entry: its
            // domain either parses as a pattern or is ignored at compile.
            let s = snapshot(vec![ControlItem::Allow(entry)]);
            let _ = s.check("f.example", 443, Utc::now());
        }
    }
}

mod store {
    use super::*;
    use crate::control::store::LKG_FILE;

    /// Two saves in flight at once (a cancelled caller's write still runs):
    /// whichever finishes last, the file holds the newer state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_saves_leave_the_newer_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LKG_FILE);
        for round in 0..50u64 {
            let at = |revision| ControlSnapshot::from_parts(BTreeMap::new(), BTreeMap::new(), revision);
            let (older, newer) = (at(round * 2 + 1), at(round * 2 + 2));
            let (a, b) = tokio::join!(
                crate::control::lkg::save(&path, &older),
                crate::control::lkg::save(&path, &newer)
            );
            a.unwrap();
            b.unwrap();
            let kept = crate::control::lkg::load(&path).unwrap().unwrap();
            assert_eq!(kept.revision, round * 2 + 2, "round {round}: an older save came last");
        }
    }

    fn stop() -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    fn block(id: &str) -> ControlItem {
        ControlItem::Emergency(EmergencyBlock {
            incident_id: id.into(),
            reason: "drill".into(),
            actor: "mia".into(),
            since: Utc::now(),
        })
    }

    #[tokio::test]
    async fn a_standalone_store_keeps_its_state_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::start(None, dir.path(), stop()).unwrap();
        assert_eq!(store.status(), StoreStatus::Standalone);
        let mut blocked = store.watch_block();
        store.create(allow("tmp-1", "a.example", &[443], 1)).await.unwrap();
        store.create(block("inc-1")).await.unwrap();
        assert!(*blocked.borrow_and_update(), "open tunnels hear of the block");
        assert!(dir.path().join(LKG_FILE).is_file());

        let again = ControlStore::start(None, dir.path(), stop()).unwrap();
        let snapshot = again.snapshot();
        assert_eq!(snapshot.emergency().unwrap().incident_id, "inc-1");
        assert!(snapshot.temp_allow("tmp-1").is_some());
        let revision = snapshot.revision_of("emergency").unwrap();
        again.delete("emergency", revision).await.unwrap();
        let third = ControlStore::start(None, dir.path(), stop()).unwrap();
        assert!(third.snapshot().emergency().is_none());
    }

    #[tokio::test]
    async fn writes_that_expect_a_state_refuse_to_overwrite_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::start(None, dir.path(), stop()).unwrap();
        store.create(block("inc-1")).await.unwrap();
        assert!(matches!(
            store.create(block("inc-2")).await,
            Err(ControlError::Conflict)
        ));
        let stale = store.snapshot().revision_of("emergency").unwrap();
        store.update(block("inc-3"), stale).await.unwrap();
        assert!(matches!(
            store.delete("emergency", stale).await,
            Err(ControlError::Conflict)
        ));
        assert_eq!(store.snapshot().emergency().unwrap().incident_id, "inc-3");
    }

    #[tokio::test]
    async fn expired_entries_and_old_decisions_are_swept_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::start(None, dir.path(), stop()).unwrap();
        store.create(allow("tmp-old", "old.example", &[443], -1)).await.unwrap();
        store.create(allow("tmp-new", "new.example", &[443], 1)).await.unwrap();
        let swept = store.sweep(Utc::now(), |_| Some(())).await;
        assert_eq!(swept.len(), 1);
        assert!(matches!(&swept[0], (ControlItem::Allow(e), (), Ok(())) if e.id == "tmp-old"));
        assert!(store.snapshot().temp_allow("tmp-old").is_none());
        assert!(store.snapshot().temp_allow("tmp-new").is_some());
        assert!(store.sweep(Utc::now(), |_| Some(())).await.is_empty());
    }

    #[tokio::test]
    async fn without_nats_a_broken_or_missing_copy_means_the_state_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let unreachable = Some("nats://user:secret@127.0.0.1:1".to_string());
        let store = ControlStore::start(unreachable.clone(), dir.path(), stop()).unwrap();
        assert_eq!(store.status(), StoreStatus::Unknown);
        assert!(!store.is_known());
        assert!(matches!(
            store.create(allow("tmp-1", "a.example", &[443], 1)).await,
            Err(ControlError::Unavailable)
        ));

        std::fs::write(dir.path().join(LKG_FILE), b"{\"revision\": 3, \"items\": {").unwrap();
        let broken = ControlStore::start(unreachable.clone(), dir.path(), stop()).unwrap();
        assert_eq!(broken.status(), StoreStatus::Unknown, "a torn copy is not trusted");
        // Standalone, the copy is the only store: refusing to start beats
        // silently forgetting an emergency block.
        let refused = ControlStore::start(None, dir.path(), stop()).unwrap_err();
        assert!(refused.contains("not ignored"), "{refused}");

        std::fs::write(dir.path().join(LKG_FILE), b"{\"revision\": 3, \"items\": {}}").unwrap();
        let good = ControlStore::start(unreachable, dir.path(), stop()).unwrap();
        assert_eq!(good.status(), StoreStatus::LastKnownGood);
        assert_eq!(good.snapshot().revision, 3);
        assert_eq!(
            crate::control::store::redacted("nats://user:secret@127.0.0.1:1"),
            "nats://***@127.0.0.1:1"
        );
    }
}

#[test]
fn a_hold_has_one_key_per_agent_and_an_unreadable_one_still_quarantines() {
    use super::hold::agent_of_key;
    assert_eq!(hold_key("scraper-001"), "quarantine.scraper-001");
    let odd = "team.a/b=c ü";
    let key = hold_key(odd);
    assert!(
        key.bytes()
            .skip("quarantine.".len())
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
        "{key}"
    );
    assert_eq!(agent_of_key(&key).as_deref(), Some(odd));
    assert_ne!(hold_key("a.b"), hold_key("a_b"));

    let held = QuarantinedAgent {
        agent_id: "scraper-001".to_string(),
        mode: HoldMode::Quarantine,
        per_minute: None,
        reason: "dlp".to_string(),
        actor: "analyzer".to_string(),
        since: Utc::now(),
        anomaly_id: Some("an-1".to_string()),
        request_id: None,
    };
    let item = ControlItem::Quarantine(held.clone());
    assert_eq!(ControlItem::decode(&item.key(), &item.to_json()), Ok(item.clone()));
    // A newer replica's value this one cannot read keeps the agent out.
    match ControlItem::decode_failing_closed(&hold_key("scraper-001"), b"{\"mode\": 7}") {
        Some(ControlItem::Quarantine(fallback)) => {
            assert_eq!(fallback.agent_id, "scraper-001");
            assert_eq!(fallback.mode, HoldMode::Quarantine);
        }
        other => panic!("{other:?}"),
    }
    let snapshot = ControlSnapshot::from_items([(item.key(), item)].into_iter().collect(), 3);
    assert_eq!(snapshot.hold("scraper-001"), Some(&held));
    assert_eq!(snapshot.hold("other"), None);
    assert_eq!(ControlSnapshot::default().hold("scraper-001"), None);
}

#[test]
fn a_reduced_rate_lets_one_request_through_per_interval() {
    let rates = super::hold::ReducedRates::default();
    assert!(rates.admit("a", 60).is_ok());
    let wait = rates.admit("a", 60).unwrap_err();
    assert!(
        wait > std::time::Duration::from_millis(900) && wait <= std::time::Duration::from_secs(1),
        "{wait:?}"
    );
    assert!(rates.admit("b", 60).is_ok(), "agents are paced apart");
}
