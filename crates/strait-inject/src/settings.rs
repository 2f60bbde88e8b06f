//! What one pod's sidecar looks like: the mesh's `defaultConfig`, overridden by the pod's
//! `proxy.istio.io/config` annotation and the `sidecar.istio.io/*` and
//! `traffic.sidecar.istio.io/*` annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use strait_api::MeshConfig;
use strait_api::mesh_config::ProxyConfig;

use crate::iptables::{self, Capture};
use crate::quantity::Quantity;
use crate::{Error, Result, keys};

/// Requests and limits of the Envoy container, by resource name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Requests.
    pub requests: BTreeMap<String, String>,
    /// Limits.
    pub limits: BTreeMap<String, String>,
}

/// The readiness probe of the Envoy container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// `initialDelaySeconds`.
    pub initial_delay_seconds: i32,
    /// `periodSeconds`.
    pub period_seconds: i32,
    /// `failureThreshold`.
    pub failure_threshold: i32,
}

/// Everything about one pod's sidecar that the mesh or the pod can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Start Envoy first and hold the application until Envoy is ready.
    pub hold_application: bool,
    /// How long a listener Envoy drains keeps serving (`--drain-time-s`).
    pub drain_duration: Duration,
    /// How long Envoy keeps serving after the pod is asked to stop.
    pub termination_drain_duration: Duration,
    /// Envoy worker threads (0: one per core).
    pub concurrency: u32,
    /// Extra node metadata.
    pub proxy_metadata: BTreeMap<String, String>,
    /// Container resources.
    pub resources: Resources,
    /// An image for this pod's Envoy, when the pod names one.
    pub image: Option<String>,
    /// Envoy's log level.
    pub log_level: String,
    /// Envoy's component log levels.
    pub component_log_level: String,
    /// Envoy's readiness port (0: no readiness listener, no probes).
    pub status_port: u16,
    /// Readiness probe timing.
    pub readiness: Readiness,
    /// Traffic capture.
    pub capture: Capture,
}

/// Envoy container resources when neither the mesh nor the pod says (Istio's defaults).
pub fn default_resources() -> Resources {
    let m = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Resources {
        requests: m(&[("cpu", "100m"), ("memory", "128Mi")]),
        limits: m(&[("cpu", "2000m"), ("memory", "1024Mi")]),
    }
}

fn err(name: &'static str) -> impl Fn(String) -> Error {
    move |reason| setting(name, reason)
}

fn setting(name: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Reads a `ProxyConfig` from the `proxy.istio.io/config` annotation (YAML or JSON).
fn annotation_proxy_config(text: &str) -> Result<ProxyConfig> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| setting(keys::PROXY_CONFIG, e.to_string()))?;
    if value.is_null() {
        return Ok(ProxyConfig::default());
    }
    serde_json::from_value(value).map_err(|e| setting(keys::PROXY_CONFIG, e.to_string()))
}

/// The mesh's `defaultConfig` with the pod's `proxy.istio.io/config` laid over it.
fn merged_proxy_config(
    mesh: &MeshConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<ProxyConfig> {
    let mut pc = mesh.default_config.clone();
    let Some(text) = annotations.get(keys::PROXY_CONFIG) else {
        return Ok(pc);
    };
    let over = annotation_proxy_config(text)?;
    // The annotation's fields win where it sets them.
    pc.discovery_address = over.discovery_address.or(pc.discovery_address);
    pc.drain_duration = over.drain_duration.or(pc.drain_duration);
    pc.termination_drain_duration = over
        .termination_drain_duration
        .or(pc.termination_drain_duration);
    pc.hold_application_until_proxy_starts = over
        .hold_application_until_proxy_starts
        .or(pc.hold_application_until_proxy_starts);
    pc.concurrency = over.concurrency.or(pc.concurrency);
    pc.resources = over.resources.or(pc.resources);
    pc.proxy_metadata.extend(over.proxy_metadata);
    Ok(pc)
}

const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
];

fn seconds(name: &str, v: &str) -> Result<i32> {
    v.trim()
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| setting(name, format!("{v:?} is not a whole number of seconds")))
}

/// Where a resource value came from: a default may give way, the pod's own may not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Default,
    Pod,
}

/// The annotation that sets a resource's request or limit.
fn annotation_of(resource: &str, limit: bool) -> &'static str {
    match (resource, limit) {
        ("cpu", false) => keys::PROXY_CPU,
        ("cpu", true) => keys::PROXY_CPU_LIMIT,
        (_, false) => keys::PROXY_MEMORY,
        (_, true) => keys::PROXY_MEMORY_LIMIT,
    }
}

