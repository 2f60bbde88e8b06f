//! ClusterLoadAssignments: the ready endpoints of a service port, grouped by locality (and by
//! failover priority, or weighted per locality, when locality load balancing applies).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment,
    lb_endpoint,
};
use strait_api::MeshConfig;
use strait_api::istio::TrafficPolicy;
use strait_model::{EndpointSet, Health, Labels, Service, ServicePort, selector_matches};

use crate::config::EffectiveDr;
use crate::locality::{self, Mode, ProxyLocality};
use crate::names;
use crate::util::{ip_address, u32_value};

/// How one cluster's endpoints are laid out for one proxy.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    /// Failover priorities or distribution weights for the proxy.
    mode: Mode<'a>,
    /// The proxy, when its locality is known and matters.
    proxy: Option<ProxyLocality<'a>>,
    /// The cluster balances by locality weights: every locality needs one.
    weighted: bool,
    /// Envoy's overprovisioning factor in percent, when the mesh sets one.
    overprovisioning: Option<u32>,
}

type Entry = (std::net::IpAddr, u16, u32);

/// The load assignment of `outbound|<port>|<subset>|<host>`: ready endpoints only (not-ready and
/// terminating ones receive no new traffic) whose labels include `labels`, grouped by locality
/// in a stable order, and prioritised or weighted as the plan says.
fn subset_load_assignment(
    svc: &Service,
    port: &ServicePort,
    endpoints: Option<&EndpointSet>,
    subset: &str,
    labels: &Labels,
    plan: &Plan<'_>,
) -> ClusterLoadAssignment {
    let cluster_name = names::outbound_cluster(port.port, subset, &svc.hostname);
    let mut groups: BTreeMap<(u32, &strait_model::Locality), Vec<Entry>> = BTreeMap::new();
    if let Some(set) = endpoints {
        for (e, target) in set.for_port(port.name.as_deref()) {
            if e.health == Health::Healthy && selector_matches(labels, &e.labels) {
                let priority = match &plan.proxy {
                    Some(p) => locality::priority(&plan.mode, p, &e.locality, &e.labels),
                    None => 0,
                };
                groups
                    .entry((priority, &e.locality))
                    .or_default()
                    .push((e.address, target, e.weight));
            }
        }
    }
    // Envoy wants priorities numbered from 0 without gaps.
    let mut ranks: Vec<u32> = groups.keys().map(|(p, _)| *p).collect();
    ranks.dedup();
    let localities: Vec<&strait_model::Locality> = groups.keys().map(|(_, l)| *l).collect();
    let mut out = Vec::with_capacity(groups.len());
    for ((priority, loc), mut addrs) in groups {
        addrs.sort();
        addrs.dedup();
        let weight = match (&plan.mode, plan.weighted) {
            (Mode::Distribute(d), true) => match locality::weight(d, loc, &localities) {
                Some(w) => Some(w),
                // Localities the rule sends nothing to are left out.
                None => continue,
            },
            // Without a rule for this proxy, localities weigh what their endpoints weigh: the
            // same spread as without locality weights.
            (_, true) => Some(addrs.iter().map(|a| a.2.max(1)).sum()),
            (_, false) => None,
        };
        let rank = ranks
            .iter()
            .position(|r| *r == priority)
            .unwrap_or_default();
        out.push(LocalityLbEndpoints {
            locality: (!loc.is_empty()).then(|| Locality {
                region: loc.region.clone(),
                zone: loc.zone.clone(),
                sub_zone: loc.subzone.clone(),
            }),
            lb_endpoints: addrs.into_iter().map(lb_endpoint).collect(),
            load_balancing_weight: weight.and_then(u32_value),
            priority: rank as u32,
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name,
        endpoints: out,
        policy: plan
            .overprovisioning
            .map(|f| cluster_load_assignment::Policy {
                overprovisioning_factor: u32_value(f),
                ..Default::default()
            }),
        ..Default::default()
    }
}

fn lb_endpoint((ip, port, weight): Entry) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(ip_address(ip, port)),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: u32_value(weight.max(1)),
        ..Default::default()
    }
}

/// The load assignments of a Service: one per proxied port, plus one per subset of its
/// DestinationRule. Services not on EDS (DNS, passthrough) have none. `proxy` is the proxy
/// they are for, when locality load balancing may apply to it; without it every endpoint has
/// priority 0.
pub fn service_load_assignments(
    svc: &Service,
    endpoints: Option<&EndpointSet>,
    dr: Option<&EffectiveDr>,
    mesh: &MeshConfig,
    proxy: Option<ProxyLocality<'_>>,
) -> Vec<ClusterLoadAssignment> {
    if !svc.uses_eds() {
        return Vec::new();
    }
    let overprovisioning = mesh
        .overprovisioning_factor
        .map(|_| locality::overprovisioning(mesh));
    let no_policy = TrafficPolicy::default();
    let mut out = Vec::new();
    for p in svc.ports.iter().filter(|p| p.protocol.is_proxied()) {
        let subsets =
            std::iter::once(None).chain(dr.iter().flat_map(|d| d.spec.subsets.iter()).map(Some));
        for s in subsets {
            let name = s.map(|s| s.name.as_str()).unwrap_or_default();
            let labels = s.map(|s| s.labels.clone()).unwrap_or_default();
            let policy: Option<TrafficPolicy> =
                dr.map(|d| d.policy(p.port, s.map(|s| s.name.as_str())));
            let tp = policy.as_ref().unwrap_or(&no_policy);
            let mode = match &proxy {
                Some(px) => locality::mode(tp, mesh, px.locality),
                None => Mode::Off,
            };
            let plan = Plan {
                mode,
                proxy: proxy.filter(|_| mode != Mode::Off),
                weighted: locality::weighted(policy.as_ref(), mesh),
                overprovisioning,
            };
            out.push(subset_load_assignment(
                svc, p, endpoints, name, &labels, &plan,
            ));
        }
    }
    out
}
