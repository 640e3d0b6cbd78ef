//! Progress of the chaos test: results stored over time, throughput
//! recovery after each kill, and what JetStream holds when it stalls.

use super::*;

/// Results stored in RESULTS over time, sampled from its stream leader:
/// a result published while the stream has no leader is not one yet.
#[derive(Clone, Default)]
pub(super) struct Seen(pub(super) Arc<Mutex<Vec<(Instant, u64)>>>);

impl Seen {
    pub(super) fn count(&self) -> usize {
        self.0.lock().unwrap().last().map_or(0, |(_, n)| *n as usize)
    }

    /// Stored at `at` (the last sample before it).
    pub(super) fn at(&self, at: Instant) -> u64 {
        let seen = self.0.lock().unwrap();
        seen.iter().rev().find(|(t, _)| *t <= at).map_or(0, |(_, n)| *n)
    }

    /// Results stored per second over the `window` before `at`.
    pub(super) fn rate(&self, at: Instant, window: Duration) -> f64 {
        let from = at.checked_sub(window).unwrap_or(at);
        self.at(at).saturating_sub(self.at(from)) as f64 / window.as_secs_f64()
    }

    /// Samples RESULTS' message count every 100 ms.
    pub(super) fn follow(&self, js: async_nats::jetstream::Context) {
        let seen = self.clone();
        tokio::spawn(async move {
            loop {
                let info = tokio::time::timeout(Duration::from_secs(1), async {
                    js.get_stream("RESULTS")
                        .await
                        .ok()?
                        .info()
                        .await
                        .ok()
                        .map(|i| i.state.messages)
                })
                .await;
                if let Ok(Some(n)) = info {
                    seen.0.lock().unwrap().push((Instant::now(), n));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// Result publications per job id (a job run again after a lost ack
/// publishes twice; RESULTS stores it once).
#[derive(Clone, Default)]
pub(super) struct Publications(pub(super) Arc<Mutex<HashMap<String, usize>>>);

/// What JetStream holds for the jobs: each JOBS consumer's pending and
/// unacknowledged counts, and the per-host slot records (for a stall).
pub(super) async fn jetstream_state(js: &async_nats::jetstream::Context) -> String {
    let mut out = String::new();
    for name in ["JOBS", "RESULTS", "DLQ"] {
        if let Ok(mut stream) = js.get_stream(name).await
            && let Ok(info) = stream.info().await
        {
            out.push_str(&format!(
                "stream {name}: {} message(s), leader {:?}\n",
                info.state.messages,
                info.cluster.as_ref().and_then(|c| c.leader.clone())
            ));
        }
    }
    if let Ok(stream) = js.get_stream("JOBS").await {
        let mut names = stream.consumer_names();
        while let Some(Ok(name)) = names.next().await {
            if let Ok(mut consumer) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                .await
                && let Ok(info) = consumer.info().await
            {
                out.push_str(&format!(
                    "consumer {name}: pending {}, ack pending {}, redelivered {}, waiting pulls {}, leader {:?}\n",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.cluster.as_ref().and_then(|c| c.leader.clone())
                ));
            }
        }
    }
    if let Ok(hosts) = js.get_key_value("clawgress-hosts").await
        && let Ok(mut keys) = hosts.keys().await
    {
        let mut n = 0;
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(value)) = hosts.get(&key).await
                && n < 8
            {
                out.push_str(&format!("host {key}: {}\n", String::from_utf8_lossy(&value)));
                n += 1;
            }
        }
    }
    out
}

/// How long after `since` the stored results kept flowing at less than half
/// the `before` rate (1 s windows), once they have held at half or more
/// for 2 s: zero when they never dropped. `None` when the jobs ran out
/// before that could be told.
pub(super) async fn recovery(
    seen: &Seen,
    since: Instant,
    before: f64,
    what: &str,
    total: usize,
    cluster: &Cluster,
) -> Option<Duration> {
    let deadline = since + Duration::from_secs(90);
    let mut low_until = since;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if seen.count() >= total {
            return None;
        }
        // Only windows that begin after the kill count.
        if now >= since + Duration::from_secs(1) {
            if seen.rate(now, Duration::from_secs(1)) < before / 2.0 {
                low_until = now;
            } else if now - low_until >= Duration::from_secs(2) {
                return Some(low_until - since);
            }
        }
        if now >= deadline {
            let client = async_nats::connect(cluster.nats.url(cluster.nats.live()[0]))
                .await
                .unwrap();
            let state = jetstream_state(&async_nats::jetstream::new(client)).await;
            panic!(
                "throughput did not recover after {what} (before: {before:.0}/s, now {:.0}/s)\n{state}{}",
                seen.rate(now, Duration::from_secs(1)),
                cluster.logs()
            );
        }
    }
}

/// The printout for one kill.
pub(super) fn recovered(what: &str, before: f64, took: Option<Duration>) {
    match took {
        Some(took) if took.is_zero() => {
            println!("{what}: {before:.0} results/s before; never below half of it")
        }
        Some(took) => println!("{what}: {before:.0} results/s before; back to half of it for good after {took:.1?}"),
        None => println!("{what}: {before:.0} results/s before; every job finished before recovery could be measured"),
    }
}

/// Waits until `count` results are stored.
pub(super) async fn until_done(seen: &Seen, total: usize, count: usize, cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.count() < count.min(total) {
        assert!(
            Instant::now() < deadline,
            "{} of {total} results\n{}",
            seen.count(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tenth of what is left from here: the next kill lands while jobs still
/// run (enough for its recovery to be measured), however long the steps
/// before took.
pub(super) fn next_step(seen: &Seen, total: usize) -> usize {
    let done = seen.count();
    done + total.saturating_sub(done) / 10
}
