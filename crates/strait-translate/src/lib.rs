//! The translation stage of the data flow: pure functions from a [`MeshSnapshot`] and a
//! [`Proxy`] to Envoy resources (clusters, load assignments, listeners, route
//! configurations). No I/O, no clocks, no globals: the same inputs give the same output, which
//! is what the golden tests under `testdata/` check.
//!
//! The functions are granular on purpose: the push controller builds what is shared by many
//! proxies (a service's clusters, a port's route configuration for one class of proxy) once,
//! and only the per-proxy parts (inbound listeners) per proxy. [`generate`] assembles
//! everything for one proxy and is the reference the cached path must agree with.

pub mod bootstrap;
pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod names;
pub mod route;
pub mod util;

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use strait_model::{InterceptionMode, MeshSnapshot, Proxy, ProxyKind, ServiceKind};

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of load assignments (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of TLS secrets (SDS).
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// What decides a proxy's outbound configuration. Proxies of one class receive the same
/// outbound listeners and routes, so those are built once per class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyClass {
    /// Sidecar or gateway.
    pub kind: ProxyKind,
    /// The proxy's namespace (short host names resolve in it).
    pub namespace: Arc<str>,
    /// How traffic reaches it.
    pub interception: InterceptionMode,
    /// Without capture: where outbound listeners bind.
    pub outbound_bind: Option<IpAddr>,
}

impl ProxyClass {
    /// The class of a resolved proxy.
    pub fn of(proxy: &Proxy) -> ProxyClass {
        ProxyClass {
            kind: proxy.node.kind,
            namespace: proxy.namespace.clone(),
            interception: proxy.node.interception,
            outbound_bind: proxy.node.outbound_bind,
        }
    }
}

/// Everything one proxy receives, by type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
}

/// Every EDS load assignment the snapshot defines (one per proxied port of every service
/// that is not an ExternalName), in cluster-name order.
pub fn all_load_assignments(snap: &MeshSnapshot) -> Vec<ClusterLoadAssignment> {
    let mut out: Vec<ClusterLoadAssignment> = Vec::new();
    for svc in snap.services.values() {
        if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            continue;
        }
        let eps = snap.endpoints_of(&svc.key).map(|e| &**e);
        for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
            out.push(endpoint::load_assignment(svc, p, eps));
        }
    }
    out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

/// Builds the complete configuration of one proxy. This is the uncached reference path.
pub fn generate(snap: &MeshSnapshot, proxy: &Proxy) -> ProxyResources {
    let class = ProxyClass::of(proxy);
    let inbound_ports = cluster::inbound_ports(snap, proxy);

    let mut clusters: Vec<Cluster> = snap
        .services
        .values()
        .flat_map(|s| cluster::outbound_clusters(snap, s))
        .collect();
    clusters.extend(cluster::static_clusters(snap, proxy.node.interception));
    clusters.extend(cluster::inbound_clusters(snap, proxy, &inbound_ports));
    clusters.sort_by(|a, b| a.name.cmp(&b.name));

    let mut listeners = listener::outbound_listeners(snap, &class);
    listeners.extend(listener::inbound_listeners(proxy, &inbound_ports));
    listeners.sort_by(|a, b| a.name.cmp(&b.name));

    let routes = if proxy.node.kind == ProxyKind::Sidecar {
        listener::outbound_http_ports(snap)
            .into_iter()
            .map(|p| route::outbound_route_config(snap, p, &class))
            .collect()
    } else {
        Vec::new()
    };

    ProxyResources {
        clusters,
        endpoints: all_load_assignments(snap),
        listeners,
        routes,
    }
}
