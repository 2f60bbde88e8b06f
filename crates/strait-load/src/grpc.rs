//! One bidirectional gRPC stream on its own HTTP/2 connection, for thousands of simulated
//! proxies in one process.
//!
//! tonic's client keeps, for each stream, a receive buffer as large as the largest message it
//! has seen, grown by doubling. With 2,000 simulated proxies each receiving megabyte-sized
//! route configurations and load assignments, those buffers held 5–6 GB, and faulting that
//! memory in was most of the harness's CPU during initial sync: CPU taken from the control
//! plane it measures on a shared machine. Here a message is assembled in a buffer of exactly
//! its size (or not copied at all when one HTTP/2 data frame holds it) and freed once
//! decoded, and resources keep pointing into it instead of being copied again.
//!
//! The HTTP/2 settings are the peer's defaults except the flow-control windows, so the server
//! sees frames of the size a stock Envoy accepts.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Flow-control window of the stream and of the connection. Received data is handed back
/// as soon as it is copied out, so this only needs to cover a few round trips on loopback.
const WINDOW: u32 = 1 << 20;

/// Largest message accepted.
const MAX_MESSAGE: usize = 1 << 30;

/// The sending half: length-prefixed messages as HTTP/2 data.
pub struct Tx {
    send: h2::SendStream<Bytes>,
}

impl Tx {
    /// Queues `m` for sending (HTTP/2 buffers what the window does not yet allow).
    pub fn send<M: Message>(&mut self, m: &M) -> Result<()> {
        self.send_with(m, Bytes::new())
    }

    /// Queues the message made of `m`'s fields followed by `tail`, fields already encoded
    /// (the protobuf encoding of a message is the concatenation of its fields', in any order).
    /// `tail` is sent as it is, not copied.
    pub fn send_with<M: Message>(&mut self, m: &M, tail: Bytes) -> Result<()> {
        let closed = |_| Error::Closed;
        self.send
            .send_data(frame(m, tail.len()), false)
            .map_err(closed)?;
        if !tail.is_empty() {
            self.send.send_data(tail, false).map_err(closed)?;
        }
        Ok(())
    }
}

/// The receiving half.
pub struct Rx {
    recv: h2::RecvStream,
    frames: Deframer,
    /// Ends the connection task with the stream.
    _conn: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Rx {
    /// The next message, or `None` once the server ends the stream with status OK.
    pub async fn message(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(m) = self.frames.next() {
                return Ok(Some(m));
            }
            match self.recv.data().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    self.frames.push(chunk)?;
                    // Errors here mean the stream is gone; the next read reports it.
                    let _ = self.recv.flow_control().release_capacity(n);
                }
                Some(Err(e)) => return Err(stream_error(&e)),
                None => {
                    if self.frames.partial() {
                        return Err(Error::Stream(
                            "the stream ended inside a message".to_string(),
                        ));
                    }
                    let trailers = self.recv.trailers().await.map_err(|e| stream_error(&e))?;
                    return match trailers.as_ref().map(grpc_status) {
                        Some(Some(e)) => Err(e),
                        _ => Ok(None),
                    };
                }
            }
        }
    }
}

fn stream_error(e: &h2::Error) -> Error {
    Error::Stream(e.to_string())
}

/// `grpc-status` and `grpc-message` of a header block, when they say the call failed.
fn grpc_status(headers: &http::HeaderMap) -> Option<Error> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    if code == "0" {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(Error::Stream(format!("grpc-status {code}: {message}")))
}

/// An HTTP/2 connection ready for one call.
pub struct Connection {
    addr: String,
    client: h2::client::SendRequest<Bytes>,
    conn: AbortOnDrop,
}

/// Connects to `addr` (`host:port`) and completes the HTTP/2 handshake.
pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<Connection> {
    let connect_err = |message: String| Error::Connect {
        addr: addr.to_string(),
        message,
    };
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(format!("no connection after {connect_timeout:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| connect_err(e.to_string()))?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        // The stream reports the failure; the connection only has to be driven.
        let _ = connection.await;
    }));
    let client = client
        .ready()
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    Ok(Connection {
        addr: addr.to_string(),
        client,
        conn,
    })
}

