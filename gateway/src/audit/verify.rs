//! Checks a whole audit file against its hash chain and names the first bad
//! line; with public keys, also its signed checkpoints ([`super::checkpoint`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use clawgress_policies::signing::KeyRing;

use super::chain::{self, ChainHash, GENESIS_HASH};

/// Longer lines are refused rather than buffered: real lines are a few KiB, and a
/// damaged file must not make the verifier allocate without bound.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A file whose chain is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read, torn fragments included.
    pub lines: u64,
    /// Hash of the last line (64 zeros for an empty file): store it elsewhere to
    /// detect a later truncation, which no chain can detect on its own.
    pub last_hash: String,
    /// 1-based numbers of torn fragments left by a crash that the writer recovered
    /// from (each run of them is followed by an `audit_chain_resumed` line that
    /// chains to the line before the run). Not tampering, but worth reporting.
    pub torn_lines: Vec<u64>,
    /// The file ends in a torn write that no restart has marked yet: what a
    /// crash mid-write (`kill -9`, power loss) leaves. Every record before it
    /// is intact; the fragment is not a record. The gateway's next start
    /// keeps it, terminates it and chains on past it with an
    /// `audit_chain_resumed` marker.
    pub torn_tail: Option<TornTail>,
}

/// Unmarked fragments at the end of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// 1-based number of the first fragment line.
    pub first_line: u64,
    pub lines: u64,
    pub bytes: u64,
}

/// What the checkpoints of a file say, verified against trusted keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignedReport {
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The last line a verified checkpoint covers (0: none).
    pub signed_through: u64,
    /// Records after the last checkpoint: in the chain, but signed by no one
    /// yet (a live file always has some).
    pub unsigned_records: u64,
    /// The key ids that signed, in the order first seen.
    pub key_ids: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("line {line}: {problem}")]
    BadLine { line: u64, problem: LineProblem },
    /// Verified with keys, but nothing in the file is signed by any of them:
    /// it may have been replaced by someone without the key.
    #[error(
        "no checkpoint in the file is signed by a trusted key ({keys}): it may have been replaced, or written without --audit-key"
    )]
    NoCheckpoint { keys: String },
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("edited: its hash does not match its content")]
    Edited,
    #[error("a line was removed, inserted or reordered: prev_hash does not match the previous line's hash")]
    ChainBroken,
    /// Only the column: a parser message could quote the line's content.
    #[error("not JSON (column {column})")]
    NotJson { column: usize },
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("torn last line: the file ends in an incomplete record (a partial write)")]
    TornLastLine,
    #[error("longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error(
        "the torn fragments before a chain-resumed marker do not match the count it records: lines were added or removed"
    )]
    TornMismatch,
    #[error("checkpoint signed by key {0}, which is not trusted here; pass its public key with --key")]
    UnknownKey(String),
    #[error("checkpoint signature by key {0} does not verify: the file was rewritten by someone without the key")]
    BadSignature(String),
    #[error("checkpoint out of place: {0}")]
    CheckpointMismatch(&'static str),
}

impl LineProblem {
    /// What a crash mid-write leaves behind. Anything else (a line that parses but
    /// fails its hash) is never a torn write.
    pub(crate) fn could_be_torn(&self) -> bool {
        matches!(self, LineProblem::NotJson { .. } | LineProblem::MissingField(_))
    }
}

/// Reads `path` line by line and checks every link of the chain.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_path(path, None).map(|(report, _)| report)
}

/// [`verify_file`], and every checkpoint's signature against `keys`; a
/// file with records and no verified checkpoint is refused.
pub fn verify_file_signed(path: &Path, keys: &KeyRing) -> Result<(VerifyReport, SignedReport), VerifyError> {
    let (report, signed) = verify_path(path, Some(keys))?;
    if signed.checkpoints == 0 && report.lines > report.torn_lines.len() as u64 {
        return Err(VerifyError::NoCheckpoint { keys: keys.ids() });
    }
    Ok((report, signed))
}

