//! Churn: planning mesh changes, and the bookkeeping that tells when every proxy has one.
//!
//! A change is planned against the [`MeshState`] (which it updates), written as one file,
//! and registered with the [`Tracker`] together with an [`Expectation`]: what a proxy's
//! decoded configuration looks like once it has the change. Proxies test the expectation on
//! each response they accept and report the instant they ACKed it; the change's convergence
//! time is the last of those instants minus the write.
//!
//! Two changes of the same service's endpoints are never in flight at once: a readiness flap
//! and its reversal could be coalesced by the debounce into no change at all, and the first
//! would never be seen.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::mesh::MeshState;

/// What kind of edit a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A pod (and endpoint) added to a service.
    ScaleUp,
    /// A pod (and endpoint) removed from a service.
    ScaleDown,
    /// An endpoint's `conditions.ready` flipped.
    Readiness,
    /// The VirtualService's weights changed (with routing).
    RouteWeight,
    /// A label of the Service changed: nothing in Envoy's configuration depends on it.
    ServiceLabel,
    /// A new service (with its pods) appeared.
    NewService,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 6] = [
        ChangeKind::ScaleUp,
        ChangeKind::ScaleDown,
        ChangeKind::Readiness,
        ChangeKind::RouteWeight,
        ChangeKind::ServiceLabel,
        ChangeKind::NewService,
    ];

    /// True for a change of a service's endpoints alone (what the endpoint-convergence
    /// figures are about).
    pub fn is_endpoint(self) -> bool {
        matches!(
            self,
            ChangeKind::ScaleUp | ChangeKind::ScaleDown | ChangeKind::Readiness
        )
    }

    /// The name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::ScaleUp => "scale_up",
            ChangeKind::ScaleDown => "scale_down",
            ChangeKind::Readiness => "readiness",
            ChangeKind::RouteWeight => "route_weight",
            ChangeKind::ServiceLabel => "service_label",
            ChangeKind::NewService => "new_service",
        }
    }
}

/// What a proxy holds once it has a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// Each of these load assignments lists `address` (as a healthy endpoint).
    EndpointPresent {
        /// EDS resource names.
        clusters: Vec<String>,
        /// The endpoint's IP.
        address: String,
    },
    /// None of these load assignments lists `address`.
    EndpointAbsent {
        /// EDS resource names.
        clusters: Vec<String>,
        /// The endpoint's IP.
        address: String,
    },
    /// These clusters are in CDS and their load assignments have arrived.
    ClustersAdded {
        /// Cluster (and EDS resource) names.
        clusters: Vec<String>,
    },
    /// Route configuration `route` sends `weight` percent to `cluster`.
    RouteWeight {
        /// RDS resource name.
        route: String,
        /// The subset cluster.
        cluster: String,
        /// Its weight.
        weight: u32,
    },
    /// Nothing observable: the change is written but not measured.
    Unobservable,
}

impl Expectation {
    /// The resource names whose arrival can satisfy this expectation, with the number of
    /// parts it has (each must be seen once).
    pub fn parts(&self) -> &[String] {
        match self {
            Expectation::EndpointPresent { clusters, .. }
            | Expectation::EndpointAbsent { clusters, .. }
            | Expectation::ClustersAdded { clusters } => clusters,
            Expectation::RouteWeight { .. } | Expectation::Unobservable => &[],
        }
    }

    /// True when one received load assignment (with these healthy addresses) satisfies part
    /// `cluster` of the expectation.
    pub fn eds_part(&self, cluster: &str, addresses: &[String]) -> Option<usize> {
        let idx = self.parts().iter().position(|c| c == cluster)?;
        let ok = match self {
            Expectation::EndpointPresent { address, .. } => addresses.contains(address),
            Expectation::EndpointAbsent { address, .. } => !addresses.contains(address),
            Expectation::ClustersAdded { .. } => true,
            _ => false,
        };
        ok.then_some(idx)
    }

