//! The writer side of the model: applies source events and publishes snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::istio::IstioObject;
use strait_api::k8s_openapi::api::core::v1 as core;
use strait_api::{Kind, MeshConfig, Object, ObjectRef};
use tracing::{debug, warn};

use crate::config::{ConfigKey, ConfigStore};
use crate::endpoints::{EndpointSet, Joiner, RawGroup};
use crate::event::{ChangeSet, Event};
use crate::secret::Secret;
use crate::service::{Service, ServiceKey};
use crate::snapshot::MeshSnapshot;
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

use crate::snapshot::NsName;

fn ns_name(
    meta: &strait_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> NsName {
    (
        meta.namespace.as_deref().unwrap_or_default().into(),
        meta.name.as_deref().unwrap_or_default().into(),
    )
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
    nodes: Arc<HashMap<Arc<str>, Arc<Node>>>,
    namespaces: Arc<BTreeMap<Arc<str>, Arc<Namespace>>>,
    secrets: Arc<BTreeMap<NsName, Arc<Secret>>>,
    config: ConfigStore,
    // Writer-only state.
    mesh_configmaps: BTreeMap<Arc<str>, MeshConfig>,
    pods: HashMap<NsName, Arc<Workload>>,
    pods_by_ip: HashMap<IpAddr, NsName>,
    slices: HashMap<NsName, ServiceKey>,
    slices_by_service: HashMap<ServiceKey, BTreeMap<Arc<str>, RawGroup>>,
    legacy_endpoints: HashMap<ServiceKey, Vec<RawGroup>>,
    services_by_ip: HashMap<IpAddr, BTreeSet<ServiceKey>>,
    ips_by_service: HashMap<ServiceKey, BTreeSet<IpAddr>>,
    dirty_endpoints: BTreeSet<ServiceKey>,
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
            mesh_configmaps: BTreeMap::new(),
            pods: HashMap::new(),
            pods_by_ip: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            legacy_endpoints: HashMap::new(),
            services_by_ip: HashMap::new(),
            ips_by_service: HashMap::new(),
            dirty_endpoints: BTreeSet::new(),
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
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Apply(o) => self.apply(*o),
            Event::Delete(r) => self.delete(&r),
            Event::Reset { kinds, objects } => self.reset(&kinds, objects),
            Event::Synced => {}
        }
    }

    /// True when something changed since the last snapshot.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty() || !self.dirty_endpoints.is_empty()
    }

    /// Creates or replaces an object. Callers validate first; an object that is still
    /// unusable (a Service without a name, say) is ignored.
    pub fn apply(&mut self, obj: Object) {
        let r = obj.reference();
        if r.name.is_empty() {
            warn!(kind = %r.kind, "object without a name ignored");
            return;
        }
        match obj {
            Object::Namespace(n) => {
                let n = Namespace::from_k8s(&n);
                if self
                    .namespaces
                    .get(&n.name)
                    .map(|o| **o != n)
                    .unwrap_or(true)
                {
                    Arc::make_mut(&mut self.namespaces).insert(n.name.clone(), Arc::new(n));
                    self.pending.namespaces = true;
                }
            }
            Object::Node(n) => {
                let n = Node::from_k8s(&n);
                if self.nodes.get(&n.name).map(|o| **o != n).unwrap_or(true) {
                    let name = n.name.clone();
                    Arc::make_mut(&mut self.nodes).insert(name.clone(), Arc::new(n));
                    self.node_changed(&name);
                }
            }
            Object::Service(s) => {
                let s = Service::from_k8s(&s, &self.opts.domain);
                if self.services.get(&s.key).map(|o| **o != s).unwrap_or(true) {
                    let key = s.key.clone();
                    Arc::make_mut(&mut self.hosts).insert(s.hostname.clone(), key.clone());
                    Arc::make_mut(&mut self.services).insert(key.clone(), Arc::new(s));
                    self.pending.services.insert(key);
                }
            }
            Object::EndpointSlice(s) => {
                let slice_key = ns_name(&s.metadata);
                let Some(svc) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                else {
                    debug!(slice = %slice_key.1, "EndpointSlice without a service-name label ignored");
                    return;
                };
                let svc = ServiceKey::new(&slice_key.0, svc);
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
                if groups.get(&slice_key.1) != Some(&group) {
                    groups.insert(slice_key.1.clone(), group);
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
                if self.legacy_endpoints.get(&key) != Some(&groups) {
                    self.legacy_endpoints.insert(key.clone(), groups);
                    self.dirty_endpoints.insert(key);
                }
            }
            Object::Pod(p) => {
                let key = ns_name(&p.metadata);
                let w = Workload::from_k8s(&p);
                if self.pods.get(&key).map(|o| **o != w).unwrap_or(true) {
                    self.remove_pod(&key);
                    let w = Arc::new(w);
                    if !w.host_network {
                        for ip in &w.ips {
                            self.pods_by_ip.insert(*ip, key.clone());
                            Arc::make_mut(&mut self.workloads_by_ip).insert(*ip, w.clone());
                            self.dirty_services_at(*ip);
                        }
                    }
                    self.pods.insert(key, w);
                    self.pending.workloads = true;
                }
            }
            Object::Secret(s) => {
                let key = ns_name(&s.metadata);
                let s = Secret::from_k8s(&s);
                if self.secrets.get(&key).map(|o| **o != s).unwrap_or(true) {
                    Arc::make_mut(&mut self.secrets).insert(key, Arc::new(s));
                    self.pending.secrets = true;
                }
            }
            Object::ConfigMap(cm) => self.apply_configmap(&cm),
            Object::VirtualService(o) => {
                let key = config_key(&o.metadata);
                upsert(
                    &mut self.config.virtual_services,
                    key,
                    o,
                    Kind::VirtualService,
                    &mut self.pending,
                );
            }
            Object::DestinationRule(o) => {
                let key = config_key(&o.metadata);
                upsert(
                    &mut self.config.destination_rules,
                    key,
                    o,
                    Kind::DestinationRule,
                    &mut self.pending,
                );
            }
            Object::Gateway(o) => {
                let key = config_key(&o.metadata);
                upsert(
                    &mut self.config.gateways,
                    key,
                    o,
                    Kind::Gateway,
                    &mut self.pending,
                );
            }
            Object::ServiceEntry(o) => {
                let key = config_key(&o.metadata);
                upsert(
                    &mut self.config.service_entries,
                    key,
                    o,
                    Kind::ServiceEntry,
                    &mut self.pending,
                );
            }
            Object::Sidecar(o) => {
                let key = config_key(&o.metadata);
                upsert(
                    &mut self.config.sidecars,
                    key,
                    o,
                    Kind::Sidecar,
                    &mut self.pending,
                );
            }
        }
    }

    /// Removes an object; removing one that does not exist is a no-op.
    pub fn delete(&mut self, r: &ObjectRef) {
        let key: NsName = (r.namespace.as_str().into(), r.name.as_str().into());
        match r.kind {
            Kind::Namespace => {
                if Arc::make_mut(&mut self.namespaces).remove(&key.1).is_some() {
                    self.pending.namespaces = true;
                }
            }
            Kind::Node => {
                if Arc::make_mut(&mut self.nodes).remove(&key.1).is_some() {
                    self.node_changed(&key.1);
                }
            }
            Kind::Service => {
                let skey = ServiceKey {
                    namespace: key.0,
                    name: key.1,
                };
                if let Some(s) = Arc::make_mut(&mut self.services).remove(&skey) {
                    Arc::make_mut(&mut self.hosts).remove(&s.hostname);
                    self.pending.services.insert(skey);
                }
            }
            Kind::EndpointSlice => self.remove_slice(&key),
            Kind::Endpoints => {
                let skey = ServiceKey {
                    namespace: key.0,
                    name: key.1,
                };
                if self.legacy_endpoints.remove(&skey).is_some() {
                    self.dirty_endpoints.insert(skey);
                }
            }
            Kind::Pod => {
                if self.remove_pod(&key) {
                    self.pending.workloads = true;
                }
            }
            Kind::Secret => {
                if Arc::make_mut(&mut self.secrets).remove(&key).is_some() {
                    self.pending.secrets = true;
                }
            }
            Kind::ConfigMap => {
                if self.mesh_configmaps.remove(&key.1).is_some() {
                    self.refresh_mesh();
                }
            }
            Kind::VirtualService => remove(
                &mut self.config.virtual_services,
                &key,
                r.kind,
                &mut self.pending,
            ),
            Kind::DestinationRule => remove(
                &mut self.config.destination_rules,
                &key,
                r.kind,
                &mut self.pending,
            ),
            Kind::Gateway => remove(&mut self.config.gateways, &key, r.kind, &mut self.pending),
            Kind::ServiceEntry => remove(
                &mut self.config.service_entries,
                &key,
                r.kind,
                &mut self.pending,
            ),
            Kind::Sidecar => remove(&mut self.config.sidecars, &key, r.kind, &mut self.pending),
        }
    }

    /// Replaces every object of `kinds` with `objects`, as one step: nothing in between is
    /// ever visible in a snapshot.
    pub fn reset(&mut self, kinds: &[Kind], objects: Vec<Object>) {
        let mut keep: BTreeSet<ObjectRef> = BTreeSet::new();
        for o in objects {
            if kinds.contains(&o.kind()) {
                keep.insert(o.reference());
                self.apply(o);
            }
        }
        for kind in kinds {
            for r in self.refs_of(*kind) {
                if !keep.contains(&r) {
                    self.delete(&r);
                }
            }
        }
    }

    /// Every object of a kind currently held.
    pub fn refs_of(&self, kind: Kind) -> Vec<ObjectRef> {
        let mk = |(ns, name): &NsName| ObjectRef::new(kind, &**ns, &**name);
        let cfg = |k: &ConfigKey| ObjectRef::new(kind, &*k.namespace, &*k.name);
        match kind {
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| ObjectRef::new(kind, "", &**n))
                .collect(),
            Kind::Node => self
                .nodes
                .keys()
                .map(|n| ObjectRef::new(kind, "", &**n))
                .collect(),
            Kind::Service => self
                .services
                .keys()
                .map(|k| ObjectRef::new(kind, &*k.namespace, &*k.name))
                .collect(),
            Kind::EndpointSlice => self.slices.keys().map(mk).collect(),
            Kind::Endpoints => self
                .legacy_endpoints
                .keys()
                .map(|k| ObjectRef::new(kind, &*k.namespace, &*k.name))
                .collect(),
            Kind::Pod => self.pods.keys().map(mk).collect(),
            Kind::Secret => self.secrets.keys().map(mk).collect(),
            Kind::ConfigMap => self
                .mesh_configmaps
                .keys()
                .map(|n| ObjectRef::new(kind, &*self.opts.system_namespace, &**n))
                .collect(),
            Kind::VirtualService => self.config.virtual_services.keys().map(cfg).collect(),
            Kind::DestinationRule => self.config.destination_rules.keys().map(cfg).collect(),
            Kind::Gateway => self.config.gateways.keys().map(cfg).collect(),
            Kind::ServiceEntry => self.config.service_entries.keys().map(cfg).collect(),
            Kind::Sidecar => self.config.sidecars.keys().map(cfg).collect(),
        }
    }

    /// Publishes the current state as a snapshot, with what changed since the last one.
    pub fn snapshot(&mut self) -> (Arc<MeshSnapshot>, ChangeSet) {
        self.rebuild_dirty_endpoints();
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

    fn rebuild_dirty_endpoints(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_endpoints);
        let joiner = Joiner {
            pods: &self.pods,
            pods_by_ip: &self.pods_by_ip,
            nodes: &self.nodes,
            empty_labels: &self.empty_labels,
            empty_locality: &self.empty_locality,
        };
        let mut updates: Vec<(ServiceKey, Option<EndpointSet>)> = Vec::new();
        let mut addresses: Vec<(ServiceKey, BTreeSet<IpAddr>)> = Vec::new();
        for key in dirty {
            let raw: Vec<&RawGroup> = match self.slices_by_service.get(&key) {
                Some(slices) if !slices.is_empty() => slices.values().collect(),
                _ => self
                    .legacy_endpoints
                    .get(&key)
                    .map(|gs| gs.iter().collect())
                    .unwrap_or_default(),
            };
            let ips: BTreeSet<IpAddr> = raw
                .iter()
                .flat_map(|g| g.endpoints.iter().map(|e| e.address))
                .collect();
            if self.ips_by_service.get(&key) != Some(&ips) {
                addresses.push((key.clone(), ips));
            }
            let set = EndpointSet {
                groups: raw.into_iter().map(|g| joiner.join(g)).collect(),
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
                    .entry(*ip)
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

    fn remove_slice(&mut self, slice_key: &NsName) {
        let Some(svc) = self.slices.remove(slice_key) else {
            return;
        };
        if let Some(groups) = self.slices_by_service.get_mut(&svc) {
            groups.remove(&slice_key.1);
            if groups.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        self.dirty_endpoints.insert(svc);
    }

    /// Forgets a pod; true if it existed.
    fn remove_pod(&mut self, key: &NsName) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        for ip in &old.ips {
            if self.pods_by_ip.get(ip) == Some(key) {
                self.pods_by_ip.remove(ip);
                Arc::make_mut(&mut self.workloads_by_ip).remove(ip);
            }
            self.dirty_services_at(*ip);
        }
        true
    }

    fn dirty_services_at(&mut self, ip: IpAddr) {
        if let Some(keys) = self.services_by_ip.get(&ip) {
            self.dirty_endpoints.extend(keys.iter().cloned());
        }
    }

    fn node_changed(&mut self, node: &str) {
        // Node edits that matter (topology labels) are rare: re-join every service with an
        // endpoint on that node.
        let pods_on_node: BTreeSet<&NsName> = self
            .pods
            .iter()
            .filter(|(_, w)| w.node_name.as_deref() == Some(node))
            .map(|(k, _)| k)
            .collect();
        for (svc, groups) in &self.slices_by_service {
            let hit = groups.values().flat_map(|g| &g.endpoints).any(|e| {
                e.node.as_deref() == Some(node)
                    || e.pod.as_ref().is_some_and(|p| pods_on_node.contains(p))
            });
            if hit {
                self.dirty_endpoints.insert(svc.clone());
            }
        }
        for (svc, groups) in &self.legacy_endpoints {
            if groups
                .iter()
                .flat_map(|g| &g.endpoints)
                .any(|e| e.node.as_deref() == Some(node))
            {
                self.dirty_endpoints.insert(svc.clone());
            }
        }
        self.pending.workloads = true;
    }

    fn apply_configmap(&mut self, cm: &core::ConfigMap) {
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
                self.mesh_configmaps.insert(name, mesh);
                self.refresh_mesh();
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
        let rev_name = format!("istio-{}", self.opts.revision);
        let mesh = self
            .mesh_configmaps
            .get(rev_name.as_str())
            .or_else(|| self.mesh_configmaps.get("istio"))
            .cloned()
            .unwrap_or_default();
        if *self.mesh != mesh {
            self.mesh = Arc::new(mesh);
            self.pending.full = true;
        }
    }
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

fn config_key(
    meta: &strait_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ConfigKey {
    ConfigKey::new(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Inserts a config object unless an equal one is already there. Bookkeeping fields that
/// change on every write (resourceVersion, managedFields, status) are dropped first so that a
/// status update is not mistaken for a config change.
fn upsert<S: PartialEq>(
    map: &mut Arc<BTreeMap<ConfigKey, Arc<IstioObject<S>>>>,
    key: ConfigKey,
    mut obj: IstioObject<S>,
    kind: Kind,
    pending: &mut ChangeSet,
) {
    obj.status = None;
    obj.metadata.resource_version = None;
    obj.metadata.managed_fields = None;
    obj.metadata.generation = None;
    if map.get(&key).map(|o| **o != obj).unwrap_or(true) {
        Arc::make_mut(map).insert(key, Arc::new(obj));
        pending.config.insert(kind);
    }
}

fn remove<T>(
    map: &mut Arc<BTreeMap<ConfigKey, Arc<T>>>,
    key: &NsName,
    kind: Kind,
    pending: &mut ChangeSet,
) {
    let key = ConfigKey {
        namespace: key.0.clone(),
        name: key.1.clone(),
    };
    if map.contains_key(&key) {
        Arc::make_mut(map).remove(&key);
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
}
