//! ServiceEntry: adds a service to the mesh's registry that Kubernetes does not know about
//! (an external API, a database on VMs), with its hosts, ports, how its endpoints are found
//! (static addresses, DNS, or none) and whether it counts as inside the mesh.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Spec;
use super::common::{
    Protocol, UNIX_PREFIX, WorkloadSelector, check_export_to, check_labels, check_port,
    check_port_name, check_protocol, check_selector_labels, is_default, is_ip, validate_fqdn,
    validate_ip_subnet, validate_partial_wildcard, validate_unix_path, validate_wildcard_domain,
};
use crate::validate::Issues;

/// The content of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Host names of the service (possibly with a leading wildcard); they are what clients
    /// address and what routes name.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDR blocks of the service, used to match TCP traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The service's ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Whether the service counts as part of the mesh (mTLS, telemetry) or outside it.
    #[serde(default, skip_serializing_if = "is_default")]
    pub location: Location,
    /// How the service's endpoints are found.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resolution: Resolution,
    /// The endpoints, for STATIC and DNS resolution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects the mesh workloads (pods, WorkloadEntries) backing the service, instead of
    /// listing `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the service is visible to (`.`, `*`, `~` or namespace names); empty means
    /// all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities the service's certificates may present, for mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

impl ServiceEntrySpec {
    /// The port with this name.
    pub fn port_by_name(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// The port with this number.
    pub fn port_by_number(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// True for services inside the mesh.
    pub fn is_mesh_internal(&self) -> bool {
        self.location == Location::MeshInternal
    }
}

/// A port of a ServiceEntry.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port number clients use.
    pub number: u32,
    /// The protocol (HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, MONGO...); empty to sniff.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The port's name, unique in the entry; endpoints refer to it.
    pub name: String,
    /// The port endpoints listen on, when it differs from `number`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub target_port: u32,
}

impl ServicePort {
    /// The port's protocol, parsed.
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }

    /// The port endpoints listen on: `targetPort` if set, else `number`.
    pub fn endpoint_port(&self) -> u32 {
        if self.target_port != 0 {
            self.target_port
        } else {
            self.number
        }
    }
}

/// Whether a ServiceEntry's service is inside the mesh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, the proxy speaks to it as a client.
    #[default]
    MeshExternal,
    /// Part of the mesh, like a Kubernetes service.
    MeshInternal,
}

/// How a ServiceEntry's endpoints are found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the address the client connected to.
    #[default]
    None,
    /// The endpoints' IP addresses are given.
    Static,
    /// Resolve endpoint (or host) names with DNS, using every address returned.
    Dns,
    /// Resolve with DNS, using only the first address returned.
    DnsRoundRobin,
    /// Resolve the host of each request with DNS, per request (wildcard hosts).
    DynamicDns,
}

/// One endpoint of a ServiceEntry (the WorkloadEntry shape, used inline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address, DNS name (DNS resolution) or `unix://` socket path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port overrides by service port name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the endpoint, for subsets and selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network the endpoint is on (for multi-network meshes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// `region/zone/subzone` of the endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load balancing weight (0: the default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight: u32,
    /// The endpoint's service account, for its identity.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

impl WorkloadEntry {
    /// True for a Unix domain socket endpoint.
    pub fn is_unix(&self) -> bool {
        self.address.starts_with(UNIX_PREFIX)
    }

