//! The checks the API server applies to a pod, for what injection adds: the object must
//! read as a `k8s_openapi` Pod; names of containers (all kinds together) and volumes are
//! unique DNS labels; mounts name existing volumes; ports, probes, hooks, resources,
//! environment, labels and annotations are well formed; init containers carry probes and
//! hooks only as native sidecars; security contexts are consistent.
//!
//! Tests run it on every injected pod; it is public so that other crates' tests can too.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Lifecycle, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use strait_api::validate::{is_dns1123_label, is_label_key, is_label_value};

use crate::quantity::Quantity;

/// An IANA service name, as port names must be.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
];

fn port_ok(p: &IntOrString) -> bool {
    match p {
        IntOrString::Int(n) => (1..=65535).contains(n),
        IntOrString::String(s) => is_port_name(s),
    }
}

fn check_handler(
    at: &str,
    exec: bool,
    http: Option<&IntOrString>,
    tcp: Option<&IntOrString>,
    others: usize,
    out: &mut Vec<String>,
) {
    let n = usize::from(exec) + usize::from(http.is_some()) + usize::from(tcp.is_some()) + others;
    if n != 1 {
        out.push(format!("{at}: must have exactly one handler, has {n}"));
    }
    for p in [http, tcp].into_iter().flatten() {
        if !port_ok(p) {
            out.push(format!("{at}: invalid port {p:?}"));
        }
    }
}

fn check_probe(at: &str, p: &Probe, startup_or_liveness: bool, out: &mut Vec<String>) {
    check_handler(
        at,
        p.exec.is_some(),
        p.http_get.as_ref().map(|h| &h.port),
        p.tcp_socket.as_ref().map(|t| &t.port),
        usize::from(p.grpc.is_some()),
        out,
    );
    for (name, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("failureThreshold", p.failure_threshold, 1),
        ("successThreshold", p.success_threshold, 1),
    ] {
        if v.is_some_and(|v| v < min) {
            out.push(format!("{at}.{name}: must be at least {min}"));
        }
    }
    if startup_or_liveness && p.success_threshold.is_some_and(|s| s != 1) {
        out.push(format!("{at}.successThreshold: must be 1"));
    }
}

fn check_lifecycle_handler(at: &str, h: &LifecycleHandler, out: &mut Vec<String>) {
    check_handler(
        at,
        h.exec.as_ref().is_some_and(|e| {
            if e.command.as_ref().is_none_or(Vec::is_empty) {
                out.push(format!("{at}.exec.command: required"));
            }
            true
        }),
        h.http_get.as_ref().map(|g| &g.port),
        h.tcp_socket.as_ref().map(|t| &t.port),
        usize::from(h.sleep.is_some()),
        out,
    );
}

fn check_lifecycle(at: &str, l: &Lifecycle, out: &mut Vec<String>) {
    if let Some(h) = &l.post_start {
        check_lifecycle_handler(&format!("{at}.postStart"), h, out);
    }
    if let Some(h) = &l.pre_stop {
        check_lifecycle_handler(&format!("{at}.preStop"), h, out);
    }
}

