//! Outbound route configurations: one per HTTP port (`"9080"`), one virtual host per service
//! listening on it, plus the catch-all for unknown hosts.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, retry_policy, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use strait_api::mesh_config::OutboundMode;
use strait_model::{InterceptionMode, MeshSnapshot, Service, ServicePort};
use tracing::warn;

use crate::ProxyClass;
use crate::names;
use crate::util::{any, seconds, u32_value};

/// Istio's default retry policy for mesh traffic: two retries on connection failures, refused
/// streams and 503s, each on another host.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .to_string(),
        num_retries: u32_value(2),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// Lets gRPC clients' `grpc-timeout` header set the deadline, as Istio does.
fn grpc_timeout_from_header() -> route_action::MaxStreamDuration {
    route_action::MaxStreamDuration {
        grpc_timeout_header_max: Some(seconds(0)),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> Option<RouteMatch> {
    Some(RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    })
}

/// A route sending everything to one cluster, with Istio's defaults (no route timeout,
/// default retries).
pub fn default_route(cluster: String, operation: String) -> Route {
    Route {
        name: "default".to_string(),
        r#match: prefix_match("/"),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(seconds(0)),
            retry_policy: Some(default_retry_policy()),
            max_stream_duration: Some(grpc_timeout_from_header()),
            ..Default::default()
        })),
        decorator: Some(Decorator {
            operation,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The virtual host of one service port, as seen from `class`.
pub fn service_virtual_host(svc: &Service, port: &ServicePort, class: &ProxyClass) -> VirtualHost {
    let cluster = names::outbound_cluster(port.port, "", &svc.hostname);
    VirtualHost {
        name: format!("{}:{}", svc.hostname, port.port),
        domains: svc.domains(port.port, &class.namespace),
        routes: vec![default_route(
            cluster,
            format!("{}:{}/*", svc.hostname, port.port),
        )],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The catch-all virtual host for hosts the mesh does not know: passed through to the
/// original destination (ALLOW_ANY, with traffic capture), or refused with 502
/// (REGISTRY_ONLY). Without capture there is no original destination: Envoy answers 404.
fn catch_all(snap: &MeshSnapshot, class: &ProxyClass) -> Option<VirtualHost> {
    if class.interception != InterceptionMode::Redirect {
        return None;
    }
    Some(match snap.mesh.outbound_traffic_policy.mode {
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
                    timeout: Some(seconds(0)),
                    max_stream_duration: Some(grpc_timeout_from_header()),
                    ..Default::default()
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
pub fn outbound_route_config(
    snap: &MeshSnapshot,
    port: u16,
    class: &ProxyClass,
) -> RouteConfiguration {
    let mut seen: HashSet<String> = HashSet::new();
    let mut virtual_hosts = Vec::new();
    for svc in snap.services.values() {
        let Some(sp) = svc.port(port).filter(|p| p.protocol.is_http()) else {
            continue;
        };
        let mut vh = service_virtual_host(svc, sp, class);
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
    virtual_hosts.extend(catch_all(snap, class));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}
