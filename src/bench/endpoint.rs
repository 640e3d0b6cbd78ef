//! The addresses a run talks to: the target URL, the optional proxy, and the
//! proxy credential. Parsed once, before any connection is opened.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::Uri;
use hyper::header::HeaderValue;

/// The origin the benchmark fetches, in the forms each mode needs.
#[derive(Clone, Debug)]
pub struct TargetUrl {
    /// Host as dialled (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `host:port` as CONNECT and the Host header of a tunnelled request say it.
    pub connect_authority: String,
    /// Host header as the URL wrote it (port omitted when the URL omitted it).
    pub host_header: HeaderValue,
    /// `http://host:port/path`, the request-target sent to a forward proxy.
    pub absolute: Uri,
    /// `/path`, the request-target sent to the origin itself.
    pub origin_form: Uri,
}

/// A forward proxy to send requests through (plain `http://host:port`).
#[derive(Clone, Debug)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// The URL as given, for the report.
    pub display: String,
}

pub fn parse_target(raw: &str) -> anyhow::Result<TargetUrl> {
    let uri: Uri = raw.parse().with_context(|| format!("--target {raw:?} is not a URL"))?;
    let (host, port) = http_host_port(&uri, "--target")?;
    let authority = uri.authority().context("--target needs a host")?.as_str().to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let connect_authority = join_host_port(&host, port);
    let absolute: Uri = format!("http://{authority}{path}")
        .parse()
        .context("--target cannot be written in absolute form")?;
    let origin_form: Uri = path.parse().context("--target path is not valid")?;
    let host_header = HeaderValue::from_str(&authority).context("--target host is not valid")?;
    Ok(TargetUrl {
        host,
        port,
        connect_authority,
        host_header,
        absolute,
        origin_form,
    })
}

pub fn parse_proxy(raw: &str) -> anyhow::Result<ProxyUrl> {
    // Never echo the raw value in errors: it might carry a credential.
    let uri: Uri = raw
        .parse()
        .ok()
        .context("--proxy is not a URL (expected http://host:port)")?;
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        bail!("--proxy takes no path (expected http://host:port)");
    }
    let (host, port) = http_host_port(&uri, "--proxy")?;
    Ok(ProxyUrl {
        display: format!("http://{}", join_host_port(&host, port)),
        host,
        port,
    })
}

/// `AGENT:KEY` as a `Proxy-Authorization: Basic` value, marked sensitive so
/// hyper and our own Debug output never show it.
pub fn basic_credentials(agent_and_key: &str) -> anyhow::Result<HeaderValue> {
    match agent_and_key.split_once(':') {
        Some((agent, _)) if !agent.is_empty() => {}
        _ => bail!("--proxy-user must be AGENT:KEY"),
    }
    let encoded = STANDARD.encode(agent_and_key);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .ok()
        .context("--proxy-user cannot be sent as a header")?;
    value.set_sensitive(true);
    Ok(value)
}

fn http_host_port(uri: &Uri, flag: &str) -> anyhow::Result<(String, u16)> {
    // https only for --target with --reqwest (checked by the plan); the
    // hand-built clients speak plain HTTP.
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") if flag == "--target" => 443,
        Some(other) => bail!("{flag} must be an http:// URL, not {other}://"),
        None => bail!("{flag} must be an http:// URL"),
    };
    let authority = uri.authority().with_context(|| format!("{flag} needs a host"))?;
    if authority.as_str().contains('@') {
        bail!("{flag} must not carry user information; use --proxy-user");
    }
    let host = authority.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        bail!("{flag} needs a host");
    }
    Ok((host.to_owned(), authority.port_u16().unwrap_or(default_port)))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
