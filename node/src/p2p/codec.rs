//! The request-response codec of the transfer protocol: one u32
//! length-prefixed message each way, bounded in size, encoded as in
//! [`nixswarm_protocol::wire`].

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use nixswarm_protocol::wire::{MAX_REQUEST, MAX_RESPONSE, Request, Response};

/// The protocol's first version on the wire: no [`Request::PathInline`].
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/nixswarm/transfer/1");
/// Version 2: adds [`Request::PathInline`] (a small NAR's chunks with its
/// path info). Offered first; a request to a peer that speaks only
/// version 1 is sent [downgraded](Request::downgraded).
pub const PROTOCOL_V2: StreamProtocol = StreamProtocol::new("/nixswarm/transfer/2");

/// What a read of a request allocates before its bytes arrive: requests
/// come from any peer, so a message grows as it arrives.
const READ_STEP: usize = 64 * 1024;
/// What a read of a response allocates at once: a response answers one of
/// this node's own requests (their number is its own to bound), and a
/// full batch then lands in one buffer, with no copies as it grows.
const RESPONSE_STEP: usize = 4 << 20;

/// Length-prefixed bytes codec.
#[derive(Debug, Clone, Default)]
pub struct TransferCodec;

/// Reads a length-prefixed message of at most `max` bytes, allocating at
/// most `step` bytes ahead of what arrived. The buffer is zeroed once and
/// read into; it never reallocates while the message fits in `step`.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize, step: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {max}"),
        ));
    }
    let mut buf = Vec::new();
    while buf.len() < len {
        let at = buf.len();
        buf.resize(len.min(at + step), 0);
        let mut filled = at;
        while filled < buf.len() {
            match io.read(&mut buf[filled..]).await? {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("message ended after {filled} of {len} bytes"),
                    ));
                }
                n => filled += n,
            }
        }
    }
    Ok(buf)
}

/// Writes one length-prefixed message given in parts, then closes.
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, parts: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    io.write_all(&(len as u32).to_le_bytes()).await?;
    for p in parts {
        io.write_all(p.as_ref()).await?;
    }
    io.close().await
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for TransferCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Request> {
        Request::decode(&read_frame(io, MAX_REQUEST, READ_STEP).await?).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response> {
        let frame = bytes::Bytes::from(read_frame(io, MAX_RESPONSE, RESPONSE_STEP).await?);
        Response::decode_shared(&frame).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()> {
        let req = if *protocol == PROTOCOL { req.downgraded() } else { req };
        write_frame(io, &[req.encode()]).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> std::io::Result<()> {
        // Written piece by piece: chunk data goes from the store's buffers
        // to the stream without being copied into one message first.
        let parts = res.encode_parts();
        drop(res);
        write_frame(io, &parts).await
    }
}

#[cfg(test)]
mod tests {
    use libp2p::request_response::Codec as _;
    use nixswarm_protocol::StorePathHash;

    use super::*;

    #[test]
    fn a_version_1_peer_is_asked_for_the_path_info_alone() {
        futures::executor::block_on(async {
            let hash = StorePathHash::from_bytes(&[4; 20]);
            let inline = Request::PathInline {
                hash,
                max: 1 << 18,
                compress: true,
            };
            for (protocol, expected) in [(PROTOCOL, Request::PathInfo { hash }), (PROTOCOL_V2, inline.clone())] {
                let mut wire = futures::io::Cursor::new(Vec::new());
                TransferCodec
                    .write_request(&protocol, &mut wire, inline.clone())
                    .await
                    .unwrap();
                wire.set_position(0);
                let read = TransferCodec.read_request(&protocol, &mut wire).await.unwrap();
                assert_eq!(read, expected, "{protocol}");
            }
        });
    }

    #[test]
    fn a_frame_is_read_as_it_arrives_and_a_short_one_is_an_error() {
        futures::executor::block_on(async {
            // Announces 33 MiB, sends 10 bytes.
            let mut wire = (MAX_RESPONSE as u32).to_le_bytes().to_vec();
            wire.extend_from_slice(&[1; 10]);
            let e = read_frame(&mut futures::io::Cursor::new(wire), MAX_RESPONSE, READ_STEP)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
            let mut wire = 5u32.to_le_bytes().to_vec();
            wire.extend_from_slice(b"hello, and more");
            let got = read_frame(&mut futures::io::Cursor::new(wire), 16, 4).await.unwrap();
            assert_eq!(got, b"hello");
            let too_big = 17u32.to_le_bytes().to_vec();
            let e = read_frame(&mut futures::io::Cursor::new(too_big), 16, 4)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        });
    }
}
