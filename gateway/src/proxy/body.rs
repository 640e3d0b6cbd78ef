//! Bodies that stream through the proxy without being buffered, counting
//! bytes as they pass, and recording the request when the response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::audit::{CONFIRM_TIMEOUT, Confirmation};
use crate::inspect::Outbound;
use crate::record::Finisher;

/// The body length a request declares: its Content-Length, unless
/// Transfer-Encoding makes that meaningless (RFC 9112 §6.3).
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Byte counters shared between the request body (going out) and the
/// response body (coming in) of one exchange.
#[derive(Debug, Default)]
pub struct Transfer {
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// The client's request body failed: an error that follows is the
    /// client's, not the upstream's (and must not count against it).
    pub client_body_failed: std::sync::atomic::AtomicBool,
    /// The body was cut because the agent's bytes in flight passed
    /// `fault_containment.max_pending_bytes`.
    pub contained: std::sync::Mutex<Option<crate::containment::Overflow>>,
}

/// Why the request body stopped early.
#[derive(Debug)]
pub enum OutboundError {
    Client(hyper::Error),
    Contained(crate::containment::Overflow),
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundError::Client(error) => write!(f, "client request body: {error}"),
            OutboundError::Contained(overflow) => write!(f, "request body refused: {overflow:?}"),
        }
    }
}

impl std::error::Error for OutboundError {}

/// The request body sent upstream: the client's body, streamed or as the
/// inspect phase held it, counted as it goes out.
pub struct OutboundBody {
    held: Option<Bytes>,
    rest: Option<Incoming>,
    transfer: Arc<Transfer>,
    /// Set when the body has no declared length: its bytes are charged to
    /// the agent's containment share as they arrive.
    streamed_charge: Option<Arc<crate::containment::Admission>>,
}

impl OutboundBody {
    pub fn new(
        outbound: Outbound,
        transfer: Arc<Transfer>,
        streamed_charge: Option<Arc<crate::containment::Admission>>,
    ) -> Self {
        let (held, rest) = match outbound {
            Outbound::Streamed(body) => (None, Some(body)),
            Outbound::Buffered(bytes) => (Some(bytes), None),
            Outbound::Prefixed(bytes, body) => (Some(bytes), Some(body)),
        };
        OutboundBody {
            held: held.filter(|b| !b.is_empty()),
            rest,
            transfer,
            streamed_charge,
        }
    }
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = OutboundError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        if let Some(held) = self.held.take() {
            // Already charged (or declared) while it was held.
            self.transfer.bytes_out.fetch_add(held.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    self.transfer.bytes_out.fetch_add(len, Ordering::Relaxed);
                    if let Some(admission) = &self.streamed_charge
                        && let Err(overflow) = admission.charge_streamed(len)
                    {
                        if let Ok(mut cut) = self.transfer.contained.lock() {
                            *cut = Some(overflow);
                        }
                        return Poll::Ready(Some(Err(OutboundError::Contained(overflow))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.transfer.client_body_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(OutboundError::Client(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(held),
            Some(rest) => {
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + held);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
        }
    }
}

/// Every response the proxy sends: one of its own, or the upstream's streamed
/// through. An enum rather than a boxed trait object: no allocation per
/// response, and every variant is `Unpin`.
pub enum ProxyBody {
    Local(Full<Bytes>),
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Local(Full::new(Bytes::new()))
    }

    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(bytes.into()))
    }
}

/// Why a response body ended early.
#[derive(Debug)]
pub enum ResponseError {
    /// The upstream's body failed (reset, bad framing).
    Upstream(hyper::Error),
    /// The response's record could not be confirmed in time and the agent
    /// fails closed: the client does not get a complete answer that the
    /// trail may be missing.
    Unrecorded,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Upstream(error) => write!(f, "upstream response body: {error}"),
            ResponseError::Unrecorded => write!(f, "response cut: its audit record was not confirmed in time"),
        }
    }
}