    /// True when the expectation is about this load assignment (so the proxy should decode
    /// it fully to check).
    pub fn concerns_eds(&self, cluster: &str) -> bool {
        self.parts().iter().any(|c| c == cluster)
    }

    /// True when the expectation is about this route configuration.
    pub fn concerns_route(&self, name: &str) -> bool {
        matches!(self, Expectation::RouteWeight { route, .. } if route == name)
    }
}

/// A change planned and applied to the mesh state, ready to be written.
#[derive(Debug, Clone)]
pub struct PlannedChange {
    /// Its kind.
    pub kind: ChangeKind,
    /// The service whose file changes.
    pub service: usize,
    /// What proxies will hold once they have it.
    pub expect: Expectation,
}

/// Relative frequencies of change kinds. Written `scale_up=25,scale_down=25,readiness=30,
/// config=15,new_service=5` (the default); kinds left out weigh 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnMix {
    /// Endpoint additions.
    pub scale_up: u32,
    /// Endpoint removals.
    pub scale_down: u32,
    /// Readiness flaps.
    pub readiness: u32,
    /// Config object edits (VirtualService weight with routing, else a Service label).
    pub config: u32,
    /// New services.
    pub new_service: u32,
}

impl Default for ChurnMix {
    fn default() -> Self {
        Self {
            scale_up: 25,
            scale_down: 25,
            readiness: 30,
            config: 15,
            new_service: 5,
        }
    }
}

impl ChurnMix {
    fn fields_mut(&mut self) -> [(&'static str, &mut u32); 5] {
        [
            ("scale_up", &mut self.scale_up),
            ("scale_down", &mut self.scale_down),
            ("readiness", &mut self.readiness),
            ("config", &mut self.config),
            ("new_service", &mut self.new_service),
        ]
    }

    fn fields(&self) -> [(&'static str, u32); 5] {
        let mut copy = *self;
        copy.fields_mut().map(|(k, w)| (k, *w))
    }
}

impl std::fmt::Display for ChurnMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for ChurnMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = ChurnMix {
            scale_up: 0,
            scale_down: 0,
            readiness: 0,
            config: 0,
            new_service: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected KIND=WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight is not a whole number"))?;
            let kind = kind.trim();
            let mut fields = mix.fields_mut();
            let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            let known = known.join(", ");
            let Some((_, slot)) = fields.iter_mut().find(|(k, _)| *k == kind) else {
                return Err(format!("unknown change kind `{kind}` ({known})"));
            };
            **slot = weight;
        }
        if mix.fields().iter().all(|(_, w)| *w == 0) {
            return Err("every weight is 0".into());
        }
        Ok(mix)
    }
}

impl Serialize for ChurnMix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Picks changes at random (seeded, so a run can be repeated).
#[derive(Debug)]
pub struct ChurnPlanner {
    rng: fastrand::Rng,
    mix: ChurnMix,
}

