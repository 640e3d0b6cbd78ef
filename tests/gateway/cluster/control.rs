//! The control store with one nats-server down, whichever it is: each of
//! the three is killed in turn (it may host a gateway's connection, the
//! control bucket's leader, or the consumer a gateway's watch reads from),
//! and an emergency block made at once, while the bucket elects a new
//! leader, still reaches both gateways within a second of being confirmed.
//! And how every process opens the buckets such a cluster holds.

use super::*;

/// Until every copy of `stream` is current (a restarted server has caught
/// up), so the next kill leaves a quorum that holds everything.
async fn wait_current(js: &async_nats::jetstream::Context, stream: &str, cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut found) = js.get_stream(stream).await
            && let Ok(info) = found.info().await
            && let Some(state) = info.cluster.as_ref()
            && state.leader.is_some()
            && state.replicas.len() == 2
            && state.replicas.iter().all(|r| r.current && !r.offline)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} not replicated on 3 current servers after 30 s\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_emergency_block_reaches_both_gateways_whichever_nats_server_is_down() {
    let Some(mut cluster) = Cluster::start(0).await else {
        return;
    };
    let urls: Vec<String> = (0..cluster.nats.size()).map(|n| cluster.nats.url(n)).collect();
    let client = async_nats::connect(urls.as_slice()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for node in 0..cluster.nats.size() {
        wait_current(&js, "KV_clawgress-control", &cluster).await;
        let leader = leader(&js, "KV_clawgress-control").await;
        println!(
            "kill -9 {} (the control bucket's leader is {})",
            cluster.nats.name(node),
            leader.as_deref().unwrap_or("?")
        );
        cluster.nats.kill(node);
        block_and_restore(&cluster).await;
        cluster.nats.restart(node);
    }
}

/// Every process opens its buckets the same way: an existing bucket is used
/// as it is (an operator's settings kept, even with fewer replicas than
/// wanted), a missing one is made with the process's settings.
#[tokio::test]
async fn a_bucket_is_used_as_it_is_or_made_with_the_settings_asked_for() {
    let Some(nats) = support::nats::NatsServer::start() else {
        return;
    };
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let config = |history| async_nats::jetstream::kv::Config {
        bucket: "clawgress-test".into(),
        history,
        num_replicas: 1,
        ..Default::default()
    };
    let made = clawgress_nats::open_bucket(&js, config(3)).await.unwrap();
    assert_eq!(made.status().await.unwrap().info.config.max_messages_per_subject, 3);
    // Asked again with other settings (and more replicas than one server
    // can hold): the bucket as it is, not an error, not changed.
    let wanted = async_nats::jetstream::kv::Config {
        num_replicas: 3,
        ..config(7)
    };
    let opened = clawgress_nats::open_bucket(&js, wanted).await.unwrap();
    let info = js
        .get_stream("KV_clawgress-test")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!((info.max_messages_per_subject, info.num_replicas), (3, 1));
    assert_eq!(opened.name, "clawgress-test");
}
