//! Logs and traces for every Clawgress process.
//!
//! - [`init`]: logs to stderr (filtered by `CLAWGRESS_LOG`), and, when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//!   set, Clawgress' own spans exported over OTLP/HTTP (protobuf) in batches.
//!   The standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).
//! - W3C trace context: [`adopt`] makes a span the child of a `traceparent`
//!   that came with a NATS message or an HTTP request; [`traceparent`] is the
//!   header for an outgoing one. This is how a job's trace runs from the
//!   publisher through NATS and the worker to the gateway's decision.
//!
//! Spans are created at DEBUG level with a `clawgress` target: the log
//! output at its usual level never shows them, and without an OTLP
//! endpoint no layer wants them, so they cost a callsite check and no more.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The header, in HTTP and in NATS message headers.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the exporter alive; dropping it flushes the spans still queued.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans leave this process.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: traces not flushed to the OTLP endpoint: {error}");
        }
    }
}

/// Whether an OTLP endpoint is configured in the environment.
pub fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Sets up logging and, if configured, trace export, for the process that
/// calls itself `service` (unless `OTEL_SERVICE_NAME` says otherwise).
pub fn init(service: &str) -> Telemetry {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            // The NATS client's connect/close events are noise at info; the
            // trace SDK's own warnings (an unreachable collector, dropped
            // spans) are what an operator needs from it.
            EnvFilter::try_from_env("CLAWGRESS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,opentelemetry=warn,opentelemetry_sdk=warn")),
        );
    let (provider, problem) = if otlp_configured() {
        match provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        }
    } else {
        (None, None)
    };
    let spans = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("clawgress"))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.is_span() && metadata.target().starts_with("clawgress")
            }))
    });
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
    if provider.is_some() {
        let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_default();
        // Where spans go, once: an export error later names no address.
        tracing::info!(endpoint = %without_userinfo(&endpoint), service, "exporting traces over OTLP/HTTP");
    }
    if let Some(error) = problem {
        // Traces are diagnostics: a bad endpoint must not stop the service.
        tracing::warn!(%error, "OTLP traces are off: the exporter could not be built (check OTEL_EXPORTER_OTLP_ENDPOINT)");
    }
    Telemetry { provider }
}

fn provider(service: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The endpoint with any `user:password@` removed: it is logged.
pub fn without_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A W3C `traceparent` (`00-<32 hex trace>-<16 hex span>-<2 hex flags>`),
/// or `None` if it is malformed or all-zero (then it is ignored, not trusted).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    // Version 00 has exactly four fields; later versions may add more.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the remote span in `traceparent`. Call it before
/// the span is first entered. A missing or malformed header leaves the span
/// a root.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(remote) = traceparent.and_then(parse) {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

/// The `traceparent` that makes a receiver's span a child of `span`; `None`
/// when the span is not traced (no exporter).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let remote = context.span();
    let span_context = remote.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// The trace id of `span` as 32 hex digits, if it is traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let remote = context.span();
    let span_context = remote.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests;
