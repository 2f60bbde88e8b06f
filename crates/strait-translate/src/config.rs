//! Which Istio config applies to what: host names, `exportTo` visibility, VirtualServices
//! per gateway and host (with Istio's merge and conflict rules), DestinationRules per host
//! and proxy (with Istio's lookup order and merging), and the problems found on the way.
//!
//! [`ConfigIndex`] is built once per config change from a snapshot; translation then asks it
//! questions. Everything here is pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use strait_api::istio::{
    DestinationRule, DestinationRuleSpec, Gateway, Subset, TrafficPolicy, VirtualService,
};
use strait_api::{Kind, Severity};
use strait_model::{ConfigKey, Labels, MeshSnapshot, selector_matches};

/// The gateway name sidecars use.
pub const MESH: &str = "mesh";

/// A problem found while resolving config: reported by `strait validate`, logged by `serve`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigProblem {
    /// Error or warning.
    pub severity: Severity,
    /// The object concerned.
    pub kind: Kind,
    /// Its namespace/name.
    pub object: ConfigKey,
    /// The field concerned.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Expands a host as Istio does: a short name (no dot) is a service in `namespace`; anything
/// with a dot, a wildcard or an IP is taken as written.
pub fn resolve_host(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.contains('*') || host.contains(':') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.svc.{domain}", host.to_ascii_lowercase())
    }
}

/// True when `pattern` (`a.b`, `*.b`, `*`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// How specific a host pattern is (exact names beat longer wildcards beat shorter ones).
fn specificity(pattern: &str) -> (bool, usize) {
    (!pattern.starts_with('*'), pattern.len())
}

/// True when an object of `obj_ns` with this `exportTo` is visible from `viewer_ns`. An empty
/// list means the mesh default (`defaults`; all namespaces when that is empty too).
pub fn visible(export_to: &[String], defaults: &[String], obj_ns: &str, viewer_ns: &str) -> bool {
    let list = if export_to.is_empty() {
        defaults
    } else {
        export_to
    };
    if list.is_empty() {
        return true;
    }
    list.iter().any(|e| match e.as_str() {
        "*" => true,
        "~" => false,
        "." => obj_ns == viewer_ns,
        ns => ns == viewer_ns,
    })
}

/// A VirtualService with its hosts and gateways resolved.
#[derive(Debug, Clone)]
pub struct VsRef {
    /// Namespace and name.
    pub key: ConfigKey,
    /// The object.
    pub vs: Arc<VirtualService>,
    /// Hosts, short names expanded in the VirtualService's namespace.
    pub hosts: Vec<String>,
    /// Gateways as `namespace/name`, or `mesh`.
    pub gateways: Vec<String>,
}

impl VsRef {
    /// The VirtualService's namespace.
    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }
}

/// A DestinationRule after Istio's merging: the traffic policy of the first rule for the
/// host, the subsets of all of them (first definition of a name wins).
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveDr {
    /// The rules merged, oldest first.
    pub sources: Vec<ConfigKey>,
    /// Their namespace (where `credentialName` secrets are looked up).
    pub namespace: Arc<str>,
    /// The merged spec.
    pub spec: DestinationRuleSpec,
}

impl EffectiveDr {
    /// A subset by name.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.spec.subset(name)
    }

    /// The traffic policy for `port`, and for `subset` when given: the subset's policy
    /// overrides the rule's, and a port's settings override both, field by field, as Istio
    /// does.
    pub fn policy(&self, port: u16, subset: Option<&str>) -> TrafficPolicy {
        // Istio's order: the rule's policy with its port settings for this port, then the
        // subset's policy over it, then the subset's own port settings.
        let mut p = with_port_settings(self.spec.traffic_policy.clone().unwrap_or_default(), port);
        if let Some(sp) = subset
            .and_then(|s| self.subset(s))
            .and_then(|s| s.traffic_policy.as_ref())
        {
            p = merge_policy(&p, sp);
            p = with_port_settings(p, port);
        }
        p
    }
}

