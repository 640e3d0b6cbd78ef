use chrono::{TimeZone, Utc};
use http::{HeaderMap, HeaderValue, Method};

use super::api::Route;
use super::auth::{AdminTokens, AuthFailure, Role};
use super::export::{parse_query, parse_when};
use super::formats;

fn digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn tokens() -> AdminTokens {
    let text = format!(
        "tokens:\n  - name: vera\n    role: viewer\n    token_sha256: \"{}\"\n  - name: mia\n    role: maintainer\n    token_sha256: \"{}\"\n",
        digest("v"),
        digest("m")
    );
    AdminTokens::parse(&text, "tokens.yaml").unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

#[test]
fn roles_include_the_ones_below_them() {
    let t = tokens();
    assert_eq!(t.authorize(&bearer("v"), Role::Viewer).unwrap().name, "vera");
    assert_eq!(
        t.authorize(&bearer("v"), Role::Operator),
        Err(AuthFailure::Forbidden {
            needed: Role::Operator,
            has: Role::Viewer,
            name: "vera".into()
        })
    );
    assert_eq!(t.authorize(&bearer("m"), Role::Operator).unwrap().name, "mia");
    assert_eq!(t.authorize(&bearer("x"), Role::Viewer), Err(AuthFailure::Unknown));
    assert_eq!(t.authorize(&HeaderMap::new(), Role::Viewer), Err(AuthFailure::Missing));
    let mut basic = HeaderMap::new();
    basic.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Basic bTpt"));
    assert_eq!(t.authorize(&basic, Role::Viewer), Err(AuthFailure::Missing));
    assert_eq!(
        AdminTokens::default().authorize(&bearer("m"), Role::Viewer),
        Err(AuthFailure::NotConfigured)
    );
}

#[test]
fn broken_tokens_files_name_the_line_and_never_echo_a_token() {
    let bad_role = AdminTokens::parse(
        "tokens:\n  - name: a\n    role: admin\n    token_sha256: \"00\"\n",
        "t.yaml",
    )
    .unwrap_err();
    assert!(bad_role.starts_with("t.yaml:3:"), "{bad_role}");
    let pasted = AdminTokens::parse(
        "tokens:\n  - name: a\n    role: viewer\n    token_sha256: \"my-secret-token\"\n",
        "t.yaml",
    )
    .unwrap_err();
    assert!(
        pasted.contains("t.yaml:4:") && pasted.contains("15 characters"),
        "{pasted}"
    );
    assert!(!pasted.contains("my-secret-token"));
    let unknown = AdminTokens::parse("tokens: []\nextra: 1\n", "t.yaml").unwrap_err();
    assert!(unknown.contains("extra"), "{unknown}");
    let twice = format!(
        "tokens:\n  - name: a\n    role: viewer\n    token_sha256: \"{d}\"\n  - name: b\n    role: viewer\n    token_sha256: \"{d}\"\n",
        d = digest("same")
    );
    assert!(
        AdminTokens::parse(&twice, "t.yaml")
            .unwrap_err()
            .contains("already used by 'a'")
    );
}

#[test]
fn routes_are_matched_exactly() {
    assert_eq!(Route::parse(&Method::GET, "/v1/allowlist"), Some(Route::ListAllowlist));
    assert_eq!(Route::parse(&Method::GET, "/v1/allowlist/"), Some(Route::ListAllowlist));
    assert_eq!(
        Route::parse(&Method::POST, "/v1/requests/req-1/approve"),
        Some(Route::Approve("req-1".into()))
    );
    assert_eq!(Route::parse(&Method::POST, "/v1/allowlist"), None);
    assert_eq!(Route::parse(&Method::GET, "/v1/emergency-block"), None);
    assert_eq!(Route::parse(&Method::POST, "/v1/requests/a/b/approve"), None);
}

#[test]
fn export_times_are_absolute_or_relative() {
    let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    assert_eq!(
        parse_when("1 hour ago", now).ok(),
        Some(now - chrono::Duration::hours(1))
    );
    assert_eq!(parse_when("30m", now).ok(), Some(now - chrono::Duration::minutes(30)));
    assert_eq!(
        parse_when("2 days ago", now).ok(),
        Some(now - chrono::Duration::days(2))
    );
    assert_eq!(
        parse_when("2026-11-23T10:00:00+01:00", now).ok(),
        Some(Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap())
    );
    assert!(parse_when("yesterday", now).is_err());
    assert!(parse_when("5 fortnights ago", now).is_err());
    assert!(parse_when("99999999999999 days ago", now).is_err());
    let query = parse_query("from=1%20hour%20ago&limit=5&format=json", now)
        .ok()
        .unwrap();
    assert_eq!(query.limit, 5);
    assert_eq!(query.from, Some(now - chrono::Duration::hours(1)));
    assert_eq!(
        parse_query("format=csv", now).ok().map(|q| q.format),
        Some(formats::Format::Csv)
    );
    assert!(parse_query("format=xml", now).is_err());
    assert!(parse_query("limit=0", now).is_err());
    assert!(parse_query("colour=red", now).is_err());
}

#[test]
fn fuzzed_tokens_files_and_queries_never_panic() {
    let mut rng = crate::testing::Rng::new(0x000A_D314);
    let seed_file = format!(
        "tokens:\n  - name: a\n    role: viewer\n    token_sha256: \"{}\"\n",
        digest("t")
    );
    let seed_query = "from=2026-11-23T10%3A00%3A00Z&to=1h&limit=10&format=json";
    let now = Utc::now();
    for _ in 0..3000 {
        let mut file = seed_file.clone().into_bytes();
        let mut query = seed_query.as_bytes().to_vec();
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(file.len());
            file[at] = rng.byte();
            let at = rng.below(query.len());
            query[at] = rng.byte();
        }
        let _ = AdminTokens::parse(&String::from_utf8_lossy(&file), "fuzz.yaml");
        let _ = parse_query(&String::from_utf8_lossy(&query), now);
    }
}

