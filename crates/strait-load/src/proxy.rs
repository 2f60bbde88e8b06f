//! A simulated Envoy sidecar: one gRPC connection, one ADS stream (state of the world or
//! Delta), and Envoy's request pattern on it.
//!
//! On connect it asks for every cluster (CDS) and every listener (LDS). After each CDS
//! response it ACKs and asks for the load assignments (EDS) of every EDS cluster it now has;
//! after each LDS response it ACKs and asks for the route configurations (RDS) its HTTP
//! connection managers name. Every response is ACKed, or NACKed for a configured fraction
//! once the proxy is configured. Content is decoded from the `Any` values with prost;
//! by default only as far as the bookkeeping needs (names, cluster type, and the full load
//! assignment or route configuration when a change in flight concerns it), so that the
//! harness leaves as much CPU as it can to the control plane it measures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Node, node::UserAgentVersionType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::churn::{Pending, ProxyProgress, Step, Tracker};
use crate::grpc;
use crate::{Error, Result};

/// The xDS types a sidecar uses, in the order Envoy needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsKind {
    /// Clusters.
    Cds = 0,
    /// Load assignments.
    Eds = 1,
    /// Listeners.
    Lds = 2,
    /// Route configurations.
    Rds = 3,
}

impl XdsKind {
    /// All four.
    pub const ALL: [XdsKind; 4] = [XdsKind::Cds, XdsKind::Eds, XdsKind::Lds, XdsKind::Rds];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            XdsKind::Cds => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            XdsKind::Eds => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            XdsKind::Lds => "type.googleapis.com/envoy.config.listener.v3.Listener",
            XdsKind::Rds => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<XdsKind> {
        Self::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// `CDS`, `EDS`, `LDS`, `RDS`.
    pub fn label(self) -> &'static str {
        match self {
            XdsKind::Cds => "CDS",
            XdsKind::Eds => "EDS",
            XdsKind::Lds => "LDS",
            XdsKind::Rds => "RDS",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Who a simulated proxy says it is.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Its number.
    pub index: usize,
    /// Envoy node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    /// Its namespace (`NAMESPACE` metadata).
    pub namespace: String,
    /// Its pod labels (`LABELS` metadata).
    pub labels: BTreeMap<String, String>,
    /// `STRAIT_OUTBOUND_BIND`: listeners bind this address, no traffic capture.
    pub outbound_bind: Option<IpAddr>,
    /// The Envoy version it reports.
    pub envoy_version: (u32, u32, u32),
}

impl ProxySpec {
    /// Sidecar number `index` in `namespace`, at `ip`, of domain `domain`.
    pub fn sidecar(
        index: usize,
        ip: IpAddr,
        namespace: &str,
        domain: &str,
        outbound_bind: Option<IpAddr>,
    ) -> Self {
        let pod = format!("load-client-{index}");
        ProxySpec {
            index,
            node_id: format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.{domain}"),
            namespace: namespace.to_string(),
            labels: [("app".to_string(), "load-client".to_string())]
                .into_iter()
                .collect(),
            outbound_bind,
            envoy_version: (1, 36, 4),
        }
    }

    /// The node sent on the first request of a stream.
    pub fn node(&self) -> Node {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let mut fields: BTreeMap<String, Value> = BTreeMap::new();
        fields.insert("NAMESPACE".into(), string(&self.namespace));
        fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: self
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), string(v)))
                        .collect(),
                })),
            },
        );
        if let Some(bind) = self.outbound_bind {
            fields.insert("INTERCEPTION_MODE".into(), string("NONE"));
            fields.insert("STRAIT_OUTBOUND_BIND".into(), string(&bind.to_string()));
        }
        let (major, minor, patch) = self.envoy_version;
        Node {
            id: self.node_id.clone(),
            cluster: format!("load-client.{}", self.namespace),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            user_agent_name: "envoy".to_string(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        }
    }
}

/// How the simulated proxies behave.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The ADS server, `host:port`.
    pub xds: String,
    /// Incremental (Delta) ADS instead of state of the world.
    pub delta: bool,
    /// Fraction of responses NACKed once a proxy is configured (0–1).
    pub nack_fraction: f64,
    /// Decode every resource completely, as Envoy would (costs the harness CPU).
    pub full_decode: bool,
    /// Seed of the NACK draws.
    pub seed: u64,
    /// Time allowed for a TCP connection to the server.
    pub connect_timeout: Duration,
    /// Connections being opened at once, at most (a burst of thousands of SYNs overflows the
    /// server's accept backlog and turns into retransmissions seconds later).
    pub connect_concurrency: usize,
}

/// Responses, payload bytes and resources received, per type.
#[derive(Debug, Default)]
pub struct TypeCounters {
    responses: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
    resources: [AtomicU64; 4],
}

