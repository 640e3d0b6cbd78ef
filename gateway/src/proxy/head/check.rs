//! One request head, checked the way hyper will parse it: the same parser
//! (httparse, 100 headers), then the checks hyper's server makes after it
//! (method, URI, Content-Length, Transfer-Encoding, size). A head that
//! passes here, hyper accepts; a head that fails would have been hyper's
//! bare 400.

use super::Framing;

/// Largest request head accepted (request line plus headers). hyper's read
/// buffer is this size too: a head must end before it fills.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's limit on header fields.
const MAX_HEADERS: usize = 100;
/// hyper's limit on the request target.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// What was wrong with a request head. Copy and free of client bytes: the
/// answer and the audit line name the problem, never echo the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Method,
    Target,
    TargetTooLong,
    Version,
    HeaderName,
    HeaderValue,
    LineEnding,
    TooManyHeaders,
    ContentLength,
    TransferEncoding,
    TooLarge,
}

impl Malformed {
    /// What the client is told, and how to fix it.
    pub fn detail(self) -> &'static str {
        match self {
            Malformed::Method => "the request line does not start with a method token (GET, POST, CONNECT ...)",
            Malformed::Target => {
                "the request target is not a valid URI: write the host plainly in ASCII \
                 (no percent-encoding, IDNA names as xn--), e.g. GET http://example.com/path"
            }
            Malformed::TargetTooLong => "the request target is longer than 65534 bytes",
            Malformed::Version => "the request line does not end with HTTP/1.0 or HTTP/1.1",
            Malformed::HeaderName => "a header name is not a token (letters, digits, !#$%&'*+-.^_`|~)",
            Malformed::HeaderValue => "a header value contains a control character",
            Malformed::LineEnding => "a line of the request head does not end with CRLF",
            Malformed::TooManyHeaders => "the request has more than 100 header fields",
            Malformed::ContentLength => "Content-Length is not a decimal number, or two of them differ",
            Malformed::TransferEncoding => {
                "Transfer-Encoding must end with chunked, and HTTP/1.0 requests cannot use it"
            }
            Malformed::TooLarge => "the request head is larger than 64 KiB",
        }
    }

    /// 431 and 414 for heads too big to read, 400 for the rest (hyper's choice too).
    pub fn status(self) -> http::StatusCode {
        match self {
            Malformed::TooLarge | Malformed::TooManyHeaders => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Malformed::TargetTooLong => http::StatusCode::URI_TOO_LONG,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// The outcome of looking at the bytes where a head starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Not a whole head yet, and nothing wrong so far.
    Partial,
    /// A head of `len` bytes that hyper will accept; `then` says how to
    /// find the next head.
    Head {
        len: usize,
        then: Framing,
    },
    Malformed(Malformed),
}

pub fn check(bytes: &[u8]) -> Checked {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD_BYTES => {
            return Checked::Malformed(Malformed::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Checked::Partial,
        Err(error) => {
            return Checked::Malformed(match error {
                // As hyper tells them apart: a bad token before the method
                // ends is the method's, after it the target's.
                httparse::Error::Token if request.method.is_none() => Malformed::Method,
                httparse::Error::Token => Malformed::Target,
                httparse::Error::HeaderName => Malformed::HeaderName,
                httparse::Error::HeaderValue => Malformed::HeaderValue,
                httparse::Error::NewLine => Malformed::LineEnding,
                httparse::Error::TooManyHeaders => Malformed::TooManyHeaders,
                httparse::Error::Version | httparse::Error::Status => Malformed::Version,
            });
        }
    };
    if len >= MAX_HEAD_BYTES {
        return Checked::Malformed(Malformed::TooLarge);
    }
    match head(&request) {
        Ok(then) => Checked::Head { len, then },
        Err(malformed) => Checked::Malformed(malformed),
    }
}

/// hyper's checks after httparse, and where the next head starts.
fn head(request: &httparse::Request<'_, '_>) -> Result<Framing, Malformed> {
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version) else {
        return Err(Malformed::Version);
    };
    if path.len() > MAX_URI_LEN {
        return Err(Malformed::TargetTooLong);
    }
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| Malformed::Method)?;
    http::Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(path.as_bytes())).map_err(|_| Malformed::Target)?;
    let http11 = version == 1;
    let (mut content_length, mut transfer_encoding, mut chunked, mut upgrade) = (None, false, false, false);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(Malformed::TransferEncoding);
            }
            transfer_encoding = true;
            // The last encoding of the last header decides.
            chunked = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            if transfer_encoding {
                continue;
            }
            // hyper keeps the top two values for "unknown" and "chunked".
            let length = digits(header.value)
                .filter(|length| *length <= u64::MAX - 2)
                .ok_or(Malformed::ContentLength)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(Malformed::ContentLength);
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    if transfer_encoding && !chunked {
        return Err(Malformed::TransferEncoding);
    }
    Ok(if method == http::Method::CONNECT || upgrade {
        // A tunnel (or an upgrade) follows: its bytes are not HTTP.
        Framing::Opaque
    } else if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::Head,
            Some(length) => Framing::Length(length),
        }
    })
}

/// A Content-Length value: decimal digits only, as hyper reads it.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |total, byte| match byte {
        b'0'..=b'9' => total.checked_mul(10)?.checked_add(u64::from(byte - b'0')),
        _ => None,
    })
}
