use std::time::{Duration, Instant};

use clawgress_scheduler::result::{FetchSummary, JobResult, ResultStatus};
use serde_json::json;

use crate::config::{Checks, expand_env, parse_duration};
use crate::rate_limit::{Refusal, backoff, judge_refusal, peak_excess};
use crate::report::{self, Case, Outcome};

const SHIPPED: &str = include_str!("../checks.yaml");

fn shipped() -> Checks {
    let text = SHIPPED.to_string();
    Checks::parse(&text, "checks.yaml").expect("the shipped checks parse")
}

#[test]
fn the_shipped_file_has_all_three_checks() {
    let checks = shipped();
    let scrape = checks.scrape.as_ref().unwrap();
    let fetches: Vec<&str> = scrape.targets.iter().map(|t| t.value.fetch.as_str()).collect();
    assert_eq!(fetches, ["http", "chromium", "http"]);
    assert_eq!(checks.illegal_destination.as_ref().unwrap().urls.len(), 2);
    assert_eq!(checks.rate_limit.as_ref().unwrap().requests, 100);
}

#[test]
fn errors_name_the_line_and_what_to_do() {
    let typo = SHIPPED.replace("  audit_timeout: 10s", "  audit_timout: 10s");
    let error = Checks::parse(&typo, "checks.yaml").unwrap_err().to_string();
    let line = SHIPPED.lines().position(|l| l.contains("audit_timeout")).unwrap() + 1;
    assert!(error.starts_with(&format!("checks.yaml:{line}:")), "{error}");
    assert!(error.contains("audit_timout"), "{error}");

    let no_expect = SHIPPED.replace(
        "      expect:\n        - selector: \"#app .rendered\"\n          text: rendered by JavaScript\n",
        "      expect: []\n",
    );
    let error = Checks::parse(&no_expect, "checks.yaml").unwrap_err().to_string();
    assert!(error.contains("expects nothing"), "{error}");

    let bad_fetch = SHIPPED.replacen("fetch: chromium", "fetch: firefox", 1);
    let error = Checks::parse(&bad_fetch, "checks.yaml").unwrap_err().to_string();
    let line = SHIPPED
        .lines()
        .position(|l| l.contains("name: JavaScript-rendered"))
        .unwrap()
        + 1;
    assert!(
        error.contains(&format!("checks.yaml:{line}: fetch 'firefox'")),
        "{error}"
    );

    let bad_window = SHIPPED.replace("window: 1m", "window: 7m");
    assert!(
        Checks::parse(&bad_window, "c")
            .unwrap_err()
            .to_string()
            .contains("window")
    );
    let bad_duration = SHIPPED.replace("deadline: 180s", "deadline: soon");
    assert!(
        Checks::parse(&bad_duration, "c")
            .unwrap_err()
            .to_string()
            .contains("'soon' is not a duration")
    );
}

#[test]
fn environment_variables_are_expanded_line_by_line() {
    let lookup = |name: &str| (name == "POD_IP").then(|| "10.1.2.3".to_string());
    assert_eq!(
        expand_env("a: ${POD_IP}:80\nb: 1\n", "f", lookup).unwrap(),
        "a: 10.1.2.3:80\nb: 1\n"
    );
    let error = expand_env("a: 1\nb: ${NOPE}\n", "f", lookup).unwrap_err().to_string();
    assert!(
        error.starts_with("f:2: the environment variable NOPE is not set"),
        "{error}"
    );
    assert!(expand_env("a: ${OPEN\n", "f", lookup).is_err());
    assert_eq!(expand_env("a: ${NOPE:-x:1}\n", "f", lookup).unwrap(), "a: x:1\n");
    assert_eq!(expand_env("a: ${POD_IP:-x}\n", "f", lookup).unwrap(), "a: 10.1.2.3\n");
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("2 weeks"), None);
}

