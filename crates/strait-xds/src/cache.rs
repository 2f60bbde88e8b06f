//! Builds proxies' snapshots from mesh snapshots, sharing everything that can be shared.
//!
//! * Outbound clusters and load assignments are the same for every proxy: built once per
//!   service (and rebuilt only when that service, its endpoints or the mesh config change),
//!   encoded once, and assembled into shared maps. An endpoint change patches the EDS map, so
//!   proxies can find what changed in O(changes).
//! * Outbound listeners and routes depend on the proxy's class (kind, namespace, traffic
//!   capture): built once per class per config change.
//! * Only the inbound side (the proxy's own workload) is built per proxy.

use std::collections::HashMap;
use std::sync::Arc;

use strait_model::{
    ChangeSet, EndpointSet, InterceptionMode, MeshSnapshot, Proxy, ProxyKind, Service, ServiceKey,
    ServiceKind,
};
use strait_translate::{ProxyClass, cluster, endpoint, listener, route};

use crate::resource::{ProxySnapshot, Resource, ResourceMap, TypeView, XdsType};

struct ServiceMemo {
    service: Arc<Service>,
    mesh: Arc<strait_api::MeshConfig>,
    clusters: Vec<Arc<Resource>>,
}

struct EndpointMemo {
    service: Arc<Service>,
    endpoints: Option<Arc<EndpointSet>>,
    assignments: Vec<Arc<Resource>>,
}

