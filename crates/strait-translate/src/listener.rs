//! Listeners: outbound (capture listener plus one per port, or bound listeners without
//! capture) and inbound (the proxy's own workload).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use strait_api::mesh_config::OutboundMode;
use strait_model::{
    InterceptionMode, MeshSnapshot, Protocol, Proxy, ProxyKind, Service, ServicePort,
};
use tracing::warn;

use crate::ProxyClass;
use crate::cluster::InboundPort;
use crate::http_route::RouteContext;
use crate::names;
use crate::route::default_route;
use crate::util::{ads_config_source, any, bool_value, ip_address, socket_address, u32_value};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

fn typed_filter<M: prost::Message + prost::Name>(name: &str, m: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(m))),
    }
}

fn http_filter<M: prost::Message + prost::Name>(name: &str, m: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(m))),
        ..Default::default()
    }
}

/// Which HTTP filters a connection manager runs before the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFilters {
    /// Routes of VirtualServices: CORS and fault injection, configured per route.
    Outbound,
    /// A workload's own inbound traffic: routing only.
    Inbound,
}

fn http_filters(kind: HttpFilters) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    if kind == HttpFilters::Outbound {
        out.push(http_filter(
            crate::http_route::CORS_FILTER,
            &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default(),
        ));
        out.push(http_filter(
            crate::ratelimit::FILTER,
            &crate::ratelimit::hcm_filter_config(),
        ));
        out.push(http_filter(
            crate::http_route::FAULT_FILTER,
            &envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::default(),
        ));
    }
    out.push(http_filter("envoy.filters.http.router", &Router::default()));
    out
}

/// An HTTP connection manager with Istio's sidecar defaults: websocket upgrades allowed,
/// paths normalised, no trust in X-Forwarded-For.
pub fn http_connection_manager(
    stat_prefix: String,
    routes: http_connection_manager::RouteSpecifier,
    filters: HttpFilters,
) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix,
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: http_filters(filters),
        use_remote_address: bool_value(false),
        normalize_path: bool_value(true),
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    typed_filter(HCM, &hcm)
}

/// Routes from RDS, by route configuration name.
pub fn rds(name: String) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: Some(ads_config_source()),
        route_config_name: name,
    })
}

/// A TCP proxy to weighted clusters (one cluster when there is one).
pub fn tcp_proxy_weighted(stat_prefix: &str, clusters: &[(String, u32)]) -> Filter {
    let spec = match clusters {
        [(c, _)] => tcp_proxy::ClusterSpecifier::Cluster(c.clone()),
        _ => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: clusters
                .iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    },
                )
                .collect(),
        }),
    };
    typed_filter(
        TCP_PROXY,
        &TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(spec),
            ..Default::default()
        },
    )
}

/// The TLS inspector, so filter chains can match SNI.
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// What VirtualService `tcp` rules say about a TCP service on `port` for this proxy: the
/// weighted clusters of the first rule that applies.
pub fn tcp_route_clusters(
    ctx: &RouteContext<'_>,
    svc: &Service,
    port: u16,
) -> Option<Vec<(String, u32)>> {
    let vs = ctx.config.mesh_vs_for(&svc.hostname, ctx.proxy_ns)?;
    let rule = vs.vs.spec.tcp.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                (m.port == 0 || m.port == u32::from(port))
                    && if m.gateways.is_empty() {
                        strait_model::selector_matches(&m.source_labels, ctx.labels)
                            && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy_ns)
                    } else {
                        m.gateways.iter().any(|g| {
                            ctx.gateways
                                .iter()
                                .any(|mine| mine == g || mine.ends_with(&format!("/{g}")))
                        })
                    }
            })
    })?;
    let ctx = RouteContext { port, ..*ctx };
    let clusters: Vec<(String, u32)> = rule
        .route
        .iter()
        .filter(|d| d.weight > 0 || rule.route.len() == 1)
        .map(|d| {
            let (c, _) =
                crate::http_route::destination_cluster(&ctx, vs.namespace(), &d.destination);
            (
                c,
                if rule.route.len() == 1 {
                    100
                } else {
                    d.weight as u32
                },
            )
        })
        .collect();
    (!clusters.is_empty()).then_some(clusters)
}

