//! AutoNAT v2's messages (the libp2p spec's `autonat-v2.proto`) and their
//! framing: each message is protobuf, prefixed by its length as an
//! unsigned varint. Reading is bounded: a frame longer than the message
//! can be is refused before it is read.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

/// The protocol a client asks a server on.
pub const DIAL_REQUEST: StreamProtocol = StreamProtocol::new("/libp2p/autonat/2/dial-request");
/// The protocol a server dials back on.
pub const DIAL_BACK: StreamProtocol = StreamProtocol::new("/libp2p/autonat/2/dial-back");

/// The largest request-stream message (a 4096-byte data chunk and its
/// framing), as the spec bounds it.
pub const MAX_MESSAGE: usize = 4104;
/// The largest dial-back message (a fixed64 nonce).
pub const MAX_DIAL_BACK: usize = 10;
/// The bytes a server may ask a client to send before it dials (the
/// spec's bounds: it costs the client what the dial costs the server).
pub const DATA_BYTES: std::ops::RangeInclusive<u64> = 30_000..=100_000;
/// The largest data chunk in one message.
pub const DATA_CHUNK: usize = 4096;

/// A message on the dial-request stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(oneof = "Msg", tags = "1, 2, 3, 4")]
    pub msg: Option<Msg>,
}

/// What a [`Message`] carries.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Msg {
    #[prost(message, tag = "1")]
    DialRequest(DialRequest),
    #[prost(message, tag = "2")]
    DialResponse(DialResponse),
    #[prost(message, tag = "3")]
    DialDataRequest(DialDataRequest),
    #[prost(message, tag = "4")]
    DialDataResponse(DialDataResponse),
}

/// Client to server: dial me back at one of these, and send this nonce.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub addrs: Vec<Vec<u8>>,
    #[prost(fixed64, tag = "2")]
    pub nonce: u64,
}

/// Server to client: send this many bytes first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialDataRequest {
    #[prost(uint32, tag = "1")]
    pub addr_idx: u32,
    #[prost(uint64, tag = "2")]
    pub num_bytes: u64,
}

/// Server to client: the answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(uint32, tag = "2")]
    pub addr_idx: u32,
    #[prost(int32, tag = "3")]
    pub dial_status: i32,
}

/// Client to server: bytes asked for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialDataResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// Server to client, on the dial-back connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialBack {
    #[prost(fixed64, tag = "1")]
    pub nonce: u64,
}

/// Client to server, on the dial-back stream: the nonce was ours.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialBackResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `DialResponse.status`: the request was served.
pub const STATUS_OK: i32 = 200;
/// `DialResponse.dial_status`: the server could not connect.
pub const DIAL_ERROR: i32 = 100;
/// `DialResponse.dial_status`: it connected, the dial-back stream failed.
pub const DIAL_BACK_ERROR: i32 = 101;
/// `DialResponse.dial_status`: dialled back.
pub const DIAL_OK: i32 = 200;

/// Writes `msg`, length-prefixed.
pub async fn send<M: prost::Message>(io: &mut (impl AsyncWrite + Unpin), msg: &M) -> io::Result<()> {
    io.write_all(&msg.encode_length_delimited_to_vec()).await?;
    io.flush().await
}

/// Reads one length-prefixed message of at most `max` bytes.
pub async fn recv<M: prost::Message + Default>(io: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<M> {
    let len = read_len(io).await?;
    if len > max {
        return Err(invalid(format!("a {len}-byte message (at most {max})")));
    }
    let mut buf = vec![0; len];
    io.read_exact(&mut buf).await?;
    decode(&buf)
}

/// Decodes one message (without its length prefix).
pub fn decode<M: prost::Message + Default>(buf: &[u8]) -> io::Result<M> {
    M::decode(buf).map_err(|e| invalid(format!("malformed message: {e}")))
}

async fn read_len(io: &mut (impl AsyncRead + Unpin)) -> io::Result<usize> {
    let mut len: u64 = 0;
    for i in 0..4 {
        let mut b = [0u8];
        io.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return usize::try_from(len).map_err(|_| invalid("a length beyond memory".into()));
        }
    }
    Err(invalid("a length prefix longer than 4 bytes".into()))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_message_round_trips_through_its_framing() {
        let msg = Message {
            msg: Some(Msg::DialRequest(DialRequest {
                addrs: vec![b"\x04\x7f\0\0\x01\x06\x10\x00".to_vec()],
                nonce: u64::MAX,
            })),
        };
        let mut buf = Vec::new();
        block(send(&mut buf, &msg)).unwrap();
        let back: Message = block(recv(&mut buf.as_slice(), MAX_MESSAGE)).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn the_largest_data_chunk_fits_a_message_and_a_nonce_fits_a_dial_back() {
        let data = Message {
            msg: Some(Msg::DialDataResponse(DialDataResponse {
                data: vec![0; DATA_CHUNK],
            })),
        };
        assert!(prost::Message::encoded_len(&data) <= MAX_MESSAGE);
        assert!(prost::Message::encoded_len(&DialBack { nonce: u64::MAX }) <= MAX_DIAL_BACK);
    }

    #[test]
    fn an_oversized_or_endless_length_is_refused_before_reading() {
        let mut long = Vec::new();
        prost::encoding::encode_varint(MAX_MESSAGE as u64 + 1, &mut long);
        let e = block(recv::<Message>(&mut long.as_slice(), MAX_MESSAGE)).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let endless = [0xffu8; 16];
        let e = block(recv::<Message>(&mut endless.as_slice(), MAX_MESSAGE)).unwrap_err();
        assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
    }

    #[test]
    fn the_ok_dial_back_response_is_an_empty_message() {
        // proto3 leaves the default (OK = 0) out: one zero length byte.
        let mut buf = Vec::new();
        block(send(&mut buf, &DialBackResponse { status: 0 })).unwrap();
        assert_eq!(buf, [0]);
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = block(recv::<Message>(&mut bytes.as_slice(), MAX_MESSAGE));
            let _ = block(recv::<DialBack>(&mut bytes.as_slice(), MAX_DIAL_BACK));
        }

        #[test]
        fn a_dial_request_round_trips(nonce in any::<u64>(), addrs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4)) {
            let msg = Message { msg: Some(Msg::DialRequest(DialRequest { addrs, nonce })) };
            let mut buf = Vec::new();
            block(send(&mut buf, &msg)).unwrap();
            let back: Message = block(recv(&mut buf.as_slice(), MAX_MESSAGE)).unwrap();
            prop_assert_eq!(back, msg);
        }
    }
}
