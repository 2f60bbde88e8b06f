//! Sidecar: narrows what the sidecar proxies of some workloads listen on and can reach: the
//! inbound ports they accept, the hosts they get outbound configuration for, and what happens
//! to traffic for hosts outside the registry.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::common::{
    Destination, Protocol, UNIX_PREFIX, WorkloadSelector, check_destination, check_namespaced_host,
    check_port, check_port_name, check_protocol, check_selector_labels, is_default, is_ip, is_port,
    validate_fqdn, validate_unix_path,
};
use super::destination_rule::check_connection_pool;
use super::gateway::check_server_tls;
use super::{ConnectionPoolSettings, ServerTlsMode, ServerTlsSettings, Spec};
use crate::validate::Issues;

/// The content of a Sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The workloads (in the Sidecar's namespace) this applies to; none means every workload
    /// in the namespace without a more specific Sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Inbound listeners; none means Istio derives them from the workload's services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners and the hosts each may reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for all inbound traffic, unless a listener sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What to do with traffic to hosts the registry does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

impl SidecarSpec {
    /// True when the Sidecar has no workload selector (it is the namespace default).
    pub fn is_namespace_default(&self) -> bool {
        self.workload_selector.is_none()
    }
}

/// An inbound listener of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioIngressListener {
    /// The port traffic arrives on.
    pub port: SidecarPort,
    /// Address to listen on (an IP); default: all addresses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// How traffic reaches the listener.
    #[serde(default, skip_serializing_if = "is_default")]
    pub capture_mode: CaptureMode,
    /// Where the application listens: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`,
    /// `[::]:PORT` or `unix:///path`; empty to forward to the original destination.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// Terminate TLS on this port (SIMPLE or MUTUAL, with files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener of the sidecar and the hosts it exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioEgressListener {
    /// The port; none makes this the catch-all listener (it must come last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// Address to listen on: an IP, or `unix://` and a path (with port number 0).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// How traffic reaches the listener.
    #[serde(default, skip_serializing_if = "is_default")]
    pub capture_mode: CaptureMode,
    /// Hosts exposed, as `namespace/host`: the namespace may be `*` (any), `.` (the
    /// Sidecar's own) or `~` (none), or `~ns` to exclude `ns`; the host may be `*`.
    pub hosts: Vec<String>,
}

impl IstioEgressListener {
    /// The hosts as `(namespace, host)` pairs.
    pub fn namespaced_hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts.iter().filter_map(|h| h.split_once('/'))
    }
}

/// A port of a Sidecar listener.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    /// The port number; 0 with a `unix://` bind.
    #[serde(default)]
    pub number: u32,
    /// The protocol (HTTP, HTTP2, GRPC, TCP, HTTPS, TLS...); empty to sniff.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// A name for the port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated and without effect on Sidecars.
    #[serde(default, skip_serializing_if = "is_default")]
    pub target_port: u32,
}

impl SidecarPort {
    /// The port's protocol, parsed.
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }
}

/// How traffic reaches a sidecar listener.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The namespace's or mesh's default.
    #[default]
    Default,
    /// Redirected by iptables.
    Iptables,
    /// Not captured: the application connects to the listener directly.
    None,
}

/// Handling of outbound traffic to hosts the registry does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// Allow or refuse such traffic.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: OutboundTrafficPolicyMode,
    /// With ALLOW_ANY, send such traffic through this proxy service instead of directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// Whether unknown outbound destinations are reachable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Only hosts in the registry are reachable.
    #[default]
    RegistryOnly,
    /// Unknown hosts are passed through.
    AllowAny,
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Spec for SidecarSpec {
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues) {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        if let Some(sel) = &self.workload_selector {
            check_selector_labels(issues, "spec.workloadSelector.labels", &sel.labels, true);
        }
        if self.egress.is_empty()
            && self.ingress.is_empty()
            && self.outbound_traffic_policy.is_none()
            && self.inbound_connection_pool.is_none()
        {
            issues.error(
                "spec",
                "empty Sidecar: set at least one of ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
            );
            return;
        }

        let mut ports = HashSet::new();
        for (i, l) in self.ingress.iter().enumerate() {
            check_ingress(issues, &format!("spec.ingress[{i}]"), l, &mut ports);
        }
        if let Some(p) = &self.inbound_connection_pool {
            check_connection_pool(issues, "spec.inboundConnectionPool", p);
        }

        let mut ports = HashSet::new();
        let mut unix_binds = HashSet::new();
        let last = self.egress.len().saturating_sub(1);
        for (i, l) in self.egress.iter().enumerate() {
            let at = format!("spec.egress[{i}]");
            match &l.port {
                None if i != last => issues.error(
                    format!("{at}.port"),
                    "only the last egress listener may leave out the port",
                ),
                None => {}
                Some(p) => {
                    check_egress_port(issues, &at, p, l);
                    if p.number == 0 {
                        if !unix_binds.insert(l.bind.as_str()) {
                            issues.error(
                                format!("{at}.bind"),
                                "another egress listener binds the same unix domain socket",
                            );
                        }
                    } else if !ports.insert(p.number) {
                        issues.error(
                            format!("{at}.port.number"),
                            format!("another egress listener uses port {}", p.number),
                        );
                    }
                }
            }
            check_egress_hosts(issues, &at, ns, &l.hosts);
        }

        if let Some(tp) = &self.outbound_traffic_policy {
            check_outbound_policy(issues, "spec.outboundTrafficPolicy", tp);
        }
    }
}

