//! The ADS gRPC service: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` (incremental), generic over where snapshots come from.
//!
//! Each stream runs one task that owns its per-type state: what the proxy subscribed to, what
//! was last sent (as shared views, so it costs pointers), the last nonce, and the ACK/NACK
//! outcome, which it mirrors into the [`SyncRegistry`]. Responses go through a small bounded
//! channel: a slow proxy slows only its own task, and because snapshots arrive on a `watch`
//! channel, a proxy that falls behind skips intermediate versions instead of queueing them.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tracing::{Instrument, debug, info, info_span, warn};

use strait_model::ProxyNode;

use crate::grpc::{self, Outgoing, RequestReader, ResponseBody};
use crate::metrics::XdsMetrics;
use crate::node::proxy_node;
use crate::request::{NameList, NameSet, NameSets, SotwRequest};
use crate::resource::{ProxySnapshot, Resource, TypeView, XdsType};
use crate::status::{ConnectionStatus, Nack, SyncRegistry, now_secs};
use crate::window::{Admit, PushWindow, Turn};
use crate::wire::{DeltaResponse, Sections, SotwResponse, payload_len};

/// Where the server gets each proxy's snapshots.
pub trait SnapshotSource: Send + Sync + 'static {
    /// Registers a connected proxy. The receiver holds `None` until the mesh has been loaded,
    /// then the proxy's latest snapshot; dropping the subscription unregisters the proxy.
    fn subscribe(&self, node: Arc<ProxyNode>) -> Subscription;
}

/// A proxy's registration with a [`SnapshotSource`].
pub struct Subscription {
    /// The proxy's snapshots.
    pub snapshots: watch::Receiver<Option<Arc<ProxySnapshot>>>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription that runs `on_drop` when the stream ends.
    pub fn new(
        snapshots: watch::Receiver<Option<Arc<ProxySnapshot>>>,
        on_drop: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            snapshots,
            on_drop: Some(Box::new(on_drop)),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Responses queued per stream before the stream's task waits for the proxy.
const SEND_QUEUE: usize = 4;

struct Shared<S> {
    source: S,
    registry: Arc<SyncRegistry>,
    metrics: Arc<XdsMetrics>,
    closing: watch::Receiver<bool>,
    names: Arc<NameSets>,
    sections: Arc<Sections>,
    window: Arc<PushWindow>,
}

/// The ADS service, ready to add to a tonic server.
pub struct AdsService<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for AdsService<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: SnapshotSource> AdsService<S> {
    /// A service serving snapshots from `source`, recording delivery in `registry`. When
    /// `closing` turns true, every stream ends with `UNAVAILABLE`, so proxies reconnect
    /// (to another instance, or to this one once it is back).
    pub fn new(
        source: S,
        registry: Arc<SyncRegistry>,
        metrics: Arc<XdsMetrics>,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                registry,
                metrics,
                closing,
                names: Arc::default(),
                sections: Arc::default(),
                window: Arc::new(PushWindow::new(crate::window::DEFAULT_WINDOW_MB)),
            }),
        }
    }

    /// Limits large cluster, listener and route responses pushed after a change and not yet
    /// acknowledged to `mb` megabytes across all proxies (0: no limit); see [`PushWindow`].
    /// Set before the service is cloned.
    pub fn with_push_window(mut self, mb: u32) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(s) => s.window = Arc::new(PushWindow::new(mb)),
            None => warn!("push window not changed: the ADS service was already cloned"),
        }
        self
    }
}

impl<S> NamedService for AdsService<S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<S, B> Service<http::Request<B>> for AdsService<S>
where
    S: SnapshotSource,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let path = req.uri().path().to_string();
        let body = req.into_body();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(SEND_QUEUE);
            match path.as_str() {
                SOTW_PATH => {
                    let requests = RequestReader::new(body, MAX_REQUEST);
                    tokio::spawn(run_sotw(shared, requests, Sender(tx), peer));
                }
                DELTA_PATH => {
                    let requests = RequestReader::new(body, MAX_REQUEST);
                    tokio::spawn(run_delta(shared, requests, Sender(tx), peer));
                }
                _ => return Ok(Status::unimplemented("unknown method").into_http()),
            }
            Ok(grpc::response(ResponseBody::new(rx)))
        })
    }
}