fn resources(pc: &ProxyConfig, annotations: &BTreeMap<String, String>) -> Result<Resources> {
    let defaults = match &pc.resources {
        Some(r) => Resources {
            requests: r
                .requests
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            limits: r
                .limits
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        },
        None => default_resources(),
    };
    let mut requests: BTreeMap<String, (String, Origin)> = defaults
        .requests
        .into_iter()
        .map(|(k, v)| (k, (v, Origin::Default)))
        .collect();
    let mut limits: BTreeMap<String, (String, Origin)> = defaults
        .limits
        .into_iter()
        .map(|(k, v)| (k, (v, Origin::Default)))
        .collect();
    for (key, resource, limit) in [
        (keys::PROXY_CPU, "cpu", false),
        (keys::PROXY_MEMORY, "memory", false),
        (keys::PROXY_CPU_LIMIT, "cpu", true),
        (keys::PROXY_MEMORY_LIMIT, "memory", true),
    ] {
        if let Some(v) = annotations.get(key) {
            let map = if limit { &mut limits } else { &mut requests };
            map.insert(resource.to_string(), (v.trim().to_string(), Origin::Pod));
        }
    }
    for (map, limit) in [(&requests, false), (&limits, true)] {
        for (resource, (v, origin)) in map {
            let name = match origin {
                Origin::Pod => annotation_of(resource, limit),
                Origin::Default => "defaultConfig.resources",
            };
            let what = if limit { "limit" } else { "request" };
            match Quantity::parse(v) {
                Some(q) if !q.is_negative() => {}
                _ => {
                    return Err(setting(
                        name,
                        format!("{v:?} is not a valid {resource} {what} quantity"),
                    ));
                }
            }
        }
    }
    // A request above its limit is refused by the API server: a default gives way to what
    // the pod asked for (without a request, Kubernetes uses the limit).
    let names: Vec<String> = requests.keys().cloned().collect();
    for resource in names {
        let (Some((req, req_origin)), Some((lim, lim_origin))) =
            (requests.get(&resource), limits.get(&resource))
        else {
            continue;
        };
        let (Some(rq), Some(lq)) = (Quantity::parse(req), Quantity::parse(lim)) else {
            continue;
        };
        if rq <= lq {
            continue;
        }
        match (*req_origin, *lim_origin) {
            (Origin::Pod, Origin::Pod) | (Origin::Default, Origin::Default) => {
                return Err(setting(
                    if *req_origin == Origin::Pod {
                        annotation_of(&resource, true)
                    } else {
                        "defaultConfig.resources"
                    },
                    format!("{resource} request {req} is above its limit {lim}"),
                ));
            }
            (Origin::Pod, Origin::Default) => {
                limits.remove(&resource);
            }
            (Origin::Default, Origin::Pod) => {
                requests.remove(&resource);
            }
        }
    }
    Ok(Resources {
        requests: requests.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        limits: limits.into_iter().map(|(k, (v, _))| (k, v)).collect(),
    })
}