    /// The port to reach this endpoint on for `port`: its override, else the port's own
    /// endpoint port.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or_else(|| port.endpoint_port())
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Spec for ServiceEntrySpec {
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues) {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        if let Some(sel) = &self.workload_selector {
            check_selector_labels(issues, "spec.workloadSelector.labels", &sel.labels, true);
            if !self.endpoints.is_empty() {
                issues.error(
                    "spec",
                    "only one of workloadSelector or endpoints may be set",
                );
            }
        }

        if self.hosts.is_empty() {
            issues.error("spec.hosts", "at least one host is required");
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let at = format!("spec.hosts[{i}]");
            if h == "*" {
                issues.error(at, "\"*\" is not allowed; name the hosts");
            } else if let Err(e) = validate_wildcard_domain(h) {
                issues.error(at, e);
            } else if self.resolution != Resolution::DynamicDns
                && let Err(e) = validate_partial_wildcard(h)
            {
                issues.warn(at, e);
            }
        }

        let mut cidr = false;
        for (i, a) in self.addresses.iter().enumerate() {
            cidr |= a.contains('/');
            if let Err(e) = validate_ip_subnet(a) {
                issues.error(format!("spec.addresses[{i}]"), e);
            }
        }
        if cidr && !matches!(self.resolution, Resolution::None | Resolution::Static) {
            issues.error(
                "spec.addresses",
                "CIDR blocks are only allowed with resolution NONE or STATIC",
            );
        }

        if self.ports.is_empty() {
            issues.warn(
                "spec.ports",
                "no ports: the entry creates no listeners or clusters",
            );
        }
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            if !names.insert(p.name.as_str()) {
                issues.error(
                    format!("{at}.name"),
                    format!("duplicate port name {:?}", p.name),
                );
            } else {
                check_port_name(issues, format!("{at}.name"), &p.name);
            }
            if !numbers.insert(p.number) {
                issues.error(
                    format!("{at}.number"),
                    format!("duplicate port {}", p.number),
                );
            } else {
                check_port(issues, format!("{at}.number"), p.number);
            }
            if p.target_port != 0 {
                check_port(issues, format!("{at}.targetPort"), p.target_port);
            }
            check_protocol(issues, format!("{at}.protocol"), &p.protocol);
            if self.addresses.is_empty()
                && self.resolution == Resolution::None
                && (p.protocol.is_empty() || p.protocol == "TCP")
            {
                issues.warn(
                    &at,
                    "without addresses, a TCP (or unset) protocol port matches all traffic to its port number",
                );
            }
        }
        let port_names: HashSet<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();

        match self.resolution {
            Resolution::None => {
                if !self.endpoints.is_empty() {
                    issues.error(
                        "spec.endpoints",
                        "endpoints cannot be given with resolution NONE",
                    );
                }
                if self.workload_selector.is_some() {
                    issues.warn(
                        "spec.workloadSelector",
                        "has no effect with resolution NONE",
                    );
                }
            }
            Resolution::Static => {
                if self.endpoints.is_empty() && self.workload_selector.is_none() {
                    issues.warn(
                        "spec.endpoints",
                        "resolution STATIC without endpoints or workloadSelector has no endpoints",
                    );
                }
                for (i, e) in self.endpoints.iter().enumerate() {
                    check_static_endpoint(issues, &format!("spec.endpoints[{i}]"), e, &port_names);
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if self.endpoints.is_empty()
                    && let Some((i, e)) = self
                        .hosts
                        .iter()
                        .enumerate()
                        .find_map(|(i, h)| validate_fqdn(h).err().map(|e| (i, e)))
                {
                    issues.error(
                        format!("spec.hosts[{i}]"),
                        format!(
                            "without endpoints, DNS resolution needs hosts without wildcards: {e}"
                        ),
                    );
                }
                if self.resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
                    issues.error(
                        "spec.endpoints",
                        "DNS_ROUND_ROBIN allows at most one endpoint",
                    );
                }
                for (i, e) in self.endpoints.iter().enumerate() {
                    let at = format!("spec.endpoints[{i}]");
                    if !is_ip(&e.address) && validate_fqdn(&e.address).is_err() {
                        issues.error(
                            format!("{at}.address"),
                            format!("{:?} is neither an IP address nor a DNS name", e.address),
                        );
                    }
                    check_labels(issues, &format!("{at}.labels"), &e.labels);
                    check_endpoint_ports(issues, &at, e, &port_names);
                }
                if !self.addresses.is_empty()
                    && self.hosts.len() > 1
                    && self.ports.iter().any(|p| p.protocol().is_tcp())
                {
                    issues.warn(
                        "spec.hosts",
                        "with addresses and a TCP port, several hosts cannot be told apart",
                    );
                }
            }
            Resolution::DynamicDns => {
                for (i, h) in self.hosts.iter().enumerate() {
                    if !h.starts_with('*') {
                        issues.error(
                            format!("spec.hosts[{i}]"),
                            "DYNAMIC_DNS resolution needs wildcard hosts",
                        );
                    }
                }
                if !self.addresses.is_empty() {
                    issues.error(
                        "spec.addresses",
                        "cannot be set with DYNAMIC_DNS resolution",
                    );
                }
                if !self.endpoints.is_empty() {
                    issues.error(
                        "spec.endpoints",
                        "cannot be set with DYNAMIC_DNS resolution",
                    );
                }
                for (i, p) in self.ports.iter().enumerate() {
                    if !matches!(
                        p.protocol(),
                        Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                    ) {
                        issues.error(
                            format!("spec.ports[{i}].protocol"),
                            "DYNAMIC_DNS resolution supports HTTP, HTTP2, GRPC and TLS ports only",
                        );
                    }
                }
            }
        }

