//! The gRPC plumbing of the ADS streams, done by hand where tonic would copy.
//!
//! Requests are decoded with tonic's streaming decoder. Responses are written as chunks
//! straight into the HTTP/2 body ([`ResponseBody`]): tonic's encoder would copy every
//! response into a per-stream buffer that keeps the size of the largest response for the
//! life of the stream, which with thousands of proxies is most of the control plane's memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::http;

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
    use http_body_util::BodyExt;

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
