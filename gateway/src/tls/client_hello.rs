//! Reading the server name from a TLS ClientHello without terminating TLS:
//! the passthrough path peeks at the first record of a tunnel to stop
//! domain fronting (an SNI that differs from the CONNECT host).
//!
//! Only what is needed is parsed, every length is checked against what is
//! left, and anything unexpected is an answer, never a panic: this runs on
//! bytes an agent chose.

/// What the first bytes of a tunnel say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed to decide.
    Incomplete,
    /// Not a TLS handshake record.
    NotTls,
    /// A ClientHello; its SNI host name, if it sent one.
    ClientHello { sni: Option<String> },
    /// A handshake record that is not a well-formed ClientHello.
    Malformed,
}

/// The longest ClientHello we wait for: a record is at most 16 KiB plus its
/// header; a hello split over more records than that is refused.
pub const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

/// Reads the ClientHello at the start of `bytes`. It must fit in the first
/// TLS record, as every mainstream client sends it (post-quantum key shares
/// make hellos near 1.8 KB, still far below a record).
pub fn peek(bytes: &[u8]) -> Peek {
    let Some(&content_type) = bytes.first() else {
        return Peek::Incomplete;
    };
    if content_type != 0x16 {
        return Peek::NotTls;
    }
    if bytes.len() < 5 {
        return Peek::Incomplete;
    }
    if bytes[1] != 0x03 {
        return Peek::NotTls;
    }
    let record_len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    if record_len == 0 || record_len > 16 * 1024 + 256 {
        return Peek::Malformed;
    }
    let Some(record) = bytes.get(5..5 + record_len) else {
        return Peek::Incomplete;
    };
    match parse_hello(record) {
        Some(sni) => Peek::ClientHello { sni },
        None => Peek::Malformed,
    }
}

/// A cursor that refuses to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// `Some(sni)` for a ClientHello (RFC 8446 §4.1.2), `None` if malformed.
fn parse_hello(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    // The hello must be whole within this record (see `peek`).
    let mut r = Reader(r.take(body_len)?);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all: no SNI
    }
    let mut extensions = Reader(r.vec16()?);
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == 0 {
            if sni.is_some() {
                return None; // two server_name extensions: ambiguous, refuse
            }
            sni = Some(server_name(data)?);
        }
    }
    Some(sni)
}

/// The host_name entry of a server_name extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Option<String> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    let mut host = None;
    while !list.0.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type == 0 {
            if host.is_some() {
                return None;
            }
            let text = std::str::from_utf8(name).ok()?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            host = Some(text.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    host
}
