//! The push controller: applies source events to the mesh index, debounces them, and hands
//! every connected proxy its new snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use strait_model::{ChangeSet, ClusterEvent, Event, MeshIndex, MeshSnapshot, Proxy, ProxyNode};
use strait_translate::ProxyClass;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cache::{ConfigCache, OwnLayers};
use crate::metrics::XdsMetrics;
use crate::resource::{ProxySnapshot, XdsType};
use crate::server::{SnapshotSource, Subscription};
use crate::status::SyncRegistry;

/// How changes are coalesced into pushes.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Push once no change has arrived for this long.
    pub debounce: Duration,
    /// …but never later than this after the first change of a burst.
    pub debounce_max: Duration,
    /// How many sources must report `Synced` before the first push.
    pub sources: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            sources: 1,
        }
    }
}

struct ProxyEntry {
    node: Arc<ProxyNode>,
    tx: watch::Sender<Option<Arc<ProxySnapshot>>>,
    own: Option<OwnLayers>,
    /// The proxy as last resolved, with its class: reused while changes cannot affect them.
    resolved: Option<(Proxy, ProxyClass)>,
}

struct State {
    mesh: Option<Arc<MeshSnapshot>>,
    cache: ConfigCache,
    proxies: HashMap<u64, ProxyEntry>,
    next_id: u64,
}

struct Inner {
    state: Mutex<State>,
    problems: Mutex<Vec<strait_translate::config::ConfigProblem>>,
    ready: AtomicBool,
    metrics: Arc<XdsMetrics>,
    registry: Arc<SyncRegistry>,
}