impl Connection {
    /// Opens the streaming call `path` (`/package.Service/Method`), sending `first` before
    /// waiting for the response headers.
    pub async fn open<M: Message>(mut self, path: &str, first: &[M]) -> Result<(Tx, Rx)> {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| Error::Connect {
                addr: self.addr.clone(),
                message: e.to_string(),
            })?;
        let (response, send) = self
            .client
            .send_request(request, false)
            .map_err(|e| stream_error(&e))?;
        let mut tx = Tx { send };
        for m in first {
            tx.send(m)?;
        }
        let response = response.await.map_err(|e| stream_error(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(Error::Stream(format!("HTTP status {}", response.status())));
        }
        // A response that is only headers carries the call's status in them.
        if let Some(e) = grpc_status(response.headers()) {
            return Err(e);
        }
        let rx = Rx {
            recv: response.into_body(),
            frames: Deframer::default(),
            _conn: self.conn,
        };
        Ok((tx, rx))
    }
}

/// `m` with gRPC's prefix: not compressed, then the length of the message (big-endian u32),
/// which has `more` bytes after `m`'s.
fn frame<M: Message>(m: &M, more: usize) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32((len + more) as u32);
    // Cannot fail: the buffer has room for the whole message.
    let _ = m.encode(&mut buf);
    buf.freeze()
}

/// Splits received data into gRPC messages.
#[derive(Default)]
struct Deframer {
    head: [u8; 5],
    head_len: usize,
    /// Length of the message being assembled, once its prefix is complete.
    want: Option<usize>,
    body: Vec<u8>,
    ready: std::collections::VecDeque<Bytes>,
}

impl Deframer {
    fn next(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// True in the middle of a message.
    fn partial(&self) -> bool {
        self.head_len > 0 || self.want.is_some()
    }

    fn push(&mut self, mut chunk: Bytes) -> Result<()> {
        while chunk.has_remaining() {
            let Some(want) = self.want else {
                let n = (5 - self.head_len).min(chunk.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&chunk[..n]);
                self.head_len += n;
                chunk.advance(n);
                if self.head_len == 5 {
                    self.head_len = 0;
                    if self.head[0] != 0 {
                        return Err(Error::Stream(
                            "compressed message, and no compression was asked for".to_string(),
                        ));
                    }
                    let len = u32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]) as usize;
                    if len > MAX_MESSAGE {
                        return Err(Error::Stream(format!(
                            "message of {len} bytes, more than {MAX_MESSAGE}"
                        )));
                    }
                    if len == 0 {
                        self.ready.push_back(Bytes::new());
                    } else {
                        self.want = Some(len);
                    }
                }
                continue;
            };
            if self.body.is_empty() && chunk.len() >= want {
                // The whole message in this chunk: no copy.
                self.ready.push_back(chunk.split_to(want));
                self.want = None;
                continue;
            }
            if self.body.capacity() == 0 {
                self.body = Vec::with_capacity(want);
            }
            let n = (want - self.body.len()).min(chunk.len());
            self.body.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            if self.body.len() == want {
                self.ready
                    .push_back(Bytes::from(std::mem::take(&mut self.body)));
                self.want = None;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn messages_are_reassembled_across_any_split() {
        let a: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let b = b"short".to_vec();
        let mut wire = prefixed(&a);
        wire.extend(prefixed(&[]));
        wire.extend(prefixed(&b));
        for size in [1, 2, 4, 5, 7, 64, 305, 1000] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for piece in wire.chunks(size) {
                d.push(Bytes::copy_from_slice(piece))
                    .expect("valid framing");
                while let Some(m) = d.next() {
                    got.push(m.to_vec());
                }
            }
            assert_eq!(got, vec![a.clone(), vec![], b.clone()], "chunks of {size}");
            assert!(!d.partial());
        }
    }

    #[test]
    fn a_message_inside_one_chunk_is_not_copied() {
        let wire = Bytes::from(prefixed(b"payload"));
        let mut d = Deframer::default();
        d.push(wire.clone()).expect("valid framing");
        let m = d.next().expect("one message");
        assert_eq!(&m[..], b"payload");
        assert_eq!(m.as_ptr(), wire[5..].as_ptr());
    }

    #[test]
    fn compressed_or_truncated_messages_are_errors() {
        let mut d = Deframer::default();
        assert!(d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 9])).is_err());
        let mut d = Deframer::default();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))
            .expect("valid so far");
        assert!(d.partial());
        assert!(d.next().is_none());
    }

    #[test]
    fn frames_carry_the_length_prefix() {
        let m = envoy_types::pb::google::protobuf::StringValue {
            value: "x".repeat(10),
        };
        let f = frame(&m, 0);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        let mut d = Deframer::default();
        d.push(f).expect("valid framing");
        let back = envoy_types::pb::google::protobuf::StringValue::decode(d.next().expect("one"))
            .expect("decodes");
        assert_eq!(back, m);
    }
}
