//! An immutable, consistent view of the mesh that translation reads.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::MeshConfig;
use strait_api::labels::{ISTIO_REV, ISTIO_TAG, STRAIT_REV, TAG_SERVICE_PREFIX, tag_service_name};

use crate::config::ConfigStore;
use crate::endpoints::EndpointSet;
use crate::secret::Secret;
use crate::service::{Service, ServiceKey};
/// A namespace and a name.
pub type NsName = (Arc<str>, Arc<str>);

/// A node: its cluster and its name.
pub type NodeKey = (crate::event::ClusterId, Arc<str>);

use crate::workload::{Labels, Locality, Namespace, Node, Workload, selector_matches};

/// One version of the whole mesh. Cheap to clone; never changes once built.
#[derive(Debug, Clone, Default)]
pub struct MeshSnapshot {
    /// Monotonic version, one per published snapshot.
    pub version: u64,
    /// Cluster DNS suffix (`cluster.local`).
    pub domain: Arc<str>,
    /// Mesh-wide settings.
    pub mesh: Arc<MeshConfig>,
    /// Services by namespace/name (sorted, so output built from it is deterministic).
    pub services: Arc<BTreeMap<ServiceKey, Arc<Service>>>,
    /// Services by fully qualified hostname.
    pub hosts: Arc<HashMap<Arc<str>, ServiceKey>>,
    /// Endpoints per Service.
    pub endpoints: Arc<HashMap<ServiceKey, Arc<EndpointSet>>>,
    /// Pods by IP.
    pub workloads: Arc<HashMap<IpAddr, Arc<Workload>>>,
    /// Nodes by cluster and name.
    pub nodes: Arc<HashMap<NodeKey, Arc<Node>>>,
    /// Namespaces by name.
    pub namespaces: Arc<BTreeMap<Arc<str>, Arc<Namespace>>>,
    /// Secrets by namespace and name.
    pub secrets: Arc<BTreeMap<NsName, Arc<Secret>>>,
    /// Istio networking objects.
    pub config: ConfigStore,
}

impl MeshSnapshot {
    /// The Service with this fully qualified hostname.
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        self.hosts.get(host).and_then(|k| self.services.get(k))
    }

    /// The endpoints of a Service (empty when it has none).
    pub fn endpoints_of(&self, key: &ServiceKey) -> Option<&Arc<EndpointSet>> {
        self.endpoints.get(key)
    }

    /// Services of `namespace` whose selector matches `labels`: the services a workload
    /// implements, in name order.
    pub fn services_selecting<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a Labels,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services_in(namespace).filter(move |s| {
            s.selector
                .as_ref()
                .is_some_and(|sel| selector_matches(sel, labels))
        })
    }

    /// Services of one namespace, in name order.
    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        let start = ServiceKey::new(namespace, "");
        self.services
            .range(start..)
            .take_while(move |(k, _)| &*k.namespace == namespace)
            .map(|(_, s)| s)
    }

    /// The pod with this IP.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    /// The locality of a workload: its `istio-locality` label, else its node's labels.
    pub fn locality_of(&self, w: &Workload) -> Option<Arc<Locality>> {
        if let Some(l) = &w.locality_override {
            return Some(l.clone());
        }
        let node = self.nodes.get(&(w.cluster.clone(), w.node_name.clone()?))?;
        (!node.locality.is_empty()).then(|| node.locality.clone())
    }

    /// A Secret by namespace and name.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Arc<Secret>> {
        self.secrets.get(&(Arc::from(namespace), Arc::from(name)))
    }
}

/// Whether the revision a tag points at can take the proxies connected through the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagReadiness {
    /// The tag Service has a ready endpoint on a control-plane pod of that revision.
    Ready,
    /// It has none yet.
    NotReady,
    /// Its endpoints are managed by hand (no selector) and there are none to judge by.
    Unknown,
}

impl MeshSnapshot {
    /// Revision tags (tag → revision), as the tag Services `strait-tag-<tag>` in the system
    /// namespace point them: the revision their selector picks control-plane pods of
    /// (`strait.io/rev`), else their `istio.io/rev` label. A tag Service is what proxies
    /// injected through the tag connect to, so it says where they reconnect.
    pub fn tags(&self, system_namespace: &str) -> BTreeMap<String, String> {
        self.services_in(system_namespace)
            .filter_map(|s| {
                let tag = s.key.name.strip_prefix(TAG_SERVICE_PREFIX)?;
                if s.labels.get(ISTIO_TAG).is_some_and(|t| t != tag) {
                    return None;
                }
                let rev = s
                    .selector
                    .as_ref()
                    .and_then(|sel| sel.get(STRAIT_REV))
                    .or_else(|| s.labels.get(ISTIO_REV))?;
                Some((tag.to_string(), rev.clone()))
            })
            .collect()
    }

