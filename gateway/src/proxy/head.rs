//! Request heads checked before hyper sees them.
//!
//! hyper answers a head it cannot parse (a percent-encoded or non-ASCII
//! host, a bad header, a head over 64 KiB) with a bare `400` of its own,
//! before any of our code runs: no problem+json, no audit line, no metric.
//! So every connection's bytes pass through [`Guarded`], which follows the
//! HTTP/1 message framing (heads, Content-Length and chunked bodies) and
//! holds each head back until [`check`](check::check) has passed it, with
//! hyper's own parser and rules. A head that fails is never given to hyper:
//! in its place hyper reads a stand-in request (`Connection: close`)
//! carrying this connection's random token, and the service answers that
//! one with `malformed_request` (problem+json, an audit line naming the
//! peer, a metric) through the normal refusal path.
//!
//! After a CONNECT or an `Upgrade` request the bytes are a tunnel's, not
//! HTTP: they pass unchecked (and uncopied), as does the rest of a
//! connection whose body framing broke (hyper ends it with a body error).

pub mod check;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use check::{Checked, check};
pub use check::{MAX_HEAD_BYTES, Malformed};

/// What follows a head that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The next head, at once.
    Head,
    /// A body of this many bytes, then the next head.
    Length(u64),
    /// A chunked body, then the next head.
    Chunked,
    /// Not HTTP any more (a tunnel): nothing is checked.
    Opaque,
}

/// Shared by a connection's [`Guarded`] stream and its service.
#[derive(Debug)]
pub struct HeadGuard {
    /// Marks the stand-in request; random per connection, so a client
    /// cannot send one of its own.
    token: String,
    refused: AtomicBool,
    problem: std::sync::Mutex<Option<Refused>>,
}

/// A head that did not pass: what was wrong, and its method if that much parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub problem: Malformed,
    pub method: Option<http::Method>,
}

/// The stand-in's header carrying the token.
const TOKEN_HEADER: &str = "x-clawgress-malformed";

impl HeadGuard {
    pub fn new() -> Arc<HeadGuard> {
        Arc::new(HeadGuard {
            token: format!("{:032x}", rand::random::<u128>()),
            refused: AtomicBool::new(false),
            problem: std::sync::Mutex::new(None),
        })
    }

    /// The problem `req` stands in for, when it is this guard's stand-in.
    pub fn refusal<B>(&self, req: &http::Request<B>) -> Option<Refused> {
        if !self.refused.load(Ordering::Acquire) {
            return None;
        }
        let token = req.headers().get(TOKEN_HEADER)?;
        if token.as_bytes() != self.token.as_bytes() {
            return None;
        }
        self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn refuse(&self, refused: Refused) -> Vec<u8> {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(refused);
        self.refused.store(true, Ordering::Release);
        format!(
            "GET http://clawgress.invalid/ HTTP/1.1\r\nhost: clawgress.invalid\r\nconnection: close\r\n{TOKEN_HEADER}: {}\r\n\r\n",
            self.token
        )
        .into_bytes()
    }
}

/// Where the framing is.
#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    Opaque,
    /// The stand-in was queued: nothing more is read from the client.
    Refused,
}

/// A client stream whose request heads are checked before hyper reads them.
pub struct Guarded<S> {
    inner: S,
    guard: Arc<HeadGuard>,
    /// Bytes read from the client and not yet given to hyper...
    held: BytesMut,
    /// ...of which the first `ready` are checked and may be.
    ready: usize,
    state: State,
    eof: bool,
}

/// The answer to a stand-in request: `malformed_request`, recorded (the
/// peer's address in the audit line) and counted like every refusal.
pub(crate) async fn refuse(
    gateway: &crate::Gateway,
    client: std::net::SocketAddr,
    entry: super::Entry,
    refused: Refused,
) -> http::Response<super::body::ProxyBody> {
    use crate::context::{RequestContext, RequestKind};
    use crate::decision::{Refusal, RequestProblem};
    // A method that did not parse is not guessed at.
    let method = refused
        .method
        .unwrap_or_else(|| http::Method::from_bytes(b"UNPARSED").unwrap_or_default());
    let mut ctx = RequestContext::new(client, method, RequestKind::Forward, None);
    ctx.record_client = true;
    if let super::Entry::Transparent { original } = entry {
        ctx.original_destination = Some(original);
        ctx.identity = gateway.identities.load().by_source(client.ip()).ok();
    }
    let refusal = Refusal::Request(RequestProblem::Malformed(refused.problem));
    match gateway.audit.reserve() {
        Ok(slot) => super::refuse_answered(gateway, ctx, slot, refusal).await,
        // Unrecordable: answered as every request is then.
        Err(_) => {
            let refusal = Refusal::AuditUnavailable;
            gateway.metrics.record_request(
                crate::metrics::DecisionLabel::Deny,
                refusal.reason(),
                Some(refusal.status().as_u16()),
                ctx.started.elapsed(),
            );
            crate::response::refusal_response(&ctx, &refusal)
        }
    }
}

/// Read size from the client while heads are checked.
const READ_CHUNK: usize = 8 * 1024;

impl<S> Guarded<S> {
    pub fn new(inner: S, guard: Arc<HeadGuard>) -> Guarded<S> {
        Guarded {
            inner,
            guard,
            held: BytesMut::new(),
            ready: 0,
            state: State::Head,
            eof: false,
        }
    }