fn capture(annotations: &BTreeMap<String, String>, status_port: u16) -> Result<Capture> {
    if let Some(mode) = annotations.get(keys::INTERCEPTION_MODE) {
        match mode.as_str() {
            "REDIRECT" => {}
            "TPROXY" | "NONE" => {
                return Err(setting(
                    keys::INTERCEPTION_MODE,
                    format!(
                        "{mode} is not supported: strait captures traffic with REDIRECT only \
                         (remove the annotation or set it to REDIRECT)"
                    ),
                ));
            }
            other => {
                return Err(setting(
                    keys::INTERCEPTION_MODE,
                    format!("{other:?} is not an interception mode (REDIRECT)"),
                ));
            }
        }
    }
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let inbound_ports =
        iptables::parse_ports(get(keys::INCLUDE_INBOUND_PORTS).unwrap_or("*"), true)
            .map_err(err(keys::INCLUDE_INBOUND_PORTS))?;
    let mut exclude_inbound_ports = Vec::new();
    // Envoy's own ports answer the kubelet and Prometheus directly.
    if status_port != 0 {
        exclude_inbound_ports.push(status_port);
    }
    exclude_inbound_ports.push(keys::STATS_PORT);
    for p in iptables::parse_ports(get(keys::EXCLUDE_INBOUND_PORTS).unwrap_or(""), false)
        .map_err(err(keys::EXCLUDE_INBOUND_PORTS))?
        .list()
    {
        if !exclude_inbound_ports.contains(p) {
            exclude_inbound_ports.push(*p);
        }
    }
    let outbound_ranges =
        iptables::parse_ranges(get(keys::INCLUDE_OUTBOUND_IP_RANGES).unwrap_or("*"), true)
            .map_err(err(keys::INCLUDE_OUTBOUND_IP_RANGES))?;
    let exclude_outbound_ranges =
        iptables::parse_ranges(get(keys::EXCLUDE_OUTBOUND_IP_RANGES).unwrap_or(""), false)
            .map_err(err(keys::EXCLUDE_OUTBOUND_IP_RANGES))?
            .list()
            .to_vec();
    let include_outbound_ports =
        iptables::parse_ports(get(keys::INCLUDE_OUTBOUND_PORTS).unwrap_or(""), false)
            .map_err(err(keys::INCLUDE_OUTBOUND_PORTS))?
            .list()
            .to_vec();
    let exclude_outbound_ports =
        iptables::parse_ports(get(keys::EXCLUDE_OUTBOUND_PORTS).unwrap_or(""), false)
            .map_err(err(keys::EXCLUDE_OUTBOUND_PORTS))?
            .list()
            .to_vec();
    Ok(Capture {
        inbound_ports,
        exclude_inbound_ports,
        outbound_ranges,
        exclude_outbound_ranges,
        include_outbound_ports,
        exclude_outbound_ports,
        ..Capture::default()
    })
}

