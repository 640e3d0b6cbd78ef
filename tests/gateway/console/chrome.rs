//! A headless Chromium for the console's tests, through chromiumoxide as
//! the workers use it: the real binary under `/usr/lib/chromium/` (Debian's
//! `/usr/bin/chromium` is a wrapper that does not exec, so killing it would
//! leave the browser behind), a fresh profile in a temporary directory, and
//! both gone when the test ends, also when it fails: the process is killed
//! on drop and the profile directory removed after it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::{Page, ScreenshotParams};
use futures_util::StreamExt as _;

/// The browser binary, or `None` (with a printed skip) when it is missing.
pub fn executable() -> Option<PathBuf> {
    for (wrapper, real) in [
        ("/usr/bin/chromium", "/usr/lib/chromium/chromium"),
        (
            "/usr/bin/chromium-headless-shell",
            "/usr/lib/chromium/chromium-headless-shell",
        ),
    ] {
        if std::path::Path::new(real).exists() {
            return Some(PathBuf::from(real));
        }
        if std::path::Path::new(wrapper).exists() {
            return Some(PathBuf::from(wrapper));
        }
    }
    crate::support::skip("Chromium not found (./deploy/local/prereqs.sh chromium; `make test` does)");
    None
}

pub struct Chrome {
    browser: Option<Browser>,
    handler: tokio::task::JoinHandle<()>,
    profile: Option<tempfile::TempDir>,
    _singleton: tempfile::TempDir,
}

impl Chrome {
    pub async fn launch(executable: &std::path::Path) -> Chrome {
        let profile = tempfile::Builder::new()
            .prefix("clawgress-console-test-")
            .tempdir()
            .unwrap();
        // Chromium's singleton socket directory goes under TMPDIR and stays
        // after a kill: a short directory of the test's own (a unix socket
        // path has at most 107 bytes), removed with the profile.
        let singleton = tempfile::Builder::new().prefix("cs").tempdir().unwrap();
        let mut builder = BrowserConfig::builder()
            .chrome_executable(executable)
            .env("TMPDIR", singleton.path().to_string_lossy());
        if !executable.ends_with("chromium-headless-shell") {
            builder = builder.new_headless_mode();
        }
        let config = builder
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1280, 900)
            .viewport(Viewport {
                width: 1280,
                height: 900,
                ..Default::default()
            })
            .launch_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(20))
            .arg("disable-background-networking")
            .arg("disable-component-update")
            .arg("no-first-run")
            .arg("no-proxy-server")
            .build()
            .unwrap();
        let (browser, mut handler) = Browser::launch(config).await.expect("launch Chromium");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Chrome {
            browser: Some(browser),
            handler,
            profile: Some(profile),
            _singleton: singleton,
        }
    }

    pub async fn page(&self, url: &str) -> Page {
        let page = self.browser.as_ref().unwrap().new_page(url).await.expect("open a page");
        page.wait_for_navigation().await.expect("page loaded");
        page
    }

    /// Closes the browser and waits for it (the success path; a failing
    /// test gets the same from `Drop`, with a kill instead of a close).
    pub async fn close(mut self) {
        if let Some(mut browser) = self.browser.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), browser.close()).await;
            let _ = browser.kill().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), browser.wait()).await;
        }
        self.remove_profile();
    }

    /// The browser's helpers may still be writing into the profile for a
    /// moment after it died: retried until the directory is gone.
    fn remove_profile(&mut self) {
        let Some(profile) = self.profile.take() else { return };
        for _ in 0..50 {
            match std::fs::remove_dir_all(profile.path()) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => return,
            }
        }
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if let Some(mut browser) = self.browser.take() {
            // Killed and reaped now, not "in the background": the profile
            // directory goes right after.
            if let Some(child) = browser.get_mut_child() {
                let _ = child.inner.start_kill();
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(child.inner.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.handler.abort();
        self.remove_profile();
    }
}

/// Evaluates `expression` (an arrow function, awaited if it returns a promise).
pub async fn eval<T: serde::de::DeserializeOwned>(page: &Page, function: &str) -> T {
    page.evaluate_function(function)
        .await
        .unwrap_or_else(|e| panic!("evaluating {function}: {e}"))
        .into_value()
        .unwrap_or_else(|e| panic!("the value of {function}: {e}"))
}

/// Waits until `condition` (an arrow function returning a boolean) holds.
pub async fn until(page: &Page, condition: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held: bool = page
            .evaluate_function(condition)
            .await
            .ok()
            .and_then(|r| r.into_value().ok())
            .unwrap_or(false);
        if held {
            return;
        }
        if Instant::now() > deadline {
            let flash: String = eval(page, "() => document.getElementById('flash')?.innerText || ''").await;
            panic!("never true: {condition}\nthe console says: {flash}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types into a field as a user would (it is cleared first).
pub async fn type_into(page: &Page, selector: &str, text: &str) {
    let clear = format!("() => {{ const e = document.querySelector({selector:?}); e.value = ''; return true; }}");
    let _: bool = eval(page, &clear).await;
    page.find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("no {selector}: {e}"))
        .click()
        .await
        .unwrap()
        .type_str(text)
        .await
        .unwrap();
}

/// Sets a field's value at once (long texts such as a policy).
pub async fn set_value(page: &Page, selector: &str, text: &str) {
    let set = format!(
        "() => {{ const e = document.querySelector({selector:?}); e.value = {text}; return true; }}",
        text = serde_json::to_string(text).unwrap()
    );
    let _: bool = eval(page, &set).await;
}

pub async fn click(page: &Page, selector: &str) {
    page.find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("no {selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {selector}: {e}"));
}

/// The flash message's text.
pub async fn flash(page: &Page) -> String {
    eval(
        page,
        "() => document.getElementById('flash').hidden ? '' : document.getElementById('flash').innerText",
    )
    .await
}

/// A PNG of the whole page into the test's directory, and into
/// `docs/console/` when `CLAWGRESS_UPDATE_SCREENSHOTS=1`.
pub async fn screenshot(page: &Page, dir: &std::path::Path, name: &str) {
    let png = page
        .screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build(),
        )
        .await
        .expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if std::env::var("CLAWGRESS_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
    }
}