impl std::error::Error for ResponseError {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        match self.get_mut() {
            ProxyBody::Local(full) => Pin::new(full).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(full) => full.is_end_stream(),
            ProxyBody::Upstream(body) => body.at_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(full) => full.size_hint(),
            ProxyBody::Upstream(body) => body.inner.size_hint(),
        }
    }
}

/// The upstream's response body on its way to the client. When it ends, or
/// the client goes away mid-stream, the exchange is recorded exactly once
/// (the finisher runs on drop).
///
/// The record of a streamed response is complete only at its end, so its
/// last frame (or, for a chunked body, its end) is held until the writer
/// confirms the record is in the trail: a client never holds a complete
/// answer that a crash could leave unrecorded. The wait is bounded
/// ([`CONFIRM_TIMEOUT`]); past it the body is cut (`fail_mode: closed`) or
/// released (`open`).
pub struct UpstreamBody {
    inner: Incoming,
    transfer: Arc<Transfer>,
    finisher: Option<Finisher>,
    /// Reads an AI provider's reported usage as the bytes pass, unchanged.
    /// Boxed: most responses have none, and this body is in every response.
    usage: Option<Box<clawgress_ai::UsageReader>>,
    /// The last frame (`None`: the end itself), waiting for its record.
    held: Option<(Option<Frame<Bytes>>, Confirmation)>,
    fails_open: bool,
    done: bool,
}

impl UpstreamBody {
    /// `finisher` is `None` when the exchange is already recorded (a
    /// response without a body).
    pub fn new(
        inner: Incoming,
        transfer: Arc<Transfer>,
        finisher: Option<Finisher>,
        usage: Option<clawgress_ai::UsageReader>,
    ) -> Self {
        UpstreamBody {
            inner,
            transfer,
            fails_open: finisher.as_ref().is_some_and(Finisher::fails_open),
            finisher,
            usage: usage.map(Box::new),
            held: None,
            done: false,
        }
    }

    fn finish(&mut self) -> Confirmation {
        match self.finisher.take() {
            Some(mut finisher) => {
                if let Some(reader) = self.usage.take()
                    && let Some(ai) = finisher.context_mut().and_then(|ctx| ctx.ai.as_mut())
                {
                    ai.settle(reader.finish());
                }
                finisher.finish().within(CONFIRM_TIMEOUT)
            }
            None => Confirmation::done(),
        }
    }

    fn at_end(&self) -> bool {
        // Until recorded, say "more to come", so that hyper polls for the
        // end and the end waits for the record.
        self.done || (self.finisher.is_none() && self.held.is_none() && self.inner.is_end_stream())
    }

    /// Releases the held frame once its record is confirmed.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let Some((_, confirmation)) = self.held.as_mut() else {
            return Poll::Ready(None);
        };
        let confirmed = match Pin::new(confirmation).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(confirmed) => confirmed,
        };
        let last = self.held.take().and_then(|(frame, _)| frame);
        self.done = true;
        if let Err(unconfirmed) = confirmed {
            if !self.fails_open {
                tracing::error!("{unconfirmed}; the response is cut (fail_mode: closed)");
                return Poll::Ready(Some(Err(ResponseError::Unrecorded)));
            }
            tracing::warn!("{unconfirmed}; the response is released (fail_mode: open)");
        }
        Poll::Ready(last.map(Ok))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ResponseError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ResponseError>>> {
        let this = &mut *self;
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.transfer.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if let Some(reader) = this.usage.as_mut() {
                        reader.feed(data);
                    }
                }
                if this.inner.is_end_stream() && this.finisher.is_some() {
                    let confirmation = this.finish();
                    this.held = Some((Some(frame), confirmation));
                    return this.poll_held(cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // Not a complete answer: nothing to hold back.
                if let Some(finisher) = this.finisher.as_mut() {
                    finisher.upstream_reset();
                }
                this.finish().detach();
                this.done = true;
                Poll::Ready(Some(Err(ResponseError::Upstream(error))))
            }
            Poll::Ready(None) => {
                if this.finisher.is_none() {
                    this.done = true;
                    return Poll::Ready(None);
                }
                let confirmation = this.finish();
                this.held = Some((None, confirmation));
                this.poll_held(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.finish().detach();
    }
}
