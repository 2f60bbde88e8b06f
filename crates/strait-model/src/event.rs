//! What sources send to the index, and what the index tells the push controller changed.

use std::collections::BTreeSet;

use strait_api::{Kind, Object, ObjectRef};

use crate::service::ServiceKey;

/// Which cluster an object comes from. The config directory (and a single-cluster setup that
/// names none) is the empty id; Kubernetes sources use their cluster's id.
pub type ClusterId = std::sync::Arc<str>;

/// An [`Event`] from one cluster's source.
#[derive(Debug, Clone)]
pub struct ClusterEvent {
    /// The source's cluster.
    pub cluster: ClusterId,
    /// What happened.
    pub event: Event,
}

impl ClusterEvent {
    /// An event of `cluster`.
    pub fn new(cluster: ClusterId, event: Event) -> Self {
        Self { cluster, event }
    }
}

impl From<Event> for ClusterEvent {
    /// An event of the default (unnamed) cluster.
    fn from(event: Event) -> Self {
        Self {
            cluster: ClusterId::default(),
            event,
        }
    }
}

/// A change from a config source. Sources validate objects before sending them.
#[derive(Debug, Clone)]
pub enum Event {
    /// Create or replace an object.
    Apply(Box<Object>),
    /// Remove an object.
    Delete(ObjectRef),
    /// Replace every object of these kinds with `objects`, at once (a relist).
    Reset {
        /// The kinds being replaced.
        kinds: Vec<Kind>,
        /// Their complete new content.
        objects: Vec<Object>,
    },
    /// The source has delivered its initial state.
    Synced,
}

/// What changed between two snapshots, so that a push touches only what it must.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Everything may have changed (first snapshot, mesh config).
    pub full: bool,
    /// Services whose definition changed, appeared or disappeared.
    pub services: BTreeSet<ServiceKey>,
    /// Services whose endpoints changed (and nothing else about them).
    pub endpoints: BTreeSet<ServiceKey>,
    /// Istio config kinds with a changed object.
    pub config: BTreeSet<Kind>,
    /// Pods changed (identity, labels or IPs of workloads).
    pub workloads: bool,
    /// The IPs of the workloads that changed.
    pub workload_ips: BTreeSet<std::net::IpAddr>,
    /// Any workload may have changed (a Node's locality, say), not only those at
    /// `workload_ips`.
    pub all_workloads: bool,
    /// Secrets changed.
    pub secrets: bool,
    /// Namespaces changed.
    pub namespaces: bool,
    /// Something no proxy's configuration depends on changed (a Service's labels): the new
    /// snapshot must be published, but no proxy needs rebuilding.
    pub metadata: bool,
}

impl ChangeSet {
    /// A change set that invalidates everything.
    pub fn full() -> Self {
        Self {
            full: true,
            ..Self::default()
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// True when nothing but [`ChangeSet::metadata`] changed.
    pub fn is_metadata_only(&self) -> bool {
        self.metadata
            && Self {
                metadata: false,
                ..self.clone()
            }
            .is_empty()
    }

    /// True when only endpoints changed: an EDS-only push.
    pub fn is_endpoints_only(&self) -> bool {
        !self.endpoints.is_empty()
            && !self.full
            && self.services.is_empty()
            && self.config.is_empty()
            && !self.workloads
            && !self.secrets
            && !self.namespaces
    }

    /// True when a proxy at `ips` resolves to the same workload, namespace, labels and
    /// locality, and falls in the same class, as before this change.
    pub fn keeps_proxy(&self, ips: &[std::net::IpAddr]) -> bool {
        !self.full
            && self.config.is_empty()
            && !self.namespaces
            && !self.all_workloads
            && !ips.iter().any(|ip| self.workload_ips.contains(ip))
    }

    /// True when the inbound side of a proxy at `ips` (its own workload's listeners and
    /// clusters) is as before this change.
    pub fn keeps_inbound(&self, ips: &[std::net::IpAddr]) -> bool {
        self.keeps_proxy(ips) && self.services.is_empty()
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: ChangeSet) {
        self.full |= other.full;
        self.services.extend(other.services);
        self.endpoints.extend(other.endpoints);
        self.config.extend(other.config);
        self.workloads |= other.workloads;
        self.workload_ips.extend(other.workload_ips);
        self.all_workloads |= other.all_workloads;
        self.secrets |= other.secrets;
        self.namespaces |= other.namespaces;
    }
}