/// Splits `host:port`, with IPv6 hosts in brackets (`[::1]:8080`).
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        Some((host, tail.strip_prefix(':')?))
    } else {
        let (host, port) = s.rsplit_once(':')?;
        (!host.contains(':')).then_some((host, port))
    }
}

fn check_default_endpoint(issues: &mut Issues, at: String, ep: &str) {
    if let Some(path) = ep.strip_prefix(UNIX_PREFIX) {
        if let Err(e) = validate_unix_path(path) {
            issues.error(at, e);
        }
        return;
    }
    let form =
        "must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://<path>";
    let Some((host, port)) = split_host_port(ep) else {
        issues.error(at, format!("{ep:?} {form}"));
        return;
    };
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        issues.error(at, format!("{ep:?} {form}"));
        return;
    }
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(is_port);
    if !port_ok {
        issues.error(at, format!("{port:?} is not a port number (1-65535)"));
    }
}

fn check_ingress(
    issues: &mut Issues,
    at: &str,
    l: &IstioIngressListener,
    ports: &mut HashSet<u32>,
) {
    let p = &l.port;
    if p.target_port != 0 {
        issues.error(format!("{at}.port.targetPort"), "has no effect on Sidecars");
    }
    if !p.name.is_empty() {
        check_port_name(issues, format!("{at}.port.name"), &p.name);
    }
    check_protocol(issues, format!("{at}.port.protocol"), &p.protocol);
    check_port(issues, format!("{at}.port.number"), p.number);
    if !l.bind.is_empty() && !is_ip(&l.bind) {
        issues.error(
            format!("{at}.bind"),
            format!("{:?} is not an IP address", l.bind),
        );
    }
    if !ports.insert(p.number) {
        issues.error(
            format!("{at}.port.number"),
            format!("another ingress listener uses port {}", p.number),
        );
    }
    if !l.default_endpoint.is_empty() {
        check_default_endpoint(issues, format!("{at}.defaultEndpoint"), &l.default_endpoint);
    }
    if let Some(tls) = &l.tls {
        let tat = format!("{at}.tls");
        for (name, set) in [
            ("subjectAltNames", !tls.subject_alt_names.is_empty()),
            ("httpsRedirect", tls.https_redirect),
            ("credentialName", !tls.credential_name.is_empty()),
            ("credentialNames", !tls.credential_names.is_empty()),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
        ] {
            if set {
                issues.error(
                    format!("{tat}.{name}"),
                    "is not supported on Sidecar ingress",
                );
            }
        }
        if matches!(
            tls.mode,
            ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
        ) {
            issues.error(
                format!("{tat}.mode"),
                "ISTIO_MUTUAL and AUTO_PASSTHROUGH are not allowed on Sidecar ingress",
            );
        }
        if !p.protocol().is_tls() {
            issues.error(&tat, "only HTTPS and TLS ports can have TLS settings");
        }
        check_server_tls(issues, &tat, tls);
    }
    if let Some(pool) = &l.connection_pool {
        check_connection_pool(issues, &format!("{at}.connectionPool"), pool);
        if pool.http.is_some() && !p.protocol().is_http() {
            issues.warn(
                format!("{at}.connectionPool.http"),
                format!(
                    "port {} has protocol {:?}, not HTTP; only the tcp settings apply",
                    p.number, p.protocol
                ),
            );
        }
    }
}

