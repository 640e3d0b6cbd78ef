//! NATS for every Clawgress process: a comma-separated list of servers
//! (`--nats nats://a:4222,nats://b:4222`), and how many replicas the
//! JetStream streams and KV buckets a process creates get (`--replicas`).
//!
//! `auto` (the default) is 3 when the server we reached says it belongs to
//! a cluster of 3 or more servers, else 1: a single server cannot hold
//! replicas, and on a cluster an R1 stream dies with its one server. The
//! size comes from the server's INFO (`connect_urls`: every server of the
//! cluster that clients may use), so a cluster with a server down at start
//! looks smaller; `--replicas 3` says it outright.
//!
//! A stream or bucket that already exists is never changed behind an
//! operator's back: when it has fewer replicas than wanted it is used as it
//! is, and [`fewer_replicas`] is the warning that names it and the command
//! that raises it.

pub mod kv_gaps;
pub mod repeats;

use std::fmt;
use std::str::FromStr;

/// Replicas on a cluster of at least this many servers.
pub const CLUSTER_REPLICAS: usize = 3;
/// JetStream's own upper bound on replicas.
pub const MAX_REPLICAS: usize = 5;

/// The servers of a comma-separated list, for `ConnectOptions::connect`:
/// a client connected to one learns the others from it, but the first
/// connection needs one that answers.
pub fn servers(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// How many copies JetStream keeps of what a process creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicas {
    /// From the cluster's size: [`CLUSTER_REPLICAS`] on 3 or more servers, else 1.
    #[default]
    Auto,
    Fixed(usize),
}

impl FromStr for Replicas {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Replicas::Auto);
        }
        match text.parse::<usize>() {
            Ok(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(Replicas::Fixed(n)),
            _ => Err(format!(
                "`{text}`: give `auto` (3 on a cluster of 3 or more servers, else 1) or a number from 1 to {MAX_REPLICAS}"
            )),
        }
    }
}

impl fmt::Display for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replicas::Auto => f.write_str("auto"),
            Replicas::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Replicas {
    /// The number, for the cluster behind `client`.
    pub fn resolve(self, client: &async_nats::Client) -> usize {
        self.resolve_for(&client.server_info())
    }

    pub fn resolve_for(self, info: &async_nats::ServerInfo) -> usize {
        match self {
            Replicas::Fixed(n) => n.clamp(1, MAX_REPLICAS),
            Replicas::Auto if cluster_size(info) >= CLUSTER_REPLICAS => CLUSTER_REPLICAS,
            Replicas::Auto => 1,
        }
    }
}

/// Servers in the cluster as the server we reached announces them (itself
/// included); 1 for a server outside a cluster.
pub fn cluster_size(info: &async_nats::ServerInfo) -> usize {
    if info.cluster.as_deref().is_none_or(str::is_empty) {
        return 1;
    }
    let mut urls: Vec<&str> = info.connect_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.dedup();
    urls.len().max(1)
}

/// One line for the start log: what was found and what will be created.
pub fn describe(info: &async_nats::ServerInfo, replicas: usize) -> String {
    let size = cluster_size(info);
    match info.cluster.as_deref().filter(|c| !c.is_empty()) {
        Some(name) => format!(
            "NATS cluster {name} ({size} server(s) announced): streams and buckets are created with {replicas} replica(s)"
        ),
        None => format!("NATS server outside a cluster: streams and buckets are created with {replicas} replica(s)"),
    }
}

