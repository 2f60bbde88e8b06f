//! Writes gathered into one system call per turn of the connection, as Envoy sends them.
//!
//! Envoy's HTTP/2 codec appends frames to the connection's output buffer, and the buffer is
//! written when the event loop comes back to the socket: a 100 KB request split into 16 KB
//! DATA frames leaves in one `writev`. The `h2` crate flushes after every DATA frame, so a
//! simulated proxy left to it makes seven system calls, and the control plane wakes up to
//! seven times, for each state-of-the-world ACK listing a thousand services. On a machine the
//! harness shares with strait, that cost lands on both and is not one a real mesh has.
//!
//! [`Coalesced`] keeps what is written and flushed during one poll of the connection task
//! and writes it at the start of the next poll, which it asks for. [`Turns`] counts the
//! polls: the connection future is wrapped in [`Turns::drive`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes kept at most before a write is forced, whatever the turn.
const KEPT: usize = 1 << 20;

/// The poll count of one connection task.
#[derive(Debug, Clone, Default)]
pub struct Turns(Arc<AtomicU64>);

impl Turns {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Drives `fut`, counting its polls. Until the first, writes go straight through (the
    /// HTTP/2 handshake is written by the task that connects).
    pub async fn drive<F: Future>(self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            fut.as_mut().poll(cx)
        })
        .await
    }
}

/// An I/O object whose writes of one turn leave together.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    turns: Turns,
    out: Vec<u8>,
    /// How much of `out` was written.
    written: usize,
    /// The turn whose flushes were put off.
    deferred: Option<u64>,
}

impl<T> Coalesced<T> {
    /// Wraps `inner`; `turns` must be driving the task that uses it.
    pub fn new(inner: T, turns: Turns) -> Self {
        Self {
            inner,
            turns,
            out: Vec::new(),
            written: 0,
            deferred: None,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.written
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes everything kept.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        // A burst's buffer is not kept for an idle connection.
        if self.out.capacity() > 64 << 10 {
            self.out = Vec::new();
        }
        self.written = 0;
        self.deferred = None;
        Poll::Ready(Ok(()))
    }

    fn keep(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending() + len > KEPT {
            std::task::ready!(self.drain(cx))?;
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.keep(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.keep(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending() == 0 {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        let now = self.turns.now();
        if now > 0 {
            match self.deferred {
                None => {
                    // Later in this turn, or at the start of the next: come back then.
                    self.deferred = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                Some(turn) if turn == now => return Poll::Ready(Ok(())),
                Some(_) => {}
            }
        }
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    /// Records every write; refuses writes while `full`.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        full: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_and_flush(io: &mut Coalesced<Sink>, cx: &mut Context<'_>, data: &[u8]) {
        assert!(matches!(
            Pin::new(&mut *io).poll_write(cx, data),
            Poll::Ready(Ok(n)) if n == data.len()
        ));
        assert!(matches!(
            Pin::new(&mut *io).poll_flush(cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn one_turns_writes_leave_in_one_write_at_the_next_turn() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let turns = Turns::default();
        let mut io = Coalesced::new(Sink::default(), turns.clone());
        turns.0.store(1, Ordering::Relaxed);
        for frame in [&b"head"[..], b"data1", b"data2"] {
            write_and_flush(&mut io, &mut cx, frame);
        }
        assert!(
            io.inner.writes.is_empty(),
            "nothing written within the turn"
        );
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "the next turn was asked for"
        );
        // The next turn's first flush writes everything, in order, at once.
        turns.0.store(2, Ordering::Relaxed);
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.inner.writes, [b"headdata1data2".to_vec()]);
        assert_eq!(io.pending(), 0);
    }

    #[test]
    fn before_the_first_turn_writes_go_straight_through() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut io = Coalesced::new(Sink::default(), Turns::default());
        write_and_flush(&mut io, &mut cx, b"preface");
        assert_eq!(io.inner.writes, [b"preface".to_vec()]);
    }

    #[test]
    fn a_full_socket_keeps_the_bytes_and_a_large_burst_is_written_early() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let turns = Turns::default();
        let mut io = Coalesced::new(Sink::default(), turns.clone());
        turns.0.store(1, Ordering::Relaxed);
        write_and_flush(&mut io, &mut cx, b"a");
        turns.0.store(2, Ordering::Relaxed);
        io.inner.full = true;
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(io.pending(), 1);
        io.inner.full = false;
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.inner.writes, [b"a".to_vec()]);
        // More than is kept: what was kept goes first, without waiting for a turn.
        let big = vec![7u8; KEPT];
        write_and_flush(&mut io, &mut cx, b"b");
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, &big),
            Poll::Ready(Ok(n)) if n == KEPT
        ));
        assert_eq!(io.inner.writes.len(), 2);
        assert_eq!(io.inner.writes[1], b"b");
        assert_eq!(io.pending(), KEPT);
        assert!(matches!(
            Pin::new(&mut io).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.inner.writes[2].len(), KEPT);
    }
}