/// A copy of [`TypeCounters`] at one instant, indexed by [`XdsKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    /// Responses.
    pub responses: [u64; 4],
    /// Bytes of resources (encoded `Any`s).
    pub bytes: [u64; 4],
    /// Resources.
    pub resources: [u64; 4],
}

impl CounterSnapshot {
    /// `self - earlier`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        let d = |a: [u64; 4], b: [u64; 4]| std::array::from_fn(|i| a[i].saturating_sub(b[i]));
        CounterSnapshot {
            responses: d(self.responses, earlier.responses),
            bytes: d(self.bytes, earlier.bytes),
            resources: d(self.resources, earlier.resources),
        }
    }
}

impl TypeCounters {
    fn add(&self, t: XdsKind, bytes: u64, resources: u64) {
        let i = t.index();
        self.responses[i].fetch_add(1, Ordering::Relaxed);
        self.bytes[i].fetch_add(bytes, Ordering::Relaxed);
        self.resources[i].fetch_add(resources, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |a: &[AtomicU64; 4]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        CounterSnapshot {
            responses: load(&self.responses),
            bytes: load(&self.bytes),
            resources: load(&self.resources),
        }
    }
}

/// Identical name lists (every proxy of a mesh holds the same cluster list) are kept once,
/// and so are the changes between them: when a new service's cluster reaches 2,000 proxies,
/// the first one copies and sorts its 2,000 names, the others find the result.
#[derive(Debug, Default)]
struct NameCache {
    lists: Mutex<HashMap<u64, Weak<Vec<String>>>>,
    changes: Mutex<HashMap<u64, Change>>,
    /// Subscription diffs, by (before, now).
    diffs: ListMemo<2, Arc<(Vec<String>, Vec<String>)>>,
    /// Lists encoded as a request's `resource_names` field.
    wires: ListMemo<1, bytes::Bytes>,
}

/// Values computed from interned lists, by the lists' addresses. An entry's `Weak`s keep
/// those addresses reserved, so a live list at an entry's address is the list the value was
/// computed from.
#[derive(Debug)]
struct ListMemo<const N: usize, V> {
    map: Mutex<HashMap<[usize; N], Memo<N, V>>>,
}

/// The lists a value was computed from, and the value.
type Memo<const N: usize, V> = ([Weak<Vec<String>>; N], V);

impl<const N: usize, V> Default for ListMemo<N, V> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<const N: usize, V: Clone> ListMemo<N, V> {
    /// The value for `lists`, made by `make` the first time.
    fn get(&self, lists: [&Arc<Vec<String>>; N], make: impl FnOnce() -> V) -> V {
        let key = lists.map(|l| Arc::as_ptr(l) as usize);
        if let Some((_, v)) = lock(&self.map).get(&key) {
            return v.clone();
        }
        let v = make();
        let mut map = lock(&self.map);
        if map.len() > NAME_CACHE_PRUNE {
            map.retain(|_, (lists, _)| lists.iter().all(|l| l.strong_count() > 0));
        }
        map.insert(key, (lists.map(Arc::downgrade), v.clone()));
        v
    }
}

/// Field number of `resource_names` in `DiscoveryRequest`.
const RESOURCE_NAMES_FIELD: u32 = 3;

/// `from` with `added` and without `gone` is `to`. A `Weak` keeps its allocation, so a live
/// list at the same address is the same list.
#[derive(Debug)]
struct Change {
    from: Weak<Vec<String>>,
    added: Vec<String>,
    gone: Vec<String>,
    to: Weak<Vec<String>>,
}

/// Entries kept before dead ones are dropped.
const NAME_CACHE_PRUNE: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NameCache {
    fn intern(&self, names: Vec<String>) -> Arc<Vec<String>> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for n in &names {
            h.update(n.as_bytes());
            h.update(b"\0");
        }
        let key = h.digest();
        let mut lists = lock(&self.lists);
        if let Some(existing) = lists.get(&key).and_then(Weak::upgrade)
            && *existing == names
        {
            return existing;
        }
        if lists.len() > NAME_CACHE_PRUNE {
            lists.retain(|_, w| w.strong_count() > 0);
        }
        let list = Arc::new(names);
        lists.insert(key, Arc::downgrade(&list));
        list
    }

