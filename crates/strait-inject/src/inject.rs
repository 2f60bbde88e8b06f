//! The pod mutation: what a selected pod gains, as a JSON Patch and as the mutated pod.
//!
//! - `strait-init`, the first init container (strait's image, `strait init`): loads the
//!   capture rules, writes Envoy's bootstrap into the shared `strait-envoy` emptyDir from the
//!   pod's downward-API identity, and copies the `strait` binary there for Envoy's hooks.
//! - `istio-proxy`, stock Envoy started from that bootstrap, as uid 1337: a native sidecar
//!   (the second init container, `restartPolicy: Always`) where the cluster has them, else a
//!   regular container (first when the application is held until Envoy is ready). Its
//!   readiness probe asks Envoy's readiness listener; its preStop hook (`strait drain`)
//!   drains inbound listeners and waits `terminationDrainDuration` before Envoy gets SIGTERM.
//! - The `strait-envoy` and `strait-podinfo` volumes, labels naming the revision (and tag),
//!   Istio's canonical service labels, and the `sidecar.istio.io/status` annotation.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use strait_api::MeshConfig;

use crate::decision::PodMeta;
use crate::patch::{Op, Patcher};
use crate::settings::ProxySettings;
use crate::{Error, Result, keys};

/// The Envoy image injected by default.
pub const DEFAULT_PROXY_IMAGE: &str = "envoyproxy/envoy:v1.36.4";
/// The init container's image by default: strait's own, at this version.
pub const DEFAULT_INIT_IMAGE: &str =
    concat!("ghcr.io/strait-mesh/strait:", env!("CARGO_PKG_VERSION"));
/// Where Envoy lives in its image (stock and distroless images alike).
pub const ENVOY_BINARY: &str = "/usr/local/bin/envoy";
/// The pod's grace period when it sets none (Kubernetes' default).
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// Time beyond the drain for the application and Envoy to exit.
const GRACE_MARGIN_SECONDS: i64 = 5;
/// How long the hold-application hook waits for Envoy.
const WAIT_TIMEOUT: &str = "60s";

/// What is injected, independent of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectorConfig {
    /// This control plane's revision.
    pub revision: String,
    /// The control plane's namespace (its Services live there).
    pub system_namespace: String,
    /// Cluster DNS suffix.
    pub domain: String,
    /// The cluster's id (node metadata `CLUSTER_ID`).
    pub cluster_id: String,
    /// The Envoy image.
    pub proxy_image: String,
    /// The init container's image (strait's).
    pub init_image: String,
    /// Inject Envoy as a native sidecar (Kubernetes 1.29 and later).
    pub native_sidecars: bool,
    /// The xDS address, instead of the revision's or tag's Service.
    pub xds_address: Option<String>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            revision: "default".to_string(),
            system_namespace: "istio-system".to_string(),
            domain: "cluster.local".to_string(),
            cluster_id: "Kubernetes".to_string(),
            proxy_image: DEFAULT_PROXY_IMAGE.to_string(),
            init_image: DEFAULT_INIT_IMAGE.to_string(),
            native_sidecars: false,
            xds_address: None,
        }
    }
}

impl InjectorConfig {
    /// The xDS address a pod injected directly (`tag: None`) or through a tag connects to:
    /// the revision's Service `strait-<rev>`, or the tag's Service `strait-tag-<tag>`, so that
    /// moving the tag moves the proxy.
    pub fn xds_address(&self, tag: Option<&str>) -> String {
        if let Some(a) = &self.xds_address {
            return a.clone();
        }
        match tag {
            Some(t) => format!(
                "{}.{}.svc:15010",
                strait_api::labels::tag_service_name(t),
                self.system_namespace
            ),
            None => format!(
                "strait-{}.{}.svc:15010",
                self.revision, self.system_namespace
            ),
        }
    }
}

/// A pod's injection: the patch and the pod it makes.
#[derive(Debug, Clone)]
pub struct Injection {
    /// RFC 6902 operations, in order.
    pub patch: Vec<Op>,
    /// The mutated pod.
    pub pod: Value,
}

