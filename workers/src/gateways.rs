//! The gateways a worker may use (`--gateway URL,URL,...`): replicas of one
//! gateway, taken in turn, so the load spreads over them. One that does not
//! answer (the connection is refused or not accepted in time) is passed
//! over for [`PASS_OVER`] and the request goes to the next at once. An
//! answer is final, whatever it says: a gateway that refused a request
//! (403, 407, 429, ...) refused it for every replica, and asking another
//! would only ask the same policy twice (and spend twice).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a gateway that did not answer is passed over (it is still
/// asked when every other one is passed over too).
pub const PASS_OVER: Duration = Duration::from_secs(5);
/// Longest wait for a gateway to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Gateways {
    urls: Vec<String>,
    /// Per gateway: passed over until then.
    down_until: Vec<Mutex<Option<Instant>>>,
    next: AtomicUsize,
}

impl Gateways {
    /// The comma-separated list (an empty entry is ignored).
    pub fn new(list: &str) -> Gateways {
        let mut urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if urls.is_empty() {
            urls.push(list.trim().to_string());
        }
        let down_until = urls.iter().map(|_| Mutex::new(None)).collect();
        Gateways {
            urls,
            down_until,
            next: AtomicUsize::new(0),
        }
    }

    /// Checks a `--gateway` list: each entry an `http://` (the proxy) or
    /// `https://` (the mTLS listener) URL with a host.
    pub fn check(list: &str) -> Result<(), String> {
        for url in Gateways::new(list).urls {
            let parsed = reqwest::Url::parse(&url).map_err(|e| {
                format!(
                    "--gateway {url}: {e}; give the proxy's URL, e.g. http://127.0.0.1:3128 (several: comma-separated)"
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "--gateway {url}: give an http:// (proxy) or https:// (mTLS listener) URL with a host, e.g. http://127.0.0.1:3128"
                ));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn url(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    fn passed_over(&self, index: usize, now: Instant) -> bool {
        self.down_until[index]
            .lock()
            .map(|until| until.is_some_and(|t| t > now))
            .unwrap_or(false)
    }

    /// The order to try the gateways in for one request: from the next in
    /// turn round the list, those that answered lately first.
    pub fn order(&self) -> Vec<usize> {
        let n = self.urls.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut up, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| !self.passed_over(i, now));
        up.append(&mut down);
        up
    }

    /// The gateway at `index` did not answer.
    pub fn mark_down(&self, index: usize) {
        if let Ok(mut until) = self.down_until[index].lock() {
            if until.is_none() {
                tracing::warn!(gateway = %self.urls[index], "the gateway does not answer; passing it over for {PASS_OVER:?}");
            }
            *until = Some(Instant::now() + PASS_OVER);
        }
    }

    /// The gateway at `index` answered.
    pub fn mark_up(&self, index: usize) {
        if let Ok(mut until) = self.down_until[index].lock()
            && until.take().is_some()
        {
            tracing::info!(gateway = %self.urls[index], "the gateway answers again");
        }
    }

    /// A gateway for something that cannot move once started (a browser
    /// context's proxy): the next in turn that accepts a connection now,
    /// else the next in turn.
    pub async fn pick(&self) -> &str {
        let order = self.order();
        for &index in &order {
            if self.urls.len() == 1 || accepts(&self.urls[index]).await {
                self.mark_up(index);
                return &self.urls[index];
            }
            self.mark_down(index);
        }
        &self.urls[order[0]]
    }

    /// Whether something already bound to `url` (a warm browser context)
    /// may go on using it: not passed over, and accepting a connection now.
    /// With one gateway there is nowhere else to go: always.
    pub async fn still_answers(&self, url: &str) -> bool {
        let Some(index) = self.urls.iter().position(|u| u == url) else {
            return false;
        };
        if self.urls.len() == 1 {
            return true;
        }
        if self.passed_over(index, Instant::now()) {
            return false;
        }
        let answers = accepts(url).await;
        if answers {
            self.mark_up(index);
        } else {
            self.mark_down(index);
        }
        answers
    }
}

/// Whether the gateway at `url` accepts a TCP connection within
/// [`CONNECT_TIMEOUT`].
async fn accepts(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), port))).await,
        Ok(Ok(_))
    )
}

/// Whether a request that failed with `error` never reached a gateway, or
/// lost it before any answer, so another gateway may be asked instead:
/// a connection refused or not accepted in time always; a connection that
/// closed before an answer only for a request that may be sent twice
/// (`idempotent`: the dead gateway may have forwarded it).
pub fn not_answered(error: &reqwest::Error, idempotent: bool) -> bool {
    if error.is_connect() {
        return true;
    }
    if !idempotent || error.is_timeout() || error.is_body() || error.is_decode() || error.is_status() {
        return false;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let text = text.to_ascii_lowercase();
    [
        "connection closed before message completed",
        "connection reset",
        "broken pipe",
        "unexpected eof",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_taken_in_turn_and_the_silent_ones_last() {
        let gateways = Gateways::new("http://a:1, http://b:2,http://c:3");
        assert_eq!(gateways.len(), 3);
        assert_eq!(gateways.order(), [0, 1, 2]);
        assert_eq!(gateways.order(), [1, 2, 0]);
        gateways.mark_down(2);
        // c's turn: passed over, tried last.
        assert_eq!(gateways.order(), [0, 1, 2]);
        assert_eq!(gateways.order(), [0, 1, 2]);
        gateways.mark_up(2);
        assert_eq!(gateways.order(), [1, 2, 0]);
    }

    #[tokio::test]
    async fn a_warm_context_keeps_its_gateway_only_while_it_answers() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (up, down_url) = (
            format!("http://{}", up.local_addr().unwrap()),
            format!("http://{}", down.local_addr().unwrap()),
        );
        drop(down);
        // Alone, a gateway is kept whatever it does: there is nowhere else.
        assert!(Gateways::new(&down_url).still_answers(&down_url).await);
        let gateways = Gateways::new(&format!("{up},{down_url}"));
        assert!(gateways.still_answers(&up).await);
        assert!(!gateways.still_answers(&down_url).await);
        // The silent one is now passed over by everything else too.
        assert_eq!(gateways.order(), [0, 1]);
        assert_eq!(gateways.order(), [0, 1]);
        assert!(!gateways.still_answers("http://127.0.0.1:1").await, "not in the list");
    }

    #[test]
    fn a_gateway_list_must_be_urls() {
        assert!(Gateways::check("http://127.0.0.1:3128,https://gw:3129").is_ok());
        let error = Gateways::check("http://127.0.0.1:3128,127.0.0.1:3129").unwrap_err();
        assert!(error.contains("--gateway 127.0.0.1:3129"), "{error}");
        assert!(Gateways::check("ftp://gw:21").is_err());
    }
}