    /// The sorted list `from` (sorted, deduplicated) without `gone` and with `added`.
    fn change(
        &self,
        from: &Arc<Vec<String>>,
        mut added: Vec<String>,
        mut gone: Vec<String>,
    ) -> Arc<Vec<String>> {
        added.sort_unstable();
        added.dedup();
        gone.sort_unstable();
        gone.dedup();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(Arc::as_ptr(from) as usize).to_le_bytes());
        for n in &added {
            h.update(n.as_bytes());
            h.update(b"\0");
        }
        h.update(b"\x01");
        for n in &gone {
            h.update(n.as_bytes());
            h.update(b"\0");
        }
        let key = h.digest();
        if let Some(c) = lock(&self.changes).get(&key)
            && std::ptr::eq(c.from.as_ptr(), Arc::as_ptr(from))
            && c.added == added
            && c.gone == gone
            && let Some(to) = c.to.upgrade()
        {
            return to;
        }
        let mut names = from.as_ref().clone();
        if !gone.is_empty() {
            names.retain(|n| gone.binary_search(n).is_err());
        }
        names.extend(added.iter().cloned());
        names.sort_unstable();
        names.dedup();
        let to = self.intern(names);
        let mut changes = lock(&self.changes);
        if changes.len() > NAME_CACHE_PRUNE {
            changes.retain(|_, c| c.to.strong_count() > 0 && c.from.strong_count() > 0);
        }
        changes.insert(
            key,
            Change {
                from: Arc::downgrade(from),
                added,
                gone,
                to: Arc::downgrade(&to),
            },
        );
        to
    }

    /// An interned list as the `resource_names` field of a SotW request, encoded once and
    /// shared by every proxy sending it (an EDS ACK of a proxy holding 2,000 clusters lists
    /// all 2,000 names).
    fn wire(&self, list: &Arc<Vec<String>>) -> bytes::Bytes {
        self.wires.get([list], || {
            let mut buf = Vec::new();
            for name in list.iter() {
                prost::encoding::string::encode(RESOURCE_NAMES_FIELD, name, &mut buf);
            }
            buf.into()
        })
    }

    /// What a proxy going from `before` to `now` subscribes to and unsubscribes from
    /// ([`sorted_diff`]), computed once per pair.
    fn diff(
        &self,
        before: &Arc<Vec<String>>,
        now: &Arc<Vec<String>>,
    ) -> Arc<(Vec<String>, Vec<String>)> {
        self.diffs
            .get([before, now], || Arc::new(sorted_diff(before, now)))
    }
}

/// State shared by every simulated proxy and the harness.
#[derive(Debug)]
pub struct LoadShared {
    /// How proxies behave.
    pub opts: ProxyOptions,
    /// Changes in flight.
    pub tracker: Arc<Tracker>,
    /// What proxies received.
    pub counters: TypeCounters,
    /// NACKs sent.
    pub nacks: AtomicU64,
    /// NACKs are drawn only while this is set (during churn).
    pub nack_enabled: AtomicBool,
    /// Proxies with an open stream now.
    pub connected: AtomicUsize,
    /// Proxies that have received their complete initial configuration.
    pub synced: AtomicUsize,
    /// Streams opened again after a failure.
    pub reconnects: AtomicU64,
    /// Connection or stream failures.
    pub errors: AtomicU64,
    /// The last failure, for the report.
    pub last_error: Mutex<Option<String>>,
    /// When the harness started connecting.
    pub start: Instant,
    sync_ms: Mutex<Vec<f64>>,
    last_sync_ns: AtomicU64,
    names: NameCache,
    connect_gate: tokio::sync::Semaphore,
}

impl LoadShared {
    /// Shared state for a run whose connections start at `start`.
    pub fn new(opts: ProxyOptions, tracker: Arc<Tracker>, start: Instant) -> Arc<Self> {
        let gate = tokio::sync::Semaphore::new(opts.connect_concurrency.max(1));
        Arc::new(Self {
            connect_gate: gate,
            opts,
            tracker,
            counters: TypeCounters::default(),
            nacks: AtomicU64::new(0),
            nack_enabled: AtomicBool::new(false),
            connected: AtomicUsize::new(0),
            synced: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            start,
            sync_ms: Mutex::new(Vec::new()),
            last_sync_ns: AtomicU64::new(0),
            names: NameCache::default(),
        })
    }

    /// Each synced proxy's time from its own connection start to its complete
    /// configuration, in milliseconds.
    pub fn sync_times_ms(&self) -> Vec<f64> {
        lock(&self.sync_ms).clone()
    }

    /// Time from [`LoadShared::start`] to the last proxy's complete configuration.
    pub fn last_sync(&self) -> Duration {
        Duration::from_nanos(self.last_sync_ns.load(Ordering::Acquire))
    }

    fn failed(&self, spec: &ProxySpec, e: &Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        debug!(proxy = spec.index, error = %e, "proxy stream failed");
        *lock(&self.last_error) = Some(e.to_string());
    }
}

