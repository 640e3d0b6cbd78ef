use chrono::TimeZone;
use clawgress_scheduler::result::{FetchSummary, JobResult, ResultError, ResultStatus};
use clawgress_workers::job::JobKind;

use super::*;

fn result(status: ResultStatus) -> JobResult {
    let mut result = JobResult::finished("job-1", JobKind::Scrape, status, 1, Instant::now());
    // Nanoseconds, as the scheduler stamps them: never shown to people.
    result.finished_at =
        chrono::Utc.with_ymd_and_hms(2026, 12, 6, 3, 28, 45).unwrap() + chrono::Duration::nanoseconds(834_390_784);
    result.duration_ms = 8;
    result
}

fn error(code: &str, message: &str) -> ResultError {
    ResultError {
        code: code.to_string(),
        message: message.to_string(),
        field: None,
        hint: None,
        reason: None,
        policy_id: None,
    }
}

#[test]
fn an_ok_result_shows_status_fetch_request_and_fields() {
    let mut ok = result(ResultStatus::Ok);
    ok.fetch = Some(FetchSummary {
        tier: "http".to_string(),
        status: 200,
        final_url: "http://localhost:3002/".to_string(),
        hops: vec!["http://localhost:3002/".to_string()],
        request_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
    });
    ok.data.insert("title".to_string(), "Hello\n   world".into());
    ok.data.insert("items".to_string(), serde_json::json!(["a", "b"]));
    ok.data.insert("missing".to_string(), serde_json::Value::Null);
    let text = human(&ok, Some("http://localhost:3002/"), false);
    assert_eq!(
        text,
        "ok       job-1  http://localhost:3002/\n\
         \x20        200 via http in 8 ms, 1 attempt, 2026-12-06 03:28:45 UTC\n\
         \x20        request 4bf92f3577b34da6a3ce929d0e0e4736\n\
         \x20        items: [\"a\",\"b\"]\n\
         \x20        missing: (nothing matched)\n\
         \x20        title: Hello world"
    );
    assert!(!text.contains("834"), "no nanoseconds: {text}");
    // A redirect shows where the page really came from.
    ok.fetch.as_mut().unwrap().final_url = "http://localhost:3002/home".to_string();
    assert!(
        human(&ok, Some("http://localhost:3002/"), false)
            .starts_with("ok       job-1  http://localhost:3002/ -> http://localhost:3002/home\n")
    );
    // Colour only wraps the status word.
    assert!(human(&ok, None, true).starts_with("\x1b[32mok      \x1b[0m job-1"));
}

#[test]
fn refusals_say_why_and_what_to_do() {
    let mut denied = result(ResultStatus::Denied);
    denied.error = Some(ResultError {
        reason: Some("domain_not_in_allowlist".to_string()),
        policy_id: Some("default_deny".to_string()),
        ..error("denied", "denied by the gateway")
    });
    let text = human(&denied, Some("http://example.com/"), false);
    assert!(text.starts_with("denied   job-1  http://example.com/\n"), "{text}");
    assert!(
        text.contains("denied by the gateway: domain_not_in_allowlist (policy default_deny); never retried"),
        "{text}"
    );

    let mut invalid = result(ResultStatus::Invalid);
    invalid.error = Some(ResultError {
        field: Some("fetch".to_string()),
        hint: Some("start the scheduler with --steel URL".to_string()),
        ..error(
            "validation",
            "fetch: this worker has no Steel Browser server configured",
        )
    });
    let text = human(&invalid, None, false);
    assert!(
        text.contains("fetch: this worker has no Steel Browser server configured"),
        "{text}"
    );
    assert!(text.contains("fix: start the scheduler with --steel URL"), "{text}");

    let mut failed = result(ResultStatus::Failed);
    failed.attempts = 3;
    failed.error = Some(error("upstream_status", "the upstream answered 503"));
    let text = human(&failed, None, false);
    assert!(text.contains("8 ms, 3 attempts, 2026-12-06 03:28:45 UTC"), "{text}");
    assert!(text.contains("upstream_status: the upstream answered 503"), "{text}");
    assert!(text.contains("clawgress dlq replay job-1"), "{text}");
}

#[test]
fn json_output_is_the_result_line_itself() {
    let ok = result(ResultStatus::Ok);
    let line = Output::new(true).result(&ok, Some("http://x/"));
    assert_eq!(line, serde_json::to_string(&ok).unwrap());
    // Bytes that are not a result pass through untouched.
    assert_eq!(Output::new(false).payload(b"{not json"), "{not json");
    let payload = serde_json::to_vec(&ok).unwrap();
    assert!(Output::new(false).payload(&payload).starts_with("ok "));
}

#[test]
fn long_values_are_cut_and_durations_read_naturally() {
    let long = "x".repeat(500);
    let shown = value_text(&serde_json::Value::String(long));
    assert!(shown.starts_with(&"x".repeat(MAX_VALUE_CHARS)) && shown.ends_with("(--json prints all of it)"));
    assert_eq!(duration(8), "8 ms");
    assert_eq!(duration(1_250), "1.2 s");
    assert_eq!(duration(125_000), "2 min 5 s");
}

#[test]
fn the_worst_outcome_sets_the_exit_code() {
    let tally = |ok, denied, invalid, failed, missing| Tally {
        ok,
        denied,
        invalid,
        failed,
        missing,
    };
    assert_eq!(tally(3, 0, 0, 0, 0).exit_code(), 0);
    assert_eq!(tally(0, 0, 1, 0, 0).exit_code(), 4);
    assert_eq!(tally(1, 1, 1, 0, 0).exit_code(), 3, "a denial outranks an invalid job");
    assert_eq!(tally(1, 1, 1, 1, 0).exit_code(), 1, "a failure outranks everything");
    assert_eq!(tally(1, 1, 0, 0, 1).exit_code(), 1, "so does a missing result");
    let summary = tally(1, 1, 0, 1, 0).summary();
    assert!(
        summary.starts_with("3 jobs: 1 ok, 1 denied, 0 invalid, 1 failed (exit 1)"),
        "{summary}"
    );
    assert!(summary.contains("clawgress dlq list"), "{summary}");
    let mut counted = Tally::default();
    for status in [
        ResultStatus::Ok,
        ResultStatus::Denied,
        ResultStatus::Failed,
        ResultStatus::Invalid,
    ] {
        counted.add(status);
    }
    assert_eq!(counted, tally(1, 1, 1, 1, 0));
    assert_eq!(counted.answered(), 4);
}

#[test]
fn the_exit_codes_are_documented_in_help() {
    use clap::CommandFactory;
    let mut command = crate::Cli::command();
    let help = command
        .find_subcommand_mut("submit")
        .expect("submit")
        .render_long_help()
        .to_string();
    for code in [
        "0  every job ok",
        "1  a job failed",
        "2  nothing was published",
        "3  a job was denied",
        "4  a job was answered invalid",
    ] {
        assert!(help.contains(code), "{code} missing from:\n{help}");
    }
    assert!(help.contains("--wait-for h1"), "{help}");
}
