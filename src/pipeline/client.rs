//! `clawgress submit | results | dlq`: the pipeline's client commands. They
//! publish jobs and read results and dead letters on NATS JetStream, and
//! print them for people (or as JSON lines with `--json`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clawgress_scheduler::result::{DeadLetter, JobResult};
use clawgress_scheduler::streams;
use clawgress_workers::job::{ExtractSpec, FetchMode, Job, Priority, RetryPolicy, ScrapeJob, Take};
use futures_util::StreamExt;

use super::print::{self, Output, Progress};
use super::{NatsArgs, connect, runtime};

const SUBMIT_EXAMPLES: &str = "\
Examples:
  clawgress submit --url http://localhost:3002/ --select title=h1 --wait
  clawgress submit --url http://localhost:3002/ --fetch chromium --wait-for h1 --select title=h1 --wait
  clawgress submit jobs.jsonl --wait --json > results.jsonl

";

#[derive(clap::Args)]
#[command(after_help = format!("{SUBMIT_EXAMPLES}{}", print::EXIT_CODES))]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// JSON-lines file of jobs (`-` for standard input); see README, "The job pipeline".
    pub file: Option<PathBuf>,
    /// Or one scrape job for this URL.
    #[arg(long, conflicts_with = "file")]
    pub url: Option<String>,
    /// With --url: `name=css` to extract (the text of the first match); repeat.
    #[arg(long = "select", value_name = "NAME=CSS", requires = "url", conflicts_with = "file")]
    pub selects: Vec<String>,
    /// With --url: the agent whose identity the fetch uses at the gateway.
    #[arg(long, default_value = "scraper-001", requires = "url", conflicts_with = "file")]
    pub agent: String,
    /// With --url: the queue it waits in.
    #[arg(long, default_value = "normal", value_parser = ["high", "normal", "low"], requires = "url", conflicts_with = "file")]
    pub priority: String,
    /// With --url: how to fetch it: http (plain request), chromium (headless
    /// browser), steel (a Steel Browser server) or auto (http, escalating to
    /// a browser when the page needs one) [default: http; auto with --wait-for].
    #[arg(long, value_parser = ["http", "chromium", "steel", "auto"], requires = "url", conflicts_with = "file")]
    pub fetch: Option<String>,
    /// With --url: wait for this CSS selector before taking the page; needs
    /// a browser (--fetch chromium, steel or auto).
    #[arg(long, value_name = "CSS", requires = "url", conflicts_with = "file")]
    pub wait_for: Option<String>,
    /// Wait for every job's result and print them.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub wait_secs: u64,
    /// With --wait: print each result as its JSON line (for scripts) instead
    /// of a summary for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Keep printing new results.
    #[arg(long)]
    pub follow: bool,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Print each result as its JSON line (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        nats: NatsArgs,
        /// Print each dead letter as its JSON line (the job and its last error).
        #[arg(long)]
        json: bool,
    },
    /// Publish a dead job again (a fresh set of attempts) and drop its dead letter.
    Replay {
        #[command(flatten)]
        nats: NatsArgs,
        /// The job id.
        id: String,
    },
}

/// The scrape job `--url` and its flags describe, checked the way a worker
/// will check it; problems are named by the flag to change.
fn url_job(args: &SubmitArgs, url: &str) -> anyhow::Result<Job> {
    let mut extract = std::collections::BTreeMap::new();
    for select in &args.selects {
        let (name, css) = select
            .split_once('=')
            .filter(|(name, css)| !name.is_empty() && !css.is_empty())
            .with_context(|| format!("--select {select}: write NAME=CSS, e.g. --select title=h1"))?;
        extract.insert(
            name.to_string(),
            ExtractSpec {
                selector: css.to_string(),
                take: Take::Text,
                list: false,
                required: false,
            },
        );
    }
    // Waiting for a selector needs a browser; without --fetch, `auto` picks
    // whichever the scheduler has.
    let fetch = match (args.fetch.as_deref(), &args.wait_for) {
        (Some("http"), Some(css)) => bail!(
            "--wait-for {css} needs a browser, and --fetch http is a plain request: \
             use --fetch chromium, steel or auto (or leave --fetch out)"
        ),
        (Some("chromium"), _) => FetchMode::Chromium,
        (Some("steel"), _) => FetchMode::Steel,
        (Some("auto"), _) | (None, Some(_)) => FetchMode::Auto,
        _ => FetchMode::Http,
    };
    let job = Job::Scrape(ScrapeJob {
        id: clawgress_gateway::control::new_id("cli"),
        agent: args.agent.clone(),
        url: url.to_string(),
        method: "GET".to_string(),
        headers: Default::default(),
        body: None,
        fetch,
        extract,
        wait_for: args.wait_for.clone(),
        screenshot: false,
        timeout: Duration::from_secs(30),
        priority: match args.priority.as_str() {
            "high" => Priority::High,
            "low" => Priority::Low,
            _ => Priority::Normal,
        },
        retry: RetryPolicy::default(),
    });
    clawgress_workers::parse_job(&job.to_json(), |_| true).map_err(|e| {
        let flag = match e.field.split(['.', '[']).next().unwrap_or_default() {
            "url" => format!("--url {url}"),
            "extract" => "--select".to_string(),
            "wait_for" => "--wait-for".to_string(),
            "agent" => format!("--agent {}", args.agent),
            other => other.to_string(),
        };
        anyhow::anyhow!("{flag}: {} ({})", e.problem, e.hint)
    })?;
    Ok(job)
}

