//! What the Kubernetes source knows about its clusters, for the status API (`/ready`) and
//! Prometheus: per cluster whether every watch is up, the last error, the last time the API
//! server answered, and the objects it refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strait_api::Kind;
use strait_api::k8s_openapi::jiff::Timestamp;

/// Labels of the per-watch metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The cluster id.
    pub cluster: String,
    /// The watched kind.
    pub kind: &'static str,
}

/// Prometheus metrics of the Kubernetes source.
#[derive(Debug, Default)]
pub struct KubeMetrics {
    /// 1 while a watch is established (its last request succeeded), 0 otherwise.
    pub watch_up: Family<WatchLabels, Gauge>,
    /// Errors of list and watch requests.
    pub watch_errors: Family<WatchLabels, Counter>,
    /// Complete lists after the first one (410 Gone, a restarted watcher).
    pub relists: Family<WatchLabels, Counter>,
    /// Watch events received (initial list items included).
    pub events: Family<WatchLabels, Counter>,
    /// Objects currently held from the cluster.
    pub objects: Family<WatchLabels, Gauge>,
    /// Objects refused by validation (each refused version counts once).
    pub refused: Family<WatchLabels, Counter>,
}

impl KubeMetrics {
    /// Creates the metrics and registers them under `strait_kube_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = KubeMetrics::default();
        registry.register(
            "strait_kube_watch_up",
            "1 while the watch of a kind in a cluster is established",
            m.watch_up.clone(),
        );
        registry.register(
            "strait_kube_watch_errors",
            "Failed list and watch requests, by cluster and kind",
            m.watch_errors.clone(),
        );
        registry.register(
            "strait_kube_relists",
            "Complete relists after the initial one (410 Gone, watcher restarts)",
            m.relists.clone(),
        );
        registry.register(
            "strait_kube_watch_events",
            "Watch events received, by cluster and kind",
            m.events.clone(),
        );
        registry.register(
            "strait_kube_objects",
            "Objects held from each cluster, by kind",
            m.objects.clone(),
        );
        registry.register(
            "strait_kube_objects_refused",
            "Object versions refused by validation, by cluster and kind",
            m.refused.clone(),
        );
        Arc::new(m)
    }
}

/// An object the source refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeProblem {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The field at fault, when known (`spec.http[0].route[0].weight`).
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// One watched kind of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindStatus {
    /// What is watched (`networking.istio.io/v1 virtualservices`); `None` while the API
    /// server does not serve the kind (its CRD is not installed).
    pub resource: Option<String>,
    /// The watch is established: its last request succeeded and no error followed.
    pub up: bool,
    /// The first complete list has been delivered.
    pub synced: bool,
    /// Objects held.
    pub objects: usize,
    /// Complete lists after the first one.
    pub relists: u64,
    /// Failed requests so far.
    pub errors: u64,
    /// The current error, while not up.
    pub error: Option<String>,
}

/// One cluster, as `/ready` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// Every watch is established (config from this cluster is current).
    pub connected: bool,
    /// The cluster's initial state has been delivered.
    pub synced: bool,
    /// The current error, while not connected.
    pub error: Option<String>,
    /// The most recent error, kept after recovery.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_time: Option<String>,
    /// The last time the API server answered a list or watch, or sent an event (RFC 3339).
    pub last_sync_time: Option<String>,
    /// Per watched kind.
    pub kinds: BTreeMap<Kind, KindStatus>,
    /// Objects refused by validation (their last good version, if any, stays in force).
    pub problems: Vec<KubeProblem>,
}

#[derive(Debug, Default)]
struct KindEntry {
    resource: Option<String>,
    up: bool,
    synced: bool,
    objects: usize,
    relists: u64,
    errors: u64,
    error: Option<String>,
    problems: Vec<KubeProblem>,
}

#[derive(Debug, Default)]
struct ClusterEntry {
    synced: bool,
    discovered: bool,
    /// Outcome of the last request before discovery succeeded.
    reachable: bool,
    error: Option<String>,
    last_error: Option<(String, Timestamp)>,
    last_contact: Option<Timestamp>,
    kinds: BTreeMap<Kind, KindEntry>,
    plurals: HashMap<String, Kind>,
}

impl ClusterEntry {
    fn connected(&self) -> bool {
        if !self.discovered {
            return self.reachable;
        }
        self.kinds
            .values()
            .filter(|k| k.resource.is_some())
            .all(|k| k.up)
    }