/// An audit trail of `n` requests, one a second from `start`, each taking
/// `i % 7` seconds, written in the order they finished; agents and hosts
/// alternate.
fn trail(n: i64, start: chrono::DateTime<Utc>) -> (tempfile::NamedTempFile, Vec<(chrono::DateTime<Utc>, String)>) {
    let mut lines: Vec<(chrono::DateTime<Utc>, chrono::DateTime<Utc>, String)> = (0..n)
        .map(|i| {
            let at = start + chrono::Duration::seconds(i);
            let latency = (i % 7) * 1000;
            let line = serde_json::json!({
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "type": "egress_request", "request_id": format!("r-{i}"),
                "agent_id": if i % 2 == 0 { "even" } else { "odd" },
                "request": {"method": "GET", "domain": if i % 3 == 0 { "A.test" } else { "b.test" }},
                "decision": if i % 5 == 0 { "deny" } else { "allow" },
                "latency_ms": latency,
            });
            (at + chrono::Duration::milliseconds(latency), at, line.to_string())
        })
        .collect();
    lines.sort_by_key(|(finished, _, _)| *finished);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for (_, _, line) in &lines {
        use std::io::Write;
        writeln!(file, "{line}").unwrap();
    }
    (file, lines.into_iter().map(|(_, at, line)| (at, line)).collect())
}

#[test]
fn an_export_from_a_time_finds_every_later_record_without_reading_the_whole_trail() {
    let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
    let (file, lines) = trail(20_000, start);
    for from_second in [0, 1, 9_999, 19_990, 19_999, 25_000] {
        let from = start + chrono::Duration::seconds(from_second);
        let query = super::export::ExportQuery {
            from: Some(from),
            to: None,
            limit: 100_000,
            agent: None,
            domain: None,
            decision: None,
            format: formats::Format::Jsonl,
        };
        let (out, truncated) = super::export::scan(file.path(), &query).unwrap();
        let want: Vec<&str> = lines
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, line)| line.as_str())
            .collect();
        let got: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
        assert_eq!(got, want, "from {from_second}");
        assert!(!truncated);
    }
    // The search lands near the end for a recent `from`: the trail is
    // about 4 MB, the read starts within the last minute's lines.
    let mut handle = std::fs::File::open(file.path()).unwrap();
    let size = handle.metadata().unwrap().len();
    let offset = super::export::seek_finished_at(&mut handle, start + chrono::Duration::seconds(19_900)).unwrap();
    assert!(offset > size - 200 * 1024, "started at {offset} of {size}");
}

#[test]
fn an_export_filters_by_agent_domain_and_decision() {
    let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
    let (file, _) = trail(300, start);
    let now = Utc::now();
    let query = parse_query("agent=even&domain=a.TEST&decision=deny&limit=1000", now)
        .ok()
        .unwrap();
    let (out, _) = super::export::scan(file.path(), &query).unwrap();
    let got: Vec<serde_json::Value> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Even, a multiple of 3 and of 5: a multiple of 30.
    assert_eq!(got.len(), 10);
    for line in &got {
        let id: i64 = line["request_id"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(id % 30, 0, "{line}");
    }
    assert!(parse_query("decision=maybe", now).is_err());
}

#[test]
fn exports_render_as_json_lines_one_array_or_csv() {
    let lines = b"{\"timestamp\":\"t\",\"type\":\"egress_denied\",\"agent_id\":\"a,b\",\"request\":{\"domain\":\"x.test\"},\"reason\":\"=cmd\"}\nnot json\n{\"type\":\"admin_action\",\"actor\":\"mia\"}\n";
    assert_eq!(formats::render(lines, formats::Format::Jsonl), lines.to_vec());
    let array: serde_json::Value = serde_json::from_slice(&formats::render(lines, formats::Format::Json)).unwrap();
    assert_eq!(
        array.as_array().map(Vec::len),
        Some(2),
        "the line that is not JSON is left out"
    );
    assert_eq!(array[0]["request"]["domain"], "x.test");
    let empty: serde_json::Value = serde_json::from_slice(&formats::render(b"", formats::Format::Json)).unwrap();
    assert_eq!(empty, serde_json::json!([]));
    let csv = String::from_utf8(formats::render(lines, formats::Format::Csv)).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].starts_with("timestamp,type,request_id,agent_id,"));
    assert!(rows[1].contains("\"a,b\""), "{}", rows[1]);
    assert!(rows[1].contains(",x.test,"), "{}", rows[1]);
    assert!(rows[1].contains(",'=cmd,"), "a formula is defused: {}", rows[1]);
    assert!(rows[2].contains(",mia,"), "{}", rows[2]);
}
