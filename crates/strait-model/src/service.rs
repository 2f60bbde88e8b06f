//! Services with parsed ports and protocols.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::k8s_openapi::api::core::v1 as core;
use strait_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::workload::Labels;

/// Identity of a Service: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The application protocol of a port, as Istio selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.1 (and upgrades).
    Http,
    /// HTTP/2 cleartext.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// gRPC-Web (HTTP/1.1 or 2).
    GrpcWeb,
    /// TLS-wrapped HTTP, opaque to the sidecar.
    Https,
    /// TLS, opaque to the sidecar but routable by SNI.
    Tls,
    /// Plain TCP.
    Tcp,
    /// MongoDB wire protocol (proxied as TCP).
    Mongo,
    /// Redis (proxied as TCP).
    Redis,
    /// MySQL (proxied as TCP).
    Mysql,
    /// UDP: not proxied.
    Udp,
    /// Nothing declared: proxied as TCP (strait does not sniff protocols).
    Unknown,
}

impl Protocol {
    /// Parses a protocol name (`http`, `HTTP2`, `grpc-web`, …), as used in port-name prefixes,
    /// `appProtocol` and Istio's Gateway/ServiceEntry `protocol` fields.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
            "http2" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// Selects a Service port's protocol the way Istio does: the L4 protocol first (UDP and
    /// SCTP are not proxied), then `appProtocol`, then the port name's prefix
    /// (`http-web`, `grpc`, `tcp-db`).
    pub fn select(name: Option<&str>, app_protocol: Option<&str>, l4: Option<&str>) -> Protocol {
        match l4.map(|s| s.to_ascii_uppercase()) {
            Some(ref p) if p == "UDP" || p == "SCTP" => return Protocol::Udp,
            _ => {}
        }
        if let Some(p) = app_protocol.and_then(Protocol::parse) {
            return p;
        }
        if let Some(name) = name {
            let lower = name.to_ascii_lowercase();
            if lower == "grpc-web" || lower.starts_with("grpc-web-") {
                return Protocol::GrpcWeb;
            }
            let prefix = lower.split('-').next().unwrap_or_default();
            if let Some(p) = Protocol::parse(prefix) {
                return p;
            }
        }
        Protocol::Unknown
    }

    /// True when Envoy routes this port with the HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// True when the upstream must be spoken to over HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// True when the port is proxied at all (UDP is not).
    pub fn is_proxied(self) -> bool {
        self != Protocol::Udp
    }

    /// Istio's name for the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Udp => "UDP",
            Protocol::Unknown => "UnsupportedProtocol",
        }
    }
}

/// The port on the endpoints a service port forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A number.
    Number(u16),
    /// A named container port.
    Name(Arc<str>),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Port name (required when a Service has several).
    pub name: Option<Arc<str>>,
    /// The service port number.
    pub port: u16,
    /// Where it goes on the endpoints.
    pub target_port: TargetPort,
    /// Its application protocol.
    pub protocol: Protocol,
}

/// The kind of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Pods behind a virtual IP (ClusterIP, NodePort, LoadBalancer).
    ClusterIp,
    /// No virtual IP: clients reach pods directly.
    Headless,
    /// A DNS alias for another name.
    ExternalName(Arc<str>),
    /// A host declared by a ServiceEntry.
    Entry(Arc<EntryInfo>),
}

/// How a ServiceEntry host's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Connect to wherever the client was going (original destination).
    Passthrough,
    /// Endpoints listed in the entry (or selected workloads), by IP.
    Static,
    /// Endpoints are names resolved by DNS, every address used.
    Dns,
    /// One resolved address at a time.
    DnsRoundRobin,
}

/// An endpoint given by name, resolved by DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsEndpoint {
    /// Host name (or IP) to resolve.
    pub address: String,
    /// Port overrides by port name.
    pub ports: std::collections::BTreeMap<String, u32>,
    /// Relative weight.
    pub weight: u32,
    /// Locality.
    pub locality: crate::workload::Locality,
}

/// What a ServiceEntry says about one of its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryInfo {
    /// The ServiceEntry (namespace, name).
    pub source: crate::config::ConfigKey,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inside the mesh (MESH_INTERNAL) or not.
    pub mesh_internal: bool,
    /// Virtual addresses the host is reached at (IPs; CIDRs keep their address).
    pub addresses: Vec<IpAddr>,
    /// With DNS resolution: what to resolve (the host itself when empty).
    pub dns_endpoints: Vec<DnsEndpoint>,
}

