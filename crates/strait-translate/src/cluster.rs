//! Clusters: one outbound cluster per service port, the static catch-alls, and the inbound
//! clusters of a proxy's own workload.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, Http1ProtocolOptions, Http2ProtocolOptions, SocketAddress, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::Any;
use strait_model::{
    EntryInfo, InterceptionMode, MeshSnapshot, Protocol, Proxy, Resolution, Service, ServiceKind,
    ServicePort, TargetPort,
};

use crate::config::EffectiveDr;
use crate::locality;
use crate::policy;

use crate::names;
use crate::util::{ads_config_source, any, duration, ip_address, seconds, socket_address};

const DEFAULT_CONNECT_TIMEOUT_SECS: i64 = 10;
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(crate) fn connect_timeout(snap: &MeshSnapshot) -> envoy_types::pb::google::protobuf::Duration {
    snap.mesh
        .connect_timeout
        .map(|d| duration(d.get()))
        .unwrap_or_else(|| seconds(DEFAULT_CONNECT_TIMEOUT_SECS))
}

fn unlimited_circuit_breakers() -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![policy::unlimited_thresholds()],
        ..Default::default()
    }
}

/// Upstream protocol options for a port's protocol with no policy applied.
fn protocol_options(protocol: Protocol) -> HashMap<String, Any> {
    policy::HttpOptions::for_protocol(protocol).encode()
}

fn discovery_type(t: cluster::DiscoveryType) -> Option<cluster::ClusterDiscoveryType> {
    Some(cluster::ClusterDiscoveryType::Type(t as i32))
}

/// The outbound clusters of one Service and what they need from SDS.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OutboundClusters {
    /// `outbound|<port>||<host>` for every proxied port, and `outbound|<port>|<subset>|<host>`
    /// for every subset of the service's DestinationRule.
    pub clusters: Vec<Cluster>,
    /// SDS secret names the clusters refer to (`credentialName` of upstream TLS).
    pub secrets: BTreeSet<String>,
}

/// The outbound clusters of one Service, with the DestinationRule that applies (if any).
pub fn outbound_clusters(
    snap: &MeshSnapshot,
    svc: &Service,
    dr: Option<&EffectiveDr>,
) -> OutboundClusters {
    let mut out = OutboundClusters::default();
    for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
        out.clusters
            .push(build_cluster(snap, svc, p, "", dr, &mut out.secrets));
        for subset in dr.iter().flat_map(|d| d.spec.subsets.iter()) {
            out.clusters.push(build_cluster(
                snap,
                svc,
                p,
                &subset.name,
                dr,
                &mut out.secrets,
            ));
        }
    }
    out
}

fn build_cluster(
    snap: &MeshSnapshot,
    svc: &Service,
    p: &ServicePort,
    subset: &str,
    dr: Option<&EffectiveDr>,
    secrets: &mut BTreeSet<String>,
) -> Cluster {
    let name = names::outbound_cluster(p.port, subset, &svc.hostname);
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(connect_timeout(snap)),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(unlimited_circuit_breakers()),
        ..Default::default()
    };
    match &svc.kind {
        ServiceKind::ExternalName(target) => {
            c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::StrictDns);
            c.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![lb(socket_address(target, p.port))],
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ServiceKind::ClusterIp | ServiceKind::Headless => {
            c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::Eds);
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name,
            });
        }
        ServiceKind::Entry(e) => match e.resolution {
            Resolution::Static => {
                c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::Eds);
                c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                    eds_config: Some(ads_config_source()),
                    service_name: name,
                });
            }
            Resolution::Passthrough => {
                c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::OriginalDst);
                c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let t = if e.resolution == Resolution::Dns {
                    cluster::DiscoveryType::StrictDns
                } else {
                    cluster::DiscoveryType::LogicalDns
                };
                c.cluster_discovery_type = discovery_type(t);
                c.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
                c.load_assignment = Some(dns_assignment(name, svc, e, p));
            }
        },
    }
    let mut http = policy::HttpOptions::for_protocol(p.protocol);
    let tp = dr.map(|dr| dr.policy(p.port, (!subset.is_empty()).then_some(subset)));
    if let Some(tp) = &tp {
        policy::apply(
            &mut c,
            tp,
            &mut http,
            &mut policy::PolicyContext {
                protocol: p.protocol,
                secrets,
            },
        );
    }
    if c.eds_cluster_config.is_some() && locality::weighted(tp.as_ref(), &snap.mesh) {
        // `distribute`: Envoy picks a locality by the weights in the load assignment.
        c.common_lb_config
            .get_or_insert_with(Default::default)
            .locality_config_specifier = Some(
            cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            ),
        );
    }
    c.typed_extension_protocol_options = http.encode();
    c
}

