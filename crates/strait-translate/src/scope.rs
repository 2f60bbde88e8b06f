//! What a proxy sees: the services it gets clusters, endpoints, listeners and routes for.
//!
//! * A service is visible from a namespace when its `exportTo` (the
//!   `networking.istio.io/exportTo` annotation, a ServiceEntry's `exportTo`, else the mesh's
//!   `defaultServiceExportTo`) allows it.
//! * A sidecar's `Sidecar` resource narrows that to its egress hosts (`ns/host`, `./*`, `*/*`,
//!   `~/*`): the one selecting the workload, else its namespace's, else the root
//!   namespace's, as Istio chooses. Its `outboundTrafficPolicy` overrides the mesh's.
//! * Beyond Istio, a gateway sees only what its Gateways' VirtualServices route to (mesh
//!   config `scopeGatewayClusters: false` turns this off).

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use strait_api::istio::{Sidecar, VirtualService};
use strait_api::mesh_config::OutboundMode;
use strait_model::{
    ConfigKey, Labels, MeshSnapshot, Proxy, ProxyKind, Service, ServiceKey, selector_matches,
};

use crate::config::{ConfigIndex, host_matches, resolve_host, visible};

/// A predicate on services.
type ServiceFilter<'a> = Box<dyn Fn(&Service) -> bool + 'a>;

/// The services a class of proxies sees, and what they do with unknown destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// The services (all of them when `None`).
    pub services: Option<Arc<BTreeSet<ServiceKey>>>,
    /// Outbound traffic policy in force.
    pub outbound: OutboundMode,
    /// A fingerprint of the above, to share layers between classes that see the same.
    pub fingerprint: u64,
}

impl Visibility {
    /// Everything, with the mesh's policy.
    pub fn all(snap: &MeshSnapshot) -> Visibility {
        let outbound = snap.mesh.outbound_traffic_policy.mode;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("all", outbound == OutboundMode::RegistryOnly).hash(&mut h);
        Visibility {
            services: None,
            outbound,
            fingerprint: h.finish(),
        }
    }

    /// True when the service is visible.
    pub fn sees(&self, key: &ServiceKey) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(key))
    }
}

/// The Sidecar that applies to a workload: one of its namespace selecting it (oldest), else
/// its namespace's selector-less one, else the root namespace's selector-less one.
pub fn sidecar_for<'a>(
    snap: &'a MeshSnapshot,
    namespace: &str,
    labels: &Labels,
) -> Option<(&'a ConfigKey, &'a Arc<Sidecar>)> {
    let sidecars = &snap.config.sidecars;
    let in_ns = |ns: String| sidecars.iter().filter(move |(k, _)| *k.namespace == *ns);
    let selecting = in_ns(namespace.to_string()).find(|(_, s)| {
        s.spec
            .workload_selector
            .as_ref()
            .is_some_and(|w| !w.labels.is_empty() && selector_matches(&w.labels, labels))
    });
    let ns_default = || {
        in_ns(namespace.to_string()).find(|(_, s)| {
            s.spec
                .workload_selector
                .as_ref()
                .is_none_or(|w| w.labels.is_empty())
        })
    };
    let root = &*snap.mesh.root_namespace;
    let root_default = || {
        in_ns(root.to_string()).find(|(_, s)| {
            s.spec
                .workload_selector
                .as_ref()
                .is_none_or(|w| w.labels.is_empty())
        })
    };
    selecting.or_else(ns_default).or_else(root_default)
}

/// True when an egress host (`ns/host`) of a Sidecar in `sidecar_ns` admits the service.
fn egress_admits(entry: &str, sidecar_ns: &str, proxy_ns: &str, svc: &Service) -> bool {
    let (ns, host) = entry.split_once('/').unwrap_or(("*", entry));
    let ns_ok = match ns {
        "*" => true,
        "~" => false,
        "." => {
            *svc.key.namespace == *sidecar_ns
                || (sidecar_ns.is_empty() && *svc.key.namespace == *proxy_ns)
        }
        n => *svc.key.namespace == *n,
    };
    ns_ok && host_matches(host, &svc.hostname)
}

/// The key that decides a class's visibility: kind, namespace, the Sidecar in force, and
/// (gateways) the Gateways selecting it.
pub fn visibility_key(
    snap: &MeshSnapshot,
    proxy: &Proxy,
    gateways: &[ConfigKey],
) -> (ProxyKind, Arc<str>, Option<ConfigKey>, Vec<ConfigKey>) {
    let sidecar = match proxy.node.kind {
        ProxyKind::Sidecar => {
            sidecar_for(snap, &proxy.namespace, &proxy.labels).map(|(k, _)| k.clone())
        }
        ProxyKind::Router => None,
    };
    (
        proxy.node.kind,
        proxy.namespace.clone(),
        sidecar,
        gateways.to_vec(),
    )
}