/// Applies a policy's `portLevelSettings` entry for `port` over its top-level fields.
fn with_port_settings(mut p: TrafficPolicy, port: u16) -> TrafficPolicy {
    if let Some(pl) = p.port_policy(u32::from(port)).cloned() {
        if pl.load_balancer.is_some() {
            p.load_balancer = pl.load_balancer;
        }
        if pl.connection_pool.is_some() {
            p.connection_pool = pl.connection_pool;
        }
        if pl.outlier_detection.is_some() {
            p.outlier_detection = pl.outlier_detection;
        }
        if pl.tls.is_some() {
            p.tls = pl.tls;
        }
    }
    p.port_level_settings.clear();
    p
}

/// `child` over `parent`: each top-level field the child sets replaces the parent's.
fn merge_policy(parent: &TrafficPolicy, child: &TrafficPolicy) -> TrafficPolicy {
    let mut out = parent.clone();
    if child.load_balancer.is_some() {
        out.load_balancer = child.load_balancer.clone();
    }
    if child.connection_pool.is_some() {
        out.connection_pool = child.connection_pool.clone();
    }
    if child.outlier_detection.is_some() {
        out.outlier_detection = child.outlier_detection.clone();
    }
    if child.tls.is_some() {
        out.tls = child.tls.clone();
    }
    // Only the child's own port settings apply from here on.
    out.port_level_settings = child.port_level_settings.clone();
    if child.tunnel.is_some() {
        out.tunnel = child.tunnel.clone();
    }
    if child.proxy_protocol.is_some() {
        out.proxy_protocol = child.proxy_protocol.clone();
    }
    out
}

#[derive(Debug, Clone)]
struct DrEntry {
    key: ConfigKey,
    dr: Arc<DestinationRule>,
    host: String,
}

/// Istio's order for config objects: oldest first, then by namespace and name.
fn creation_order<S>(
    a: &(ConfigKey, Arc<strait_api::istio::IstioObject<S>>),
) -> (Option<String>, ConfigKey) {
    let ts =
        a.1.metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string));
    // Objects without a timestamp (files) sort after timestamped ones, by name.
    (ts.or(Some("~".into())), a.0.clone())
}

/// Everything translation asks about Istio config, precomputed for one snapshot.
#[derive(Debug, Default)]
pub struct ConfigIndex {
    /// VirtualServices bound to the mesh, oldest first.
    mesh_vs: Vec<VsRef>,
    /// VirtualServices by gateway (`ns/name`), oldest first.
    gateway_vs: HashMap<String, Vec<VsRef>>,
    /// DestinationRules by namespace, oldest first.
    drs: HashMap<Arc<str>, Vec<DrEntry>>,
    /// Gateways, by key.
    gateways: Vec<(ConfigKey, Arc<Gateway>)>,
    /// LocalRateLimits by resolved host, oldest first.
    rate_limits: HashMap<String, Vec<(ConfigKey, Arc<strait_api::policy::LocalRateLimit>)>>,
    root_namespace: String,
    vs_defaults: Vec<String>,
    dr_defaults: Vec<String>,
    problems: Vec<ConfigProblem>,
}

impl ConfigIndex {
    /// Indexes the config of `snap`.
    pub fn new(snap: &MeshSnapshot) -> ConfigIndex {
        let domain = &*snap.domain;
        let mut idx = ConfigIndex {
            root_namespace: snap.mesh.root_namespace.clone(),
            vs_defaults: snap.mesh.default_virtual_service_export_to.clone(),
            dr_defaults: snap.mesh.default_destination_rule_export_to.clone(),
            ..Default::default()
        };
        let mut vss: Vec<(ConfigKey, Arc<VirtualService>)> = snap
            .config
            .virtual_services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vss.sort_by_key(creation_order);
        for (key, vs) in vss {
            if vs.spec.is_delegate() {
                continue;
            }
            let ns = &*key.namespace;
            let hosts: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .map(|h| resolve_host(h, ns, domain))
                .collect();
            let gateways: Vec<String> = vs
                .spec
                .effective_gateways()
                .into_iter()
                .map(|g| qualify_gateway(g, ns))
                .collect();
            let r = VsRef {
                key: key.clone(),
                vs: vs.clone(),
                hosts,
                gateways: gateways.clone(),
            };
            for g in gateways {
                if g == MESH {
                    idx.mesh_vs.push(r.clone());
                } else {
                    idx.gateway_vs.entry(g).or_default().push(r.clone());
                }
            }
        }
        let mut drs: Vec<(ConfigKey, Arc<DestinationRule>)> = snap
            .config
            .destination_rules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        drs.sort_by_key(creation_order);
        for (key, dr) in drs {
            let host = resolve_host(&dr.spec.host, &key.namespace, domain);
            idx.drs
                .entry(key.namespace.clone())
                .or_default()
                .push(DrEntry { key, dr, host });
        }
        let mut lrls: Vec<(ConfigKey, Arc<strait_api::policy::LocalRateLimit>)> = snap
            .config
            .local_rate_limits
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        lrls.sort_by_key(creation_order);
        for (key, l) in lrls {
            let host = resolve_host(&l.spec.host, &key.namespace, domain);
            idx.rate_limits.entry(host).or_default().push((key, l));
        }
        idx.gateways = snap
            .config
            .gateways
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        idx.find_mesh_conflicts();
        idx
    }

