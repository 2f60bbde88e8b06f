//! Outbound route configurations: one per HTTP port (`"9080"`), one virtual host per service
//! listening on it, plus the catch-all for unknown hosts.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, route, route_action, route_match,
};
use strait_api::mesh_config::OutboundMode;
use strait_model::{InterceptionMode, Service, ServicePort};
use tracing::warn;

use crate::ProxyClass;
use crate::http_route::{self, RouteContext};
use crate::names;

fn prefix_match(prefix: &str) -> Option<RouteMatch> {
    Some(RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    })
}

/// A route sending everything to one cluster, with Istio's defaults (no route timeout,
/// default retries, the DestinationRule's consistent hash if it asks for one).
pub fn default_route(
    cluster: String,
    operation: String,
    hash: Option<route_action::HashPolicy>,
) -> Route {
    let hashed = hash.is_some();
    Route {
        name: "default".to_string(),
        r#match: prefix_match("/"),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            retry_policy: Some(http_route::default_retry_policy(hashed)),
            hash_policy: hash.into_iter().collect(),
            ..http_route::timed_action(None)
        })),
        decorator: Some(Decorator {
            operation,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The virtual host of one service port, as seen from a proxy: the routes of the
/// VirtualService for its host when there is one, else a route to the service.
pub fn service_virtual_host(
    ctx: &RouteContext<'_>,
    svc: &Service,
    port: &ServicePort,
) -> VirtualHost {
    let cluster = names::outbound_cluster(port.port, "", &svc.hostname);
    let mut routes = Vec::new();
    if let Some(vs) = ctx.config.mesh_vs_for(&svc.hostname, ctx.proxy_ns) {
        routes = http_route::vs_routes(ctx, vs);
    }
    if routes.is_empty() {
        let hash = default_hash_policy(ctx, svc, port.port);
        let mut r = default_route(cluster, format!("{}:{}/*", svc.hostname, port.port), hash);
        http_route::apply_rate_limit(ctx, &mut r, &svc.hostname, port.port);
        routes.push(r);
    }
    VirtualHost {
        name: format!("{}:{}", svc.hostname, port.port),
        domains: svc.domains(port.port, ctx.proxy_ns),
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The consistent-hash policy of the service's DestinationRule, for routes with no
/// VirtualService.
fn default_hash_policy(
    ctx: &RouteContext<'_>,
    svc: &Service,
    port: u16,
) -> Option<route_action::HashPolicy> {
    let d = strait_api::istio::Destination {
        host: svc.hostname.to_string(),
        ..Default::default()
    };
    http_route::hash_policy(ctx, &svc.hostname, &d, port)
}

/// The catch-all virtual host for hosts the mesh does not know: passed through to the
/// original destination (ALLOW_ANY, with traffic capture), or refused with 502
/// (REGISTRY_ONLY). Without capture there is no original destination to pass through to:
/// under ALLOW_ANY Envoy answers 404.
fn catch_all(ctx: &RouteContext<'_>, class: &ProxyClass) -> Option<VirtualHost> {
    Some(match ctx.visible.outbound {
        OutboundMode::AllowAny if class.interception != InterceptionMode::Redirect => return None,
        OutboundMode::AllowAny => VirtualHost {
            name: "allow_any".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "allow_any".to_string(),
                r#match: prefix_match("/"),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        names::PASSTHROUGH_CLUSTER.to_string(),
                    )),
                    ..http_route::timed_action(None)
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
        OutboundMode::RegistryOnly => VirtualHost {
            name: "block_all".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "block_all".to_string(),
                r#match: prefix_match("/"),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
    })
}

/// The route configuration named after `port`, with a virtual host per HTTP service on that
/// port. A domain claimed by two services (say, a copied cluster IP) stays with the first in
/// name order: Envoy refuses duplicate domains in one route configuration.
pub fn outbound_route_config(ctx: &RouteContext<'_>, class: &ProxyClass) -> RouteConfiguration {
    let snap = ctx.snap;
    let port = ctx.port;
    let mut seen: HashSet<String> = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for svc in snap.services.values().filter(|s| ctx.visible.sees(&s.key)) {
        let Some(sp) = svc.port(port).filter(|p| p.protocol.is_http()) else {
            continue;
        };
        let mut vh = service_virtual_host(ctx, svc, sp);
        vh.domains.retain(|d| {
            let fresh = seen.insert(d.clone());
            if !fresh {
                warn!(service = %svc.key, domain = %d, port, "domain already used by another service; skipped");
            }
            fresh
        });
        if !vh.domains.is_empty() {
            virtual_hosts.push(vh);
        }
    }
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    virtual_hosts.extend(catch_all(ctx, class));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}