/// What holds the data: a stream, or a KV bucket (the stream `KV_<bucket>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder<'a> {
    Stream(&'a str),
    Bucket(&'a str),
}

/// The warning for an existing stream or bucket with fewer replicas than
/// wanted, or `None` when it has enough.
pub fn fewer_replicas(holder: Holder<'_>, has: usize, wanted: usize) -> Option<String> {
    if has >= wanted {
        return None;
    }
    let (what, stream) = match holder {
        Holder::Stream(name) => (format!("stream {name}"), name.to_string()),
        Holder::Bucket(name) => (format!("KV bucket {name}"), format!("KV_{name}")),
    };
    Some(format!(
        "the {what} exists with {has} replica(s), fewer than the {wanted} wanted: it is used as it is, and losing \
         the server(s) that hold it stops it or loses its data; raise it with `nats stream edit {stream} --replicas {wanted}` \
         (or start with --replicas {has} to accept it)"
    ))
}

/// Opens the KV bucket `config.bucket` as it is when it exists (an
/// operator's settings are not reset by every start; fewer replicas than
/// `config.num_replicas` are reported), else creates it with `config`.
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, String> {
    if let Ok(kv) = js.get_key_value(&config.bucket).await {
        if let Ok(status) = kv.status().await {
            let has = status.info.config.num_replicas.max(1);
            warn_if_fewer(Holder::Bucket(&config.bucket), has, config.num_replicas);
        }
        return Ok(kv);
    }
    let bucket = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| format!("cannot open or create the KV bucket {bucket}: {e} (is JetStream on: nats-server -js?)"))
}

/// Logs [`fewer_replicas`]' warning when there is one; returns whether it did.
pub fn warn_if_fewer(holder: Holder<'_>, has: usize, wanted: usize) -> bool {
    match fewer_replicas(holder, has, wanted) {
        Some(warning) => {
            tracing::warn!("{warning}");
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cluster: Option<&str>, urls: &[&str]) -> async_nats::ServerInfo {
        async_nats::ServerInfo {
            cluster: cluster.map(str::to_string),
            connect_urls: urls.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn auto_is_three_on_a_cluster_of_three_or_more_and_one_otherwise() {
        let three = info(Some("c"), &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(Replicas::Auto.resolve_for(&three), 3);
        let five = info(Some("c"), &["a:1", "b:1", "c:1", "d:1", "e:1"]);
        assert_eq!(Replicas::Auto.resolve_for(&five), 3);
        assert_eq!(Replicas::Auto.resolve_for(&info(Some("c"), &["a:1", "b:1"])), 1);
        assert_eq!(Replicas::Auto.resolve_for(&info(None, &["a:1", "b:1", "c:1"])), 1);
        assert_eq!(Replicas::Auto.resolve_for(&info(None, &[])), 1);
        assert_eq!(Replicas::Fixed(3).resolve_for(&info(None, &[])), 3);
        // The same server announced twice counts once.
        assert_eq!(cluster_size(&info(Some("c"), &["a:1", "a:1", "b:1"])), 2);
    }

    #[test]
    fn replicas_parse_auto_or_a_number_jetstream_accepts() {
        assert_eq!("auto".parse::<Replicas>(), Ok(Replicas::Auto));
        assert_eq!("3".parse::<Replicas>(), Ok(Replicas::Fixed(3)));
        assert!("0".parse::<Replicas>().unwrap_err().contains("from 1 to 5"));
        assert!("6".parse::<Replicas>().is_err());
        assert!("three".parse::<Replicas>().is_err());
    }

    #[test]
    fn server_lists_split_on_commas() {
        assert_eq!(
            servers("nats://a:1, nats://b:2,,nats://c:3"),
            ["nats://a:1", "nats://b:2", "nats://c:3"]
        );
        assert_eq!(servers("nats://a:1"), ["nats://a:1"]);
    }

    #[test]
    fn a_stream_or_bucket_with_fewer_replicas_is_named_with_the_fix() {
        assert_eq!(fewer_replicas(Holder::Stream("JOBS"), 3, 3), None);
        let warning = fewer_replicas(Holder::Stream("JOBS"), 1, 3).unwrap();
        assert!(warning.contains("stream JOBS exists with 1 replica(s)"), "{warning}");
        assert!(warning.contains("nats stream edit JOBS --replicas 3"), "{warning}");
        let warning = fewer_replicas(Holder::Bucket("clawgress-control"), 1, 3).unwrap();
        assert!(warning.contains("KV bucket clawgress-control"), "{warning}");
        assert!(
            warning.contains("nats stream edit KV_clawgress-control --replicas 3"),
            "{warning}"
        );
    }
}
