//! An immutable, consistent view of the mesh that translation reads.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::MeshConfig;

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
