//! Builds proxies' snapshots from mesh snapshots, sharing everything that can be shared.
//!
//! * Outbound clusters and load assignments depend on a proxy only through the
//!   DestinationRules it resolves (its DR *scope*): they are built once per scope, per
//!   service (rebuilt only when that service, its endpoints, its rule or the mesh config
//!   change), encoded once, and assembled into shared maps. An endpoint change patches the EDS
//!   maps, so proxies can find what changed in O(changes).
//! * Listeners and routes depend on the proxy's class (kind, namespace, traffic capture,
//!   source-conditioned rules, gateways): built once per class per config change.
//! * TLS secrets (SDS) are built once per namespace and set of names.
//! * Only the inbound side (the proxy's own workload) is built per proxy.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use strait_model::{
    ChangeSet, EndpointSet, InterceptionMode, Labels, Locality, MeshSnapshot, Proxy, ProxyKind,
    Service, ServiceKey,
};
use strait_translate::scope::{self, Visibility};
use strait_translate::{
    ConfigIndex, EffectiveDr, ProxyClass, cluster, endpoint, gateway, listener, locality, route,
    route_context, sds,
};

/// What decides a class's visibility: kind, namespace, Sidecar, Gateways.
type VisibilityKey = (
    ProxyKind,
    Arc<str>,
    Option<strait_model::ConfigKey>,
    Vec<strait_model::ConfigKey>,
);

use crate::resource::{ProxySnapshot, Resource, ResourceMap, TypeView, XdsType};

struct ServiceMemo {
    service: Arc<Service>,
    mesh: Arc<strait_api::MeshConfig>,
    dr: Option<EffectiveDr>,
    clusters: Vec<Arc<Resource>>,
    secrets: BTreeSet<String>,
}

struct EndpointMemo {
    service: Arc<Service>,
    endpoints: Option<Arc<EndpointSet>>,
    mesh: Arc<strait_api::MeshConfig>,
    dr: Option<EffectiveDr>,
    /// The proxy locality it was built for, when locality load balancing applies.
    locality: Option<LocalityKey>,
    assignments: Vec<Arc<Resource>>,
}

/// What of a proxy its endpoints depend on when locality load balancing applies: its
/// locality and the values of the labels `failoverPriority` orders by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LocalityKey {
    locality: Arc<Locality>,
    labels: Vec<Option<String>>,
}

impl LocalityKey {
    fn of(proxy: &Proxy, keys: &[String]) -> Self {
        LocalityKey {
            locality: proxy.locality.clone(),
            labels: keys.iter().map(|k| proxy.labels.get(k).cloned()).collect(),
        }
    }
}

/// How many DestinationRule variants of one service's clusters are kept (scopes that resolve
/// a host to different rules).
const VARIANTS: usize = 4;

/// How many variants of one service's endpoints are kept (rules times proxy localities).
const ENDPOINT_VARIANTS: usize = 8;

/// Encoded resources per service, shared by every scope: a scope rebuilt after a change
/// re-encodes only the services whose inputs changed.
#[derive(Default)]
struct Memo {
    clusters: HashMap<ServiceKey, Vec<Arc<ServiceMemo>>>,
    endpoints: HashMap<ServiceKey, Vec<Arc<EndpointMemo>>>,
}

