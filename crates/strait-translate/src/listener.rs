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
use strait_model::{InterceptionMode, MeshSnapshot, Proxy, ProxyKind, Service, ServicePort};
use tracing::warn;

use crate::ProxyClass;
use crate::cluster::InboundPort;
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

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// An HTTP connection manager with Istio's sidecar defaults: websocket upgrades allowed,
/// paths normalised, no trust in X-Forwarded-For.
pub fn http_connection_manager(
    stat_prefix: String,
    routes: http_connection_manager::RouteSpecifier,
) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix,
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: vec![router_filter()],
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

fn rds(port: u16) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: Some(ads_config_source()),
        route_config_name: port.to_string(),
    })
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

fn outbound_ports(snap: &MeshSnapshot) -> BTreeMap<u16, PortUse<'_>> {
    let mut ports: BTreeMap<u16, PortUse<'_>> = BTreeMap::new();
    for svc in snap.services.values() {
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
pub fn outbound_http_ports(snap: &MeshSnapshot) -> Vec<u16> {
    outbound_ports(snap)
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
pub fn outbound_listeners(snap: &MeshSnapshot, class: &ProxyClass) -> Vec<Listener> {
    if class.kind != ProxyKind::Sidecar {
        return Vec::new();
    }
    let ports = outbound_ports(snap);
    let mut out = Vec::new();
    match class.interception {
        InterceptionMode::Redirect => {
            let fallback = match snap.mesh.outbound_traffic_policy.mode {
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
                            rds(*port),
                        )],
                        ..Default::default()
                    }];
                    out.push(l);
                }
                for (svc, sp) in &u.tcp {
                    let Some(ip) = svc.cluster_ip else { continue };
                    let cluster = names::outbound_cluster(sp.port, "", &svc.hostname);
                    let mut l = listener(
                        format!("{ip}_{port}"),
                        ip_address(ip, *port),
                        TrafficDirection::Outbound,
                    );
                    l.bind_to_port = bool_value(false);
                    l.filter_chains = vec![FilterChain {
                        filters: vec![tcp_proxy(&cluster)],
                        ..Default::default()
                    }];
                    out.push(l);
                }
            }
        }
        InterceptionMode::None => {
            let bind = class.outbound_bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            for (port, u) in &ports {
                let filter = if u.http {
                    if !u.tcp.is_empty() {
                        warn!(
                            port,
                            "port serves HTTP and TCP services; without traffic capture the TCP services are not reachable on it"
                        );
                    }
                    http_connection_manager(format!("outbound_{bind}_{port}"), rds(*port))
                } else {
                    let (svc, sp) = u.tcp[0];
                    if u.tcp.len() > 1 {
                        warn!(port, chosen = %svc.hostname, "several TCP services share this port; without traffic capture only one is reachable on it");
                    }
                    tcp_proxy(&names::outbound_cluster(sp.port, "", &svc.hostname))
                };
                let mut l = listener(
                    format!("{bind}_{port}"),
                    ip_address(bind, *port),
                    TrafficDirection::Outbound,
                );
                l.filter_chains = vec![FilterChain {
                    filters: vec![filter],
                    ..Default::default()
                }];
                out.push(l);
            }
        }
    }
    out
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
                    let mut r = default_route(cluster.clone(), format!("{cluster}/*"));
                    // Retries belong to the caller's side.
                    if let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(
                        a,
                    )) = r.action.as_mut()
                    {
                        a.retry_policy = None;
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
        )
    } else {
        tcp_proxy(&cluster)
    }
}

/// The inbound listeners of a sidecar. With capture: `virtualInbound` on 15006, one filter
/// chain per served port (matched on the original destination port) and a passthrough chain
/// for the rest. Without capture: one listener per served port, bound on the proxy's IP.
pub fn inbound_listeners(proxy: &Proxy, ports: &[InboundPort]) -> Vec<Listener> {
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
