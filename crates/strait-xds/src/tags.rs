//! Following revision tags: proxies injected through a tag move to the revision the tag
//! points at, without a restart.
//!
//! A sidecar injected through tag `T` is bootstrapped against the tag's Service
//! (`strait-tag-T`) and carries `STRAIT_TAG=T` in its node metadata. When the tag moves to
//! another revision, the control plane the proxy is connected to notices (the tag Service's
//! selector now picks the other revision's pods, [`MeshSnapshot::tags`]), waits until that
//! revision is ready behind the tag Service ([`MeshSnapshot::tag_readiness`]), and then closes
//! those proxies' connections a few at a time, spread over a configurable period. Envoy keeps
//! serving its configuration while it reconnects; the reconnection goes through the tag
//! Service to the new revision, which sends an equivalent configuration, so no listener is
//! drained and no request fails. Proxies without a tag, or whose tag is unknown, are never
//! moved.
//!
//! Closing needs the proxy's TCP connection: [`Connections`] wraps every accepted socket
//! ([`TrackedStream`]) and can end one by its peer address: its next read sees the end of the
//! stream, so the HTTP/2 server closes the connection as if the proxy had. No second file
//! descriptor is held per connection.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use strait_model::{MeshSnapshot, TagReadiness};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tracing::{debug, info, warn};

use crate::PushController;
use crate::read_ahead::ReadAhead;
use crate::status::SyncRegistry;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The xDS server's open connections, by peer address, so one can be closed.
#[derive(Debug, Default)]
pub struct Connections {
    sockets: Mutex<HashMap<SocketAddr, Arc<Closer>>>,
}

/// Ends one connection: set, then the reader is woken and sees the end of the stream.
#[derive(Debug, Default)]
struct Closer {
    closed: AtomicBool,
    reader: AtomicWaker,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Connections {
    /// An empty set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Wraps the listener's accepted sockets so that each is tracked until it is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        incoming: TcpIncoming,
    ) -> impl Stream<Item = io::Result<TrackedStream>> + use<> {
        let conns = self.clone();
        incoming.map(move |accepted| accepted.map(|s| conns.track(s)))
    }

    fn track(self: &Arc<Self>, stream: TcpStream) -> TrackedStream {
        let local = stream.local_addr().ok();
        let peer = stream.peer_addr().ok();
        let closer = Arc::new(Closer::default());
        if let Some(p) = peer {
            lock(&self.sockets).insert(p, closer.clone());
        }
        TrackedStream {
            inner: stream,
            local,
            peer,
            closer,
            conns: self.clone(),
            ahead: ReadAhead::default(),
        }
    }

