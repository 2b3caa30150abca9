//! The servers' gRPC codec: tonic-prost's, except that a request whose bytes do not decode is the
//! client's error.
//!
//! tonic-prost answers undecodable bytes with INTERNAL and no reason, which the catalogue reserves
//! for bugs of the switch. Every service decodes its requests here (`build.rs` names this codec for
//! the servers), so unary requests, `PayStream` items and `Subscribe` messages alike are refused
//! with INVALID_ARGUMENT and `REASON_REQUEST_MALFORMED`: the status the decoder returns becomes the
//! call's (unary) or is what the service reads from its request stream (streams).

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::proto::Reason;
use crate::reason::Refusal;

/// Encodes answers as tonic-prost does; decodes requests with `RequestDecoder`.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    prost: ProstCodec<T, U>,
}

// By hand: derived, it would ask `Default` of the message types for no reason.
impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec { prost: ProstCodec::default() }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { prost: self.prost.decoder() }
    }
}

/// tonic-prost's decoder with its decode errors made refusals.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    prost: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // Only prost's errors reach here: tonic checks framing, size and compression before.
        self.prost.decode(buffer).map_err(|status| malformed(status.message()))
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.prost.buffer_settings()
    }
}

/// The refusal of a request whose bytes are not the method's request message.
pub fn malformed(detail: &str) -> Status {
    Refusal::new(Reason::RequestMalformed, format!("the request does not decode as the method's message: {detail}"))
        .into()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_malformed_request_is_the_clients_error_with_a_reason() {
        let status = malformed("invalid wire type");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(crate::reason::reason_of(&status), Some(Reason::RequestMalformed));
    }
}
