//! The web console (issue 17) driven in a real headless Chromium: log in with
//! an admin token, create an agent and use its key through the proxy,
//! rotate it (the old key stops after its grace), upload, diff, activate and
//! roll back policy versions, approve a request and use the domain, search
//! the audit trail; a viewer sees no change buttons and is refused even when
//! it calls the API itself with its session; changes without the CSRF token
//! or from another origin are refused; an expired session goes back to the
//! login with a message. Screenshots of each page are kept (see
//! `chrome::screenshot`).

mod chrome;
mod site;

use chrome::{Chrome, click, eval, flash, screenshot, set_value, type_into, until};
use site::{Auth, MAINTAINER, OPERATOR, VIEWER, log_in, open_tab, session_cookie, site, text};

use super::*;

#[tokio::test]
async fn the_console_runs_agents_policies_approvals_and_audit_search() {
    let Some(executable) = chrome::executable() else { return };
    let site = site(&[]).await;
    let shots = site.dir.path();
    let browser = Chrome::launch(&executable).await;
    let page = browser.page(&site.console()).await;
    screenshot(&page, shots, "login").await;

    // A wrong token is refused with a message; the right one logs in.
    type_into(&page, "#login-token", "not-a-token").await;
    click(&page, "#login-submit").await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes('not accepted')",
    )
    .await;
    log_in(&page, MAINTAINER).await;
    let cookie = session_cookie(&page).await;
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(
        format!("{:?}", cookie.same_site),
        "Some(Strict)",
        "the cookie is SameSite=Strict"
    );
    assert!(
        !cookie.session && cookie.expires > 0.0,
        "the cookie has an expiry: {cookie:?}"
    );
    site.gw
        .wait_audit(|l| l["type"] == "admin_action" && l["action"] == "console_login" && l["actor"] == "mia")
        .await;

    // Create an agent: the key is shown once and works through the proxy.
    for (field, value) in [
        ("#agent-id", "console-001"),
        ("#agent-team", "data"),
        ("#agent-project", "crawl"),
        ("#agent-environment", "dev"),
        ("#agent-role", "scraper"),
    ] {
        type_into(&page, field, value).await;
    }
    click(&page, "#agent-create-submit").await;
    until(&page, "() => !!document.getElementById('agent-key-value')").await;
    let key: String = eval(&page, "() => document.getElementById('agent-key-value').textContent").await;
    assert!(key.starts_with("cgk_"), "{key}");
    until(
        &page,
        "() => !!document.querySelector('tr[data-agent=\"console-001\"]')",
    )
    .await;
    screenshot(&page, shots, "agents").await;
    site.until_status("site.test", ("console-001", &key), 200).await;

    // Rotate with a 2 s grace: both keys work, then only the new one.
    click(&page, "#rotate-console-001").await;
    type_into(&page, "#rotate-grace", "2s").await;
    click(&page, "#rotate-confirm").await;
    let rotated_at = std::time::Instant::now();
    until(
        &page,
        &format!("() => document.getElementById('agent-key-value')?.textContent !== {key:?}"),
    )
    .await;
    let new_key: String = eval(&page, "() => document.getElementById('agent-key-value').textContent").await;
    assert!(new_key.starts_with("cgk_") && new_key != key);
    site.until_status("site.test", ("console-001", &new_key), 200).await;
    assert_eq!(
        site.status("site.test", ("console-001", &key)).await,
        200,
        "within the grace"
    );
    tokio::time::sleep((rotated_at + Duration::from_millis(2300)).saturating_duration_since(std::time::Instant::now()))
        .await;
    assert_eq!(
        site.status("site.test", ("console-001", &key)).await,
        407,
        "after the grace"
    );
    assert_eq!(site.status("site.test", ("console-001", &new_key)).await, 200);

    // Someone else changes the agent: the console's stale version is refused
    // with a reload offered, and nothing is changed.
    let changed = site
        .api(
            "PATCH",
            "/v1/agents/console-001",
            &Auth::Bearer(OPERATOR),
            &serde_json::json!({"version": 2, "environment": "staging"}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", text(&changed));
    click(&page, "#disable-console-001").await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes('Someone else changed this first')",
    )
    .await;
    assert_eq!(
        site.status("site.test", ("console-001", &new_key)).await,
        200,
        "not disabled"
    );
    click(&page, "#flash-action").await;
    until(
        &page,
        "() => document.querySelector('tr[data-agent=\"console-001\"]').innerText.includes('staging')",
    )
    .await;
    click(&page, "#disable-console-001").await;
    until(&page, "() => !!document.getElementById('enable-console-001')").await;
    site.until_status("site.test", ("console-001", &new_key), 407).await;
    click(&page, "#enable-console-001").await;
    until(&page, "() => !!document.getElementById('disable-console-001')").await;
    let agent = ("console-001", new_key.as_str());
    site.until_status("site.test", agent, 200).await;

    // Policies: an invalid upload names file:line:column; two good ones.
    open_tab(&page, "policies").await;
    let broken = site
        .policy
        .replacen("  default_action: deny\n", "  default_action: maybe\n", 1);
    type_into(&page, "#policy-name", "broken.yaml").await;
    set_value(&page, "#policy-body", &broken).await;
    click(&page, "#policy-upload-submit").await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes('broken.yaml:2:19')",
    )
    .await;
    for (name, body, version) in [
        ("base.yaml", site.policy.clone(), 1),
        ("wider.yaml", site.policy_with_unlisted(), 2),
    ] {
        type_into(&page, "#policy-name", name).await;
        set_value(&page, "#policy-body", &body).await;
        click(&page, "#policy-upload-submit").await;
        until(
            &page,
            &format!("() => document.getElementById('flash').innerText.includes('Uploaded as version {version}')"),
        )
        .await;
    }
    assert_eq!(
        site.status("unlisted.test", agent).await,
        403,
        "uploaded is not in force"
    );
    click(&page, "#activate-1").await;
    until(
        &page,
        "() => !!document.getElementById('activate-2')  && !document.getElementById('activate-1')",
    )
    .await;
    click(&page, "#activate-2").await;
    until(
        &page,
        "() => !!document.getElementById('activate-1') && !document.getElementById('activate-2')",
    )
    .await;
    site.until_status("unlisted.test", agent, 200).await;
    click(&page, "#diff-1").await;
    until(
        &page,
        "() => document.getElementById('policy-diff-text').textContent.includes('unlisted.test')",
    )
    .await;
    screenshot(&page, shots, "policies").await;
    // Roll back: the domain stops.
    click(&page, "#policy-rollback").await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes('version 1 is active')",
    )
    .await;
    site.until_status("unlisted.test", agent, 403).await;

    // A request filed by a viewer, approved in the console: the domain works.
    let filed = site
        .api(
            "POST",
            "/v1/requests",
            &Auth::Bearer(VIEWER),
            &serde_json::json!({"domain": "unlisted.test", "reason": "docs for the crawl", "ports": [site.origin.addr.port()], "duration": "1h"}),
        )
        .await;
    assert_eq!(filed.status, 201, "{}", text(&filed));
    let request = filed.json()["id"].as_str().unwrap().to_string();
    open_tab(&page, "approvals").await;
    until(&page, &format!("() => !!document.getElementById('approve-{request}')")).await;
    type_into(&page, &format!("#reason-{request}"), "needed for the crawl").await;
    screenshot(&page, shots, "approvals").await;
    click(&page, &format!("#approve-{request}")).await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes('approved')",
    )
    .await;
    site.until_status("unlisted.test", agent, 200).await;
    let approved = site
        .gw
        .wait_audit(|l| l["action"] == "approve" && l["details"]["outcome"] == "ok")
        .await;
    assert_eq!(approved["actor"], "mia");
    assert_eq!(approved["details"]["decision_reason"], "needed for the crawl");

    open_tab(&page, "quotas").await;
    screenshot(&page, shots, "quotas").await;

    // Audit search: the agent's records, one opened with its chain position.
    open_tab(&page, "audit").await;
    type_into(&page, "#audit-agent", "console-001").await;
    let _: bool = eval(&page, "() => { document.body.dataset.loaded = ''; return true; }").await;
    click(&page, "#audit-search").await;
    until(&page, "() => document.body.dataset.loaded === 'audit'").await;
    let rows: Vec<String> = eval(
        &page,
        "() => [...document.querySelectorAll('#audit-table tbody tr')].map(r => r.innerText)",
    )
    .await;
    assert!(
        rows.len() >= 4 && rows.iter().all(|r| r.contains("console-001")),
        "{rows:?}"
    );
    click(&page, "#audit-table tbody tr").await;
    until(&page, "() => !document.getElementById('audit-record').hidden").await;
    let hash: String = eval(&page, "() => document.getElementById('audit-hash').textContent").await;
    assert_eq!(hash.len(), 64, "{hash}");
    screenshot(&page, shots, "audit").await;

    // Log out: the cookie no longer opens anything.
    click(&page, "#logout").await;
    until(&page, "() => !document.getElementById('login').hidden").await;
    let after = site
        .api(
            "GET",
            "/v1/agents",
            &Auth::Session {
                cookie: &cookie.value,
                csrf: None,
                origin: None,
            },
            &serde_json::Value::Null,
        )
        .await;
    assert_eq!((after.status, after.reason().as_str()), (401, "session_expired"));
    site.gw
        .wait_audit(|l| l["action"] == "console_logout" && l["details"]["outcome"] == "ok")
        .await;
    for action in ["agent_create", "agent_rotate", "agent_update", "policy_rollback"] {
        let line = site
            .gw
            .wait_audit(|l| l["action"] == action && l["details"]["outcome"] == "ok" && l["actor"] == "mia")
            .await;
        assert_eq!(line["type"], "admin_action");
    }
    // The SLO dashboard the console links to, for the README.
    let dashboard = browser.page(&format!("http://{}/dashboard", site.gw.admin)).await;
    until(&dashboard, "() => document.body.innerText.includes('site.test')").await;
    screenshot(&dashboard, shots, "dashboard").await;
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_sees_no_change_buttons_and_its_session_cannot_change_anything() {
    let Some(executable) = chrome::executable() else { return };
    let site = site(&[]).await;
    let created = site
        .api(
            "POST",
            "/v1/agents",
            &Auth::Bearer(OPERATOR),
            &serde_json::json!({"id": "held-001", "team": "data", "project": "crawl", "environment": "dev", "role": "scraper"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", text(&created));
    let filed = site
        .api(
            "POST",
            "/v1/requests",
            &Auth::Bearer(VIEWER),
            &serde_json::json!({"domain": "unlisted.test", "reason": "r", "ports": [site.origin.addr.port()]}),
        )
        .await;
    let request = filed.json()["id"].as_str().unwrap().to_string();

    let browser = Chrome::launch(&executable).await;
    let page = browser.page(&site.console()).await;
    log_in(&page, VIEWER).await;
    until(&page, "() => !!document.querySelector('tr[data-agent=\"held-001\"]')").await;
    screenshot(&page, site.dir.path(), "viewer").await;
    let visible_buttons = "() => [...document.querySelectorAll('main button, main form')].filter(b => b.offsetParent !== null && !b.closest('#audit')).map(b => b.id || b.textContent)";
    let buttons: Vec<String> = eval(&page, visible_buttons).await;
    assert!(buttons.is_empty(), "a viewer sees {buttons:?} on the agents page");
    open_tab(&page, "policies").await;
    let buttons: Vec<String> = eval(&page, visible_buttons).await;
    assert!(buttons.is_empty(), "a viewer sees {buttons:?} on the policies page");
    open_tab(&page, "approvals").await;
    until(
        &page,
        &format!("() => !!document.querySelector('tr[data-request=\"{request}\"]')"),
    )
    .await;
    let buttons: Vec<String> = eval(&page, visible_buttons).await;
    assert!(buttons.is_empty(), "a viewer sees {buttons:?} on the approvals page");

    // The viewer's own session, calling the API from the page: refused.
    let status: u16 = eval(
        &page,
        &format!(
            "() => fetch('/v1/requests/{request}/approve', {{method: 'POST', headers: {{'Content-Type': 'application/json', 'X-Clawgress-CSRF': state.me.csrf}}, body: '{{}}'}}).then(r => r.status)"
        ),
    )
    .await;
    assert_eq!(status, 403);
    // ... and from outside the browser, with its cookie and CSRF token.
    let cookie = session_cookie(&page).await.value;
    let csrf: String = eval(&page, "() => state.me.csrf").await;
    let origin = format!("http://{}", site.gw.admin);
    let session = Auth::Session {
        cookie: &cookie,
        csrf: Some(&csrf),
        origin: Some(&origin),
    };
    let agent =
        serde_json::json!({"id": "v-001", "team": "data", "project": "crawl", "environment": "dev", "role": "scraper"});
    for (method, path, body) in [
        ("POST", "/v1/agents".to_string(), agent.clone()),
        (
            "PATCH",
            "/v1/agents/held-001".to_string(),
            serde_json::json!({"version": 1, "disabled": true}),
        ),
        (
            "POST",
            "/v1/agents/held-001/rotate".to_string(),
            serde_json::json!({"version": 1}),
        ),
        ("POST", format!("/v1/requests/{request}/approve"), serde_json::json!({})),
        (
            "POST",
            "/v1/policies/rollback".to_string(),
            serde_json::json!({"version": 1}),
        ),
        (
            "POST",
            "/v1/allowlist/temporary".to_string(),
            serde_json::json!({"domain": "x.test", "duration": "1h", "reason": "r"}),
        ),
    ] {
        let refused = site.api(method, &path, &session, &body).await;
        assert_eq!(
            (refused.status, refused.reason().as_str()),
            (403, "role_not_allowed"),
            "{method} {path}"
        );
    }
    let listed = site.api("GET", "/v1/agents", &session, &serde_json::Value::Null).await;
    assert_eq!(listed.status, 200, "a viewer reads");
    let held = &listed.json()["agents"][0];
    assert_eq!(
        (held["version"].as_i64(), held["disabled"].as_bool()),
        (Some(1), Some(false))
    );
    site.gw
        .wait_audit(|l| l["action"] == "approve" && l["actor"] == "vera" && l["details"]["outcome"] == "refused")
        .await;
    browser.close().await;

    // CSRF: an operator's session without the token, or from another
    // origin, changes nothing; with both it works.
    let login = raw::send(
        site.gw.admin,
        &format!(
            "POST /console/login HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}",
            site.gw.admin,
            format!("{{\"token\": \"{OPERATOR}\"}}").len()
        ),
        format!("{{\"token\": \"{OPERATOR}\"}}").as_bytes(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", text(&login));
    let set_cookie = login.header("set-cookie").unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict") && set_cookie.contains("Max-Age=")
    );
    let cookie = set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("clawgress_console=")
        .to_string();
    assert_eq!(cookie.len(), 64, "256-bit session ids");
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let without = Auth::Session {
        cookie: &cookie,
        csrf: None,
        origin: Some(&origin),
    };
    let refused = site.api("POST", "/v1/agents", &without, &agent).await;
    assert_eq!((refused.status, refused.reason().as_str()), (403, "csrf_token_missing"));
    let wrong = Auth::Session {
        cookie: &cookie,
        csrf: Some("0000"),
        origin: Some(&origin),
    };
    assert_eq!(site.api("POST", "/v1/agents", &wrong, &agent).await.status, 403);
    let elsewhere = Auth::Session {
        cookie: &cookie,
        csrf: Some(&csrf),
        origin: Some("http://evil.example"),
    };
    let refused = site.api("POST", "/v1/agents", &elsewhere, &agent).await;
    assert_eq!((refused.status, refused.reason().as_str()), (403, "cross_origin"));
    let missing = site
        .api(
            "GET",
            "/v1/agents/v-001",
            &Auth::Bearer(OPERATOR),
            &serde_json::Value::Null,
        )
        .await;
    assert_eq!(missing.status, 404, "nothing was created: {}", text(&missing));
    let made = Auth::Session {
        cookie: &cookie,
        csrf: Some(&csrf),
        origin: Some(&origin),
    };
    let created = site.api("POST", "/v1/agents", &made, &agent).await;
    assert_eq!(created.status, 201, "{}", text(&created));
    let line = site
        .gw
        .wait_audit(|l| l["action"] == "agent_create" && l["details"]["agent_id"] == "v-001")
        .await;
    assert_eq!(line["actor"], "otto");
    site.gw
        .wait_audit(|l| l["action"] == "console_request" && l["details"]["error"] == "csrf_token_missing")
        .await;
}

#[tokio::test]
async fn stale_unknown_and_expired_get_a_clear_message() {
    let Some(executable) = chrome::executable() else { return };
    let site = site(&[("CLAWGRESS_CONSOLE_SESSION_SECS", "8")]).await;
    let created = site
        .api(
            "POST",
            "/v1/agents",
            &Auth::Bearer(OPERATOR),
            &serde_json::json!({"id": "gone-001", "team": "data", "project": "crawl", "environment": "dev", "role": "scraper"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", text(&created));
    let browser = Chrome::launch(&executable).await;
    let page = browser.page(&site.console()).await;
    log_in(&page, OPERATOR).await;
    until(&page, "() => !!document.getElementById('rotate-gone-001')").await;

    // Deleted by someone else: the console names the unknown agent.
    let deleted = site
        .api(
            "DELETE",
            "/v1/agents/gone-001?version=1",
            &Auth::Bearer(OPERATOR),
            &serde_json::Value::Null,
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", text(&deleted));
    click(&page, "#rotate-gone-001").await;
    click(&page, "#rotate-confirm").await;
    until(
        &page,
        "() => document.getElementById('flash').innerText.includes(\"no agent 'gone-001'\")",
    )
    .await;

    // The session outlives its lifetime: back to the login, with a message.
    tokio::time::sleep(Duration::from_secs(9)).await;
    click(&page, "nav a[data-tab=quotas]").await;
    until(&page, "() => !document.getElementById('login').hidden").await;
    let message = flash(&page).await;
    assert!(message.contains("session has expired"), "{message}");
    screenshot(&page, site.dir.path(), "expired").await;
    browser.close().await;
}