impl ChurnPlanner {
    /// A planner drawing from `mix` with `seed`.
    pub fn new(seed: u64, mix: ChurnMix) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            mix,
        }
    }

    fn pick_service(&mut self, mesh: &MeshState, busy: &HashSet<usize>) -> Option<usize> {
        let n = mesh.services.len();
        if n == 0 {
            return None;
        }
        for _ in 0..32 {
            let i = self.rng.usize(..n);
            if !busy.contains(&i) {
                return Some(i);
            }
        }
        let start = self.rng.usize(..n);
        (0..n).map(|k| (start + k) % n).find(|i| !busy.contains(i))
    }

    /// Plans one change, applies it to `mesh`, and says what to write and expect. Services
    /// in `busy` (with an endpoint change in flight) are not touched, except that a new
    /// service is always possible.
    pub fn plan(&mut self, mesh: &mut MeshState, busy: &HashSet<usize>) -> PlannedChange {
        let m = self.mix;
        let total = (m.scale_up + m.scale_down + m.readiness + m.config + m.new_service).max(1);
        let mut roll = self.rng.u32(..total);
        let mut kind = ChangeKind::NewService;
        for (k, w) in [
            (ChangeKind::ScaleUp, m.scale_up),
            (ChangeKind::ScaleDown, m.scale_down),
            (ChangeKind::Readiness, m.readiness),
            (ChangeKind::ServiceLabel, m.config),
            (ChangeKind::NewService, m.new_service),
        ] {
            if roll < w {
                kind = k;
                break;
            }
            roll -= w;
        }
        if kind == ChangeKind::ServiceLabel && mesh.spec.with_routing {
            kind = ChangeKind::RouteWeight;
        }
        let domain = mesh.spec.domain.clone();
        let target = if kind == ChangeKind::NewService {
            None
        } else {
            self.pick_service(mesh, busy)
        };
        let Some(i) = target else {
            let i = mesh.add_service();
            let clusters = mesh.services[i].cluster_names(&domain);
            return PlannedChange {
                kind: ChangeKind::NewService,
                service: i,
                expect: Expectation::ClustersAdded { clusters },
            };
        };
        let ready_pods = mesh.services[i].pods.iter().filter(|p| p.ready).count();
        if kind == ChangeKind::ScaleDown && (ready_pods == 0 || mesh.services[i].pods.len() <= 1) {
            kind = ChangeKind::ScaleUp;
        }
        let clusters = mesh.services[i].cluster_names(&domain);
        match kind {
            ChangeKind::ScaleUp => {
                let address = mesh.add_pod(i).ip.to_string();
                PlannedChange {
                    kind,
                    service: i,
                    expect: Expectation::EndpointPresent { clusters, address },
                }
            }
            ChangeKind::ScaleDown => {
                let svc = &mut mesh.services[i];
                let ready: Vec<usize> =
                    (0..svc.pods.len()).filter(|&k| svc.pods[k].ready).collect();
                let k = ready[self.rng.usize(..ready.len())];
                let pod = svc.pods.remove(k);
                PlannedChange {
                    kind,
                    service: i,
                    expect: Expectation::EndpointAbsent {
                        clusters,
                        address: pod.ip.to_string(),
                    },
                }
            }
            ChangeKind::Readiness => {
                if mesh.services[i].pods.is_empty() {
                    let address = mesh.add_pod(i).ip.to_string();
                    return PlannedChange {
                        kind: ChangeKind::ScaleUp,
                        service: i,
                        expect: Expectation::EndpointPresent { clusters, address },
                    };
                }
                let svc = &mut mesh.services[i];
                let k = self.rng.usize(..svc.pods.len());
                let pod = &mut svc.pods[k];
                pod.ready = !pod.ready;
                let address = pod.ip.to_string();
                let expect = if pod.ready {
                    Expectation::EndpointPresent { clusters, address }
                } else {
                    Expectation::EndpointAbsent { clusters, address }
                };
                PlannedChange {
                    kind,
                    service: i,
                    expect,
                }
            }
            ChangeKind::RouteWeight => {
                let svc = &mut mesh.services[i];
                svc.v1_weight = if svc.v1_weight >= 90 {
                    50 + self.rng.u32(..40)
                } else {
                    svc.v1_weight + 1
                };
                let port = svc.ports[0];
                PlannedChange {
                    kind,
                    service: i,
                    expect: Expectation::RouteWeight {
                        route: port.to_string(),
                        cluster: svc.subset_cluster(port, "v1", &domain),
                        weight: svc.v1_weight,
                    },
                }
            }
            ChangeKind::ServiceLabel | ChangeKind::NewService => {
                mesh.services[i].generation += 1;
                PlannedChange {
                    kind: ChangeKind::ServiceLabel,
                    service: i,
                    expect: Expectation::Unobservable,
                }
            }
        }
    }
}

