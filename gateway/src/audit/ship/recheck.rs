//! After a reconnect: were the lines the server acknowledged before it went
//! away really kept?
//!
//! A nats-server acknowledges a message once it is in its store's buffer,
//! and writes that out a moment later (unless `sync_always`); a server
//! killed in between comes back without messages it acknowledged. So the
//! shipper remembers the stream sequences of its last [`REMEMBERED`]
//! acknowledged lines, and after every reconnect reads back, per stream,
//! from the newest of them until it finds one that is there with its hash
//! as `Nats-Msg-Id`. What is missing is a suffix of what it sent: shipping
//! resumes from the first missing line (the rest is deduplicated).

use std::collections::VecDeque;

use async_nats::jetstream::{self, ErrorCode, stream::RawMessageErrorKind};

use super::ShipError;
use super::cursor::Position;
use super::streams::{AuditStream, STREAMS};

/// Acknowledged lines remembered: far more than a server buffers unwritten.
const REMEMBERED: usize = 16_384;

/// One acknowledged line: where shipping stood before it, and where it landed.
pub(super) struct Acked {
    pub(super) before: Position,
    pub(super) hash: String,
    pub(super) seqs: Vec<(&'static AuditStream, u64)>,
}

#[derive(Default)]
pub(super) struct AckedLines {
    lines: VecDeque<Acked>,
}

impl AckedLines {
    pub(super) fn push(&mut self, acked: Acked) {
        if self.lines.len() == REMEMBERED {
            self.lines.pop_front();
        }
        self.lines.push_back(acked);
    }

    /// Where to resume if the server lost lines it had acknowledged; those
    /// lines are forgotten here (they will be acknowledged again).
    pub(super) async fn first_lost(&mut self, js: &jetstream::Context) -> Result<Option<Position>, ShipError> {
        let mut first_lost: Option<usize> = None;
        for stream in &STREAMS {
            let mut handle = None;
            for (index, acked) in self.lines.iter().enumerate().rev() {
                let Some((_, seq)) = acked.seqs.iter().find(|(s, _)| s.stream == stream.stream) else {
                    continue;
                };
                let handle = match &mut handle {
                    Some(handle) => handle,
                    None => handle.insert(js.get_stream(stream.stream).await.map_err(|e| ShipError::Stream {
                        stream: stream.stream,
                        reason: e.to_string(),
                    })?),
                };
                let kept = match handle.get_raw_message(*seq).await {
                    Ok(message) => message
                        .headers
                        .get(async_nats::header::NATS_MESSAGE_ID)
                        .is_some_and(|id| id.as_str() == acked.hash),
                    Err(e) if is_not_found(e.kind()) => false,
                    Err(e) => {
                        return Err(ShipError::Stream {
                            stream: stream.stream,
                            reason: e.to_string(),
                        });
                    }
                };
                if kept {
                    break;
                }
                first_lost = Some(first_lost.map_or(index, |f| f.min(index)));
            }
        }
        let Some(index) = first_lost else {
            return Ok(None);
        };
        let lost = self.lines.len() - index;
        let resume = self.lines[index].before.clone();
        self.lines.truncate(index);
        tracing::warn!(
            lost,
            offset = resume.offset,
            "NATS came back without audit lines it had acknowledged (it stopped before writing them); sending them again",
        );
        Ok(Some(resume))
    }
}

fn is_not_found(kind: RawMessageErrorKind) -> bool {
    match kind {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(error) => error.error_code() == ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}
