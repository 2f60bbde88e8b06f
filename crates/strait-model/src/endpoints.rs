//! The endpoints of a Service: EndpointSlices (or v1 Endpoints when a Service has no slices),
//! joined with the pods they point at (labels) and the nodes those run on (locality).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::k8s_openapi::api::core::v1 as core;
use strait_api::k8s_openapi::api::discovery::v1 as discovery;

use crate::workload::{Labels, Locality, Node, Workload};

/// Whether an endpoint should receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Ready: receives traffic.
    Healthy,
    /// Not ready: receives none.
    Unhealthy,
    /// Terminating: finishing in-flight work, receives no new traffic.
    Draining,
}

/// A port as the endpoints expose it (`http` → 8080).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointPort {
    /// Matches the Service port's name (empty for an unnamed single port).
    pub name: Option<Arc<str>>,
    /// The port on the endpoint.
    pub port: u16,
}

/// One endpoint address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its IP.
    pub address: IpAddr,
    /// Whether it takes traffic.
    pub health: Health,
    /// Labels of the pod behind it (empty when unknown).
    pub labels: Arc<Labels>,
    /// Its locality.
    pub locality: Arc<Locality>,
    /// The pod behind it, when known.
    pub pod: Option<Arc<str>>,
    /// The cluster it runs in.
    pub cluster: crate::event::ClusterId,
    /// Relative load-balancing weight (1 unless a ServiceEntry says otherwise).
    pub weight: u32,
}

/// Endpoints that share a port list (one EndpointSlice, or one Endpoints subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGroup {
    /// The ports every endpoint of the group exposes.
    pub ports: Arc<[EndpointPort]>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// All endpoints of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointSet {
    /// Groups in a stable order (by slice name).
    pub groups: Vec<EndpointGroup>,
}

impl EndpointSet {
    /// Endpoints serving the Service port named `port_name` (or the only port, when unnamed),
    /// with the endpoint port number.
    pub fn for_port<'a>(
        &'a self,
        port_name: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Endpoint, u16)> + 'a {
        self.groups.iter().flat_map(move |g| {
            let port = g
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name.unwrap_or_default())
                .map(|p| p.port);
            g.endpoints.iter().filter_map(move |e| port.map(|p| (e, p)))
        })
    }

    /// Number of endpoints over all groups.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.endpoints.len()).sum()
    }

    /// True when there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every address, for reverse indexing.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.endpoints.iter().map(|e| e.address))
    }
}

/// An endpoint as its slice describes it, before the join with pods and nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEndpoint {
    pub address: IpAddr,
    pub health: Health,
    pub pod: Option<(Arc<str>, Arc<str>)>,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
}

/// A slice (or Endpoints subset) as stored by the index: compact, not yet joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawGroup {
    pub ports: Arc<[EndpointPort]>,
    pub endpoints: Vec<RawEndpoint>,
}

fn tcp_ports<'a>(
    ports: impl Iterator<Item = (Option<&'a str>, Option<i32>, Option<&'a str>)>,
) -> Arc<[EndpointPort]> {
    ports
        .filter(|(_, _, proto)| proto.unwrap_or("TCP") == "TCP")
        .filter_map(|(name, port, _)| {
            Some(EndpointPort {
                name: name.filter(|n| !n.is_empty()).map(Arc::from),
                port: u16::try_from(port?).ok().filter(|p| *p > 0)?,
            })
        })
        .collect()
}

fn pod_ref(
    namespace: &str,
    target: Option<&core::ObjectReference>,
) -> Option<(Arc<str>, Arc<str>)> {
    let t = target?;
    if t.kind.as_deref().unwrap_or("Pod") != "Pod" {
        return None;
    }
    let name = t.name.as_deref()?;
    Some((
        Arc::from(t.namespace.as_deref().unwrap_or(namespace)),
        Arc::from(name),
    ))
}