/// A change in flight: written, and being looked for by the proxies.
#[derive(Debug)]
pub struct Pending {
    /// Unique id.
    pub id: u64,
    /// Kind.
    pub kind: ChangeKind,
    /// The service changed.
    pub service: usize,
    /// What proxies must hold.
    pub expect: Expectation,
    /// Proxies that must have it.
    pub required: usize,
    done: AtomicUsize,
    excused: AtomicUsize,
    /// Nanoseconds since the tracker's epoch (0: not yet).
    written_ns: AtomicU64,
    /// The first ACK (`u64::MAX`: none yet).
    first_ack_ns: AtomicU64,
    /// The ACK that brought `done` to half of `required` (0: not yet).
    half_ack_ns: AtomicU64,
    last_ack_ns: AtomicU64,
}

impl Pending {
    /// Proxies that ACKed it.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Proxies excused from it (they NACKed the response that carried it).
    pub fn excused(&self) -> usize {
        self.excused.load(Ordering::Acquire)
    }

    /// True once every required proxy has ACKed it or been excused.
    pub fn is_complete(&self) -> bool {
        self.done() + self.excused() >= self.required
    }
}

/// How one change ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Id.
    pub id: u64,
    /// Kind.
    pub kind: ChangeKind,
    /// Milliseconds from the write to the last proxy's ACK; `None` when not measured (not
    /// observable, or timed out).
    pub converged_ms: Option<f64>,
    /// Milliseconds from the write to the first proxy's ACK: how long strait took to read,
    /// debounce and build the change. `None` when no proxy ACKed it.
    pub first_ack_ms: Option<f64>,
    /// Milliseconds from the write to the ACK of half the proxies. `None` when fewer did.
    pub half_ack_ms: Option<f64>,
    /// Proxies that ACKed it.
    pub proxies_done: usize,
    /// Proxies that had to.
    pub required: usize,
    /// Proxies excused (NACKed it).
    pub excused: usize,
    /// Seconds after the start of churn it was written.
    pub written_s: f64,
    /// Not complete when the timeout came.
    pub timed_out: bool,
}

