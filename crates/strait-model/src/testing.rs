//! Builders of Kubernetes objects for tests (here and in downstream crates).

use serde_json::json;
use strait_api::Object;

fn obj(v: serde_json::Value) -> Object {
    match strait_api::parse_object(v, "default") {
        Ok(p) => p.object,
        Err(e) => panic!("test object does not parse: {e}"),
    }
}

/// A ClusterIP Service selecting `app: <name>`, with HTTP ports named `http-<port>`.
pub fn mk_service(name: &str, ns: &str, ports: &[u16]) -> Object {
    let ports: Vec<_> = ports
        .iter()
        .map(|p| json!({"name": format!("http-{p}"), "port": p, "targetPort": p}))
        .collect();
    obj(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name}, "ports": ports},
    }))
}

/// An EndpointSlice of `service` with ready endpoints at `ips`, each naming pod
/// `<service>-<i>`, exposing `http-<port>` for each port.
pub fn mk_slice(name: &str, ns: &str, service: &str, ips: &[&str], ports: &[u16]) -> Object {
    let endpoints: Vec<_> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": format!("{service}-{i}"), "namespace": ns},
            })
        })
        .collect();
    let ports: Vec<_> = ports
        .iter()
        .map(|p| json!({"name": format!("http-{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    obj(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
}

/// A running Pod with an IP, labels and a node.
pub fn mk_pod(name: &str, ns: &str, ip: &str, labels: &[(&str, &str)], node: &str) -> Object {
    let labels: serde_json::Map<_, _> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    obj(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
}

/// A Node in `region`/`zone`.
pub fn mk_node(name: &str, region: &str, zone: &str) -> Object {
    obj(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/region": region,
            "topology.kubernetes.io/zone": zone,
        }},
    }))
}
