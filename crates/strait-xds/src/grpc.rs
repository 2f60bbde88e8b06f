//! The gRPC plumbing of the ADS streams, done by hand where tonic would keep buffers.
//!
//! tonic's codecs keep, per stream, a decode buffer the size of the largest request and an
//! encode buffer the size of the largest response, for the life of the stream; with thousands
//! of proxies (whose state-of-the-world EDS requests list every cluster name) those buffers
//! are most of the control plane's memory. Here requests are cut out of the body's own chunks
//! ([`RequestReader`]) and dropped once handled, and responses are written as chunks straight
//! into the HTTP/2 body ([`ResponseBody`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::http;

/// Why received bytes are not a well-formed gRPC message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The compressed flag is set; no compression is negotiated.
    #[error("compressed messages are not supported")]
    Compressed,
    /// The length prefix is above the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Received bytes cut into length-prefixed gRPC messages. Chunks are kept as they arrive; a
/// message is the chunk itself when it lies in one, and is copied into a buffer of exactly
/// its size only when it spans several.
pub struct MessageBuffer {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max: usize,
}

impl MessageBuffer {
    /// A buffer refusing messages above `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            buffered: 0,
            max,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.buffered += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// True when nothing is buffered (at the end of a stream: it did not end inside a
    /// message).
    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// The next complete message, if one is buffered.
    pub fn message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffered < 5 {
            return Ok(None);
        }
        let mut header = [0u8; 5];
        self.peek(&mut header);
        if header[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buffered < 5 + len {
            return Ok(None);
        }
        self.advance(5);
        Ok(Some(self.take(len)))
    }

    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for c in &self.chunks {
            let n = (out.len() - filled).min(c.len());
            out[filled..filled + n].copy_from_slice(&c[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.buffered -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The next `n` buffered bytes: the chunk itself when the message lies in one.
    fn take(&mut self, n: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.buffered -= n;
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        let mut need = n;
        while need > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = need.min(front.len());
            out.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            need -= k;
        }
        self.buffered -= n - need;
        out.freeze()
    }
}

/// Reads length-prefixed gRPC messages from a request body.
pub struct RequestReader<B> {
    body: Pin<Box<B>>,
    messages: MessageBuffer,
    ended: bool,
}

impl<B> RequestReader<B>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    /// A reader refusing messages above `max` bytes.
    pub fn new(body: B, max: usize) -> Self {
        Self {
            body: Box::pin(body),
            messages: MessageBuffer::new(max),
            ended: false,
        }
    }

    /// The next message, `None` at the end of the stream.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            match self.messages.message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e @ FrameError::Compressed) => {
                    return Err(Status::unimplemented(format!("request: {e}")));
                }
                Err(e @ FrameError::TooLarge { .. }) => {
                    return Err(Status::resource_exhausted(format!("request: {e}")));
                }
            }
            if self.ended {
                return if self.messages.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal("request stream ended inside a message"))
                };
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(e)) => {
                    let e: tonic::codegen::StdError = e.into();
                    return Err(Status::unavailable(format!("request stream: {e}")));
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        self.messages.push(data.copy_to_bytes(data.remaining()));
                    }
                }
            }
        }
    }
}

/// What a stream's task hands to its response body: a message as chunks, or the end.
pub type Outgoing = Result<Vec<Bytes>, Status>;