/// The largest request accepted (SotW requests list every subscribed name).
const MAX_REQUEST: usize = 16 << 20;

/// A stream task's side of its response body.
struct Sender(mpsc::Sender<Outgoing>);

impl Sender {
    async fn send_sotw(&self, r: &SotwResponse, sections: &Sections) -> Result<(), End> {
        self.0
            .send(Ok(r.frames(Some(sections))))
            .await
            .map_err(|_| End::Closed)
    }

    async fn send_delta(&self, r: &DeltaResponse, sections: &Sections) -> Result<(), End> {
        self.0
            .send(Ok(r.frames(Some(sections))))
            .await
            .map_err(|_| End::Closed)
    }

    async fn end(&self, status: Status) {
        let _ = self.0.send(Err(status)).await;
    }
}

/// Why a stream ended.
#[derive(Debug)]
enum End {
    /// The proxy closed it or went away.
    Closed,
    /// The proxy sent something unusable.
    Refused(Status),
}

/// A connected proxy: node, status, snapshots. Unregisters on drop.
struct Conn {
    node: Arc<ProxyNode>,
    status: Arc<ConnectionStatus>,
    registry: Arc<SyncRegistry>,
    metrics: Arc<XdsMetrics>,
    sub: Subscription,
    names: Arc<NameSets>,
    sections: Arc<Sections>,
    snapshot: Option<Arc<ProxySnapshot>>,
    nonce: u64,
    /// Recent responses not yet acknowledged, per type: (nonce, version). Delta ACKs name
    /// only the nonce.
    inflight: [std::collections::VecDeque<(String, String)>; 5],
    /// This stream's share of the push window.
    turn: Turn,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.disconnect(self.status.conn);
        self.metrics.connected.dec();
    }
}

