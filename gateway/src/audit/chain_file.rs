//! The audit file on disk: opening it, finding where the chain continues after a
//! restart or a crash, appending whole batches, and syncing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;

use super::chain::{self, ChainHash, GENESIS_HASH};
use super::event::{EventType, Rfc3339Millis};
use super::verify::{LineProblem, MAX_LINE_BYTES};
use super::writer::AuditError;

/// How far back a restart looks for the last good record. A clean file needs one
/// line; a torn one a few more.
const MAX_TAIL_BYTES: u64 = 2 * MAX_LINE_BYTES as u64;
/// Each crash leaves at most one fragment (or two, if it hit the resume marker
/// too). More than this is not a crash: it is a file that is not ours.
pub(crate) const MAX_TORN_FRAGMENTS: u64 = 8;

/// The torn fragments found (and left in place) when the file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub(crate) lines: u64,
    pub(crate) bytes: u64,
}

pub(crate) struct ChainFile {
    file: File,
    path: PathBuf,
    /// End of the last line known to be completely written.
    good_len: u64,
    /// A failed write may have left part of a line past `good_len`: cut it off
    /// before writing again, so a retry never glues two lines together.
    tail_dirty: bool,
    /// Hash of the last line written; the next line's `prev_hash`.
    pub(crate) last_hash: ChainHash,
    /// The file ended in a signed checkpoint when opened: nothing in it
    /// waits for a signature.
    pub(crate) ends_signed: bool,
}

impl ChainFile {
    /// Opens (or creates) the file, locks it against a second writer, and positions
    /// the chain after the last complete, self-consistent record. A torn tail is
    /// left in place, terminated, and followed by an `audit_chain_resumed` record.
    pub(crate) fn open(path: &Path) -> Result<(Self, Option<TornTail>), AuditError> {
        let open_error = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let existed = path.try_exists().map_err(open_error)?;
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        let mut file = options.open(path).map_err(open_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(AuditError::Locked { path: path.to_owned() });
            }
            Err(TryLockError::Error(e)) => return Err(open_error(e)),
        }
        if !existed {
            // Without this a power loss can forget the file's directory entry.
            sync_parent_dir(path).map_err(open_error)?;
        }
        let len = file.metadata().map_err(open_error)?.len();
        let tail_start = len.saturating_sub(MAX_TAIL_BYTES);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(tail_start)).map_err(open_error)?;
        file.read_to_end(&mut tail).map_err(open_error)?;

        let found = find_chain_end(&tail, tail_start == 0).map_err(|problem| AuditError::CorruptTail {
            path: path.to_owned(),
            problem,
        })?;
        let mut chain_file = ChainFile {
            file,
            path: path.to_owned(),
            good_len: len,
            tail_dirty: false,
            last_hash: found.last_hash,
            ends_signed: found.ends_signed && found.torn.is_none(),
        };
        let mut repair = Vec::new();
        if found.unterminated {
            repair.push(b'\n');
        }
        if let Some(torn) = found.torn {
            let marker = ChainResumedLine {
                timestamp: Rfc3339Millis(&Utc::now()),
                kind: EventType::AuditChainResumed,
                torn_lines: torn.lines,
                torn_bytes: torn.bytes,
            };
            let start = repair.len();
            serde_json::to_writer(&mut repair, &marker).map_err(|e| AuditError::Write(e.into()))?;
            let hash = chain::seal(&mut repair, start, &chain_file.last_hash)
                .ok_or_else(|| AuditError::Write(io::Error::other("resume marker is not a JSON object")))?;
            chain_file.last_hash = hash;
        }
        if !repair.is_empty() {
            chain_file.append(&repair).map_err(AuditError::Write)?;
            chain_file.sync().map_err(AuditError::Sync)?;
        }
        Ok((chain_file, found.torn))
    }

    /// Appends `bytes` with one write call.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.tail_dirty {
            self.file.set_len(self.good_len)?;
            self.tail_dirty = false;
        }
        // The file is in append mode, so this lands at the (possibly just cut) end.
        if let Err(e) = self.file.write_all(bytes) {
            self.tail_dirty = true;
            return Err(e);
        }
        self.good_len += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The length of the file up to the end of its last whole write.
    pub(crate) fn len(&self) -> u64 {
        self.good_len
    }

    /// Lines in the file (a checkpoint's `seq` counts them). Reads the
    /// whole file once, at start, and only when checkpoints are signed.
    pub(crate) fn count_lines(&mut self) -> io::Result<u64> {
        // Append mode: the position only matters for reads.
        self.file.seek(SeekFrom::Start(0))?;
        let mut reader = io::BufReader::with_capacity(1 << 20, (&self.file).take(self.good_len));
        let mut lines = 0u64;
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(lines);
            }
            lines += memchr::memchr_iter(b'\n', chunk).count() as u64;
            let consumed = chunk.len();
            reader.consume(consumed);
        }
    }
}

#[derive(Serialize)]
struct ChainResumedLine<'a> {
    timestamp: Rfc3339Millis<'a>,
    #[serde(rename = "type")]
    kind: EventType,
    torn_lines: u64,
    torn_bytes: u64,
}

/// Where the chain continues.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChainEnd {
    pub(crate) last_hash: ChainHash,
    /// The last complete record is a checkpoint.
    pub(crate) ends_signed: bool,
    /// The file does not end in `\n`.
    pub(crate) unterminated: bool,
    pub(crate) torn: Option<TornTail>,
}

/// Finds the last line of `tail` that is a complete, self-consistent record.
/// Lines after it must look like torn writes (not JSON, or JSON cut short);
/// a line that parses but fails its own hash is an edit, and the writer refuses to
/// chain onto an edited file. `tail_is_whole_file` says whether a file with no
/// record at all (only fragments) may start from the genesis hash.
pub(crate) fn find_chain_end(tail: &[u8], tail_is_whole_file: bool) -> Result<ChainEnd, LineProblem> {
    let unterminated = tail.last().is_some_and(|&b| b != b'\n');
    let body = tail.strip_suffix(b"\n").unwrap_or(tail);
    let mut lines: Vec<&[u8]> = if tail.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    if !tail_is_whole_file && !lines.is_empty() {
        // The first piece starts mid-line.
        lines.remove(0);
    }
    let mut torn = TornTail { lines: 0, bytes: 0 };
    let mut last_hash = None;
    let mut ends_signed = false;
    for line in lines.iter().rev() {
        match chain::check_line(line) {
            Ok(sealed) => {
                last_hash = Some(sealed.hash);
                ends_signed = sealed.checkpoint;
                break;
            }
            Err(problem) if problem.could_be_torn() => {
                torn.lines += 1;
                torn.bytes += line.len() as u64;
                if torn.lines > MAX_TORN_FRAGMENTS {
                    return Err(problem);
                }
            }
            Err(problem) => return Err(problem),
        }
    }
    let last_hash = match last_hash {
        Some(hash) => hash,
        None if tail_is_whole_file => GENESIS_HASH,
        None => {
            return Err(LineProblem::Malformed("no complete record near the end of the file"));
        }
    };
    Ok(ChainEnd {
        last_hash,
        ends_signed,
        unterminated,
        torn: (torn.lines > 0).then_some(torn),
    })
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
