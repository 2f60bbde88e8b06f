//! Envoy bootstrap documents that point a stock Envoy at strait.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use strait_model::Locality;

/// What a bootstrap says about the proxy and where its control plane is.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The xDS server, `host:port`.
    pub xds_address: String,
    /// The node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    pub node_id: String,
    /// The node cluster (service cluster) name.
    pub node_cluster: String,
    /// The proxy's namespace.
    pub namespace: Option<String>,
    /// The proxy's labels.
    pub labels: BTreeMap<String, String>,
    /// Without traffic capture: where outbound listeners bind.
    pub outbound_bind: Option<IpAddr>,
    /// Without traffic capture: where the application listens.
    pub app_address: Option<IpAddr>,
    /// The admin interface address.
    pub admin_address: IpAddr,
    /// The admin interface port.
    pub admin_port: u16,
    /// Incremental (Delta) xDS instead of state of the world.
    pub delta: bool,
    /// The proxy's locality.
    pub locality: Option<Locality>,
    /// Extra node metadata.
    pub metadata: BTreeMap<String, String>,
    /// A listener on all addresses at this port answering `GET /healthz/ready` with the
    /// admin interface's `/ready` (and nothing else), so that the kubelet can probe a proxy
    /// whose admin interface stays on loopback. Off by default.
    pub health_port: Option<u16>,
    /// A listener on all addresses at this port serving `GET /stats/prometheus` from the
    /// admin interface. Off by default.
    pub stats_port: Option<u16>,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self {
            xds_address: "127.0.0.1:15010".to_string(),
            node_id: "sidecar~127.0.0.1~proxy.default~default.svc.cluster.local".to_string(),
            node_cluster: "strait-proxy".to_string(),
            namespace: None,
            labels: BTreeMap::new(),
            outbound_bind: None,
            app_address: None,
            admin_address: IpAddr::from([127, 0, 0, 1]),
            admin_port: 15000,
            delta: false,
            locality: None,
            metadata: BTreeMap::new(),
            health_port: None,
            stats_port: None,
        }
    }
}

/// The cluster through which the status listeners reach the admin interface.
const ADMIN_CLUSTER: &str = "strait-admin";

/// A listener on `0.0.0.0:port` that forwards `GET <path>` (only) to the admin interface's
/// `<admin_path>`.
fn admin_route_listener(name: &str, port: u16, path: &str, admin_path: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {
                    "name": name,
                    "virtual_hosts": [{
                        "name": name,
                        "domains": ["*"],
                        "routes": [{
                            "match": {
                                "path": path,
                                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                            },
                            "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": admin_path, "timeout": "5s"},
                        }],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    })
}

/// The status listeners asked for, and the admin cluster they use (none when none is asked).
fn status_resources(o: &BootstrapOptions) -> (Vec<Value>, Option<Value>) {
    let mut listeners = Vec::new();
    if let Some(port) = o.health_port {
        listeners.push(admin_route_listener(
            "strait-health",
            port,
            "/healthz/ready",
            "/ready",
        ));
    }
    if let Some(port) = o.stats_port {
        listeners.push(admin_route_listener(
            "strait-stats",
            port,
            "/stats/prometheus",
            "/stats/prometheus",
        ));
    }
    if listeners.is_empty() {
        return (listeners, None);
    }
    let admin = if o.admin_address.is_unspecified() {
        if o.admin_address.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "::1".to_string()
        }
    } else {
        o.admin_address.to_string()
    };
    let cluster = json!({
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": admin, "port_value": o.admin_port,
            }}}}]}],
        },
    });
    (listeners, Some(cluster))
}

/// Splits `host:port` (IPv6 hosts in brackets).
fn split_host_port(addr: &str) -> (String, u16) {
    if let Some((h, p)) = addr.rsplit_once(':')
        && let Ok(port) = p.parse::<u16>()
    {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        return (h.to_string(), port);
    }
    (addr.to_string(), 15010)
}