/// Runs one simulated proxy until `stop` turns true: connects, follows the protocol, and
/// reconnects (after a second) when the stream fails.
pub async fn run_proxy(spec: ProxySpec, shared: Arc<LoadShared>, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(
        shared.opts.seed ^ (spec.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut first_sync = true;
    let mut attempt = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        if attempt > 0 {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        let mut session = Session::new(&spec, &shared, &mut rng, started, &mut first_sync);
        let result = tokio::select! {
            r = session.run() => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => {
                // The server ended the stream: Envoy reconnects.
                shared.failed(&spec, &Error::Closed);
            }
            Err(e) => shared.failed(&spec, &e),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Opens an ADS stream, `first` being its first requests, at most
/// [`ProxyOptions::connect_concurrency`] connections being opened at once.
async fn open<M: Message>(
    shared: &LoadShared,
    path: &str,
    first: &[M],
) -> Result<(grpc::Tx, grpc::Rx)> {
    let opts = &shared.opts;
    let connection = {
        let _permit = shared
            .connect_gate
            .acquire()
            .await
            .map_err(|e| Error::Connect {
                addr: opts.xds.clone(),
                message: e.to_string(),
            })?;
        grpc::connect(&opts.xds, opts.connect_timeout).await?
    };
    connection.open(path, first).await
}

/// Counts a stream in the connected gauge while it is open, however it ends.
struct ConnectedGuard<'a>(&'a AtomicUsize);

impl<'a> ConnectedGuard<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The first fields of a Cluster: name, discovery type, EDS service name.
#[derive(Clone, PartialEq, Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, optional, tag = "2")]
    discovery_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    eds: Option<EdsHead>,
}

#[derive(Clone, PartialEq, Message)]
struct EdsHead {
    #[prost(string, tag = "2")]
    service_name: String,
}

/// Field 1 of a resource: the name of a Listener or RouteConfiguration, the cluster name of
/// a ClusterLoadAssignment.
#[derive(Clone, PartialEq, Message)]
struct NameHead {
    #[prost(string, tag = "1")]
    name: String,
}

const EDS_TYPE: i32 = 3;

/// The ADS methods.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// A `google.protobuf.Any` whose value points into the received message instead of being
/// copied out of it.
#[derive(Clone, PartialEq, Message)]
struct RawAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: bytes::Bytes,
}

/// The fields of a `DiscoveryResponse` the proxy reads.
#[derive(Clone, PartialEq, Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<RawAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// The fields of a `DeltaDiscoveryResponse` the proxy reads.
#[derive(Clone, PartialEq, Message)]
struct DeltaResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

/// What the proxy reads of a response, whichever protocol.
trait AdsResponse: Message + Default {
    /// The message's name, for errors.
    const NAME: &'static str;
    fn type_url(&self) -> &str;
    fn resources(&self) -> Vec<&RawAny>;
    /// Names removed (Delta), version (SotW) and nonce.
    fn rest(&self) -> (&[String], &str, &str);
}

impl AdsResponse for SotwResponse {
    const NAME: &'static str = "DiscoveryResponse";
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn resources(&self) -> Vec<&RawAny> {
        self.resources.iter().collect()
    }
    fn rest(&self) -> (&[String], &str, &str) {
        (&[], &self.version_info, &self.nonce)
    }
}

impl AdsResponse for DeltaResponse {
    const NAME: &'static str = "DeltaDiscoveryResponse";
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn resources(&self) -> Vec<&RawAny> {
        self.resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .collect()
    }
    fn rest(&self) -> (&[String], &str, &str) {
        (&self.removed_resources, "", &self.nonce)
    }
}

/// The resource of a Delta `Resource`.
#[derive(Clone, PartialEq, Message)]
struct DeltaResource {
    #[prost(message, optional, tag = "2")]
    resource: Option<RawAny>,
}

fn decode<M: Message + Default>(t: XdsKind, any: &RawAny) -> Result<M> {
    if any.type_url != t.type_url() {
        return Err(Error::WrongType {
            expected: t.type_url(),
            got: any.type_url.clone(),
        });
    }
    M::decode(any.value.clone()).map_err(|source| Error::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// The EDS resource name of a cluster, when it is an EDS cluster.
fn eds_name(any: &RawAny, full: bool) -> Result<(String, Option<String>)> {
    if full {
        let c: Cluster = decode(XdsKind::Cds, any)?;
        let is_eds = matches!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(EDS_TYPE))
        );
        let service = c
            .eds_cluster_config
            .map(|e| e.service_name)
            .filter(|s| !s.is_empty());
        let eds = is_eds.then(|| service.unwrap_or_else(|| c.name.clone()));
        Ok((c.name, eds))
    } else {
        let c: ClusterHead = decode(XdsKind::Cds, any)?;
        let service = c.eds.map(|e| e.service_name).filter(|s| !s.is_empty());
        let eds =
            (c.discovery_type == Some(EDS_TYPE)).then(|| service.unwrap_or_else(|| c.name.clone()));
        Ok((c.name, eds))
    }
}

/// The route configuration names a listener's HTTP connection managers ask for.
fn listener_routes(any: &RawAny) -> Result<(String, Vec<String>)> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    let l: Listener = decode(XdsKind::Lds, any)?;
    let mut routes = Vec::new();
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            if let Some(ConfigType::TypedConfig(tc)) = &f.config_type
                && tc.type_url == HCM_TYPE
            {
                let hcm = HttpConnectionManager::decode(tc.value.as_slice()).map_err(|source| {
                    Error::Decode {
                        type_url: tc.type_url.clone(),
                        source,
                    }
                })?;
                if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                    routes.push(rds.route_config_name);
                }
            }
        }
    }
    Ok((l.name, routes))
}