/// Filter chains for a TLS service port: one per VirtualService `tls` rule (by SNI), and a
/// default chain to the service itself.
fn tls_chains(
    ctx: &RouteContext<'_>,
    svc: &Service,
    port: u16,
    default_cluster: &str,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    if let Some(vs) = ctx.config.mesh_vs_for(&svc.hostname, ctx.proxy_ns) {
        let rctx = RouteContext { port, ..*ctx };
        for (i, rule) in vs.vs.spec.tls.iter().enumerate() {
            let snis: Vec<String> = rule
                .matches
                .iter()
                .filter(|m| {
                    (m.port == 0 || m.port == u32::from(port))
                        && strait_model::selector_matches(&m.source_labels, ctx.labels)
                })
                .flat_map(|m| m.sni_hosts.iter().cloned())
                .collect();
            if snis.is_empty() {
                continue;
            }
            let clusters: Vec<(String, u32)> = rule
                .route
                .iter()
                .filter(|d| d.weight > 0 || rule.route.len() == 1)
                .map(|d| {
                    let (c, _) = crate::http_route::destination_cluster(
                        &rctx,
                        vs.namespace(),
                        &d.destination,
                    );
                    (
                        c,
                        if rule.route.len() == 1 {
                            100
                        } else {
                            d.weight as u32
                        },
                    )
                })
                .collect();
            if clusters.is_empty() {
                continue;
            }
            chains.push(FilterChain {
                name: format!("{}.{}.tls.{i}", vs.key.namespace, vs.key.name),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: snis,
                    transport_protocol: "tls".to_string(),
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_weighted(default_cluster, &clusters)],
                ..Default::default()
            });
        }
    }
    chains.push(FilterChain {
        filters: vec![tcp_proxy(default_cluster)],
        ..Default::default()
    });
    chains
}

/// A TCP proxy to one cluster.
pub fn tcp_proxy(cluster: &str) -> Filter {
    typed_filter(
        TCP_PROXY,
        &TcpProxy {
            stat_prefix: cluster.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        },
    )
}

fn listener(
    name: String,
    address: envoy_types::pb::envoy::config::core::v3::Address,
    direction: TrafficDirection,
) -> Listener {
    Listener {
        name,
        address: Some(address),
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// What the mesh serves on each port, for outbound listeners.
#[derive(Default)]
struct PortUse<'a> {
    http: bool,
    tcp: Vec<(&'a Arc<Service>, &'a ServicePort)>,
}

fn outbound_ports<'a>(ctx: &RouteContext<'a>) -> BTreeMap<u16, PortUse<'a>> {
    let snap = ctx.snap;
    let mut ports: BTreeMap<u16, PortUse<'_>> = BTreeMap::new();
    for svc in snap.services.values().filter(|s| ctx.visible.sees(&s.key)) {
        for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
            let u = ports.entry(p.port).or_default();
            if p.protocol.is_http() {
                u.http = true;
            } else {
                u.tcp.push((svc, p));
            }
        }
    }
    ports
}

/// The HTTP ports outbound routes exist for (one route configuration each).
pub fn outbound_http_ports(ctx: &RouteContext<'_>) -> Vec<u16> {
    outbound_ports(ctx)
        .into_iter()
        .filter(|(_, u)| u.http)
        .map(|(p, _)| p)
        .collect()
}

