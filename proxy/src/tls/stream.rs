//! A connection that is plain TCP or TLS over TCP, for clients and backends
//! alike.
//!
//! Plain connections keep the readiness-based reads of the hot path (an
//! idle connection holds no buffer; a read that drains the socket clears
//! its readiness without a second system call). TLS connections read
//! through rustls, which keeps the bytes it has decrypted until they are
//! taken, so every read here is cancel-safe either way.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

/// Room offered to one read.
pub const READ_CHUNK: usize = 16 * 1024;

/// Read buffers kept on a thread for its next reads (see [`recycle`]).
const SPARES: usize = 16;

thread_local! {
    /// Read buffers that clients gone idle on this thread gave back: the
    /// next client that reads takes one instead of allocating its room.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Takes an empty read buffer's room from its owner (a client going idle
/// keeps none) and keeps it for the next read on this thread, which then
/// allocates nothing (see `room`). A buffer that is not empty stays; one
/// with no room has nothing to give.
pub fn recycle(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut b = std::mem::take(buf);
    // Room for a whole read without allocating (its own, or the whole
    // buffer again once no frame read into it is kept), and no more
    // than twice that: a large result's room is freed.
    if b.capacity() <= 2 * READ_CHUNK && b.try_reclaim(READ_CHUNK) {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(b);
            }
        });
    }
}

/// Makes room in `buf` for one read: a spare buffer of this thread when
/// `buf` has none (see [`recycle`]).
fn room(buf: &mut BytesMut) {
    if buf.capacity() == 0
        && let Some(b) = SPARE.with(|s| s.borrow_mut().pop())
    {
        *buf = b;
    }
    buf.reserve(READ_CHUNK);
}

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is ~1 KiB of state beside its buffers.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Registers a plain TCP stream with the current runtime's reactor
    /// instead of the one it was made on: the socket is duplicated, the
    /// copy registered here, and the original (and its registration)
    /// dropped. A TLS stream stays as it is.
    pub fn rehome(&mut self) -> io::Result<()> {
        if let Stream::Plain(s) = self {
            let fd = std::os::fd::AsFd::as_fd(&*s).try_clone_to_owned()?;
            *s = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        }
        Ok(())
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.get_ref().0,
        }
    }

    /// The certificate chain the peer presented (leaf first), if any.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.get_ref().1.peer_certificates(),
        }
    }

    /// Waits for data and appends what is there to `buf`; `Ok(0)` when the
    /// peer closed. Cancel-safe.
    pub async fn read_more(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, buf)).await
    }

    /// Appends what the peer has sent to `buf` (`Ok(0)`: it closed), or
    /// registers for the next data. Polled in place: a waiting read holds
    /// no future of its own, so an idle client's task keeps no room for one.
    pub fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => loop {
                match s.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                match try_read_drained(s, buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            Stream::Tls(t) => {
                room(buf);
                tokio_util::io::poll_read_buf(Pin::new(t.as_mut()), cx, buf)
            }
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(t) => {
                t.write_all(data).await?;
                t.flush().await
            }
        }
    }

    /// One step of writing `data` (then flushing, once it is all written)
    /// while reading what the peer sends meanwhile into `buf`: a server
    /// blocked on sending results stops reading its input, so a large
    /// pipelined batch would deadlock otherwise. `reading` says when the
    /// peer is read (see [`Reading`]): the caller stops reading while what
    /// it read has not been passed on, which is how backpressure reaches
    /// the server. On plain TCP a write that takes all of `data` is the
    /// last step (`Flushed`): there is nothing to flush.
    pub fn poll_write_reading(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        buf: &mut BytesMut,
        reading: Reading,
    ) -> Poll<io::Result<Step>> {
        if reading == Reading::First
            && let Poll::Ready(r) = self.poll_read_some(cx, buf)
        {
            return Poll::Ready(r);
        }
        let wrote = if data.is_empty() {
            Pin::new(&mut *self)
                .poll_flush(cx)
                .map_ok(|()| Step::Flushed)
        } else {
            let plain = matches!(self, Stream::Plain(_));
            Pin::new(&mut *self)
                .poll_write(cx, data)
                .map_ok(|n| match n {
                    n if plain && n == data.len() => Step::Flushed,
                    n => Step::Wrote(n),
                })
        };
        match wrote {
            Poll::Ready(Ok(Step::Wrote(0))) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            // The write waits: the peer is read meanwhile (and the task
            // woken when it sends), whatever was written before.
            Poll::Pending if reading == Reading::WhenBlocked => self.poll_read_some(cx, buf),
            other => other,
        }
    }

    /// Appends what the peer has sent to `buf`, if anything; registers for
    /// the next data otherwise. A plain connection takes a buffer only when
    /// it is readable.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Step>> {
        let read = match self.poll_read_more(cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(match read {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(Step::Read),
            Err(e) => Err(e),
        })
    }
}

/// When [`Stream::poll_write_reading`] reads what the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Not at all: what was read before has not been passed on yet.
    Off,
    /// Before writing: in the middle of a batch, so that an early error
    /// reaches the client while it still writes the rest of its batch, as
    /// on a direct connection.
    First,
    /// Only while the write cannot go on: the first write of a batch,
    /// which most often takes it all, costs no read.
    WhenBlocked,
}

/// What one step of [`Stream::poll_write_reading`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wrote(usize),
    Flushed,
    Read,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads what `stream` holds into `buf` without waiting. A read shorter
/// than the room offered means the socket is drained: its readiness is
/// cleared then, so the next wait goes to epoll instead of costing a read
/// that finds nothing (tokio clears readiness only on `WouldBlock`).
/// Data that arrives meanwhile sets readiness again (tokio clears only the
/// readiness it saw before the read).
pub fn try_read_drained(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    room(buf);
    let room = buf.capacity() - buf.len();
    let mut got = None;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < room {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, got) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn spares() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[test]
    fn an_emptied_read_buffer_is_kept_for_the_next_read_on_its_thread() {
        // A read's room, emptied once its frames are handled and dropped.
        let mut buf = BytesMut::new();
        room(&mut buf);
        let at = buf.as_ptr();
        buf.put_slice(b"Q\0\0\0\x05x");
        drop(buf.split_to(6));
        recycle(&mut buf);
        assert_eq!(buf.capacity(), 0, "the owner keeps no room");
        assert_eq!(spares(), 1);
        // The next read on the thread takes that room, from its start.
        let mut next = BytesMut::new();
        room(&mut next);
        assert_eq!(spares(), 0);
        assert_eq!(next.as_ptr(), at);
        assert!(next.capacity() >= READ_CHUNK);
        // Not empty: kept by its owner. Larger than two reads: freed.
        next.put_u8(1);
        recycle(&mut next);
        assert_eq!((next.len(), spares()), (1, 0));
        let mut large = BytesMut::with_capacity(4 * READ_CHUNK);
        recycle(&mut large);
        assert_eq!((large.capacity(), spares()), (0, 0));
        // At most SPARES are kept.
        for _ in 0..SPARES + 3 {
            let mut b = BytesMut::with_capacity(READ_CHUNK);
            recycle(&mut b);
        }
        assert_eq!(spares(), SPARES);
    }
}
