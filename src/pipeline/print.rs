//! How the pipeline's commands show what happened: a short block per result
//! for people, the result's JSON line for machines (`--json`), `submit`'s
//! progress bar, and the exit code a batch of results earns.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clawgress_scheduler::result::{JobResult, ResultStatus};
use serde_json::Value;

/// `submit`'s exit codes, for `--help` and the README. Scripts branch on
/// them, so each outcome a caller reacts to differently has its own code.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every job ok (without --wait: every job published)
  1  a job failed (it is in the dead-letter queue), or a result did not come within --wait-secs
  2  nothing was published: a bad flag, a malformed jobs file, or NATS unreachable
  3  a job was denied by the gateway's policy (and none failed)
  4  a job was answered invalid by the workers, e.g. no Chromium for --fetch chromium (none failed or denied)";

/// Longest data value shown in full; the rest is cut (`--json` has it all).
const MAX_VALUE_CHARS: usize = 160;

/// Where results go: human blocks or JSON lines on standard output.
#[derive(Clone, Copy)]
pub struct Output {
    json: bool,
    color: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output {
            json,
            // The usual conventions: colour only for a person at a terminal.
            color: !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// Human blocks for standard error (the `up --demo` result).
    pub fn to_stderr() -> Output {
        Output {
            json: false,
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// One result as printed: its JSON line, or the human block. `url` is the
    /// job's URL when the caller knows it (a denied job's result has none).
    pub fn result(&self, result: &JobResult, url: Option<&str>) -> String {
        if self.json {
            return serde_json::to_string(result).unwrap_or_default();
        }
        human(result, url, self.color)
    }

    /// A stored result's bytes: parsed and shown, or passed on as they are
    /// when they are not a result this version understands.
    pub fn payload(&self, payload: &[u8]) -> String {
        match serde_json::from_slice::<JobResult>(payload) {
            Ok(result) if !self.json => human(&result, None, self.color),
            _ => String::from_utf8_lossy(payload).into_owned(),
        }
    }
}

/// A result for people: status, job and URL, then how it was fetched, then
/// what was extracted or what went wrong and what to do about it.
///
/// ```text
/// ok       cli-5b17fc9c811c  http://localhost:3002/
///          200 via http in 8 ms, 1 attempt, 2026-12-06 03:28:45 UTC
///          request 97885b2814287c61d3e0a41c2f5b9e07
///          title: Hello from the Clawgress demo site
/// ```
pub fn human(result: &JobResult, url: Option<&str>, color: bool) -> String {
    const INDENT: &str = "         ";
    let status = result.status.as_str();
    let mut out = String::new();
    if color {
        let _ = write!(out, "\x1b[{}m{status:<8}\x1b[0m", status_color(result.status));
    } else {
        let _ = write!(out, "{status:<8}");
    }
    out.push(' ');
    out.push_str(&result.job_id);
    let fetched_url = result.fetch.as_ref().map(|f| f.final_url.as_str());
    if let Some(url) = url.or(fetched_url) {
        let _ = write!(out, "  {url}");
    }
    if let (Some(asked), Some(landed)) = (url, fetched_url)
        && asked != landed
    {
        let _ = write!(out, " -> {landed}");
    }
    out.push('\n');
    let attempts = match result.attempts {
        1 => "1 attempt".to_string(),
        n => format!("{n} attempts"),
    };
    let when = result.finished_at.format("%Y-%m-%d %H:%M:%S UTC");
    let took = duration(result.duration_ms);
    match &result.fetch {
        Some(fetch) => {
            let _ = writeln!(
                out,
                "{INDENT}{} via {} in {took}, {attempts}, {when}",
                fetch.status, fetch.tier
            );
            if let Some(id) = &fetch.request_id {
                let _ = writeln!(out, "{INDENT}request {id}");
            }
        }
        None => {
            let _ = writeln!(out, "{INDENT}{took}, {attempts}, {when}");
        }
    }
    if let Some(error) = &result.error {
        match result.status {
            ResultStatus::Denied => {
                let reason = error.reason.as_deref().unwrap_or(&error.code);
                let _ = write!(out, "{INDENT}denied by the gateway: {reason}");
                if let Some(policy) = &error.policy_id {
                    let _ = write!(out, " (policy {policy})");
                }
                let _ = writeln!(out, "; never retried");
            }
            ResultStatus::Invalid => {
                let _ = writeln!(out, "{INDENT}{}", error.message);
                if let Some(hint) = &error.hint {
                    let _ = writeln!(out, "{INDENT}fix: {hint}");
                }
            }
            ResultStatus::Failed => {
                let _ = writeln!(out, "{INDENT}{}: {}", error.code, error.message);
                let _ = writeln!(
                    out,
                    "{INDENT}in the dead-letter queue: `clawgress dlq replay {}` runs it again",
                    result.job_id
                );
            }
            ResultStatus::Ok => {
                let _ = writeln!(out, "{INDENT}{}: {}", error.code, error.message);
            }
        }
    }
    for (name, value) in &result.data {
        let _ = writeln!(out, "{INDENT}{name}: {}", value_text(value));
    }
    if let Some(png) = &result.screenshot {
        let _ = writeln!(
            out,
            "{INDENT}screenshot: PNG, {} KB base64 (printed with --json)",
            png.len().div_ceil(1024)
        );
    }
    // The block ends without a newline; the caller's println adds it.
    out.truncate(out.trim_end().len());
    out
}

fn status_color(status: ResultStatus) -> u8 {
    match status {
        ResultStatus::Ok => 32,
        ResultStatus::Denied => 33,
        ResultStatus::Failed => 31,
        ResultStatus::Invalid => 35,
    }
}

/// Milliseconds as people read them: `8 ms`, `1.2 s`, `2 min 5 s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// An extracted value on one line: text as it is (whitespace runs made one
/// space), anything else as compact JSON, cut at [`MAX_VALUE_CHARS`].
fn value_text(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.split_whitespace().collect::<Vec<_>>().join(" "),
        Value::Null => "(nothing matched)".to_string(),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((cut, _)) => format!("{}… (--json prints all of it)", &text[..cut]),
        None => text,
    }
}

/// Results counted by status, and the exit code they earn (see [`EXIT_CODES`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub denied: usize,
    pub invalid: usize,
    /// Failed after their attempts; the scheduler dead-letters every one.
    pub failed: usize,
    /// Published but not answered within `--wait-secs`.
    pub missing: usize,
}

impl Tally {
    pub fn add(&mut self, status: ResultStatus) {
        match status {
            ResultStatus::Ok => self.ok += 1,
            ResultStatus::Denied => self.denied += 1,
            ResultStatus::Invalid => self.invalid += 1,
            ResultStatus::Failed => self.failed += 1,
        }
    }