fn check_egress_port(issues: &mut Issues, at: &str, p: &SidecarPort, l: &IstioEgressListener) {
    if p.target_port != 0 {
        issues.error(format!("{at}.port.targetPort"), "has no effect on Sidecars");
    }
    if !p.name.is_empty() {
        check_port_name(issues, format!("{at}.port.name"), &p.name);
    }
    check_protocol(issues, format!("{at}.port.protocol"), &p.protocol);
    if p.number == 0 {
        // Port 0 means a unix domain socket listener.
        match l.bind.strip_prefix(UNIX_PREFIX) {
            None => issues.error(
                format!("{at}.bind"),
                "port number 0 needs a unix:// bind address",
            ),
            Some(path) => {
                if let Err(e) = validate_unix_path(path) {
                    issues.error(format!("{at}.bind"), e);
                }
            }
        }
        if !matches!(l.capture_mode, CaptureMode::Default | CaptureMode::None) {
            issues.error(
                format!("{at}.captureMode"),
                "must be DEFAULT or NONE for unix domain socket listeners",
            );
        }
    } else {
        check_port(issues, format!("{at}.port.number"), p.number);
        if !l.bind.is_empty() && !is_ip(&l.bind) {
            issues.error(
                format!("{at}.bind"),
                format!("{:?} is not an IP address", l.bind),
            );
        }
    }
}

fn check_egress_hosts(issues: &mut Issues, at: &str, ns: &str, hosts: &[String]) {
    if hosts.is_empty() {
        issues.error(format!("{at}.hosts"), "at least one host is required");
        return;
    }
    let mut by_ns: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (k, h) in hosts.iter().enumerate() {
        let hat = format!("{at}.hosts[{k}]");
        if let Some((hns, svc)) = h.split_once('/')
            && !hns.starts_with('~')
        {
            let key = if hns == "." {
                ns.to_string()
            } else {
                hns.to_string()
            };
            let seen = by_ns.entry(key).or_default();
            let dup = if svc == "*" {
                !seen.is_empty()
            } else {
                seen.contains(svc) || seen.contains("*")
            };
            if dup {
                issues.warn(
                    &hat,
                    format!("{h:?} repeats or is covered by an earlier host"),
                );
            }
            seen.insert(svc);
        }
        check_namespaced_host(issues, &hat, h, false);
    }
    if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
        issues.warn(
            format!("{at}.hosts"),
            "`*/*` already selects every host; the other entries add nothing",
        );
    }
}

fn check_outbound_policy(issues: &mut Issues, at: &str, tp: &OutboundTrafficPolicy) {
    let Some(proxy) = &tp.egress_proxy else {
        return;
    };
    let pat = format!("{at}.egressProxy");
    if tp.mode != OutboundTrafficPolicyMode::AllowAny {
        issues.error(&pat, "can only be set with mode ALLOW_ANY");
        return;
    }
    if !proxy.host.is_empty()
        && let Err(e) = validate_fqdn(&proxy.host)
    {
        issues.error(format!("{pat}.host"), e);
        return;
    }
    if proxy.port.is_none() {
        issues.error(format!("{pat}.port"), "is required");
        return;
    }
    check_destination(issues, &pat, proxy);
}

#[cfg(test)]
mod tests {
    use super::super::Sidecar;
    use super::*;
    use crate::{Object, parse_object};

    fn parse(yaml: &str) -> Sidecar {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_object(v, "default").expect("parses").object {
            Object::Sidecar(s) => s,
            other => panic!("not a Sidecar: {other:?}"),
        }
    }

    /// A Sidecar in namespace `shop` with the given spec (YAML, unindented).
    fn mk_sidecar(spec_yaml: &str) -> Sidecar {
        let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
        parse(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: sc\n  namespace: shop\nspec:\n{indented}"
        ))
    }

    fn issues_of(s: &Sidecar) -> Issues {
        Object::Sidecar(s.clone()).validate()
    }

    fn error_fields(s: &Sidecar) -> Vec<String> {
        issues_of(s).errors().map(|i| i.field.clone()).collect()
    }

    fn warning_fields(s: &Sidecar) -> Vec<String> {
        issues_of(s).warnings().map(|i| i.field.clone()).collect()
    }

    const NAMESPACE_DEFAULT: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: prod-us1
spec:
  egress:
  - hosts:
    - "prod-us1/*"
    - "prod-apis/*"
    - "istio-system/*"
"#;

    const RATINGS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: ratings
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: ratings
  ingress:
  - port:
      number: 9080
      protocol: HTTP
      name: somename
    defaultEndpoint: unix:///var/run/someuds.sock
    connectionPool:
      http:
        http1MaxPendingRequests: 100
  - port:
      number: 8443
      protocol: HTTPS
      name: secure
    defaultEndpoint: 127.0.0.1:8080
    tls:
      mode: SIMPLE
      privateKey: "/etc/istio/certs/key.pem"
      serverCertificate: "/etc/istio/certs/cert.pem"
  egress:
  - port:
      number: 9080
      protocol: HTTP
      name: egresshttp
    hosts:
    - "prod-us1/*"
  - port:
      number: 0
      protocol: HTTP
      name: uds
    bind: unix:///var/run/egress.sock
    captureMode: NONE
    hosts:
    - "./reviews.prod-us1.svc.cluster.local"
  - hosts:
    - "istio-system/*"
    - "~/*"
  inboundConnectionPool:
    tcp:
      maxConnections: 50
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy:
      host: egress-proxy.istio-system.svc.cluster.local
      subset: v1
      port:
        number: 3128