/// Changes in flight and their outcomes, shared by the churn loop and every proxy.
#[derive(Debug)]
pub struct Tracker {
    epoch: Instant,
    next_id: AtomicU64,
    active: RwLock<Arc<[Arc<Pending>]>>,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Tracker {
    /// An empty tracker; times are measured from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            next_id: AtomicU64::new(1),
            active: RwLock::new(Arc::from(Vec::new())),
            outcomes: Mutex::new(Vec::new()),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        // 0 means "not yet": an instant at the epoch itself still counts as 1 ns.
        (at.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }

    /// Registers a change about to be written (before the write, so that no proxy can see
    /// it before it is looked for). Unobservable changes are recorded at once and not
    /// tracked.
    pub fn begin(&self, change: &PlannedChange, required: usize) -> Option<Arc<Pending>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if change.expect == Expectation::Unobservable {
            self.outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Outcome {
                    id,
                    kind: change.kind,
                    converged_ms: None,
                    first_ack_ms: None,
                    half_ack_ms: None,
                    proxies_done: 0,
                    required: 0,
                    excused: 0,
                    written_s: 0.0,
                    timed_out: false,
                });
            return None;
        }
        let p = Arc::new(Pending {
            id,
            kind: change.kind,
            service: change.service,
            expect: change.expect.clone(),
            required,
            done: AtomicUsize::new(0),
            excused: AtomicUsize::new(0),
            written_ns: AtomicU64::new(0),
            first_ack_ns: AtomicU64::new(u64::MAX),
            half_ack_ns: AtomicU64::new(0),
            last_ack_ns: AtomicU64::new(0),
        });
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<Arc<Pending>> = active.iter().cloned().collect();
        v.push(p.clone());
        *active = Arc::from(v);
        Some(p)
    }

    /// Records when the change's file was written.
    pub fn written(&self, p: &Pending, at: Instant) {
        p.written_ns.store(self.ns(at), Ordering::Release);
    }

    /// The changes in flight.
    pub fn active(&self) -> Arc<[Arc<Pending>]> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Services with an endpoint change in flight.
    pub fn busy_services(&self) -> HashSet<usize> {
        self.active()
            .iter()
            .filter(|p| p.kind != ChangeKind::RouteWeight)
            .map(|p| p.service)
            .collect()
    }

    /// A proxy ACKed a response that completed `p` for it, at `at`.
    pub fn record(&self, p: &Pending, at: Instant) {
        let ns = self.ns(at);
        p.first_ack_ns.fetch_min(ns, Ordering::AcqRel);
        p.last_ack_ns.fetch_max(ns, Ordering::AcqRel);
        let done = p.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done == p.required.div_ceil(2) {
            p.half_ack_ns.store(ns, Ordering::Release);
        }
    }

    /// A proxy NACKed the response that would have given it `p`: it is not waited for.
    pub fn excuse(&self, p: &Pending) {
        p.excused.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves complete changes, and those older than `timeout` since their write, to the
    /// outcomes. Returns how many are still in flight.
    pub fn sweep(&self, now: Instant, timeout: Duration) -> usize {
        let now_ns = self.ns(now);
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let mut keep = Vec::with_capacity(active.len());
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        for p in active.iter() {
            let written = p.written_ns.load(Ordering::Acquire);
            let complete = p.is_complete() && written != 0;
            let timed_out = !complete
                && written != 0
                && now_ns.saturating_sub(written) > timeout.as_nanos() as u64;
            if !complete && !timed_out {
                keep.push(p.clone());
                continue;
            }
            let last = p.last_ack_ns.load(Ordering::Acquire);
            let since = |at: u64| at.saturating_sub(written) as f64 / 1e6;
            let converged_ms = (complete && p.done() > 0).then(|| since(last));
            let first = p.first_ack_ns.load(Ordering::Acquire);
            let half = p.half_ack_ns.load(Ordering::Acquire);
            outcomes.push(Outcome {
                id: p.id,
                kind: p.kind,
                converged_ms,
                first_ack_ms: (first != u64::MAX).then(|| since(first)),
                half_ack_ms: (half != 0).then(|| since(half)),
                proxies_done: p.done(),
                required: p.required,
                excused: p.excused(),
                written_s: written as f64 / 1e9,
                timed_out,
            });
        }
        let left = keep.len();
        *active = Arc::from(keep);
        left
    }

    /// Every finished change so far, in the order they finished.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let mut v = self
            .outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        v.sort_by_key(|o| o.id);
        v
    }
}

/// One proxy's progress on the changes in flight: which parts of which expectation it has
/// seen, and which changes it is finished with.
#[derive(Debug, Default)]
pub struct ProxyProgress {
    /// (change id, bit set of parts seen).
    partial: Vec<(u64, u64)>,
    finished: Vec<u64>,
}

/// What a response meant for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    None,
    /// Some parts seen, not all.
    Partial,
    /// Every part seen: the proxy has the change.
    Complete,
}

impl ProxyProgress {
    /// True when this proxy is finished with change `id`.
    pub fn is_finished(&self, id: u64) -> bool {
        self.finished.contains(&id)
    }

    /// Marks part `part` of change `p` as seen.
    pub fn see(&mut self, p: &Pending, part: usize) -> Step {
        if self.is_finished(p.id) {
            return Step::None;
        }
        let parts = p.expect.parts().len().clamp(1, 64);
        let bit = 1u64 << part.min(63);
        let entry = match self.partial.iter_mut().find(|(id, _)| *id == p.id) {
            Some(e) => e,
            None => {
                self.partial.push((p.id, 0));
                let last = self.partial.len() - 1;
                &mut self.partial[last]
            }
        };
        if entry.1 & bit != 0 {
            return Step::None;
        }
        entry.1 |= bit;
        if entry.1.count_ones() as usize >= parts {
            Step::Complete
        } else {
            Step::Partial
        }
    }

    /// Marks change `id` finished (ACKed with everything, or excused).
    pub fn finish(&mut self, id: u64) {
        self.partial.retain(|(i, _)| *i != id);
        self.finished.push(id);
    }

