//! ClusterLoadAssignments: the ready endpoints of a service port, grouped by locality.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use strait_model::{EndpointSet, Health, Labels, Service, ServicePort, selector_matches};

use crate::names;
use crate::util::{ip_address, u32_value};

/// The load assignment of `outbound|<port>||<host>`: ready endpoints only (not-ready and
/// terminating ones receive no new traffic), grouped by locality in a stable order.
pub fn load_assignment(
    svc: &Service,
    port: &ServicePort,
    endpoints: Option<&EndpointSet>,
) -> ClusterLoadAssignment {
    subset_load_assignment(svc, port, endpoints, "", &Labels::new())
}

/// The load assignment of `outbound|<port>|<subset>|<host>`: the ready endpoints whose labels
/// include `labels`.
pub fn subset_load_assignment(
    svc: &Service,
    port: &ServicePort,
    endpoints: Option<&EndpointSet>,
    subset: &str,
    labels: &Labels,
) -> ClusterLoadAssignment {
    let cluster_name = names::outbound_cluster(port.port, subset, &svc.hostname);
    let mut by_locality: BTreeMap<&strait_model::Locality, Vec<(std::net::IpAddr, u16, u32)>> =
        BTreeMap::new();
    if let Some(set) = endpoints {
        for (e, target) in set.for_port(port.name.as_deref()) {
            if e.health == Health::Healthy && selector_matches(labels, &e.labels) {
                by_locality
                    .entry(&e.locality)
                    .or_default()
                    .push((e.address, target, e.weight));
            }
        }
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(loc, mut addrs)| {
            addrs.sort();
            addrs.dedup();
            LocalityLbEndpoints {
                locality: (!loc.is_empty()).then(|| Locality {
                    region: loc.region.clone(),
                    zone: loc.zone.clone(),
                    sub_zone: loc.subzone.clone(),
                }),
                lb_endpoints: addrs
                    .into_iter()
                    .map(|(ip, p, weight)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(ip_address(ip, p)),
                            ..Default::default()
                        })),
                        health_status: HealthStatus::Healthy as i32,
                        load_balancing_weight: u32_value(weight.max(1)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name,
        endpoints,
        ..Default::default()
    }
}

/// The load assignments of a Service: one per proxied port, plus one per subset of its
/// DestinationRule. ExternalName services have none (their clusters resolve DNS).
pub fn service_load_assignments(
    svc: &Service,
    endpoints: Option<&EndpointSet>,
    dr: Option<&crate::config::EffectiveDr>,
) -> Vec<ClusterLoadAssignment> {
    if !svc.uses_eds() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
        out.push(load_assignment(svc, p, endpoints));
        for s in dr.iter().flat_map(|d| d.spec.subsets.iter()) {
            out.push(subset_load_assignment(
                svc, p, endpoints, &s.name, &s.labels,
            ));
        }
    }
    out
}
