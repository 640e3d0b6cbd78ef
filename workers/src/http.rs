//! The `http` backend: reqwest through the gateway, with the job's agent
//! credential. Redirects are followed here, one request per hop, so the
//! gateway judges every hop; bodies are capped and decoded with the
//! response's charset.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Client, Method, Proxy, Response};

use crate::credentials::Credentials;
use crate::gateways::{self, Gateways};
use crate::job::ScrapeJob;
use crate::outcome::{FetchError, Fetched};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// The gateway marks its own answers with this header.
const DECISION_HEADER: &str = "x-clawgress-decision";

/// Fetches through a gateway (of a list of replicas: each request goes to
/// the next in turn that answers, see [`Gateways`]); one connection pool
/// per agent and gateway (each pool carries that agent's proxy
/// credential). Without a gateway (`--gateway none`) requests go out directly and the host edge sends them through the
/// transparent gateway, which knows the agent by this worker's address. An
/// `https://` gateway is its mTLS listener: the pool presents the agent's
/// client certificate (`cert`/`key` in the credentials file) to it, and the
/// certificate names the agent (no Proxy-Authorization is sent).
pub struct HttpFetcher {
    gateways: Option<Gateways>,
    credentials: Credentials,
    max_body: usize,
    /// By agent and gateway.
    clients: Mutex<HashMap<(String, usize), Client>>,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("gateways", &self.gateways)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// `gateway` is the proxy URL, e.g. `http://127.0.0.1:3128`, or the mTLS
    /// listener's, e.g. `https://127.0.0.1:3129`; several replicas
    /// comma-separated.
    pub fn new(gateway: impl Into<String>, credentials: Credentials, max_body: usize) -> HttpFetcher {
        HttpFetcher {
            gateways: Some(Gateways::new(&gateway.into())),
            credentials,
            max_body,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Direct requests, for workers behind the host edge: nftables sends
    /// them to the transparent gateway, which identifies the agent by the
    /// worker's source address, so no credential is needed here.
    pub fn behind_edge(credentials: Credentials, max_body: usize) -> HttpFetcher {
        HttpFetcher {
            gateways: None,
            ..HttpFetcher::new(String::new(), credentials, max_body)
        }
    }

    /// The explicit proxy (the first of the list), when there is one.
    pub fn gateway(&self) -> Option<&str> {
        self.gateways.as_ref().map(|g| g.url(0))
    }

    /// The explicit proxies, when there are.
    pub fn gateways(&self) -> Option<&Gateways> {
        self.gateways.as_ref()
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether jobs of `agent` can run here: its key is known, or (behind
    /// the edge) the edge decides who the agent is.
    pub fn serves(&self, agent: &str) -> bool {
        match &self.gateways {
            None => true,
            Some(gateways) if gateways.urls().iter().any(|g| is_tls(g)) => self.credentials.identity(agent).is_some(),
            Some(_) => self.credentials.has(agent),
        }
    }

    /// The pool for `agent` through the gateway at `index`.
    fn client(&self, agent: &str, index: usize) -> Result<Client, FetchError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let pool = match &self.gateways {
            Some(_) => (agent.to_string(), index),
            None => (String::new(), 0),
        };
        if let Some(client) = clients.get(&pool) {
            return Ok(client.clone());
        }
        let gateway = self.gateways.as_ref().map(|g| g.url(index));
        let builder = match gateway {
            Some(gateway) if is_tls(gateway) => {
                // reqwest (rustls) speaks TLS to an `https://` proxy with
                // the client's identity, then CONNECTs inside it for https
                // targets (TLS in TLS) or sends absolute-form requests.
                let identity = self.credentials.identity(agent).ok_or_else(|| {
                    FetchError::Transport(format!(
                        "no client certificate for agent {agent}: the gateway {gateway} is its mTLS listener \
                         (give cert and key for the agent in the credentials file)"
                    ))
                })?;
                let identity = reqwest::Identity::from_pem(identity.pem()).map_err(|_| {
                    FetchError::Transport(format!("the client certificate of agent {agent} is unusable"))
                })?;
                let proxy =
                    Proxy::all(gateway).map_err(|e| FetchError::Transport(format!("gateway URL {gateway}: {e}")))?;
                let roots = match self.credentials.gateway_ca() {
                    Some(pem) => reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| FetchError::Transport(format!("gateway_ca: {e}")))?,
                    None => Vec::new(),
                };
                Client::builder().proxy(proxy).identity(identity).tls_certs_merge(roots)
            }
            Some(gateway) => {
                let key = self
                    .credentials
                    .key(agent)
                    .ok_or_else(|| FetchError::Transport(format!("no credential for agent {agent}")))?;
                let proxy = Proxy::all(gateway)
                    .map_err(|e| FetchError::Transport(format!("gateway URL {gateway}: {e}")))?
                    .basic_auth(agent, key);
                Client::builder().proxy(proxy)
            }
            None => Client::builder().no_proxy(),
        };
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            // A gateway that does not accept a connection in this time is
            // passed over for the next replica.
            .connect_timeout(gateways::CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("clawgress/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        clients.insert(pool, client.clone());
        Ok(client)
    }

    /// Sends one request through the gateways in turn: the next is asked
    /// only when one did not answer ([`gateways::not_answered`]). Returns
    /// the answer and which gateway gave it, or the last error and where.
    async fn send(
        &self,
        agent: &str,
        idempotent: bool,
        request: impl Fn(&Client) -> reqwest::RequestBuilder,
    ) -> Result<(Response, usize), Unsent> {
        let order = match &self.gateways {
            Some(gateways) => gateways.order(),
            None => vec![0],
        };
        let mut last = None;
        for (tried, &index) in order.iter().enumerate() {
            let client = self.client(agent, index).map_err(Unsent::Setup)?;
            match request(&client).send().await {
                Ok(response) => {
                    if let Some(gateways) = &self.gateways {
                        gateways.mark_up(index);
                    }
                    return Ok((response, index));
                }
                Err(error) if !is_tunnel_error(&error) && gateways::not_answered(&error, idempotent) => {
                    if let Some(gateways) = &self.gateways {
                        gateways.mark_down(index);
                        if tried + 1 < order.len() {
                            tracing::debug!(gateway = gateways.url(index), %error, "trying the next gateway");
                        }
                    }
                    last = Some(Unsent::Request(error, index));
                }
                Err(error) => return Err(Unsent::Request(error, index)),
            }
        }
        Err(last.unwrap_or_else(|| Unsent::Setup(FetchError::Transport("no gateway to send to".to_string()))))
    }

    /// POSTs JSON through the gateway as `agent` (an `llm` step) and returns
    /// the JSON answer. Gateway refusals map as for pages; a provider error
    /// is an origin error.
    pub async fn post_json(
        &self,
        agent: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, FetchError> {
        let traceparent = clawgress_telemetry::traceparent(&tracing::Span::current());
        // Not idempotent: another gateway is asked only when this one never
        // took the request (the provider must not be called twice).
        let sent = self
            .send(agent, false, |client| {
                let mut request = client.post(url).json(body).timeout(timeout);
                if let Some(traceparent) = &traceparent {
                    request = request.header(clawgress_telemetry::TRACEPARENT, traceparent.as_str());
                }
                for (name, value) in headers {
                    request = request.header(*name, value);
                }
                request
            })
            .await;
        let response = match sent {
            Ok((response, _)) => response,
            Err(Unsent::Setup(error)) => return Err(error),
            Err(Unsent::Request(error, _)) => return Err(transport(error)),
        };
        if let Some(status) = gateway_refusal(&response) {
            return Err(refusal(status, response).await);
        }
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Origin {
                status: status.as_u16(),
                retry_after: retry_after_header(response.headers()),
            });
        }
        let bytes = response.bytes().await.map_err(transport)?;
        if bytes.len() > self.max_body {
            return Err(FetchError::TooLarge { limit: self.max_body });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Transport(format!("the provider's answer is not JSON: {e}")))
    }

    /// Fetches the job's page, following redirects hop by hop.
    pub async fn fetch(&self, job: &ScrapeJob) -> Result<Fetched, FetchError> {
        tokio::time::timeout(job.timeout, self.fetch_hops(job))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn fetch_hops(&self, job: &ScrapeJob) -> Result<Fetched, FetchError> {
        let mut method = Method::from_bytes(job.method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
        let mut body = job.body.clone();
        let mut url = reqwest::Url::parse(&job.url).map_err(|e| FetchError::Transport(e.to_string()))?;
        let mut hops = Vec::new();
        let mut headers = job_headers(job);
        // The gateway records this trace id in its audit line and makes its
        // decision a child of the fetch.
        if let Some(traceparent) = clawgress_telemetry::traceparent(&tracing::Span::current())
            && let Ok(value) = reqwest::header::HeaderValue::from_str(&traceparent)
        {
            headers.insert(clawgress_telemetry::TRACEPARENT, value);
        }
        loop {
            hops.push(url.to_string());
            let idempotent = matches!(
                method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            );
            let sent = self
                .send(&job.agent, idempotent, |client| {
                    let mut request = client.request(method.clone(), url.clone()).headers(headers.clone());
                    if let Some(body) = &body {
                        request = request.body(body.clone());
                    }
                    request
                })
                .await;
            let response = match sent {
                Ok((response, _)) => response,
                Err(Unsent::Setup(error)) => return Err(error),
                Err(Unsent::Request(error, index))
                    if url.scheme() == "https" && is_tunnel_error(&error) && self.gateways.is_some() =>
                {
                    // The gateway that refused the tunnel says why.
                    let gateway = self.gateways.as_ref().map_or("", |g| g.url(index));
                    let probe = if is_tls(gateway) {
                        match self.credentials.identity(&job.agent) {
                            Some(identity) => {
                                crate::http_probe::probe_tls(gateway, identity, self.credentials.gateway_ca(), &url)
                                    .await
                            }
                            None => None,
                        }
                    } else {
                        let key = self.credentials.key(&job.agent).unwrap_or_default();
                        crate::http_probe::probe_tunnel(gateway, &job.agent, key, &url).await
                    };
                    return Err(probe.unwrap_or_else(|| transport(error)));
                }
                Err(Unsent::Request(error, _)) => return Err(transport(error)),
            };
            if let Some(error) = gateway_refusal(&response) {
                // The gateway's own answer: its body says why.
                return Err(refusal(error, response).await);
            }
            let status = response.status();
            if status.is_redirection()
                && let Some(next) = response.headers().get(LOCATION).and_then(|v| v.to_str().ok())
            {
                if hops.len() > MAX_REDIRECTS {
                    return Err(FetchError::TooManyRedirects(hops.len()));
                }
                url = url
                    .join(next)
                    .map_err(|e| FetchError::Transport(format!("bad redirect {next}: {e}")))?;
                // RFC 9110 §15.4: 303 (and, by custom, 301/302 after POST) become GET.
                if status.as_u16() == 303 || (matches!(status.as_u16(), 301 | 302) && method == Method::POST) {
                    method = Method::GET;
                    body = None;
                }
                continue;
            }
            if status.as_u16() == 429 || status.is_server_error() {
                return Err(FetchError::Origin {
                    status: status.as_u16(),
                    retry_after: retry_after_header(response.headers()),
                });
            }
            return self.read(response, hops).await;
        }
    }

    async fn read(&self, response: Response, hops: Vec<String>) -> Result<Fetched, FetchError> {
        let status = response.status().as_u16();
        let final_url = response.url().to_string();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if response.content_length().is_some_and(|len| len > self.max_body as u64) {
            return Err(FetchError::TooLarge { limit: self.max_body });
        }
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport)?;
            if bytes.len() + chunk.len() > self.max_body {
                return Err(FetchError::TooLarge { limit: self.max_body });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status,
            final_url,
            hops,
            body: decode(&bytes, content_type.as_deref()),
            content_type,
            request_id,
        })
    }
}

/// Why a request got no answer from any gateway.
enum Unsent {
    /// No client could be made (a missing credential).
    Setup(FetchError),
    /// The last gateway tried failed with this error.
    Request(reqwest::Error, usize),
}

fn job_headers(job: &ScrapeJob) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &job.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    headers
}

/// An `https://` gateway URL: the gateway's mTLS listener.
fn is_tls(gateway: &str) -> bool {
    gateway
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// reqwest's words for a CONNECT the proxy refused.
fn is_tunnel_error(error: &reqwest::Error) -> bool {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let text = text.to_ascii_lowercase();
    text.contains("tunnel") || text.contains("proxy authorization")
}

fn transport(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        FetchError::Timeout
    } else {
        FetchError::Transport(error.to_string())
    }
}

/// The status of a response the gateway made itself, if this is one: its
/// refusals carry the decision header (a forwarded origin answer carries
/// it only as `would_deny` in report mode), and 407 is always ours.
fn gateway_refusal(response: &Response) -> Option<u16> {
    let status = response.status().as_u16();
    let ours = status == 407
        || response
            .headers()
            .get(DECISION_HEADER)
            .is_some_and(|v| !v.as_bytes().starts_with(b"would_deny"));
    (ours && status >= 400).then_some(status)
}

async fn refusal(status: u16, response: Response) -> FetchError {
    let header_wait = retry_after_header(response.headers());
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    FetchError::from_gateway(status, &body, header_wait)
}

fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .map(crate::outcome::clamp_wait)
}

/// Decodes with the charset the response names; UTF-8 otherwise (with
/// replacement characters, never an error).
pub fn decode(bytes: &[u8], content_type: Option<&str>) -> String {
    let label = content_type.and_then(|ct| {
        ct.split(';')
            .filter_map(|part| part.trim().split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("charset"))
            .map(|(_, value)| value.trim().trim_matches('"').to_string())
    });
    let encoding = label
        .and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode(bytes).0.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_follow_the_content_type() {
        assert_eq!(decode(b"caf\xe9", Some("text/html; charset=ISO-8859-1")), "café");
        assert_eq!(decode("café".as_bytes(), Some("text/html")), "café");
        assert_eq!(decode(b"\x82\xa0", Some("text/html; charset=\"Shift_JIS\"")), "あ");
        assert_eq!(decode(b"bad \xff", None), "bad \u{fffd}");
    }
}