impl Injection {
    /// The mutated pod as a typed Kubernetes Pod.
    pub fn typed_pod(&self) -> Result<k8s_openapi::api::core::v1::Pod> {
        serde_json::from_value(self.pod.clone()).map_err(|e| Error::Pod(e.to_string()))
    }
}

/// The `sidecar.istio.io/status` annotation: what was injected.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    init_containers: Vec<&'a str>,
    containers: Vec<&'a str>,
    volumes: Vec<&'a str>,
    image_pull_secrets: Option<()>,
    revision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

/// Injects pods for one control plane and mesh config.
#[derive(Debug, Clone, Copy)]
pub struct Injector<'a> {
    config: &'a InjectorConfig,
    mesh: &'a MeshConfig,
}

fn names_of(list: &Value) -> Vec<(usize, String)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .filter_map(|(i, c)| c["name"].as_str().map(|n| (i, n.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn env_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn duration_arg(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Envoy's `--drain-time-s`: the drain duration, and at least the termination drain.
fn drain_seconds(s: &ProxySettings) -> u64 {
    let secs = |d: std::time::Duration| d.as_secs_f64().ceil() as u64;
    secs(s.drain_duration)
        .max(secs(s.termination_drain_duration))
        .max(1)
}

/// A valid label value from a name: at most 63 characters, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let cut: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The workload a pod belongs to, as Istio names it: a Deployment's name for pods of its
/// ReplicaSets, a Job's, else the owner's, else the pod's generated or own name.
fn workload_name(pod: &Value, labels: &BTreeMap<String, String>) -> Option<String> {
    let meta = &pod["metadata"];
    let owners = meta["ownerReferences"].as_array();
    let owner = owners.and_then(|o| {
        o.iter()
            .find(|r| r["controller"].as_bool() == Some(true))
            .or_else(|| o.first())
    });
    if let Some(o) = owner
        && let (Some(kind), Some(name)) = (o["kind"].as_str(), o["name"].as_str())
    {
        if kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = name.strip_suffix(&format!("-{hash}"))
        {
            return Some(deployment.to_string());
        }
        if kind == "Job"
            && let Some((cron, stamp)) = name.rsplit_once('-')
            && stamp.len() >= 8
            && stamp.chars().all(|c| c.is_ascii_digit())
        {
            return Some(cron.to_string());
        }
        return Some(name.to_string());
    }
    if let Some(g) = meta["generateName"].as_str().filter(|g| !g.is_empty()) {
        return Some(g.trim_end_matches('-').to_string());
    }
    meta["name"].as_str().map(str::to_string)
}

/// Lays the pod's own `istio-proxy` container (a custom template, as Istio allows) over the
/// injected one: its fields win; `image: auto` keeps the injected image; `env` and
/// `volumeMounts` merge by name and mount path; `resources` and `securityContext` merge
/// field by field.
fn overlay(injected: &mut Value, custom: &Value) {
    let (Some(dst), Some(src)) = (injected.as_object_mut(), custom.as_object()) else {
        return;
    };
    for (k, v) in src {
        match k.as_str() {
            "name" => {}
            "image" if v.as_str() == Some("auto") => {}
            "env" | "volumeMounts" => {
                let key = if k == "env" { "name" } else { "mountPath" };
                let mut list = dst
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in v.as_array().into_iter().flatten() {
                    match list.iter_mut().find(|e| e[key] == item[key]) {
                        Some(e) => *e = item.clone(),
                        None => list.push(item.clone()),
                    }
                }
                dst.insert(k.clone(), Value::Array(list));
            }
            "resources" => {
                let r = dst.entry(k.clone()).or_insert_with(|| json!({}));
                for part in ["requests", "limits"] {
                    if let Some(m) = v[part].as_object() {
                        for (res, q) in m {
                            r[part][res] = q.clone();
                        }
                    }
                }
                if let Some(m) = v.as_object() {
                    for (other, val) in m.iter().filter(|(n, _)| *n != "requests" && *n != "limits")
                    {
                        r[other] = val.clone();
                    }
                }
            }
            "securityContext" => {
                let sc = dst.entry(k.clone()).or_insert_with(|| json!({}));
                if let (Some(sc), Some(m)) = (sc.as_object_mut(), v.as_object()) {
                    for (f, val) in m {
                        sc.insert(f.clone(), val.clone());
                    }
                }
            }
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

impl<'a> Injector<'a> {
    /// An injector for `config` in a mesh configured by `mesh`.
    pub fn new(config: &'a InjectorConfig, mesh: &'a MeshConfig) -> Self {
        Injector { config, mesh }
    }

    /// The injector's settings.
    pub fn config(&self) -> &InjectorConfig {
        self.config
    }

    /// Injects a pod (or a pod template: an object with `metadata` and `spec`). `tag` is the
    /// tag the pod was selected through; `workload` names its workload when the caller knows
    /// it (offline injection of a Deployment), for the canonical service labels.
    pub fn inject(
        &self,
        pod: &Value,
        tag: Option<&str>,
        workload: Option<&str>,
    ) -> Result<Injection> {
        let spec = pod
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| Error::Pod("spec is missing".into()))?;
        let containers = spec["containers"]
            .as_array()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Error::Pod("spec.containers is missing or empty".into()))?;
        if containers.iter().any(|c| !c["name"].is_string()) {
            return Err(Error::Pod("a container has no name".into()));
        }
        let meta = PodMeta::from_pod(pod, "");
        let settings = ProxySettings::resolve(self.mesh, &meta.annotations)?;

        let app_containers = names_of(&spec["containers"]);
        let init_containers = names_of(&spec["initContainers"]);
        let custom = app_containers
            .iter()
            .find(|(_, n)| n == keys::PROXY_CONTAINER)
            .map(|(i, _)| *i);
        for (_, n) in &init_containers {
            if n == keys::INIT_CONTAINER || n == keys::PROXY_CONTAINER {
                return Err(Error::Conflict {
                    what: "an init container",
                    name: n.clone(),
                });
            }
        }
        if app_containers
            .iter()
            .any(|(_, n)| n == keys::INIT_CONTAINER)
        {
            return Err(Error::Conflict {
                what: "a container",
                name: keys::INIT_CONTAINER.to_string(),
            });
        }
        for (_, v) in names_of(&spec["volumes"]) {
            if v == keys::ENVOY_VOLUME || v == keys::PODINFO_VOLUME {
                return Err(Error::Conflict {
                    what: "a volume",
                    name: v,
                });
            }
        }

        let mut proxy = self.proxy_container(&settings);
        if let Some(i) = custom {
            overlay(&mut proxy, &containers[i]);
        }
        let init = self.init_container(&settings, tag);
        let native = self.config.native_sidecars;

        let mut p = Patcher::new(pod.clone());
        if let Some(i) = custom {
            p.remove(format!("/spec/containers/{i}"))?;
        }
        p.insert("/spec/initContainers", Some(0), init)?;
        if native {
            p.insert("/spec/initContainers", Some(1), proxy)?;
        } else if settings.hold_application {
            p.insert("/spec/containers", Some(0), proxy)?;
        } else {
            p.insert("/spec/containers", None, proxy)?;
        }
        p.insert(
            "/spec/volumes",
            None,
            json!({"name": keys::ENVOY_VOLUME, "emptyDir": {}}),
        )?;
        p.insert(
            "/spec/volumes",
            None,
            json!({"name": keys::PODINFO_VOLUME, "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}},
            ]}}),
        )?;

        // The grace period must cover the drain.
        let drain = settings.termination_drain_duration.as_secs_f64().ceil() as i64;
        let needed = drain + GRACE_MARGIN_SECONDS;
        let current = spec["terminationGracePeriodSeconds"].as_i64();
        if current.unwrap_or(DEFAULT_GRACE_SECONDS) < needed {
            p.add("/spec/terminationGracePeriodSeconds", json!(needed))?;
        }

        if !pod.get("metadata").is_some_and(Value::is_object) {
            p.add("/metadata", json!({}))?;
        }
        p.set_member(
            "/metadata/labels",
            keys::STRAIT_REV,
            json!(self.config.revision),
        )?;
        if let Some(t) = tag {
            p.set_member("/metadata/labels", keys::STRAIT_TAG, json!(t))?;
        }
        if !meta.labels.contains_key(keys::CANONICAL_NAME) {
            let name = ["app.kubernetes.io/name", "app"]
                .iter()
                .find_map(|k| meta.labels.get(*k).cloned())
                .or_else(|| workload.map(str::to_string))
                .or_else(|| workload_name(pod, &meta.labels))
                .map(|n| label_value(&n))
                .filter(|n| !n.is_empty());
            if let Some(n) = name {
                p.set_member("/metadata/labels", keys::CANONICAL_NAME, json!(n))?;
            }
        }
        if !meta.labels.contains_key(keys::CANONICAL_REVISION) {
            let rev = ["app.kubernetes.io/version", "version"]
                .iter()
                .find_map(|k| meta.labels.get(*k).cloned())
                .map(|v| label_value(&v))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "latest".to_string());
            p.set_member("/metadata/labels", keys::CANONICAL_REVISION, json!(rev))?;
        }

        let status = Status {
            init_containers: if native {
                vec![keys::INIT_CONTAINER, keys::PROXY_CONTAINER]
            } else {
                vec![keys::INIT_CONTAINER]
            },
            containers: if native {
                vec![]
            } else {
                vec![keys::PROXY_CONTAINER]
            },
            volumes: vec![keys::ENVOY_VOLUME, keys::PODINFO_VOLUME],
            image_pull_secrets: None,
            revision: &self.config.revision,
            tag,
        };
        let status = serde_json::to_string(&status).map_err(|e| Error::Pod(e.to_string()))?;
        p.set_member("/metadata/annotations", keys::SIDECAR_STATUS, json!(status))?;
        if !meta.annotations.contains_key(keys::DEFAULT_CONTAINER)
            && let Some((_, first)) = app_containers
                .iter()
                .find(|(_, n)| n != keys::PROXY_CONTAINER)
        {
            p.set_member(
                "/metadata/annotations",
                keys::DEFAULT_CONTAINER,
                json!(first),
            )?;
        }
        let (pod, patch) = p.finish();
        Ok(Injection { patch, pod })
    }

    fn init_container(&self, s: &ProxySettings, tag: Option<&str>) -> Value {
        let c = &s.capture;
        let mut args: Vec<String> = vec![
            "init".into(),
            "--revision".into(),
            self.config.revision.clone(),
        ];
        if let Some(t) = tag {
            args.extend(["--tag".into(), t.to_string()]);
        }
        args.extend([
            "--xds-address".into(),
            self.config.xds_address(tag),
            "--cluster-id".into(),
            self.config.cluster_id.clone(),
            "--domain".into(),
            self.config.domain.clone(),
            "--status-port".into(),
            s.status_port.to_string(),
            "--inbound-ports".into(),
            c.inbound_ports.to_string(),
        ]);
        let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let optional = [
            ("--exclude-inbound-ports", list(&c.exclude_inbound_ports)),
            ("--outbound-ip-ranges", c.outbound_ranges.to_string()),
            (
                "--exclude-outbound-ip-ranges",
                c.exclude_outbound_ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("--include-outbound-ports", list(&c.include_outbound_ports)),
            ("--exclude-outbound-ports", list(&c.exclude_outbound_ports)),
        ];
        for (flag, value) in optional {
            if !value.is_empty() {
                args.extend([flag.to_string(), value]);
            }
        }
        for (k, v) in &s.proxy_metadata {
            args.extend(["--metadata".into(), format!("{k}={v}")]);
        }
        json!({
            "name": keys::INIT_CONTAINER,
            "image": self.config.init_image,
            "imagePullPolicy": "IfNotPresent",
            "args": args,
            "env": [
                env_field("POD_NAME", "metadata.name"),
                env_field("POD_NAMESPACE", "metadata.namespace"),
                env_field("INSTANCE_IP", "status.podIP"),
                env_field("INSTANCE_IPS", "status.podIPs"),
                env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            ],
            "resources": {
                "requests": {"cpu": "10m", "memory": "16Mi"},
                "limits": {"cpu": "1", "memory": "128Mi"},
            },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "privileged": false,
                "readOnlyRootFilesystem": false,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "runAsUser": 0,
            },
            "volumeMounts": [
                {"name": keys::ENVOY_VOLUME, "mountPath": keys::ENVOY_DIR},
                {"name": keys::PODINFO_VOLUME, "mountPath": keys::PODINFO_DIR, "readOnly": true},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        })
    }

    fn proxy_container(&self, s: &ProxySettings) -> Value {
        let native = self.config.native_sidecars;
        let image = s
            .image
            .clone()
            .unwrap_or_else(|| self.config.proxy_image.clone());
        let args: Vec<String> = vec![
            "-c".into(),
            keys::BOOTSTRAP_PATH.into(),
            "--disable-hot-restart".into(),
            // Inbound listeners stop accepting at the end of the drain time: not before the
            // termination drain is over.
            "--drain-time-s".into(),
            drain_seconds(s).to_string(),
            "--drain-strategy".into(),
            "immediate".into(),
            "--concurrency".into(),
            s.concurrency.to_string(),
            "--log-level".into(),
            s.log_level.clone(),
            "--component-log-level".into(),
            s.component_log_level.clone(),
        ];
        let probe = |path: &str| json!({"httpGet": {"path": path, "port": s.status_port, "scheme": "HTTP"}});
        let mut c = json!({
            "name": keys::PROXY_CONTAINER,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": [ENVOY_BINARY],
            "args": args,
            "ports": [{"containerPort": keys::STATS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
            "lifecycle": {
                "preStop": {"exec": {"command": [
                    keys::STRAIT_COPY_PATH, "drain",
                    "--duration", duration_arg(s.termination_drain_duration),
                ]}},
            },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "runAsGroup": keys::PROXY_UID,
                "runAsNonRoot": true,
                "runAsUser": keys::PROXY_UID,
            },
            "volumeMounts": [
                {"name": keys::ENVOY_VOLUME, "mountPath": keys::ENVOY_DIR, "readOnly": true},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        let mut resources = serde_json::Map::new();
        if !s.resources.requests.is_empty() {
            resources.insert("requests".into(), json!(s.resources.requests));
        }
        if !s.resources.limits.is_empty() {
            resources.insert("limits".into(), json!(s.resources.limits));
        }
        c["resources"] = Value::Object(resources);
        if s.status_port != 0 {
            let mut r = probe("/healthz/ready");
            r["initialDelaySeconds"] = json!(s.readiness.initial_delay_seconds);
            r["periodSeconds"] = json!(s.readiness.period_seconds);
            r["failureThreshold"] = json!(s.readiness.failure_threshold);
            r["timeoutSeconds"] = json!(3);
            c["readinessProbe"] = r;
        }
        if native {
            c["restartPolicy"] = json!("Always");
        }
        if s.hold_application {
            if native && s.status_port != 0 {
                // The kubelet starts the next containers once the startup probe passes.
                let mut sp = probe("/healthz/ready");
                sp["periodSeconds"] = json!(1);
                sp["failureThreshold"] = json!(600);
                sp["timeoutSeconds"] = json!(3);
                c["startupProbe"] = sp;
            } else {
                // The kubelet starts the next container once this hook returns.
                c["lifecycle"]["postStart"] = json!({"exec": {"command": [
                    keys::STRAIT_COPY_PATH, "wait", "--timeout", WAIT_TIMEOUT,
                ]}});
            }
        }
        c
    }
}

#[cfg(test)]
mod tests;
