//! Where audit lines come from: a trail file (read once, or followed as
//! the gateway appends), or the `audit.>` JetStream streams (payload = one
//! trail line), read through a durable consumer so a restarted analyzer
//! goes on where it stopped.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

/// Subjects of the audit streams (`audit.<allowed|denied|rate_limited|alert|admin|dns>`).
pub const AUDIT_SUBJECTS: &str = "audit.>";

/// Reads a trail file line by line, keeping line numbers for reports. A
/// last line without its `\n` is held back while following (the writer
/// may be mid-line) and returned as a line at the end otherwise.
pub struct TrailReader {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: u64,
    consumed: u64,
    buf: Vec<u8>,
    pending: bool,
}

impl TrailReader {
    pub fn open(path: &Path) -> std::io::Result<TrailReader> {
        let file = File::open(path)?;
        Ok(TrailReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            line_no: 0,
            consumed: 0,
            buf: Vec::with_capacity(4096),
            pending: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next whole line (without its `\n`) and its 1-based number;
    /// `None` at the end of what is written so far.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        if !self.pending {
            self.buf.clear();
        }
        let read = self.reader.read_until(b'\n', &mut self.buf)?;
        self.consumed += read as u64;
        if self.buf.last() != Some(&b'\n') {
            self.pending = !self.buf.is_empty();
            return Ok(None);
        }
        self.pending = false;
        self.line_no += 1;
        let end = self.buf.len() - 1;
        let end = if end > 0 && self.buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Ok(Some((self.line_no, &self.buf[..end])))
    }

    /// A last line cut off without `\n` (a torn write), once reading is over.
    pub fn unterminated(&mut self) -> Option<(u64, &[u8])> {
        if !self.pending || self.buf.is_empty() {
            return None;
        }
        self.pending = false;
        self.line_no += 1;
        Some((self.line_no, &self.buf[..]))
    }

    /// Whether the file was replaced or cut shorter than what was read
    /// (rotation): then it is read again from its start.
    pub fn rotated(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len() < self.consumed,
            Err(_) => false,
        }
    }

    pub fn reopen(&mut self) -> std::io::Result<()> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(0))?;
        self.reader = BufReader::with_capacity(1 << 16, file);
        self.line_no = 0;
        self.consumed = 0;
        self.buf.clear();
        self.pending = false;
        Ok(())
    }
}

/// How long to wait before looking at a followed file again.
pub const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// A message from the audit streams.
pub struct StreamLine {
    pub stream: String,
    pub sequence: u64,
    pub payload: Vec<u8>,
    message: jetstream::Message,
}

impl StreamLine {
    /// Acknowledges the message: the durable consumer moves past it.
    pub async fn ack(self) {
        if let Err(error) = self.message.ack().await {
            tracing::warn!(stream = %self.stream, seq = self.sequence, "cannot acknowledge: {error}");
        }
    }
}

/// Every stream with `audit.` subjects, waiting (and saying so)
/// until at least one exists: the gateways' audit publishing creates them.
pub async fn audit_streams(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    let mut told = false;
    loop {
        let mut streams = js.streams();
        let mut found = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info?;
            if info.config.subjects.iter().any(|s| s.starts_with("audit.")) {
                found.push(info.config.name);
            }
        }
        if !found.is_empty() {
            found.sort();
            return Ok(found);
        }
        if !told {
            tracing::warn!("no JetStream stream carries {AUDIT_SUBJECTS} yet; waiting for the gateways to create it");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Messages of every audit stream through the durable consumer `durable`
/// (created if missing, acknowledging explicitly, from the first message).
pub async fn follow_streams(
    js: &jetstream::Context,
    durable: &str,
) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<StreamLine>> + use<>> {
    let mut merged = Vec::new();
    for name in audit_streams(js).await? {
        let stream = js.get_stream(&name).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                durable,
                consumer::pull::Config {
                    durable_name: Some(durable.to_string()),
                    description: Some("clawgress analyze: behavior analysis of the audit trail".to_string()),
                    filter_subject: AUDIT_SUBJECTS.to_string(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the durable consumer {durable} on stream {name}: {e}"))?;
        let messages = consumer.messages().await?;
        let stream_name = name.clone();
        merged.push(
            messages
                .map(move |message| {
                    let message = message.map_err(|e| anyhow::anyhow!("stream {stream_name}: {e}"))?;
                    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                    Ok(StreamLine {
                        stream: stream_name.clone(),
                        sequence,
                        payload: message.payload.to_vec(),
                        message,
                    })
                })
                .boxed(),
        );
    }
    Ok(futures_util::stream::select_all(merged))
}