struct ClassLayers {
    listeners: Arc<ResourceMap>,
    routes: Arc<ResourceMap>,
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
    services: HashMap<ServiceKey, ServiceMemo>,
    endpoints: HashMap<ServiceKey, EndpointMemo>,
    cds: Arc<ResourceMap>,
    eds: Arc<ResourceMap>,
    static_clusters: HashMap<InterceptionMode, Arc<ResourceMap>>,
    classes: HashMap<ProxyClass, ClassLayers>,
    empty: Arc<ResourceMap>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            mesh: Arc::new(MeshSnapshot::default()),
            services: HashMap::new(),
            endpoints: HashMap::new(),
            cds: ResourceMap::empty(),
            eds: ResourceMap::empty(),
            static_clusters: HashMap::new(),
            classes: HashMap::new(),
            empty: ResourceMap::empty(),
        }
    }

    /// The mesh snapshot the cache was last updated to.
    pub fn mesh(&self) -> &Arc<MeshSnapshot> {
        &self.mesh
    }

    /// Moves to a new mesh snapshot, rebuilding only what `changes` can have affected.
    pub fn update(&mut self, mesh: Arc<MeshSnapshot>, changes: &ChangeSet) {
        self.mesh = mesh;
        let structural = changes.full || !changes.services.is_empty() || !changes.config.is_empty();
        if structural {
            self.rebuild_clusters();
            self.classes.clear();
        }
        if changes.full {
            self.static_clusters.clear();
            self.rebuild_endpoints_all();
        } else {
            let keys: Vec<ServiceKey> = changes
                .endpoints
                .iter()
                .chain(changes.services.iter())
                .cloned()
                .collect();
            if !keys.is_empty() {
                self.patch_endpoints(&keys);
            }
        }
    }

    fn rebuild_clusters(&mut self) {
        let mesh = self.mesh.clone();
        let mut memo = std::mem::take(&mut self.services);
        let mut next = HashMap::with_capacity(mesh.services.len());
        let mut all = Vec::new();
        for (key, svc) in mesh.services.iter() {
            let entry = match memo.remove(key) {
                Some(m) if Arc::ptr_eq(&m.service, svc) && Arc::ptr_eq(&m.mesh, &mesh.mesh) => m,
                _ => ServiceMemo {
                    service: svc.clone(),
                    mesh: mesh.mesh.clone(),
                    clusters: cluster::outbound_clusters(&mesh, svc)
                        .iter()
                        .map(|c| Resource::encode(c.name.as_str(), c))
                        .collect(),
                },
            };
            all.extend(entry.clusters.iter().cloned());
            next.insert(key.clone(), entry);
        }
        self.services = next;
        let map = ResourceMap::new(all);
        if map.version != self.cds.version {
            self.cds = map;
        }
    }

    fn assignments(mesh: &MeshSnapshot, svc: &Arc<Service>) -> EndpointMemo {
        let eps = mesh.endpoints_of(&svc.key).cloned();
        let assignments = if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            Vec::new()
        } else {
            svc.ports
                .iter()
                .filter(|p| p.protocol.is_proxied())
                .map(|p| {
                    let cla = endpoint::load_assignment(svc, p, eps.as_deref());
                    Resource::encode(cla.cluster_name.as_str(), &cla)
                })
                .collect()
        };
        EndpointMemo {
            service: svc.clone(),
            endpoints: eps,
            assignments,
        }
    }

    fn rebuild_endpoints_all(&mut self) {
        let mesh = self.mesh.clone();
        self.endpoints.clear();
        let mut all = Vec::new();
        for (key, svc) in mesh.services.iter() {
            let m = Self::assignments(&mesh, svc);
            all.extend(m.assignments.iter().cloned());
            self.endpoints.insert(key.clone(), m);
        }
        self.eds = ResourceMap::new(all);
    }

    fn patch_endpoints(&mut self, keys: &[ServiceKey]) {
        let mesh = self.mesh.clone();
        let mut changes: Vec<(Arc<str>, Option<Arc<Resource>>)> = Vec::new();
        for key in keys {
            let old = self.endpoints.remove(key);
            let new = mesh.services.get(key).map(|svc| match old.as_ref() {
                Some(m)
                    if Arc::ptr_eq(&m.service, svc)
                        && match (&m.endpoints, mesh.endpoints_of(key)) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        } =>
                {
                    EndpointMemo {
                        service: m.service.clone(),
                        endpoints: m.endpoints.clone(),
                        assignments: m.assignments.clone(),
                    }
                }
                _ => Self::assignments(&mesh, svc),
            });
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
        let patched = ResourceMap::patch(&self.eds, changes);
        if patched.version != self.eds.version {
            self.eds = patched;
        }
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

    fn class_layers(&mut self, class: &ProxyClass) -> (Arc<ResourceMap>, Arc<ResourceMap>) {
        if let Some(c) = self.classes.get(class) {
            return (c.listeners.clone(), c.routes.clone());
        }
        let mesh = &self.mesh;
        let listeners = ResourceMap::new(
            listener::outbound_listeners(mesh, class)
                .iter()
                .map(|l| Resource::encode(l.name.as_str(), l)),
        );
        let routes = if class.kind == ProxyKind::Sidecar {
            ResourceMap::new(listener::outbound_http_ports(mesh).into_iter().map(|p| {
                let rc = route::outbound_route_config(mesh, p, class);
                Resource::encode(rc.name.as_str(), &rc)
            }))
        } else {
            self.empty.clone()
        };
        self.classes.insert(
            class.clone(),
            ClassLayers {
                listeners: listeners.clone(),
                routes: routes.clone(),
            },
        );
        (listeners, routes)
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
                listener::inbound_listeners(proxy, &ports)
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
        let own = own.unwrap_or_else(|| self.own_layers(proxy));
        let class = ProxyClass::of(proxy);
        let (listeners, routes) = self.class_layers(&class);
        let static_clusters = if proxy.node.kind == ProxyKind::Sidecar {
            self.static_layer(proxy.node.interception)
        } else {
            self.empty.clone()
        };
        let mut views: [TypeView; 5] = Default::default();
        views[XdsType::Cluster.index()] = TypeView::new(vec![
            self.cds.clone(),
            static_clusters,
            own.clusters.clone(),
        ]);
        views[XdsType::Endpoint.index()] = TypeView::new(vec![self.eds.clone()]);
        views[XdsType::Listener.index()] = TypeView::new(vec![listeners, own.listeners.clone()]);
        views[XdsType::Route.index()] = TypeView::new(vec![routes]);
        views[XdsType::Secret.index()] = TypeView::new(vec![self.empty.clone()]);
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
        v.iter().map(|r| r.name.to_string()).collect()
    }

    /// The cached path agrees with the reference translation.
    #[test]
    fn cache_matches_generate() {
        let mut idx = MeshIndex::new(IndexOptions::default());
        idx.apply(mk_service("web", "shop", &[8080]));
        idx.apply(mk_service("db", "shop", &[5432]));
        idx.apply(mk_pod("web-0", "shop", "10.0.0.1", &[("app", "web")], "n"));
        idx.apply(mk_slice("web-1", "shop", "web", &["10.0.0.1"], &[8080]));
        let (mesh, changes) = idx.snapshot();
        let mut cache = ConfigCache::new();
        cache.update(mesh.clone(), &changes);
        let p = proxy(&mesh);
        let (snap, _) = cache.proxy_snapshot(&p, None);
        let reference = strait_translate::generate(&mesh, &p);
        let mut want: Vec<String> = reference.clusters.iter().map(|c| c.name.clone()).collect();
        let mut got = names(snap.view(XdsType::Cluster));
        want.sort();
        got.sort();
        assert_eq!(got, want);
        for c in &reference.clusters {
            let r = snap.view(XdsType::Cluster).get(&c.name).expect("present");
            assert_eq!(
                r.version,
                Resource::encode(c.name.as_str(), c).version,
                "{}",
                c.name
            );
        }
        let mut want: Vec<String> = reference.listeners.iter().map(|l| l.name.clone()).collect();
        let mut got = names(snap.view(XdsType::Listener));
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(
            snap.view(XdsType::Endpoint).len(),
            reference.endpoints.len()
        );
        assert_eq!(snap.view(XdsType::Route).len(), reference.routes.len());
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
        assert!(s2.view(XdsType::Endpoint).layers[0].base.is_some());
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
}