/// The services a gateway's bound VirtualServices route to.
fn gateway_destinations(
    snap: &MeshSnapshot,
    config: &ConfigIndex,
    gateways: &[ConfigKey],
) -> BTreeSet<ServiceKey> {
    let mut out = BTreeSet::new();
    let mut add = |vs: &VirtualService, vs_ns: &str, host: &str| {
        let h = resolve_host(host, vs_ns, &snap.domain);
        if let Some(s) = snap.service_by_host(&h) {
            out.insert(s.key.clone());
        }
        let _ = vs;
    };
    for g in gateways {
        for r in config.gateway_vs(&format!("{}/{}", g.namespace, g.name)) {
            let spec = &r.vs.spec;
            for rule in &spec.http {
                for d in &rule.route {
                    add(&r.vs, r.namespace(), &d.destination.host);
                }
                if let Some(m) = &rule.mirror {
                    add(&r.vs, r.namespace(), &m.host);
                }
                for m in &rule.mirrors {
                    add(&r.vs, r.namespace(), &m.destination.host);
                }
            }
            for rule in &spec.tcp {
                for d in &rule.route {
                    add(&r.vs, r.namespace(), &d.destination.host);
                }
            }
            for rule in &spec.tls {
                for d in &rule.route {
                    add(&r.vs, r.namespace(), &d.destination.host);
                }
            }
        }
    }
    out
}

/// Computes the visibility of a proxy (the same for every proxy with its
/// [`visibility_key`]).
pub fn visibility(
    snap: &MeshSnapshot,
    config: &ConfigIndex,
    proxy: &Proxy,
    gateways: &[ConfigKey],
) -> Visibility {
    let ns = &*proxy.namespace;
    let defaults = &snap.mesh.default_service_export_to;
    let exported = |s: &Service| {
        let export: Vec<String> = s.export_to.iter().map(|e| e.to_string()).collect();
        visible(&export, defaults, &s.key.namespace, ns)
    };
    let mut outbound = snap.mesh.outbound_traffic_policy.mode;
    let mut restricted = snap.services.values().any(|s| !exported(s));
    let mut filter: Option<ServiceFilter<'_>> = None;
    match proxy.node.kind {
        ProxyKind::Sidecar => {
            if let Some((key, sc)) = sidecar_for(snap, ns, &proxy.labels) {
                if let Some(p) = &sc.spec.outbound_traffic_policy {
                    outbound = match p.mode {
                        strait_api::istio::OutboundTrafficPolicyMode::RegistryOnly => {
                            OutboundMode::RegistryOnly
                        }
                        strait_api::istio::OutboundTrafficPolicyMode::AllowAny => {
                            OutboundMode::AllowAny
                        }
                    };
                }
                if !sc.spec.egress.is_empty() {
                    let sidecar_ns = key.namespace.clone();
                    // The root namespace's default speaks for every namespace: `.` is the
                    // proxy's own.
                    let own = if *sidecar_ns == *snap.mesh.root_namespace {
                        Arc::from(ns)
                    } else {
                        sidecar_ns
                    };
                    let egress = sc.spec.egress.clone();
                    filter = Some(Box::new(move |s: &Service| {
                        egress.iter().any(|l| {
                            let port_ok = l
                                .port
                                .as_ref()
                                .is_none_or(|p| s.port(p.number as u16).is_some());
                            port_ok && l.hosts.iter().any(|h| egress_admits(h, &own, ns, s))
                        })
                    }));
                    restricted = true;
                }
            }
        }
        ProxyKind::Router => {
            if snap.mesh.scope_gateway_clusters.unwrap_or(true) {
                let dests = gateway_destinations(snap, config, gateways);
                filter = Some(Box::new(move |s: &Service| dests.contains(&s.key)));
                restricted = true;
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (outbound == OutboundMode::RegistryOnly).hash(&mut h);
    if !restricted {
        "all".hash(&mut h);
        return Visibility {
            services: None,
            outbound,
            fingerprint: h.finish(),
        };
    }
    let set: BTreeSet<ServiceKey> = snap
        .services
        .values()
        .filter(|s| exported(s) && filter.as_ref().is_none_or(|f| f(s)))
        .map(|s| s.key.clone())
        .collect();
    set.hash(&mut h);
    Visibility {
        services: Some(Arc::new(set)),
        outbound,
        fingerprint: h.finish(),
    }
}
