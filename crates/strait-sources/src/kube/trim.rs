//! Trimming watched objects down to what the mesh index reads, before they are parsed and
//! kept: managed fields, `kubectl apply`'s copy of the last applied object, resource versions,
//! node status, pod specs beyond ports, secret keys that hold no certificate, …

use serde_json::{Map, Value};
use strait_api::Kind;

/// The annotation `kubectl apply` keeps a full copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Secret keys that hold certificates, keys and CRLs (Istio's names and Kubernetes' TLS ones).
const SECRET_KEYS: &[&str] = &[
    "tls.crt",
    "tls.key",
    "ca.crt",
    "ca.crl",
    "tls.ocsp-staple",
    "cert",
    "key",
    "cacert",
    "crl",
];

/// Keeps only `keys` of the mapping at `field` of `v` (removes it if `keys` leaves nothing).
fn keep_keys(v: &mut Map<String, Value>, field: &str, keys: &[&str]) {
    if let Some(Value::Object(m)) = v.get_mut(field) {
        m.retain(|k, _| keys.contains(&k.as_str()));
        if m.is_empty() {
            v.remove(field);
        }
    }
}

/// Removes what nothing downstream reads from an object of `kind`, in place. The resource
/// version goes too, so that an update that changed nothing strait reads (a pod's status
/// heartbeat, a node's) trims to the same content as before and can be recognised as such.
pub(crate) fn trim(kind: Kind, v: &mut Value) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        let drop_annotations = matches!(kind, Kind::Node | Kind::Secret | Kind::ConfigMap);
        if let Some(Value::Object(a)) = meta.get_mut("annotations") {
            a.remove(LAST_APPLIED);
            if a.is_empty() || drop_annotations {
                meta.remove("annotations");
            }
        }
    }
    match kind {
        Kind::Node | Kind::Namespace => {
            obj.remove("spec");
            obj.remove("status");
        }
        Kind::Pod => {
            if let Some(Value::Object(spec)) = obj.get_mut("spec") {
                spec.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "containers" | "nodeName" | "serviceAccountName" | "hostNetwork"
                    )
                });
                if let Some(Value::Array(containers)) = spec.get_mut("containers") {
                    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                        c.retain(|k, _| k == "name" || k == "ports");
                    }
                }
            }
            if let Some(Value::Object(status)) = obj.get_mut("status") {
                status.retain(|k, _| matches!(k.as_str(), "phase" | "podIP" | "podIPs"));
            }
        }
        Kind::Service => {
            obj.remove("status");
        }
        Kind::Secret => {
            keep_keys(obj, "data", SECRET_KEYS);
            keep_keys(obj, "stringData", SECRET_KEYS);
        }
        Kind::ConfigMap => {
            keep_keys(obj, "data", &["mesh"]);
            obj.remove("binaryData");
        }
        Kind::EndpointSlice | Kind::Endpoints => {}
        // Config kinds: their status is written by controllers and read by nobody here.
        _ => {
            obj.remove("status");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pods_keep_identity_ports_and_addresses() {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "a", "namespace": "ns", "resourceVersion": "7", "labels": {"app": "a"},
                "annotations": {LAST_APPLIED: "{…}", "prometheus.io/scrape": "true"},
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {
                "nodeName": "n1", "serviceAccountName": "sa", "volumes": [{"name": "v"}],
                "containers": [{"name": "app", "image": "app:1", "env": [{"name": "X"}],
                                "ports": [{"name": "http", "containerPort": 8080}]}],
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "conditions": [{"type": "Ready"}], "containerStatuses": []},
        });
        trim(Kind::Pod, &mut pod);
        assert_eq!(
            pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "ns", "labels": {"app": "a"},
                             "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                         "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]},
            })
        );
        assert!(strait_api::parse_object(pod, "default").is_ok());
    }

    #[test]
    fn nodes_keep_labels_only() {
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"images": [{"names": ["big"]}]},
        });
        trim(Kind::Node, &mut node);
        assert_eq!(
            node,
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"}}})
        );
    }

    #[test]
    fn secrets_keep_certificate_keys_and_no_annotations() {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "c", "namespace": "ns", "annotations": {LAST_APPLIED: "secret"}},
            "data": {"tls.crt": "Y3J0", "tls.key": "a2V5", "other": "eA=="},
        });
        trim(Kind::Secret, &mut s);
        assert_eq!(s["data"], json!({"tls.crt": "Y3J0", "tls.key": "a2V5"}));
        assert!(s["metadata"].get("annotations").is_none());
    }

    #[test]
    fn configmaps_keep_the_mesh_key() {
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "connectTimeout: 5s", "meshNetworks": "networks: {}"},
        });
        trim(Kind::ConfigMap, &mut cm);
        assert_eq!(cm["data"], json!({"mesh": "connectTimeout: 5s"}));
    }
}