fn check_container(
    at: &str,
    c: &Container,
    init: bool,
    volumes: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        out.push(format!("{at}.image: required"));
    }
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    match (&c.restart_policy, init) {
        (Some(p), true) if p != "Always" => {
            out.push(format!(
                "{at}.restartPolicy: only Always is allowed, not {p}"
            ));
        }
        (Some(_), false) => out.push(format!("{at}.restartPolicy: not allowed")),
        _ => {}
    }
    if init && !sidecar {
        for (name, set) in [
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ] {
            if set {
                out.push(format!("{at}.{name}: may not be set for init containers"));
            }
        }
    }
    if let Some(p) = &c.readiness_probe {
        check_probe(&format!("{at}.readinessProbe"), p, false, out);
    }
    if let Some(p) = &c.liveness_probe {
        check_probe(&format!("{at}.livenessProbe"), p, true, out);
    }
    if let Some(p) = &c.startup_probe {
        check_probe(&format!("{at}.startupProbe"), p, true, out);
    }
    if let Some(l) = &c.lifecycle {
        check_lifecycle(&format!("{at}.lifecycle"), l, out);
    }
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pat = format!("{at}.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            out.push(format!(
                "{pat}.containerPort: {} out of range",
                p.container_port
            ));
        }
        if let Some(n) = &p.name {
            if !is_port_name(n) {
                out.push(format!("{pat}.name: {n:?} is not an IANA service name"));
            }
            if !port_names.insert(n.clone()) {
                out.push(format!("{pat}.name: duplicate {n:?}"));
            }
        }
        if let Some(proto) = &p.protocol
            && !["TCP", "UDP", "SCTP"].contains(&proto.as_str())
        {
            out.push(format!("{pat}.protocol: {proto:?}"));
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let eat = format!("{at}.env[{i}]");
        if !is_env_name(&e.name) {
            out.push(format!(
                "{eat}.name: {:?} is not a valid variable name",
                e.name
            ));
        }
        if let Some(src) = &e.value_from {
            if e.value.is_some() {
                out.push(format!("{eat}: value and valueFrom are exclusive"));
            }
            if let Some(f) = &src.field_ref
                && !ENV_FIELD_PATHS.contains(&f.field_path.as_str())
                && !f.field_path.starts_with("metadata.labels['")
                && !f.field_path.starts_with("metadata.annotations['")
            {
                out.push(format!(
                    "{eat}.valueFrom.fieldRef.fieldPath: {:?} is not supported",
                    f.field_path
                ));
            }
        }
    }
    let mut paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mat = format!("{at}.volumeMounts[{i}]");
        if !volumes.contains(&m.name) {
            out.push(format!("{mat}.name: no volume named {:?}", m.name));
        }
        if m.mount_path.is_empty() || m.mount_path.contains(':') {
            out.push(format!("{mat}.mountPath: {:?} is invalid", m.mount_path));
        }
        if !paths.insert(m.mount_path.clone()) {
            out.push(format!(
                "{mat}.mountPath: {:?} is mounted twice",
                m.mount_path
            ));
        }
    }
    if let Some(r) = &c.resources {
        let parse = |what: &str,
                     m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                     out: &mut Vec<String>| {
            let mut vals = BTreeMap::new();
            for (k, q) in m.iter().flatten() {
                match Quantity::parse(&q.0) {
                    Some(v) if !v.is_negative() => {
                        vals.insert(k.clone(), v);
                    }
                    _ => out.push(format!("{at}.resources.{what}.{k}: {:?} is invalid", q.0)),
                }
            }
            vals
        };
        let req = parse("requests", &r.requests, out);
        let lim = parse("limits", &r.limits, out);
        for (k, q) in &req {
            if lim.get(k).is_some_and(|l| q > l) {
                out.push(format!("{at}.resources.requests.{k}: above its limit"));
            }
        }
    }
    if let Some(sc) = &c.security_context {
        let adds: Vec<&str> = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .map(|a| a.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if sc.allow_privilege_escalation == Some(false)
            && (sc.privileged == Some(true)
                || adds.contains(&"SYS_ADMIN")
                || adds.contains(&"CAP_SYS_ADMIN"))
        {
            out.push(format!(
                "{at}.securityContext: allowPrivilegeEscalation false with privileged or SYS_ADMIN"
            ));
        }
        if sc.run_as_non_root == Some(true) && sc.run_as_user == Some(0) {
            out.push(format!(
                "{at}.securityContext: runAsNonRoot with runAsUser 0"
            ));
        }
        for cap in adds {
            if cap.is_empty() || cap.bytes().any(|b| b.is_ascii_lowercase()) {
                out.push(format!("{at}.securityContext.capabilities: {cap:?}"));
            }
        }
    }
}