    /// Whether the tag Service of `tag` can deliver proxies to `revision`: one of its endpoints
    /// is ready and belongs to a pod of that revision.
    pub fn tag_readiness(&self, system_namespace: &str, tag: &str, revision: &str) -> TagReadiness {
        let key = ServiceKey::new(system_namespace, &tag_service_name(tag));
        let Some(service) = self.services.get(&key) else {
            return TagReadiness::NotReady;
        };
        let endpoints = self.endpoints.get(&key).filter(|e| !e.is_empty());
        let Some(endpoints) = endpoints else {
            return if service.selector.is_none() {
                TagReadiness::Unknown
            } else {
                TagReadiness::NotReady
            };
        };
        let ready = endpoints.groups.iter().flat_map(|g| &g.endpoints).any(|e| {
            e.health == crate::endpoints::Health::Healthy
                && e.labels.get(STRAIT_REV).map(String::as_str) == Some(revision)
        });
        if ready {
            TagReadiness::Ready
        } else {
            TagReadiness::NotReady
        }
    }
}

#[cfg(test)]
mod tag_tests {
    use super::*;
    use crate::endpoints::{Endpoint, EndpointGroup, Health};
    use crate::service::ServiceKind;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(ns: &str, name: &str, sel: Option<Labels>, l: Labels) -> Arc<Service> {
        Arc::new(Service {
            key: ServiceKey::new(ns, name),
            hostname: Arc::from(format!("{name}.{ns}.svc.cluster.local")),
            kind: ServiceKind::ClusterIp,
            cluster_ip: None,
            ports: Vec::new(),
            selector: sel,
            labels: l,
            export_to: Vec::new(),
        })
    }

    fn endpoint(ip: &str, health: Health, rev: &str) -> Endpoint {
        Endpoint {
            address: ip.parse().expect("ip"),
            health,
            labels: Arc::new(labels(&[("app", "strait"), (STRAIT_REV, rev)])),
            locality: Arc::default(),
            pod: None,
            cluster: Arc::from(""),
            weight: 1,
        }
    }

    fn mesh(services: Vec<Arc<Service>>, eps: Vec<(ServiceKey, Vec<Endpoint>)>) -> MeshSnapshot {
        MeshSnapshot {
            services: Arc::new(services.into_iter().map(|s| (s.key.clone(), s)).collect()),
            endpoints: Arc::new(
                eps.into_iter()
                    .map(|(k, endpoints)| {
                        let set = EndpointSet {
                            groups: vec![EndpointGroup {
                                ports: Arc::from(Vec::new()),
                                endpoints,
                            }],
                        };
                        (k, Arc::new(set))
                    })
                    .collect(),
            ),
            ..MeshSnapshot::default()
        }
    }

    #[test]
    fn tags_come_from_tag_services_in_the_system_namespace() {
        let m = mesh(
            vec![
                service(
                    "istio-system",
                    "strait-tag-prod",
                    Some(labels(&[("app", "strait"), (STRAIT_REV, "canary")])),
                    labels(&[(ISTIO_TAG, "prod"), (ISTIO_REV, "stable")]),
                ),
                // Hand-made, no selector: its label says.
                service(
                    "istio-system",
                    "strait-tag-default",
                    None,
                    labels(&[(ISTIO_REV, "stable")]),
                ),
                // Not a tag Service: the label names another tag.
                service(
                    "istio-system",
                    "strait-tag-odd",
                    None,
                    labels(&[(ISTIO_TAG, "other"), (ISTIO_REV, "x")]),
                ),
                // Another namespace.
                service("shop", "strait-tag-x", None, labels(&[(ISTIO_REV, "y")])),
                service("istio-system", "strait-stable", None, Labels::new()),
            ],
            Vec::new(),
        );
        let tags = m.tags("istio-system");
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            vec![
                ("default".to_string(), "stable".to_string()),
                ("prod".to_string(), "canary".to_string()),
            ]
        );
    }

    #[test]
    fn a_tag_is_ready_when_an_endpoint_of_the_new_revision_is() {
        let key = ServiceKey::new("istio-system", "strait-tag-prod");
        let svc = || {
            service(
                "istio-system",
                "strait-tag-prod",
                Some(labels(&[("app", "strait"), (STRAIT_REV, "canary")])),
                Labels::new(),
            )
        };
        let not_yet = mesh(
            vec![svc()],
            vec![(
                key.clone(),
                vec![
                    endpoint("10.0.0.1", Health::Healthy, "stable"),
                    endpoint("10.0.0.2", Health::Unhealthy, "canary"),
                ],
            )],
        );
        let r = not_yet.tag_readiness("istio-system", "prod", "canary");
        assert_eq!(r, TagReadiness::NotReady);
        let ready = mesh(
            vec![svc()],
            vec![(key, vec![endpoint("10.0.0.2", Health::Healthy, "canary")])],
        );
        let r = ready.tag_readiness("istio-system", "prod", "canary");
        assert_eq!(r, TagReadiness::Ready);
        let r = mesh(vec![svc()], Vec::new()).tag_readiness("istio-system", "prod", "canary");
        assert_eq!(r, TagReadiness::NotReady);
        let r = mesh(Vec::new(), Vec::new()).tag_readiness("istio-system", "prod", "canary");
        assert_eq!(r, TagReadiness::NotReady);
        let manual = service("istio-system", "strait-tag-prod", None, Labels::new());
        let r = mesh(vec![manual], Vec::new()).tag_readiness("istio-system", "prod", "canary");
        assert_eq!(r, TagReadiness::Unknown);
    }
}