    /// Ends the connection from `peer`. False when there is none.
    pub fn close(&self, peer: SocketAddr) -> bool {
        let closer = lock(&self.sockets).get(&peer).cloned();
        match closer {
            Some(c) => {
                debug!(%peer, "closing a connection");
                c.close();
                true
            }
            None => false,
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        lock(&self.sockets).len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An accepted connection, forgotten by its [`Connections`] when dropped.
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    closer: Arc<Closer>,
    conns: Arc<Connections>,
    ahead: ReadAhead,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if let Some(p) = self.peer {
            let mut sockets = lock(&self.conns.sockets);
            // The address may already belong to a newer connection.
            if sockets
                .get(&p)
                .is_some_and(|c| Arc::ptr_eq(c, &self.closer))
            {
                sockets.remove(&p);
            }
        }
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: self.peer,
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closer.is_closed() {
            return Poll::Ready(Ok(()));
        }
        self.closer.reader.register(cx.waker());
        if self.closer.is_closed() {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        this.ahead.poll_read(&mut this.inner, cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closer.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.closer.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How proxies follow their tag.
#[derive(Debug, Clone)]
pub struct TagMoveOptions {
    /// This control plane's revision.
    pub revision: String,
    /// Where tag Services live.
    pub system_namespace: String,
    /// When readiness cannot be judged (a tag Service without selector and endpoints): how
    /// long after the move is seen proxies start to be moved anyway.
    pub delay: Duration,
    /// Moves are spread over this period, each proxy at its own offset.
    pub spread: Duration,
    /// How often the tags are checked.
    pub interval: Duration,
}

impl TagMoveOptions {
    /// Defaults for `revision` in `system_namespace`.
    pub fn new(revision: impl Into<String>, system_namespace: impl Into<String>) -> Self {
        TagMoveOptions {
            revision: revision.into(),
            system_namespace: system_namespace.into(),
            delay: Duration::from_secs(10),
            spread: Duration::from_secs(30),
            interval: Duration::from_millis(500),
        }
    }
}

/// A tag seen pointing away from this revision.
#[derive(Debug)]
struct Away {
    target: String,
    seen: Instant,
    /// When the target was first seen ready (or the delay passed).
    ready: Option<Instant>,
    reported_waiting: bool,
}

/// The state of moving proxies off this revision.
#[derive(Debug)]
pub struct TagMover {
    opts: TagMoveOptions,
    away: BTreeMap<String, Away>,
    /// Connection number → when it was first seen needing a move.
    pending: HashMap<u64, Instant>,
    /// Connections already closed (until they are gone from the registry).
    done: std::collections::HashSet<u64>,
    moved: u64,
}

/// One connection the mover should close now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Connection number.
    pub conn: u64,
    /// Node id.
    pub proxy: Arc<str>,
    /// Peer address.
    pub peer: Option<String>,
    /// The tag it follows.
    pub tag: Arc<str>,
    /// The revision the tag points at.
    pub to: String,
}

/// A connection as the mover sees it.
#[derive(Debug, Clone)]
pub struct TaggedConn {
    /// Connection number.
    pub conn: u64,
    /// Node id.
    pub proxy: Arc<str>,
    /// Peer address.
    pub peer: Option<String>,
    /// The tag.
    pub tag: Arc<str>,
}

fn offset(proxy: &str, spread: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    proxy.hash(&mut h);
    let ms = spread.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

impl TagMover {
    /// A mover with nothing pending.
    pub fn new(opts: TagMoveOptions) -> Self {
        TagMover {
            opts,
            away: BTreeMap::new(),
            pending: HashMap::new(),
            done: std::collections::HashSet::new(),
            moved: 0,
        }
    }

    /// Proxies moved so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Looks at the tags in `mesh` and the tagged connections, and says which connections to
    /// close at `now`.
    pub fn step(&mut self, mesh: &MeshSnapshot, conns: &[TaggedConn], now: Instant) -> Vec<Move> {
        let tags = mesh.tags(&self.opts.system_namespace);
        // Tags pointing elsewhere, and since when the target is ready.
        self.away.retain(|tag, a| {
            tags.get(tag)
                .is_some_and(|t| *t == a.target && *t != self.opts.revision)
        });
        for (tag, target) in &tags {
            if *target == self.opts.revision || self.away.contains_key(tag) {
                continue;
            }
            info!(
                %tag,
                from = %self.opts.revision,
                to = %target,
                "tag moved: its proxies will move once the revision is ready"
            );
            self.away.insert(
                tag.clone(),
                Away {
                    target: target.clone(),
                    seen: now,
                    ready: None,
                    reported_waiting: false,
                },
            );
        }
        for (tag, a) in self.away.iter_mut() {
            if a.ready.is_some() {
                continue;
            }
            match mesh.tag_readiness(&self.opts.system_namespace, tag, &a.target) {
                TagReadiness::Ready => a.ready = Some(now),
                TagReadiness::Unknown if now.duration_since(a.seen) >= self.opts.delay => {
                    a.ready = Some(now)
                }
                TagReadiness::Unknown | TagReadiness::NotReady => {
                    if !a.reported_waiting {
                        a.reported_waiting = true;
                        info!(
                            %tag,
                            to = %a.target,
                            "waiting for the revision to be ready behind the tag's Service"
                        );
                    }
                }
            }
            if a.ready.is_some() {
                info!(%tag, to = %a.target, spread = ?self.opts.spread, "moving the tag's proxies");
            }
        }
        let live: std::collections::HashSet<u64> = conns.iter().map(|c| c.conn).collect();
        self.pending.retain(|c, _| live.contains(c));
        self.done.retain(|c| live.contains(c));
        let mut moves = Vec::new();
        for c in conns {
            if self.done.contains(&c.conn) {
                continue;
            }
            let Some(a) = self.away.get(&*c.tag) else {
                self.pending.remove(&c.conn);
                continue;
            };
            let seen = *self.pending.entry(c.conn).or_insert(now);
            let Some(ready) = a.ready else { continue };
            let due = ready.max(seen) + offset(&c.proxy, self.opts.spread);
            if now >= due {
                self.pending.remove(&c.conn);
                self.done.insert(c.conn);
                self.moved += 1;
                moves.push(Move {
                    conn: c.conn,
                    proxy: c.proxy.clone(),
                    peer: c.peer.clone(),
                    tag: c.tag.clone(),
                    to: a.target.clone(),
                });
            }
        }
        moves
    }
}

/// Moves the proxies connected to this control plane through a tag that now points at
/// another revision, until `closing` turns true.
pub async fn run_tag_mover(
    push: PushController,
    registry: Arc<SyncRegistry>,
    connections: Arc<Connections>,
    opts: TagMoveOptions,
    mut closing: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(opts.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mover = TagMover::new(opts);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = closing.changed() => {}
        }
        if *closing.borrow() {
            return;
        }
        let Some(mesh) = push.mesh() else { continue };
        let conns: Vec<TaggedConn> = registry
            .tagged_connections()
            .into_iter()
            .filter_map(|c| {
                Some(TaggedConn {
                    conn: c.conn,
                    proxy: c.proxy_id.clone(),
                    peer: c.peer.clone(),
                    tag: c.tag.clone()?,
                })
            })
            .collect();
        if conns.is_empty() && mover.away.is_empty() {
            continue;
        }
        for m in mover.step(&mesh, &conns, Instant::now()) {
            let peer = m.peer.as_deref().and_then(|p| p.parse::<SocketAddr>().ok());
            let closed = peer.is_some_and(|p| connections.close(p));
            if closed {
                info!(proxy = %m.proxy, tag = %m.tag, to = %m.to, "proxy moved: connection closed, it reconnects through the tag");
            } else {
                warn!(proxy = %m.proxy, tag = %m.tag, to = %m.to, peer = ?m.peer, "proxy should move but its connection is not tracked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_model::{Endpoint, EndpointGroup, EndpointSet, Health, Labels, Service, ServiceKey};

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A mesh whose tag `prod` points at `to`, with `ready` endpoints of revision `to`.
    fn mesh(to: &str, ready: bool) -> MeshSnapshot {
        let key = ServiceKey::new("istio-system", "strait-tag-prod");
        let svc = Service {
            key: key.clone(),
            hostname: Arc::from("strait-tag-prod.istio-system.svc.cluster.local"),
            kind: strait_model::ServiceKind::ClusterIp,
            cluster_ip: None,
            ports: Vec::new(),
            selector: Some(labels(&[("app", "strait"), ("strait.io/rev", to)])),
            labels: labels(&[("istio.io/tag", "prod")]),
            export_to: Vec::new(),
        };
        let ep = Endpoint {
            address: "10.0.0.9".parse().expect("ip"),
            health: if ready {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            labels: Arc::new(labels(&[("strait.io/rev", to)])),
            locality: Arc::default(),
            pod: None,
            cluster: Arc::from(""),
            weight: 1,
        };
        MeshSnapshot {
            services: Arc::new([(key.clone(), Arc::new(svc))].into_iter().collect()),
            endpoints: Arc::new(
                [(
                    key,
                    Arc::new(EndpointSet {
                        groups: vec![EndpointGroup {
                            ports: Arc::from(Vec::new()),
                            endpoints: vec![ep],
                        }],
                    }),
                )]
                .into_iter()
                .collect(),
            ),
            ..MeshSnapshot::default()
        }
    }

    fn conn(n: u64, tag: &str) -> TaggedConn {
        TaggedConn {
            conn: n,
            proxy: Arc::from(format!(
                "sidecar~10.0.1.{n}~p{n}.shop~shop.svc.cluster.local"
            )),
            peer: Some(format!("10.0.1.{n}:40000")),
            tag: Arc::from(tag),
        }
    }

    fn opts() -> TagMoveOptions {
        TagMoveOptions {
            spread: Duration::from_secs(10),
            ..TagMoveOptions::new("stable", "istio-system")
        }
    }

    #[test]
    fn nothing_moves_while_the_tag_points_here() {
        let mut m = TagMover::new(opts());
        let t0 = Instant::now();
        let conns = [conn(1, "prod"), conn(2, "prod")];
        assert!(m.step(&mesh("stable", true), &conns, t0).is_empty());
        let later = t0 + Duration::from_secs(60);
        assert!(m.step(&mesh("stable", true), &conns, later).is_empty());
    }

    #[test]
    fn proxies_move_after_the_new_revision_is_ready_spread_over_time() {
        let mut m = TagMover::new(opts());
        let t0 = Instant::now();
        let conns: Vec<TaggedConn> = (1..=20).map(|n| conn(n, "prod")).collect();
        // Moved, not ready: nobody moves, however long it takes.
        assert!(m.step(&mesh("canary", false), &conns, t0).is_empty());
        let t1 = t0 + Duration::from_secs(30);
        assert!(m.step(&mesh("canary", false), &conns, t1).is_empty());
        // Ready: moves spread over the next 10 s, each connection once.
        let mut moved = Vec::new();
        let mut t = t1;
        let mut first = None;
        while t <= t1 + Duration::from_secs(11) {
            for mv in m.step(&mesh("canary", true), &conns, t) {
                assert_eq!(mv.to, "canary");
                first.get_or_insert(t);
                moved.push(mv.conn);
            }
            t += Duration::from_millis(500);
        }
        moved.sort_unstable();
        assert_eq!(moved, (1..=20).collect::<Vec<_>>(), "each proxy moved once");
        let first = first.expect("some moved");
        assert!(
            first < t1 + Duration::from_secs(5),
            "moves start within the spread"
        );
        assert_eq!(m.moved(), 20);
    }

    #[test]
    fn other_tags_and_untagged_proxies_stay() {
        let mut m = TagMover::new(opts());
        let t0 = Instant::now();
        let conns = [conn(1, "dev")];
        let t = t0 + Duration::from_secs(60);
        assert!(m.step(&mesh("canary", true), &conns, t0).is_empty());
        assert!(m.step(&mesh("canary", true), &conns, t).is_empty());
    }

    #[test]
    fn moving_the_tag_back_cancels_pending_moves() {
        let mut m = TagMover::new(TagMoveOptions {
            spread: Duration::from_secs(100),
            ..opts()
        });
        let t0 = Instant::now();
        let conns: Vec<TaggedConn> = (1..=50).map(|n| conn(n, "prod")).collect();
        let early = m.step(&mesh("canary", true), &conns, t0).len();
        // Back before most were due: the rest stay.
        assert!(m.step(&mesh("stable", true), &conns, t0).is_empty());
        let t = t0 + Duration::from_secs(200);
        assert!(m.step(&mesh("stable", true), &conns, t).is_empty());
        assert!(early < 50);
    }

    #[tokio::test]
    async fn a_tracked_connection_can_be_closed_by_peer_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Connections::new();
        let mut incoming = Box::pin(conns.incoming(TcpIncoming::from(listener)));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let server = incoming.next().await.expect("accepted").expect("ok");
        let peer = client.local_addr().expect("peer");
        assert_eq!(server.connect_info().remote_addr, Some(peer));
        assert_eq!(conns.len(), 1);
        let mut server = server;
        // A reader waiting on the connection is woken by the close and sees its end.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                .await
                .expect("read");
            (n, server)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(conns.close(peer));
        let (n, server) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(n, 0, "the server side reads the end of the stream");
        drop(server);
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut client, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the client sees the connection end");
        assert!(conns.is_empty());
        assert!(!conns.close(peer));
    }
}
