//! Workloads (pods), nodes and namespaces in compact form.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::k8s_openapi::api::core::v1 as core;

/// Labels, shared between a pod and its endpoints.
pub type Labels = BTreeMap<String, String>;

/// Where something runs: region, zone, subzone (any may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// `topology.kubernetes.io/region`.
    pub region: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: String,
    /// `topology.istio.io/subzone`.
    pub subzone: String,
}

impl Locality {
    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Parses Istio's `region/zone/subzone` spelling (the `istio-locality` label uses dots:
    /// `region.zone.subzone`, also accepted).
    pub fn parse(s: &str) -> Locality {
        let sep = if s.contains('/') { '/' } else { '.' };
        let mut it = s.splitn(3, sep);
        Locality {
            region: it.next().unwrap_or_default().to_string(),
            zone: it.next().unwrap_or_default().to_string(),
            subzone: it.next().unwrap_or_default().to_string(),
        }
    }

    /// Reads the topology labels of a node (or any label map).
    pub fn from_labels(labels: &Labels) -> Locality {
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k))
                .cloned()
                .unwrap_or_default()
        };
        Locality {
            region: get(&[
                "topology.kubernetes.io/region",
                "failure-domain.beta.kubernetes.io/region",
            ]),
            zone: get(&[
                "topology.kubernetes.io/zone",
                "failure-domain.beta.kubernetes.io/zone",
            ]),
            subzone: get(&["topology.istio.io/subzone"]),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// A Node: only its locality matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name.
    pub name: Arc<str>,
    /// Locality from its topology labels.
    pub locality: Arc<Locality>,
}

impl Node {
    /// From a Kubernetes Node.
    pub fn from_k8s(n: &core::Node) -> Node {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        Node {
            name: n.metadata.name.as_deref().unwrap_or_default().into(),
            locality: Arc::new(Locality::from_labels(&labels)),
        }
    }
}

/// A Namespace: its labels decide injection and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace name.
    pub name: Arc<str>,
    /// Its labels.
    pub labels: Arc<Labels>,
}

impl Namespace {
    /// From a Kubernetes Namespace.
    pub fn from_k8s(n: &core::Namespace) -> Namespace {
        Namespace {
            name: n.metadata.name.as_deref().unwrap_or_default().into(),
            labels: Arc::new(n.metadata.labels.clone().unwrap_or_default()),
        }
    }
}

/// A workload instance: a Pod, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The cluster it runs in.
    pub cluster: crate::event::ClusterId,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// Pod IPs (first is the primary).
    pub ips: Vec<IpAddr>,
    /// Pod labels.
    pub labels: Arc<Labels>,
    /// The node it runs on.
    pub node_name: Option<Arc<str>>,
    /// Its service account.
    pub service_account: Option<Arc<str>>,
    /// Named container ports (`http` → 8080), to resolve named target ports.
    pub named_ports: Vec<(Arc<str>, u16)>,
    /// An explicit `istio-locality` label, which wins over the node's.
    pub locality_override: Option<Arc<Locality>>,
    /// Runs in the node's network namespace (its IP is the node's, shared with others).
    pub host_network: bool,
}

impl Workload {
    /// From a Kubernetes Pod of `cluster`.
    pub fn from_k8s(p: &core::Pod, cluster: &crate::event::ClusterId) -> Workload {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = Vec::new();
        // A finished pod's IP is free for reuse by another pod: it no longer identifies it.
        let finished = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        if let Some(status) = p.status.as_ref().filter(|_| !finished) {
            for ip in status
                .pod_ips
                .iter()
                .flatten()
                .map(|i| i.ip.as_str())
                .chain(status.pod_ip.as_deref())
            {
                if let Ok(ip) = ip.parse()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
            // podIP is the primary address; keep it first.
            if let Some(primary) = status
                .pod_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok())
                && let Some(pos) = ips.iter().position(|i| *i == primary)
            {
                ips.swap(0, pos);
            }
        }
        let spec = p.spec.as_ref();
        let named_ports = spec
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|port| {
                        let name = port.name.as_deref()?;
                        let num = u16::try_from(port.container_port).ok()?;
                        Some((Arc::from(name), num))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let locality_override = labels
            .get("istio-locality")
            .map(|l| Arc::new(Locality::parse(l)));
        Workload {
            cluster: cluster.clone(),
            namespace: p.metadata.namespace.as_deref().unwrap_or_default().into(),
            name: p.metadata.name.as_deref().unwrap_or_default().into(),
            ips,
            labels: Arc::new(labels),
            node_name: spec.and_then(|s| s.node_name.as_deref()).map(Arc::from),
            service_account: spec
                .and_then(|s| s.service_account_name.as_deref())
                .map(Arc::from),
            named_ports,
            locality_override,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        }
    }

    /// The container port a named target port refers to.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, p)| *p)
    }
}

/// True if every key/value of `selector` is in `labels`. An empty selector matches everything.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_parsing() {
        let l = Locality::parse("us-east1/us-east1-b/rack1");
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
            ("us-east1", "us-east1-b", "rack1")
        );
        let l = Locality::parse("eu.eu-a");
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
            ("eu", "eu-a", "")
        );
    }

    #[test]
    fn locality_from_node_labels() {
        let labels: Labels = [
            ("topology.kubernetes.io/region", "r1"),
            ("failure-domain.beta.kubernetes.io/zone", "z-old"),
            ("topology.istio.io/subzone", "s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let l = Locality::from_labels(&labels);
        assert_eq!(l.to_string(), "r1/z-old/s");
    }

    #[test]
    fn selectors() {
        let labels: Labels = [("app", "a"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut sel = Labels::new();
        assert!(selector_matches(&sel, &labels));
        sel.insert("app".into(), "a".into());
        assert!(selector_matches(&sel, &labels));
        sel.insert("version".into(), "v2".into());
        assert!(!selector_matches(&sel, &labels));
    }
}
