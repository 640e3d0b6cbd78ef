//! The control store with one nats-server down, whichever it is: each of
//! the three is killed in turn (it may host a gateway's connection, the
//! control bucket's leader, or the consumer a gateway's watch reads from),
//! and an emergency block made at once, while the bucket elects a new
//! leader, still reaches both gateways within a second of being confirmed.

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