/// The endpoints Envoy resolves by DNS for a ServiceEntry host: its listed endpoints, or the
/// host itself.
fn dns_assignment(
    name: String,
    svc: &Service,
    e: &EntryInfo,
    p: &ServicePort,
) -> ClusterLoadAssignment {
    let target = match p.target_port {
        TargetPort::Number(n) => n,
        TargetPort::Name(_) => p.port,
    };
    let mut by_locality: std::collections::BTreeMap<&strait_model::Locality, Vec<LbEndpoint>> =
        Default::default();
    let empty = strait_model::Locality::default();
    if e.dns_endpoints.is_empty() {
        by_locality
            .entry(&empty)
            .or_default()
            .push(lb(socket_address(&svc.hostname, target)));
    }
    for d in &e.dns_endpoints {
        let port = p
            .name
            .as_deref()
            .and_then(|n| d.ports.get(n))
            .and_then(|v| u16::try_from(*v).ok())
            .unwrap_or(target);
        let mut ep = lb(socket_address(&d.address, port));
        if d.weight > 0 {
            ep.load_balancing_weight = crate::util::u32_value(d.weight);
        }
        by_locality.entry(&d.locality).or_default().push(ep);
    }
    // A logical DNS cluster takes exactly one endpoint.
    let single = matches!(e.resolution, Resolution::DnsRoundRobin);
    let mut endpoints: Vec<LocalityLbEndpoints> = by_locality
        .into_iter()
        .map(|(loc, lb_endpoints)| LocalityLbEndpoints {
            locality: (!loc.is_empty()).then(|| {
                envoy_types::pb::envoy::config::core::v3::Locality {
                    region: loc.region.clone(),
                    zone: loc.zone.clone(),
                    sub_zone: loc.subzone.clone(),
                }
            }),
            lb_endpoints,
            ..Default::default()
        })
        .collect();
    if single {
        endpoints.truncate(1);
        if let Some(first) = endpoints.first_mut() {
            first.lb_endpoints.truncate(1);
        }
    }
    ClusterLoadAssignment {
        cluster_name: name,
        endpoints,
        ..Default::default()
    }
}

fn lb(address: envoy_types::pb::envoy::config::core::v3::Address) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(address),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Clusters every sidecar has: `BlackHoleCluster`, and with traffic capture the original
/// destination passthrough clusters.
pub fn static_clusters(snap: &MeshSnapshot, interception: InterceptionMode) -> Vec<Cluster> {
    let mut out = vec![Cluster {
        name: names::BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: discovery_type(cluster::DiscoveryType::Static),
        connect_timeout: Some(connect_timeout(snap)),
        ..Default::default()
    }];
    if interception == InterceptionMode::Redirect {
        let mut use_downstream = std::collections::HashMap::new();
        use_downstream.insert(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any(&HttpProtocolOptions {
                upstream_protocol_options: Some(
                    http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                        http_protocol_options::UseDownstreamHttpConfig {
                            http_protocol_options: Some(Http1ProtocolOptions::default()),
                            http2_protocol_options: Some(Http2ProtocolOptions::default()),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
        );
        out.push(Cluster {
            name: names::PASSTHROUGH_CLUSTER.to_string(),
            cluster_discovery_type: discovery_type(cluster::DiscoveryType::OriginalDst),
            lb_policy: cluster::LbPolicy::ClusterProvided as i32,
            connect_timeout: Some(connect_timeout(snap)),
            circuit_breakers: Some(unlimited_circuit_breakers()),
            typed_extension_protocol_options: use_downstream.clone(),
            ..Default::default()
        });
        out.push(Cluster {
            name: names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
            cluster_discovery_type: discovery_type(cluster::DiscoveryType::OriginalDst),
            lb_policy: cluster::LbPolicy::ClusterProvided as i32,
            connect_timeout: Some(connect_timeout(snap)),
            circuit_breakers: Some(unlimited_circuit_breakers()),
            typed_extension_protocol_options: use_downstream,
            upstream_bind_config: Some(inbound_bind_config()),
            ..Default::default()
        });
    }
    out
}

fn inbound_bind_config() -> BindConfig {
    BindConfig {
        source_address: Some(SocketAddress {
            address: names::INBOUND_PASSTHROUGH_BIND.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One port the proxy's own workload serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InboundPort {
    /// The port the application listens on.
    pub target_port: u16,
    /// Its protocol (from the first service port that targets it).
    pub protocol: Protocol,
}

/// The ports of the Services that select this proxy's workload, by target port.
pub fn inbound_ports(snap: &MeshSnapshot, proxy: &Proxy) -> Vec<InboundPort> {
    if proxy.node.kind != strait_model::ProxyKind::Sidecar {
        return Vec::new();
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for svc in snap.services_selecting(&proxy.namespace, &proxy.labels) {
        for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
            let target = match &p.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => proxy.workload.as_ref().and_then(|w| w.named_port(name)),
            };
            if let Some(t) = target
                && seen.insert(t)
            {
                out.push(InboundPort {
                    target_port: t,
                    protocol: p.protocol,
                });
            }
        }
    }
    out.sort();
    out
}

/// The inbound clusters `inbound|<port>||` for the proxy's workload. With traffic capture
/// they forward to the original destination (the pod's own address, sent from 127.0.0.6 so
/// the capture rules let it pass); without, to the application's address.
pub fn inbound_clusters(snap: &MeshSnapshot, proxy: &Proxy, ports: &[InboundPort]) -> Vec<Cluster> {
    ports
        .iter()
        .map(|p| {
            let name = names::inbound_cluster(p.target_port);
            let mut c = Cluster {
                name: name.clone(),
                connect_timeout: Some(connect_timeout(snap)),
                circuit_breakers: Some(unlimited_circuit_breakers()),
                typed_extension_protocol_options: protocol_options(p.protocol),
                ..Default::default()
            };
            match proxy.node.interception {
                InterceptionMode::Redirect => {
                    c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::OriginalDst);
                    c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
                    c.upstream_bind_config = Some(inbound_bind_config());
                }
                InterceptionMode::None => {
                    let app = proxy
                        .node
                        .app_address
                        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
                    c.cluster_discovery_type = discovery_type(cluster::DiscoveryType::Static);
                    c.load_assignment = Some(ClusterLoadAssignment {
                        cluster_name: name,
                        endpoints: vec![LocalityLbEndpoints {
                            lb_endpoints: vec![lb(ip_address(app, p.target_port))],
                            ..Default::default()
                        }],
                        ..Default::default()
                    });
                }
            }
            c
        })
        .collect()
}
