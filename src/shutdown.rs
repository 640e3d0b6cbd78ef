//! Bounded shutdown for every long-running command (`gateway`, `up`,
//! `scheduler`, `dns`, `analyze`).
//!
//! The first SIGINT or SIGTERM asks the process to stop: it drains what is
//! in flight, within `--drain-timeout`. The process then exits whatever its
//! dependencies do: a watchdog on a thread of its own ends it when the
//! timeout passes (exit code 1), and a second signal ends it at once (exit
//! code 130). The watchdog has its own runtime, so a stuck main runtime (a
//! flush to a dead NATS server, a blocking join) cannot swallow a signal.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Exit code after a second signal: 128 + SIGINT, what a shell reports for Ctrl-C.
pub const EXIT_SECOND_SIGNAL: i32 = 130;
/// Exit code when the drain did not finish within `--drain-timeout`.
pub const EXIT_DRAIN_TIMEOUT: i32 = 1;

/// `--drain-timeout`, shared by every long-running command.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DrainArgs {
    /// How long the process may take to stop after SIGINT or SIGTERM: work
    /// in flight drains, then it exits whatever NATS, upstreams or clients
    /// do (exit code 1 if the time ran out). A second signal exits at once
    /// (exit code 130). E.g. 30s, 1500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `30s`, `1500ms`, `2m`, or plain seconds (`30`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; write e.g. 30s, 1500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("'{text}': unknown unit '{unit}'; use ms, s or m")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("'{text}' is out of range (0 to 24 hours)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The signal watchdog of this process. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
    drain: Duration,
}

impl Shutdown {
    /// Takes over SIGINT and SIGTERM for the rest of the process's life.
    pub fn install(drain: Duration) -> anyhow::Result<Shutdown> {
        let (tx, requested) = watch::channel(false);
        // Registered here, before anything runs, so no signal falls between
        // the default action and our handler.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (mut interrupt, mut terminate) = runtime.block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
        })?;
        std::thread::Builder::new()
            .name("shutdown-watchdog".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let first = tokio::select! {
                        _ = interrupt.recv() => "SIGINT",
                        _ = terminate.recv() => "SIGTERM",
                    };
                    eprintln!(
                        "{first}: stopping within {} (--drain-timeout); a second signal exits at once",
                        human(drain)
                    );
                    let _ = tx.send(true);
                    let code = tokio::select! {
                        _ = interrupt.recv() => {
                            eprintln!("second signal: exiting now without finishing the drain (exit code {EXIT_SECOND_SIGNAL})");
                            EXIT_SECOND_SIGNAL
                        }
                        _ = terminate.recv() => {
                            eprintln!("second signal: exiting now without finishing the drain (exit code {EXIT_SECOND_SIGNAL})");
                            EXIT_SECOND_SIGNAL
                        }
                        () = tokio::time::sleep(drain) => {
                            eprintln!(
                                "error: still stopping {} after {first} (--drain-timeout): exiting with work unfinished \
                                 (exit code {EXIT_DRAIN_TIMEOUT}); the log above says what was still running",
                                human(drain)
                            );
                            EXIT_DRAIN_TIMEOUT
                        }
                    };
                    last_rites();
                    std::process::exit(code);
                });
            })?;
        Ok(Shutdown { requested, drain })
    }

    /// Resolves at the first SIGINT or SIGTERM (at once if one came already).
    pub async fn requested(&self) {
        let mut requested = self.requested.clone();
        let _ = requested.wait_for(|stop| *stop).await;
    }

    /// `--drain-timeout`.
    pub fn drain(&self) -> Duration {
        self.drain
    }

    /// A watch that turns true at the first signal.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.requested.clone()
    }
}

/// What must not outlive the process even when it exits without unwinding:
/// browsers (their parent-death signal covers a crash too; this also removes
/// their profile directories).
fn last_rites() {
    clawgress_workers::chromium::kill_all_browsers();
}

/// Runs a command's main future on a multi-threaded runtime and shuts the
/// runtime down without waiting for blocking tasks that are stuck (a
/// runtime's drop waits for them forever).
pub fn block_on<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let output = runtime.block_on(future);
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(output)
}

fn human(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("999999m").unwrap_err().contains("out of range"));
    }
}
