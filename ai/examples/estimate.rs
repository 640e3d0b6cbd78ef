//! Times the prompt estimate: the one-time load of each encoding, then the
//! median of 50 estimates of a 100 KB English prompt for `gpt-4o`, and the
//! same prompt through `analyze_request` as a chat body.
//!
//! `cargo run --release -p clawgress-ai --example estimate`

use std::time::{Duration, Instant};

use clawgress_ai::{analyze_request, detect, estimate_tokens};

/// Plain English prose (varied sentences, so the encoder's fast path for
/// whole-word tokens is exercised as real prompts exercise it).
const PROSE: &str = "When the agent asked for the quarterly report, the gateway checked \
its policy before forwarding the request. Each provider counts tokens a little differently, \
so the estimate is only a guide; the bill comes from the usage the provider reports. \
Meanwhile, the operator wanted to know why one workflow had spent three times its budget \
last Tuesday. The logs showed a loop: a tool returned an error, the model retried, and \
every retry carried the whole conversation again. Nobody had noticed, because each request \
on its own looked ordinary. A limit on output tokens would not have helped much; the prompt \
itself had grown to forty thousand tokens by the end. What helped was a per-agent budget, \
enforced at the edge, with an alert at eighty percent. Numbers like 1,234.56 and dates like \
2024-05-13 appear too, as do names such as O'Brien, Zürich and São Paulo.\n\n";

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let mut prompt = String::new();
    while prompt.len() < 100_000 {
        prompt.push_str(PROSE);
    }
    prompt.truncate(100_000);

    let start = Instant::now();
    let first = estimate_tokens("gpt-4o", "warm up");
    let load_o200k = start.elapsed();
    let start = Instant::now();
    estimate_tokens("gpt-4", "warm up");
    let load_cl100k = start.elapsed();
    println!(
        "one-time load: o200k_base {load_o200k:.1?}, cl100k_base {load_cl100k:.1?} ({})",
        first.method
    );

    let mut tokens = 0;
    let runs: Vec<Duration> = (0..50)
        .map(|_| {
            let start = Instant::now();
            tokens = estimate_tokens("gpt-4o", &prompt).tokens;
            start.elapsed()
        })
        .collect();
    let med = median(runs);
    let mb_per_s = prompt.len() as f64 / med.as_secs_f64() / 1e6;
    println!(
        "estimate_tokens(gpt-4o, {} B): {tokens} tokens, median of 50: {med:.2?} ({mb_per_s:.1} MB/s)",
        prompt.len()
    );

    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": prompt}],
    })
    .to_string();
    let endpoint = detect("/v1/chat/completions").expect("chat path");
    let mut estimate = 0;
    let runs: Vec<Duration> = (0..50)
        .map(|_| {
            let start = Instant::now();
            estimate = analyze_request(&endpoint, body.as_bytes())
                .map(|r| r.token_estimate)
                .unwrap_or(0);
            start.elapsed()
        })
        .collect();
    println!(
        "analyze_request(chat, {} B): estimate {estimate}, median of 50: {:.2?}",
        body.len(),
        median(runs)
    );
}
