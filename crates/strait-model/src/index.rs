//! The writer side of the model: applies source events and publishes snapshots.
//!
//! Objects are keyed by the cluster they come from as well as their namespace and name, so
//! several clusters (or a cluster and the config directory) can describe the same Service:
//! its definition comes from the first cluster in cluster-id order, its endpoints are the
//! union over all clusters, and each endpoint is joined with the pods and nodes of its own
//! cluster (so it keeps its own cluster's locality). Cluster-wide config (Istio objects,
//! namespaces, secrets, the mesh ConfigMap) defined in several clusters resolves to the first
//! cluster's copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::istio::IstioObject;
use strait_api::k8s_openapi::api::core::v1 as core;
use strait_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strait_api::{Kind, MeshConfig, Object, ObjectRef};
use tracing::{debug, warn};

use crate::config::{ConfigKey, ConfigStore};
use crate::endpoints::{EndpointSet, Joiner, RawGroup};
use crate::event::{ChangeSet, ClusterEvent, ClusterId, Event};
use crate::secret::Secret;
use crate::service::{Service, ServiceKey};
use crate::snapshot::{MeshSnapshot, NodeKey, NsName};
use crate::workload::{Labels, Locality, Namespace, Node, Workload};

/// Settings of the index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Cluster DNS suffix, `cluster.local` by default.
    pub domain: String,
    /// The namespace holding the mesh ConfigMap (`istio-system`).
    pub system_namespace: String,
    /// This control plane's revision; the mesh ConfigMap is `istio-<revision>` if present,
    /// else `istio`.
    pub revision: String,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            domain: "cluster.local".to_string(),
            system_namespace: "istio-system".to_string(),
            revision: "default".to_string(),
        }
    }
}

/// A namespaced object of one cluster.
type CKey = (ClusterId, Arc<str>, Arc<str>);

fn ns_name(meta: &ObjectMeta) -> NsName {
    (
        meta.namespace.as_deref().unwrap_or_default().into(),
        meta.name.as_deref().unwrap_or_default().into(),
    )
}

fn ckey(cluster: &ClusterId, meta: &ObjectMeta) -> CKey {
    let (ns, name) = ns_name(meta);
    (cluster.clone(), ns, name)
}

/// Values several clusters may define under one key; the effective one is the first
/// cluster's (in cluster-id order).
#[derive(Debug)]
struct Merged<K, V> {
    per: HashMap<K, BTreeMap<ClusterId, Arc<V>>>,
}

