//! Which pods a control plane injects, decided as Istio decides.
//!
//! In Istio the decision is split in two: the API server picks which webhook (which revision
//! or tag) to call from the namespace and object selectors of the MutatingWebhookConfigurations,
//! then the webhook applies its policy to the pod. [`decide`] does both, from the labels alone,
//! so that it gives the same answer whichever webhook the API server called (and so that a
//! pod sent to the wrong revision is left alone):
//!
//! 1. Never: pods of `kube-system` and `kube-public`, pods on the host network, pods that
//!    already carry `sidecar.istio.io/status`.
//! 2. Selection, first match wins:
//!    - namespace label `istio-injection`: `enabled` selects the default revision, any other
//!      value selects nothing (it wins over `istio.io/rev` on the namespace and on the pod);
//!    - namespace label `istio.io/rev=X` selects X (it wins over the pod's `istio.io/rev`);
//!    - pod label `istio.io/rev=X` selects X;
//!    - pod label `sidecar.istio.io/inject=true` selects the default revision;
//!    - otherwise nothing.
//!
//!    X may be a tag: it then selects the revision the tag points to, *through* the tag. The
//!    default revision is the one the `default` tag points to, else the revision named
//!    `default`. A pod label `sidecar.istio.io/inject=false` deselects the pod in every case.
//! 3. Policy of the selected webhook: the pod label `sidecar.istio.io/inject` (else the legacy
//!    annotation of that name) decides when it is set: `true`, `yes`, `on`, `y` inject, any
//!    other value does not; when neither is set the pod is injected.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::keys;

/// Namespaces whose pods are never injected.
pub const IGNORED_NAMESPACES: &[&str] = &["kube-system", "kube-public"];

/// What the decision reads of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// The pod's namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PodMeta {
    /// Reads a pod (or pod template) object. `namespace` is used when the object has none (a
    /// pod created by a controller carries its namespace in the admission request only).
    pub fn from_pod(pod: &Value, namespace: &str) -> PodMeta {
        let meta = &pod["metadata"];
        let ns = meta["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(namespace);
        PodMeta {
            namespace: ns.to_string(),
            labels: string_map(&meta["labels"]),
            annotations: string_map(&meta["annotations"]),
            host_network: pod["spec"]["hostNetwork"].as_bool().unwrap_or(false),
        }
    }
}

/// The outcome: inject or not, why, and through which tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True when this control plane injects the pod.
    pub inject: bool,
    /// The revision the pod selects, when it selects one (it may be another control plane's).
    pub revision: Option<String>,
    /// The tag the selection went through, when it went through one.
    pub tag: Option<String>,
    /// A sentence saying why.
    pub reason: String,
}

impl Decision {
    fn skip(reason: impl Into<String>) -> Decision {
        Decision {
            inject: false,
            revision: None,
            tag: None,
            reason: reason.into(),
        }
    }
}

/// A selected revision, and the tag it was selected through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    revision: String,
    tag: Option<String>,
}

/// A label value naming a revision or a tag. A tag shadows a revision of the same name.
fn resolve(value: &str, tags: &BTreeMap<String, String>) -> Target {
    match tags.get(value) {
        Some(rev) => Target {
            revision: rev.clone(),
            tag: Some(value.to_string()),
        },
        None => Target {
            revision: value.to_string(),
            tag: None,
        },
    }
}

/// The owner of `istio-injection=enabled`: the `default` tag's revision, else the revision
/// named `default`.
fn default_target(tags: &BTreeMap<String, String>) -> Target {
    resolve("default", tags)
}

/// Pods that are never injected, whoever asks.
fn never(pod: &PodMeta) -> Option<Decision> {
    if pod.host_network {
        return Some(Decision::skip("the pod uses the host network"));
    }
    if IGNORED_NAMESPACES.contains(&pod.namespace.as_str()) {
        return Some(Decision::skip(format!(
            "pods of namespace {} are never injected",
            pod.namespace
        )));
    }
    if pod.annotations.contains_key(keys::SIDECAR_STATUS) {
        return Some(Decision::skip(format!(
            "already injected (annotation {} is set)",
            keys::SIDECAR_STATUS
        )));
    }
    None
}

