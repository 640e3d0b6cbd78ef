//! A validated benchmark run: arguments checked, names resolved once, request
//! bytes pre-built; then the workers and the merge of their tallies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::endpoint::{ProxyUrl, TargetUrl, basic_credentials, parse_proxy, parse_target};
use super::load::{ForwardPlan, RequestTemplate, ReqwestPlan, forward_worker, reqwest_worker};
use super::report::{BenchReport, Mode, RunLabel};
use super::stats::{MeasureWindow, Tally};
use super::tunnel::{TunnelPlan, tunnel_worker};
use super::{BenchArgs, MAX_CONNECTIONS};

pub struct BenchPlan {
    mode: Mode,
    target: TargetUrl,
    proxy: Option<ProxyUrl>,
    /// Where TCP connections go: the proxy, or the target when direct.
    dial: SocketAddr,
    proxy_authorization: Option<hyper::header::HeaderValue>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    /// Built once for `--reqwest`: one pool shared by every loop.
    reqwest: Option<(reqwest::Client, reqwest::Url, bytes::Bytes)>,
}

impl BenchPlan {
    pub async fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        if args.connections == 0 || args.connections > MAX_CONNECTIONS {
            bail!("--connections must be between 1 and {MAX_CONNECTIONS}");
        }
        let duration = seconds(args.duration, "--duration")?;
        if duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        let warmup = seconds(args.warmup, "--warmup")?;
        let target = parse_target(&args.target)?;
        if args.target.starts_with("https:") && !args.reqwest {
            bail!("an https:// --target needs --reqwest (the other modes speak plain HTTP)");
        }
        if (!args.ca_file.is_empty() || args.body > 0) && !args.reqwest {
            bail!("--ca-file and --body go with --reqwest");
        }
        let proxy = args.proxy.as_deref().map(parse_proxy).transpose()?;
        if proxy.is_none() && args.proxy_user.is_some() {
            bail!("--proxy-user needs --proxy");
        }
        if proxy.is_none() && args.connect {
            bail!("--connect needs --proxy");
        }
        let proxy_authorization = args.proxy_user.as_deref().map(basic_credentials).transpose()?;
        // Resolved once: a per-connection lookup would be measured as proxy latency.
        let dial = match &proxy {
            Some(proxy) => resolve(&proxy.host, proxy.port, "--proxy").await?,
            None => resolve(&target.host, target.port, "--target").await?,
        };
        let reqwest = if args.reqwest {
            let client = ReqwestPlan::client(
                args.proxy.as_deref(),
                proxy_authorization.as_ref(),
                args.connections,
                &args.ca_file,
            )?;
            let url = reqwest::Url::parse(&args.target).with_context(|| format!("--target {:?}", args.target))?;
            Some((client, url, bytes::Bytes::from(vec![b'x'; args.body])))
        } else {
            None
        };
        Ok(Self {
            mode: match (args.connect, args.reqwest) {
                (true, _) => Mode::Connect,
                (false, true) => Mode::Reqwest,
                (false, false) => Mode::Forward,
            },
            target,
            proxy,
            dial,
            proxy_authorization,
            connections: args.connections,
            warmup,
            duration,
            reqwest,
        })
    }

    /// Runs every connection until the window closes and merges what they saw.
    pub async fn run(&self) -> BenchReport {
        let window = MeasureWindow::after_warmup(self.warmup, self.duration);
        let mut workers = tokio::task::JoinSet::new();
        match self.mode {
            Mode::Forward => {
                let plan = Arc::new(self.forward_plan(window));
                for _ in 0..self.connections {
                    let plan = Arc::clone(&plan);
                    workers.spawn(async move { forward_worker(&plan).await });
                }
            }
            Mode::Reqwest => {
                // Always built for this mode; without it no request runs
                // and the report says so.
                if let Some((client, url, body)) = self.reqwest.clone() {
                    let plan = Arc::new(ReqwestPlan {
                        client,
                        url,
                        body,
                        window,
                    });
                    for _ in 0..self.connections {
                        let plan = Arc::clone(&plan);
                        workers.spawn(async move { reqwest_worker(&plan).await });
                    }
                }
            }
            Mode::Connect => {
                let plan = Arc::new(self.tunnel_plan(window));
                for _ in 0..self.connections {
                    let plan = Arc::clone(&plan);
                    workers.spawn(async move { tunnel_worker(&plan).await });
                }
            }
        }
        let mut total = Tally::default();
        let mut lost_workers = 0;
        while let Some(finished) = workers.join_next().await {
            match finished {
                Ok(tally) => total.merge(&tally),
                Err(_) => lost_workers += 1,
            }
        }
        // A worker that panicked has no tally; count it as one error so the
        // report cannot look clean.
        total.errors += lost_workers;
        // Workers stop exactly at the window's end, so its length is the
        // measured time.
        BenchReport::new(self.label(), window.length().as_secs_f64(), &total)
    }

    fn forward_plan(&self, window: MeasureWindow) -> ForwardPlan {
        let uri = if self.proxy.is_some() {
            self.target.absolute.clone()
        } else {
            self.target.origin_form.clone()
        };
        ForwardPlan {
            dial: self.dial,
            request: RequestTemplate {
                uri,
                host: self.target.host_header.clone(),
                proxy_authorization: self.proxy_authorization.clone(),
            },
            window,
        }
    }

    fn tunnel_plan(&self, window: MeasureWindow) -> TunnelPlan {
        let credential = self.proxy_authorization.as_ref().map(|value| value.as_bytes());
        TunnelPlan {
            proxy: self.dial,
            connect_request: TunnelPlan::connect_request(&self.target.connect_authority, credential),
            inner_request: RequestTemplate {
                uri: self.target.origin_form.clone(),
                host: self.target.host_header.clone(),
                proxy_authorization: None,
            },
            window,
        }
    }

    fn label(&self) -> RunLabel {
        RunLabel {
            mode: self.mode,
            proxy: self.proxy.as_ref().map(|proxy| proxy.display.clone()),
            target: self.target.absolute.to_string(),
            connections: self.connections,
        }
    }
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .with_context(|| format!("{flag} must be a non-negative number of seconds"))
}

async fn resolve(host: &str, port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("{flag}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{flag}: {host} has no address"))
}
