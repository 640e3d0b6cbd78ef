//! `clawgress analyze`: lines in (a trail file or the audit streams), the
//! engine, anomalies out. Undecodable lines are skipped, counted, and named
//! (`file:line`, or `stream:sequence`); they never stop the process.

use std::path::PathBuf;
use std::time::Instant;

use futures_util::StreamExt;

use crate::engine::{Engine, Settings, Stats};
use crate::line::Line;
use crate::sink::{ControlApi, Sink};
use crate::source::{FOLLOW_POLL, TrailReader, follow_streams};

/// Skipped lines named one by one before only the count goes on.
const NAMED_SKIPS: u64 = 20;

pub struct Options {
    /// Read this trail file instead of the streams.
    pub trail: Option<PathBuf>,
    /// Keep reading the file as it grows.
    pub follow: bool,
    /// NATS: the `audit.>` streams are read from here (unless `trail` is
    /// given) and anomalies published here.
    pub nats: Option<String>,
    /// The durable consumer's name on the audit streams.
    pub durable: String,
    /// The engine's settings (from the policy, or defaults).
    pub settings: Settings,
    /// A gateway's control API and an operator token, for quarantine and
    /// rate reduction. Without it those actions are reported `dry_run`.
    pub control: Option<ControlApi>,
    /// Where anomaly lines are written (`None`: nowhere but NATS).
    pub out: Option<Box<dyn std::io::Write + Send>>,
    /// Turns true when the process is asked to stop (SIGINT, SIGTERM):
    /// the run ends after the line in hand. `None`: until the input ends.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Resolves when `stop` turns true; never without one.
async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            if stop.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// What a run saw, printed at its end (and used by the benchmark).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub stats: Stats,
    pub published: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

pub async fn run(options: Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let nats = match &options.nats {
        Some(url) => {
            let client = async_nats::ConnectOptions::new()
                .name("clawgress-analyze")
                .connection_timeout(std::time::Duration::from_secs(5))
                .connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
            let js = async_nats::jetstream::new(client);
            Sink::ensure_stream(&js).await?;
            Some(js)
        }
        None => None,
    };
    let per_minute = options.settings.rate_reduction_per_minute;
    let mut engine = Engine::new(options.settings);
    let mut sink = Sink::new(options.out, nats.clone(), options.control, per_minute);
    let mut found = Vec::new();
    let mut stop = options.stop;
    match (&options.trail, &nats) {
        (Some(path), _) => {
            let mut reader = TrailReader::open(path)
                .map_err(|e| anyhow::anyhow!("cannot read the trail {}: {e}", path.display()))?;
            loop {
                while let Some((number, bytes)) = reader.next_line()? {
                    observe(&mut engine, bytes, &mut found, || {
                        format!("{}:{number}", path.display())
                    });
                    for anomaly in found.drain(..) {
                        sink.emit(anomaly).await?;
                    }
                }
                if !options.follow {
                    if let Some((number, bytes)) = reader.unterminated() {
                        observe(&mut engine, bytes, &mut found, || {
                            format!("{}:{number} (no line end)", path.display())
                        });
                    }
                    for anomaly in found.drain(..) {
                        sink.emit(anomaly).await?;
                    }
                    break;
                }
                sink.flush();
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = stopped(&mut stop) => break,
                }
                if reader.rotated() {
                    tracing::info!(path = %path.display(), "the trail was replaced; reading it from the start");
                    reader.reopen()?;
                }
            }
        }
        (None, Some(js)) => {
            let mut lines = follow_streams(js, &options.durable).await?;
            loop {
                let next = tokio::select! {
                    next = lines.next() => next,
                    () = stopped(&mut stop) => None,
                };
                let Some(next) = next else { break };
                let line = match next {
                    Ok(line) => line,
                    Err(error) => {
                        tracing::warn!("{error}");
                        continue;
                    }
                };
                observe(&mut engine, &line.payload, &mut found, || {
                    format!("stream {} sequence {}", line.stream, line.sequence)
                });
                for anomaly in found.drain(..) {
                    sink.emit(anomaly).await?;
                }
                sink.flush();
                line.ack().await;
            }
        }
        (None, None) => anyhow::bail!("give --trail FILE or --nats URL: there is nothing to analyze"),
    }
    sink.flush();
    let seconds = started.elapsed().as_secs_f64();
    let stats = engine.stats.clone();
    if stats.skipped > NAMED_SKIPS {
        eprintln!(
            "{} undecodable lines were skipped ({} named above)",
            stats.skipped, NAMED_SKIPS
        );
    }
    Ok(Summary {
        events_per_second: if seconds > 0.0 {
            stats.events as f64 / seconds
        } else {
            0.0
        },
        published: sink.published(),
        seconds,
        stats,
    })
}

/// Decodes and observes one line; an undecodable one is counted and, for
/// the first few, named with `place()`.
pub fn observe(engine: &mut Engine, bytes: &[u8], found: &mut Vec<crate::Anomaly>, place: impl FnOnce() -> String) {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match Line::parse(bytes) {
        Ok(line) => engine.observe(&line, found),
        Err(why) => {
            engine.skipped();
            if engine.stats.skipped <= NAMED_SKIPS {
                eprintln!("{}: skipped: {why}", place());
            }
        }
    }
}