fn result(status: ResultStatus, data: serde_json::Value) -> JobResult {
    let mut result = JobResult::finished(
        "synthetic-1",
        clawgress_workers::job::JobKind::Scrape,
        status,
        1,
        Instant::now(),
    );
    result.fetch = Some(FetchSummary {
        tier: "http".into(),
        status: 200,
        final_url: "http://localhost:3011/static".into(),
        hops: Vec::new(),
        request_id: Some("req-1".into()),
    });
    result.data = serde_json::from_value(data).unwrap();
    result
}

#[test]
fn scrape_results_are_judged_element_by_element() {
    let checks = shipped();
    let target = &checks.scrape.as_ref().unwrap().targets[0].value;
    let good = result(
        ResultStatus::Ok,
        json!({"expect_0": "Clawgress synthetic check", "expect_1": ["alpha", "beta", "gamma"]}),
    );
    let (outcome, details) = crate::scrape::judge(target, &good);
    assert_eq!(outcome, Outcome::Passed, "{details:?}");
    assert!(details[0].contains("req-1"), "{details:?}");

    let short = result(
        ResultStatus::Ok,
        json!({"expect_0": "Clawgress synthetic check", "expect_1": ["alpha"]}),
    );
    let (outcome, _) = crate::scrape::judge(target, &short);
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("1 found, at least 3")),
        "{outcome:?}"
    );

    let wrong_text = result(
        ResultStatus::Ok,
        json!({"expect_0": "Welcome", "expect_1": ["a", "b", "c"]}),
    );
    let (outcome, _) = crate::scrape::judge(target, &wrong_text);
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("\"Welcome\"")),
        "{outcome:?}"
    );

    let missing = result(ResultStatus::Ok, json!({"expect_0": null, "expect_1": []}));
    assert!(matches!(crate::scrape::judge(target, &missing).0, Outcome::Failed(_)));

    let denied = result(ResultStatus::Denied, json!({}));
    let (outcome, _) = crate::scrape::judge(target, &denied);
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("denied")),
        "{outcome:?}"
    );
}

#[test]
fn jobs_wait_for_the_first_element_in_browsers_only() {
    let checks = shipped();
    let targets = &checks.scrape.as_ref().unwrap().targets;
    let rendered = crate::scrape::job_for(&targets[1].value, "scraper-001", "j1".into(), Duration::from_secs(60));
    let clawgress_workers::job::Job::Scrape(job) = &rendered else {
        panic!()
    };
    assert_eq!(job.wait_for.as_deref(), Some("#app .rendered"));
    let api = crate::scrape::job_for(&targets[2].value, "scraper-001", "j2".into(), Duration::from_secs(60));
    let clawgress_workers::job::Job::Scrape(job) = &api else {
        panic!()
    };
    assert_eq!(job.wait_for, None);
    assert!(job.extract["expect_1"].list);
    // The jobs the shipped file makes are valid jobs.
    for (i, target) in targets.iter().enumerate() {
        let job = crate::scrape::job_for(&target.value, "scraper-001", format!("j{i}"), Duration::from_secs(60));
        clawgress_workers::parse_job(&job.to_json(), |_| true).unwrap();
    }
}

fn refusal(header: Option<u64>, body: serde_json::Value) -> Refusal {
    Refusal {
        retry_after_header: header,
        body,
    }
}

#[test]
fn a_429_must_say_when_to_come_back_and_which_limit_refused() {
    let checks = shipped();
    let check = checks.rate_limit.as_ref().unwrap();
    let body = |retry: u64, limit: u64| {
        json!({"error": "rate_limit_exceeded", "limit": limit, "window": "1m", "retry_after": retry,
               "agent_id": "scraper-001", "domain": "localhost"})
    };
    assert!(judge_refusal(&refusal(Some(1), body(1, 100)), check).is_ok());
    assert!(
        judge_refusal(&refusal(None, body(1, 100)), check)
            .unwrap_err()
            .contains("no Retry-After")
    );
    assert!(
        judge_refusal(&refusal(Some(2), body(1, 100)), check)
            .unwrap_err()
            .contains("body says 1")
    );
    assert!(judge_refusal(&refusal(Some(0), body(0, 100)), check).is_err());
    // 100/min frees a slot every 0.6 s: waiting 5 s is wrong.
    assert!(
        judge_refusal(&refusal(Some(5), body(5, 100)), check)
            .unwrap_err()
            .contains("every 0.60 s")
    );
    assert!(
        judge_refusal(&refusal(Some(1), body(1, 1000)), check)
            .unwrap_err()
            .contains("1000/1m")
    );
    // The concurrency cap's 429 names no rate; it only has to say when.
    let containment =
        json!({"reason": "max_concurrent_requests_exceeded", "retry_after": 1, "agent_id": "scraper-001"});
    assert!(judge_refusal(&refusal(Some(1), containment.clone()), check).is_ok());
    assert!(judge_refusal(&refusal(None, containment), check).is_err());
}

