//! Two replicas and a real nats-server: a change made on the holder is in
//! force on the other replica through the `clawgress-store` bucket; a
//! team-bound operator stays inside its team; the holder (and its SQLite)
//! gone, or the PostgreSQL it holds stopped, traffic goes on from the last
//! snapshot and changes wait for the database.

use support::nats::NatsServer;
use support::postgres::Postgres;

use super::*;

#[tokio::test]
async fn two_replicas_apply_store_changes_and_keep_serving_without_the_holder() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let site = Site::new().await;
    let holder = site.gateway(&["--nats", &nats.url, "--database"]);
    let replica = site.gateway(&["--nats", &nats.url]);

    // Made on the holder, in force on the other replica.
    let key = create_agent(&holder, OPERATOR, "roaming-001", "data").await;
    let head = site.get("site.test", ("roaming-001", &key));
    until_status(&replica, &head, 200).await;
    assert_eq!(raw::send(holder.proxy, &head, b"").await.status, 200);
    let line = replica.wait_audit(|l| l["agent_id"] == "roaming-001").await;
    assert_eq!(line["team_id"], "data");

    // The replica that does not hold the store says where to go.
    let elsewhere = api(&replica, "GET", "/v1/agents", VIEWER, &serde_json::Value::Null).await;
    assert_eq!((elsewhere.status, elsewhere.reason().as_str()), (503, "store_not_here"));
    let status = api(&replica, "GET", "/v1/store", VIEWER, &serde_json::Value::Null)
        .await
        .json();
    assert_eq!(status["agents_from"], "store", "{status}");

    // A team-bound operator: its own team's agents only.
    let builder_key = create_agent(&holder, OPERATOR, "builder-009", "builders").await;
    let touch = api(
        &holder,
        "PATCH",
        "/v1/agents/builder-009",
        DATA_OPERATOR,
        &serde_json::json!({"version": 1, "disabled": true}),
    )
    .await;
    assert_eq!(
        (touch.status, touch.reason().as_str()),
        (403, "team_not_allowed"),
        "{}",
        text(&touch)
    );
    let rotate = api(
        &holder,
        "POST",
        "/v1/agents/builder-009/rotate",
        DATA_OPERATOR,
        &serde_json::json!({"version": 1}),
    )
    .await;
    assert_eq!(rotate.status, 403);
    assert_eq!(
        api(
            &holder,
            "POST",
            "/v1/agents",
            DATA_OPERATOR,
            &new_agent("sneaky", "builders")
        )
        .await
        .status,
        403
    );
    let moved = api(
        &holder,
        "PATCH",
        "/v1/agents/roaming-001",
        DATA_OPERATOR,
        &serde_json::json!({"version": 1, "team": "builders"}),
    )
    .await;
    assert_eq!(moved.status, 403, "{}", text(&moved));
    create_agent(&holder, DATA_OPERATOR, "data-002", "data").await;
    let listed = api(&holder, "GET", "/v1/agents", DATA_OPERATOR, &serde_json::Value::Null)
        .await
        .json();
    let ids: Vec<&str> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    // Team data's: the two made here and the two the store was seeded
    // with from the agents file; never team builders'.
    assert_eq!(ids, ["data-002", "retired-001", "roaming-001", "scraper-001"]);
    // Its temporary allows open domains to its team's agents only.
    let temp = serde_json::json!({"domain": "unlisted.test", "duration": "1h", "reason": "team test", "ports": [site.origin.addr.port()]});
    let added = api(&holder, "POST", "/v1/allowlist/temporary", DATA_OPERATOR, &temp).await;
    assert_eq!(added.status, 201, "{}", text(&added));
    assert_eq!(added.json()["team"], "data");
    until_status(&replica, &site.get("unlisted.test", ("roaming-001", &key)), 200).await;
    let other_team = raw::send(
        replica.proxy,
        &site.get("unlisted.test", ("builder-009", &builder_key)),
        b"",
    )
    .await;
    assert_eq!(other_team.status, 403, "{}", text(&other_team));
    let block = api(
        &holder,
        "POST",
        "/v1/emergency-block",
        DATA_OPERATOR,
        &serde_json::json!({"reason": "x"}),
    )
    .await;
    assert_eq!(block.status, 403);

    // Deleted in the store (the agents file still lists it): refused everywhere.
    let deleted = api(
        &holder,
        "DELETE",
        "/v1/agents/scraper-001",
        OPERATOR,
        &serde_json::json!({"version": 1}),
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", text(&deleted));
    until_status(&replica, &site.get("site.test", SCRAPER), 407).await;

    // The holder goes away with its database: the replica keeps serving.
    let replica_state = replica.dir.path().join("state");
    drop(holder);
    for _ in 0..3 {
        assert_eq!(raw::send(replica.proxy, &head, b"").await.status, 200);
    }
    // Restarted while NATS is down too, it starts from its last snapshot.
    let mut replica = replica;
    replica.stop();
    drop(nats);
    let state = replica_state.display().to_string();
    let restarted = site.gateway(&["--nats", "nats://127.0.0.1:1", "--state-dir", &state]);
    assert_eq!(
        raw::send(restarted.proxy, &head, b"").await.status,
        200,
        "{}",
        restarted.log()
    );
    // The store's registry, not the file's: the deleted agent stays out.
    assert_eq!(
        raw::send(restarted.proxy, &site.get("site.test", SCRAPER), b"")
            .await
            .status,
        407
    );
}

#[tokio::test]
async fn a_postgresql_store_down_stops_changes_not_traffic() {
    let Some(mut postgres) = Postgres::start() else {
        return;
    };
    let site = Site::new().await;
    let url = postgres.database("clawgress");
    let gw = site.gateway(&["--database", &url]);
    assert!(
        api(&gw, "GET", "/v1/store", VIEWER, &serde_json::Value::Null)
            .await
            .json()["holder"]["database"]
            .as_str()
            .unwrap()
            .starts_with("postgres://clawgress"),
    );
    let key = create_agent(&gw, OPERATOR, "pg-001", "data").await;
    let head = site.get("site.test", ("pg-001", &key));
    assert_eq!(raw::send(gw.proxy, &head, b"").await.status, 200);

    postgres.stop();
    // Traffic goes on from the snapshot in force; changes wait.
    assert_eq!(raw::send(gw.proxy, &head, b"").await.status, 200);
    let refused = api(&gw, "POST", "/v1/agents", OPERATOR, &new_agent("pg-002", "data")).await;
    assert_eq!(
        (refused.status, refused.reason().as_str()),
        (503, "store_unavailable"),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("keep serving"), "{}", text(&refused));

    // Restarted while the database is down: from its last snapshot.
    let state = gw.dir.path().join("state").display().to_string();
    let mut gw = gw;
    gw.stop();
    let again = site.gateway(&["--database", &url, "--state-dir", &state]);
    assert_eq!(raw::send(again.proxy, &head, b"").await.status, 200, "{}", again.log());

    // The database back, changes go through again (the pool reconnects).
    postgres.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let created = api(&again, "POST", "/v1/agents", OPERATOR, &new_agent("pg-002", "data")).await;
        if created.status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", text(&created));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = api(&again, "GET", "/v1/agents", VIEWER, &serde_json::Value::Null)
        .await
        .json();
    // The agents file's three (the empty store was seeded) and the two made here.
    assert_eq!(listed["agents"].as_array().unwrap().len(), 5);
}