impl<K, V> Default for Merged<K, V> {
    fn default() -> Self {
        Self {
            per: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: PartialEq> Merged<K, V> {
    fn effective(&self, key: &K) -> Option<&Arc<V>> {
        self.per.get(key).and_then(|m| m.values().next())
    }

    /// Sets one cluster's value; returns the new effective value if it changed.
    fn set(&mut self, key: K, cluster: &ClusterId, value: V) -> Option<Option<Arc<V>>> {
        let before = self.effective(&key).cloned();
        let entry = self.per.entry(key.clone()).or_default();
        if entry.get(cluster).is_some_and(|old| **old == value) {
            return None;
        }
        entry.insert(cluster.clone(), Arc::new(value));
        let after = self.effective(&key).cloned();
        changed(before, after)
    }

    /// Removes one cluster's value; returns the new effective value if it changed.
    fn remove(&mut self, key: &K, cluster: &ClusterId) -> Option<Option<Arc<V>>> {
        let before = self.effective(key).cloned();
        let entry = self.per.get_mut(key)?;
        entry.remove(cluster)?;
        if entry.is_empty() {
            self.per.remove(key);
        }
        let after = self.effective(key).cloned();
        changed(before, after)
    }

    fn keys_of<'a>(&'a self, cluster: &'a ClusterId) -> impl Iterator<Item = &'a K> + 'a {
        self.per
            .iter()
            .filter(move |(_, m)| m.contains_key(cluster))
            .map(|(k, _)| k)
    }
}

fn changed<V>(before: Option<Arc<V>>, after: Option<Arc<V>>) -> Option<Option<Arc<V>>> {
    match (&before, &after) {
        (Some(a), Some(b)) if Arc::ptr_eq(a, b) => None,
        (None, None) => None,
        _ => Some(after),
    }
}

/// Applies an effective-value change to a published map.
fn publish<K: Ord + Clone, V>(map: &mut Arc<BTreeMap<K, Arc<V>>>, key: K, value: Option<Arc<V>>) {
    let m = Arc::make_mut(map);
    match value {
        Some(v) => m.insert(key, v),
        None => m.remove(&key),
    };
}

/// Istio config objects of one kind, from every cluster.
type ConfigMerge<S> = Merged<ConfigKey, IstioObject<S>>;

#[derive(Debug, Default)]
struct ConfigSources {
    virtual_services: ConfigMerge<strait_api::istio::VirtualServiceSpec>,
    destination_rules: ConfigMerge<strait_api::istio::DestinationRuleSpec>,
    gateways: ConfigMerge<strait_api::istio::GatewaySpec>,
    service_entries: ConfigMerge<strait_api::istio::ServiceEntrySpec>,
    sidecars: ConfigMerge<strait_api::istio::SidecarSpec>,
    local_rate_limits: ConfigMerge<strait_api::policy::LocalRateLimitSpec>,
}

/// The mesh as sources describe it, kept up to date by [`MeshIndex::apply`] and friends.
/// Reading it is done through [`MeshIndex::snapshot`], which is cheap: maps are shared with
/// the previous snapshot until they change (copy on write).
#[derive(Debug)]
pub struct MeshIndex {
    opts: IndexOptions,
    version: u64,
    // Published state: shared with snapshots.
    mesh: Arc<MeshConfig>,
    services: Arc<BTreeMap<ServiceKey, Arc<Service>>>,
    hosts: Arc<HashMap<Arc<str>, ServiceKey>>,
    endpoints: Arc<HashMap<ServiceKey, Arc<EndpointSet>>>,
    workloads_by_ip: Arc<HashMap<IpAddr, Arc<Workload>>>,
    nodes: Arc<HashMap<NodeKey, Arc<Node>>>,
    namespaces: Arc<BTreeMap<Arc<str>, Arc<Namespace>>>,
    secrets: Arc<BTreeMap<NsName, Arc<Secret>>>,
    config: ConfigStore,
    // Writer-only state.
    service_defs: Merged<ServiceKey, Service>,
    namespace_defs: Merged<Arc<str>, Namespace>,
    secret_defs: Merged<NsName, Secret>,
    config_defs: ConfigSources,
    mesh_configmaps: Merged<Arc<str>, MeshConfig>,
    workload_ips: Merged<IpAddr, Workload>,
    pods: HashMap<CKey, Arc<Workload>>,
    pods_by_ip: HashMap<(ClusterId, IpAddr), NsName>,
    slices: HashMap<CKey, ServiceKey>,
    slices_by_service: HashMap<ServiceKey, BTreeMap<(ClusterId, Arc<str>), RawGroup>>,
    legacy_endpoints: HashMap<ServiceKey, BTreeMap<ClusterId, Vec<RawGroup>>>,
    services_by_ip: HashMap<(ClusterId, IpAddr), BTreeSet<ServiceKey>>,
    ips_by_service: HashMap<ServiceKey, BTreeSet<(ClusterId, IpAddr)>>,
    dirty_endpoints: BTreeSet<ServiceKey>,
    /// Services and endpoints derived from ServiceEntries, as last published.
    entry_services: BTreeMap<ServiceKey, (Arc<Service>, Option<Arc<EndpointSet>>)>,
    entries_dirty: bool,
    pending: ChangeSet,
    empty_labels: Arc<Labels>,
    empty_locality: Arc<Locality>,
}

impl MeshIndex {
    /// An empty index.
    pub fn new(opts: IndexOptions) -> Self {
        Self {
            opts,
            version: 0,
            mesh: Arc::new(MeshConfig::default()),
            services: Arc::default(),
            hosts: Arc::default(),
            endpoints: Arc::default(),
            workloads_by_ip: Arc::default(),
            nodes: Arc::default(),
            namespaces: Arc::default(),
            secrets: Arc::default(),
            config: ConfigStore::default(),
            service_defs: Merged::default(),
            namespace_defs: Merged::default(),
            secret_defs: Merged::default(),
            config_defs: ConfigSources::default(),
            mesh_configmaps: Merged::default(),
            workload_ips: Merged::default(),
            pods: HashMap::new(),
            pods_by_ip: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            legacy_endpoints: HashMap::new(),
            services_by_ip: HashMap::new(),
            ips_by_service: HashMap::new(),
            dirty_endpoints: BTreeSet::new(),
            entry_services: BTreeMap::new(),
            entries_dirty: false,
            pending: ChangeSet::full(),
            empty_labels: Arc::default(),
            empty_locality: Arc::default(),
        }
    }

    /// The options the index was built with.
    pub fn options(&self) -> &IndexOptions {
        &self.opts
    }

    /// Applies one source event.
    pub fn handle(&mut self, event: ClusterEvent) {
        let cluster = event.cluster;
        match event.event {
            Event::Apply(o) => self.apply_in(&cluster, *o),
            Event::Delete(r) => self.delete_in(&cluster, &r),
            Event::Reset { kinds, objects } => self.reset_in(&cluster, &kinds, objects),
            Event::Synced => {}
        }
    }

    /// True when something changed since the last snapshot.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty() || !self.dirty_endpoints.is_empty()
    }

    /// Creates or replaces an object of the default (unnamed) cluster.
    pub fn apply(&mut self, obj: Object) {
        self.apply_in(&ClusterId::default(), obj);
    }

    /// Removes an object of the default cluster.
    pub fn delete(&mut self, r: &ObjectRef) {
        self.delete_in(&ClusterId::default(), r);
    }

    /// Replaces every object of `kinds` in the default cluster.
    pub fn reset(&mut self, kinds: &[Kind], objects: Vec<Object>) {
        self.reset_in(&ClusterId::default(), kinds, objects);
    }

    /// Creates or replaces an object of `cluster`. Callers validate first; an object that is
    /// still unusable (a Service without a name, say) is ignored.
    pub fn apply_in(&mut self, cluster: &ClusterId, obj: Object) {
        let r = obj.reference();
        if r.name.is_empty() {
            warn!(kind = %r.kind, "object without a name ignored");
            return;
        }
        match obj {
            Object::Namespace(n) => {
                let n = Namespace::from_k8s(&n);
                let key = n.name.clone();
                if let Some(eff) = self.namespace_defs.set(key.clone(), cluster, n) {
                    publish(&mut self.namespaces, key, eff);
                    self.pending.namespaces = true;
                }
            }
            Object::Node(n) => {
                let n = Node::from_k8s(&n);
                let key = (cluster.clone(), n.name.clone());
                if self.nodes.get(&key).map(|o| **o != n).unwrap_or(true) {
                    Arc::make_mut(&mut self.nodes).insert(key.clone(), Arc::new(n));
                    self.node_changed(&key);
                }
            }
            Object::Service(s) => {
                let s = Service::from_k8s(&s, &self.opts.domain);
                let key = s.key.clone();
                if let Some(eff) = self.service_defs.set(key.clone(), cluster, s) {
                    self.publish_service(key, eff);
                }
            }
            Object::EndpointSlice(s) => {
                let slice_key = ckey(cluster, &s.metadata);
                let Some(svc) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                else {
                    debug!(slice = %slice_key.2, "EndpointSlice without a service-name label ignored");
                    return;
                };
                let svc = ServiceKey::new(&slice_key.1, svc);
                // A slice moving to another service (label edit) leaves the old one first.
                if let Some(old) = self.slices.get(&slice_key).cloned()
                    && old != svc
                {
                    self.remove_slice(&slice_key);
                }
                let Some(group) = RawGroup::from_slice(&s) else {
                    self.remove_slice(&slice_key);
                    return;
                };
                let groups = self.slices_by_service.entry(svc.clone()).or_default();
                let gkey = (cluster.clone(), slice_key.2.clone());
                if groups.get(&gkey) != Some(&group) {
                    groups.insert(gkey, group);
                    self.dirty_endpoints.insert(svc.clone());
                }
                self.slices.insert(slice_key, svc);
            }
            Object::Endpoints(e) => {
                let (ns, name) = ns_name(&e.metadata);
                let key = ServiceKey {
                    namespace: ns,
                    name,
                };
                let groups = RawGroup::from_endpoints(&e);
                let per = self.legacy_endpoints.entry(key.clone()).or_default();
                if per.get(cluster) != Some(&groups) {
                    per.insert(cluster.clone(), groups);
                    self.dirty_endpoints.insert(key);
                }
            }
            Object::Pod(p) => {
                let key = ckey(cluster, &p.metadata);
                let w = Workload::from_k8s(&p, cluster);
                if self.pods.get(&key).map(|o| **o != w).unwrap_or(true) {
                    self.remove_pod(&key);
                    self.pending.workload_ips.extend(w.ips.iter().copied());
                    if !w.host_network {
                        for ip in &w.ips {
                            self.pods_by_ip
                                .insert((cluster.clone(), *ip), (key.1.clone(), key.2.clone()));
                            if let Some(eff) = self.workload_ips.set(*ip, cluster, w.clone()) {
                                publish_hash(&mut self.workloads_by_ip, *ip, eff);
                            }
                            self.dirty_services_at(cluster, *ip);
                        }
                    }
                    self.pods.insert(key, Arc::new(w));
                    self.pending.workloads = true;
                }
            }
            Object::Secret(s) => {
                let key = ns_name(&s.metadata);
                if let Some(eff) = self
                    .secret_defs
                    .set(key.clone(), cluster, Secret::from_k8s(&s))
                {
                    publish(&mut self.secrets, key, eff);
                    self.pending.secrets = true;
                }
            }
            Object::ConfigMap(cm) => self.apply_configmap(cluster, &cm),
            Object::VirtualService(o) => {
                let key = config_key(&o.metadata);
                let eff =
                    self.config_defs
                        .virtual_services
                        .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.virtual_services,
                    key,
                    eff,
                    Kind::VirtualService,
                    &mut self.pending,
                );
            }
            Object::DestinationRule(o) => {
                let key = config_key(&o.metadata);
                let eff =
                    self.config_defs
                        .destination_rules
                        .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.destination_rules,
                    key,
                    eff,
                    Kind::DestinationRule,
                    &mut self.pending,
                );
            }
            Object::Gateway(o) => {
                let key = config_key(&o.metadata);
                let eff = self
                    .config_defs
                    .gateways
                    .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.gateways,
                    key,
                    eff,
                    Kind::Gateway,
                    &mut self.pending,
                );
            }
            Object::ServiceEntry(o) => {
                let key = config_key(&o.metadata);
                let eff = self
                    .config_defs
                    .service_entries
                    .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.service_entries,
                    key,
                    eff,
                    Kind::ServiceEntry,
                    &mut self.pending,
                );
            }
            Object::Sidecar(o) => {
                let key = config_key(&o.metadata);
                let eff = self
                    .config_defs
                    .sidecars
                    .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.sidecars,
                    key,
                    eff,
                    Kind::Sidecar,
                    &mut self.pending,
                );
            }
            Object::LocalRateLimit(o) => {
                let key = config_key(&o.metadata);
                let eff =
                    self.config_defs
                        .local_rate_limits
                        .set(key.clone(), cluster, normalized(o));
                config_change(
                    &mut self.config.local_rate_limits,
                    key,
                    eff,
                    Kind::LocalRateLimit,
                    &mut self.pending,
                );
            }
        }
    }

    fn publish_service(&mut self, key: ServiceKey, eff: Option<Arc<Service>>) {
        // Labels are not translated: a change of labels alone rebuilds no proxy.
        let labels_only = match (self.services.get(&key), &eff) {
            (Some(old), Some(new)) => {
                old.labels != new.labels
                    && Service {
                        labels: new.labels.clone(),
                        ..(**old).clone()
                    } == **new
            }
            _ => false,
        };
        let hosts = Arc::make_mut(&mut self.hosts);
        if let Some(old) = self.services.get(&key) {
            hosts.remove(&old.hostname);
        }
        if let Some(s) = &eff {
            hosts.insert(s.hostname.clone(), key.clone());
        }
        publish(&mut self.services, key.clone(), eff);
        if labels_only {
            self.pending.metadata = true;
        } else {
            self.pending.services.insert(key);
        }
    }

    /// Removes an object of `cluster`; removing one that does not exist is a no-op.
    pub fn delete_in(&mut self, cluster: &ClusterId, r: &ObjectRef) {
        let nsn: NsName = (r.namespace.as_str().into(), r.name.as_str().into());
        let ck: CKey = (cluster.clone(), nsn.0.clone(), nsn.1.clone());
        match r.kind {
            Kind::Namespace => {
                if let Some(eff) = self.namespace_defs.remove(&nsn.1, cluster) {
                    publish(&mut self.namespaces, nsn.1, eff);
                    self.pending.namespaces = true;
                }
            }
            Kind::Node => {
                let key = (cluster.clone(), nsn.1);
                if Arc::make_mut(&mut self.nodes).remove(&key).is_some() {
                    self.node_changed(&key);
                }
            }
            Kind::Service => {
                let key = ServiceKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                if let Some(eff) = self.service_defs.remove(&key, cluster) {
                    self.publish_service(key, eff);
                }
            }
            Kind::EndpointSlice => self.remove_slice(&ck),
            Kind::Endpoints => {
                let key = ServiceKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                if let Some(per) = self.legacy_endpoints.get_mut(&key)
                    && per.remove(cluster).is_some()
                {
                    if per.is_empty() {
                        self.legacy_endpoints.remove(&key);
                    }
                    self.dirty_endpoints.insert(key);
                }
            }
            Kind::Pod => {
                if self.remove_pod(&ck) {
                    self.pending.workloads = true;
                }
            }
            Kind::Secret => {
                if let Some(eff) = self.secret_defs.remove(&nsn, cluster) {
                    publish(&mut self.secrets, nsn, eff);
                    self.pending.secrets = true;
                }
            }
            Kind::ConfigMap => {
                if *nsn.0 == *self.opts.system_namespace
                    && self.mesh_configmaps.remove(&nsn.1, cluster).is_some()
                {
                    self.refresh_mesh();
                }
            }
            Kind::VirtualService => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.virtual_services.remove(&key, cluster);
                config_change(
                    &mut self.config.virtual_services,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
            Kind::DestinationRule => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.destination_rules.remove(&key, cluster);
                config_change(
                    &mut self.config.destination_rules,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
            Kind::Gateway => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.gateways.remove(&key, cluster);
                config_change(
                    &mut self.config.gateways,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
            Kind::ServiceEntry => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.service_entries.remove(&key, cluster);
                config_change(
                    &mut self.config.service_entries,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
            Kind::Sidecar => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.sidecars.remove(&key, cluster);
                config_change(
                    &mut self.config.sidecars,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
            Kind::LocalRateLimit => {
                let key = ConfigKey {
                    namespace: nsn.0,
                    name: nsn.1,
                };
                let eff = self.config_defs.local_rate_limits.remove(&key, cluster);
                config_change(
                    &mut self.config.local_rate_limits,
                    key,
                    eff,
                    r.kind,
                    &mut self.pending,
                );
            }
        }
    }

    /// Replaces every object of `kinds` in `cluster` with `objects`, as one step: nothing in
    /// between is ever visible in a snapshot.
    pub fn reset_in(&mut self, cluster: &ClusterId, kinds: &[Kind], objects: Vec<Object>) {
        let mut keep: BTreeSet<ObjectRef> = BTreeSet::new();
        for o in objects {
            if kinds.contains(&o.kind()) {
                keep.insert(o.reference());
                self.apply_in(cluster, o);
            }
        }
        for kind in kinds {
            for r in self.refs_of(cluster, *kind) {
                if !keep.contains(&r) {
                    self.delete_in(cluster, &r);
                }
            }
        }
    }

    /// Every object of a kind that `cluster` currently contributes.
    pub fn refs_of(&self, cluster: &ClusterId, kind: Kind) -> Vec<ObjectRef> {
        let nsn = |(ns, name): &NsName| ObjectRef::new(kind, &**ns, &**name);
        let ck = |k: &CKey| ObjectRef::new(kind, &*k.1, &*k.2);
        let cfg = |k: &ConfigKey| ObjectRef::new(kind, &*k.namespace, &*k.name);
        let svc = |k: &ServiceKey| ObjectRef::new(kind, &*k.namespace, &*k.name);
        let mine = |c: &ClusterId| c == cluster;
        match kind {
            Kind::Namespace => self
                .namespace_defs
                .keys_of(cluster)
                .map(|n| ObjectRef::new(kind, "", &**n))
                .collect(),
            Kind::Node => self
                .nodes
                .keys()
                .filter(|(c, _)| mine(c))
                .map(|(_, n)| ObjectRef::new(kind, "", &**n))
                .collect(),
            Kind::Service => self.service_defs.keys_of(cluster).map(svc).collect(),
            Kind::EndpointSlice => self.slices.keys().filter(|k| mine(&k.0)).map(ck).collect(),
            Kind::Endpoints => self
                .legacy_endpoints
                .iter()
                .filter(|(_, per)| per.contains_key(cluster))
                .map(|(k, _)| svc(k))
                .collect(),
            Kind::Pod => self.pods.keys().filter(|k| mine(&k.0)).map(ck).collect(),
            Kind::Secret => self.secret_defs.keys_of(cluster).map(nsn).collect(),
            Kind::ConfigMap => self
                .mesh_configmaps
                .keys_of(cluster)
                .map(|n| ObjectRef::new(kind, &*self.opts.system_namespace, &**n))
                .collect(),
            Kind::VirtualService => self
                .config_defs
                .virtual_services
                .keys_of(cluster)
                .map(cfg)
                .collect(),
            Kind::DestinationRule => self
                .config_defs
                .destination_rules
                .keys_of(cluster)
                .map(cfg)
                .collect(),
            Kind::Gateway => self
                .config_defs
                .gateways
                .keys_of(cluster)
                .map(cfg)
                .collect(),
            Kind::ServiceEntry => self
                .config_defs
                .service_entries
                .keys_of(cluster)
                .map(cfg)
                .collect(),
            Kind::Sidecar => self
                .config_defs
                .sidecars
                .keys_of(cluster)
                .map(cfg)
                .collect(),
            Kind::LocalRateLimit => self
                .config_defs
                .local_rate_limits
                .keys_of(cluster)
                .map(cfg)
                .collect(),
        }
    }

    /// Publishes the current state as a snapshot, with what changed since the last one.
    pub fn snapshot(&mut self) -> (Arc<MeshSnapshot>, ChangeSet) {
        self.rebuild_dirty_endpoints();
        if self.entries_dirty
            || self.pending.config.contains(&Kind::ServiceEntry)
            || (self.pending.workloads
                && self
                    .config
                    .service_entries
                    .values()
                    .any(|s| s.spec.workload_selector.is_some()))
            || !self.pending.services.is_empty()
        {
            self.rebuild_entries();
        }
        self.version += 1;
        let snap = MeshSnapshot {
            version: self.version,
            domain: self.opts.domain.as_str().into(),
            mesh: self.mesh.clone(),
            services: self.services.clone(),
            hosts: self.hosts.clone(),
            endpoints: self.endpoints.clone(),
            workloads: self.workloads_by_ip.clone(),
            nodes: self.nodes.clone(),
            namespaces: self.namespaces.clone(),
            secrets: self.secrets.clone(),
            config: self.config.clone(),
        };
        (Arc::new(snap), std::mem::take(&mut self.pending))
    }

    /// Re-derives the services (and endpoints) of ServiceEntry hosts. A Kubernetes Service of
    /// the same name wins; between entries, the first in creation order.
    fn rebuild_entries(&mut self) {
        self.entries_dirty = false;
        let mut entries: Vec<(
            &crate::config::ConfigKey,
            &Arc<strait_api::istio::ServiceEntry>,
        )> = self.config.service_entries.iter().collect();
        entries.sort_by_key(|(k, se)| {
            let ts = se
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| serde_json::to_value(t).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "~".into());
            (ts, (*k).clone())
        });
        let mut next: BTreeMap<ServiceKey, (Arc<Service>, Option<Arc<EndpointSet>>)> =
            BTreeMap::new();
        let mut claimed: BTreeSet<Arc<str>> = BTreeSet::new();
        for (key, se) in entries {
            for host in &se.spec.hosts {
                let svc = Service::from_service_entry(key, &se.spec, host);
                if let Some(owner) = self.hosts.get(&svc.hostname)
                    && !self.entry_services.contains_key(owner)
                {
                    debug!(host = %svc.hostname, entry = %key, "host is a Kubernetes Service; the ServiceEntry does not replace it");
                    continue;
                }
                if !claimed.insert(svc.hostname.clone()) {
                    warn!(host = %svc.hostname, entry = %key, "host already defined by an older ServiceEntry; ignored");
                    continue;
                }
                let eps = self.entry_endpoints(key, &se.spec, &svc);
                let k = svc.key.clone();
                let (svc, eps) = match self.entry_services.get(&k) {
                    Some((old, old_eps)) => (
                        if **old == svc {
                            old.clone()
                        } else {
                            Arc::new(svc)
                        },
                        match (old_eps, eps) {
                            (Some(o), Some(n)) if **o == n => Some(o.clone()),
                            (_, n) => n.map(Arc::new),
                        },
                    ),
                    None => (Arc::new(svc), eps.map(Arc::new)),
                };
                next.insert(k, (svc, eps));
            }
        }
        let old = std::mem::take(&mut self.entry_services);
        for (k, (svc, _)) in &old {
            if !next.contains_key(k) {
                Arc::make_mut(&mut self.hosts).remove(&svc.hostname);
                Arc::make_mut(&mut self.services).remove(k);
                Arc::make_mut(&mut self.endpoints).remove(k);
                self.pending.services.insert(k.clone());
            }
        }
        for (k, (svc, eps)) in &next {
            let before = old.get(k);
            if before.is_none_or(|(s, _)| !Arc::ptr_eq(s, svc)) {
                Arc::make_mut(&mut self.hosts).insert(svc.hostname.clone(), k.clone());
                Arc::make_mut(&mut self.services).insert(k.clone(), svc.clone());
                self.pending.services.insert(k.clone());
            }
            let same_eps = match (before.and_then(|(_, e)| e.as_ref()), eps) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same_eps {
                match eps {
                    Some(e) => Arc::make_mut(&mut self.endpoints).insert(k.clone(), e.clone()),
                    None => Arc::make_mut(&mut self.endpoints).remove(k),
                };
                self.pending.endpoints.insert(k.clone());
            }
        }
        self.entry_services = next;
    }

    /// The endpoints of a ServiceEntry host with static resolution: its listed endpoints, or
    /// the pods its workload selector picks in its namespace.
    fn entry_endpoints(
        &self,
        key: &crate::config::ConfigKey,
        se: &strait_api::istio::ServiceEntrySpec,
        svc: &Service,
    ) -> Option<EndpointSet> {
        use crate::endpoints::{Endpoint, EndpointGroup, EndpointPort, Health};
        if svc.entry().map(|e| e.resolution) != Some(crate::service::Resolution::Static) {
            return None;
        }
        let mut groups = Vec::new();
        if let Some(sel) = se
            .workload_selector
            .as_ref()
            .filter(|w| !w.labels.is_empty())
        {
            let ports: Arc<[EndpointPort]> = se
                .ports
                .iter()
                .filter_map(|p| {
                    Some(EndpointPort {
                        name: (!p.name.is_empty()).then(|| Arc::from(p.name.as_str())),
                        port: u16::try_from(p.endpoint_port()).ok()?,
                    })
                })
                .collect();
            let mut endpoints = Vec::new();
            let mut pods: Vec<(&CKey, &Arc<Workload>)> = self
                .pods
                .iter()
                .filter(|(k, w)| {
                    *k.1 == *key.namespace
                        && crate::workload::selector_matches(&sel.labels, &w.labels)
                })
                .collect();
            pods.sort_by(|a, b| a.0.cmp(b.0));
            for ((cluster, _, _), w) in pods {
                let Some(ip) = w.ips.first() else { continue };
                let locality = w
                    .locality_override
                    .clone()
                    .or_else(|| {
                        let n = self.nodes.get(&(cluster.clone(), w.node_name.clone()?))?;
                        (!n.locality.is_empty()).then(|| n.locality.clone())
                    })
                    .unwrap_or_else(|| self.empty_locality.clone());
                endpoints.push(Endpoint {
                    address: *ip,
                    health: Health::Healthy,
                    labels: w.labels.clone(),
                    locality,
                    pod: Some(w.name.clone()),
                    cluster: cluster.clone(),
                    weight: 1,
                });
            }
            groups.push(EndpointGroup { ports, endpoints });
        } else {
            for we in &se.endpoints {
                let Ok(address) = we.address.parse::<IpAddr>() else {
                    continue;
                };
                let ports: Arc<[EndpointPort]> = se
                    .ports
                    .iter()
                    .filter_map(|p| {
                        Some(EndpointPort {
                            name: (!p.name.is_empty()).then(|| Arc::from(p.name.as_str())),
                            port: u16::try_from(we.port_for(p)).ok()?,
                        })
                    })
                    .collect();
                let locality = if we.locality.is_empty() {
                    self.empty_locality.clone()
                } else {
                    Arc::new(Locality::parse(&we.locality))
                };
                groups.push(EndpointGroup {
                    ports,
                    endpoints: vec![Endpoint {
                        address,
                        health: Health::Healthy,
                        labels: Arc::new(we.labels.clone()),
                        locality,
                        pod: None,
                        cluster: ClusterId::default(),
                        weight: we.weight.max(1),
                    }],
                });
            }
        }
        Some(EndpointSet { groups })
    }

    /// The raw groups of a service, cluster by cluster: a cluster's EndpointSlices, or its
    /// v1 Endpoints when it has no slice for the service.
    fn raw_groups(&self, key: &ServiceKey) -> Vec<(&ClusterId, &RawGroup)> {
        let mut out: Vec<(&ClusterId, &RawGroup)> = Vec::new();
        let mut with_slices: BTreeSet<&ClusterId> = BTreeSet::new();
        if let Some(slices) = self.slices_by_service.get(key) {
            for ((c, _), g) in slices {
                with_slices.insert(c);
                out.push((c, g));
            }
        }
        if let Some(per) = self.legacy_endpoints.get(key) {
            for (c, gs) in per {
                if !with_slices.contains(c) {
                    out.extend(gs.iter().map(|g| (c, g)));
                }
            }
        }
        out
    }

    fn rebuild_dirty_endpoints(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_endpoints);
        let mut updates: Vec<(ServiceKey, Option<EndpointSet>)> = Vec::new();
        let mut addresses: Vec<(ServiceKey, BTreeSet<(ClusterId, IpAddr)>)> = Vec::new();
        for key in dirty {
            let raw = self.raw_groups(&key);
            let ips: BTreeSet<(ClusterId, IpAddr)> = raw
                .iter()
                .flat_map(|(c, g)| g.endpoints.iter().map(|e| ((*c).clone(), e.address)))
                .collect();
            if self.ips_by_service.get(&key) != Some(&ips) {
                addresses.push((key.clone(), ips));
            }
            let set = EndpointSet {
                groups: raw
                    .into_iter()
                    .map(|(c, g)| {
                        Joiner {
                            cluster: c,
                            pods: &self.pods,
                            pods_by_ip: &self.pods_by_ip,
                            nodes: &self.nodes,
                            empty_labels: &self.empty_labels,
                            empty_locality: &self.empty_locality,
                        }
                        .join(g)
                    })
                    .collect(),
            };
            let new = (!set.groups.is_empty()).then_some(set);
            if self.endpoints.get(&key).map(|a| &**a) != new.as_ref() {
                updates.push((key, new));
            }
        }
        for (key, ips) in addresses {
            let old = self.ips_by_service.remove(&key).unwrap_or_default();
            for ip in old.difference(&ips) {
                if let Some(keys) = self.services_by_ip.get_mut(ip) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.services_by_ip.remove(ip);
                    }
                }
            }
            for ip in ips.difference(&old) {
                self.services_by_ip
                    .entry(ip.clone())
                    .or_default()
                    .insert(key.clone());
            }
            if !ips.is_empty() {
                self.ips_by_service.insert(key, ips);
            }
        }
        if updates.is_empty() {
            return;
        }
        let endpoints = Arc::make_mut(&mut self.endpoints);
        for (key, set) in updates {
            match set {
                Some(s) => endpoints.insert(key.clone(), Arc::new(s)),
                None => endpoints.remove(&key),
            };
            self.pending.endpoints.insert(key);
        }
    }

    fn remove_slice(&mut self, slice_key: &CKey) {
        let Some(svc) = self.slices.remove(slice_key) else {
            return;
        };
        if let Some(groups) = self.slices_by_service.get_mut(&svc) {
            groups.remove(&(slice_key.0.clone(), slice_key.2.clone()));
            if groups.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        self.dirty_endpoints.insert(svc);
    }

    /// Forgets a pod; true if it existed.
    fn remove_pod(&mut self, key: &CKey) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        self.pending.workload_ips.extend(old.ips.iter().copied());
        let cluster = key.0.clone();
        for ip in &old.ips {
            let ipk = (cluster.clone(), *ip);
            if self
                .pods_by_ip
                .get(&ipk)
                .is_some_and(|(ns, n)| *ns == key.1 && *n == key.2)
            {
                self.pods_by_ip.remove(&ipk);
                if let Some(eff) = self.workload_ips.remove(ip, &cluster) {
                    publish_hash(&mut self.workloads_by_ip, *ip, eff);
                }
            }
            self.dirty_services_at(&cluster, *ip);
        }
        true
    }

    fn dirty_services_at(&mut self, cluster: &ClusterId, ip: IpAddr) {
        if let Some(keys) = self.services_by_ip.get(&(cluster.clone(), ip)) {
            self.dirty_endpoints.extend(keys.iter().cloned());
        }
    }

    fn node_changed(&mut self, node: &NodeKey) {
        // Node edits that matter (topology labels) are rare: re-join every service with an
        // endpoint on that node.
        let (cluster, name) = node;
        let pods_on_node: BTreeSet<(&Arc<str>, &Arc<str>)> = self
            .pods
            .iter()
            .filter(|(k, w)| k.0 == *cluster && w.node_name.as_deref() == Some(&**name))
            .map(|(k, _)| (&k.1, &k.2))
            .collect();
        let on_node = |e: &crate::endpoints::RawEndpoint| {
            e.node.as_deref() == Some(&**name)
                || e.pod
                    .as_ref()
                    .is_some_and(|(ns, n)| pods_on_node.contains(&(ns, n)))
        };
        for (svc, groups) in &self.slices_by_service {
            let hit = groups
                .iter()
                .filter(|((c, _), _)| c == cluster)
                .flat_map(|(_, g)| &g.endpoints)
                .any(on_node);
            if hit {
                self.dirty_endpoints.insert(svc.clone());
            }
        }
        for (svc, per) in &self.legacy_endpoints {
            if per
                .get(cluster)
                .into_iter()
                .flatten()
                .flat_map(|g| &g.endpoints)
                .any(on_node)
            {
                self.dirty_endpoints.insert(svc.clone());
            }
        }
        // Workloads on the node moved locality: any proxy may resolve differently.
        self.pending.workloads = true;
        self.pending.all_workloads = true;
    }

    fn apply_configmap(&mut self, cluster: &ClusterId, cm: &core::ConfigMap) {
        let (ns, name) = ns_name(&cm.metadata);
        if *ns != *self.opts.system_namespace || !self.is_mesh_configmap(&name) {
            return;
        }
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("mesh"))
            .map(String::as_str)
            .unwrap_or_default();
        match parse_mesh_config(text) {
            Ok(mesh) => {
                if self.mesh_configmaps.set(name, cluster, mesh).is_some() {
                    self.refresh_mesh();
                }
            }
            Err(error) => {
                warn!(%error, configmap = %name, "mesh config invalid; keeping the previous one")
            }
        }
    }

    fn is_mesh_configmap(&self, name: &str) -> bool {
        name == "istio" || name.strip_prefix("istio-") == Some(self.opts.revision.as_str())
    }

    fn refresh_mesh(&mut self) {
        let rev_name: Arc<str> = format!("istio-{}", self.opts.revision).into();
        let mesh = self
            .mesh_configmaps
            .effective(&rev_name)
            .or_else(|| self.mesh_configmaps.effective(&Arc::from("istio")))
            .map(|m| (**m).clone())
            .unwrap_or_default();
        if *self.mesh != mesh {
            self.mesh = Arc::new(mesh);
            self.pending.full = true;
        }
    }
}