        // Plain TCP carries nothing (no Host header, no SNI) to tell several hosts apart.
        if self.resolution != Resolution::None && self.hosts.len() > 1 {
            for (i, p) in self.ports.iter().enumerate() {
                let proto = p.protocol();
                if !proto.is_http() && !proto.is_tls() {
                    issues.error(
                        format!("spec.ports[{i}].protocol"),
                        "with several hosts, only HTTP and TLS ports can tell them apart",
                    );
                    break;
                }
            }
        }

        check_export_to(issues, "spec.exportTo", ns, &self.export_to, true);
    }
}

fn check_endpoint_ports(
    issues: &mut Issues,
    at: &str,
    e: &WorkloadEntry,
    port_names: &HashSet<&str>,
) {
    for (name, port) in &e.ports {
        let pat = format!("{at}.ports[{name}]");
        if !port_names.contains(name.as_str()) {
            issues.error(
                &pat,
                format!("{name:?} is not one of the entry's port names"),
            );
        } else {
            check_port_name(issues, &pat, name);
        }
        check_port(issues, &pat, *port);
    }
}

fn check_static_endpoint(
    issues: &mut Issues,
    at: &str,
    e: &WorkloadEntry,
    port_names: &HashSet<&str>,
) {
    if e.address.is_empty() {
        if e.network.is_empty() {
            issues.error(format!("{at}.address"), "is required");
        } else {
            issues.warn(
                format!("{at}.address"),
                format!(
                    "is unset; the endpoint is reached through network {:?}'s gateway",
                    e.network
                ),
            );
        }
    } else if let Some(path) = e.address.strip_prefix(UNIX_PREFIX) {
        if let Err(err) = validate_unix_path(path) {
            issues.error(format!("{at}.address"), err);
        }
        if !e.ports.is_empty() {
            issues.error(
                format!("{at}.ports"),
                "a unix domain socket endpoint cannot have ports",
            );
        }
        if port_names.len() != 1 {
            issues.error(
                format!("{at}.address"),
                "a unix domain socket endpoint needs the entry to have exactly one port",
            );
        }
    } else if !is_ip(&e.address) {
        issues.error(
            format!("{at}.address"),
            format!(
                "{:?} is not an IP address (STATIC resolution needs IPs or unix:// paths)",
                e.address
            ),
        );
    }
    check_endpoint_ports(issues, at, e, port_names);
    check_labels(issues, &format!("{at}.labels"), &e.labels);
}

#[cfg(test)]
mod tests {
    use super::super::ServiceEntry;
    use super::*;
    use crate::{Object, parse_object};

    fn parse(yaml: &str) -> ServiceEntry {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_object(v, "default").expect("parses").object {
            Object::ServiceEntry(se) => se,
            other => panic!("not a ServiceEntry: {other:?}"),
        }
    }

    /// A ServiceEntry in namespace `shop` with the given spec (YAML, unindented).
    fn mk_service_entry(spec_yaml: &str) -> ServiceEntry {
        let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
        parse(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\n  namespace: shop\nspec:\n{indented}"
        ))
    }

    fn issues_of(se: &ServiceEntry) -> Issues {
        Object::ServiceEntry(se.clone()).validate()
    }

    fn error_fields(se: &ServiceEntry) -> Vec<String> {
        issues_of(se).errors().map(|i| i.field.clone()).collect()
    }

    fn warning_fields(se: &ServiceEntry) -> Vec<String> {
        issues_of(se).warnings().map(|i| i.field.clone()).collect()
    }

    const STATIC: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-mongocluster