/// Most malformed lines listed at once; the count says if there were more.
const MAX_LINE_ERRORS: usize = 10;

/// Builds the jobs to submit, checking each the way a worker will (except
/// for credentials, which only workers hold). A file is read whole first:
/// one bad line publishes nothing, and every bad line is named.
fn jobs_to_submit(args: &SubmitArgs) -> anyhow::Result<Vec<Job>> {
    if let Some(url) = &args.url {
        return Ok(vec![url_job(args, url)?]);
    }
    let Some(file) = &args.file else {
        bail!("give a JSON-lines file of jobs (or - for standard input), or --url URL; see `clawgress submit --help`");
    };
    let name = file.display();
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open the jobs file {name}"))?,
        ))
    };
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{name}:{}: cannot read the line", index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match clawgress_workers::parse_job(line.as_bytes(), |_| true) {
            Ok(job) => jobs.push(job),
            Err(e) => errors.push(format!("{name}:{}: {e}", index + 1)),
        }
    }
    if !errors.is_empty() {
        let more = errors.len().saturating_sub(MAX_LINE_ERRORS);
        errors.truncate(MAX_LINE_ERRORS);
        let mut message = format!(
            "{name}: fix these lines (one JSON job per line):\n  {}",
            errors.join("\n  ")
        );
        if more > 0 {
            message.push_str(&format!("\n  ... and {more} more"));
        }
        bail!(message);
    }
    if jobs.is_empty() {
        bail!("{name} has no jobs: write one JSON job per line (README, \"The job pipeline\", has one)");
    }
    Ok(jobs)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let jobs = match jobs_to_submit(&args) {
        Ok(jobs) => jobs,
        Err(error) => return Ok(print::nothing_published(&error)),
    };
    let output = Output::new(args.json);
    runtime()?.block_on(async move {
        let (_client, js) = match connect(&args.nats).await {
            Ok(connected) => connected,
            Err(error) => return Ok(print::nothing_published(&error)),
        };
        // Subscribe before publishing, so no result is missed.
        let mut results = if args.wait {
            Some(result_stream(&js, None, true).await?)
        } else {
            None
        };
        let mut progress = Progress::new(jobs.len(), args.wait);
        // Acks are awaited in a sliding window: pipelined, yet below the
        // client's cap on acks in flight (5,000), past which publishing
        // would wait forever for acks nobody reads.
        const WINDOW: usize = 1024;
        let mut acks = VecDeque::with_capacity(WINDOW);
        let mut duplicates = Vec::new();
        for (index, job) in jobs.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", job.id());
            let subject = streams::job_subject(job.kind(), job.priority());
            // The job's trace starts here; the worker continues it.
            let span = tracing::debug_span!(
                target: "clawgress::submit",
                "publish",
                otel.kind = "producer",
                job.id = %job.id(),
                messaging.destination = %subject,
            );
            if let Some(traceparent) = clawgress_telemetry::traceparent(&span) {
                headers.insert(clawgress_telemetry::TRACEPARENT, traceparent.as_str());
            }
            acks.push_back((
                job,
                js.publish_with_headers(subject, headers, job.to_json().into()).await?,
            ));
            let last = index + 1 == jobs.len();
            while acks.len() >= WINDOW || (last && !acks.is_empty()) {
                let Some((acked, ack)) = acks.pop_front() else { break };
                if ack.await?.duplicate {
                    duplicates.push(acked);
                } else {
                    progress.published += 1;
                }
                progress.show(false);
            }
        }
        let Some(results) = results.as_mut() else {
            progress.finish(duplicates.len());
            if let [job] = jobs.as_slice() {
                eprintln!(
                    "job {id} published; its result: {program} results --job {id}",
                    id = job.id(),
                    program = print::program()
                );
            }
            return Ok(ExitCode::SUCCESS);
        };
        let urls: HashMap<&str, &str> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Scrape(scrape) => Some((scrape.id.as_str(), scrape.url.as_str())),
                Job::Agent(_) => None,
            })
            .collect();
        let wanted: HashSet<&str> = jobs.iter().map(|j| j.id()).collect();
        let mut answered = HashSet::new();
        let show = |progress: &mut Progress, result: &JobResult| {
            let url = urls.get(result.job_id.as_str()).copied();
            progress.print(&output.result(result, url), result.status);
        };
        // A duplicate is not run again; its result may exist already.
        let results_stream = js.get_stream(streams::RESULTS).await?;
        for job in &duplicates {
            let subject = streams::result_subject(job.kind(), job.id());
            if let Ok(message) = results_stream.get_last_raw_message_by_subject(&subject).await
                && let Ok(result) = serde_json::from_slice::<JobResult>(&message.payload)
                && answered.insert(result.job_id.clone())
            {
                show(&mut progress, &result);
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(args.wait_secs));
        tokio::pin!(deadline);
        while answered.len() < wanted.len() {
            let message = tokio::select! {
                m = results.next() => m,
                () = &mut deadline => {
                    progress.tally.missing = wanted.len() - answered.len();
                    progress.finish(duplicates.len());
                    eprintln!(
                        "gave up waiting after {} s; the missing results may still come: {} results{}",
                        args.wait_secs,
                        print::program(),
                        if args.json { " --json" } else { "" }
                    );
                    eprintln!("{}", progress.tally.summary());
                    return Ok(ExitCode::from(progress.tally.exit_code()));
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                // An ordered consumer recreates itself; a hiccup is not the end.
                Some(Err(error)) => {
                    tracing::debug!(%error, "results stream hiccup");
                    continue;
                }
                None => bail!("the results stream ended before every result came"),
            };
            let Ok(result) = serde_json::from_slice::<JobResult>(&message.payload) else {
                continue;
            };
            // Counted once per job, even if a redelivery republished it.
            if !wanted.contains(result.job_id.as_str()) || !answered.insert(result.job_id.clone()) {
                continue;
            }
            show(&mut progress, &result);
        }
        progress.finish(duplicates.len());
        eprintln!("{}", progress.tally.summary());
        Ok(ExitCode::from(progress.tally.exit_code()))
    })
}