#[test]
fn backoff_grows_but_never_undercuts_retry_after() {
    let checks = shipped();
    let check = checks.rate_limit.as_ref().unwrap();
    for attempt in 1..12 {
        let delay = backoff(check, attempt, Duration::from_secs(1));
        assert!(delay >= Duration::from_secs(1), "{delay:?}");
        assert!(delay <= check.backoff.max.mul_f64(1.25), "{delay:?}");
    }
    let late = backoff(check, 8, Duration::ZERO);
    assert!(late >= check.backoff.max, "{late:?}");
    let first = backoff(check, 1, Duration::ZERO);
    assert!(first < Duration::from_millis(320), "{first:?}");
}

#[test]
fn the_rate_bound_counts_every_stretch_of_arrivals() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    // Burst 2 at one per second: 2 at once, then one a second, is fine.
    let paced: Vec<Instant> = [0, 0, 1000, 2000, 3000].into_iter().map(at).collect();
    let peak = peak_excess(&paced, 1.0, 2);
    assert!(peak.count as f64 <= peak.allowed + 1e-9, "{peak:?}");
    // Four within 100 ms is two over.
    let burst: Vec<Instant> = [0, 30, 60, 90, 2000].into_iter().map(at).collect();
    let peak = peak_excess(&burst, 1.0, 2);
    assert_eq!(peak.count, 4);
    assert!(peak.count as f64 - peak.allowed > 1.5, "{peak:?}");
}