fn same_eps(a: &Option<Arc<EndpointSet>>, b: Option<&Arc<EndpointSet>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Memo {
    fn clusters(
        &mut self,
        mesh: &Arc<MeshSnapshot>,
        svc: &Arc<Service>,
        dr: Option<EffectiveDr>,
    ) -> Arc<ServiceMemo> {
        let variants = self.clusters.entry(svc.key.clone()).or_default();
        // Variants built from an older service or mesh config are stale.
        variants.retain(|m| Arc::ptr_eq(&m.service, svc) && Arc::ptr_eq(&m.mesh, &mesh.mesh));
        if let Some(m) = variants.iter().find(|m| m.dr == dr) {
            return m.clone();
        }
        let built = cluster::outbound_clusters(mesh, svc, dr.as_ref());
        let m = Arc::new(ServiceMemo {
            service: svc.clone(),
            mesh: mesh.mesh.clone(),
            dr,
            clusters: built
                .clusters
                .iter()
                .map(|c| Resource::encode(c.name.as_str(), c))
                .collect(),
            secrets: built.secrets,
        });
        if variants.len() >= VARIANTS {
            variants.remove(0);
        }
        variants.push(m.clone());
        m
    }

    /// The load assignments of `svc` under rule `dr`, for a proxy at `proxy` (when locality
    /// load balancing may apply anywhere in the mesh).
    fn endpoints(
        &mut self,
        mesh: &MeshSnapshot,
        svc: &Arc<Service>,
        dr: Option<EffectiveDr>,
        proxy: Option<(&LocalityKey, &Labels)>,
    ) -> Arc<EndpointMemo> {
        let eps = mesh.endpoints_of(&svc.key);
        // Only services whose rules balance by locality have per-locality variants.
        let proxy =
            proxy.filter(|_| locality::service_sensitive(dr.as_ref().map(|d| &d.spec), &mesh.mesh));
        let key = proxy.map(|(k, _)| k.clone());
        let variants = self.endpoints.entry(svc.key.clone()).or_default();
        variants.retain(|m| {
            Arc::ptr_eq(&m.service, svc)
                && same_eps(&m.endpoints, eps)
                && Arc::ptr_eq(&m.mesh, &mesh.mesh)
        });
        if let Some(m) = variants.iter().find(|m| m.dr == dr && m.locality == key) {
            return m.clone();
        }
        let px = proxy.map(|(k, labels)| locality::ProxyLocality {
            locality: &k.locality,
            labels,
        });
        let assignments =
            endpoint::service_load_assignments(svc, eps.map(|e| &**e), dr.as_ref(), &mesh.mesh, px)
                .iter()
                .map(|cla| Resource::encode(cla.cluster_name.as_str(), cla))
                .collect();
        let m = Arc::new(EndpointMemo {
            service: svc.clone(),
            endpoints: eps.cloned(),
            mesh: mesh.mesh.clone(),
            dr,
            locality: key,
            assignments,
        });
        if variants.len() >= ENDPOINT_VARIANTS {
            variants.remove(0);
        }
        variants.push(m.clone());
        m
    }

    /// Forgets services that no longer exist.
    fn retain(&mut self, mesh: &MeshSnapshot) {
        self.clusters.retain(|k, _| mesh.services.contains_key(k));
        self.endpoints.retain(|k, _| mesh.services.contains_key(k));
    }
}

/// Clusters and endpoints of one DestinationRule scope and visibility.
struct Scope {
    /// A proxy of the scope: its namespace and labels resolve rules for all of them.
    namespace: Arc<str>,
    labels: Arc<Labels>,
    /// The services it holds.
    visible: Arc<Visibility>,
    /// Its proxies' locality, when locality load balancing may apply.
    locality: Option<LocalityKey>,
    services: HashMap<ServiceKey, Arc<ServiceMemo>>,
    endpoints: HashMap<ServiceKey, Arc<EndpointMemo>>,
    cds: Arc<ResourceMap>,
    eds: Arc<ResourceMap>,
    secrets: BTreeSet<String>,
    used: bool,
}

struct ClassLayers {
    listeners: Arc<ResourceMap>,
    routes: Arc<ResourceMap>,
    secrets: BTreeSet<String>,
    used: bool,
}

/// A sidecar class's route configurations from before a change that touched only some
/// services: those of ports no changed service has (had) are still right.
struct StaleRoutes {
    routes: Arc<ResourceMap>,
    /// HTTP ports of the services changed since `routes` was built, before and after.
    touched: BTreeSet<u16>,
}

/// The proxy-specific (inbound) layers of a snapshot.
#[derive(Clone)]
pub struct OwnLayers {
    clusters: Arc<ResourceMap>,
    listeners: Arc<ResourceMap>,
}

/// Shared translation results for the current mesh snapshot.
pub struct ConfigCache {
    mesh: Arc<MeshSnapshot>,
    config: Arc<ConfigIndex>,
    scopes: HashMap<(u64, u64, Option<LocalityKey>), Scope>,
    /// Label keys of `failoverPriority` settings, when locality load balancing may apply
    /// (`None`: endpoints do not depend on where a proxy runs).
    locality_labels: Option<Vec<String>>,
    memo: Memo,
    visibility: HashMap<VisibilityKey, Arc<Visibility>>,
    static_clusters: HashMap<InterceptionMode, Arc<ResourceMap>>,
    classes: HashMap<ProxyClass, ClassLayers>,
    /// Route configurations of sidecar classes to reuse port by port when they are rebuilt.
    stale_routes: HashMap<ProxyClass, StaleRoutes>,
    secrets: HashMap<(Arc<str>, BTreeSet<String>), Arc<ResourceMap>>,
    empty: Arc<ResourceMap>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        Self::new()
    }
}

fn dr_for(config: &ConfigIndex, svc: &Service, ns: &str, labels: &Labels) -> Option<EffectiveDr> {
    config.destination_rule(&svc.hostname, Some(&svc.key.namespace), ns, labels)
}