    /// Moves `ready` over what the framing allows, as far as `held` goes.
    fn advance(&mut self) {
        while self.ready < self.held.len() {
            let rest = &self.held[self.ready..];
            match &mut self.state {
                State::Opaque => self.ready = self.held.len(),
                State::Refused => return,
                State::Body(left) => {
                    let step = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    self.ready += step;
                    *left -= step as u64;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunk.feed(rest);
                    self.ready += used;
                    match next {
                        ChunkNext::More => {}
                        ChunkNext::Done => self.state = State::Head,
                        // hyper fails the body on the same byte and ends
                        // the connection; nothing after it is a head.
                        ChunkNext::Broken => self.state = State::Opaque,
                    }
                }
                State::Head => match check(rest) {
                    Checked::Partial => return,
                    Checked::Head { len, then } => {
                        self.ready += len;
                        self.state = match then {
                            Framing::Head => State::Head,
                            Framing::Length(length) => State::Body(length),
                            Framing::Chunked => State::Chunked(Chunk::default()),
                            Framing::Opaque => State::Opaque,
                        };
                    }
                    Checked::Malformed(problem) => {
                        // For the audit line: the method, when the head starts with one.
                        let method = rest
                            .split(|byte| *byte == b' ')
                            .next()
                            .and_then(|token| http::Method::from_bytes(token).ok());
                        let stand_in = self.guard.refuse(Refused { problem, method });
                        self.held.truncate(self.ready);
                        self.held.extend_from_slice(&stand_in);
                        self.ready = self.held.len();
                        self.state = State::Refused;
                    }
                },
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::Refused) {
                // The stand-in was read. The rest of the client's bytes are
                // dropped, and its end is never reported: hyper (without
                // half-close) would drop the answer on an early EOF. The
                // answer closes the connection.
                if this.eof {
                    return Poll::Pending;
                }
                let mut scratch = [0u8; READ_CHUNK];
                let mut dropped = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut dropped))?;
                this.eof = dropped.filled().is_empty();
                continue;
            }
            if this.eof {
                // A head cut short by the client's close goes to hyper as
                // it is: nobody is left to answer.
                this.ready = this.held.len();
                if this.ready == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // A tunnel's bytes, and a body hyper asked for in full, go
            // straight into hyper's buffer.
            if this.held.is_empty() {
                let direct = match this.state {
                    State::Opaque => true,
                    State::Body(left) => left >= buf.remaining() as u64,
                    _ => false,
                };
                if direct {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let read = (buf.filled().len() - before) as u64;
                    if let State::Body(left) = &mut this.state {
                        *left -= read;
                        if *left == 0 {
                            this.state = State::Head;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.held.extend_from_slice(read.filled());
                this.advance();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A chunked body, byte by byte as hyper's decoder reads it.
#[derive(Debug, Default)]
struct Chunk {
    step: ChunkStep,
    size: u64,
    extension: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkStep {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

enum ChunkNext {
    More,
    Done,
    Broken,
}

/// hyper's cap on the bytes of a chunk's extensions.
const CHUNK_EXTENSIONS_LIMIT: u64 = 16 * 1024;

impl Chunk {
    /// Consumes from `bytes`; returns how many, and what comes next.
    fn feed(&mut self, bytes: &[u8]) -> (usize, ChunkNext) {
        use ChunkStep::*;
        let mut used = 0;
        while used < bytes.len() {
            if self.step == Data {
                let step = (bytes.len() - used).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                used += step;
                self.size -= step as u64;
                if self.size == 0 {
                    self.step = DataCr;
                }
                continue;
            }
            let byte = bytes[used];
            used += 1;
            let hex = match byte {
                b'0'..=b'9' => Some(byte - b'0'),
                b'a'..=b'f' => Some(byte - b'a' + 10),
                b'A'..=b'F' => Some(byte - b'A' + 10),
                _ => None,
            };
            self.step = match (self.step, byte, hex) {
                (Start | Size, _, Some(digit)) => {
                    let Some(size) = self.size.checked_mul(16).and_then(|s| s.checked_add(u64::from(digit))) else {
                        return (used, ChunkNext::Broken);
                    };
                    self.size = size;
                    Size
                }
                (Size | SizeLws, b'\t' | b' ', _) => SizeLws,
                (Size | SizeLws, b';', _) => Extension,
                (Size | SizeLws | Extension, b'\r', _) => SizeLf,
                (Extension, b'\n', _) => return (used, ChunkNext::Broken),
                (Extension, _, _) => {
                    self.extension += 1;
                    if self.extension >= CHUNK_EXTENSIONS_LIMIT {
                        return (used, ChunkNext::Broken);
                    }
                    Extension
                }
                (SizeLf, b'\n', _) if self.size == 0 => EndCr,
                (SizeLf, b'\n', _) => Data,
                (DataCr, b'\r', _) => DataLf,
                (DataLf, b'\n', _) => {
                    self.size = 0;
                    Start
                }
                (EndCr, b'\r', _) => EndLf,
                (EndCr | Trailer, _, _) if byte != b'\r' => Trailer,
                (Trailer, b'\r', _) => TrailerLf,
                (TrailerLf, b'\n', _) => EndCr,
                (EndLf, b'\n', _) => return (used, ChunkNext::Done),
                _ => return (used, ChunkNext::Broken),
            };
        }
        (used, ChunkNext::More)
    }
}