#[test]
fn junit_is_escaped_and_counts_failures() {
    let cases = vec![
        Case {
            check: "scrape",
            name: "a <b> & \"c\"".into(),
            duration: Duration::from_millis(1500),
            outcome: Outcome::Passed,
            details: vec!["h1 → \"x\"".into()],
        },
        Case {
            check: "rate_limit",
            name: "burst".into(),
            duration: Duration::from_secs(2),
            outcome: Outcome::Failed("no 429 \u{1} at all".into()),
            details: Vec::new(),
        },
        Case {
            check: "rate_limit",
            name: "other".into(),
            duration: Duration::ZERO,
            outcome: Outcome::Error("NATS down".into()),
            details: Vec::new(),
        },
    ];
    let xml = report::junit(&cases, Duration::from_secs(4), chrono::Utc::now());
    assert!(
        xml.contains(r#"<testsuites name="clawgress-synthetic" tests="3" failures="1" errors="1""#),
        "{xml}"
    );
    assert!(xml.contains(r#"name="a &lt;b&gt; &amp; &quot;c&quot;""#), "{xml}");
    assert!(xml.contains("<failure message=\"no 429 \u{FFFD} at all\">"), "{xml}");
    assert!(xml.contains("<error message=\"NATS down\">"), "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), 2);
    let text = report::summary(&cases, Duration::from_secs(4));
    assert!(text.contains("PASS  scrape / a <b>"), "{text}");
    assert!(
        text.ends_with("1 passed, 1 failed, 1 could not run, in 4.0 s\n"),
        "{text}"
    );
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Broken check files (characters dropped, doubled, replaced) are refused
/// with a message that names the file; none makes the parser panic.
#[test]
fn mutated_check_files_are_refused_cleanly() {
    let pieces: [&str; 10] = [":", "-", " ", "\n", "{", "[", "'", "${", "\t", "&a"];
    let mut state = 0x2545_f491_4f6c_dd1d;
    let mut refused = 0;
    for _ in 0..2_000 {
        let mut text = SHIPPED.to_string();
        for _ in 0..(xorshift(&mut state) % 3 + 1) {
            let mut at = (xorshift(&mut state) as usize) % text.len();
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let piece = pieces[(xorshift(&mut state) as usize) % pieces.len()];
            if xorshift(&mut state).is_multiple_of(2) {
                text.insert_str(at, piece);
            } else {
                let mut end = (at + (xorshift(&mut state) as usize % 8)).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(at..end, "");
            }
        }
        if let Err(error) = Checks::parse(&text, "checks.yaml") {
            refused += 1;
            assert!(error.to_string().starts_with("checks.yaml"), "{error}");
        }
    }
    assert!(refused > 500, "only {refused} of 2000 broken files were refused");
}

/// A gateway that is not there makes the checks "could not run", with the
/// address, not a pass and not a crash.
#[tokio::test]
async fn a_dead_gateway_is_reported_as_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checks.yaml");
    std::fs::write(
        &file,
        "gateway:\n  proxy: http://127.0.0.1:9\n  admin: http://127.0.0.1:9\nagent:\n  id: scraper-001\n  key_file: key\n\
         illegal_destination:\n  listen: 127.0.0.1:0\n  urls: [http://127.0.0.1:9/x]\n\
         rate_limit:\n  url: http://127.0.0.1:9/limited\n  requests: 3\n  expect: {limit: 60, window: 1m, burst: 1}\n  \
         backoff: {initial: 10ms, max: 20ms}\n",
    )
    .unwrap();
    // key_file is relative to the check file.
    std::fs::write(dir.path().join("key"), "k\n").unwrap();
    let outcome = crate::run(&crate::Options {
        file: file.clone(),
        serve_fixtures: false,
        only: Vec::new(),
    })
    .await
    .unwrap();
    assert!(!outcome.passed());
    assert_eq!(outcome.cases.len(), 2);
    for case in &outcome.cases {
        assert!(
            matches!(&case.outcome, Outcome::Error(why) if why.contains("127.0.0.1:9")),
            "{case:?}"
        );
    }
    assert!(outcome.summary().contains("0 passed, 0 failed, 2 could not run"));

    // A check name that does not exist is a usage error.
    let wrong = crate::run(&crate::Options {
        file,
        serve_fixtures: false,
        only: vec!["scrap".into()],
    })
    .await;
    assert!(wrong.is_err_and(|e| e.to_string().contains("--only scrap")));
}

/// The fixture sites are what the shipped file says they are: the rendered
/// page has nothing to find without a browser, the others have everything.
#[test]
fn the_rendered_fixture_needs_javascript_and_the_others_do_not() {
    use crate::fixtures::{API_BODY, RENDERED_PAGE, STATIC_PAGE};
    let checks = shipped();
    let targets = &checks.scrape.as_ref().unwrap().targets;
    let extract_for = |index: usize, body: &str| {
        let clawgress_workers::job::Job::Scrape(job) = crate::scrape::job_for(
            &targets[index].value,
            "scraper-001",
            format!("f{index}"),
            Duration::from_secs(5),
        ) else {
            panic!()
        };
        clawgress_workers::extract::extract(body, &job.extract)
    };
    let found = extract_for(1, RENDERED_PAGE);
    assert!(
        found.values["expect_0"].is_null(),
        "plain HTML already has it: {found:?}"
    );
    for (index, body) in [(0, STATIC_PAGE), (2, API_BODY)] {
        let mut result = result(ResultStatus::Ok, json!({}));
        result.data = extract_for(index, body).values;
        let (outcome, details) = crate::scrape::judge(&targets[index].value, &result);
        assert_eq!(outcome, Outcome::Passed, "{details:?}");
    }
}