impl Scope {
    fn new(
        namespace: Arc<str>,
        labels: Arc<Labels>,
        visible: Arc<Visibility>,
        locality: Option<LocalityKey>,
        empty: &Arc<ResourceMap>,
    ) -> Self {
        Scope {
            namespace,
            labels,
            visible,
            locality,
            services: HashMap::new(),
            endpoints: HashMap::new(),
            cds: empty.clone(),
            eds: empty.clone(),
            secrets: BTreeSet::new(),
            used: true,
        }
    }

    /// Rebuilds the cluster map from the memo.
    fn rebuild_clusters(
        &mut self,
        mesh: &Arc<MeshSnapshot>,
        config: &ConfigIndex,
        memo: &mut Memo,
    ) {
        let mut next = HashMap::with_capacity(mesh.services.len());
        let mut all = Vec::new();
        let mut secrets = BTreeSet::new();
        for (key, svc) in mesh.services.iter().filter(|(k, _)| self.visible.sees(k)) {
            let dr = dr_for(config, svc, &self.namespace, &self.labels);
            let entry = memo.clusters(mesh, svc, dr);
            all.extend(entry.clusters.iter().cloned());
            secrets.extend(entry.secrets.iter().cloned());
            next.insert(key.clone(), entry);
        }
        self.services = next;
        self.secrets = secrets;
        let map = ResourceMap::new(all);
        if map.version != self.cds.version {
            self.cds = map;
        }
    }

    /// Brings the endpoint map up to date for `keys` (all services when `None`).
    fn update_endpoints(
        &mut self,
        mesh: &MeshSnapshot,
        config: &ConfigIndex,
        memo: &mut Memo,
        keys: Option<&[ServiceKey]>,
    ) {
        let all_keys: Vec<ServiceKey>;
        let keys: &[ServiceKey] = match keys {
            Some(k) => k,
            None => {
                let mut k: Vec<ServiceKey> = mesh
                    .services
                    .keys()
                    .filter(|k| self.visible.sees(k))
                    .cloned()
                    .collect();
                k.extend(
                    self.endpoints
                        .keys()
                        .filter(|k| !mesh.services.contains_key(*k))
                        .cloned(),
                );
                all_keys = k;
                &all_keys
            }
        };
        let mut changes: Vec<(Arc<str>, Option<Arc<Resource>>)> = Vec::new();
        for key in keys {
            let old = self.endpoints.remove(key);
            let new = mesh
                .services
                .get(key)
                .filter(|_| self.visible.sees(key))
                .map(|svc| {
                    let dr = dr_for(config, svc, &self.namespace, &self.labels);
                    let px = self.locality.as_ref().map(|k| (k, &*self.labels));
                    memo.endpoints(mesh, svc, dr, px)
                });
            if let (Some(o), Some(n)) = (&old, &new)
                && Arc::ptr_eq(o, n)
            {
                self.endpoints.insert(key.clone(), n.clone());
                continue;
            }
            if let Some(old) = &old {
                for r in &old.assignments {
                    if !new
                        .as_ref()
                        .is_some_and(|n| n.assignments.iter().any(|x| x.name == r.name))
                    {
                        changes.push((r.name.clone(), None));
                    }
                }
            }
            if let Some(new) = new {
                for r in &new.assignments {
                    changes.push((r.name.clone(), Some(r.clone())));
                }
                self.endpoints.insert(key.clone(), new);
            }
        }
        if changes.is_empty() {
            return;
        }
        let patched = ResourceMap::patch(&self.eds, changes);
        if patched.version != self.eds.version {
            self.eds = patched;
        }
    }
}

impl ConfigCache {
    /// An empty cache.
    pub fn new() -> Self {
        let mesh = Arc::new(MeshSnapshot::default());
        Self {
            config: Arc::new(ConfigIndex::new(&mesh)),
            mesh,
            scopes: HashMap::new(),
            locality_labels: None,
            memo: Memo::default(),
            visibility: HashMap::new(),
            static_clusters: HashMap::new(),
            classes: HashMap::new(),
            stale_routes: HashMap::new(),
            secrets: HashMap::new(),
            empty: ResourceMap::empty(),
        }
    }

    /// The mesh snapshot the cache was last updated to.
    pub fn mesh(&self) -> &Arc<MeshSnapshot> {
        &self.mesh
    }

    /// The resolved config of the current snapshot.
    pub fn config(&self) -> &Arc<ConfigIndex> {
        &self.config
    }