fn verify_path(path: &Path, keys: Option<&KeyRing>) -> Result<(VerifyReport, SignedReport), VerifyError> {
    let io_error = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    match verify_lines(BufReader::new(file), keys) {
        Ok(report) => Ok(report),
        Err(Failure::Io(source)) => Err(io_error(source)),
        Err(Failure::Line(line, problem)) => Err(VerifyError::BadLine { line, problem }),
    }
}

enum Failure {
    Io(io::Error),
    Line(u64, LineProblem),
}

fn verify_lines(mut reader: impl BufRead, keys: Option<&KeyRing>) -> Result<(VerifyReport, SignedReport), Failure> {
    let mut signed = SignedReport::default();
    let mut last: ChainHash = GENESIS_HASH;
    let mut line_no = 0u64;
    let mut torn_lines = Vec::new();
    // Unparseable lines not yet explained by a following resume marker.
    let mut pending: Vec<(u64, LineProblem)> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let terminated = match read_line_capped(&mut reader, &mut buf).map_err(Failure::Io)? {
            LineRead::Eof => break,
            LineRead::TooLong => return Err(Failure::Line(line_no + 1, LineProblem::TooLong)),
            LineRead::Line { terminated } => terminated,
        };
        line_no += 1;
        let content = if terminated { &buf[..buf.len() - 1] } else { &buf[..] };
        match chain::check_line(content) {
            Ok(sealed) => {
                if let Some((first, problem)) = pending.first()
                    && !(sealed.resumed.is_some() && sealed.prev_hash == last)
                {
                    return Err(Failure::Line(*first, problem.clone()));
                }
                if let Some(declared) = sealed.resumed {
                    // The marker is hashed; the fragments before it are not. Its
                    // counts are what stops a line being slipped in, or a
                    // fragment removed, next to it.
                    if declared != (pending.len() as u64, pending_bytes) {
                        let line = pending.first().map_or(line_no, |(n, _)| *n);
                        return Err(Failure::Line(line, LineProblem::TornMismatch));
                    }
                    torn_lines.extend(pending.drain(..).map(|(n, _)| n));
                    pending_bytes = 0;
                }
                if sealed.prev_hash != last {
                    return Err(Failure::Line(line_no, LineProblem::ChainBroken));
                }
                match keys {
                    Some(keys) if sealed.checkpoint => {
                        let key_id = super::checkpoint::check(content, line_no, &last, keys)
                            .map_err(|problem| Failure::Line(line_no, problem))?;
                        if !signed.key_ids.contains(&key_id) {
                            signed.key_ids.push(key_id);
                        }
                        signed.checkpoints += 1;
                        signed.signed_through = line_no - 1;
                        signed.unsigned_records = 0;
                    }
                    _ => signed.unsigned_records += 1,
                }
                last = sealed.hash;
            }
            Err(problem) if problem.could_be_torn() => {
                pending_bytes += content.len() as u64;
                pending.push((line_no, problem));
            }
            Err(problem) => {
                let (line, problem) = pending.first().cloned().unwrap_or((line_no, problem));
                return Err(Failure::Line(line, problem));
            }
        }
    }
    // Fragments with no resume marker after them: a crash nobody has recovered
    // from yet. Reported, not refused: every record before them is intact, and
    // a crash mid-write is exactly what the writer's recovery expects. More
    // fragments than one crash can leave are not a crash.
    let torn_tail = match pending.first() {
        None => None,
        Some((first, problem)) if pending.len() as u64 > super::chain_file::MAX_TORN_FRAGMENTS => {
            return Err(Failure::Line(*first, problem.clone()));
        }
        Some((first, _)) => Some(TornTail {
            first_line: *first,
            lines: pending.len() as u64,
            bytes: pending_bytes,
        }),
    };
    let report = VerifyReport {
        lines: line_no,
        last_hash: hex::encode(last),
        torn_lines,
        torn_tail,
    };
    Ok((report, signed))
}

enum LineRead {
    Eof,
    TooLong,
    Line { terminated: bool },
}

/// Like `read_until(b'\n')`, but gives up past [`MAX_LINE_BYTES`].
fn read_line_capped(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<LineRead> {
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line { terminated: false }
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > MAX_LINE_BYTES + 1 {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(LineRead::Line { terminated: true });
        }
    }
}
