//! The console tests' gateway (holding the store, with role tokens and
//! budgets), API calls by token or by console session, and the steps every
//! browser test takes.

use super::chrome::{click, eval, type_into, until};
use crate::support::raw::RawResponse;
use crate::*;

pub const VIEWER: &str = "console-viewer-token";
pub const OPERATOR: &str = "console-operator-token";
pub const MAINTAINER: &str = "console-maintainer-token";

fn tokens_yaml() -> String {
    format!(
        "tokens:\n  - {{name: vera, role: viewer, token_sha256: \"{}\"}}\n  - {{name: otto, role: operator, token_sha256: \"{}\"}}\n  - {{name: mia, role: maintainer, token_sha256: \"{}\"}}\n",
        sha256_hex(VIEWER),
        sha256_hex(OPERATOR),
        sha256_hex(MAINTAINER),
    )
}

pub struct Site {
    pub origin: upstream::Origin,
    _dns: TestDns,
    pub policy: String,
    pub dir: tempfile::TempDir,
    pub gw: GatewayProc,
}

pub async fn site(env: &[(&str, &str)]) -> Site {
    let origin = upstream::origin().await;
    let dns = TestDns::start(&[]).await;
    // Budgets, so the quotas page has scopes to show.
    let policy = policy_yaml(origin.addr.port(), 1, 1, dns.addr, "enforce")
        + "budgets:\n  pricing:\n    gpt-4o: {input_per_mtok: 2.5, output_per_mtok: 10}\n  rules:\n    - {scope: agent, window: day, tokens: 2000000, mode: hard-stop}\n    - {scope: team, window: month, cost_usd: 500, mode: soft-stop}\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let tokens = dir.path().join("tokens.yaml").display().to_string();
    let gw = GatewayProc::start_with_env(&policy, &agents_yaml(), &["--admin-tokens", &tokens, "--database"], env);
    Site {
        origin,
        _dns: dns,
        policy,
        dir,
        gw,
    }
}

impl Site {
    pub fn console(&self) -> String {
        format!("http://{}/console", self.gw.admin)
    }

    pub fn get(&self, host: &str, auth: (&str, &str)) -> String {
        get(&format!("http://{host}:{}/hello", self.origin.addr.port()), Some(auth))
    }

    pub async fn status(&self, host: &str, auth: (&str, &str)) -> u16 {
        raw::send(self.gw.proxy, &self.get(host, auth), b"").await.status
    }

    /// Polls the proxy until `host` answers `status` for `auth`.
    pub async fn until_status(&self, host: &str, auth: (&str, &str), status: u16) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.status(host, auth).await;
            if got == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{host}: never {status}, last {got}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn policy_with_unlisted(&self) -> String {
        self.policy.replacen(
            "allowlist:\n  local_sites:\n",
            &format!(
                "allowlist:\n  local_sites:\n    - domain: \"unlisted.test\"\n      ports: [{}]\n      protocols: [http]\n",
                self.origin.addr.port()
            ),
            1,
        )
    }

    /// A `/v1/` call with a bearer token, or with a console cookie (and
    /// CSRF token, and Origin) when `token` starts with `cookie:`.
    pub async fn api(&self, method: &str, path: &str, auth: &Auth<'_>, body: &serde_json::Value) -> RawResponse {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}",
            self.gw.admin,
            body.len()
        );
        match auth {
            Auth::Bearer(token) => head.push_str(&format!("\r\nAuthorization: Bearer {token}")),
            Auth::Session { cookie, csrf, origin } => {
                head.push_str(&format!("\r\nCookie: clawgress_console={cookie}"));
                if let Some(csrf) = csrf {
                    head.push_str(&format!("\r\nX-Clawgress-CSRF: {csrf}"));
                }
                if let Some(origin) = origin {
                    head.push_str(&format!("\r\nOrigin: {origin}"));
                }
            }
        }
        raw::send(self.gw.admin, &head, body.as_bytes()).await
    }
}

pub enum Auth<'a> {
    Bearer(&'a str),
    Session {
        cookie: &'a str,
        csrf: Option<&'a str>,
        origin: Option<&'a str>,
    },
}

pub fn text(response: &RawResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

/// Logs in through the page's form and waits for the agents page.
pub async fn log_in(page: &chromiumoxide::Page, token: &str) {
    until(page, "() => !document.getElementById('login').hidden").await;
    type_into(page, "#login-token", token).await;
    click(page, "#login-submit").await;
    until(page, "() => document.body.dataset.loaded === 'agents'").await;
}

pub async fn open_tab(page: &chromiumoxide::Page, tab: &str) {
    let _: bool = eval(page, "() => { document.body.dataset.loaded = ''; return true; }").await;
    click(page, &format!("nav a[data-tab={tab}]")).await;
    until(page, &format!("() => document.body.dataset.loaded === '{tab}'")).await;
}

/// The session cookie as the browser holds it (CDP sees HttpOnly cookies).
pub async fn session_cookie(page: &chromiumoxide::Page) -> chromiumoxide::cdp::browser_protocol::network::Cookie {
    page.get_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == "clawgress_console")
        .expect("a session cookie")
}
