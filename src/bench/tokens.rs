//! `clawgress bench-tokens`: what the AI analyzer costs per request: the
//! token estimate of a prompt of the size asked for (100 KB by default), and
//! reading a whole chat-completion body of that size, on one core.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct TokensBenchArgs {
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 100 * 1024)]
    pub size: usize,
    /// Measured seconds for each of the two figures.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Model whose encoding is used.
    #[arg(long, default_value = "gpt-4o")]
    pub model: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// English prose of about `size` bytes, varied so the BPE merges work as
/// they would on a real prompt.
fn prose(size: usize) -> String {
    let mut text = String::with_capacity(size + 256);
    let mut index = 0;
    while text.len() < size {
        text.push_str(super::dlp::PHRASES[index % super::dlp::PHRASES.len()]);
        text.push(if index % 7 == 6 { '\n' } else { ' ' });
        index += 1;
    }
    text.truncate(size);
    text
}

fn median_of(seconds: f64, mut once: impl FnMut()) -> (Duration, u64) {
    let window = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::from_secs(3));
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < window || samples.is_empty() {
        let one = Instant::now();
        once();
        samples.push(one.elapsed());
    }
    samples.sort();
    (samples[samples.len() / 2], samples.len() as u64)
}

pub fn run(args: TokensBenchArgs) -> anyhow::Result<()> {
    let load = Instant::now();
    clawgress_ai::warm_up();
    let load = load.elapsed();
    let text = prose(args.size);
    let estimate = clawgress_ai::estimate_tokens(&args.model, &text);
    let (estimate_p50, estimates) = median_of(args.seconds, || {
        std::hint::black_box(clawgress_ai::estimate_tokens(&args.model, std::hint::black_box(&text)));
    });
    let body = serde_json::to_vec(&serde_json::json!({
        "model": args.model,
        "max_tokens": 1024,
        "messages": [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": text}],
    }))?;
    let endpoint = clawgress_ai::detect("/v1/chat/completions").ok_or_else(|| anyhow::anyhow!("no endpoint"))?;
    let (analyze_p50, analyses) = median_of(args.seconds, || {
        std::hint::black_box(clawgress_ai::analyze_request(&endpoint, std::hint::black_box(&body)).ok());
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({"prompt_bytes": text.len(), "tokens": estimate.tokens, "encodings_load_ms": load.as_millis() as u64,
                "estimate_p50_us": estimate_p50.as_micros() as u64, "estimates": estimates,
                "analyze_p50_us": analyze_p50.as_micros() as u64, "analyses": analyses, "body_bytes": body.len()})
        );
    } else {
        println!(
            "token estimate of a {} byte prompt ({}): {} tokens, p50 {} µs ({:.0} MB/s) over {estimates} runs; \
             reading the whole {} byte chat request: p50 {} µs; encodings loaded once in {} ms",
            text.len(),
            args.model,
            estimate.tokens,
            estimate_p50.as_micros(),
            text.len() as f64 / estimate_p50.as_secs_f64() / 1e6,
            body.len(),
            analyze_p50.as_micros(),
            load.as_millis()
        );
    }
    Ok(())
}