    /// The LocalRateLimit for requests to `host` on `port`: one for that port wins over one
    /// for all ports; among equals the oldest.
    pub fn rate_limit(&self, host: &str, port: u16) -> Option<&strait_api::policy::LocalRateLimit> {
        let all = self.rate_limits.get(host)?;
        all.iter()
            .find(|(_, l)| l.spec.port == Some(u32::from(port)))
            .or_else(|| all.iter().find(|(_, l)| l.spec.port.is_none()))
            .map(|(_, l)| &**l)
    }

    /// Problems found while indexing (conflicting VirtualServices).
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    fn find_mesh_conflicts(&mut self) {
        // Two mesh VirtualServices for the same host visible in the same namespace conflict;
        // Istio uses the oldest.
        let mut owner: BTreeMap<&str, &VsRef> = BTreeMap::new();
        let mut problems = Vec::new();
        for r in &self.mesh_vs {
            for h in &r.hosts {
                match owner.get(h.as_str()) {
                    Some(first) if first.key != r.key => problems.push(ConfigProblem {
                        severity: Severity::Warning,
                        kind: Kind::VirtualService,
                        object: r.key.clone(),
                        field: "spec.hosts".into(),
                        message: format!(
                            "host {h} is also defined by VirtualService {}, which takes precedence for sidecars that see both (as in Istio, the oldest wins; objects without a creation time go by namespace/name); merge them or restrict one with exportTo",
                            first.key
                        ),
                    }),
                    Some(_) => {}
                    None => {
                        owner.insert(h, r);
                    }
                }
            }
        }
        self.problems.extend(problems);
    }

    /// The mesh VirtualService for `host` as seen from `viewer_ns`: the oldest visible one whose
    /// hosts cover it (exact hosts beat wildcards).
    pub fn mesh_vs_for(&self, host: &str, viewer_ns: &str) -> Option<&VsRef> {
        let mut best: Option<(&VsRef, (bool, usize))> = None;
        for r in &self.mesh_vs {
            if !visible(
                &r.vs.spec.export_to,
                &self.vs_defaults,
                r.namespace(),
                viewer_ns,
            ) {
                continue;
            }
            for pat in &r.hosts {
                if host_matches(pat, host) {
                    let s = specificity(pat);
                    if best.as_ref().is_none_or(|(_, b)| s > *b) {
                        best = Some((r, s));
                    }
                }
            }
        }
        best.map(|(r, _)| r)
    }