/// An ordered view of the results stream (all of it, or one job's).
async fn result_stream(
    js: &Context,
    job: Option<&str>,
    only_new: bool,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
    let stream = js.get_stream(streams::RESULTS).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: match job {
                Some(id) => format!("results.*.{id}"),
                None => "results.>".to_string(),
            },
            deliver_policy: if only_new {
                DeliverPolicy::New
            } else {
                DeliverPolicy::All
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

pub fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let output = Output::new(args.json);
    runtime()?.block_on(async move {
        let (_client, js) = match connect(&args.nats).await {
            Ok(connected) => connected,
            Err(error) => {
                eprintln!("error: {error:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let pending = js.get_stream(streams::RESULTS).await?.info().await?.state.messages;
        let mut messages = result_stream(&js, args.job.as_deref(), false).await?;
        let mut seen = 0u64;
        let stdout = std::io::stdout();
        loop {
            if !args.follow && seen >= pending {
                break;
            }
            let next = if args.follow {
                messages.next().await
            } else {
                match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let Some(message) = next else { break };
            let message = message?;
            seen += 1;
            let mut out = stdout.lock();
            writeln!(out, "{}", output.payload(&message.payload))?;
            out.flush()?;
        }
        if seen == 0 {
            match &args.job {
                Some(id) => eprintln!("no result for job {id} (yet)"),
                None => eprintln!(
                    "no results yet; publish a job with `{} submit --url URL`",
                    print::program()
                ),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn dead_letters(js: &Context) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let stream = js.get_stream(streams::DLQ).await?;
    let count = stream.clone().info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "dlq.>".to_string(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut letters = Vec::new();
    while (letters.len() as u64) < count {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await else {
            break;
        };
        let message = message?;
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        if let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) {
            letters.push((sequence, letter));
        }
    }
    Ok(letters)
}

pub fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        match command {
            DlqCommand::List { nats, json } => {
                let (_client, js) = match connect(&nats).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        return Ok(ExitCode::from(2));
                    }
                };
                let letters = dead_letters(&js).await?;
                if letters.is_empty() {
                    eprintln!("the dead-letter queue is empty");
                }
                for (_, letter) in letters {
                    if json {
                        println!("{}", serde_json::to_string(&letter)?);
                        continue;
                    }
                    println!(
                        "{}  {}  {} attempt(s)  {}: {}",
                        letter.failed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        letter.job_id,
                        letter.attempts,
                        letter.last_error.code,
                        letter.last_error.message
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Replay { nats, id } => {
                let (_client, js) = match connect(&nats).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        return Ok(ExitCode::from(2));
                    }
                };
                let letters = dead_letters(&js).await?;
                let Some((sequence, letter)) = letters.into_iter().rev().find(|(_, l)| l.job_id == id) else {
                    bail!(
                        "no dead letter for job {id}; `{} dlq list` shows the ones there are",
                        print::program()
                    );
                };
                let payload = serde_json::to_vec(&letter.job)?;
                let job = clawgress_workers::parse_job(&payload, |_| true).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut headers = async_nats::HeaderMap::new();
                // A fresh message id: the original is inside the dedup window.
                headers.insert("Nats-Msg-Id", format!("{id}-replay-{sequence}").as_str());
                js.publish_with_headers(
                    streams::job_subject(job.kind(), job.priority()),
                    headers,
                    payload.into(),
                )
                .await?
                .await?;
                js.get_stream(streams::DLQ).await?.delete_message(sequence).await?;
                println!("job {id} published again; its dead letter is removed");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

#[cfg(test)]
mod tests;