/// Healthy endpoint addresses of a load assignment.
fn cla_addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let mut out = Vec::new();
    for group in &cla.endpoints {
        for lb in &group.lb_endpoints {
            // UNKNOWN (0) and HEALTHY (1) take traffic.
            if lb.health_status > 1 {
                continue;
            }
            if let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier
                && let Some(A::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.as_ref())
            {
                out.push(sa.address.clone());
            }
        }
    }
    out
}

/// Weight of `cluster` in any weighted route of `rc`.
fn route_weight(rc: &RouteConfiguration, cluster: &str) -> Option<u32> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    rc.virtual_hosts
        .iter()
        .flat_map(|vh| vh.routes.iter())
        .filter_map(|r| match &r.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::WeightedClusters(w)) => Some(w),
                _ => None,
            },
            _ => None,
        })
        .flat_map(|w| w.clusters.iter())
        .find(|c| c.name == cluster)
        .map(|c| c.weight.as_ref().map(|w| w.value).unwrap_or(0))
}

fn hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// Requests on the wire, whichever protocol variant.
enum Sender {
    Sotw(grpc::Tx),
    Delta(grpc::Tx),
}

/// One ADS stream's state: what the proxy holds, asked for and still waits for.
struct Session<'a> {
    spec: &'a ProxySpec,
    shared: &'a LoadShared,
    rng: &'a mut fastrand::Rng,
    started: Instant,
    first_sync: &'a mut bool,
    /// EDS names of the clusters the proxy holds (sorted).
    eds: Arc<Vec<String>>,
    /// Delta: cluster name → EDS name, for EDS clusters whose names differ.
    renamed: HashMap<String, String>,
    /// The EDS names last asked for.
    eds_asked: Arc<Vec<String>>,
    /// Listener → route configuration names.
    listeners: BTreeMap<String, Vec<String>>,
    routes: Arc<Vec<String>>,
    routes_asked: Arc<Vec<String>>,
    /// Until configured: which load assignments and route configurations have arrived.
    eds_seen: HashSet<u64>,
    routes_seen: HashSet<u64>,
    accepted: [bool; 4],
    /// SotW: last accepted version and last received nonce, per type.
    version: [String; 4],
    nonce: [String; 4],
    synced: bool,
    progress: ProxyProgress,
}

impl<'a> Session<'a> {
    fn new(
        spec: &'a ProxySpec,
        shared: &'a LoadShared,
        rng: &'a mut fastrand::Rng,
        started: Instant,
        first_sync: &'a mut bool,
    ) -> Self {
        Self {
            spec,
            shared,
            rng,
            started,
            first_sync,
            eds: Arc::default(),
            renamed: HashMap::new(),
            eds_asked: Arc::default(),
            listeners: BTreeMap::new(),
            routes: Arc::default(),
            routes_asked: Arc::default(),
            eds_seen: HashSet::new(),
            routes_seen: HashSet::new(),
            accepted: [false; 4],
            version: Default::default(),
            nonce: Default::default(),
            synced: false,
            progress: ProxyProgress::default(),
        }
    }

    async fn run(&mut self) -> Result<()> {
        let shared = self.shared;
        if shared.opts.delta {
            let mut first = delta_request(XdsKind::Cds, &[], &[], "");
            first.node = Some(self.spec.node());
            let lds = delta_request(XdsKind::Lds, &[], &[], "");
            let (tx, rx) = open(shared, DELTA_PATH, &[first, lds]).await?;
            self.serve::<DeltaResponse>(Sender::Delta(tx), rx).await
        } else {
            let mut first = sotw_request(XdsKind::Cds, "", "");
            first.node = Some(self.spec.node());
            let lds = sotw_request(XdsKind::Lds, "", "");
            let (tx, rx) = open(shared, SOTW_PATH, &[first, lds]).await?;
            self.serve::<SotwResponse>(Sender::Sotw(tx), rx).await
        }
    }

    /// Handles the responses of an open stream until it ends.
    async fn serve<R: AdsResponse>(&mut self, mut tx: Sender, mut rx: grpc::Rx) -> Result<()> {
        let _connected = ConnectedGuard::new(&self.shared.connected);
        while let Some(msg) = rx.message().await? {
            let resp = R::decode(msg).map_err(|source| Error::Decode {
                type_url: R::NAME.to_string(),
                source,
            })?;
            let Some(t) = XdsKind::from_type_url(resp.type_url()) else {
                warn!(type_url = %resp.type_url(), "response of an unexpected type");
                continue;
            };
            let resources = resp.resources();
            let (removed, version, nonce) = resp.rest();
            self.handle(t, &resources, removed, version, nonce, &mut tx)?;
        }
        Ok(())
    }

