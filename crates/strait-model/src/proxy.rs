//! Who is asking: a proxy's identity from its Envoy node, resolved against a snapshot.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::snapshot::MeshSnapshot;
use crate::workload::{Labels, Locality, Workload};

/// What role a proxy plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// A sidecar next to one workload.
    Sidecar,
    /// A gateway (`router~…` node ids).
    Router,
}

impl ProxyKind {
    /// The node id prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        }
    }
}

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterceptionMode {
    /// iptables redirects traffic to 15001 (outbound) and 15006 (inbound).
    Redirect,
    /// Nothing redirects traffic: listeners bind real addresses. Outbound listeners bind
    /// `outbound_bind`, inbound listeners bind the proxy IP at each target port.
    None,
}

/// A stock Envoy's version, from its node's build version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvoyVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl fmt::Display for EnvoyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a node description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyNodeError {
    /// The id has no `~`-separated type and IP.
    #[error("node id {0:?} is not of the form <type>~<ip>~<pod>.<namespace>~<domain>")]
    BadId(String),
    /// The type is neither sidecar nor router.
    #[error("node id {0:?}: unknown proxy type (use sidecar or router)")]
    BadType(String),
    /// A metadata field has the wrong shape.
    #[error("node metadata {field}: {reason}")]
    BadMetadata {
        /// Which key.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A proxy as its Envoy node describes it: fixed for the life of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    /// The full node id.
    pub id: Arc<str>,
    /// Sidecar or gateway.
    pub kind: ProxyKind,
    /// Its IPs (from `INSTANCE_IPS`, else the id).
    pub ips: Vec<IpAddr>,
    /// Its pod name, when the id or metadata carries one.
    pub pod_name: Option<Arc<str>>,
    /// Its namespace (`NAMESPACE`, else the id).
    pub namespace: Option<Arc<str>>,
    /// Labels the bootstrap declared (`LABELS`), which win over the pod's.
    pub labels: Option<Arc<Labels>>,
    /// How traffic reaches it.
    pub interception: InterceptionMode,
    /// With no interception: the IP outbound listeners bind.
    pub outbound_bind: Option<IpAddr>,
    /// With no interception: where the application listens (default 127.0.0.1).
    pub app_address: Option<IpAddr>,
    /// Envoy's version.
    pub envoy_version: Option<EnvoyVersion>,
    /// Locality declared in the bootstrap.
    pub locality: Option<Arc<Locality>>,
    /// The cluster it runs in (`CLUSTER_ID`).
    pub cluster_id: Option<Arc<str>>,
    /// The revision tag it was injected through (`STRAIT_TAG`): it connects through the
    /// tag's Service and follows the tag when it moves.
    pub tag: Option<Arc<str>>,
    /// The revision that injected it (`STRAIT_REVISION`).
    pub injected_by: Option<Arc<str>>,
}

fn meta_str<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl ProxyNode {
    /// Reads a node: `id` (`sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local`),
    /// its metadata (Istio's keys: `NAMESPACE`, `LABELS`, `INSTANCE_IPS`, `POD_NAME`,
    /// `INTERCEPTION_MODE`, `CLUSTER_ID`; strait's: `STRAIT_OUTBOUND_BIND`,
    /// `STRAIT_APP_ADDRESS`, `STRAIT_TAG`, `STRAIT_REVISION`), its locality and its Envoy
    /// version.
    pub fn parse(
        id: &str,
        metadata: &Map<String, Value>,
        locality: Option<Locality>,
        envoy_version: Option<EnvoyVersion>,
    ) -> Result<ProxyNode, ProxyNodeError> {
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() < 2 {
            return Err(ProxyNodeError::BadId(id.to_string()));
        }
        let kind = match parts[0] {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            _ => return Err(ProxyNodeError::BadType(id.to_string())),
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(list) = meta_str(metadata, "INSTANCE_IPS") {
            for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ip = s.parse().map_err(|_| ProxyNodeError::BadMetadata {
                    field: "INSTANCE_IPS",
                    reason: format!("{s:?} is not an IP address"),
                })?;
                ips.push(ip);
            }
        }
        if let Ok(ip) = parts[1].parse::<IpAddr>()
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        let (id_pod, id_ns) = match parts.get(2).and_then(|p| p.rsplit_once('.')) {
            Some((pod, ns)) if !pod.is_empty() && !ns.is_empty() => (Some(pod), Some(ns)),
            _ => (None, None),
        };
        let labels = match metadata.get("LABELS") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                let mut l = Labels::new();
                for (k, v) in m {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    l.insert(k.clone(), v);
                }
                Some(Arc::new(l))
            }
            Some(_) => {
                return Err(ProxyNodeError::BadMetadata {
                    field: "LABELS",
                    reason: "must be a map of strings".into(),
                });
            }
        };
        let interception = match meta_str(metadata, "INTERCEPTION_MODE") {
            None | Some("REDIRECT") | Some("TPROXY") => InterceptionMode::Redirect,
            Some("NONE") => InterceptionMode::None,
            Some(other) => {
                return Err(ProxyNodeError::BadMetadata {
                    field: "INTERCEPTION_MODE",
                    reason: format!("{other:?} is not REDIRECT, TPROXY or NONE"),
                });
            }
        };
        let ip_meta = |field: &'static str| -> Result<Option<IpAddr>, ProxyNodeError> {
            meta_str(metadata, field)
                .map(|s| {
                    s.parse().map_err(|_| ProxyNodeError::BadMetadata {
                        field,
                        reason: format!("{s:?} is not an IP address"),
                    })
                })
                .transpose()
        };
        let outbound_bind = ip_meta("STRAIT_OUTBOUND_BIND")?;
        let app_address = ip_meta("STRAIT_APP_ADDRESS")?;
        // Asking for an outbound bind address means nothing intercepts traffic.
        let interception = if outbound_bind.is_some() {
            InterceptionMode::None
        } else {
            interception
        };
        Ok(ProxyNode {
            id: id.into(),
            kind,
            ips,
            pod_name: meta_str(metadata, "POD_NAME").or(id_pod).map(Arc::from),
            namespace: meta_str(metadata, "NAMESPACE").or(id_ns).map(Arc::from),
            labels,
            interception,
            outbound_bind,
            app_address,
            envoy_version,
            locality: locality.filter(|l| !l.is_empty()).map(Arc::new),
            cluster_id: meta_str(metadata, "CLUSTER_ID").map(Arc::from),
            tag: meta_str(metadata, "STRAIT_TAG").map(Arc::from),
            injected_by: meta_str(metadata, "STRAIT_REVISION").map(Arc::from),
        })
    }
}