/// A Service, as translation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: ServiceKey,
    /// Its fully qualified name, `name.namespace.svc.<domain>`.
    pub hostname: Arc<str>,
    /// What kind of Service it is.
    pub kind: ServiceKind,
    /// Its virtual IP, when it has one.
    pub cluster_ip: Option<IpAddr>,
    /// Its ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Its pod selector; `None` when endpoints are managed by hand.
    pub selector: Option<Labels>,
    /// Its labels.
    pub labels: Labels,
    /// Namespaces it is visible from (`networking.istio.io/exportTo`); empty means the default.
    pub export_to: Vec<Arc<str>>,
}

impl Service {
    /// From a Kubernetes Service. `domain` is the cluster DNS suffix (`cluster.local`).
    pub fn from_k8s(s: &core::Service, domain: &str) -> Service {
        let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let spec = s.spec.clone().unwrap_or_default();
        let kind = match (spec.type_.as_deref(), spec.cluster_ip.as_deref()) {
            (Some("ExternalName"), _) => {
                ServiceKind::ExternalName(spec.external_name.as_deref().unwrap_or_default().into())
            }
            (_, Some("None")) => ServiceKind::Headless,
            _ => ServiceKind::ClusterIp,
        };
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
                let target_port = match &p.target_port {
                    Some(IntOrString::Int(n)) => {
                        TargetPort::Number(u16::try_from(*n).ok().filter(|p| *p > 0)?)
                    }
                    Some(IntOrString::String(s)) if !s.is_empty() => match s.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s.as_str().into()),
                    },
                    _ => TargetPort::Number(port),
                };
                Some(ServicePort {
                    name: p.name.as_deref().filter(|n| !n.is_empty()).map(Arc::from),
                    port,
                    target_port,
                    protocol: Protocol::select(
                        p.name.as_deref(),
                        p.app_protocol.as_deref(),
                        p.protocol.as_deref(),
                    ),
                })
            })
            .collect();
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        let export_to = annotations
            .get("networking.istio.io/exportTo")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Arc::from)
                    .collect()
            })
            .unwrap_or_default();
        Service {
            key: ServiceKey::new(namespace, name),
            hostname: format!("{name}.{namespace}.svc.{domain}").into(),
            kind,
            cluster_ip,
            ports,
            selector: spec.selector.filter(|s| !s.is_empty()),
            labels: s.metadata.labels.clone().unwrap_or_default(),
            export_to,
        }
    }

    /// The hosts of a ServiceEntry, as services of its namespace.
    pub fn from_service_entry(
        key: &crate::config::ConfigKey,
        se: &strait_api::istio::ServiceEntrySpec,
        host: &str,
    ) -> Service {
        use strait_api::istio::Resolution as R;
        let resolution = match se.resolution {
            R::None => Resolution::Passthrough,
            R::Static => Resolution::Static,
            R::Dns | R::DynamicDns => Resolution::Dns,
            R::DnsRoundRobin => Resolution::DnsRoundRobin,
        };
        let addresses: Vec<IpAddr> = se
            .addresses
            .iter()
            .filter_map(|a| a.split('/').next().and_then(|ip| ip.parse().ok()))
            .collect();
        let ports = se
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.number).ok().filter(|p| *p > 0)?;
                let target = u16::try_from(p.endpoint_port())
                    .ok()
                    .filter(|p| *p > 0)
                    .unwrap_or(port);
                Some(ServicePort {
                    name: (!p.name.is_empty()).then(|| Arc::from(p.name.as_str())),
                    port,
                    target_port: TargetPort::Number(target),
                    protocol: Protocol::parse(&p.protocol).unwrap_or(Protocol::Tcp),
                })
            })
            .collect();
        let dns_endpoints = if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            se.endpoints
                .iter()
                .filter(|e| !e.is_unix())
                .map(|e| DnsEndpoint {
                    address: e.address.clone(),
                    ports: e.ports.clone(),
                    weight: e.weight,
                    locality: crate::workload::Locality::parse(&e.locality),
                })
                .collect()
        } else {
            Vec::new()
        };
        let host = host.to_ascii_lowercase();
        Service {
            key: ServiceKey::new(&key.namespace, &host),
            hostname: host.as_str().into(),
            kind: ServiceKind::Entry(Arc::new(EntryInfo {
                source: key.clone(),
                resolution,
                mesh_internal: se.is_mesh_internal(),
                addresses: addresses.clone(),
                dns_endpoints,
            })),
            cluster_ip: addresses.first().copied(),
            ports,
            selector: se
                .workload_selector
                .as_ref()
                .map(|w| w.labels.clone())
                .filter(|l| !l.is_empty()),
            labels: Labels::new(),
            export_to: se.export_to.iter().map(|e| Arc::from(e.as_str())).collect(),
        }
    }

    /// The ServiceEntry behind this service, if it is one.
    pub fn entry(&self) -> Option<&EntryInfo> {
        match &self.kind {
            ServiceKind::Entry(e) => Some(e),
            _ => None,
        }
    }

    /// True when its endpoints come over EDS (pods, or a ServiceEntry's static endpoints).
    pub fn uses_eds(&self) -> bool {
        match &self.kind {
            ServiceKind::ClusterIp | ServiceKind::Headless => true,
            ServiceKind::ExternalName(_) => false,
            ServiceKind::Entry(e) => e.resolution == Resolution::Static,
        }
    }

    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Every name clients in `from_namespace` may use for this service on `port`, as Envoy
    /// virtual host domains: short name (same namespace only), `name.ns`, `name.ns.svc`, the
    /// FQDN and the cluster IP, each with and without `:port`.
    pub fn domains(&self, port: u16, from_namespace: &str) -> Vec<String> {
        if let ServiceKind::Entry(e) = &self.kind {
            // A ServiceEntry host is reached by its own name (and its addresses).
            let mut out = vec![
                format!("{}:{port}", self.hostname),
                self.hostname.to_string(),
            ];
            for a in &e.addresses {
                out.push(format!("{a}:{port}"));
                out.push(a.to_string());
            }
            return out;
        }
        let name = &*self.key.name;
        let ns = &*self.key.namespace;
        let mut names = Vec::with_capacity(5);
        names.push(self.hostname.to_string());
        if from_namespace == ns {
            names.push(name.to_string());
        }
        names.push(format!("{name}.{ns}"));
        names.push(format!("{name}.{ns}.svc"));
        if let Some(ip) = self.cluster_ip {
            names.push(match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            });
        }
        let mut out = Vec::with_capacity(names.len() * 2);
        for n in names {
            out.push(format!("{n}:{port}"));
            out.push(n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_selection_follows_istio() {
        assert_eq!(Protocol::select(Some("http"), None, None), Protocol::Http);
        assert_eq!(
            Protocol::select(Some("http-web"), None, Some("TCP")),
            Protocol::Http
        );
        assert_eq!(
            Protocol::select(Some("grpc-web"), None, None),
            Protocol::GrpcWeb
        );
        assert_eq!(Protocol::select(Some("grpc"), None, None), Protocol::Grpc);
        assert_eq!(Protocol::select(Some("tcp-db"), None, None), Protocol::Tcp);
        assert_eq!(Protocol::select(Some("web"), None, None), Protocol::Unknown);
        assert_eq!(
            Protocol::select(Some("web"), Some("http2"), None),
            Protocol::Http2
        );
        assert_eq!(
            Protocol::select(Some("http"), Some("tcp"), None),
            Protocol::Tcp
        );
        assert_eq!(
            Protocol::select(None, Some("kubernetes.io/h2c"), None),
            Protocol::Http2
        );
        assert_eq!(
            Protocol::select(Some("http"), None, Some("UDP")),
            Protocol::Udp
        );
        assert!(Protocol::Grpc.is_http() && Protocol::Grpc.is_http2());
        assert!(!Protocol::Tcp.is_http());
    }

    fn mk_service(name: &str, ns: &str, ports: &[(&str, i32)]) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterIP": "10.0.0.7",
                "selector": {"app": name},
                "ports": ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p, "targetPort": p + 1})).collect::<Vec<_>>(),
            }
        }))
        .expect("valid service")
    }

    #[test]
    fn from_k8s_and_domains() {
        let s = Service::from_k8s(
            &mk_service("reviews", "bookinfo", &[("http", 9080)]),
            "cluster.local",
        );
        assert_eq!(&*s.hostname, "reviews.bookinfo.svc.cluster.local");
        assert_eq!(s.kind, ServiceKind::ClusterIp);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(9081));
        assert_eq!(s.ports[0].protocol, Protocol::Http);
        let d = s.domains(9080, "bookinfo");
        assert!(d.contains(&"reviews".to_string()));
        assert!(d.contains(&"reviews:9080".to_string()));
        assert!(d.contains(&"reviews.bookinfo.svc:9080".to_string()));
        assert!(d.contains(&"10.0.0.7:9080".to_string()));
        let other = s.domains(9080, "other");
        assert!(!other.contains(&"reviews".to_string()));
        assert!(other.contains(&"reviews.bookinfo".to_string()));
    }
}
