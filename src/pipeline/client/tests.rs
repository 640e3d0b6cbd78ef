use clap::Parser;

use super::*;

fn submit_args(args: &[&str]) -> SubmitArgs {
    let argv = ["clawgress", "submit"].iter().chain(args);
    match crate::Cli::try_parse_from(argv) {
        Ok(crate::Cli {
            command: crate::Command::Submit(args),
        }) => args,
        Ok(_) => unreachable!("parsed as another command"),
        Err(error) => panic!("{error}"),
    }
}

fn scrape(job: &Job) -> &ScrapeJob {
    match job {
        Job::Scrape(scrape) => scrape,
        Job::Agent(_) => panic!("not a scrape job"),
    }
}

#[test]
fn fetch_and_wait_for_build_the_job_a_browser_runs() {
    let url = ["--url", "http://localhost:3002/"];
    let job = |extra: &[&str]| {
        let args = submit_args(&[&url[..], extra].concat());
        jobs_to_submit(&args).map(|mut jobs| jobs.remove(0))
    };
    let plain = job(&[]).unwrap();
    assert_eq!(scrape(&plain).fetch, FetchMode::Http);
    assert_eq!(scrape(&plain).priority, Priority::Normal);
    for (flag, mode) in [
        ("chromium", FetchMode::Chromium),
        ("steel", FetchMode::Steel),
        ("auto", FetchMode::Auto),
    ] {
        let built = job(&["--fetch", flag, "--wait-for", "h1", "--select", "title=h1"]).unwrap();
        let built = scrape(&built);
        assert_eq!(built.fetch, mode, "--fetch {flag}");
        assert_eq!(built.wait_for.as_deref(), Some("h1"));
        assert_eq!(built.extract["title"].selector, "h1");
    }
    // --wait-for alone: auto, which runs a browser when a selector is awaited.
    assert_eq!(scrape(&job(&["--wait-for", "#app"]).unwrap()).fetch, FetchMode::Auto);
    let plain_wait = job(&["--fetch", "http", "--wait-for", "h1"]).unwrap_err().to_string();
    assert!(plain_wait.contains("--fetch chromium, steel or auto"), "{plain_wait}");
    let high = job(&["--priority", "high"]).unwrap();
    assert_eq!(scrape(&high).priority, Priority::High);
}

#[test]
fn bad_flags_are_named_with_the_fix() {
    let error = |args: &[&str]| match crate::Cli::try_parse_from(["clawgress", "submit"].iter().chain(args)) {
        Ok(_) => String::new(),
        Err(error) => {
            assert_eq!(error.exit_code(), 2, "clap's usage errors exit 2");
            error.to_string()
        }
    };
    let fetch = error(&["--url", "http://x/", "--fetch", "browser"]);
    assert!(
        fetch.contains("[possible values: http, chromium, steel, auto]"),
        "{fetch}"
    );
    let priority = error(&["--url", "http://x/", "--priority", "urgent"]);
    assert!(priority.contains("[possible values: high, normal, low]"), "{priority}");
    // Flags that only shape a --url job say so when given with a file.
    let select_with_file = error(&["jobs.jsonl", "--select", "t=h1"]);
    assert!(select_with_file.contains("cannot be used with"), "{select_with_file}");
    let select_alone = error(&["--select", "t=h1"]);
    assert!(select_alone.contains("--url <URL>"), "{select_alone}");

    let built = |args: &[&str]| jobs_to_submit(&submit_args(args)).unwrap_err().to_string();
    let select = built(&["--url", "http://x/", "--select", "title"]);
    assert!(select.contains("--select title: write NAME=CSS"), "{select}");
    let url = built(&["--url", "ftp://x/"]);
    assert!(url.starts_with("--url ftp://x/: "), "{url}");
    let nothing = built(&[]);
    assert!(nothing.contains("or --url URL"), "{nothing}");
}

#[test]
fn a_jobs_file_is_checked_whole_and_every_bad_line_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let good = r#"{"version": 1, "type": "scrape", "id": "a", "agent": "scraper-001", "url": "http://x/"}"#;
    std::fs::write(
        &file,
        format!("{good}\n{{not json\n\n{}\n", good.replace("http://x/", "ftp://x/")),
    )
    .unwrap();
    let path = file.display().to_string();
    let error = jobs_to_submit(&submit_args(&[&path])).unwrap_err().to_string();
    assert!(error.contains(&format!("{path}:2: (job): not valid JSON")), "{error}");
    assert!(error.contains(&format!("{path}:4: url:")), "{error}");
    assert!(!error.contains(":1:"), "{error}");

    std::fs::write(&file, "\n\n").unwrap();
    let empty = jobs_to_submit(&submit_args(&[&path])).unwrap_err().to_string();
    assert!(empty.contains("has no jobs"), "{empty}");
    let missing = jobs_to_submit(&submit_args(&["/nonexistent/jobs.jsonl"]))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot open the jobs file /nonexistent/jobs.jsonl"),
        "{missing}"
    );

    let many: Vec<String> = (0..15).map(|_| "{".to_string()).collect();
    std::fs::write(&file, many.join("\n")).unwrap();
    let error = jobs_to_submit(&submit_args(&[&path])).unwrap_err().to_string();
    assert!(error.contains("... and 5 more"), "{error}");
}