"#;

    #[test]
    fn parses_namespace_default() {
        let sc = parse(NAMESPACE_DEFAULT);
        assert!(sc.spec.is_namespace_default());
        let l = &sc.spec.egress[0];
        assert!(l.port.is_none());
        assert_eq!(
            l.namespaced_hosts().collect::<Vec<_>>(),
            [("prod-us1", "*"), ("prod-apis", "*"), ("istio-system", "*")]
        );
        let issues = issues_of(&sc);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    #[test]
    fn parses_ratings_sidecar() {
        let sc = parse(RATINGS);
        let s = &sc.spec;
        assert_eq!(
            s.workload_selector
                .as_ref()
                .map(|w| w.labels["app"].as_str()),
            Some("ratings")
        );
        let i0 = &s.ingress[0];
        assert_eq!(i0.port.number, 9080);
        assert_eq!(i0.port.protocol(), Protocol::Http);
        assert_eq!(i0.default_endpoint, "unix:///var/run/someuds.sock");
        assert_eq!(
            i0.connection_pool
                .as_ref()
                .and_then(|p| p.http.as_ref())
                .map(|h| h.http1_max_pending_requests),
            Some(100)
        );
        assert_eq!(
            s.ingress[1].tls.as_ref().map(|t| t.mode),
            Some(ServerTlsMode::Simple)
        );
        assert_eq!(s.egress[1].capture_mode, CaptureMode::None);
        assert_eq!(s.egress[1].bind, "unix:///var/run/egress.sock");
        assert!(s.egress[2].port.is_none());
        assert_eq!(
            s.inbound_connection_pool
                .as_ref()
                .and_then(|p| p.tcp.as_ref())
                .map(|t| t.max_connections),
            Some(50)
        );
        let tp = s.outbound_traffic_policy.as_ref().expect("policy");
        assert_eq!(tp.mode, OutboundTrafficPolicyMode::AllowAny);
        assert_eq!(
            tp.egress_proxy.as_ref().and_then(|d| d.port_number()),
            Some(3128)
        );
        let issues = issues_of(&sc);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    #[test]
    fn round_trips() {
        for doc in [NAMESPACE_DEFAULT, RATINGS] {
            let sc = parse(doc);
            let json = serde_json::to_value(&sc).expect("serialize");
            let again: Sidecar = serde_json::from_value(json).expect("re-parse");
            assert_eq!(again, sc);
        }
    }

    #[test]
    fn empty_sidecar_is_refused() {
        let sc = mk_sidecar("workloadSelector: {labels: {app: a}}\n");
        assert_eq!(error_fields(&sc), ["spec"]);
    }

    #[test]
    fn selector_needs_labels() {
        let sc = mk_sidecar("workloadSelector: {labels: {}}\negress: [{hosts: ['./*']}]\n");
        assert!(error_fields(&sc).is_empty());
        assert_eq!(warning_fields(&sc), ["spec.workloadSelector.labels"]);
        let sc = mk_sidecar(
            "workloadSelector: {labels: {'': x, app: 'a*'}}\negress: [{hosts: ['./*']}]\n",
        );
        assert_eq!(
            error_fields(&sc),
            [
                "spec.workloadSelector.labels[]",
                "spec.workloadSelector.labels[app]"
            ]
        );
    }

    #[test]
    fn egress_hosts() {
        let sc = mk_sidecar(concat!(
            "egress:\n",
            "- port: {number: 81}\n",
            "  hosts: []\n",
            "- port: {number: 80, protocol: HTTP, name: http}\n",
            "  hosts: [reviews, '*/reviews', 'Bad_NS/a.com', './foo*.com', '~other/*', '~/*', './*', 'shop/*', '*/*']\n",
        ));
        assert_eq!(
            error_fields(&sc),
            [
                "spec.egress[0].hosts",
                "spec.egress[1].hosts[0]",
                "spec.egress[1].hosts[1]",
                "spec.egress[1].hosts[2]",
                "spec.egress[1].hosts[3]",
            ]
        );
        // Hosts covered by earlier ones (`./*` after `./foo*.com`, and so on) are warned about.
        assert_eq!(
            warning_fields(&sc),
            [
                "spec.egress[1].hosts[6]",
                "spec.egress[1].hosts[7]",
                "spec.egress[1].hosts[8]",
                "spec.egress[1].hosts"
            ]
        );
    }

    #[test]
    fn egress_ports_and_binds() {
        let sc = mk_sidecar(concat!(
            "egress:\n",
            "- hosts: ['./*']\n",
            "- port: {number: 80, protocol: HTTP, name: http, targetPort: 8080}\n",
            "  bind: not-an-ip\n",
            "  hosts: ['./*']\n",
            "- port: {number: 80, protocol: SMTP, name: Bad_Name}\n",
            "  hosts: ['./*']\n",
            "- port: {number: 0, protocol: HTTP}\n",
            "  bind: 127.0.0.1\n",
            "  captureMode: IPTABLES\n",
            "  hosts: ['./*']\n",
            "- port: {number: 0, protocol: HTTP}\n",
            "  bind: unix:///a.sock\n",
            "  hosts: ['./*']\n",
            "- port: {number: 0, protocol: HTTP}\n",
            "  bind: unix:///a.sock\n",
            "  hosts: ['./*']\n",
        ));
        let e = "spec.egress";
        assert_eq!(
            error_fields(&sc),
            [
                format!("{e}[0].port"),
                format!("{e}[1].port.targetPort"),
                format!("{e}[1].bind"),
                format!("{e}[2].port.name"),
                format!("{e}[2].port.protocol"),
                format!("{e}[2].port.number"),
                format!("{e}[3].bind"),
                format!("{e}[3].captureMode"),
                format!("{e}[5].bind"),
            ]
        );
    }

    #[test]
    fn ingress_listeners() {
        let sc = mk_sidecar(concat!(
            "ingress:\n",
            "- port: {number: 9080, protocol: HTTP, name: http}\n",
            "  defaultEndpoint: 10.0.0.1:8080\n",
            "- port: {number: 9080, protocol: HTTP, name: http2}\n",
            "  defaultEndpoint: '127.0.0.1:http'\n",
            "- port: {number: 70000, protocol: TCP, targetPort: 1}\n",
            "  defaultEndpoint: '[::1]:8080'\n",
            "  connectionPool: {http: {maxRetries: -1}}\n",
            "- port: {number: 9443, protocol: HTTP, name: tls}\n",
            "  defaultEndpoint: 'unix://rel'\n",
            "  tls: {mode: ISTIO_MUTUAL, credentialName: c, subjectAltNames: [a], httpsRedirect: true}\n",
        ));
        let i = "spec.ingress";
        assert_eq!(
            error_fields(&sc),
            [
                format!("{i}[0].defaultEndpoint"),
                format!("{i}[1].port.number"),
                format!("{i}[1].defaultEndpoint"),
                format!("{i}[2].port.targetPort"),
                format!("{i}[2].port.number"),
                format!("{i}[2].connectionPool.http.maxRetries"),
                format!("{i}[3].defaultEndpoint"),
                format!("{i}[3].tls.subjectAltNames"),
                format!("{i}[3].tls.httpsRedirect"),
                format!("{i}[3].tls.credentialName"),
                format!("{i}[3].tls.mode"),
                format!("{i}[3].tls"),
                format!("{i}[3].tls.credentialName"),
            ]
        );
        assert_eq!(warning_fields(&sc), [format!("{i}[2].connectionPool.http")]);
    }

    #[test]
    fn outbound_traffic_policy() {
        let sc = mk_sidecar(
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: a.b, port: {number: 80}}}\n",
        );
        assert_eq!(
            error_fields(&sc),
            ["spec.outboundTrafficPolicy.egressProxy"]
        );
        let sc = mk_sidecar("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: a.b}}\n");
        assert_eq!(
            error_fields(&sc),
            ["spec.outboundTrafficPolicy.egressProxy.port"]
        );
        let sc = mk_sidecar(
            "outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: 'bad host', port: {number: 80}}}\n",
        );
        assert_eq!(
            error_fields(&sc),
            ["spec.outboundTrafficPolicy.egressProxy.host"]
        );
        let sc = mk_sidecar(
            "outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: a.b, subset: V_1, port: {number: 80}}}\n",
        );
        assert_eq!(
            error_fields(&sc),
            ["spec.outboundTrafficPolicy.egressProxy.subset"]
        );
        let sc = mk_sidecar("outboundTrafficPolicy: {mode: ALLOW_ANY}\n");
        assert!(error_fields(&sc).is_empty());
    }
}
