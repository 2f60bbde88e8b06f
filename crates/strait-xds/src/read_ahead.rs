//! Reading a connection in large pieces.
//!
//! The HTTP/2 codec reads a socket about 8 KB at a time, so a state-of-the-world ACK that
//! lists every cluster (about 100 KB with 2,000 of them) costs thirteen `recvfrom` calls. A
//! [`ReadAhead`] reads what the socket holds, up to [`PIECE`], in one call and serves the
//! codec's small reads from that copy. Its buffer is only borrowed while it holds unread
//! bytes: once drained it goes back to a small per-thread spare list, so idle connections
//! hold none and a busy server keeps about one per worker thread. A connection whose reader
//! stops halfway (HTTP/2 stops reading while its writes are blocked) keeps its buffer, so at
//! most [`HELD_MAX`] buffers are held at once; beyond that, reads go straight to the socket
//! and unread bytes stay in the kernel.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The largest read made at once.
pub const PIECE: usize = 64 * 1024;
/// Drained buffers each thread keeps for the next read.
const SPARE: usize = 8;
/// Buffers holding unread bytes, across all connections, at most (4 MB).
pub const HELD_MAX: usize = 64;

/// Buffers holding unread bytes now.
static HELD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SPARES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn borrow() -> Box<[u8]> {
    SPARES
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; PIECE].into_boxed_slice())
}

/// Keeps `buf` for the next read, unless the thread has enough (or is ending: a connection
/// dropped while thread-locals are torn down frees its buffer).
fn give_back(buf: Box<[u8]>) {
    let _ = SPARES.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE {
            s.push(buf);
        }
    });
}

/// Bytes read from a socket and not yet handed to its reader.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    held: Option<Held>,
}

/// A borrowed buffer and the range of it not yet handed over (never empty).
#[derive(Debug)]
struct Held {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadAhead {
    /// Fills `out` from the bytes read ahead, or reads `inner` (in one piece of up to
    /// [`PIECE`] bytes when `out` has less room than that).
    pub(crate) fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        inner: &mut R,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let held = match &mut self.held {
            Some(held) => held,
            None => {
                if out.remaining() >= PIECE || HELD.load(Ordering::Relaxed) >= HELD_MAX {
                    return Pin::new(inner).poll_read(cx, out);
                }
                let mut buf = borrow();
                let mut piece = ReadBuf::new(&mut buf);
                match Pin::new(inner).poll_read(cx, &mut piece) {
                    Poll::Ready(Ok(())) if !piece.filled().is_empty() => {
                        let end = piece.filled().len();
                        HELD.fetch_add(1, Ordering::Relaxed);
                        self.held.insert(Held { buf, start: 0, end })
                    }
                    other => {
                        give_back(buf);
                        return other;
                    }
                }
            }
        };
        let n = out.remaining().min(held.end - held.start);
        out.put_slice(&held.buf[held.start..held.start + n]);
        held.start += n;
        if held.start == held.end {
            self.release();
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the buffer back (its unread bytes, if any, are dropped).
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            HELD.fetch_sub(1, Ordering::Relaxed);
            give_back(held.buf);
        }
    }

    /// Whether a buffer is held.
    #[cfg(test)]
    fn holds(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// A reader counting its reads.
    struct Counted<R> {
        inner: R,
        reads: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    async fn read(
        ahead: &mut ReadAhead,
        r: &mut Counted<impl AsyncRead + Unpin>,
        n: usize,
    ) -> Vec<u8> {
        let mut space = vec![0u8; n];
        let mut out = ReadBuf::new(&mut space);
        poll_fn(|cx| ahead.poll_read(r, cx, &mut out))
            .await
            .expect("read");
        out.filled().to_vec()
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let (mut tx, rx) = tokio::io::duplex(4 * PIECE);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).await.expect("write");
        let mut r = Counted {
            inner: rx,
            reads: 0,
        };
        let mut ahead = ReadAhead::default();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            got.extend(read(&mut ahead, &mut r, 8 * 1024).await);
        }
        assert_eq!(got, sent);
        // 100,000 bytes in reads of 8 KB: 13 reads of the socket without read-ahead.
        assert_eq!(r.reads, 2);
        assert!(!ahead.holds(), "a drained buffer is given back");
        // End of stream passes through, and holds nothing.
        drop(tx);
        assert!(read(&mut ahead, &mut r, 8 * 1024).await.is_empty());
        assert!(!ahead.holds());
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_socket() {
        let (mut tx, rx) = tokio::io::duplex(4 * PIECE);
        tx.write_all(&[7u8; 1000]).await.expect("write");
        let mut r = Counted {
            inner: rx,
            reads: 0,
        };
        let mut ahead = ReadAhead::default();
        assert_eq!(read(&mut ahead, &mut r, PIECE).await, vec![7u8; 1000]);
        assert!(!ahead.holds());
        // A small read keeps what is left for the next one.
        tx.write_all(b"abcdef").await.expect("write");
        assert_eq!(read(&mut ahead, &mut r, 2).await, b"ab");
        assert!(ahead.holds());
        assert_eq!(read(&mut ahead, &mut r, PIECE).await, b"cdef");
        assert!(!ahead.holds());
        assert_eq!(r.reads, 2);
    }

    #[tokio::test]
    async fn at_most_a_bounded_number_of_buffers_is_held() {
        let mut held = Vec::new();
        let mut direct = None;
        // Other tests may hold a buffer or two at the same time.
        for _ in 0..HELD_MAX + 4 {
            let (mut tx, rx) = tokio::io::duplex(PIECE);
            tx.write_all(b"abcdef").await.expect("write");
            let mut r = Counted {
                inner: rx,
                reads: 0,
            };
            let mut ahead = ReadAhead::default();
            assert_eq!(read(&mut ahead, &mut r, 2).await, b"ab");
            if !ahead.holds() {
                // Past the bound: the read went to the socket, which keeps the rest.
                assert_eq!(read(&mut ahead, &mut r, 16).await, b"cdef");
                direct = Some(held.len());
                break;
            }
            held.push((tx, r, ahead));
        }
        let direct = direct.expect("a read past the bound");
        assert!(direct <= HELD_MAX, "{direct} buffers held");
        // Draining a held buffer gives it back: the next reader may hold one again.
        let (_tx, mut r, mut ahead) = held.pop().expect("held");
        assert_eq!(read(&mut ahead, &mut r, 16).await, b"cdef");
        assert!(!ahead.holds());
        drop(held);
        assert!(HELD.load(Ordering::Relaxed) < HELD_MAX);
    }

    #[tokio::test]
    async fn waiting_for_bytes_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(PIECE);
        let mut r = Counted {
            inner: rx,
            reads: 0,
        };
        let mut ahead = ReadAhead::default();
        let mut space = [0u8; 16];
        let mut out = ReadBuf::new(&mut space);
        let pending = poll_fn(|cx| Poll::Ready(ahead.poll_read(&mut r, cx, &mut out))).await;
        assert!(pending.is_pending());
        assert!(!ahead.holds());
        tx.write_all(b"x").await.expect("write");
        assert_eq!(read(&mut ahead, &mut r, 16).await, b"x");
    }
}
