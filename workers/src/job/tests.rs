use super::*;

fn parse(text: &str) -> Result<Job, JobError> {
    parse_job(text.as_bytes(), |agent| agent == "scraper-001")
}

fn field(text: &str) -> String {
    parse(text).unwrap_err().field
}

#[test]
fn a_full_scrape_job_parses_with_its_defaults() {
    let job = parse(
        r##"{"version": 1, "type": "scrape", "id": "job-1", "agent": "scraper-001",
            "url": "https://example.com/", "fetch": "chromium", "wait_for": "#app",
            "extract": {"title": "h1", "links": {"selector": "a", "take": "attr", "attr": "href", "list": true},
                        "body": {"selector": "main", "take": "html", "required": true}},
            "priority": "high", "retry": {"max_attempts": 5, "base_delay": "250ms"}, "timeout": "20s"}"##,
    )
    .unwrap();
    let Job::Scrape(scrape) = &job else {
        panic!("not a scrape job")
    };
    assert_eq!(scrape.method, "GET");
    assert_eq!(scrape.fetch, FetchMode::Chromium);
    assert_eq!(job.priority(), Priority::High);
    assert_eq!(job.retry().max_attempts, 5);
    assert_eq!(job.retry().base_delay, Duration::from_millis(250));
    assert_eq!(scrape.timeout, Duration::from_secs(20));
    assert_eq!(scrape.extract["title"].take, Take::Text);
    assert_eq!(scrape.extract["links"].take, Take::Attr("href".into()));
    assert!(scrape.extract["links"].list);
    assert!(scrape.extract["body"].required);
    // Round trip: what the scheduler republishes reads back the same.
    assert_eq!(parse_job(&job.to_json(), |_| true).unwrap(), job);
}

#[test]
fn every_error_names_its_field() {
    let base = r#""version": 1, "type": "scrape", "id": "j1", "agent": "scraper-001""#;
    assert_eq!(field(&format!(r#"{{{base}, "url": "ftp://x"}}"#)), "url");
    assert_eq!(field(&format!(r#"{{{base}}}"#)), "(job)");
    assert_eq!(
        field(&format!(
            r#"{{{base}, "url": "https://x/", "extract": {{"t": "h1["}}}}"#
        )),
        "extract.t.selector"
    );
    assert_eq!(
        field(&format!(
            r#"{{{base}, "url": "https://x/", "extract": {{"t": {{"selector": "a", "take": "attr"}}}}}}"#
        )),
        "extract.t.attr"
    );
    assert_eq!(
        field(&format!(r#"{{{base}, "url": "https://x/", "timeout": "2h"}}"#)),
        "timeout"
    );
    assert_eq!(
        field(&format!(r#"{{{base}, "url": "https://x/", "timeout": "soon"}}"#)),
        "timeout"
    );
    assert_eq!(
        field(&format!(
            r#"{{{base}, "url": "https://x/", "fetch": "http", "wait_for": "h1"}}"#
        )),
        "wait_for"
    );
    assert_eq!(
        field(&format!(
            r#"{{{base}, "url": "https://x/", "headers": {{"Proxy-Authorization": "x"}}}}"#
        )),
        "headers.Proxy-Authorization"
    );
    assert_eq!(field(&format!(r#"{{{base}, "url": "https://user:pw@x/"}}"#)), "url");
    assert_eq!(
        field(&format!(r#"{{{base}, "url": "https://x/", "colour": 1}}"#)),
        "colour"
    );
    assert_eq!(
        field(&format!(
            r#"{{{base}, "url": "https://x/", "retry": {{"max_attempts": 0}}}}"#
        )),
        "retry.max_attempts"
    );
    assert_eq!(
        field(&format!(r#"{{{base}, "url": "https://x/", "body": "x"}}"#)),
        "body"
    );
    assert_eq!(field(r#"{"version": 2, "type": "scrape"}"#), "version");
    assert_eq!(field(r#"{"type": "scrape"}"#), "version");
    assert_eq!(field(r#"{"version": 1, "type": "crawl"}"#), "type");
    assert_eq!(
        field(r#"{"version": 1, "type": "scrape", "id": "a.b", "agent": "scraper-001", "url": "https://x/"}"#),
        "id"
    );
    assert_eq!(field("not json"), "(job)");
    let unknown =
        parse(r#"{"version": 1, "type": "scrape", "id": "j9", "agent": "ghost", "url": "https://x/"}"#).unwrap_err();
    assert_eq!(unknown.field, "agent");
    assert_eq!(
        unknown.job_id.as_deref(),
        Some("j9"),
        "the answer can be routed to the job's results"
    );
    assert!(unknown.problem.contains("no credential"));
}

#[test]
fn agent_jobs_check_every_step() {
    let ok = parse(
        r##"{"version": 1, "type": "agent", "id": "a1", "agent": "scraper-001",
            "steps": [{"goto": "https://example.com/"}, {"fill": {"selector": "input[name=q]", "value": "rust"}},
                      {"click": "button"}, {"wait_for": "#results"}, {"extract": {"first": ".result"}},
                      {"screenshot": {}}, {"evaluate": "document.title"},
                      {"llm": {"provider": "openai", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}]}"##,
    )
    .unwrap();
    let Job::Agent(agent) = ok else { panic!() };
    assert_eq!(agent.steps.len(), 8);
    let step = |steps: &str| {
        field(&format!(
            r#"{{"version": 1, "type": "agent", "id": "a1", "agent": "scraper-001", "steps": {steps}}}"#
        ))
    };
    assert_eq!(step(r#"[{"goto": "https://x/"}, {"click": "a["}]"#), "steps[1].click");
    assert_eq!(step(r#"[{"click": "a"}]"#), "steps[0].(step)");
    assert_eq!(
        step(r#"[{"goto": "https://x/"}, {"llm": {"provider": "acme", "model": "m", "messages": []}}]"#),
        "steps[1].llm.provider"
    );
    assert_eq!(step("[]"), "steps");
    assert!(step(r#"[{"teleport": "x"}]"#).starts_with("steps"));
}

#[test]
fn fuzzed_jobs_never_panic() {
    let seed = br#"{"version": 1, "type": "scrape", "id": "j1", "agent": "scraper-001", "url": "https://example.com/a?b=c", "extract": {"t": {"selector": "h1 > a[href]", "take": "attr", "attr": "href"}}, "retry": {"max_attempts": 2, "base_delay": "1s"}}"#;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let mut bytes = seed.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = (next() & 0xff) as u8;
        }
        let _ = parse_job(&bytes, |_| true);
    }
}