spec:
  hosts:
  - mymongodb.somedomain
  addresses:
  - 192.192.192.192/24
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
    ports:
      mongodb: 27019
    labels:
      version: v2
    locality: us-east/zone-a
    weight: 3
    network: net1
    serviceAccount: mongo
"#;

    const DNS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  - api.facebook.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
  exportTo: ["."]
"#;

    #[test]
    fn parses_static_entry() {
        let se = parse(STATIC);
        let s = &se.spec;
        assert_eq!(s.hosts, ["mymongodb.somedomain"]);
        assert_eq!(s.addresses, ["192.192.192.192/24"]);
        assert_eq!(s.resolution, Resolution::Static);
        assert!(s.is_mesh_internal());
        let port = s.port_by_name("mongodb").expect("port");
        assert_eq!(port.protocol(), Protocol::Mongo);
        assert_eq!(s.endpoints[0].address, "2.2.2.2");
        assert_eq!(s.endpoints[0].port_for(port), 27018);
        let e = &s.endpoints[1];
        assert_eq!(e.port_for(port), 27019);
        assert_eq!(e.labels["version"], "v2");
        assert_eq!(e.locality, "us-east/zone-a");
        assert_eq!(e.weight, 3);
        assert_eq!(e.service_account, "mongo");
        let issues = issues_of(&se);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    #[test]
    fn parses_dns_entry() {
        let se = parse(DNS);
        let s = &se.spec;
        assert_eq!(s.resolution, Resolution::Dns);
        assert_eq!(s.location, Location::MeshExternal);
        assert_eq!(s.export_to, ["."]);
        assert_eq!(
            s.port_by_number(443).map(|p| p.protocol()),
            Some(Protocol::Tls)
        );
        let issues = issues_of(&se);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    #[test]
    fn round_trips() {
        for doc in [STATIC, DNS] {
            let se = parse(doc);
            let json = serde_json::to_value(&se).expect("serialize");
            let again: ServiceEntry = serde_json::from_value(json).expect("re-parse");
            assert_eq!(again, se);
        }
    }

    #[test]
    fn unknown_resolution_names_the_value() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [a.com]\n  resolution: MAGIC\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default")
            .expect_err("bad enum")
            .to_string();
        assert!(
            err.contains("MAGIC") && err.contains("spec.resolution"),
            "{err}"
        );
    }

    #[test]
    fn hosts_and_addresses() {
        let se = mk_service_entry(
            "hosts: []\nresolution: DNS\naddresses: [10.0.0.0/8, nope]\nports: [{number: 80, name: http, protocol: HTTP}]\n",
        );
        assert_eq!(
            error_fields(&se),
            ["spec.hosts", "spec.addresses[1]", "spec.addresses"]
        );
        let se = mk_service_entry(
            "hosts: ['*', 'bad host', 'a*.foo.com', '*foo.com']\nports: [{number: 80, name: http, protocol: HTTP}]\n",
        );
        assert_eq!(
            error_fields(&se),
            ["spec.hosts[0]", "spec.hosts[1]", "spec.hosts[2]"]
        );
        // A partial wildcard in the first label is accepted, with a warning.
        assert_eq!(warning_fields(&se), ["spec.hosts[3]"]);
    }

    #[test]
    fn ports() {
        let se = mk_service_entry(
            "hosts: [a.com]\naddresses: [1.2.3.4]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 80, name: http, protocol: FTP}\n- {number: 0, name: Bad_Name, targetPort: 70000}\n",
        );
        assert_eq!(
            error_fields(&se),
            [
                "spec.ports[1].name",
                "spec.ports[1].number",
                "spec.ports[1].protocol",
                "spec.ports[2].name",
                "spec.ports[2].number",
                "spec.ports[2].targetPort",
            ]
        );
        let se = mk_service_entry("hosts: [a.com]\n");
        assert_eq!(warning_fields(&se), ["spec.ports"]);
        let se =
            mk_service_entry("hosts: [a.com]\nports: [{number: 5432, name: pg, protocol: TCP}]\n");
        assert_eq!(warning_fields(&se), ["spec.ports[0]"]);
    }

    #[test]
    fn static_endpoints() {
        let se = mk_service_entry(concat!(
            "hosts: [a.com]\nresolution: STATIC\n",
            "ports: [{number: 80, name: http, protocol: HTTP}]\n",
            "endpoints:\n",
            "- address: db.example.com\n",
            "- address: 1.1.1.1\n  ports: {grpc: 9090, http: 0}\n",
            "- address: unix://relative.sock\n  ports: {http: 8080}\n",
            "- {network: net2}\n",
            "- {}\n",
            "- address: 'unix:///var/run/app.sock'\n",
        ));
        assert_eq!(
            error_fields(&se),
            [
                "spec.endpoints[0].address",
                "spec.endpoints[1].ports[grpc]",
                "spec.endpoints[1].ports[http]",
                "spec.endpoints[2].address",
                "spec.endpoints[2].ports",
                "spec.endpoints[4].address",
            ]
        );
        assert_eq!(warning_fields(&se), ["spec.endpoints[3].address"]);
    }

    #[test]
    fn dns_resolution() {
        let se = mk_service_entry(
            "hosts: ['*.example.com']\nresolution: DNS\nports: [{number: 443, name: tls, protocol: TLS}]\n",
        );
        assert_eq!(error_fields(&se), ["spec.hosts[0]"]);
        let se = mk_service_entry(
            "hosts: [a.com]\nresolution: DNS_ROUND_ROBIN\nports: [{number: 443, name: tls, protocol: TLS}]\nendpoints: [{address: a.example.com}, {address: 'not valid', ports: {other: 1}}]\n",
        );
        assert_eq!(
            error_fields(&se),
            [
                "spec.endpoints",
                "spec.endpoints[1].address",
                "spec.endpoints[1].ports[other]"
            ]
        );
    }

    #[test]
    fn dynamic_dns_resolution() {
        let se = mk_service_entry(
            "hosts: [a.com]\nresolution: DYNAMIC_DNS\naddresses: [1.2.3.4]\nports: [{number: 5432, name: pg, protocol: TCP}]\n",
        );
        assert_eq!(
            error_fields(&se),
            ["spec.hosts[0]", "spec.addresses", "spec.ports[0].protocol"]
        );
    }

    #[test]
    fn several_hosts_need_http_or_tls() {
        let se = mk_service_entry(
            "hosts: [a.com, b.com]\nresolution: DNS\nports: [{number: 5432, name: pg, protocol: TCP}]\n",
        );
        assert_eq!(error_fields(&se), ["spec.ports[0].protocol"]);
        let se = mk_service_entry(
            "hosts: [a.com, b.com]\nports: [{number: 5432, name: pg, protocol: TCP}]\naddresses: [1.2.3.4]\n",
        );
        assert!(error_fields(&se).is_empty());
    }

    #[test]
    fn selector_and_endpoints_exclude_each_other() {
        let se = mk_service_entry(
            "hosts: [a.com]\nresolution: STATIC\nports: [{number: 80, name: http, protocol: HTTP}]\nworkloadSelector: {labels: {app: '*'}}\nendpoints: [{address: 1.1.1.1}]\n",
        );
        assert_eq!(
            error_fields(&se),
            ["spec.workloadSelector.labels[app]", "spec"]
        );
        let se = mk_service_entry(
            "hosts: [a.com]\nresolution: STATIC\nports: [{number: 80, name: http, protocol: HTTP}]\nworkloadSelector: {labels: {}}\n",
        );
        assert!(error_fields(&se).is_empty());
        assert_eq!(warning_fields(&se), ["spec.workloadSelector.labels"]);
        let se = mk_service_entry(
            "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nendpoints: [{address: 1.1.1.1}]\n",
        );
        assert_eq!(error_fields(&se), ["spec.endpoints"]);
    }

    #[test]
    fn export_to_allows_none_alone() {
        let se = mk_service_entry(
            "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nexportTo: ['~']\n",
        );
        assert!(error_fields(&se).is_empty());
        let se = mk_service_entry(
            "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nexportTo: ['~', other]\n",
        );
        assert_eq!(error_fields(&se), ["spec.exportTo"]);
    }
}
