//! Test builds only (feature `test-hooks`): a delay line on every TCP
//! connection, so tests and benchmarks can model WAN round trips on
//! loopback, where netem is not available.
//!
//! Every byte this node writes to a peer, DHT and transfer alike (the delay
//! sits below noise and yamux), leaves after `delay`: between two delayed
//! nodes a round trip takes twice the delay. Reads are untouched. The line
//! is a bounded queue drained by a task of its own, so a connection's
//! writer is never blocked by the delay, only by a full line.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade;
use libp2p::{PeerId, identity, noise, tcp, yamux};
use tokio::io::{AsyncWriteExt as _, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::PollSender;

/// Writes queued per connection (each at most [`PIECE`] bytes).
const LINE: usize = 16384;
/// Largest piece of one write kept in the line.
const PIECE: usize = 16 * 1024;

/// A TCP stream whose writes reach the peer `delay` later.
#[derive(Debug)]
pub struct Delayed {
    read: OwnedReadHalf,
    line: PollSender<(Instant, Bytes)>,
    delay: Duration,
}

impl Delayed {
    fn new(stream: tcp::tokio::TcpStream, delay: Duration) -> Self {
        let (read, write) = stream.0.into_split();
        let (tx, rx) = mpsc::channel(LINE);
        tokio::spawn(drain(write, rx));
        Self {
            read,
            line: PollSender::new(tx),
            delay,
        }
    }
}

async fn drain(mut write: OwnedWriteHalf, mut rx: mpsc::Receiver<(Instant, Bytes)>) {
    while let Some((due, piece)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if write.write_all(&piece).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

impl AsyncRead for Delayed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(tokio::io::AsyncRead::poll_read(Pin::new(&mut self.read), cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }
}

impl AsyncWrite for Delayed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.line.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(PIECE);
        let due = Instant::now() + self.delay;
        self.line
            .send_item((due, Bytes::copy_from_slice(&buf[..n])))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // In the line is as far as a write goes before its time.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The drain task writes what is queued, then shuts the socket.
        self.line.close();
        Poll::Ready(Ok(()))
    }
}

/// TCP with the delay line under noise and yamux, for
/// `SwarmBuilder::with_other_transport`.
pub fn transport(
    key: &identity::Keypair,
    delay: Duration,
) -> Result<libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| Delayed::new(stream, delay))
        .upgrade(upgrade::Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}
