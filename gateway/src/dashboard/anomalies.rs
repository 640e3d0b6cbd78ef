//! The dashboard's "Anomalies" panel: the latest `anomaly` events that
//! `clawgress analyze` published on `alerts.<severity>`, read from NATS
//! (the stream `ALERTS` for the ones before this gateway started, then a
//! subscription). Held agents come from the control store, not from here:
//! they are state, and every replica has it already.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

/// Anomalies kept for the page.
const KEEP: usize = 20;
const STREAM: &str = "ALERTS";
const SUBJECTS: &str = "alerts.>";

#[derive(Debug, Default)]
pub struct Recent {
    items: Mutex<VecDeque<Value>>,
}

impl Recent {
    /// Keeps an anomaly (by id, once), newest last.
    pub fn note(&self, anomaly: Value) {
        if anomaly["type"] != "anomaly" {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if anomaly["id"].is_string() && items.iter().any(|a| a["id"] == anomaly["id"]) {
            return;
        }
        if items.len() == KEEP {
            items.pop_front();
        }
        items.push_back(anomaly);
    }

    /// Newest first, with only what the panel shows.
    pub fn latest(&self) -> Vec<Value> {
        let items = self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        items
            .iter()
            .rev()
            .map(|a| {
                serde_json::json!({
                    "timestamp": a["timestamp"], "agent_id": a["agent_id"], "severity": a["severity"],
                    "kind": a["kind"], "condition": a["condition"], "anomaly_score": a["anomaly_score"],
                    "action": a["action"], "detail": a["detail"], "enforcement": a["enforcement"],
                })
            })
            .collect()
    }
}

/// Follows `alerts.>` on `url` until `stop`, reconnecting after losses.
pub async fn follow(recent: Arc<Recent>, url: String, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            ended = follow_once(&recent, &url) => {
                if let Err(error) = ended {
                    tracing::debug!("dashboard anomalies: {error}");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn follow_once(recent: &Recent, url: &str) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("clawgress-gateway-dashboard")
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await?;
    // Subscribed first, then the backlog: nothing falls between the two
    // (a message seen twice is kept once, by id).
    let mut live = client.subscribe(SUBJECTS).await?;
    let js = async_nats::jetstream::new(client.clone());
    if let Ok(mut stream) = js.get_stream(STREAM).await
        && let Ok(info) = stream.info().await
    {
        let last = info.state.last_sequence;
        for sequence in last.saturating_sub(KEEP as u64 - 1).max(1)..=last {
            if let Ok(message) = stream.get_raw_message(sequence).await
                && let Ok(value) = serde_json::from_slice::<Value>(&message.payload)
            {
                recent.note(value);
            }
        }
    }
    while let Some(message) = live.next().await {
        if let Ok(value) = serde_json::from_slice::<Value>(&message.payload) {
            recent.note(value);
        }
    }
    anyhow::bail!("the subscription to {SUBJECTS} ended")
}