/// A proxy resolved against one snapshot: its workload, namespace, labels and locality.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// What the node said.
    pub node: Arc<ProxyNode>,
    /// The pod it runs in, found by IP.
    pub workload: Option<Arc<Workload>>,
    /// Its namespace (node, else pod, else `default`).
    pub namespace: Arc<str>,
    /// Its labels (node's `LABELS`, else the pod's).
    pub labels: Arc<Labels>,
    /// Its locality (pod's node, else the bootstrap's).
    pub locality: Arc<Locality>,
}

impl Proxy {
    /// Resolves a node against a snapshot.
    pub fn resolve(node: Arc<ProxyNode>, snap: &MeshSnapshot) -> Proxy {
        let workload = node
            .ips
            .iter()
            .find_map(|ip| snap.workload_by_ip(*ip))
            .filter(|w| {
                // An IP reused by another pod must not lend this proxy a foreign identity.
                node.pod_name.as_deref().is_none_or(|p| *w.name == *p)
            })
            .cloned();
        let namespace = node
            .namespace
            .clone()
            .or_else(|| workload.as_ref().map(|w| w.namespace.clone()))
            .unwrap_or_else(|| Arc::from("default"));
        let labels = node
            .labels
            .clone()
            .or_else(|| workload.as_ref().map(|w| w.labels.clone()))
            .unwrap_or_default();
        let locality = workload
            .as_ref()
            .and_then(|w| snap.locality_of(w))
            .or_else(|| node.locality.clone())
            .unwrap_or_default();
        Proxy {
            node,
            workload,
            namespace,
            labels,
            locality,
        }
    }

    /// The proxy's primary IP.
    pub fn ip(&self) -> Option<IpAddr> {
        self.node.ips.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn istio_style_id() {
        let n = ProxyNode::parse(
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local",
            &Map::new(),
            None,
            None,
        )
        .expect("valid");
        assert_eq!(n.kind, ProxyKind::Sidecar);
        assert_eq!(n.ips, vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        assert_eq!(n.pod_name.as_deref(), Some("reviews-v1-abc"));
        assert_eq!(n.namespace.as_deref(), Some("bookinfo"));
        assert_eq!(n.interception, InterceptionMode::Redirect);
    }

    #[test]
    fn metadata_wins_and_bind_means_no_interception() {
        let n = ProxyNode::parse(
            "router~127.0.0.1~gw.x~x.svc.cluster.local",
            &meta(serde_json::json!({
                "NAMESPACE": "ingress",
                "LABELS": {"istio": "ingressgateway"},
                "STRAIT_OUTBOUND_BIND": "127.0.0.5",
            })),
            None,
            None,
        )
        .expect("valid");
        assert_eq!(n.kind, ProxyKind::Router);
        assert_eq!(n.namespace.as_deref(), Some("ingress"));
        assert_eq!(
            n.labels
                .as_deref()
                .and_then(|l| l.get("istio"))
                .map(String::as_str),
            Some("ingressgateway")
        );
        assert_eq!(n.interception, InterceptionMode::None);
    }

    #[test]
    fn bad_ids_and_metadata() {
        assert!(matches!(
            ProxyNode::parse("nonsense", &Map::new(), None, None),
            Err(ProxyNodeError::BadId(_))
        ));
        assert!(matches!(
            ProxyNode::parse("waypoint~1.2.3.4~a.b~c", &Map::new(), None, None),
            Err(ProxyNodeError::BadType(_))
        ));
        let err = ProxyNode::parse(
            "sidecar~1.2.3.4~a.b~c",
            &meta(serde_json::json!({"STRAIT_OUTBOUND_BIND": "nope"})),
            None,
            None,
        )
        .expect_err("bad ip");
        assert!(err.to_string().contains("STRAIT_OUTBOUND_BIND"));
    }
}
