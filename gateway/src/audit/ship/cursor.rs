//! Where shipping resumes: the offset just past the last line the audit
//! streams acknowledged, and that line's hash, kept beside the trail in
//! `<trail>.shipped`.
//!
//! Written with one `pwrite` after each acknowledged group, not fsynced: a
//! cursor that lags after a crash only re-sends lines the streams
//! deduplicate by their hash. On start the hash must match the line that
//! ends at the offset; if not (the trail was rotated or replaced), the file
//! is shipped from its start, which is also deduplicated.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::chain;
use crate::audit::verify::MAX_LINE_BYTES;

/// Fixed width, so each write replaces the whole previous one in place.
const RECORD_BYTES: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    /// Hash of the line ending at `offset` (empty at offset 0).
    pub hash: String,
}

impl Position {
    pub fn start() -> Self {
        Position {
            offset: 0,
            hash: String::new(),
        }
    }
}

pub struct Cursor {
    file: File,
    path: PathBuf,
}

/// `<trail>.shipped`.
pub fn cursor_path(trail: &Path) -> PathBuf {
    let mut name = trail.as_os_str().to_owned();
    name.push(".shipped");
    PathBuf::from(name)
}

impl Cursor {
    /// Opens (or creates) the cursor of `trail`, and the position to resume
    /// from, checked against the trail itself.
    pub fn open(trail: &Path) -> io::Result<(Cursor, Position)> {
        let path = cursor_path(trail);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = vec![0u8; RECORD_BYTES];
        let read = file.read_at(&mut bytes, 0)?;
        let stored: Option<Position> = serde_json::from_slice(bytes[..read].trim_ascii_end()).ok();
        let position = match stored {
            None => Position::start(),
            Some(position) if position.offset == 0 => Position::start(),
            Some(position) => match hash_of_line_ending_at(trail, position.offset) {
                Some(hash) if hash == position.hash => position,
                _ => {
                    tracing::warn!(
                        cursor = %path.display(),
                        offset = position.offset,
                        "the audit trail does not match its shipping cursor (rotated or replaced?); shipping it from its start (the streams drop what they already have)",
                    );
                    Position::start()
                }
            },
        };
        Ok((Cursor { file, path }, position))
    }

    pub fn save(&self, position: &Position) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(position).map_err(io::Error::other)?;
        if bytes.len() >= RECORD_BYTES {
            return Err(io::Error::other("cursor record too long"));
        }
        bytes.resize(RECORD_BYTES - 1, b' ');
        bytes.push(b'\n');
        self.file.write_all_at(&bytes, 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The hash of the complete line of `trail` that ends (with its `\n`) at `end`.
fn hash_of_line_ending_at(trail: &Path, end: u64) -> Option<String> {
    let file = File::open(trail).ok()?;
    let start = end.saturating_sub(MAX_LINE_BYTES as u64 + 1);
    let mut bytes = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut bytes, start).ok()?;
    let line = bytes.strip_suffix(b"\n")?;
    let line = match line.iter().rposition(|&b| b == b'\n') {
        Some(i) => &line[i + 1..],
        None if start == 0 => line,
        None => return None,
    };
    chain::check_line(line).ok().map(|sealed| hex::encode(sealed.hash))
}