/// The outbound listeners of a proxy class.
///
/// With capture (`Redirect`): `virtualOutbound` on 15001 hands connections to a listener
/// matching their original destination: `0.0.0.0_<port>` for HTTP ports (routes from RDS),
/// `<clusterIP>_<port>` for TCP services; anything else takes the passthrough (ALLOW_ANY) or
/// black hole (REGISTRY_ONLY) chain. Without capture (`None`): one listener bound on the
/// requested address per port.
pub fn outbound_listeners(ctx: &RouteContext<'_>, class: &ProxyClass) -> Vec<Listener> {
    if class.kind != ProxyKind::Sidecar {
        return Vec::new();
    }
    let snap = ctx.snap;
    let ports = outbound_ports(ctx);
    let mut out = Vec::new();
    match class.interception {
        InterceptionMode::Redirect => {
            let fallback = match ctx.visible.outbound {
                OutboundMode::AllowAny => names::PASSTHROUGH_CLUSTER,
                OutboundMode::RegistryOnly => names::BLACKHOLE_CLUSTER,
            };
            let mut vo = listener(
                names::VIRTUAL_OUTBOUND.to_string(),
                socket_address("0.0.0.0", names::VIRTUAL_OUTBOUND_PORT),
                TrafficDirection::Outbound,
            );
            vo.use_original_dst = bool_value(true);
            vo.filter_chains = vec![FilterChain {
                name: fallback.to_string(),
                filters: vec![tcp_proxy(fallback)],
                ..Default::default()
            }];
            out.push(vo);
            for (port, u) in &ports {
                if u.http {
                    let mut l = listener(
                        format!("0.0.0.0_{port}"),
                        socket_address("0.0.0.0", *port),
                        TrafficDirection::Outbound,
                    );
                    l.bind_to_port = bool_value(false);
                    l.filter_chains = vec![FilterChain {
                        filters: vec![http_connection_manager(
                            format!("outbound_0.0.0.0_{port}"),
                            rds(port.to_string()),
                            HttpFilters::Outbound,
                        )],
                        ..Default::default()
                    }];
                    out.push(l);
                }
                // An entry host without an address is reached on the port alone (as Istio does),
                // unless HTTP services already take the port.
                let unaddressed: Vec<&(&Arc<Service>, &ServicePort)> = u
                    .tcp
                    .iter()
                    .filter(|(s, _)| s.entry().is_some() && s.cluster_ip.is_none())
                    .collect();
                if !u.http && !unaddressed.is_empty() {
                    let mut l = listener(
                        format!("0.0.0.0_{port}"),
                        socket_address("0.0.0.0", *port),
                        TrafficDirection::Outbound,
                    );
                    l.bind_to_port = bool_value(false);
                    let (svc, sp) = unaddressed[0];
                    if matches!(sp.protocol, Protocol::Tls | Protocol::Https) {
                        // Several TLS hosts share the port: route by SNI, each to its host.
                        l.listener_filters = vec![tls_inspector()];
                        for (s, p) in &unaddressed {
                            let cluster = names::outbound_cluster(p.port, "", &s.hostname);
                            l.filter_chains.push(FilterChain {
                                name: cluster.clone(),
                                filter_chain_match: Some(FilterChainMatch {
                                    server_names: vec![s.hostname.to_string()],
                                    transport_protocol: "tls".to_string(),
                                    ..Default::default()
                                }),
                                filters: vec![tcp_proxy(&cluster)],
                                ..Default::default()
                            });
                        }
                        let fallback = match ctx.visible.outbound {
                            OutboundMode::AllowAny => names::PASSTHROUGH_CLUSTER,
                            OutboundMode::RegistryOnly => names::BLACKHOLE_CLUSTER,
                        };
                        l.filter_chains.push(FilterChain {
                            name: fallback.to_string(),
                            filters: vec![tcp_proxy(fallback)],
                            ..Default::default()
                        });
                    } else {
                        tcp_listener_chains(ctx, &mut l, svc, sp);
                    }
                    out.push(l);
                }
                for (svc, sp) in &u.tcp {
                    let Some(ip) = svc.cluster_ip else { continue };
                    let mut l = listener(
                        format!("{ip}_{port}"),
                        ip_address(ip, *port),
                        TrafficDirection::Outbound,
                    );
                    l.bind_to_port = bool_value(false);
                    tcp_listener_chains(ctx, &mut l, svc, sp);
                    out.push(l);
                }
            }
        }
        InterceptionMode::None => {
            let bind = class.outbound_bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            for (port, u) in &ports {
                let mut l = listener(
                    format!("{bind}_{port}"),
                    ip_address(bind, *port),
                    TrafficDirection::Outbound,
                );
                if u.http {
                    if !u.tcp.is_empty() {
                        warn!(
                            port,
                            "port serves HTTP and TCP services; without traffic capture the TCP services are not reachable on it"
                        );
                    }
                    l.filter_chains = vec![FilterChain {
                        filters: vec![http_connection_manager(
                            format!("outbound_{bind}_{port}"),
                            rds(port.to_string()),
                            HttpFilters::Outbound,
                        )],
                        ..Default::default()
                    }];
                } else {
                    let (svc, sp) = u.tcp[0];
                    if u.tcp.len() > 1 {
                        warn!(port, chosen = %svc.hostname, "several TCP services share this port; without traffic capture only one is reachable on it");
                    }
                    tcp_listener_chains(ctx, &mut l, svc, sp);
                }
                out.push(l);
            }
        }
    }
    crate::accesslog::apply(&mut out, &snap.mesh);
    out
}