/// Owns the translation cache and the connected proxies' snapshot channels.
#[derive(Clone)]
pub struct PushController {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PushController {
    /// A controller with no mesh yet.
    pub fn new(metrics: Arc<XdsMetrics>, registry: Arc<SyncRegistry>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    mesh: None,
                    cache: ConfigCache::new(),
                    proxies: HashMap::new(),
                    next_id: 1,
                }),
                problems: Mutex::new(Vec::new()),
                ready: AtomicBool::new(false),
                metrics,
                registry,
            }),
        }
    }

    /// True once the first complete mesh has been pushed.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The mesh snapshot proxies are served from.
    pub fn mesh(&self) -> Option<Arc<MeshSnapshot>> {
        lock(&self.inner.state).mesh.clone()
    }

    /// Moves every proxy to `mesh`. Builds shared resources once, then each proxy's snapshot.
    pub fn push(&self, mesh: Arc<MeshSnapshot>, changes: &ChangeSet) {
        let started = Instant::now();
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        state.cache.update(mesh.clone(), changes);
        state.mesh = Some(mesh.clone());
        if changes.is_metadata_only() {
            // Nothing translated changed: publish the snapshot (status, tags, the webhook
            // read it) and leave every proxy as it is.
            self.inner.registry.set_mesh_version(mesh.version);
            debug!(
                version = mesh.version,
                "metadata-only change: no proxy rebuilt"
            );
            return;
        }
        let mut sent = 0usize;
        for entry in state.proxies.values_mut() {
            let ips = &entry.node.ips;
            let (proxy, class) = match entry.resolved.take() {
                Some(r) if changes.keeps_proxy(ips) => r,
                _ => {
                    let proxy = Proxy::resolve(entry.node.clone(), &mesh);
                    let class = state.cache.class_of(&proxy);
                    (proxy, class)
                }
            };
            // Inbound layers depend on services, the proxy's own workload and config.
            let own = if changes.keeps_inbound(ips) {
                entry.own.clone()
            } else {
                None
            };
            let (snap, own) = state.cache.proxy_snapshot_for(&proxy, &class, own);
            entry.own = Some(own);
            entry.resolved = Some((proxy, class));
            let unchanged = entry.tx.borrow().as_ref().is_some_and(|old| {
                XdsType::ALL
                    .iter()
                    .all(|t| old.view(*t).same_as(snap.view(*t)))
            });
            if !unchanged {
                entry.tx.send_replace(Some(Arc::new(snap)));
                sent += 1;
            }
        }
        state.cache.collect_garbage();
        if changes.full
            || !changes.config.is_empty()
            || !changes.services.is_empty()
            || changes.secrets
        {
            self.analyze(&mesh, state.cache.config());
        }
        self.inner.registry.set_mesh_version(mesh.version);
        self.inner.metrics.pushes.inc();
        let elapsed = started.elapsed();
        self.inner
            .metrics
            .push_seconds
            .observe(elapsed.as_secs_f64());
        info!(
            version = mesh.version,
            proxies = state.proxies.len(),
            updated = sent,
            endpoints_only = changes.is_endpoints_only(),
            services = changes.services.len(),
            endpoint_services = changes.endpoints.len(),
            ms = elapsed.as_secs_f64() * 1000.0,
            "pushed"
        );
        self.inner.ready.store(true, Ordering::Release);
    }

    /// Cross-object config problems of the mesh being served (see
    /// [`strait_translate::analysis`]).
    pub fn problems(&self) -> Vec<strait_translate::config::ConfigProblem> {
        self.inner
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn analyze(&self, mesh: &MeshSnapshot, config: &strait_translate::ConfigIndex) {
        let found = strait_translate::analysis::analyze(mesh, config);
        let mut known = self
            .inner
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for p in found.iter().filter(|p| !known.contains(p)) {
            warn!(kind = %p.kind, object = %p.object, field = %p.field, problem = %p.message, "config problem");
        }
        *known = found;
    }

    /// Runs the model side: applies `events` to `index`, and pushes debounced snapshots. Returns
    /// when the event channel closes.
    pub async fn run(
        self,
        mut index: MeshIndex,
        mut events: mpsc::Receiver<ClusterEvent>,
        opts: PushOptions,
    ) {
        let mut synced = 0usize;
        // Initial load: no push until every source has delivered its initial state, so a
        // proxy never sees a half-loaded mesh.
        while synced < opts.sources {
            match events.recv().await {
                Some(ClusterEvent {
                    event: Event::Synced,
                    ..
                }) => synced += 1,
                Some(e) => index.handle(e),
                None => return,
            }
        }
        let (mesh, changes) = index.snapshot();
        info!(
            services = mesh.services.len(),
            config = mesh.config.len(),
            "initial mesh loaded"
        );
        self.push_blocking(mesh, changes).await;
        loop {
            let Some(first) = events.recv().await else {
                return;
            };
            index.handle(first);
            let burst = Instant::now();
            loop {
                let remaining = opts.debounce_max.saturating_sub(burst.elapsed());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(opts.debounce.min(remaining), events.recv()).await {
                    Ok(Some(e)) => index.handle(e),
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            if !index.has_changes() {
                debug!("burst changed nothing");
                continue;
            }
            let (mesh, changes) = index.snapshot();
            if changes.is_empty() {
                continue;
            }
            self.push_blocking(mesh, changes).await;
        }
    }

    async fn push_blocking(&self, mesh: Arc<MeshSnapshot>, changes: ChangeSet) {
        let me = self.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || me.push(mesh, &changes)).await {
            warn!(%error, "push task failed");
        }
    }
}

impl SnapshotSource for PushController {
    fn subscribe(&self, node: Arc<ProxyNode>) -> Subscription {
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        let id = state.next_id;
        state.next_id += 1;
        let (tx, rx) = watch::channel(None);
        let mut own = None;
        let mut resolved = None;
        if let Some(mesh) = state.mesh.clone() {
            let proxy = Proxy::resolve(node.clone(), &mesh);
            let class = state.cache.class_of(&proxy);
            let (snap, layers) = state.cache.proxy_snapshot_for(&proxy, &class, None);
            own = Some(layers);
            resolved = Some((proxy, class));
            tx.send_replace(Some(Arc::new(snap)));
        }
        state.proxies.insert(
            id,
            ProxyEntry {
                node,
                tx,
                own,
                resolved,
            },
        );
        let inner = self.inner.clone();
        Subscription::new(rx, move || {
            lock(&inner.state).proxies.remove(&id);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::XdsType;
    use strait_model::IndexOptions;
    use strait_model::testing::{mk_pod, mk_service, mk_slice};

    fn node(ip: &str, pod: &str) -> Arc<ProxyNode> {
        Arc::new(
            ProxyNode::parse(
                &format!("sidecar~{ip}~{pod}.shop~shop.svc.cluster.local"),
                &serde_json::Map::new(),
                None,
                None,
            )
            .expect("node"),
        )
    }

    fn object(json: serde_json::Value) -> strait_api::Object {
        strait_api::parse_object(json, "default")
            .expect("parses")
            .object
    }

    /// What a proxy is sent after pushes that reuse its resolution equals a fresh build:
    /// its own pod's new labels change its routes (source-conditioned rules), another pod's
    /// do not.
    #[test]
    fn reused_resolution_follows_the_proxys_own_pod() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = XdsMetrics::register(&mut registry);
        let push = PushController::new(metrics, SyncRegistry::new("t", "default"));
        let mut index = MeshIndex::new(IndexOptions::default());
        index.apply(mk_service("web", "shop", &[8080]));
        index.apply(mk_slice("web-1", "shop", "web", &["10.0.0.9"], &[8080]));
        index.apply(mk_pod(
            "client-0",
            "shop",
            "10.0.0.1",
            &[("app", "client"), ("tier", "free")],
            "n",
        ));
        index.apply(mk_pod(
            "other-0",
            "shop",
            "10.0.0.2",
            &[("app", "other")],
            "n",
        ));
        index.apply(object(serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"hosts": ["web"], "http": [
                {"match": [{"sourceLabels": {"tier": "gold"}}], "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}, "route": [{"destination": {"host": "web"}}]},
                {"route": [{"destination": {"host": "web"}}]}]}
        })));
        let (mesh, changes) = index.snapshot();
        push.push(mesh, &changes);
        let sub = push.subscribe(node("10.0.0.1", "client-0"));
        let routes = |sub: &Subscription| {
            sub.snapshots
                .borrow()
                .as_ref()
                .map(|s| s.view(XdsType::Route).version())
        };
        let fresh = |mesh: &MeshSnapshot| {
            let mut cache = ConfigCache::new();
            cache.update(Arc::new(mesh.clone()), &ChangeSet::full());
            let p = Proxy::resolve(node("10.0.0.1", "client-0"), mesh);
            cache
                .proxy_snapshot(&p, None)
                .0
                .view(XdsType::Route)
                .version()
        };
        let first = routes(&sub);

        // Another pod changes: nothing changes for this proxy.
        index.apply(mk_pod(
            "other-0",
            "shop",
            "10.0.0.2",
            &[("app", "other"), ("tier", "gold")],
            "n",
        ));
        let (mesh, changes) = index.snapshot();
        assert!(changes.keeps_proxy(&[std::net::IpAddr::from([10, 0, 0, 1])]));
        push.push(mesh.clone(), &changes);
        assert_eq!(routes(&sub), first);
        assert_eq!(routes(&sub), Some(fresh(&mesh)));

        // Its own pod turns gold: the source-conditioned rule now applies to it.
        index.apply(mk_pod(
            "client-0",
            "shop",
            "10.0.0.1",
            &[("app", "client"), ("tier", "gold")],
            "n",
        ));
        let (mesh, changes) = index.snapshot();
        assert!(!changes.keeps_proxy(&[std::net::IpAddr::from([10, 0, 0, 1])]));
        push.push(mesh.clone(), &changes);
        assert_ne!(routes(&sub), first);
        assert_eq!(routes(&sub), Some(fresh(&mesh)));
    }
}