    /// Moves to a new mesh snapshot, rebuilding only what `changes` can have affected.
    pub fn update(&mut self, mesh: Arc<MeshSnapshot>, changes: &ChangeSet) {
        let previous = std::mem::replace(&mut self.mesh, mesh.clone());
        let config_changed = changes.full || !changes.config.is_empty();
        if config_changed {
            self.config = Arc::new(ConfigIndex::new(&mesh));
            self.locality_labels =
                locality::locality_sensitive(&mesh).then(|| locality::priority_label_keys(&mesh));
        }
        let structural = config_changed || !changes.services.is_empty();
        if changes.full {
            self.static_clusters.clear();
        }
        if structural || changes.namespaces {
            // Listeners and routes depend on services, config and namespaces. Not on other
            // pods: a proxy's own workload (labels, for source-conditioned rules) is part of
            // its class, and its inbound side is in its own layers.
            let classes = std::mem::take(&mut self.classes);
            if config_changed || changes.namespaces || changes.full {
                self.stale_routes.clear();
            } else {
                // Only services changed. A sidecar's route configuration of a port holds the
                // virtual hosts of the services with that HTTP port: the others stay valid.
                let touched: BTreeSet<u16> = changes
                    .services
                    .iter()
                    .flat_map(|k| [previous.services.get(k), mesh.services.get(k)])
                    .flatten()
                    .flat_map(|svc| svc.ports.iter().map(|p| p.port))
                    .collect();
                for stale in self.stale_routes.values_mut() {
                    stale.touched.extend(touched.iter().copied());
                }
                for (class, layers) in classes {
                    if class.kind == ProxyKind::Sidecar {
                        self.stale_routes.insert(
                            class,
                            StaleRoutes {
                                routes: layers.routes,
                                touched: touched.clone(),
                            },
                        );
                    }
                }
            }
        }
        if structural {
            // Which services each class sees may change: layers are re-keyed as proxies ask,
            // rebuilt from the memo (only changed services are translated again).
            self.visibility.clear();
            self.scopes.clear();
            self.memo.retain(&mesh);
        }
        if changes.secrets || structural {
            self.secrets.clear();
        }
        let config = self.config.clone();
        let keys: Vec<ServiceKey> = changes.endpoints.iter().cloned().collect();
        if !keys.is_empty() {
            for scope in self.scopes.values_mut() {
                // A scope that does not see a changed service is left as it is: its proxies
                // get no push.
                let mine: Vec<ServiceKey> = keys
                    .iter()
                    .filter(|k| scope.visible.sees(k))
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    scope.update_endpoints(&mesh, &config, &mut self.memo, Some(&mine));
                }
            }
        }
    }

    /// Forgets layers no proxy used since the last call.
    pub fn collect_garbage(&mut self) {
        self.stale_routes.clear();
        self.scopes
            .retain(|_, s| std::mem::replace(&mut s.used, false));
        self.classes
            .retain(|_, c| std::mem::replace(&mut c.used, false));
    }

    fn visible(&mut self, class: &ProxyClass, proxy: &Proxy) -> Arc<Visibility> {
        let key: VisibilityKey = (
            class.kind,
            class.namespace.clone(),
            class.sidecar.clone(),
            class.gateways.clone(),
        );
        let mesh = self.mesh.clone();
        let config = self.config.clone();
        self.visibility
            .entry(key)
            .or_insert_with(|| Arc::new(scope::visibility(&mesh, &config, proxy, &class.gateways)))
            .clone()
    }

    fn scope(&mut self, dr_scope: u64, visible: Arc<Visibility>, proxy: &Proxy) -> &mut Scope {
        let mesh = self.mesh.clone();
        let config = self.config.clone();
        let empty = self.empty.clone();
        let memo = &mut self.memo;
        let locality = self
            .locality_labels
            .as_ref()
            .map(|keys| LocalityKey::of(proxy, keys));
        let s = self
            .scopes
            .entry((dr_scope, visible.fingerprint, locality.clone()))
            .or_insert_with(|| {
                let mut s = Scope::new(
                    proxy.namespace.clone(),
                    proxy.labels.clone(),
                    visible,
                    locality,
                    &empty,
                );
                s.rebuild_clusters(&mesh, &config, memo);
                s.update_endpoints(&mesh, &config, memo, None);
                s
            });
        s.used = true;
        s
    }

    fn static_layer(&mut self, interception: InterceptionMode) -> Arc<ResourceMap> {
        let mesh = self.mesh.clone();
        self.static_clusters
            .entry(interception)
            .or_insert_with(|| {
                ResourceMap::new(
                    cluster::static_clusters(&mesh, interception)
                        .iter()
                        .map(|c| Resource::encode(c.name.as_str(), c)),
                )
            })
            .clone()
    }

    fn class_layers(
        &mut self,
        class: &ProxyClass,
        proxy: &Proxy,
        visible: &Visibility,
    ) -> (Arc<ResourceMap>, Arc<ResourceMap>, BTreeSet<String>) {
        if let Some(c) = self.classes.get_mut(class) {
            c.used = true;
            return (c.listeners.clone(), c.routes.clone(), c.secrets.clone());
        }
        let mesh = &self.mesh;
        let config = &self.config;
        let mesh_gw = strait_translate::mesh_gateways();
        let ctx = route_context(mesh, config, proxy, &mesh_gw, visible);
        let (listeners, routes, secrets) = match class.kind {
            ProxyKind::Sidecar => {
                let listeners = ResourceMap::new(
                    listener::outbound_listeners(&ctx, class)
                        .iter()
                        .map(|l| Resource::encode(l.name.as_str(), l)),
                );
                let build = |p: u16| {
                    let rc = route::outbound_route_config(
                        &strait_translate::http_route::RouteContext { port: p, ..ctx },
                        class,
                    );
                    Resource::encode(rc.name.as_str(), &rc)
                };
                let ports = listener::outbound_http_ports(&ctx);
                let routes = match self.stale_routes.remove(class) {
                    Some(stale) => {
                        // Rebuild the touched ports' configurations, keep the others; the
                        // patch remembers which changed, for incremental pushes.
                        let mut changes: Vec<(Arc<str>, Option<Arc<Resource>>)> = Vec::new();
                        let mut present = BTreeSet::new();
                        for p in ports {
                            let name = p.to_string();
                            let kept = stale
                                .routes
                                .get(&name)
                                .filter(|_| !stale.touched.contains(&p));
                            if kept.is_none() {
                                let r = build(p);
                                changes.push((r.name.clone(), Some(r)));
                            }
                            present.insert(name);
                        }
                        changes.extend(
                            stale
                                .routes
                                .iter()
                                .filter(|r| !present.contains(&*r.name))
                                .map(|r| (r.name.clone(), None)),
                        );
                        ResourceMap::patch(&stale.routes, changes)
                    }
                    None => ResourceMap::new(ports.into_iter().map(build)),
                };
                (listeners, routes, BTreeSet::new())
            }
            ProxyKind::Router => {
                let gw = gateway::gateway_config(mesh, config, proxy, visible);
                (
                    ResourceMap::new(
                        gw.listeners
                            .iter()
                            .map(|l| Resource::encode(l.name.as_str(), l)),
                    ),
                    ResourceMap::new(
                        gw.routes
                            .iter()
                            .map(|r| Resource::encode(r.name.as_str(), r)),
                    ),
                    gw.secrets,
                )
            }
        };
        self.classes.insert(
            class.clone(),
            ClassLayers {
                listeners: listeners.clone(),
                routes: routes.clone(),
                secrets: secrets.clone(),
                used: true,
            },
        );
        (listeners, routes, secrets)
    }

    fn secret_layer(&mut self, namespace: &Arc<str>, names: BTreeSet<String>) -> Arc<ResourceMap> {
        if names.is_empty() {
            return self.empty.clone();
        }
        let mesh = self.mesh.clone();
        let key = (namespace.clone(), names);
        self.secrets
            .entry(key)
            .or_insert_with_key(|(ns, names)| {
                let namespaces = [&**ns];
                ResourceMap::new(
                    names
                        .iter()
                        .filter_map(|n| sds::secret(&mesh, n, &namespaces))
                        .map(|s| Resource::encode(s.name.as_str(), &s)),
                )
            })
            .clone()
    }

    /// Builds the proxy's own (inbound) layers.
    pub fn own_layers(&self, proxy: &Proxy) -> OwnLayers {
        let ports = cluster::inbound_ports(&self.mesh, proxy);
        OwnLayers {
            clusters: ResourceMap::new(
                cluster::inbound_clusters(&self.mesh, proxy, &ports)
                    .iter()
                    .map(|c| Resource::encode(c.name.as_str(), c)),
            ),
            listeners: ResourceMap::new(
                listener::inbound_listeners(&self.mesh, proxy, &ports)
                    .iter()
                    .map(|l| Resource::encode(l.name.as_str(), l)),
            ),
        }
    }

    /// The snapshot of one proxy. `own` reuses inbound layers built earlier when the change
    /// cannot have affected them.
    pub fn proxy_snapshot(
        &mut self,
        proxy: &Proxy,
        own: Option<OwnLayers>,
    ) -> (ProxySnapshot, OwnLayers) {
        let class = ProxyClass::of(proxy, &self.mesh, &self.config);
        self.proxy_snapshot_for(proxy, &class, own)
    }

    /// The class of a proxy in the current snapshot.
    pub fn class_of(&self, proxy: &Proxy) -> ProxyClass {
        ProxyClass::of(proxy, &self.mesh, &self.config)
    }

    /// The snapshot of one proxy whose class is known.
    pub fn proxy_snapshot_for(
        &mut self,
        proxy: &Proxy,
        class: &ProxyClass,
        own: Option<OwnLayers>,
    ) -> (ProxySnapshot, OwnLayers) {
        let own = own.unwrap_or_else(|| self.own_layers(proxy));
        let (cds, eds, mut secret_names) = {
            let visible = self.visible(class, proxy);
            let s = self.scope(class.dr_scope, visible, proxy);
            (s.cds.clone(), s.eds.clone(), s.secrets.clone())
        };
        let visible = self.visible(class, proxy);
        let (listeners, routes, gw_secrets) = self.class_layers(class, proxy, &visible);
        secret_names.extend(gw_secrets);
        let static_clusters = if proxy.node.kind == ProxyKind::Sidecar {
            self.static_layer(proxy.node.interception)
        } else {
            self.empty.clone()
        };
        let secrets = self.secret_layer(&proxy.namespace, secret_names);
        let mut views: [TypeView; 5] = Default::default();
        views[XdsType::Cluster.index()] =
            TypeView::new(vec![cds, static_clusters, own.clusters.clone()]);
        views[XdsType::Endpoint.index()] = TypeView::new(vec![eds]);
        views[XdsType::Listener.index()] = TypeView::new(vec![listeners, own.listeners.clone()]);
        views[XdsType::Route.index()] = TypeView::new(vec![routes]);
        views[XdsType::Secret.index()] = TypeView::new(vec![secrets]);
        (
            ProxySnapshot {
                version: self.mesh.version,
                views,
            },
            own,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_model::testing::{mk_pod, mk_service, mk_slice};
    use strait_model::{IndexOptions, MeshIndex, ProxyNode};

    fn proxy(mesh: &MeshSnapshot) -> Proxy {
        let node = ProxyNode::parse(
            "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local",
            &serde_json::Map::new(),
            None,
            None,
        )
        .expect("node");
        Proxy::resolve(Arc::new(node), mesh)
    }

    fn names(v: &TypeView) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|r| r.name.to_string()).collect();
        n.sort();
        n
    }

    fn assert_matches_generate(cache: &mut ConfigCache, mesh: &MeshSnapshot, p: &Proxy) {
        let (snap, _) = cache.proxy_snapshot(p, None);
        let reference = strait_translate::generate(mesh, p);
        let check = |t: XdsType, want: Vec<(String, u64)>| {
            let view = snap.view(t);
            let mut want = want;
            want.sort();
            let mut got: Vec<(String, u64)> = view
                .iter()
                .map(|r| (r.name.to_string(), r.version))
                .collect();
            got.sort();
            assert_eq!(got, want, "{t:?}");
        };
        check(
            XdsType::Cluster,
            reference
                .clusters
                .iter()
                .map(|c| (c.name.clone(), Resource::encode(c.name.as_str(), c).version))
                .collect(),
        );
        check(
            XdsType::Endpoint,
            reference
                .endpoints
                .iter()
                .map(|c| {
                    (
                        c.cluster_name.clone(),
                        Resource::encode(c.cluster_name.as_str(), c).version,
                    )
                })
                .collect(),
        );
        check(
            XdsType::Listener,
            reference
                .listeners
                .iter()
                .map(|c| (c.name.clone(), Resource::encode(c.name.as_str(), c).version))
                .collect(),
        );
        check(
            XdsType::Route,
            reference
                .routes
                .iter()
                .map(|c| (c.name.clone(), Resource::encode(c.name.as_str(), c).version))
                .collect(),
        );
    }

    fn dr(yaml: &str) -> strait_api::Object {
        let v: serde_json::Value = serde_json::from_str(yaml).expect("json");
        strait_api::parse_object(v, "default")
            .expect("parses")
            .object
    }

    /// The cached path agrees with the reference translation, before and after changes.
    #[test]
    fn cache_matches_generate() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "shop", &[5432]));
        idx.apply(mk_pod(
            "web-0",
            "shop",
            "10.0.0.1",
            &[("app", "web"), ("version", "v1")],
            "n",
        ));
        idx.apply(mk_slice("web-1", "shop", "web", &["10.0.0.1"], &[8080]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        assert_matches_generate(&mut cache, &mesh, &proxy(&mesh));

        idx.apply(dr(r#"{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"web","namespace":"shop"},
            "spec":{"host":"web","trafficPolicy":{"loadBalancer":{"simple":"ROUND_ROBIN"}},"subsets":[{"name":"v1","labels":{"version":"v1"}}]}}"#));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        let p = proxy(&mesh);
        assert_matches_generate(&mut cache, &mesh, &p);
        let (snap, _) = cache.proxy_snapshot(&p, None);
        assert!(
            names(snap.view(XdsType::Cluster))
                .contains(&"outbound|8080|v1|web.shop.svc.cluster.local".to_string())
        );
        assert!(
            names(snap.view(XdsType::Endpoint))
                .contains(&"outbound|8080|v1|web.shop.svc.cluster.local".to_string())
        );
    }

    fn proxy_at(mesh: &MeshSnapshot, ip: &str, locality: &str) -> Proxy {
        let node = ProxyNode::parse(
            &format!("sidecar~{ip}~client.shop~shop.svc.cluster.local"),
            &serde_json::Map::new(),
            Some(Locality::parse(locality)),
            None,
        )
        .expect("node");
        Proxy::resolve(Arc::new(node), mesh)
    }

    /// With locality failover, proxies in different zones get different priorities, each
    /// matching the reference translation, before and after an endpoint change; services
    /// without locality rules stay shared.
    #[test]
    fn locality_variants_per_zone() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(strait_model::testing::mk_node("na", "r1", "za"));
        idx.apply(strait_model::testing::mk_node("nb", "r1", "zb"));
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "shop", &[5432]));
        idx.apply(mk_pod("web-0", "shop", "10.0.0.1", &[("app", "web")], "na"));
        idx.apply(mk_pod("web-1", "shop", "10.0.0.2", &[("app", "web")], "nb"));
        idx.apply(mk_slice(
            "web-1",
            "shop",
            "web",
            &["10.0.0.1", "10.0.0.2"],
            &[8080],
        ));
        idx.apply(mk_slice("db-1", "shop", "db", &["10.0.1.1"], &[5432]));
        idx.apply(dr(r#"{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"web","namespace":"shop"},
            "spec":{"host":"web","trafficPolicy":{"outlierDetection":{"consecutive5xxErrors":2}}}}"#));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let a = proxy_at(&mesh, "10.9.0.1", "r1/za");
        let b = proxy_at(&mesh, "10.9.0.2", "r1/zb");
        assert_matches_generate(&mut cache, &mesh, &a);
        assert_matches_generate(&mut cache, &mesh, &b);
        let web = "outbound|8080||web.shop.svc.cluster.local";
        let db = "outbound|5432||db.shop.svc.cluster.local";
        let version = |cache: &mut ConfigCache, p: &Proxy, name: &str| {
            let (s, _) = cache.proxy_snapshot(p, None);
            s.view(XdsType::Endpoint)
                .iter()
                .find(|r| &*r.name == name)
                .map(|r| r.version)
        };
        assert_ne!(version(&mut cache, &a, web), version(&mut cache, &b, web));
        assert_eq!(version(&mut cache, &a, db), version(&mut cache, &b, db));

        idx.apply(mk_slice("web-1", "shop", "web", &["10.0.0.2"], &[8080]));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        let a = proxy_at(&mesh, "10.9.0.1", "r1/za");
        let b = proxy_at(&mesh, "10.9.0.2", "r1/zb");
        assert_matches_generate(&mut cache, &mesh, &a);
        assert_matches_generate(&mut cache, &mesh, &b);
    }

    #[test]
    fn service_change_rebuilds_only_its_ports_routes() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("api", "shop", &[8080, 9090]));
        idx.apply(mk_service("db", "shop", &[5432]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let route = |cache: &mut ConfigCache, mesh: &MeshSnapshot, port: &str| {
            let (s, _) = cache.proxy_snapshot(&proxy(mesh), None);
            s.view(XdsType::Route).get(port).cloned()
        };
        let before: Vec<_> = ["8080", "9090", "5432"]
            .iter()
            .map(|p| route(&mut cache, &mesh, p).expect("route"))
            .collect();
        cache.collect_garbage();

        // A new service on 9090: only 9090's virtual hosts are translated again.
        idx.apply(mk_service("new", "shop", &[9090]));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        assert_matches_generate(&mut cache, &mesh, &proxy(&mesh));
        let after: Vec<_> = ["8080", "9090", "5432"]
            .iter()
            .map(|p| route(&mut cache, &mesh, p).expect("route"))
            .collect();
        assert!(Arc::ptr_eq(&before[0], &after[0]), "8080 kept");
        assert!(!Arc::ptr_eq(&before[1], &after[1]), "9090 rebuilt");
        assert!(Arc::ptr_eq(&before[2], &after[2]), "5432 kept");
        cache.collect_garbage();

        // A service that goes takes its ports' routes with it: 9090 only had api and new.
        idx.delete(&mk_service("new", "shop", &[]).reference());
        idx.delete(&mk_service("api", "shop", &[]).reference());
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        assert_matches_generate(&mut cache, &mesh, &proxy(&mesh));
        assert!(route(&mut cache, &mesh, "9090").is_none());
        assert!(Arc::ptr_eq(
            &before[2],
            &route(&mut cache, &mesh, "5432").expect("route")
        ));
        cache.collect_garbage();

        // Config changes rebuild everything (and still agree with the translation).
        idx.apply(dr(r#"{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"web","namespace":"shop"},
            "spec":{"host":"web","subsets":[{"name":"v1","labels":{"version":"v1"}}]}}"#));
        idx.apply(mk_service("late", "shop", &[5432]));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        assert_matches_generate(&mut cache, &mesh, &proxy(&mesh));
    }

    #[test]
    fn endpoint_change_patches_only_eds() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "shop", &[5432]));
        idx.apply(mk_slice("web-1", "shop", "web", &["10.0.0.1"], &[8080]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let p = proxy(&mesh);
        let (s1, own) = cache.proxy_snapshot(&p, None);

        idx.apply(mk_slice(
            "web-1",
            "shop",
            "web",
            &["10.0.0.1", "10.0.0.2"],
            &[8080],
        ));
        let (mesh, changes) = idx.snapshot();
        assert!(changes.is_endpoints_only());
        cache.update(mesh.clone(), &changes);
        let p = proxy(&mesh);
        let (s2, _) = cache.proxy_snapshot(&p, Some(own));
        for t in [XdsType::Cluster, XdsType::Listener, XdsType::Route] {
            assert!(s2.view(t).same_as(s1.view(t)), "{t:?} untouched");
        }
        let d = s2.view(XdsType::Endpoint).diff(s1.view(XdsType::Endpoint));
        assert_eq!(
            d.changed,
            vec![Arc::from("outbound|8080||web.shop.svc.cluster.local")]
        );
        assert!(d.removed.is_empty());
        // The diff came from the patch record, not a full comparison.
        assert!(!s2.view(XdsType::Endpoint).layers[0].history.is_empty());
    }

    #[test]
    fn deleting_a_service_removes_its_resources() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "shop", &[5432]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let (s1, _) = cache.proxy_snapshot(&proxy(&mesh), None);
        idx.delete(&strait_api::ObjectRef::new(
            strait_api::Kind::Service,
            "shop",
            "db",
        ));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        let (s2, _) = cache.proxy_snapshot(&proxy(&mesh), None);
        let d = s2.view(XdsType::Endpoint).diff(s1.view(XdsType::Endpoint));
        assert_eq!(
            d.removed,
            vec![Arc::from("outbound|5432||db.shop.svc.cluster.local")]
        );
        let d = s2.view(XdsType::Cluster).diff(s1.view(XdsType::Cluster));
        assert_eq!(
            d.removed,
            vec![Arc::from("outbound|5432||db.shop.svc.cluster.local")]
        );
    }

    #[test]
    fn namespaces_without_their_own_rules_share_clusters() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let mk = |ns: &str| {
            let node = ProxyNode::parse(
                &format!("sidecar~10.9.0.1~c.{ns}~{ns}.svc.cluster.local"),
                &serde_json::Map::new(),
                None,
                None,
            )
            .expect("node");
            Proxy::resolve(Arc::new(node), &mesh)
        };
        let (a, _) = cache.proxy_snapshot(&mk("one"), None);
        let (b, _) = cache.proxy_snapshot(&mk("two"), None);
        assert!(Arc::ptr_eq(
            &a.view(XdsType::Cluster).layers[0],
            &b.view(XdsType::Cluster).layers[0]
        ));
        assert!(Arc::ptr_eq(
            &a.view(XdsType::Endpoint).layers[0],
            &b.view(XdsType::Endpoint).layers[0]
        ));
    }

    /// An endpoint change in a service a proxy cannot see leaves its snapshot as it was.
    #[test]
    fn invisible_changes_do_not_touch_a_scoped_proxy() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "backend", &[5432]));
        idx.apply(mk_slice("db-1", "backend", "db", &["10.0.0.9"], &[5432]));
        idx.apply(dr(r#"{"apiVersion":"networking.istio.io/v1","kind":"Sidecar","metadata":{"name":"default","namespace":"shop"},
            "spec":{"egress":[{"hosts":["./*"]}]}}"#));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let p = proxy(&mesh);
        let (s1, own) = cache.proxy_snapshot(&p, None);
        assert_eq!(
            names(s1.view(XdsType::Endpoint)),
            ["outbound|8080||web.shop.svc.cluster.local"]
        );

        idx.apply(mk_slice(
            "db-1",
            "backend",
            "db",
            &["10.0.0.9", "10.0.0.10"],
            &[5432],
        ));
        let (mesh, changes) = idx.snapshot();
        cache.update(mesh.clone(), &changes);
        let (s2, _) = cache.proxy_snapshot(&proxy(&mesh), Some(own));
        for t in XdsType::ALL {
            assert!(s2.view(t).same_as(s1.view(t)), "{t:?} untouched");
        }
    }
}