impl Conn {
    fn open<S: SnapshotSource>(
        shared: &Shared<S>,
        node: &envoy_types::pb::envoy::config::core::v3::Node,
        delta: bool,
        peer: Option<SocketAddr>,
    ) -> Result<Conn, Status> {
        let parsed = proxy_node(node).map_err(|e| {
            warn!(proxy = %node.id, error = %e, "proxy refused: unusable node");
            Status::invalid_argument(e.to_string())
        })?;
        let node = Arc::new(parsed);
        let status = shared.registry.connect(
            node.id.clone(),
            node.envoy_version.map(|v| v.to_string()),
            delta,
            peer.map(|p| p.to_string()),
            node.tag.clone(),
        );
        shared.metrics.connected.inc();
        let sub = shared.source.subscribe(node.clone());
        info!(proxy = %node.id, delta, envoy = ?node.envoy_version.map(|v| v.to_string()), tag = ?node.tag, "proxy connected");
        Ok(Conn {
            node,
            status,
            registry: shared.registry.clone(),
            metrics: shared.metrics.clone(),
            sub,
            names: shared.names.clone(),
            sections: shared.sections.clone(),
            snapshot: None,
            nonce: 0,
            inflight: Default::default(),
            turn: Turn::new(shared.window.clone()),
        })
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    fn control_plane(&self) -> Arc<str> {
        self.registry.control_plane().clone()
    }

    /// The version of the response sent with `nonce`, if recent.
    fn version_of(&self, t: XdsType, nonce: &str) -> Option<String> {
        self.inflight[t.index()]
            .iter()
            .find(|(n, _)| n == nonce)
            .map(|(_, v)| v.clone())
    }

    /// Records a rejection: logged with the proxy, type, nonce and Envoy's text, and kept for
    /// status.
    fn nack(&mut self, t: XdsType, nonce: &str, version: &str, message: &str) {
        self.turn.settled(t, nonce);
        warn!(proxy = %self.node.id, r#type = t.short(), nonce, version, error = message, "proxy rejected configuration (NACK)");
        self.metrics.nack(t);
        self.status.update(t, |s| {
            s.nack = Some(Nack {
                nonce: nonce.to_string(),
                version: version.to_string(),
                message: message.to_string(),
                at: now_secs(),
            });
        });
    }

    fn ack(&mut self, t: XdsType, nonce: &str, version: &str) {
        debug!(proxy = %self.node.id, r#type = t.short(), nonce, version, "ACK");
        self.turn.settled(t, nonce);
        // Everything up to this response is settled.
        let q = &mut self.inflight[t.index()];
        if let Some(pos) = q.iter().position(|(n, _)| n == nonce) {
            q.drain(..=pos);
        }
        self.status.update(t, |s| {
            s.acked_nonce = Some(nonce.to_string());
            s.acked_version = Some(version.to_string());
            if s.nack.as_ref().is_some_and(|n| n.nonce != nonce) {
                s.nack = None;
            }
        });
    }

    /// Whether a response of `bytes` of resources for `t` may go now. Only a push after a
    /// change (`pushed`) can wait for room in the push window; what the proxy asked for goes
    /// at once.
    fn admit(&mut self, t: XdsType, pushed: bool, bytes: usize) -> Admit {
        if !pushed {
            return Admit::Go(None);
        }
        let admit = self.turn.admit(t, bytes);
        if matches!(admit, Admit::Wait) {
            debug!(
                r#type = t.short(),
                "large push waits for room in the push window"
            );
        }
        admit
    }

    /// The stream's turn in the push window came after `waited`: its held-back pushes go now.
    fn turn_came(&self, waited: std::time::Duration) {
        debug!(waited_ms = waited.as_millis() as u64, "push window turn");
        self.metrics
            .window_wait_seconds
            .observe(waited.as_secs_f64());
    }

    fn sent(&mut self, t: XdsType, nonce: &str, version: &str, bytes: usize, resources: usize) {
        self.metrics.response(t, bytes);
        let q = &mut self.inflight[t.index()];
        if q.len() >= 16 {
            q.pop_front();
        }
        q.push_back((nonce.to_string(), version.to_string()));
        self.status.update(t, |s| {
            s.sent_nonce = Some(nonce.to_string());
            s.sent_version = Some(version.to_string());
            s.responses += 1;
            s.resources = resources;
        });
    }
}

// ---------------------------------------------------------------------------------------
// State of the world
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct SotwType {
    subscribed: bool,
    /// Requested names (EDS, RDS); CDS and LDS are always wildcard.
    names: Arc<NameSet>,
    /// The view the proxy holds (None: nothing sent yet, or a full resend is due).
    sent: Option<TypeView>,
    nonce: Option<String>,
    /// The list of the request `names` came from.
    listed: Option<NameList>,
}

/// The next request of a stream, decoded with `decode`. `Ok(None)`: the proxy closed it.
async fn next_request<B, T, E: std::fmt::Display>(
    requests: &mut RequestReader<B>,
    decode: impl FnOnce(bytes::Bytes) -> Result<T, E>,
) -> Result<Option<T>, End>
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    match requests.message().await {
        Ok(Some(bytes)) => decode(bytes).map(Some).map_err(|e| {
            End::Refused(Status::invalid_argument(format!(
                "undecodable request: {e}"
            )))
        }),
        Ok(None) => Ok(None),
        Err(status) => {
            debug!(%status, "stream error");
            Err(End::Closed)
        }
    }
}

async fn run_sotw<S: SnapshotSource, B>(
    shared: Arc<Shared<S>>,
    mut requests: RequestReader<B>,
    tx: Sender,
    peer: Option<SocketAddr>,
) where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let first = match next_request(&mut requests, SotwRequest::decode).await {
        Ok(Some(r)) => r,
        Ok(None) | Err(End::Closed) => return,
        Err(End::Refused(status)) => {
            tx.end(status).await;
            return;
        }
    };
    let Some(node) = first.node.as_ref() else {
        tx.end(Status::invalid_argument("first request carries no node"))
            .await;
        return;
    };
    let mut conn = match Conn::open(&shared, node, false, peer) {
        Ok(c) => c,
        Err(status) => {
            tx.end(status).await;
            return;
        }
    };
    let span = info_span!("ads", proxy = %conn.node.id);
    let mut closing = shared.closing.clone();
    let end: Result<(), End> = async {
        let mut types: [SotwType; 5] = Default::default();
        conn.snapshot = conn.sub.snapshots.borrow_and_update().clone();
        sotw_request(&mut conn, &mut types, first, &tx).await?;
        loop {
            if *closing.borrow_and_update() {
                return Err(End::Refused(Status::unavailable("control plane shutting down")));
            }
            let hints = types.each_ref().map(|t| t.listed.unwrap_or_default());
            tokio::select! {
                _ = closing.changed() => {}
                req = next_request(&mut requests, |b| SotwRequest::decode_hinted(b, &hints)) => match req? {
                    Some(r) => sotw_request(&mut conn, &mut types, r, &tx).await?,
                    None => return Err(End::Closed),
                },
                changed = conn.sub.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(End::Refused(Status::unavailable("control plane shutting down")));
                    }
                    conn.snapshot = conn.sub.snapshots.borrow_and_update().clone();
                    for t in XdsType::ALL {
                        sotw_push(&mut conn, &mut types, t, SotwMode::Update, &tx).await?;
                    }
                }
                turn = conn.turn.next(), if conn.turn.active() => {
                    if let Some(waited) = turn {
                        conn.turn_came(waited);
                        for t in XdsType::ALL {
                            sotw_push(&mut conn, &mut types, t, SotwMode::Update, &tx).await?;
                        }
                        conn.turn.end_of_turn();
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
    if let Err(End::Refused(status)) = end {
        tx.end(status).await;
    }
    info!(proxy = %conn.node.id, "proxy disconnected");
}

enum SotwMode {
    /// Everything the proxy should hold of the type.
    Full,
    /// Only these newly requested names.
    Names(Vec<Arc<str>>),
    /// What changed since the last response.
    Update,
}

async fn sotw_request(
    conn: &mut Conn,
    types: &mut [SotwType; 5],
    req: SotwRequest,
    tx: &Sender,
) -> Result<(), End> {
    let Some(t) = XdsType::from_type_url(&req.type_url) else {
        warn!(proxy = %conn.node.id, type_url = %req.type_url, "request for an unsupported type ignored");
        return Ok(());
    };
    let st = &mut types[t.index()];
    if !req.response_nonce.is_empty() && st.nonce.as_deref() != Some(req.response_nonce.as_str()) {
        debug!(r#type = t.short(), nonce = %req.response_nonce, "stale nonce ignored");
        return Ok(());
    }
    let initial = !st.subscribed || req.response_nonce.is_empty();
    if !st.subscribed {
        st.subscribed = true;
        conn.status.update(t, |s| s.subscribed = true);
    }
    if let Some(err) = &req.error_detail {
        conn.nack(t, &req.response_nonce, &req.version_info, &err.message);
        // The proxy keeps what it had; resend everything on the next change.
        st.sent = None;
    } else if !req.response_nonce.is_empty() {
        conn.ack(t, &req.response_nonce, &req.version_info);
    }
    let mode = if t.is_wildcard_type() {
        initial.then_some(SotwMode::Full)
    } else {
        // Most requests (every ACK) list the names the proxy listed before, in the same
        // order: compare the list's bytes, then the set's hash, and look at the names only
        // when both differ.
        let listed = req.list();
        let unchanged = st.listed.is_some_and(|l| l.same_names(&listed));
        // Kept even when unchanged: where the names now lie is the next decode's hint.
        st.listed = Some(listed);
        let added: Vec<Arc<str>> = if unchanged {
            Vec::new()
        } else {
            let hash = req.names_hash();
            if hash == st.names.hash() {
                Vec::new()
            } else {
                // Another proxy may have subscribed to exactly these names already.
                let new = match conn.names.find(hash) {
                    Some(set) => set,
                    None => {
                        let view = conn.snapshot.as_ref().map(|s| s.view(t));
                        let names = req.names().map_err(|e| {
                            End::Refused(Status::invalid_argument(format!("resource names: {e}")))
                        })?;
                        conn.names
                            .intern(names.into_iter().map(|n| intern(view, n)).collect())
                    }
                };
                let added = conn.names.added(&st.names, &new).to_vec();
                st.names = new;
                added
            }
        };
        if initial || st.sent.is_none() {
            Some(SotwMode::Full)
        } else if !added.is_empty() {
            Some(SotwMode::Names(added))
        } else {
            None
        }
    };
    if req.error_detail.is_some() {
        return Ok(());
    }
    match mode {
        Some(m) => sotw_push(conn, types, t, m, tx).await,
        None => Ok(()),
    }
}

/// Reuses the snapshot's copy of a name when it has one.
fn intern(view: Option<&TypeView>, name: &str) -> Arc<str> {
    view.and_then(|v| v.get(name))
        .map(|r| r.name.clone())
        .unwrap_or_else(|| Arc::from(name))
}

async fn sotw_push(
    conn: &mut Conn,
    types: &mut [SotwType; 5],
    t: XdsType,
    mode: SotwMode,
    tx: &Sender,
) -> Result<(), End> {
    let Some(snap) = conn.snapshot.clone() else {
        return Ok(());
    };
    let st = &mut types[t.index()];
    if !st.subscribed {
        return Ok(());
    }
    let view = snap.view(t);
    let mode = match (&st.sent, mode) {
        (None, _) => SotwMode::Full,
        (Some(_), m) => m,
    };
    // Wildcard types send the whole view: its resources are collected only once the push
    // may go (a push waiting for the window would otherwise take and drop a reference to
    // every cluster, references shared with every other stream).
    let picked: Option<Vec<Arc<Resource>>> = if t.is_wildcard_type() {
        if let (SotwMode::Update, Some(sent)) = (&mode, &st.sent)
            && sent.same_as(view)
        {
            return Ok(());
        }
        None
    } else {
        if st.names.is_empty() {
            st.sent = Some(view.clone());
            return Ok(());
        }
        let picked: Vec<Arc<Resource>> = match (&mode, &st.sent) {
            (SotwMode::Full, _) | (SotwMode::Update, None) => st
                .names
                .iter()
                .filter_map(|n| view.get(n).cloned())
                .collect(),
            (SotwMode::Names(added), _) => {
                added.iter().filter_map(|n| view.get(n).cloned()).collect()
            }
            (SotwMode::Update, Some(sent)) => {
                if sent.same_as(view) {
                    return Ok(());
                }
                view.diff(sent)
                    .changed
                    .iter()
                    .filter(|n| st.names.contains(n))
                    .filter_map(|n| view.get(n).cloned())
                    .collect()
            }
        };
        if picked.is_empty() && !matches!(mode, SotwMode::Full) {
            st.sent = Some(view.clone());
            return Ok(());
        }
        Some(picked)
    };
    let bytes = match &picked {
        Some(p) => payload_len(p),
        None => payload_len(view.iter()),
    };
    let pushed = matches!(mode, SotwMode::Update);
    let Admit::Go(share) = conn.admit(t, pushed, bytes) else {
        return Ok(());
    };
    let resources = picked.unwrap_or_else(|| view.iter().cloned().collect());
    let version = view.version_string();
    let nonce = conn.next_nonce();
    let resp = SotwResponse {
        version_info: version.clone(),
        resources,
        type_url: t.type_url(),
        nonce: nonce.clone(),
        control_plane: conn.control_plane(),
    };
    let count = resp.resources.len();
    debug!(r#type = t.short(), %version, %nonce, resources = count, bytes, "send");
    st.sent = Some(view.clone());
    st.nonce = Some(nonce.clone());
    let holds = if t.is_wildcard_type() {
        view.len()
    } else {
        st.names.len()
    };
    conn.sent(t, &nonce, &version, bytes, holds);
    conn.turn.hold(t, &nonce, pushed, share);
    tx.send_sotw(&resp, &conn.sections).await
}

// ---------------------------------------------------------------------------------------
// Incremental (Delta)
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct DeltaType {
    subscribed: bool,
    wildcard: bool,
    names: Arc<NameSet>,
    /// What the proxy holds: `sent` restricted to its interest (None: unknown, resync due).
    sent: Option<TypeView>,
    /// Versions the proxy declared it already has, used for its first response.
    initial: HashMap<String, String>,
    nonce: Option<String>,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

fn decode_delta(b: bytes::Bytes) -> Result<DeltaDiscoveryRequest, prost::DecodeError> {
    DeltaDiscoveryRequest::decode(b)
}

async fn run_delta<S: SnapshotSource, B>(
    shared: Arc<Shared<S>>,
    mut requests: RequestReader<B>,
    tx: Sender,
    peer: Option<SocketAddr>,
) where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let first = match next_request(&mut requests, decode_delta).await {
        Ok(Some(r)) => r,
        Ok(None) | Err(End::Closed) => return,
        Err(End::Refused(status)) => {
            tx.end(status).await;
            return;
        }
    };
    let Some(node) = first.node.as_ref() else {
        tx.end(Status::invalid_argument("first request carries no node"))
            .await;
        return;
    };
    let mut conn = match Conn::open(&shared, node, true, peer) {
        Ok(c) => c,
        Err(status) => {
            tx.end(status).await;
            return;
        }
    };
    let span = info_span!("delta", proxy = %conn.node.id);
    let mut closing = shared.closing.clone();
    let end: Result<(), End> = async {
        let mut types: [DeltaType; 5] = Default::default();
        conn.snapshot = conn.sub.snapshots.borrow_and_update().clone();
        delta_request(&mut conn, &mut types, first, &tx).await?;
        loop {
            if *closing.borrow_and_update() {
                return Err(End::Refused(Status::unavailable("control plane shutting down")));
            }
            tokio::select! {
                _ = closing.changed() => {}
                req = next_request(&mut requests, decode_delta) => match req? {
                    Some(r) => delta_request(&mut conn, &mut types, r, &tx).await?,
                    None => return Err(End::Closed),
                },
                changed = conn.sub.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(End::Refused(Status::unavailable("control plane shutting down")));
                    }
                    conn.snapshot = conn.sub.snapshots.borrow_and_update().clone();
                    for t in XdsType::ALL {
                        delta_push(&mut conn, &mut types, t, Vec::new(), &tx).await?;
                    }
                }
                turn = conn.turn.next(), if conn.turn.active() => {
                    if let Some(waited) = turn {
                        conn.turn_came(waited);
                        for t in XdsType::ALL {
                            delta_push(&mut conn, &mut types, t, Vec::new(), &tx).await?;
                        }
                        conn.turn.end_of_turn();
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
    if let Err(End::Refused(status)) = end {
        tx.end(status).await;
    }
    info!(proxy = %conn.node.id, "proxy disconnected");
}

async fn delta_request(
    conn: &mut Conn,
    types: &mut [DeltaType; 5],
    req: DeltaDiscoveryRequest,
    tx: &Sender,
) -> Result<(), End> {
    let Some(t) = XdsType::from_type_url(&req.type_url) else {
        warn!(proxy = %conn.node.id, type_url = %req.type_url, "request for an unsupported type ignored");
        return Ok(());
    };
    let st = &mut types[t.index()];
    let first = !st.subscribed;
    if first {
        st.subscribed = true;
        // An empty first subscription to CDS or LDS is the legacy wildcard.
        st.wildcard = t.is_wildcard_type() && req.resource_names_subscribe.is_empty();
        st.initial = req.initial_resource_versions.clone();
        conn.status.update(t, |s| s.subscribed = true);
    }
    if !req.response_nonce.is_empty() {
        let version = conn.version_of(t, &req.response_nonce).unwrap_or_default();
        match &req.error_detail {
            Some(err) => {
                conn.nack(t, &req.response_nonce, &version, &err.message);
                st.sent = None;
            }
            None => conn.ack(t, &req.response_nonce, &version),
        }
    }
    let view = conn.snapshot.as_ref().map(|s| s.view(t));
    let mut fresh: Vec<&str> = Vec::new();
    // A subscription may list thousands of names: deduplicate by hash, not by scanning.
    let mut seen: HashSet<&str> = HashSet::new();
    for n in &req.resource_names_subscribe {
        if n == "*" {
            st.wildcard = true;
        } else if !st.names.contains(n) && seen.insert(n.as_str()) {
            fresh.push(n);
        }
    }
    let mut removed: HashSet<&str> = HashSet::new();
    for n in &req.resource_names_unsubscribe {
        if n == "*" {
            st.wildcard = false;
        } else if st.names.contains(n) {
            removed.insert(n.as_str());
        }
    }
    if !fresh.is_empty() || !removed.is_empty() {
        // Subscriptions are shared between proxies holding the same names (the names are
        // looked up in the snapshot only by the first proxy to hold a set).
        st.names = conn
            .names
            .change(&st.names, &fresh, &removed, |n| intern(view, n));
    }
    if first {
        // The first response is due even when it carries nothing.
        delta_push(conn, types, t, Vec::new(), tx).await
    } else if !fresh.is_empty() {
        let added = fresh.iter().map(|n| intern(view, n)).collect();
        delta_push(conn, types, t, added, tx).await
    } else {
        Ok(())
    }
}

async fn delta_push(
    conn: &mut Conn,
    types: &mut [DeltaType; 5],
    t: XdsType,
    added: Vec<Arc<str>>,
    tx: &Sender,
) -> Result<(), End> {
    let Some(snap) = conn.snapshot.clone() else {
        return Ok(());
    };
    let st = &mut types[t.index()];
    if !st.subscribed {
        return Ok(());
    }
    let view = snap.view(t);
    let first_response = st.nonce.is_none();
    // A push after a change (not the first response, a resync or a new subscription).
    let pushed = st.sent.is_some() && added.is_empty();
    let mut resources: Vec<Arc<Resource>> = Vec::new();
    let mut removed: Vec<Arc<str>> = Vec::new();
    match &st.sent {
        None => {
            // Unknown client state: everything of interest, minus what it declared it has.
            let initial = std::mem::take(&mut st.initial);
            let candidates: Vec<&Arc<Resource>> = if st.wildcard {
                view.iter().collect()
            } else {
                // One lookup per name: what exists is sent, what does not is removed.
                let mut found = Vec::with_capacity(st.names.len());
                for n in st.names.iter() {
                    match view.get(n) {
                        Some(r) => found.push(r),
                        None => removed.push(n.clone()),
                    }
                }
                found
            };
            for r in candidates {
                // Versions are formatted only for what the proxy says it holds.
                if initial
                    .get(&*r.name)
                    .is_none_or(|held| *held != r.version_string())
                {
                    resources.push(r.clone());
                }
            }
            for name in initial.keys() {
                if view.get(name).is_none()
                    && st.wants(name)
                    && !removed.iter().any(|r| **r == **name)
                {
                    removed.push(Arc::from(name.as_str()));
                }
            }
        }
        Some(sent) => {
            if !sent.same_as(view) {
                let d = view.diff(sent);
                resources.extend(
                    d.changed
                        .iter()
                        .filter(|n| st.wants(n))
                        .filter_map(|n| view.get(n).cloned()),
                );
                removed.extend(d.removed.into_iter().filter(|n| st.wants(n)));
            }
            for n in &added {
                match view.get(n) {
                    Some(r) => {
                        if !resources.iter().any(|x| x.name == *n) {
                            resources.push(r.clone());
                        }
                    }
                    // Tell the proxy at once that it asked for something that does not exist.
                    None => removed.push(n.clone()),
                }
            }
        }
    }
    if resources.is_empty() && removed.is_empty() && !first_response {
        st.sent = Some(view.clone());
        return Ok(());
    }
    let bytes = payload_len(&resources);
    let Admit::Go(share) = conn.admit(t, pushed, bytes) else {
        return Ok(());
    };
    st.sent = Some(view.clone());
    let nonce = conn.next_nonce();
    let version = view.version_string();
    let resp = DeltaResponse {
        system_version_info: version.clone(),
        resources,
        type_url: t.type_url(),
        nonce: nonce.clone(),
        removed,
        control_plane: conn.control_plane(),
    };
    debug!(r#type = t.short(), %nonce, resources = resp.resources.len(), removed = resp.removed.len(), bytes, "send");
    st.nonce = Some(nonce.clone());
    let holds = if st.wildcard {
        view.len()
    } else {
        st.names.len()
    };
    conn.sent(t, &nonce, &version, bytes, holds);
    conn.turn.hold(t, &nonce, pushed, share);
    tx.send_delta(&resp, &conn.sections).await
}