    /// Every mesh VirtualService visible from `viewer_ns` (for hosts that are not services).
    pub fn mesh_vs_visible<'a>(
        &'a self,
        viewer_ns: &'a str,
    ) -> impl Iterator<Item = &'a VsRef> + 'a {
        self.mesh_vs.iter().filter(move |r| {
            visible(
                &r.vs.spec.export_to,
                &self.vs_defaults,
                r.namespace(),
                viewer_ns,
            )
        })
    }

    /// VirtualServices bound to gateway `ns/name`, oldest first.
    pub fn gateway_vs(&self, gateway: &str) -> &[VsRef] {
        self.gateway_vs
            .get(gateway)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Gateways whose selector matches a gateway proxy with `labels` in `namespace`. With
    /// `scope_to_namespace`, only Gateways of the proxy's namespace apply.
    pub fn gateways_for(
        &self,
        labels: &Labels,
        namespace: &str,
        scope_to_namespace: bool,
    ) -> Vec<(&ConfigKey, &Arc<Gateway>)> {
        self.gateways
            .iter()
            .filter(|(k, g)| {
                !g.spec.selector.is_empty()
                    && selector_matches(&g.spec.selector, labels)
                    && (!scope_to_namespace || &*k.namespace == namespace)
            })
            .map(|(k, g)| (k, g))
            .collect()
    }

    /// The DestinationRule for `host` (a service in `service_ns`, if it is one) as seen by a
    /// proxy in `proxy_ns` with `labels`: Istio's order is the proxy's namespace, then the
    /// service's, then the root namespace; rules with a workload selector apply only to
    /// workloads they select; within a namespace the most specific host wins and rules for
    /// the same host are merged.
    pub fn destination_rule(
        &self,
        host: &str,
        service_ns: Option<&str>,
        proxy_ns: &str,
        labels: &Labels,
    ) -> Option<EffectiveDr> {
        let mut order: Vec<&str> = vec![proxy_ns];
        if let Some(s) = service_ns
            && s != proxy_ns
        {
            order.push(s);
        }
        if !order.contains(&self.root_namespace.as_str()) {
            order.push(&self.root_namespace);
        }
        for ns in order {
            let Some(entries) = self.drs.get(ns) else {
                continue;
            };
            let applicable: Vec<&DrEntry> = entries
                .iter()
                .filter(|e| {
                    host_matches(&e.host, host)
                        && (ns == proxy_ns
                            || visible(&e.dr.spec.export_to, &self.dr_defaults, ns, proxy_ns))
                        && e.dr.spec.workload_selector.as_ref().is_none_or(|ws| {
                            ns == proxy_ns && selector_matches(&ws.match_labels, labels)
                        })
                })
                .collect();
            if applicable.is_empty() {
                continue;
            }
            // Selector rules take precedence over namespace-wide ones; then specificity.
            let best = applicable
                .iter()
                .map(|e| (e.dr.spec.workload_selector.is_some(), specificity(&e.host)))
                .max()?;
            let chosen: Vec<&DrEntry> = applicable
                .into_iter()
                .filter(|e| (e.dr.spec.workload_selector.is_some(), specificity(&e.host)) == best)
                .collect();
            let mut spec = chosen[0].dr.spec.clone();
            let mut names: BTreeSet<String> = spec.subsets.iter().map(|s| s.name.clone()).collect();
            for e in &chosen[1..] {
                if spec.traffic_policy.is_none() {
                    spec.traffic_policy = e.dr.spec.traffic_policy.clone();
                }
                for s in &e.dr.spec.subsets {
                    if names.insert(s.name.clone()) {
                        spec.subsets.push(s.clone());
                    }
                }
            }
            return Some(EffectiveDr {
                sources: chosen.iter().map(|e| e.key.clone()).collect(),
                namespace: Arc::from(ns),
                spec,
            });
        }
        None
    }

    /// A fingerprint of everything that makes DestinationRule resolution differ between
    /// proxies: proxies with equal fingerprints resolve every host to the same rule, so their
    /// clusters and endpoints are shared.
    pub fn dr_scope(&self, proxy_ns: &str, labels: &Labels) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (ns, entries) in &self.drs {
            for e in entries {
                let visible_here = if &**ns == proxy_ns {
                    true
                } else {
                    visible(&e.dr.spec.export_to, &self.dr_defaults, ns, proxy_ns)
                };
                let selected =
                    e.dr.spec
                        .workload_selector
                        .as_ref()
                        .map(|ws| &**ns == proxy_ns && selector_matches(&ws.match_labels, labels));
                // Only what can differ between namespaces matters: rules local to the proxy's
                // namespace, rules hidden from it, and selector rules.
                let local = &**ns == proxy_ns;
                if local || !visible_here || selected.is_some() {
                    (&e.key, local, visible_here, selected).hash(&mut h);
                }
            }
        }
        h.finish()
    }

    /// A fingerprint of the VirtualService rules whose source conditions (sourceLabels,
    /// sourceNamespace) this proxy meets, so proxies that see the same rules share routes.
    pub fn source_scope(&self, proxy_ns: &str, labels: &Labels) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in &self.mesh_vs {
            for (i, rule) in r.vs.spec.http.iter().enumerate() {
                for (j, m) in rule.matches.iter().enumerate() {
                    if m.source_labels.is_empty() && m.source_namespace.is_empty() {
                        continue;
                    }
                    let ok = selector_matches(&m.source_labels, labels)
                        && (m.source_namespace.is_empty() || m.source_namespace == proxy_ns);
                    (&r.key, i, j, ok).hash(&mut h);
                }
            }
            for (i, rule) in r.vs.spec.tcp.iter().enumerate() {
                for (j, m) in rule.matches.iter().enumerate() {
                    if m.source_labels.is_empty() && m.source_namespace.is_empty() {
                        continue;
                    }
                    let ok = selector_matches(&m.source_labels, labels)
                        && (m.source_namespace.is_empty() || m.source_namespace == proxy_ns);
                    (&r.key, "tcp", i, j, ok).hash(&mut h);
                }
            }
        }
        h.finish()
    }
}

