use http::{HeaderMap, HeaderValue, header};

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

#[test]
fn the_session_cookie_is_found_among_others() {
    let h = headers(&[("cookie", "a=1; clawgress_console=abc123; b=2")]);
    assert_eq!(session_id(&h).as_deref(), Some("abc123"));
    assert_eq!(session_id(&headers(&[("cookie", "clawgress_console=")])), None);
    assert_eq!(session_id(&headers(&[("cookie", "other=x")])), None);
}

#[test]
fn the_csrf_token_must_match_exactly() {
    assert!(csrf_ok(&headers(&[(CSRF_HEADER, "token-1")]), "token-1"));
    assert!(!csrf_ok(&headers(&[(CSRF_HEADER, "token-2")]), "token-1"));
    assert!(!csrf_ok(&headers(&[(CSRF_HEADER, "token-")]), "token-1"));
    assert!(!csrf_ok(&HeaderMap::new(), "token-1"));
}

#[test]
fn changes_from_another_origin_are_refused() {
    let same = headers(&[("host", "127.0.0.1:9090"), ("origin", "http://127.0.0.1:9090")]);
    assert!(cross_origin(&same).is_none());
    // No Origin at all (curl, the CLI): the CSRF token still guards it.
    assert!(cross_origin(&headers(&[("host", "127.0.0.1:9090")])).is_none());
    let other = headers(&[("host", "127.0.0.1:9090"), ("origin", "http://evil.example")]);
    assert_eq!(cross_origin(&other).map(|p| p.code), Some("cross_origin"));
    let null = headers(&[("host", "127.0.0.1:9090"), ("origin", "null")]);
    assert!(cross_origin(&null).is_some());
    let site = headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]);
    assert!(cross_origin(&site).is_some());
}

#[test]
fn sessions_expire_after_their_lifetime_or_idle_time() {
    let actor = Actor {
        name: "vera".into(),
        role: Role::Viewer,
        teams: vec![],
    };
    let now = Instant::now();
    let fresh = Session {
        token: "t".into(),
        csrf: "c".into(),
        actor: actor.clone(),
        created: now,
        last_used: now,
    };
    assert!(!fresh.expired(now));
    assert!(fresh.expired(now + idle()));
    let old = Session {
        created: now,
        last_used: now + lifetime() - Duration::from_secs(1),
        ..fresh
    };
    assert!(old.expired(now + lifetime()));

    // An expired entry is dropped when looked up.
    let id = random_hex();
    assert_eq!(id.len(), 64, "256 random bits");
    SESSIONS.lock().unwrap().insert(
        id.clone(),
        Session {
            token: "t".into(),
            csrf: "c".into(),
            actor,
            created: now.checked_sub(lifetime()).unwrap_or(now),
            last_used: now,
        },
    );
    if now.checked_sub(lifetime()).is_some() {
        assert!(live_session(&id).is_none());
        assert!(!SESSIONS.lock().unwrap().contains_key(&id));
    }
}

#[test]
fn the_page_loads_nothing_inline_or_from_elsewhere() {
    assert!(CSP.starts_with("default-src 'none'"));
    assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
    assert!(!PAGE.contains("<script>") && !PAGE.contains("<style") && !PAGE.contains(" style="));
    assert!(!PAGE.contains(" on") || !PAGE.contains("onclick"));
    for text in [PAGE, SCRIPT, STYLE] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "an external reference"
        );
    }
    assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
    let response = asset(PAGE, "text/html");
    assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
}
