//! Socket helpers of the HTTP/1 paths: filling a read buffer, writing two slices in one call,
//! and a stream with bytes already read put back in front of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Reads what the socket has into `buf`, first making room for `size` bytes when less than
/// half of that is free; `Ok(0)` at the end of the stream.
pub fn poll_fill(
    io: &mut (impl AsyncRead + Unpin),
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    size: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes `first` then `second`, with as few system calls as the socket allows.
pub async fn write_both(
    stream: &mut (impl AsyncWrite + Unpin),
    first: &[u8],
    second: &[u8],
) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let mut slices = &mut slices[..];
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Writes a connection's last bytes and ends its sending side. They are sent with `MSG_MORE`, so
/// the kernel holds them for the FIN that the shutdown adds, and both leave in one segment,
/// which the client acknowledges once: a connection that closes after its answer costs both
/// ends one segment less. The shutdown, not the close that follows, sends them: a close with
/// unread bytes from the client would reset the connection and drop what is held.
pub async fn write_last(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // Tried at once (`try_io`): the socket nearly always has room for an answer, and waiting
        // for it through `async_io` first cost about 250 instructions per connection.
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(&*stream, bytes, rustix::net::SendFlags::MORE)
                .map_err(io::Error::from)
        });
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    // As for any close: an answer written whole is not failed by a client already gone.
    let _ = stream.shutdown().await;
    Ok(())
}

/// A connection handed to hyper: the bytes already read come first.
pub struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub fn new(io: S, prefix: Bytes) -> Self {
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let first = self.prefix.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// More bytes than the socket's buffers hold: the first tries fill them and the rest waits
    /// for room (the `WouldBlock` path) until the peer reads. Every byte arrives, then the end.
    #[tokio::test]
    async fn the_last_bytes_wait_for_room_and_all_arrive_before_the_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let peer = TcpStream::connect(address);
        let ((mut ours, _), mut peer) =
            tokio::join!(async { listener.accept().await.expect("accept") }, async {
                peer.await.expect("connect")
            });
        let bytes: Vec<u8> = (0..32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let reader = async {
            // Late, so that the buffers fill and the writer has to wait.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        };
        let writer = async {
            let written = write_last(&mut ours, &bytes).await;
            drop(ours);
            written
        };
        let (written, got) = tokio::join!(writer, reader);
        written.expect("written");
        assert_eq!(got.len(), bytes.len());
        assert!(got == bytes, "the bytes arrive in order, unchanged");
    }
}