    /// The `resource_names` field, encoded, of the names the proxy currently subscribes to
    /// for `t` (SotW requests carry all of them).
    fn names_wire(&self, t: XdsKind) -> bytes::Bytes {
        match t {
            XdsKind::Eds => self.shared.names.wire(&self.eds_asked),
            XdsKind::Rds => self.shared.names.wire(&self.routes_asked),
            _ => bytes::Bytes::new(),
        }
    }

    fn send_ack(
        &mut self,
        tx: &mut Sender,
        t: XdsKind,
        nonce: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let error_detail = error.map(|m| RpcStatus {
            code: 3,
            message: m.to_string(),
            details: vec![],
        });
        match tx {
            Sender::Sotw(tx) => {
                let mut r = sotw_request(t, &self.version[t.index()], nonce);
                r.error_detail = error_detail;
                tx.send_with(&r, self.names_wire(t))
            }
            Sender::Delta(tx) => {
                let mut r = delta_request(t, &[], &[], nonce);
                r.error_detail = error_detail;
                tx.send(&r)
            }
        }
    }

    /// Asks for `now` instead of `before` (EDS or RDS).
    fn resubscribe(
        &mut self,
        tx: &mut Sender,
        t: XdsKind,
        before: &Arc<Vec<String>>,
        now: &Arc<Vec<String>>,
    ) -> Result<()> {
        match tx {
            Sender::Sotw(tx) => {
                let r = sotw_request(t, &self.version[t.index()], &self.nonce[t.index()]);
                tx.send_with(&r, self.shared.names.wire(now))
            }
            Sender::Delta(tx) => {
                let d = self.shared.names.diff(before, now);
                let (sub, unsub) = &*d;
                if sub.is_empty() && unsub.is_empty() {
                    return Ok(());
                }
                tx.send(&delta_request(t, sub, unsub, ""))
            }
        }
    }

    /// One response: decode what matters, ACK (or NACK) it, follow up with subscriptions,
    /// and check the changes in flight.
    fn handle(
        &mut self,
        t: XdsKind,
        resources: &[&RawAny],
        removed: &[String],
        version: &str,
        nonce: &str,
        tx: &mut Sender,
    ) -> Result<()> {
        let bytes: u64 = resources.iter().map(|a| a.encoded_len() as u64).sum();
        self.shared.counters.add(t, bytes, resources.len() as u64);
        let delta = matches!(tx, Sender::Delta(_));
        self.nonce[t.index()] = nonce.to_string();
        let nack = self.synced
            && self.shared.opts.nack_fraction > 0.0
            && self.shared.nack_enabled.load(Ordering::Relaxed)
            && self.rng.f64() < self.shared.opts.nack_fraction;
        let active = self.shared.tracker.active();
        let full = self.shared.opts.full_decode;
        let mut hits: Vec<(Arc<Pending>, usize)> = Vec::new();
        let mut arrived: Vec<String> = Vec::new();
        match t {
            XdsKind::Cds => {
                if delta {
                    let mut updates: Vec<(String, Option<String>)> = Vec::new();
                    for any in resources {
                        updates.push(eds_name(any, full)?);
                    }
                    if !nack {
                        let mut gone: HashSet<String> = HashSet::new();
                        for name in removed {
                            gone.insert(self.renamed.remove(name).unwrap_or_else(|| name.clone()));
                        }
                        let mut added = Vec::new();
                        for (name, e) in updates {
                            match e {
                                Some(e) => {
                                    gone.remove(&e);
                                    if e != name {
                                        self.renamed.insert(name, e.clone());
                                    }
                                    added.push(e);
                                }
                                None => {
                                    gone.insert(self.renamed.remove(&name).unwrap_or(name));
                                }
                            }
                        }
                        self.eds =
                            self.shared
                                .names
                                .change(&self.eds, added, gone.into_iter().collect());
                    }
                } else {
                    let mut eds = Vec::with_capacity(resources.len());
                    for any in resources {
                        if let (_, Some(e)) = eds_name(any, full)? {
                            eds.push(e);
                        }
                    }
                    eds.sort_unstable();
                    eds.dedup();
                    if !nack {
                        self.eds = self.shared.names.intern(eds);
                    }
                }
            }
            XdsKind::Lds => {
                let mut listeners = if delta {
                    let mut l = self.listeners.clone();
                    for name in removed {
                        l.remove(name);
                    }
                    l
                } else {
                    BTreeMap::new()
                };
                for any in resources {
                    let (name, routes) = listener_routes(any)?;
                    listeners.insert(name, routes);
                }
                if !nack {
                    let mut routes: Vec<String> = listeners.values().flatten().cloned().collect();
                    routes.sort_unstable();
                    routes.dedup();
                    self.listeners = listeners;
                    self.routes = self.shared.names.intern(routes);
                }
            }
            XdsKind::Eds => {
                for any in resources {
                    let name = if full {
                        decode::<ClusterLoadAssignment>(t, any)?.cluster_name
                    } else {
                        decode::<NameHead>(t, any)?.name
                    };
                    let concerned: Vec<&Arc<Pending>> = active
                        .iter()
                        .filter(|p| {
                            !self.progress.is_finished(p.id) && p.expect.concerns_eds(&name)
                        })
                        .collect();
                    if !concerned.is_empty() {
                        let cla: ClusterLoadAssignment = decode(t, any)?;
                        let addresses = cla_addresses(&cla);
                        for p in concerned {
                            if let Some(part) = p.expect.eds_part(&name, &addresses) {
                                hits.push((p.clone(), part));
                            }
                        }
                    }
                    if !self.synced {
                        arrived.push(name);
                    }
                }
            }
            XdsKind::Rds => {
                for any in resources {
                    let head: NameHead = decode(t, any)?;
                    let concerned: Vec<&Arc<Pending>> = active
                        .iter()
                        .filter(|p| {
                            !self.progress.is_finished(p.id) && p.expect.concerns_route(&head.name)
                        })
                        .collect();
                    if full || !concerned.is_empty() {
                        let rc: RouteConfiguration = decode(t, any)?;
                        for p in concerned {
                            if let crate::churn::Expectation::RouteWeight {
                                cluster, weight, ..
                            } = &p.expect
                                && route_weight(&rc, cluster) == Some(*weight)
                            {
                                hits.push((p.clone(), 0));
                            }
                        }
                    }
                    if !self.synced {
                        arrived.push(head.name);
                    }
                }
            }
        }
        if nack {
            self.shared.nacks.fetch_add(1, Ordering::Relaxed);
            self.send_ack(tx, t, nonce, Some("strait-load: simulated rejection"))?;
            for (p, _) in hits {
                if !self.progress.is_finished(p.id) {
                    self.shared.tracker.excuse(&p);
                    self.progress.finish(p.id);
                }
            }
            return Ok(());
        }
        if !delta {
            self.version[t.index()] = version.to_string();
        }
        self.accepted[t.index()] = true;
        self.send_ack(tx, t, nonce, None)?;
        let now = Instant::now();
        for (p, part) in hits {
            if self.progress.see(&p, part) == Step::Complete {
                self.shared.tracker.record(&p, now);
                self.progress.finish(p.id);
            }
        }
        self.progress.retain(&active);
        match t {
            XdsKind::Cds if self.eds != self.eds_asked => {
                let before = std::mem::replace(&mut self.eds_asked, self.eds.clone());
                let now_asked = self.eds_asked.clone();
                self.resubscribe(tx, XdsKind::Eds, &before, &now_asked)?;
            }
            XdsKind::Lds if self.routes != self.routes_asked => {
                let before = std::mem::replace(&mut self.routes_asked, self.routes.clone());
                let now_asked = self.routes_asked.clone();
                self.resubscribe(tx, XdsKind::Rds, &before, &now_asked)?;
            }
            XdsKind::Eds => self.eds_seen.extend(arrived.iter().map(|n| hash(n))),
            XdsKind::Rds => self.routes_seen.extend(arrived.iter().map(|n| hash(n))),
            _ => {}
        }
        self.check_synced();
        Ok(())
    }