    fn view(&self) -> ClusterStatus {
        let connected = self.connected();
        let current = if connected {
            None
        } else {
            self.kinds
                .iter()
                .find_map(|(kind, k)| k.error.as_ref().map(|e| format!("{kind}: {e}")))
                .or_else(|| self.error.clone())
                .or_else(|| Some("not connected yet".to_string()))
        };
        ClusterStatus {
            connected,
            synced: self.synced,
            error: current,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_time: self.last_error.as_ref().map(|(_, t)| t.to_string()),
            last_sync_time: self.last_contact.map(|t| t.to_string()),
            kinds: self
                .kinds
                .iter()
                .map(|(kind, k)| {
                    (
                        *kind,
                        KindStatus {
                            resource: k.resource.clone(),
                            up: k.up,
                            synced: k.synced,
                            objects: k.objects,
                            relists: k.relists,
                            errors: k.errors,
                            error: k.error.clone(),
                        },
                    )
                })
                .collect(),
            problems: self
                .kinds
                .values()
                .flat_map(|k| k.problems.iter().cloned())
                .collect(),
        }
    }
}

/// The state of every cluster the Kubernetes source watches; cheap to clone and shared with
/// the status API, which reads it.
#[derive(Clone, Default)]
pub struct KubeStatus {
    clusters: Arc<Mutex<BTreeMap<String, ClusterEntry>>>,
    metrics: Arc<KubeMetrics>,
}

impl std::fmt::Debug for KubeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStatus")
            .field("clusters", &self.clusters())
            .finish()
    }
}

impl KubeStatus {
    /// A status that also updates `metrics`.
    pub fn new(metrics: Arc<KubeMetrics>) -> Self {
        Self {
            clusters: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ClusterEntry>> {
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every cluster's status, by cluster id.
    pub fn clusters(&self) -> BTreeMap<String, ClusterStatus> {
        self.lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.view()))
            .collect()
    }

    /// One cluster's status.
    pub fn cluster(&self, id: &str) -> Option<ClusterStatus> {
        self.lock().get(id).map(ClusterEntry::view)
    }

    /// True when every cluster is connected.
    pub fn all_connected(&self) -> bool {
        self.lock().values().all(ClusterEntry::connected)
    }

    /// Every refused object, by cluster.
    pub fn problems(&self) -> Vec<(String, KubeProblem)> {
        self.lock()
            .iter()
            .flat_map(|(id, c)| {
                c.kinds
                    .values()
                    .flat_map(|k| k.problems.iter().cloned())
                    .map(move |p| (id.clone(), p))
            })
            .collect()
    }

    pub(crate) fn reporter(&self, cluster: &str) -> ClusterReporter {
        self.lock().entry(cluster.to_string()).or_default();
        ClusterReporter {
            status: self.clone(),
            cluster: cluster.to_string(),
        }
    }
}

/// Updates one cluster's entry (and the metrics).
#[derive(Clone)]
pub(crate) struct ClusterReporter {
    status: KubeStatus,
    cluster: String,
}

impl ClusterReporter {
    fn with<R>(&self, f: impl FnOnce(&mut ClusterEntry) -> R) -> R {
        let mut clusters = self.status.lock();
        let entry = clusters.entry(self.cluster.clone()).or_default();
        f(entry)
    }

    fn labels(&self, kind: Kind) -> WatchLabels {
        WatchLabels {
            cluster: self.cluster.clone(),
            kind: kind.as_str(),
        }
    }

    fn set_up(&self, c: &mut ClusterEntry, kind: Kind, up: bool, error: Option<String>) {
        let k = c.kinds.entry(kind).or_default();
        k.up = up;
        k.error = error;
        self.status
            .metrics
            .watch_up
            .get_or_create(&self.labels(kind))
            .set(i64::from(up));
    }

    fn record_error(c: &mut ClusterEntry, error: String) {
        c.last_error = Some((error.clone(), Timestamp::now()));
        c.error = Some(error);
    }

    /// An HTTP response arrived for `path`.
    pub(crate) fn response(&self, path: &str, code: u16) {
        let plural = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or_default();
        self.with(|c| {
            let kind = c.plurals.get(plural).copied();
            let ok = (200..300).contains(&code);
            if code < 500 && code != 429 {
                c.last_contact = Some(Timestamp::now());
                c.reachable = true;
            } else {
                c.reachable = false;
            }
            if ok {
                c.error = None;
            }
            match kind {
                Some(kind) if ok => self.set_up(c, kind, true, None),
                // The watcher relists at once; that is not an outage.
                Some(_) if code == 410 => {}
                Some(kind) => {
                    let e = format!("HTTP {code} from {path}");
                    Self::record_error(c, format!("{kind}: {e}"));
                    self.set_up(c, kind, false, Some(e));
                }
                None if !ok => Self::record_error(c, format!("HTTP {code} from {path}")),
                None => {}
            }
        });
    }

    /// A request for `path` failed without a response (connection refused, reset, TLS, …).
    pub(crate) fn transport_error(&self, path: &str, error: &str) {
        let plural = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or_default();
        self.with(|c| {
            c.reachable = false;
            let kind = c.plurals.get(plural).copied();
            let e = format!("{error} ({path})");
            match kind {
                Some(kind) => {
                    Self::record_error(c, format!("{kind}: {e}"));
                    self.set_up(c, kind, false, Some(e));
                }
                None => Self::record_error(c, e),
            }
        });
    }