    /// Forgets changes no longer in flight.
    pub fn retain(&mut self, active: &[Arc<Pending>]) {
        let live = |id: &u64| active.iter().any(|p| p.id == *id);
        self.partial.retain(|(id, _)| live(id));
        self.finished.retain(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshSpec;

    fn mesh() -> MeshState {
        MeshState::generate(&MeshSpec {
            services: 4,
            pods_per_service: 3,
            ..Default::default()
        })
    }

    #[test]
    fn planned_changes_update_the_mesh_and_expect_what_it_now_says() {
        let mut m = mesh();
        let mut planner = ChurnPlanner::new(7, ChurnMix::default());
        let mut kinds = HashSet::new();
        for _ in 0..400 {
            let before = m.clone();
            let c = planner.plan(&mut m, &HashSet::new());
            kinds.insert(c.kind);
            let svc = &m.services[c.service];
            let ready: Vec<String> = svc
                .pods
                .iter()
                .filter(|p| p.ready)
                .map(|p| p.ip.to_string())
                .collect();
            match &c.expect {
                Expectation::EndpointPresent { clusters, address } => {
                    assert!(ready.contains(address), "{c:?}");
                    assert_eq!(clusters, &svc.cluster_names("cluster.local"));
                }
                Expectation::EndpointAbsent { address, .. } => {
                    assert!(!ready.contains(address), "{c:?}");
                    let was: Vec<String> = before.services[c.service]
                        .pods
                        .iter()
                        .filter(|p| p.ready)
                        .map(|p| p.ip.to_string())
                        .collect();
                    assert!(was.contains(address), "a removal removes a ready endpoint");
                }
                Expectation::ClustersAdded { clusters } => {
                    assert_eq!(c.service, before.services.len());
                    assert_eq!(clusters.len(), 2);
                }
                Expectation::Unobservable => {
                    assert_eq!(c.kind, ChangeKind::ServiceLabel);
                    assert_eq!(svc.generation, before.services[c.service].generation + 1);
                }
                Expectation::RouteWeight { .. } => panic!("no routing in this mesh"),
            }
        }
        for k in [
            ChangeKind::ScaleUp,
            ChangeKind::ScaleDown,
            ChangeKind::Readiness,
            ChangeKind::ServiceLabel,
            ChangeKind::NewService,
        ] {
            assert!(kinds.contains(&k), "{k:?} never planned");
        }
    }

    #[test]
    fn a_mix_is_written_as_kind_weight_pairs() {
        let d = ChurnMix::default();
        assert_eq!(d.to_string().parse::<ChurnMix>(), Ok(d));
        let only: ChurnMix = "scale_up=1, readiness=3".parse().expect("parses");
        assert_eq!((only.scale_up, only.readiness, only.new_service), (1, 3, 0));
        let mut planner = ChurnPlanner::new(3, only);
        let mut mesh = MeshState::generate(&MeshSpec {
            services: 20,
            ..MeshSpec::default()
        });
        for _ in 0..50 {
            let c = planner.plan(&mut mesh, &HashSet::new());
            assert!(matches!(
                c.kind,
                ChangeKind::ScaleUp | ChangeKind::Readiness
            ));
        }
        for bad in ["scale_up", "scale_up=x", "nope=1", "config=0", ""] {
            assert!(bad.parse::<ChurnMix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn busy_services_are_left_alone_and_routing_edits_weights() {
        let mut m = MeshState::generate(&MeshSpec {
            services: 3,
            with_routing: true,
            ..Default::default()
        });
        let busy: HashSet<usize> = [0, 1].into_iter().collect();
        let mut planner = ChurnPlanner::new(1, ChurnMix::default());
        for _ in 0..100 {
            let c = planner.plan(&mut m, &busy);
            assert!(!busy.contains(&c.service), "{c:?}");
            if let Expectation::RouteWeight { weight, route, .. } = &c.expect {
                assert_eq!(*weight, m.services[c.service].v1_weight);
                assert_eq!(route, &m.services[c.service].ports[0].to_string());
            }
        }
    }

    #[test]
    fn convergence_is_the_last_ack_after_the_write() {
        let epoch = Instant::now();
        let t = Tracker::new(epoch);
        let change = PlannedChange {
            kind: ChangeKind::ScaleUp,
            service: 0,
            expect: Expectation::EndpointPresent {
                clusters: vec!["a".into(), "b".into()],
                address: "127.16.0.9".into(),
            },
        };
        let p = t.begin(&change, 3).expect("tracked");
        assert_eq!(t.busy_services(), [0].into_iter().collect());
        t.written(&p, epoch + Duration::from_millis(100));
        t.record(&p, epoch + Duration::from_millis(150));
        t.record(&p, epoch + Duration::from_millis(400));
        assert_eq!(
            t.sweep(epoch + Duration::from_millis(500), Duration::from_secs(5)),
            1
        );
        t.excuse(&p);
        t.record(&p, epoch + Duration::from_millis(300));
        assert_eq!(
            t.sweep(epoch + Duration::from_millis(500), Duration::from_secs(5)),
            0
        );
        let o = t.outcomes();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].converged_ms, Some(300.0));
        assert_eq!(o[0].first_ack_ms, Some(50.0));
        // The second of three ACKs recorded (at 400 ms) brought it to half.
        assert_eq!(o[0].half_ack_ms, Some(300.0));
        assert_eq!((o[0].proxies_done, o[0].excused), (3, 1));
        assert!(t.busy_services().is_empty());
    }

    #[test]
    fn slow_changes_time_out_and_unobservable_ones_are_not_tracked() {
        let epoch = Instant::now();
        let t = Tracker::new(epoch);
        let mk = |expect| PlannedChange {
            kind: ChangeKind::Readiness,
            service: 1,
            expect,
        };
        assert!(t.begin(&mk(Expectation::Unobservable), 5).is_none());
        let p = t
            .begin(
                &mk(Expectation::EndpointAbsent {
                    clusters: vec!["a".into()],
                    address: "x".into(),
                }),
                2,
            )
            .expect("tracked");
        // Not written yet: never times out.
        assert_eq!(
            t.sweep(epoch + Duration::from_secs(60), Duration::from_secs(1)),
            1
        );
        t.written(&p, epoch + Duration::from_secs(60));
        t.record(&p, epoch + Duration::from_secs(61));
        assert_eq!(
            t.sweep(epoch + Duration::from_secs(62), Duration::from_secs(1)),
            0
        );
        let o = t.outcomes();
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].converged_ms, None);
        assert!(!o[0].timed_out);
        assert!(o[1].timed_out);
        assert_eq!(o[1].converged_ms, None);
        assert_eq!(o[1].proxies_done, 1);
    }

    #[test]
    fn a_proxy_completes_a_change_once_it_saw_every_part() {
        let t = Tracker::new(Instant::now());
        let expect = Expectation::EndpointPresent {
            clusters: vec!["a".into(), "b".into()],
            address: "10".into(),
        };
        let p = t
            .begin(
                &PlannedChange {
                    kind: ChangeKind::ScaleUp,
                    service: 0,
                    expect: expect.clone(),
                },
                1,
            )
            .expect("tracked");
        let here = vec!["10".to_string()];
        assert_eq!(expect.eds_part("a", &[]), None);
        assert_eq!(expect.eds_part("c", &here), None);
        assert!(expect.concerns_eds("b") && !expect.concerns_eds("c"));
        let mut prog = ProxyProgress::default();
        assert_eq!(
            prog.see(&p, expect.eds_part("a", &here).expect("a")),
            Step::Partial
        );
        assert_eq!(prog.see(&p, 0), Step::None, "seen already");
        assert_eq!(
            prog.see(&p, expect.eds_part("b", &here).expect("b")),
            Step::Complete
        );
        prog.finish(p.id);
        assert!(prog.is_finished(p.id));
        assert_eq!(prog.see(&p, 1), Step::None);
        prog.retain(&[]);
        assert!(!prog.is_finished(p.id));
    }
}