    fn check_synced(&mut self) {
        if self.synced
            || !self.accepted[XdsKind::Cds.index()]
            || !self.accepted[XdsKind::Lds.index()]
            || self.eds_seen.len() < self.eds.len()
            || self.routes_seen.len() < self.routes.len()
        {
            return;
        }
        let all =
            |names: &[String], seen: &HashSet<u64>| names.iter().all(|n| seen.contains(&hash(n)));
        if !all(&self.eds, &self.eds_seen) || !all(&self.routes, &self.routes_seen) {
            return;
        }
        self.synced = true;
        self.eds_seen = HashSet::new();
        self.routes_seen = HashSet::new();
        if std::mem::take(self.first_sync) {
            let now = Instant::now();
            let own = now.duration_since(self.started);
            let total = now.duration_since(self.shared.start);
            lock(&self.shared.sync_ms).push(own.as_secs_f64() * 1e3);
            self.shared
                .last_sync_ns
                .fetch_max(total.as_nanos() as u64, Ordering::AcqRel);
            self.shared.synced.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A SotW request without its names ([`NameCache::wire`] encodes those).
fn sotw_request(t: XdsKind, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: t.type_url().to_string(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn delta_request(
    t: XdsKind,
    sub: &[String],
    unsub: &[String],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.type_url().to_string(),
        resource_names_subscribe: sub.to_vec(),
        resource_names_unsubscribe: unsub.to_vec(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// Names in `now` and not in `before` (to subscribe), and the reverse (to unsubscribe).
/// Both inputs are sorted.
pub fn sorted_diff(before: &[String], now: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut i, mut j) = (0, 0);
    let (mut sub, mut unsub) = (Vec::new(), Vec::new());
    while i < before.len() || j < now.len() {
        match (before.get(i), now.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                unsub.push(a.clone());
                i += 1;
            }
            (Some(_), Some(b)) => {
                sub.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                unsub.push(a.clone());
                i += 1;
            }
            (None, Some(b)) => {
                sub.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (sub, unsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn subscription_diffs() {
        let (sub, unsub) = sorted_diff(&s(&["a", "c", "d"]), &s(&["b", "c", "e"]));
        assert_eq!(sub, s(&["b", "e"]));
        assert_eq!(unsub, s(&["a", "d"]));
        assert_eq!(sorted_diff(&[], &s(&["x"])), (s(&["x"]), vec![]));
        assert_eq!(sorted_diff(&s(&["x"]), &s(&["x"])), (vec![], vec![]));
    }

    #[test]
    fn list_changes_are_computed_once_and_shared() {
        let cache = NameCache::default();
        let base = cache.intern(s(&["a", "c", "d"]));
        let one = cache.change(&base, s(&["e", "b"]), s(&["c"]));
        assert_eq!(*one, s(&["a", "b", "d", "e"]));
        // The same change from the same list: the same list, not a copy.
        let again = cache.change(&base, s(&["b", "e", "b"]), s(&["c"]));
        assert!(Arc::ptr_eq(&one, &again));
        // Reached another way, the list is still shared.
        let other = cache.change(&cache.intern(s(&["a", "b", "d"])), s(&["e"]), vec![]);
        assert!(Arc::ptr_eq(&one, &other));
        // A different change from the same list is not confused with it.
        let two = cache.change(&base, s(&["e", "b"]), vec![]);
        assert_eq!(*two, s(&["a", "b", "c", "d", "e"]));
        // Removing what is not there and adding what is: no change in content.
        let same = cache.change(&base, s(&["a"]), s(&["z"]));
        assert_eq!(*same, *base);

        let d = cache.diff(&base, &one);
        assert_eq!(*d, (s(&["b", "e"]), s(&["c"])));
        assert!(Arc::ptr_eq(&d, &cache.diff(&base, &one)));
        assert_eq!(cache.diff(&one, &base).0, s(&["c"]));
    }

    #[test]
    fn sotw_requests_carry_the_shared_encoded_names() {
        let cache = NameCache::default();
        let list = cache.intern(s(&["outbound|80||a", "outbound|80||b"]));
        let wire = cache.wire(&list);
        assert_eq!(wire.as_ptr(), cache.wire(&list).as_ptr(), "encoded once");
        let head = sotw_request(XdsKind::Eds, "v1", "n1");
        let mut bytes = head.encode_to_vec();
        bytes.extend_from_slice(&wire);
        let r = DiscoveryRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(r.resource_names, *list);
        assert_eq!(r.type_url, XdsKind::Eds.type_url());
        assert_eq!(
            (r.version_info.as_str(), r.response_nonce.as_str()),
            ("v1", "n1")
        );
        assert!(cache.wire(&cache.intern(vec![])).is_empty());
    }

    #[test]
    fn light_and_full_cluster_decoding_agree() {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
        let mk = |name: &str, t: i32, service: &str| {
            let c = Cluster {
                name: name.to_string(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(t)),
                eds_cluster_config: Some(EdsClusterConfig {
                    service_name: service.to_string(),
                    eds_config: None,
                }),
                ..Default::default()
            };
            RawAny {
                type_url: XdsKind::Cds.type_url().to_string(),
                value: c.encode_to_vec().into(),
            }
        };
        for full in [false, true] {
            assert_eq!(
                eds_name(&mk("a", EDS_TYPE, ""), full).expect("decode"),
                ("a".to_string(), Some("a".to_string()))
            );
            assert_eq!(
                eds_name(&mk("b", EDS_TYPE, "b-eds"), full).expect("decode"),
                ("b".to_string(), Some("b-eds".to_string()))
            );
            assert_eq!(
                eds_name(&mk("c", 0, ""), full).expect("decode"),
                ("c".to_string(), None)
            );
        }
        let wrong = RawAny {
            type_url: XdsKind::Lds.type_url().to_string(),
            value: bytes::Bytes::new(),
        };
        assert!(eds_name(&wrong, false).is_err());
    }

    #[test]
    fn node_metadata() {
        let spec = ProxySpec::sidecar(
            3,
            "127.128.0.4".parse().expect("ip"),
            "load-01",
            "cluster.local",
            Some("127.0.0.1".parse().expect("ip")),
        );
        assert_eq!(
            spec.node_id,
            "sidecar~127.128.0.4~load-client-3.load-01~load-01.svc.cluster.local"
        );
        let node = spec.node();
        let md = node.metadata.expect("metadata");
        assert!(md.fields.contains_key("STRAIT_OUTBOUND_BIND"));
        assert!(md.fields.contains_key("NAMESPACE"));
        assert!(matches!(
            node.user_agent_version_type,
            Some(UserAgentVersionType::UserAgentBuildVersion(_))
        ));
    }
}
