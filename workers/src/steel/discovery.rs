//! Where the Steel servers are: fixed addresses (`http://10.0.0.5:3000`), or
//! a name whose every address is a server (`dns+http://steel.scraping.svc:3000`,
//! a Kubernetes headless Service: one A record per pod). A plain name is
//! one server however many addresses it has (`localhost` is 127.0.0.1 and
//! ::1, one Steel); `dns+` says the addresses are distinct servers.

/// One `--steel` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Fixed(String),
    EveryAddress { scheme: String, host: String, port: u16 },
}

const FIX: &str =
    "write its API address, e.g. http://127.0.0.1:3000, or dns+http://NAME:PORT for one server per address of NAME";

impl Source {
    pub fn parse(text: &str) -> Result<Source, String> {
        let text = text.trim();
        let (every, url_text) = match text.strip_prefix("dns+") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let url = url::Url::parse(url_text).map_err(|e| format!("Steel server {text}: {e}; {FIX}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("Steel server {text}: {FIX}"));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("Steel server {text}: {FIX}"));
        };
        if !every {
            return Ok(Source::Fixed(url_text.trim_end_matches('/').to_string()));
        }
        Ok(Source::EveryAddress {
            scheme: url.scheme().to_string(),
            host: host.to_string(),
            port: url.port_or_known_default().unwrap_or(3000),
        })
    }

    /// The servers' base URLs, now. A name that does not resolve gives none
    /// (its servers may come up later).
    pub async fn servers(&self) -> Vec<String> {
        match self {
            Source::Fixed(base) => vec![base.clone()],
            Source::EveryAddress { scheme, host, port } => {
                let mut found: Vec<String> = match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(addrs) => addrs.map(|addr| format!("{scheme}://{addr}")).collect(),
                    Err(error) => {
                        tracing::warn!(%error, host, "the Steel servers' name does not resolve (yet)");
                        Vec::new()
                    }
                };
                found.sort();
                found.dedup();
                found
            }
        }
    }
}