/// The body of a streaming gRPC response fed by a channel. Ends with the trailers of the
/// status the task sent (`OK` when the task just went away).
pub struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl ResponseBody {
    /// A body reading messages from `rx`.
    pub fn new(rx: mpsc::Receiver<Outgoing>) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.done = true;
        let mut map = http::HeaderMap::new();
        if status.add_header(&mut map).is_err() {
            // The message could not be a header value: say only the code.
            let _ = Status::new(status.code(), "").add_header(&mut map);
        }
        Frame::trailers(map)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunks))) => this.pending.extend(chunks),
                Poll::Ready(Some(Err(status))) => {
                    let t = this.trailers(&status);
                    return Poll::Ready(Some(Ok(t)));
                }
                Poll::Ready(None) => {
                    let t = this.trailers(&Status::ok(""));
                    return Poll::Ready(Some(Ok(t)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

/// A streaming gRPC response with `body`.
pub fn response(body: ResponseBody) -> http::Response<tonic::body::Body> {
    let mut r = http::Response::new(tonic::body::Body::new(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    fn body_of(
        chunks: Vec<Vec<u8>>,
    ) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_chunks() {
        let mut all = framed(b"hello");
        all.extend(framed(b""));
        all.extend(framed(&[7u8; 300]));
        // Every way of cutting the stream in two gives the same messages.
        for cut in 0..all.len() {
            let mut r = RequestReader::new(
                body_of(vec![all[..cut].to_vec(), all[cut..].to_vec()]),
                1000,
            );
            assert_eq!(
                r.message().await.expect("ok").as_deref(),
                Some(&b"hello"[..])
            );
            assert_eq!(r.message().await.expect("ok").as_deref(), Some(&b""[..]));
            assert_eq!(r.message().await.expect("ok").map(|m| m.len()), Some(300));
            assert!(r.message().await.expect("ok").is_none());
        }
    }

    #[test]
    fn a_buffer_reassembles_across_any_split_and_copies_only_what_spans_chunks() {
        let a: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut wire = framed(&a);
        wire.extend(framed(&[]));
        wire.extend(framed(b"short"));
        for size in [1, 2, 4, 5, 7, 64, 305, 1000] {
            let mut m = MessageBuffer::new(1000);
            let mut got = Vec::new();
            for piece in wire.chunks(size) {
                m.push(Bytes::copy_from_slice(piece));
                while let Some(msg) = m.message().expect("valid framing") {
                    got.push(msg.to_vec());
                }
            }
            assert_eq!(
                got,
                vec![a.clone(), vec![], b"short".to_vec()],
                "chunks of {size}"
            );
            assert!(m.is_empty());
        }
        let one = Bytes::from(framed(b"payload"));
        let mut m = MessageBuffer::new(1000);
        m.push(one.clone());
        let msg = m.message().expect("valid").expect("one message");
        assert_eq!(&msg[..], b"payload");
        assert_eq!(msg.as_ptr(), one[5..].as_ptr(), "not copied");
    }

    #[tokio::test]
    async fn oversized_compressed_and_truncated_are_refused() {
        let mut r = RequestReader::new(body_of(vec![framed(&[1u8; 50])]), 10);
        assert_eq!(
            r.message().await.expect_err("too big").code(),
            tonic::Code::ResourceExhausted
        );
        let mut c = framed(b"x");
        c[0] = 1;
        let mut r = RequestReader::new(body_of(vec![c]), 10);
        assert_eq!(
            r.message().await.expect_err("compressed").code(),
            tonic::Code::Unimplemented
        );
        let t = framed(b"abcdef");
        let mut r = RequestReader::new(body_of(vec![t[..7].to_vec()]), 10);
        assert!(r.message().await.is_err());
    }

    #[tokio::test]
    async fn chunks_then_status_trailers() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(vec![
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"c"),
        ]))
        .await
        .expect("send");
        tx.send(Err(Status::unavailable("moving on")))
            .await
            .expect("send");
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(d) = frame.data_ref() {
                data.extend_from_slice(d);
            } else {
                trailers = frame.into_trailers().ok();
            }
        }
        assert_eq!(data, b"abc");
        let t = trailers.expect("trailers");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"14"[..]));
        assert_eq!(
            t.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"moving%20on"[..])
        );
    }

    #[tokio::test]
    async fn task_gone_is_ok() {
        let (tx, rx) = mpsc::channel::<Outgoing>(4);
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let frame = body.frame().await.expect("a frame").expect("ok");
        let t = frame.into_trailers().expect("trailers");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert!(body.frame().await.is_none());
    }
}
