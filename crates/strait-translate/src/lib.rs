//! The translation stage of the data flow: pure functions from a [`MeshSnapshot`] and a
//! [`Proxy`] to Envoy resources (clusters, load assignments, listeners, route
//! configurations). No I/O, no clocks, no globals: the same inputs give the same output, which
//! is what the golden tests under `testdata/` check.
//!
//! The functions are granular on purpose: the push controller builds what is shared by many
//! proxies (a service's clusters, a port's route configuration for one class of proxy) once,
//! and only the per-proxy parts (inbound listeners) per proxy. [`generate`] assembles
//! everything for one proxy and is the reference the cached path must agree with.

pub mod accesslog;
pub mod analysis;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod endpoint;
pub mod gateway;
pub mod http_route;
pub mod listener;
pub mod locality;
pub mod names;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod scope;
pub mod sds;
pub mod util;

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use strait_model::{InterceptionMode, MeshSnapshot, Proxy, ProxyKind};

pub use config::{ConfigIndex, EffectiveDr};
use http_route::RouteContext;

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

/// What decides a proxy's listeners and routes. Proxies of one class receive the same
/// outbound listeners and routes, so those are built once per class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyClass {
    /// Sidecar or gateway.
    pub kind: ProxyKind,
    /// The proxy's namespace (short host names resolve in it; config visibility).
    pub namespace: Arc<str>,
    /// How traffic reaches it.
    pub interception: InterceptionMode,
    /// Without capture: where outbound listeners bind.
    pub outbound_bind: Option<IpAddr>,
    /// Which DestinationRules it resolves (see [`ConfigIndex::dr_scope`]).
    pub dr_scope: u64,
    /// Which source-conditioned VirtualService rules apply to it.
    pub source_scope: u64,
    /// Gateways only: the Gateways that select it.
    pub gateways: Vec<strait_model::ConfigKey>,
    /// Sidecars only: the Sidecar resource in force.
    pub sidecar: Option<strait_model::ConfigKey>,
}

impl ProxyClass {
    /// The class of a resolved proxy.
    pub fn of(proxy: &Proxy, snap: &MeshSnapshot, config: &ConfigIndex) -> ProxyClass {
        let gateways = if proxy.node.kind == ProxyKind::Router {
            config
                .gateways_for(
                    &proxy.labels,
                    &proxy.namespace,
                    snap.mesh.scope_gateway_to_namespace,
                )
                .into_iter()
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            Vec::new()
        };
        let sidecar = match proxy.node.kind {
            ProxyKind::Sidecar => {
                scope::sidecar_for(snap, &proxy.namespace, &proxy.labels).map(|(k, _)| k.clone())
            }
            ProxyKind::Router => None,
        };
        ProxyClass {
            sidecar,
            kind: proxy.node.kind,
            namespace: proxy.namespace.clone(),
            interception: proxy.node.interception,
            outbound_bind: proxy.node.outbound_bind,
            dr_scope: config.dr_scope(&proxy.namespace, &proxy.labels),
            source_scope: config.source_scope(&proxy.namespace, &proxy.labels),
            gateways,
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
    /// SDS.
    pub secrets: Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
}

/// The DestinationRule that applies to a service for this proxy.
pub fn service_dr(
    config: &ConfigIndex,
    svc: &strait_model::Service,
    proxy: &Proxy,
) -> Option<EffectiveDr> {
    config.destination_rule(
        &svc.hostname,
        Some(&svc.key.namespace),
        &proxy.namespace,
        &proxy.labels,
    )
}

/// A route context for a proxy (the port is set per route configuration).
pub fn route_context<'a>(
    snap: &'a MeshSnapshot,
    config: &'a ConfigIndex,
    proxy: &'a Proxy,
    gateways: &'a [String],
    visible: &'a scope::Visibility,
) -> RouteContext<'a> {
    RouteContext {
        snap,
        config,
        proxy_ns: &proxy.namespace,
        labels: &proxy.labels,
        gateways,
        port: 0,
        tls: false,
        visible,
    }
}

/// The names sidecars use as their gateway (`mesh`).
pub fn mesh_gateways() -> Vec<String> {
    vec![config::MESH.to_string()]
}

/// Builds the complete configuration of one proxy. This is the uncached reference path.
pub fn generate(snap: &MeshSnapshot, proxy: &Proxy) -> ProxyResources {
    let config = ConfigIndex::new(snap);
    let class = ProxyClass::of(proxy, snap, &config);
    let inbound_ports = cluster::inbound_ports(snap, proxy);
    let mesh = mesh_gateways();
    let visible = scope::visibility(snap, &config, proxy, &class.gateways);
    let ctx = route_context(snap, &config, proxy, &mesh, &visible);

    let mut secret_names = std::collections::BTreeSet::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut endpoints: Vec<ClusterLoadAssignment> = Vec::new();
    for svc in snap.services.values().filter(|s| visible.sees(&s.key)) {
        let dr = service_dr(&config, svc, proxy);
        let built = cluster::outbound_clusters(snap, svc, dr.as_ref());
        clusters.extend(built.clusters);
        secret_names.extend(built.secrets);
        endpoints.extend(endpoint::service_load_assignments(
            svc,
            snap.endpoints_of(&svc.key).map(|e| &**e),
            dr.as_ref(),
            &snap.mesh,
            Some(locality::ProxyLocality {
                locality: &proxy.locality,
                labels: &proxy.labels,
            }),
        ));
    }
    if proxy.node.kind == ProxyKind::Sidecar {
        clusters.extend(cluster::static_clusters(snap, proxy.node.interception));
    }
    clusters.extend(cluster::inbound_clusters(snap, proxy, &inbound_ports));
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));

    let mut listeners = listener::outbound_listeners(&ctx, &class);
    listeners.extend(listener::inbound_listeners(snap, proxy, &inbound_ports));
    let mut routes: Vec<RouteConfiguration> = if proxy.node.kind == ProxyKind::Sidecar {
        listener::outbound_http_ports(&ctx)
            .into_iter()
            .map(|p| route::outbound_route_config(&RouteContext { port: p, ..ctx }, &class))
            .collect()
    } else {
        let gw = gateway::gateway_config(snap, &config, proxy, &visible);
        listeners.extend(gw.listeners);
        secret_names.extend(gw.secrets);
        gw.routes
    };
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    let namespaces = [&*proxy.namespace];
    let secrets = secret_names
        .iter()
        .filter_map(|n| sds::secret(snap, n, &namespaces))
        .collect();

    ProxyResources {
        clusters,
        endpoints,
        listeners,
        routes,
        secrets,
    }
}