/// The webhook's policy: the pod's own `sidecar.istio.io/inject` (label, else annotation).
fn policy(pod: &PodMeta) -> Result<(), String> {
    let (value, from) = match pod.labels.get(keys::SIDECAR_INJECT) {
        Some(v) => (v.as_str(), "label"),
        None => match pod.annotations.get(keys::SIDECAR_INJECT) {
            Some(v) => (v.as_str(), "annotation"),
            None => return Ok(()),
        },
    };
    match value.to_ascii_lowercase().as_str() {
        "" | "y" | "yes" | "true" | "on" => Ok(()),
        _ => Err(format!(
            "pod {from} {}={value} refuses injection",
            keys::SIDECAR_INJECT
        )),
    }
}

fn describe(target: &Target) -> String {
    match &target.tag {
        Some(tag) => format!("tag {tag} (revision {})", target.revision),
        None => format!("revision {}", target.revision),
    }
}

/// Decides whether the control plane of `revision` injects `pod`, in a namespace labelled
/// `namespace_labels`, with `tags` (tag → revision) pointing where they point.
pub fn decide(
    pod: &PodMeta,
    namespace_labels: &BTreeMap<String, String>,
    revision: &str,
    tags: &BTreeMap<String, String>,
) -> Decision {
    if let Some(d) = never(pod) {
        return d;
    }
    let (target, why) = if let Some(v) = namespace_labels.get(keys::ISTIO_INJECTION) {
        if v != "enabled" {
            return Decision::skip(format!(
                "namespace {} is labelled {}={v}",
                pod.namespace,
                keys::ISTIO_INJECTION
            ));
        }
        (
            default_target(tags),
            format!("namespace label {}=enabled", keys::ISTIO_INJECTION),
        )
    } else if let Some(v) = namespace_labels.get(keys::ISTIO_REV) {
        (
            resolve(v, tags),
            format!("namespace label {}={v}", keys::ISTIO_REV),
        )
    } else if let Some(v) = pod.labels.get(keys::ISTIO_REV) {
        (
            resolve(v, tags),
            format!("pod label {}={v}", keys::ISTIO_REV),
        )
    } else if pod.labels.get(keys::SIDECAR_INJECT).map(String::as_str) == Some("true") {
        (
            default_target(tags),
            format!("pod label {}=true", keys::SIDECAR_INJECT),
        )
    } else {
        return Decision::skip(format!(
            "not selected: neither namespace label {} nor {}, nor pod label {} or {}=true",
            keys::ISTIO_INJECTION,
            keys::ISTIO_REV,
            keys::ISTIO_REV,
            keys::SIDECAR_INJECT
        ));
    };
    let selected = |inject: bool, reason: String| Decision {
        inject,
        revision: Some(target.revision.clone()),
        tag: target.tag.clone(),
        reason,
    };
    // The webhooks' object selectors leave out pods labelled exactly `false`.
    if pod.labels.get(keys::SIDECAR_INJECT).map(String::as_str) == Some("false") {
        return selected(
            false,
            format!(
                "{why} selects {}, but pod label {}=false refuses injection",
                describe(&target),
                keys::SIDECAR_INJECT
            ),
        );
    }
    if target.revision != revision {
        return selected(
            false,
            format!(
                "{why} selects {}, not revision {revision}",
                describe(&target)
            ),
        );
    }
    match policy(pod) {
        Ok(()) => selected(true, format!("{why} selects {}", describe(&target))),
        Err(refused) => selected(
            false,
            format!("{why} selects {}, but {refused}", describe(&target)),
        ),
    }
}

/// The decision of offline injection (`strait inject -f`), where the user has asked for
/// injection explicitly: the pod is injected for `revision` (through `tag`, if given) unless
/// it is never injected or refuses injection itself (`sidecar.istio.io/inject=false`, label
/// or annotation). Labels selecting revisions are not consulted, as `istioctl kube-inject`
/// does not consult them.
pub fn decide_offline(pod: &PodMeta, revision: &str, tag: Option<&str>) -> Decision {
    if let Some(d) = never(pod) {
        return d;
    }
    let target = Target {
        revision: revision.to_string(),
        tag: tag.map(str::to_string),
    };
    let (inject, reason) = match policy(pod) {
        Ok(()) => (true, format!("injected for {}", describe(&target))),
        Err(refused) => (false, refused),
    };
    Decision {
        inject,
        revision: Some(target.revision),
        tag: target.tag,
        reason,
    }
}

#[cfg(test)]
mod tests;