impl ProxySettings {
    /// The settings of a pod with `annotations` in a mesh configured by `mesh`.
    pub fn resolve(mesh: &MeshConfig, annotations: &BTreeMap<String, String>) -> Result<Self> {
        let pc = merged_proxy_config(mesh, annotations)?;
        let log_level = annotations
            .get(keys::LOG_LEVEL)
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "warning".to_string());
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(setting(
                keys::LOG_LEVEL,
                format!("{log_level:?} is not one of {}", LOG_LEVELS.join(", ")),
            ));
        }
        let component_log_level = annotations
            .get(keys::COMPONENT_LOG_LEVEL)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "misc:error".to_string());
        for part in component_log_level.split(',').filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some((c, l)) if !c.is_empty() && LOG_LEVELS.contains(&l) => {}
                _ => {
                    return Err(setting(
                        keys::COMPONENT_LOG_LEVEL,
                        format!("{part:?} is not COMPONENT:LEVEL"),
                    ));
                }
            }
        }
        let status_port = match annotations.get(keys::STATUS_PORT) {
            None => keys::HEALTH_PORT,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(0) => 0,
                Ok(p)
                    if ![
                        keys::ADMIN_PORT,
                        keys::OUTBOUND_CAPTURE_PORT,
                        keys::INBOUND_CAPTURE_PORT,
                        keys::STATS_PORT,
                    ]
                    .contains(&p) =>
                {
                    p
                }
                _ => {
                    return Err(setting(
                        keys::STATUS_PORT,
                        format!("{v:?} is not a free port number (0 disables the readiness probe)"),
                    ));
                }
            },
        };
        let mut readiness = Readiness {
            initial_delay_seconds: 0,
            period_seconds: 2,
            failure_threshold: 4,
        };
        if let Some(v) = annotations.get(keys::READINESS_INITIAL_DELAY) {
            readiness.initial_delay_seconds = seconds(keys::READINESS_INITIAL_DELAY, v)?;
        }
        if let Some(v) = annotations.get(keys::READINESS_PERIOD) {
            readiness.period_seconds = seconds(keys::READINESS_PERIOD, v)?.max(1);
        }
        if let Some(v) = annotations.get(keys::READINESS_FAILURE_THRESHOLD) {
            readiness.failure_threshold = seconds(keys::READINESS_FAILURE_THRESHOLD, v)?.max(1);
        }
        let image = annotations
            .get(keys::PROXY_IMAGE)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(ProxySettings {
            hold_application: pc.hold_application_until_proxy_starts.unwrap_or(false),
            drain_duration: pc
                .drain_duration
                .map(|d| d.get())
                .unwrap_or(Duration::from_secs(45)),
            termination_drain_duration: pc
                .termination_drain_duration
                .map(|d| d.get())
                .unwrap_or(Duration::from_secs(5)),
            concurrency: pc.concurrency.unwrap_or(2),
            proxy_metadata: pc.proxy_metadata.clone(),
            resources: resources(&pc, annotations)?,
            image,
            log_level,
            component_log_level,
            status_port,
            readiness,
            capture: capture(annotations, status_port)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<ProxySettings> {
        ProxySettings::resolve(&MeshConfig::default(), &mk_annotations(pairs))
    }

    #[test]
    fn defaults() {
        let s = resolve(&[]).expect("defaults");
        assert!(!s.hold_application);
        assert_eq!(s.termination_drain_duration, Duration::from_secs(5));
        assert_eq!(s.drain_duration, Duration::from_secs(45));
        assert_eq!(s.resources, default_resources());
        assert_eq!(s.status_port, 15021);
        assert_eq!(s.capture.exclude_inbound_ports, vec![15021, 15090]);
    }

    #[test]
    fn mesh_then_annotation() {
        let mesh = strait_model_free_mesh(
            "defaultConfig:\n  holdApplicationUntilProxyStarts: true\n  terminationDrainDuration: 20s\n  \
             resources:\n    requests: {cpu: 50m, memory: 64Mi}\n    limits: {cpu: 1, memory: 256Mi}\n",
        );
        let s = ProxySettings::resolve(&mesh, &BTreeMap::new()).expect("mesh");
        assert!(s.hold_application);
        assert_eq!(s.termination_drain_duration, Duration::from_secs(20));
        assert_eq!(s.resources.limits["cpu"], "1");
        let s = ProxySettings::resolve(
            &mesh,
            &mk_annotations(&[(
                keys::PROXY_CONFIG,
                "holdApplicationUntilProxyStarts: false\nterminationDrainDuration: 7s\nproxyMetadata: {A: b}",
            )]),
        )
        .expect("annotation");
        assert!(!s.hold_application);
        assert_eq!(s.termination_drain_duration, Duration::from_secs(7));
        assert_eq!(s.proxy_metadata["A"], "b");
        // JSON is YAML too.
        let s = resolve(&[(
            keys::PROXY_CONFIG,
            r#"{"holdApplicationUntilProxyStarts": true}"#,
        )])
        .expect("json");
        assert!(s.hold_application);
    }

    fn strait_model_free_mesh(yaml: &str) -> MeshConfig {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        MeshConfig::from_json_value(v).expect("mesh config")
    }

    #[test]
    fn resource_annotations() {
        let s = resolve(&[(keys::PROXY_CPU, "3"), (keys::PROXY_MEMORY_LIMIT, "64Mi")])
            .expect("resources");
        // The annotated request beats the default limit; the annotated limit the default
        // request.
        assert_eq!(
            s.resources.requests.get("cpu").map(String::as_str),
            Some("3")
        );
        assert!(!s.resources.limits.contains_key("cpu"));
        assert!(!s.resources.requests.contains_key("memory"));
        assert_eq!(s.resources.limits["memory"], "64Mi");
        let e = resolve(&[(keys::PROXY_CPU, "2"), (keys::PROXY_CPU_LIMIT, "1")])
            .expect_err("request above limit");
        assert!(e.to_string().contains("above its limit"), "{e}");
        let e = resolve(&[(keys::PROXY_MEMORY, "lots")]).expect_err("bad quantity");
        assert!(e.to_string().contains(keys::PROXY_MEMORY), "{e}");
    }

    #[test]
    fn refused_annotations_say_why() {
        for (k, v, says) in [
            (keys::INTERCEPTION_MODE, "TPROXY", "not supported"),
            (
                keys::INTERCEPTION_MODE,
                "SOMETHING",
                "not an interception mode",
            ),
            (keys::EXCLUDE_INBOUND_PORTS, "http", "not a port"),
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/40", "prefix"),
            (keys::LOG_LEVEL, "loud", "not one of"),
            (keys::COMPONENT_LOG_LEVEL, "upstream", "COMPONENT:LEVEL"),
            (keys::STATUS_PORT, "15001", "not a free port"),
            (keys::READINESS_PERIOD, "-1", "whole number"),
            (keys::PROXY_CONFIG, "[unclosed", "proxy.istio.io/config"),
        ] {
            let e = resolve(&[(k, v)]).expect_err(k);
            let text = e.to_string();
            assert!(text.contains(k) && text.contains(says), "{k}={v}: {text}");
        }
        assert!(resolve(&[(keys::INTERCEPTION_MODE, "REDIRECT")]).is_ok());
        let s = resolve(&[(keys::STATUS_PORT, "0")]).expect("no probes");
        assert_eq!(s.status_port, 0);
        assert_eq!(s.capture.exclude_inbound_ports, vec![15090]);
    }
}