fn publish_hash<K: Hash + Eq + Clone, V>(
    map: &mut Arc<HashMap<K, Arc<V>>>,
    key: K,
    value: Option<Arc<V>>,
) {
    let m = Arc::make_mut(map);
    match value {
        Some(v) => m.insert(key, v),
        None => m.remove(&key),
    };
}

/// Parses the YAML of a mesh ConfigMap's `mesh` key.
pub fn parse_mesh_config(text: &str) -> Result<MeshConfig, String> {
    if text.trim().is_empty() {
        return Ok(MeshConfig::default());
    }
    let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(MeshConfig::default());
    }
    MeshConfig::from_json_value(value)
}

fn config_key(meta: &ObjectMeta) -> ConfigKey {
    ConfigKey::new(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Drops bookkeeping fields that change on every write (resourceVersion, managedFields,
/// status), so that a status update is not mistaken for a config change.
fn normalized<S>(mut obj: IstioObject<S>) -> IstioObject<S> {
    obj.status = None;
    obj.metadata.resource_version = None;
    obj.metadata.managed_fields = None;
    obj.metadata.generation = None;
    obj
}

fn config_change<V>(
    map: &mut Arc<BTreeMap<ConfigKey, Arc<V>>>,
    key: ConfigKey,
    eff: Option<Option<Arc<V>>>,
    kind: Kind,
    pending: &mut ChangeSet,
) {
    if let Some(eff) = eff {
        publish(map, key, eff);
        pending.config.insert(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;
    use crate::testing::{mk_node, mk_pod, mk_service, mk_slice};

    fn index() -> MeshIndex {
        let mut idx = MeshIndex::new(IndexOptions::default());
        let _ = idx.snapshot();
        idx
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name)
    }

    #[test]
    fn a_label_only_service_change_rebuilds_nothing() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[8080]));
        let _ = idx.snapshot();
        let relabel = |labels: &[(&str, &str)], selector: Option<&str>| {
            let mut o = mk_service("web", "shop", &[8080]);
            if let Object::Service(s) = &mut o {
                s.metadata.labels = Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
                if let (Some(sel), Some(spec)) = (selector, s.spec.as_mut()) {
                    spec.selector = Some([("app".to_string(), sel.to_string())].into());
                }
            }
            o
        };
        idx.apply(relabel(&[("team", "a")], None));
        let (snap, changes) = idx.snapshot();
        assert!(changes.is_metadata_only(), "{changes:?}");
        let svc = &snap.services[&key("shop", "web")];
        assert_eq!(svc.labels.get("team").map(String::as_str), Some("a"));
        // A selector change is translated.
        idx.apply(relabel(&[("team", "a")], Some("other")));
        let (_, changes) = idx.snapshot();
        assert!(changes.services.contains(&key("shop", "web")));
        assert!(!changes.is_metadata_only());
    }

    #[test]
    fn endpoints_join_pods_and_nodes() {
        let mut idx = index();
        idx.apply(mk_node("n1", "eu", "eu-a"));
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_pod(
            "web-0",
            "shop",
            "10.0.0.1",
            &[("app", "web"), ("version", "v1")],
            "n1",
        ));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        let (snap, changes) = idx.snapshot();
        assert!(changes.services.contains(&key("shop", "web")));
        assert!(changes.endpoints.contains(&key("shop", "web")));
        let eps = snap.endpoints_of(&key("shop", "web")).expect("endpoints");
        let all: Vec<_> = eps.for_port(Some("http-8080")).collect();
        assert_eq!(all.len(), 1);
        let (e, port) = all[0];
        assert_eq!(port, 8080);
        assert_eq!(e.health, Health::Healthy);
        assert_eq!(e.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(e.locality.zone, "eu-a");
        assert!(snap.service_by_host("web.shop.svc.cluster.local").is_some());
    }

    #[test]
    fn unchanged_objects_do_not_count_as_changes() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        let _ = idx.snapshot();
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        assert!(!idx.has_changes());
        let (_, changes) = idx.snapshot();
        assert!(changes.is_empty());
    }

    #[test]
    fn endpoint_change_is_endpoints_only() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        let (s1, _) = idx.snapshot();
        idx.apply(mk_slice(
            "web-abc",
            "shop",
            "web",
            &["10.0.0.1", "10.0.0.2"],
            &[8080],
        ));
        let (s2, changes) = idx.snapshot();
        assert!(changes.is_endpoints_only(), "{changes:?}");
        // The service map is shared untouched between the two snapshots.
        assert!(Arc::ptr_eq(&s1.services, &s2.services));
        assert_eq!(
            s2.endpoints_of(&key("shop", "web")).map(|e| e.len()),
            Some(2)
        );
    }

    #[test]
    fn pod_label_change_rejoins_its_services() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        idx.apply(mk_pod(
            "web-0",
            "shop",
            "10.0.0.1",
            &[("version", "v1")],
            "n1",
        ));
        let _ = idx.snapshot();
        idx.apply(mk_pod(
            "web-0",
            "shop",
            "10.0.0.1",
            &[("version", "v2")],
            "n1",
        ));
        let (snap, changes) = idx.snapshot();
        assert!(changes.endpoints.contains(&key("shop", "web")));
        let eps = snap.endpoints_of(&key("shop", "web")).expect("endpoints");
        let (e, _) = eps.for_port(Some("http-8080")).next().expect("one");
        assert_eq!(e.labels.get("version").map(String::as_str), Some("v2"));
    }

    #[test]
    fn deleting_the_last_slice_removes_endpoints_and_ip_index() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_slice("web-abc", "shop", "web", &["10.0.0.1"], &[8080]));
        let _ = idx.snapshot();
        idx.delete(&ObjectRef::new(Kind::EndpointSlice, "shop", "web-abc"));
        let (snap, changes) = idx.snapshot();
        assert!(changes.endpoints.contains(&key("shop", "web")));
        assert!(snap.endpoints_of(&key("shop", "web")).is_none());
        assert!(idx.services_by_ip.is_empty());
        assert!(idx.ips_by_service.is_empty());
    }

    #[test]
    fn reset_replaces_a_kind_at_once() {
        let mut idx = index();
        idx.apply(mk_service("a", "ns", &[80]));
        idx.apply(mk_service("b", "ns", &[80]));
        let _ = idx.snapshot();
        idx.reset(
            &[Kind::Service],
            vec![mk_service("b", "ns", &[80]), mk_service("c", "ns", &[80])],
        );
        let (snap, changes) = idx.snapshot();
        let names: Vec<_> = snap.services.keys().map(|k| k.name.to_string()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(
            changes
                .services
                .iter()
                .map(|k| k.name.to_string())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn not_ready_and_terminating_endpoints_are_marked() {
        let mut idx = index();
        idx.apply(mk_service("web", "shop", &[80]));
        let slice = strait_api::parse_object(
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "s", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http-80", "port": 80}],
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                ],
            }),
            "default",
        )
        .expect("valid")
        .object;
        idx.apply(slice);
        let (snap, _) = idx.snapshot();
        let eps = snap.endpoints_of(&key("shop", "web")).expect("endpoints");
        let health: Vec<_> = eps
            .for_port(Some("http-80"))
            .map(|(e, _)| e.health)
            .collect();
        assert_eq!(
            health,
            [Health::Healthy, Health::Unhealthy, Health::Draining]
        );
    }

    #[test]
    fn mesh_config_from_configmap() {
        let mut idx = index();
        let cm = strait_api::parse_object(
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"},
            }),
            "default",
        )
        .expect("valid")
        .object;
        idx.apply(cm);
        let (snap, changes) = idx.snapshot();
        assert!(changes.full);
        assert_eq!(snap.mesh.access_log_file, "/dev/stdout");
        assert_eq!(
            snap.mesh.outbound_traffic_policy.mode,
            strait_api::mesh_config::OutboundMode::RegistryOnly
        );
        idx.delete(&ObjectRef::new(Kind::ConfigMap, "istio-system", "istio"));
        let (snap, _) = idx.snapshot();
        assert_eq!(snap.mesh.access_log_file, "");
    }

    fn cluster(id: &str) -> ClusterId {
        ClusterId::from(id)
    }

    #[test]
    fn clusters_merge_services_and_keep_their_own_locality() {
        let mut idx = index();
        let (a, b) = (cluster("east"), cluster("west"));
        // The same node name means different machines in different clusters.
        idx.apply_in(&a, mk_node("n1", "us-east", "us-east-1a"));
        idx.apply_in(&b, mk_node("n1", "us-west", "us-west-2b"));
        idx.apply_in(&a, mk_service("web", "shop", &[8080]));
        idx.apply_in(&b, mk_service("web", "shop", &[8080]));
        idx.apply_in(
            &a,
            mk_pod("web-0", "shop", "10.0.0.1", &[("app", "web")], "n1"),
        );
        idx.apply_in(
            &b,
            mk_pod("web-0", "shop", "10.0.0.1", &[("app", "web")], "n1"),
        );
        idx.apply_in(&a, mk_slice("web-x", "shop", "web", &["10.0.0.1"], &[8080]));
        idx.apply_in(&b, mk_slice("web-x", "shop", "web", &["10.0.0.1"], &[8080]));
        let (snap, _) = idx.snapshot();
        assert_eq!(snap.services.len(), 1);
        let eps = snap.endpoints_of(&key("shop", "web")).expect("endpoints");
        let mut zones: Vec<(String, String)> = eps
            .for_port(Some("http-8080"))
            .map(|(e, _)| (e.cluster.to_string(), e.locality.zone.clone()))
            .collect();
        zones.sort();
        assert_eq!(
            zones,
            [
                ("east".to_string(), "us-east-1a".to_string()),
                ("west".to_string(), "us-west-2b".to_string())
            ]
        );

        // One cluster losing the service keeps the other's definition and endpoints.
        idx.delete_in(&a, &ObjectRef::new(Kind::Service, "shop", "web"));
        idx.delete_in(&a, &ObjectRef::new(Kind::EndpointSlice, "shop", "web-x"));
        let (snap, _) = idx.snapshot();
        assert_eq!(snap.services.len(), 1);
        assert_eq!(
            snap.endpoints_of(&key("shop", "web")).map(|e| e.len()),
            Some(1)
        );
    }

    #[test]
    fn a_cluster_relist_leaves_other_clusters_alone() {
        let mut idx = index();
        let (a, b) = (cluster("east"), cluster("west"));
        idx.apply_in(&a, mk_service("one", "ns", &[80]));
        idx.apply_in(&b, mk_service("two", "ns", &[80]));
        let _ = idx.snapshot();
        idx.reset_in(&a, &[Kind::Service], vec![mk_service("three", "ns", &[80])]);
        let (snap, _) = idx.snapshot();
        let names: Vec<_> = snap.services.keys().map(|k| k.name.to_string()).collect();
        assert_eq!(names, ["three", "two"]);
    }
}
