//! Encoding replies with hickory-server's response builder: the question is
//! echoed exactly as the client sent it (letter case included, which
//! resolvers using 0x20 randomization check), EDNS is answered when the
//! client used it, and a UDP reply that does not fit the client's buffer is
//! cut with TC set, so the client asks again over TCP.

use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinDecoder, BinEncodable, BinEncoder};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};

use super::upstream::EDNS_PAYLOAD;
use crate::audit::DnsTransport;

/// A reply to a parsed request.
pub(super) fn encode(
    request: &MessageRequest,
    transport: DnsTransport,
    rcode: ResponseCode,
    answers: &[Record],
    authorities: &[Record],
) -> Vec<u8> {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    metadata.response_code = rcode;
    let edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns
    });
    let max_size = match transport {
        // Never more than we advertise: bigger datagrams fragment.
        DnsTransport::Udp => request.max_payload().min(EDNS_PAYLOAD),
        DnsTransport::Tcp => u16::MAX,
    };
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    if response.destructive_emit(&mut encoder).is_ok() {
        return bytes;
    }
    tracing::warn!(id = metadata.id, "cannot encode a DNS reply; answering SERVFAIL");
    metadata.response_code = ResponseCode::ServFail;
    bare(metadata)
}

/// A reply to a message whose header could be read but nothing after it:
/// the header's id and the code, no question.
pub(super) fn header_only(header: &Header, rcode: ResponseCode) -> Vec<u8> {
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = rcode;
    let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
        return bare(metadata);
    };
    let response = MessageResponseBuilder::new(&queries, None).error_msg(&header.metadata, rcode);
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    if response.destructive_emit(&mut encoder).is_ok() {
        return bytes;
    }
    bare(metadata)
}

/// Twelve bytes of header, nothing else.
fn bare(metadata: Metadata) -> Vec<u8> {
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut bytes = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut bytes);
    // A bare header always fits an unbounded encoder.
    let _ = header.emit(&mut encoder);
    bytes
}

/// The presentation name of a response code.
pub(super) fn rcode_text(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}
