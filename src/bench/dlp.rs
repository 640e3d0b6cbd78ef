//! `clawgress bench-dlp`: DLP scan throughput on one core, over a
//! chat-completion JSON body of the size asked for, every detector on.

use std::time::{Duration, Instant};

use clawgress_dlp::Engine;
use clawgress_policies::model::DlpPolicy;

#[derive(Debug, Clone, clap::Args)]
pub struct DlpBenchArgs {
    /// Body size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Prose an agent might send: words that trip the keyword prefilter
/// (`token`, `password`, `@`, digits), code, dates, versions and a few real
/// findings, so every detector does its work.
pub(super) const PHRASES: &[&str] = &[
    "Summarise the attached incident report and list the follow-up actions.",
    "The auth token expired at 2026-11-23T10:15:00Z; the retry used version v1.2.3.",
    "Reset the password policy so that users rotate every 90 days (ticket 48213).",
    "Contact the on-call engineer at oncall@example.com or +14155552671.",
    "fn main() { let secret_count = 42; println!(\"{}\", secret_count); }",
    "Order 1234567890 shipped on 11/23/2026 to 221B Baker Street, London.",
    "The API key rotation job failed twice; see logs at https://logs.example.com/run/7.",
    "Quarterly revenue grew 12.5% to $4,200,000 while costs fell 3%.",
    "Translate to French: the meeting is moved to Thursday at 15:30.",
    "Card ending 1111 was declined; the customer's IBAN is on file.",
];

/// A chat-completion request of about `size` bytes.
pub fn chat_body(size: usize) -> Vec<u8> {
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are a careful assistant."})];
    let mut total = 0;
    let mut index = 0;
    while total < size {
        let mut content = String::new();
        while content.len() < 2048 {
            content.push_str(PHRASES[index % PHRASES.len()]);
            content.push('\n');
            index += 1;
        }
        total += content.len() + 32;
        let role = if messages.len() % 2 == 1 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": content}));
    }
    let body = serde_json::json!({"model": "gpt-4o", "max_tokens": 1024, "stream": true, "messages": messages});
    serde_json::to_vec(&body).unwrap_or_default()
}

pub fn run(args: DlpBenchArgs) -> anyhow::Result<()> {
    let engine = Engine::new(&DlpPolicy {
        max_inspect_bytes: clawgress_policies::values::ByteSize::bytes(64 << 20),
        ..DlpPolicy::default()
    });
    let body = chat_body(args.size);
    let first = engine
        .inspect_body(&body, Some("application/json"), None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let window = Duration::try_from_secs_f64(args.seconds).unwrap_or(Duration::from_secs(3));
    let started = Instant::now();
    let mut scans = 0u64;
    let mut samples = Vec::new();
    while started.elapsed() < window {
        let one = Instant::now();
        let report = engine.inspect_body(&body, Some("application/json"), None);
        samples.push(one.elapsed());
        assert!(report.is_ok_and(|r| r.findings.len() == first.findings.len()));
        scans += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let mb_per_s = (body.len() as f64 * scans as f64) / elapsed / 1e6;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"body_bytes": body.len(), "scans": scans, "mb_per_s": mb_per_s,
                "p50_us": p50.as_micros() as u64, "findings": first.findings.len(), "kinds": first.kinds()})
        );
    } else {
        println!(
            "DLP scan of a {} byte chat completion: {scans} scans in {elapsed:.2} s, {mb_per_s:.0} MB/s on one core, \
             p50 {} µs per body, {} findings ({})",
            body.len(),
            p50.as_micros(),
            first.findings.len(),
            first.kinds().join(", ")
        );
    }
    Ok(())
}