/// `name` or `ns/name` as `ns/name` (relative to the VirtualService's namespace); `mesh`
/// stays `mesh`.
pub fn qualify_gateway(g: &str, vs_ns: &str) -> String {
    if g == MESH {
        return MESH.to_string();
    }
    match g.split_once('/') {
        Some((ns, name)) => format!("{ns}/{name}"),
        // A dotted name is `name.namespace.svc.<domain>`, as some manifests write it.
        None => match g.split_once('.') {
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(vs_ns);
                format!("{ns}/{name}")
            }
            None => format!("{vs_ns}/{g}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            resolve_host("reviews", "shop", "cluster.local"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.other.svc.cluster.local", "shop", "cluster.local"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("*.example.com", "shop", "cluster.local"),
            "*.example.com"
        );
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches("a.b", "a.b"));
        assert!(specificity("a.example.com") > specificity("*.example.com"));
        assert!(specificity("*.a.example.com") > specificity("*.example.com"));
    }

    #[test]
    fn subset_policy_beats_top_level_port_settings() {
        let spec: DestinationRuleSpec = serde_json::from_value(serde_json::json!({
            "host": "r",
            "trafficPolicy": {
                "loadBalancer": {"simple": "RANDOM"},
                "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "LEAST_REQUEST"}}],
            },
            "subsets": [
                {"name": "a", "labels": {"v": "a"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
                {"name": "b", "labels": {"v": "b"}, "trafficPolicy": {
                    "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "PASSTHROUGH"}}]}},
                {"name": "c", "labels": {"v": "c"}},
            ],
        }))
        .expect("spec");
        let dr = EffectiveDr {
            sources: vec![],
            namespace: "ns".into(),
            spec,
        };
        let lb = |port, subset| dr.policy(port, subset).load_balancer.and_then(|l| l.simple);
        use strait_api::istio::SimpleLb::*;
        assert_eq!(lb(80, None), Some(LeastRequest));
        assert_eq!(lb(81, None), Some(Random));
        assert_eq!(lb(80, Some("a")), Some(RoundRobin));
        assert_eq!(lb(80, Some("b")), Some(Passthrough));
        assert_eq!(lb(81, Some("b")), Some(Random));
        assert_eq!(lb(80, Some("c")), Some(LeastRequest));
    }

    #[test]
    fn export_to() {
        let v = |e: &[&str], d: &[&str], o: &str, w: &str| {
            visible(
                &e.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &d.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                o,
                w,
            )
        };
        assert!(v(&[], &[], "a", "b"));
        assert!(v(&["*"], &[], "a", "b"));
        assert!(v(&["."], &[], "a", "a"));
        assert!(!v(&["."], &[], "a", "b"));
        assert!(v(&["b"], &[], "a", "b"));
        assert!(!v(&["~"], &[], "a", "a"));
        assert!(!v(&[], &["."], "a", "b"));
    }

    #[test]
    fn gateways() {
        assert_eq!(qualify_gateway("mesh", "x"), "mesh");
        assert_eq!(qualify_gateway("gw", "x"), "x/gw");
        assert_eq!(qualify_gateway("istio-system/gw", "x"), "istio-system/gw");
        assert_eq!(
            qualify_gateway("gw.istio-system.svc.cluster.local", "x"),
            "istio-system/gw"
        );
    }
}