/// The filter chains of a TCP (or TLS) service's listener: VirtualService `tcp` or `tls` rules
/// when there are, else straight to the service.
fn tcp_listener_chains(ctx: &RouteContext<'_>, l: &mut Listener, svc: &Service, sp: &ServicePort) {
    let cluster = names::outbound_cluster(sp.port, "", &svc.hostname);
    if matches!(sp.protocol, Protocol::Tls | Protocol::Https) {
        l.listener_filters = vec![tls_inspector()];
        l.filter_chains = tls_chains(ctx, svc, sp.port, &cluster);
        return;
    }
    let filter = match tcp_route_clusters(ctx, svc, sp.port) {
        Some(clusters) => tcp_proxy_weighted(&cluster, &clusters),
        None => tcp_proxy(&cluster),
    };
    l.filter_chains = vec![FilterChain {
        filters: vec![filter],
        ..Default::default()
    }];
}

fn inbound_filter(p: &InboundPort, stat_addr: &str) -> Filter {
    let cluster = names::inbound_cluster(p.target_port);
    if p.protocol.is_http() {
        let route = RouteConfiguration {
            name: cluster.clone(),
            virtual_hosts: vec![VirtualHost {
                name: format!("inbound|http|{}", p.target_port),
                domains: vec!["*".to_string()],
                routes: vec![{
                    let mut r = default_route(cluster.clone(), format!("{cluster}/*"), None);
                    // Only requests reset before reaching the application are retried here, as
                    // Istio does: retrying anything else belongs to the caller.
                    if let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(
                        a,
                    )) = r.action.as_mut()
                    {
                        a.retry_policy =
                            Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
                                retry_on: "reset-before-request".to_string(),
                                num_retries: u32_value(2),
                                ..Default::default()
                            });
                    }
                    r
                }],
                ..Default::default()
            }],
            validate_clusters: bool_value(false),
            ..Default::default()
        };
        http_connection_manager(
            format!("inbound_{stat_addr}_{}", p.target_port),
            http_connection_manager::RouteSpecifier::RouteConfig(route),
            HttpFilters::Inbound,
        )
    } else {
        tcp_proxy(&cluster)
    }
}

/// The inbound listeners of a sidecar. With capture: `virtualInbound` on 15006, one filter
/// chain per served port (matched on the original destination port) and a passthrough chain
/// for the rest. Without capture: one listener per served port, bound on the proxy's IP.
pub fn inbound_listeners(
    snap: &MeshSnapshot,
    proxy: &Proxy,
    ports: &[InboundPort],
) -> Vec<Listener> {
    let mut out = inbound_listeners_inner(proxy, ports);
    crate::accesslog::apply(&mut out, &snap.mesh);
    out
}

fn inbound_listeners_inner(proxy: &Proxy, ports: &[InboundPort]) -> Vec<Listener> {
    if proxy.node.kind != ProxyKind::Sidecar {
        return Vec::new();
    }
    match proxy.node.interception {
        InterceptionMode::Redirect => {
            let mut l = listener(
                names::VIRTUAL_INBOUND.to_string(),
                socket_address("0.0.0.0", names::VIRTUAL_INBOUND_PORT),
                TrafficDirection::Inbound,
            );
            l.listener_filters = vec![ListenerFilter {
                name: "envoy.filters.listener.original_dst".to_string(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &OriginalDst {},
                ))),
                ..Default::default()
            }];
            l.filter_chains = ports
                .iter()
                .map(|p| FilterChain {
                    name: names::inbound_cluster(p.target_port),
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: u32_value(u32::from(p.target_port)),
                        ..Default::default()
                    }),
                    filters: vec![inbound_filter(p, "0.0.0.0")],
                    ..Default::default()
                })
                .collect();
            l.filter_chains.push(FilterChain {
                name: names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
                filters: vec![tcp_proxy(names::INBOUND_PASSTHROUGH_CLUSTER)],
                ..Default::default()
            });
            vec![l]
        }
        InterceptionMode::None => {
            let Some(ip) = proxy.ip() else {
                return Vec::new();
            };
            ports
                .iter()
                .map(|p| {
                    let mut l = listener(
                        format!("{ip}_{}", p.target_port),
                        ip_address(ip, p.target_port),
                        TrafficDirection::Inbound,
                    );
                    l.filter_chains = vec![FilterChain {
                        filters: vec![inbound_filter(p, &ip.to_string())],
                        ..Default::default()
                    }];
                    l
                })
                .collect()
        }
    }
}
