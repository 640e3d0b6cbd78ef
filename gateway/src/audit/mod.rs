//! The audit trail: one hash-chained JSON line per request (and per query
//! to the DNS control server, [`dns_event`]), written off the request path.
//!
//! # Using it
//!
//! Before serving a request, [`AuditSink::reserve`] a slot; if that fails (queue
//! full, writer stopped, unshipped backlog at its bound) refuse the request (503),
//! because a served request must have a record. When the request is done,
//! [`AuditSlot::record_confirmed`] its [`EgressEvent`] and release the answer's
//! last bytes only when the [`Confirmation`] resolves (or [`AuditSlot::record`]
//! when nobody is answered). [`AuditWriterHandle::shutdown`] drains, signs and
//! syncs on exit.
//!
//! # Line format
//!
//! Each line is one JSON object (see [`event`] for the fields), terminated by
//! `\n`, whose last two fields are added by the writer:
//!
//! ```text
//! {"timestamp":"…","type":"egress_request",…,"prev_hash":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! - `prev_hash` is the `hash` of the previous line; 64 zeros on the first line.
//! - `hash` is the lowercase hex SHA-256 of the line's bytes up to and including the
//!   closing quote of the `prev_hash` value, i.e. everything before the final
//!   `,"hash":"`. Because `hash` is always last and exactly 64 hex digits, that is
//!   the line without its last 75 bytes (`,"hash":"` + 64 + `"}`), `\n` excluded.
//!
//! Editing a line breaks its own hash; removing, inserting or reordering lines
//! breaks the next line's `prev_hash`. Cutting lines off the end cannot be seen
//! from the file alone: keep the last hash elsewhere (the audit stream) to catch
//! that. Each file starts its own chain from 64 zeros.
//!
//! Checking a file by hand (strict files only; it does not accept the crash
//! recovery described below, [`verify_file`] does):
//!
//! ```text
//! import hashlib, json, sys
//! prev = "0" * 64
//! for n, raw in enumerate(open(sys.argv[1], "rb"), 1):
//!     line = raw.rstrip(b"\n")
//!     rec = json.loads(line)
//!     if hashlib.sha256(line[:-75]).hexdigest() != rec["hash"] or not line.endswith(b'"}'):
//!         sys.exit(f"line {n}: edited")
//!     if rec["prev_hash"] != prev:
//!         sys.exit(f"line {n}: removed or reordered")
//!     prev = rec["hash"]
//! print(f"ok: {n} lines, last hash {prev}")
//! ```
//!
//! # Durability
//!
//! No answered request without a record: a refusal is sent once its record is
//! written; a served response holds its last frame (or its end) until its
//! record, complete only then, is written ([`crate::proxy::body`]). The wait is
//! bounded by [`CONFIRM_TIMEOUT`]; past it `egress.fail_mode: closed` cuts the
//! response and `open` releases it.
//!
//! The writer (its own thread) takes whatever is queued (up to 512 records),
//! serializes and chains it, appends it with a single `write(2)` and confirms
//! the whole batch (group commit). When a record counts as written is
//! [`FsyncPolicy`] (`--audit-fsync`): `every` after the batch's `fdatasync`
//! (survives a power loss), `interval` after `write(2)` (survives a crash of
//! the gateway; fsync within [`FSYNC_INTERVAL`], so a power loss can lose up to
//! ~100 ms of lines or leave the last line torn), `never` after `write(2)`
//! (fsync at shutdown only). A failed write is cut off and retried until the
//! disk recovers; meanwhile the queue fills and new requests are refused
//! rather than served unaudited.
//!
//! With a key (`--audit-key`) the writer adds signed [`checkpoint`] lines; with
//! `--nats` the [`ship`]per sends every line to the audit streams, the file
//! being their write-ahead queue.
//!
//! # Restarts and torn lines
//!
//! On start the writer reads the end of an existing file and continues the chain
//! from its last line. If the file ends in a torn write (a partial line left by a
//! crash), the fragment is kept as evidence, terminated with `\n`, and followed by
//! a writer-made record `{"type":"audit_chain_resumed","torn_lines":N,
//! "torn_bytes":B,…}` that chains to the last complete, valid line before the
//! fragment. [`verify_file`] reports such fragments in
//! [`VerifyReport::torn_lines`] and accepts them only in exactly that position.
//! Before a restart writes the marker, a torn last line is what a crash leaves:
//! verify accepts the file (every record before it is intact) and names the
//! fragment in [`VerifyReport::torn_tail`]; more fragments than a crash leaves
//! are an error. If the last parseable line
//! fails its own hash (an edit, not a crash), the writer refuses to start rather
//! than vouch for it by chaining onto it.
//!
//! A file is locked while a writer has it open, so two gateways cannot
//! interleave two chains in one file.

mod chain;
mod chain_file;
pub mod checkpoint;
pub mod confirm;
pub mod dns_event;
pub mod event;
pub mod metrics;
pub mod policy_event;
pub mod ship;
pub mod verify;
pub mod writer;

pub use chain::{ChainHash, GENESIS_HASH};
pub use checkpoint::CheckpointConfig;
pub use confirm::{CONFIRM_TIMEOUT, Confirmation, FsyncPolicy, Unconfirmed};
pub use dns_event::{DnsDecision, DnsEvent, DnsTransport};
pub use event::{
    AdminEvent, AuditEvent, AuditIdentity, EgressEvent, EnforcementMode, MAX_PATH_BYTES, Protocol, RequestId,
    RequestSummary, ResponseSummary, Verdict, new_request_id,
};
pub use metrics::AuditMetrics;
pub use policy_event::PolicyEvent;
pub use verify::{LineProblem, SignedReport, TornTail, VerifyError, VerifyReport, verify_file, verify_file_signed};
pub use writer::{
    AuditError, AuditSink, AuditSlot, AuditUnavailable, AuditWriterHandle, Backlog, FSYNC_INTERVAL, WriterOptions,
    start_writer, start_writer_with,
};

#[cfg(test)]
mod tests;