/// The Envoy binary to run bootstraps with: `STRAIT_ENVOY`, else the newest version that
/// `cargo xtask envoy` (and `.ci/run`) installed under `$STRAIT_CACHE/envoy/<version>/`
/// (default cache `~/.cache/strait`), else `envoy` on the `PATH`. `None` when there is none.
pub fn installed_envoy() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("STRAIT_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("STRAIT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/strait")));
    if let Some(cache) = cache
        && let Ok(entries) = std::fs::read_dir(cache.join("envoy"))
    {
        let newest = entries
            .flatten()
            .filter_map(|e| {
                let version: Vec<u32> = e
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                let bin = e.path().join("envoy/_bin/envoy");
                bin.exists().then_some((version, bin))
            })
            .max();
        if let Some((_, bin)) = newest {
            return Some(bin);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|bin| bin.exists())
}

/// A complete bootstrap, as a JSON value (Envoy reads it as YAML or JSON).
pub fn bootstrap(o: &BootstrapOptions) -> Value {
    let (xds_host, xds_port) = split_host_port(&o.xds_address);
    let mut metadata = serde_json::Map::new();
    for (k, v) in &o.metadata {
        metadata.insert(k.clone(), json!(v));
    }
    if let Some(ns) = &o.namespace {
        metadata.insert("NAMESPACE".into(), json!(ns));
    }
    if !o.labels.is_empty() {
        metadata.insert("LABELS".into(), json!(o.labels));
    }
    if let Some(b) = o.outbound_bind {
        metadata.insert("INTERCEPTION_MODE".into(), json!("NONE"));
        metadata.insert("STRAIT_OUTBOUND_BIND".into(), json!(b.to_string()));
    }
    if let Some(a) = o.app_address {
        metadata.insert("STRAIT_APP_ADDRESS".into(), json!(a.to_string()));
    }
    let mut node = json!({
        "id": o.node_id,
        "cluster": o.node_cluster,
        "metadata": metadata,
    });
    if let Some(l) = &o.locality {
        node["locality"] = json!({"region": l.region, "zone": l.zone, "sub_zone": l.subzone});
    }
    // IPs connect as STATIC; names need DNS.
    let xds_type = if xds_host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let (status_listeners, admin_cluster) = status_resources(o);
    let mut doc = json!({
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": o.admin_address.to_string(), "port_value": o.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if o.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": xds_type,
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": xds_host, "port_value": xds_port,
                    }}}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                        }},
                    },
                },
                "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
            }],
        },
        // Without a connection limit Envoy warns at start; this one is effectively unlimited.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 2147483647,
                },
            }],
        },
    });
    if let Some(c) = admin_cluster {
        if let Some(clusters) = doc["static_resources"]["clusters"].as_array_mut() {
            clusters.push(c);
        }
        doc["static_resources"]["listeners"] = Value::Array(status_listeners);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_shape() {
        let b = bootstrap(&BootstrapOptions {
            xds_address: "strait.istio-system.svc:15010".into(),
            outbound_bind: Some(IpAddr::from([127, 0, 0, 1])),
            delta: true,
            ..Default::default()
        });
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(b["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            15010
        );
        assert_eq!(split_host_port("[::1]:9000"), ("::1".to_string(), 9000));
        assert!(b["static_resources"]["listeners"].is_null());
    }

    #[test]
    fn status_listeners_reach_only_what_they_serve() {
        let b = bootstrap(&BootstrapOptions {
            health_port: Some(15021),
            stats_port: Some(15090),
            admin_address: IpAddr::from([0, 0, 0, 0]),
            ..Default::default()
        });
        let listeners = b["static_resources"]["listeners"]
            .as_array()
            .expect("listeners");
        assert_eq!(listeners.len(), 2);
        let routes = |l: &Value| {
            l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
                ["routes"]
                .clone()
        };
        let health = routes(&listeners[0]);
        assert_eq!(health.as_array().map(Vec::len), Some(1));
        assert_eq!(health[0]["match"]["path"], "/healthz/ready");
        assert_eq!(health[0]["route"]["prefix_rewrite"], "/ready");
        assert_eq!(
            listeners[0]["address"]["socket_address"]["port_value"],
            15021
        );
        assert_eq!(
            routes(&listeners[1])[0]["match"]["path"],
            "/stats/prometheus"
        );
        let admin = &b["static_resources"]["clusters"][1];
        assert_eq!(admin["name"], "strait-admin");
        assert_eq!(
            admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "127.0.0.1"
        );
    }
}