    /// Discovery succeeded.
    pub(crate) fn discovered(&self) {
        self.with(|c| {
            c.discovered = true;
            c.reachable = true;
            c.last_contact = Some(Timestamp::now());
        });
    }

    /// Discovery failed.
    pub(crate) fn discovery_failed(&self, error: &str) {
        self.with(|c| {
            c.reachable = false;
            Self::record_error(c, format!("discovery: {error}"));
        });
    }

    /// `kind` is watched as `resource` (plural `plural`), or not served (`None`).
    pub(crate) fn served(&self, kind: Kind, resource: Option<(String, String)>) {
        self.with(|c| {
            c.plurals.retain(|_, k| *k != kind);
            let k = c.kinds.entry(kind).or_default();
            match resource {
                Some((resource, plural)) => {
                    k.resource = Some(resource);
                    c.plurals.insert(plural, kind);
                }
                None => {
                    // Not an outage: nothing to watch. No metrics either, so that a kind whose
                    // CRD is not installed does not look like a watch that is down.
                    k.resource = None;
                    k.objects = 0;
                    k.synced = true;
                    k.up = false;
                    k.error = None;
                    k.problems.clear();
                    let labels = self.labels(kind);
                    let m = &self.status.metrics;
                    m.watch_up.remove(&labels);
                    m.objects.remove(&labels);
                }
            }
        });
    }

    /// A watch event of `kind` arrived.
    pub(crate) fn event(&self, kind: Kind) {
        self.status
            .metrics
            .events
            .get_or_create(&self.labels(kind))
            .inc();
        self.with(|c| {
            c.last_contact = Some(Timestamp::now());
            c.error = None;
            if !c.kinds.get(&kind).is_some_and(|k| k.up) {
                self.set_up(c, kind, true, None);
            }
        });
    }

    /// The watch of `kind` failed; `gone` when it is a 410 that the watcher answers with a
    /// relist (not an outage).
    pub(crate) fn watch_error(&self, kind: Kind, error: &str, gone: bool) {
        self.status
            .metrics
            .watch_errors
            .get_or_create(&self.labels(kind))
            .inc();
        self.with(|c| {
            c.kinds.entry(kind).or_default().errors += 1;
            if !gone {
                Self::record_error(c, format!("{kind}: {error}"));
                self.set_up(c, kind, false, Some(error.to_string()));
            }
        });
    }

    /// A complete list of `kind` was delivered (`relist` for every one after the first).
    pub(crate) fn listed(&self, kind: Kind, objects: usize, relist: bool) {
        if relist {
            self.status
                .metrics
                .relists
                .get_or_create(&self.labels(kind))
                .inc();
        }
        self.with(|c| {
            let k = c.kinds.entry(kind).or_default();
            k.synced = true;
            if relist {
                k.relists += 1;
            }
        });
        self.objects(kind, objects);
    }

    /// `kind` now has `n` objects from this cluster.
    pub(crate) fn objects(&self, kind: Kind, n: usize) {
        self.status
            .metrics
            .objects
            .get_or_create(&self.labels(kind))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        self.with(|c| c.kinds.entry(kind).or_default().objects = n);
    }

    /// The refused objects of `kind` are now `problems`; `new` of them are new refusals.
    pub(crate) fn problems(&self, kind: Kind, problems: Vec<KubeProblem>, new: u64) {
        if new > 0 {
            self.status
                .metrics
                .refused
                .get_or_create(&self.labels(kind))
                .inc_by(new);
        }
        self.with(|c| c.kinds.entry(kind).or_default().problems = problems);
    }

    /// The cluster's initial state has been delivered.
    pub(crate) fn synced(&self) {
        self.with(|c| c.synced = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_follows_every_served_watch() {
        let status = KubeStatus::default();
        let r = status.reporter("c1");
        assert!(!status.cluster("c1").expect("known").connected);
        r.discovered();
        r.served(
            Kind::Service,
            Some(("v1 services".into(), "services".into())),
        );
        r.served(Kind::Gateway, None);
        r.event(Kind::Service);
        let s = status.cluster("c1").expect("known");
        assert!(s.connected, "{s:?}");
        r.transport_error("/api/v1/services", "connection refused");
        let s = status.cluster("c1").expect("known");
        assert!(!s.connected);
        assert!(
            s.error
                .as_deref()
                .unwrap_or_default()
                .contains("connection refused"),
            "{s:?}"
        );
        r.response("/api/v1/services", 200);
        let s = status.cluster("c1").expect("known");
        assert!(s.connected);
        assert!(s.error.is_none());
        assert!(s.last_error.is_some(), "the last error is kept");
        assert!(s.last_sync_time.is_some());
    }
}
