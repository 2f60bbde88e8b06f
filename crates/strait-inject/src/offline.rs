//! Offline injection (`strait inject -f`), like `istioctl kube-inject`: every Pod, and the pod
//! template of every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob (and of
//! the items of a `List`) in a multi-document YAML file is injected; other documents pass
//! through unchanged. Comments are not kept.

use serde_json::Value;
use tracing::debug;

use crate::decision::{PodMeta, decide_offline};
use crate::inject::Injector;
use crate::{Error, Result};

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Kind/namespace/name`.
    pub object: String,
    /// True when it was injected.
    pub injected: bool,
    /// Why (or why not).
    pub reason: String,
}

/// The result of injecting a file.
#[derive(Debug, Clone)]
pub struct Output {
    /// The documents, as YAML separated by `---`.
    pub yaml: String,
    /// One entry per workload or pod seen.
    pub outcomes: Vec<Outcome>,
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .or_else(|| obj["metadata"]["generateName"].as_str())
        .unwrap_or("<unnamed>")
        .to_string()
}

/// Injects one object in place (recursing into `List` items).
fn inject_object(
    obj: &mut Value,
    injector: &Injector<'_>,
    tag: Option<&str>,
    default_namespace: &str,
    outcomes: &mut Vec<Outcome>,
) -> Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    if (kind == "List" || kind.ends_with("List")) && obj["items"].is_array() {
        if let Some(items) = obj["items"].as_array_mut() {
            for item in items {
                inject_object(item, injector, tag, default_namespace, outcomes)?;
            }
        }
        return Ok(());
    }
    let namespace = obj["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(default_namespace)
        .to_string();
    let workload = name_of(obj);
    let label = format!("{kind}/{namespace}/{workload}");
    let target: &mut Value = if kind == "Pod" {
        obj
    } else if let Some(path) = template_path(&kind) {
        let mut cur = obj;
        for k in path {
            cur = &mut cur[*k];
        }
        if !cur.is_object() {
            return Err(Error::Pod(format!("{label} has no pod template")));
        }
        cur
    } else {
        return Ok(());
    };
    let meta = PodMeta::from_pod(target, &namespace);
    let d = decide_offline(&meta, &injector.config().revision, tag);
    debug!(object = %label, inject = d.inject, reason = %d.reason, "offline injection");
    if d.inject {
        let workload_hint = (kind != "Pod").then_some(workload.as_str());
        let injection = injector
            .inject(target, tag, workload_hint)
            .map_err(|e| Error::Pod(format!("{label}: {e}")))?;
        *target = injection.pod;
    }
    outcomes.push(Outcome {
        object: label,
        injected: d.inject,
        reason: d.reason,
    });
    Ok(())
}

/// Injects every pod and pod template of `yaml` (several documents separated by `---`).
/// Objects without a namespace are taken to be in `namespace`.
pub fn inject_yaml(
    yaml: &str,
    injector: &Injector<'_>,
    tag: Option<&str>,
    namespace: &str,
) -> Result<Output> {
    let mut docs = Vec::new();
    let mut outcomes = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let index = i + 1;
        let doc = |reason: String| Error::Document { index, reason };
        let value: Value = serde::Deserialize::deserialize(de).map_err(|e| doc(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        if value.is_object() {
            inject_object(&mut value, injector, tag, namespace, &mut outcomes)
                .map_err(|e| doc(e.to_string()))?;
        }
        let text = serde_yaml_ng::to_string(&value).map_err(|e| doc(e.to_string()))?;
        docs.push(text);
    }
    Ok(Output {
        yaml: docs.join("---\n"),
        outcomes,
    })
}

#[cfg(test)]
mod tests {
    use strait_api::MeshConfig;

    use super::*;
    use crate::inject::InjectorConfig;
    use crate::validation::validate;

    fn templates(v: &Value, out: &mut Vec<Value>) {
        let kind = v["kind"].as_str().unwrap_or_default();
        if let Some(items) = v["items"].as_array() {
            for i in items {
                templates(i, out);
            }
        }
        let t = match kind {
            "Pod" => Some(v.clone()),
            "CronJob" => Some(v["spec"]["jobTemplate"]["spec"]["template"].clone()),
            k if template_path(k).is_some() => Some(v["spec"]["template"].clone()),
            _ => None,
        };
        if let Some(mut t) = t {
            t["apiVersion"] = "v1".into();
            t["kind"] = "Pod".into();
            out.push(t);
        }
    }

    #[test]
    fn multi_document_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/offline");
        let input = std::fs::read_to_string(dir.join("input.yaml")).expect("input");
        let config = InjectorConfig {
            revision: "canary".into(),
            native_sidecars: false,
            ..InjectorConfig::default()
        };
        let mesh = MeshConfig::default();
        let out =
            inject_yaml(&input, &Injector::new(&config, &mesh), None, "apps").expect("injects");
        let report: Vec<String> = out
            .outcomes
            .iter()
            .map(|o| {
                format!(
                    "{} {}: {}",
                    if o.injected { "injected" } else { "skipped " },
                    o.object,
                    o.reason
                )
            })
            .collect();
        crate::golden::check("offline/report.txt", &(report.join("\n") + "\n"));
        crate::golden::check("offline/output.yaml", &out.yaml);
        // Every injected template is a valid pod; the rest of the file is unchanged.
        let mut docs = Vec::new();
        for de in serde_yaml_ng::Deserializer::from_str(&out.yaml) {
            let v: Value = serde::Deserialize::deserialize(de).expect("output parses");
            docs.push(v);
        }
        let mut pods = Vec::new();
        for d in &docs {
            templates(d, &mut pods);
        }
        let injected = pods
            .iter()
            .filter(|p| p["metadata"]["annotations"]["sidecar.istio.io/status"].is_string())
            .count();
        assert_eq!(injected, out.outcomes.iter().filter(|o| o.injected).count());
        assert!(injected >= 6, "{report:#?}");
        for p in &pods {
            let problems = validate(p);
            assert!(problems.is_empty(), "{problems:#?}\n{p}");
        }
        let service = docs
            .iter()
            .find(|d| d["kind"] == "Service")
            .expect("service kept");
        assert_eq!(service["spec"]["ports"][0]["port"], 80);
        // Injecting the output again changes nothing.
        let again =
            inject_yaml(&out.yaml, &Injector::new(&config, &mesh), None, "apps").expect("again");
        assert_eq!(again.yaml, out.yaml);
    }

    #[test]
    fn bad_documents_are_named() {
        let config = InjectorConfig::default();
        let mesh = MeshConfig::default();
        let inj = Injector::new(&config, &mesh);
        let e = inject_yaml("kind: Pod\n---\n: : bad\n", &inj, None, "x").expect_err("bad yaml");
        assert!(e.to_string().starts_with("document "), "{e}");
        let e = inject_yaml(
            "kind: Deployment\nmetadata: {name: d}\nspec: {}\n",
            &inj,
            None,
            "x",
        )
        .expect_err("no template");
        assert!(e.to_string().contains("Deployment/x/d"), "{e}");
    }
}