    pub fn answered(&self) -> usize {
        self.ok + self.denied + self.invalid + self.failed
    }

    /// The worst outcome wins: a failure needs someone to look, a denial
    /// needs the policy (or the job) changed, an invalid job needs fixing.
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 || self.missing > 0 {
            1
        } else if self.denied > 0 {
            3
        } else if self.invalid > 0 {
            4
        } else {
            0
        }
    }

    /// The closing line: every count, and what to do about the bad ones.
    pub fn summary(&self) -> String {
        let total = self.answered() + self.missing;
        let mut line = format!(
            "{total} {}: {} ok, {} denied, {} invalid, {} failed",
            if total == 1 { "job" } else { "jobs" },
            self.ok,
            self.denied,
            self.invalid,
            self.failed
        );
        if self.missing > 0 {
            let _ = write!(line, ", {} without a result", self.missing);
        }
        let _ = write!(line, " (exit {})", self.exit_code());
        if self.failed > 0 {
            line.push_str(
                "\n  failed jobs are in the dead-letter queue: `clawgress dlq list`, `clawgress dlq replay ID`",
            );
        }
        if self.denied > 0 {
            line.push_str(
                "\n  denied jobs are never retried: allow the destination in the policy, or submit as an agent whose role may reach it",
            );
        }
        if self.invalid > 0 {
            line.push_str("\n  invalid jobs name the field and the fix in each result");
        }
        line
    }
}

/// How to run this very binary from the user's shell, for the commands we
/// print: `clawgress` when that name on PATH is this binary, else its path
/// (relative to the current directory when below it, e.g.
/// `target/release/clawgress` after `make up`), so a pasted command works.
pub fn program() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "clawgress".to_string();
    };
    let exe = exe.canonicalize().unwrap_or(exe);
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("clawgress"))
        .find(|candidate| candidate.is_file())
        .and_then(|found| found.canonicalize().ok());
    if on_path.as_deref() == Some(exe.as_path()) {
        return "clawgress".to_string();
    }
    match std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(PathBuf::from))
    {
        Some(relative) => relative.display().to_string(),
        None => exe.display().to_string(),
    }
}

/// Whether any `clawgress` is on PATH (else `make install` is worth a word).
pub fn on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("clawgress").is_file()))
}

/// A usage or setup error before anything was published: said once, with
/// exit code 2.
pub fn nothing_published(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    eprintln!("nothing was published");
    ExitCode::from(2)
}

/// `submit`'s progress on standard error: a bar redrawn in place on a
/// terminal (at most ten times a second), one summary line otherwise.
pub struct Progress {
    total: usize,
    waiting: bool,
    pub published: usize,
    pub tally: Tally,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    pub fn new(total: usize, waiting: bool) -> Progress {
        Progress {
            total,
            waiting,
            published: 0,
            tally: Tally::default(),
            started: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Counts a result and prints it to standard output, with the bar
    /// cleared first and drawn again after, so the two never share a line.
    pub fn print(&mut self, printed: &str, status: ResultStatus) {
        self.tally.add(status);
        self.clear();
        println!("{printed}");
        self.show(true);
    }

    fn line(&self) -> String {
        const WIDTH: usize = 24;
        let finished = if self.waiting {
            self.tally.answered()
        } else {
            self.published
        };
        let filled = (finished * WIDTH).checked_div(self.total).unwrap_or(WIDTH).min(WIDTH);
        let rate = finished as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut line = format!(
            "[{}{}] {finished}/{}  published {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.total,
            self.published
        );
        if self.waiting {
            let t = &self.tally;
            let _ = write!(
                line,
                "  ok {}  denied {}  invalid {}  failed {}",
                t.ok, t.denied, t.invalid, t.failed
            );
        }
        let _ = write!(line, "  {rate:.1} jobs/s");
        line
    }

    /// Erases the bar, if one is drawn, so the next line starts clean.
    fn clear(&self) {
        if self.terminal && self.drawn.is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    pub fn show(&mut self, force: bool) {
        if !self.terminal {
            return;
        }
        let due = self.drawn.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if force || due {
            self.drawn = Some(Instant::now());
            eprint!("\r\x1b[2K{}", self.line());
        }
    }

    /// The last state of the bar on a line of its own.
    pub fn finish(&mut self, duplicates: usize) {
        if self.terminal {
            self.show(true);
            eprintln!();
        } else {
            eprintln!("{}", self.line());
        }
        if duplicates > 0 {
            eprintln!("{duplicates} duplicate job id(s) were not published again");
        }
    }
}

#[cfg(test)]
mod tests;
