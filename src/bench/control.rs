//! `clawgress bench-control`: how long an emergency block issued through one
//! replica takes to deny requests on another (issue 3's propagation figure).
//!
//! Each round: replica B serves the target; the block is posted to replica
//! A's control API; B is asked again and again over one keep-alive proxy
//! connection until it answers `403 emergency_block`. The time from sending
//! the block to that first denial is the round's figure. Then the block is
//! lifted and B must serve again before the next round.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, PROXY_AUTHORIZATION};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use super::endpoint::{basic_credentials, parse_proxy, parse_target};

/// Longest a single round may wait for the block (or the restore) to arrive.
const ROUND_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, clap::Args)]
pub struct ControlBenchArgs {
    /// Replica A's admin URL, where the block is issued.
    #[arg(long, value_name = "URL")]
    pub admin: String,
    /// Maintainer token for replica A's control API.
    #[arg(long, env = "CLAWGRESS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Replica B's proxy, `http://host:port`, where the denial is awaited.
    #[arg(long, value_name = "URL")]
    pub proxy: String,
    /// Proxy credential `AGENT:KEY`.
    #[arg(long, env = "CLAWGRESS_BENCH_PROXY_USER", hide_env_values = true)]
    pub proxy_user: String,
    /// An allowed origin to fetch through replica B.
    #[arg(long, value_name = "URL")]
    pub target: String,
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ControlBenchArgs) -> anyhow::Result<()> {
    let target = parse_target(&args.target)?;
    let proxy = parse_proxy(&args.proxy)?;
    let credentials = basic_credentials(&args.proxy_user)?;
    let admin = crate::egress::Api::new(&args.admin, Some(args.token.clone()));
    let stream = tokio::net::TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .with_context(|| format!("cannot connect to replica B's proxy {}", proxy.display))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut fetch = async move || -> anyhow::Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(target.absolute.clone())
            .header(HOST, target.host_header.clone())
            .header(PROXY_AUTHORIZATION, credentials.clone())
            .body(Empty::<Bytes>::new())?;
        send(&mut sender, request).await
    };

    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut samples = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let (status, _) = fetch().await?;
        if status != 200 {
            bail!("round {round}: replica B answers {status} before the block; is the target allowed?");
        }
        let started = Instant::now();
        let (status, body) = admin
            .call(
                Method::POST,
                "/v1/emergency-block",
                Some(serde_json::json!({"reason": format!("bench-control round {round}")})),
            )
            .await?;
        if status.as_u16() != 201 {
            bail!("the block was refused ({status}): {}", String::from_utf8_lossy(&body));
        }
        let incident: serde_json::Value = serde_json::from_slice(&body)?;
        loop {
            let (status, body) = fetch().await?;
            if status == 403 && body.windows(15).any(|w| w == b"emergency_block") {
                samples.push(started.elapsed());
                break;
            }
            if started.elapsed() > ROUND_LIMIT {
                bail!("round {round}: replica B did not deny within {ROUND_LIMIT:?}");
            }
        }
        let (status, body) = admin
            .call(
                Method::POST,
                "/v1/restore",
                Some(serde_json::json!({"incident_id": incident["incident_id"]})),
            )
            .await?;
        if !status.is_success() {
            bail!("restore failed ({status}): {}", String::from_utf8_lossy(&body));
        }
        let restored = Instant::now();
        while fetch().await?.0 != 200 {
            if restored.elapsed() > ROUND_LIMIT {
                bail!("round {round}: replica B still denies {ROUND_LIMIT:?} after the restore");
            }
        }
    }
    samples.sort();
    // Nearest rank on the sorted samples (few rounds: no histogram needed).
    let percentile_of_sorted = |sorted: &[Duration], p: f64| {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    let micros = |d: Duration| d.as_micros() as u64;
    let p50 = micros(percentile_of_sorted(&samples, 50.0));
    let p99 = micros(percentile_of_sorted(&samples, 99.0));
    let (min, max) = (micros(samples[0]), micros(samples[samples.len() - 1]));
    let line = format!(
        "emergency-block -> first denial on another replica: {} rounds, min {min} us, p50 {p50} us, p99 {p99} us, max {max} us",
        samples.len()
    );
    if args.json {
        eprintln!("{line}");
        println!(
            "{}",
            serde_json::json!({"rounds": samples.len(), "min_us": min, "p50_us": p50, "p99_us": p99, "max_us": max})
        );
    } else {
        println!("{line}");
    }
    Ok(())
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, request: Request<Empty<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