impl RawGroup {
    /// From one EndpointSlice; FQDN slices are not routable by IP and are skipped.
    pub fn from_slice(s: &discovery::EndpointSlice) -> Option<RawGroup> {
        if s.address_type == "FQDN" {
            return None;
        }
        let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
        let ports = tcp_ports(
            s.ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_deref(), p.port, p.protocol.as_deref())),
        );
        let mut endpoints = Vec::new();
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let health = if terminating {
                Health::Draining
            } else if ready {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            for addr in &e.addresses {
                let Ok(address) = addr.parse::<IpAddr>() else {
                    continue;
                };
                endpoints.push(RawEndpoint {
                    address,
                    health,
                    pod: pod_ref(namespace, e.target_ref.as_ref()),
                    node: e.node_name.as_deref().map(Arc::from),
                    zone: e.zone.as_deref().map(Arc::from),
                });
            }
        }
        Some(RawGroup { ports, endpoints })
    }

    /// From a v1 Endpoints object: one group per subset.
    pub fn from_endpoints(e: &core::Endpoints) -> Vec<RawGroup> {
        let namespace = e.metadata.namespace.as_deref().unwrap_or_default();
        let mut out = Vec::new();
        for subset in e.subsets.iter().flatten() {
            let ports = tcp_ports(
                subset
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| (p.name.as_deref(), Some(p.port), p.protocol.as_deref())),
            );
            let all = subset
                .addresses
                .iter()
                .flatten()
                .map(|a| (a, Health::Healthy))
                .chain(
                    subset
                        .not_ready_addresses
                        .iter()
                        .flatten()
                        .map(|a| (a, Health::Unhealthy)),
                );
            let endpoints = all
                .filter_map(|(a, health)| {
                    Some(RawEndpoint {
                        address: a.ip.parse().ok()?,
                        health,
                        pod: pod_ref(namespace, a.target_ref.as_ref()),
                        node: a.node_name.as_deref().map(Arc::from),
                        zone: None,
                    })
                })
                .collect();
            out.push(RawGroup { ports, endpoints });
        }
        out
    }
}

type PodKey = (crate::event::ClusterId, Arc<str>, Arc<str>);
type PodByIp = HashMap<(crate::event::ClusterId, IpAddr), crate::snapshot::NsName>;

/// Looks pods and nodes of one cluster up while that cluster's endpoints are joined.
pub(crate) struct Joiner<'a> {
    pub cluster: &'a crate::event::ClusterId,
    pub pods: &'a HashMap<PodKey, Arc<Workload>>,
    pub pods_by_ip: &'a PodByIp,
    pub nodes: &'a HashMap<crate::snapshot::NodeKey, Arc<Node>>,
    pub empty_labels: &'a Arc<Labels>,
    pub empty_locality: &'a Arc<Locality>,
}

impl Joiner<'_> {
    /// Joins one raw group with pods (labels) and nodes (locality).
    pub fn join(&self, raw: &RawGroup) -> EndpointGroup {
        let endpoints = raw.endpoints.iter().map(|e| self.endpoint(e)).collect();
        EndpointGroup {
            ports: raw.ports.clone(),
            endpoints,
        }
    }

    fn endpoint(&self, e: &RawEndpoint) -> Endpoint {
        let c = self.cluster;
        let pod = e
            .pod
            .as_ref()
            .and_then(|(ns, n)| self.pods.get(&(c.clone(), ns.clone(), n.clone())))
            .or_else(|| {
                self.pods_by_ip
                    .get(&(c.clone(), e.address))
                    .and_then(|(ns, n)| self.pods.get(&(c.clone(), ns.clone(), n.clone())))
            });
        let node = e
            .node
            .clone()
            .or_else(|| pod.and_then(|p| p.node_name.clone()))
            .and_then(|n| self.nodes.get(&(c.clone(), n)));
        let locality = match (pod.and_then(|p| p.locality_override.as_ref()), node) {
            (Some(l), _) => l.clone(),
            (None, Some(n)) if !n.locality.is_empty() => n.locality.clone(),
            _ => match e.zone.as_deref() {
                Some(z) if !z.is_empty() => Arc::new(Locality {
                    zone: z.to_string(),
                    ..Locality::default()
                }),
                _ => self.empty_locality.clone(),
            },
        };
        Endpoint {
            address: e.address,
            health: e.health,
            labels: pod
                .map(|p| p.labels.clone())
                .unwrap_or_else(|| self.empty_labels.clone()),
            locality,
            pod: pod.map(|p| p.name.clone()),
            cluster: c.clone(),
            weight: 1,
        }
    }
}
