//! One bidirectional gRPC stream on its own HTTP/2 connection, for thousands of simulated
//! proxies in one process.
//!
//! tonic's client keeps, for each stream, a receive buffer as large as the largest message it
//! has seen, grown by doubling. With 2,000 simulated proxies each receiving megabyte-sized
//! route configurations and load assignments, those buffers held 5–6 GB, and faulting that
//! memory in was most of the harness's CPU during initial sync: CPU taken from the control
//! plane it measures on a shared machine. Here messages are cut out of the received chunks by
//! strait's own [`MessageBuffer`] (copied into a buffer of exactly their size only when they
//! span several) and freed once decoded, and resources keep pointing into them instead of
//! being copied again.
//!
//! The HTTP/2 settings are the peer's defaults except the flow-control windows, so the server
//! sees frames of the size a stock Envoy accepts, and what one turn of the connection writes
//! leaves in one system call, as Envoy's writes do ([`Coalesced`]).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use strait_xds::MessageBuffer;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::coalesce::{Coalesced, Turns};
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
    frames: MessageBuffer,
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
            if let Some(m) = self
                .frames
                .message()
                .map_err(|e| Error::Stream(e.to_string()))?
            {
                return Ok(Some(m));
            }
            match self.recv.data().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len();
                    self.frames.push(chunk);
                    // Errors here mean the stream is gone; the next read reports it.
                    let _ = self.recv.flow_control().release_capacity(n);
                }
                Some(Err(e)) => return Err(stream_error(&e)),
                None => {
                    if !self.frames.is_empty() {
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
    let turns = Turns::default();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .handshake::<_, Bytes>(Coalesced::new(tcp, turns.clone()))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        // The stream reports the failure; the connection only has to be driven.
        let _ = turns.drive(connection).await;
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
            frames: MessageBuffer::new(MAX_MESSAGE),
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

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::StringValue;

    // Cutting received bytes into messages is `strait_xds::MessageBuffer`'s, tested there.

    #[test]
    fn frames_carry_the_length_prefix() {
        let m = StringValue {
            value: "x".repeat(10),
        };
        let f = frame(&m, 0);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        let mut d = MessageBuffer::new(MAX_MESSAGE);
        d.push(f);
        let back = StringValue::decode(d.message().expect("valid").expect("one")).expect("decodes");
        assert_eq!(back, m);
    }

    #[test]
    fn a_tail_of_encoded_fields_is_counted_in_the_prefix() {
        let head = StringValue {
            value: "a".to_string(),
        };
        let tail = Bytes::from(
            StringValue {
                value: "b".to_string(),
            }
            .encode_to_vec(),
        );
        let mut d = MessageBuffer::new(MAX_MESSAGE);
        d.push(frame(&head, tail.len()));
        assert!(d.message().expect("valid").is_none(), "waits for the tail");
        d.push(tail);
        // The later occurrence of a singular field wins: the tail's.
        let back = StringValue::decode(d.message().expect("valid").expect("one")).expect("decodes");
        assert_eq!(back.value, "b");
    }
}