/// Every problem the API server would find in `pod` (empty when it would accept it).
pub fn validate(pod: &Value) -> Vec<String> {
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(p) => p,
        Err(e) => return vec![format!("not a v1 Pod: {e}")],
    };
    let mut out = Vec::new();
    let meta = &typed.metadata;
    for (k, v) in meta.labels.iter().flatten() {
        if !is_label_key(k) {
            out.push(format!("metadata.labels: key {k:?} is invalid"));
        }
        if !is_label_value(v) {
            out.push(format!("metadata.labels[{k}]: value {v:?} is invalid"));
        }
    }
    let mut annotation_bytes = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        annotation_bytes += k.len() + v.len();
        if !is_label_key(k) {
            out.push(format!("metadata.annotations: key {k:?} is invalid"));
        }
    }
    if annotation_bytes > 256 * 1024 {
        out.push("metadata.annotations: more than 256 KiB".into());
    }
    let Some(spec) = &typed.spec else {
        out.push("spec: required".into());
        return out;
    };
    if spec.containers.is_empty() {
        out.push("spec.containers: required".into());
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        out.push("spec.terminationGracePeriodSeconds: negative".into());
    }
    let mut volumes = BTreeSet::new();
    let raw_volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if !is_dns1123_label(&v.name) {
            out.push(format!("{at}.name: {:?} is not a DNS label", v.name));
        }
        if !volumes.insert(v.name.clone()) {
            out.push(format!("{at}.name: duplicate {:?}", v.name));
        }
        let sources = raw_volumes
            .get(i)
            .and_then(Value::as_object)
            .map(|m| m.keys().filter(|k| *k != "name").count())
            .unwrap_or(0);
        if sources != 1 {
            out.push(format!("{at}: must have exactly one source, has {sources}"));
        }
        for (j, item) in v
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter().flatten())
            .enumerate()
        {
            let iat = format!("{at}.downwardAPI.items[{j}]");
            if item.path.is_empty()
                || item.path.starts_with('/')
                || item.path.split('/').any(|s| s == "..")
            {
                out.push(format!("{iat}.path: {:?} is invalid", item.path));
            }
            match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), None) if VOLUME_FIELD_PATHS.contains(&f.field_path.as_str()) => {}
                (Some(f), None) => out.push(format!(
                    "{iat}.fieldRef.fieldPath: {:?} is not supported",
                    f.field_path
                )),
                (None, Some(_)) => {}
                _ => out.push(format!("{iat}: exactly one of fieldRef, resourceFieldRef")),
            }
        }
    }
    let mut names = BTreeSet::new();
    let groups = [
        (
            "spec.initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
            true,
        ),
        ("spec.containers", spec.containers.as_slice(), false),
    ];
    for (field, list, init) in groups {
        for (i, c) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if !is_dns1123_label(&c.name) {
                out.push(format!("{at}.name: {:?} is not a DNS label", c.name));
            }
            if !names.insert(c.name.clone()) {
                out.push(format!("{at}.name: duplicate {:?}", c.name));
            }
            check_container(&at, c, init, &volumes, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_pod(containers: Value, volumes: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "x"}},
               "spec": {"containers": containers, "volumes": volumes}})
    }

    #[test]
    fn accepts_a_plain_pod() {
        let p = mk_pod(json!([{"name": "app", "image": "nginx"}]), json!([]));
        assert_eq!(validate(&p), Vec::<String>::new());
    }

    #[test]
    fn finds_what_the_api_server_refuses() {
        let cases = [
            (
                mk_pod(
                    json!([{"name": "a", "image": "x"}, {"name": "a", "image": "x"}]),
                    json!([]),
                ),
                "duplicate",
            ),
            (
                mk_pod(json!([{"name": "Bad_Name", "image": "x"}]), json!([])),
                "DNS label",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]),
                    json!([]),
                ),
                "no volume",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]),
                    json!([]),
                ),
                "out of range",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "http--x"}]}]),
                    json!([]),
                ),
                "IANA",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]),
                    json!([]),
                ),
                "above its limit",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]),
                    json!([]),
                ),
                "invalid",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "restartPolicy": "Always"}]),
                    json!([]),
                ),
                "restartPolicy",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "readinessProbe": {}}]),
                    json!([]),
                ),
                "exactly one handler",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]),
                    json!([]),
                ),
                "runAsNonRoot",
            ),
            (
                mk_pod(json!([{"name": "a", "image": "x"}]), json!([{"name": "v"}])),
                "exactly one source",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x"}]),
                    json!([{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]),
                ),
                "duplicate",
            ),
            (
                mk_pod(
                    json!([{"name": "a", "image": "x", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}]),
                    json!([]),
                ),
                "not supported",
            ),
            (mk_pod(json!([{"name": "a"}]), json!([])), "image"),
            (mk_pod(json!("nope"), json!([])), "not a v1 Pod"),
        ];
        for (pod, says) in cases {
            let problems = validate(&pod);
            assert!(
                problems.iter().any(|p| p.contains(says)),
                "{says}: {problems:?} for {pod}"
            );
        }
        let init_probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}],
                     "initContainers": [{"name": "i", "image": "x", "readinessProbe": {"tcpSocket": {"port": 1}}}]}});
        assert!(
            validate(&init_probe)
                .iter()
                .any(|p| p.contains("init containers"))
        );
        let bad_label = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "-bad"}},
            "spec": {"containers": [{"name": "a", "image": "x"}]}});
        assert!(validate(&bad_label).iter().any(|p| p.contains("value")));
    }

    #[test]
    fn names() {
        assert!(is_label_key("strait.io/rev"));
        assert!(is_label_key("service.istio.io/canonical-name"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key("/x"));
        assert!(is_label_value(""));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_port_name("http-envoy-prom"));
        assert!(!is_port_name("1234"));
    }
}
