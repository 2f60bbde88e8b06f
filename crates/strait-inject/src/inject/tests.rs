//! Golden cases: `testdata/inject/<case>/input.yaml` holds the namespace's labels, the
//! control plane (revision, tags, native sidecars, mesh config) and the pod; the test writes
//! what was decided (`decision.txt`), the JSON Patch (`patch.json`) and the mutated pod
//! (`pod.yaml`). Every injected pod is validated like the API server would, the patch is
//! replayed on the original pod, and injecting again changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use strait_api::MeshConfig;

use super::*;
use crate::decision::{PodMeta, decide};
use crate::golden;
use crate::patch::{self, Op};
use crate::validation::validate;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default = "default_revision")]
    revision: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    native_sidecars: bool,
    #[serde(default)]
    mesh: Option<Value>,
    pod: Value,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_revision() -> String {
    "default".into()
}

struct Outcome {
    decision: crate::Decision,
    patch: Vec<Op>,
    pod: Value,
}

fn run(case: &Case) -> Outcome {
    let mesh = match &case.mesh {
        Some(m) => MeshConfig::from_json_value(m.clone()).expect("mesh config"),
        None => MeshConfig::default(),
    };
    let config = InjectorConfig {
        revision: case.revision.clone(),
        native_sidecars: case.native_sidecars,
        ..InjectorConfig::default()
    };
    let meta = PodMeta::from_pod(&case.pod, &case.namespace);
    let decision = decide(&meta, &case.namespace_labels, &case.revision, &case.tags);
    if !decision.inject {
        return Outcome {
            decision,
            patch: Vec::new(),
            pod: case.pod.clone(),
        };
    }
    let injection = Injector::new(&config, &mesh)
        .inject(&case.pod, decision.tag.as_deref(), None)
        .expect("injects");
    Outcome {
        decision,
        patch: injection.patch,
        pod: injection.pod,
    }
}

fn check_case(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/inject")
        .join(name);
    let text = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let case: Case = serde_yaml_ng::from_str(&text).expect("case");
    let out = run(&case);

    if out.decision.inject {
        let typed = Injection {
            patch: out.patch.clone(),
            pod: out.pod.clone(),
        }
        .typed_pod()
        .expect("a k8s-openapi Pod");
        assert!(typed.spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == "istio-proxy")
        }));
    }
    let problems = validate(&out.pod);
    assert!(
        problems.is_empty(),
        "{name}: the API server would refuse:\n{problems:#?}"
    );
    // The patch as the API server receives it replays to the same pod.
    let wire = serde_json::to_vec(&out.patch).expect("encode");
    let ops: Vec<Op> = serde_json::from_slice(&wire).expect("decode");
    assert_eq!(
        patch::apply(&case.pod, &ops).expect("patch applies"),
        out.pod,
        "{name}: patch and mutated pod disagree"
    );
    // Injecting again does nothing.
    if out.decision.inject {
        let again = decide(
            &PodMeta::from_pod(&out.pod, &case.namespace),
            &case.namespace_labels,
            &case.revision,
            &case.tags,
        );
        assert!(
            !again.inject && again.reason.contains("already injected"),
            "{again:?}"
        );
    }

    let d = &out.decision;
    golden::check(
        &format!("inject/{name}/decision.txt"),
        &format!(
            "inject: {}\nrevision: {}\ntag: {}\nreason: {}\n",
            d.inject,
            d.revision.as_deref().unwrap_or("-"),
            d.tag.as_deref().unwrap_or("-"),
            d.reason
        ),
    );
    let mut patch_text = serde_json::to_string_pretty(&out.patch).expect("json");
    patch_text.push('\n');
    golden::check(&format!("inject/{name}/patch.json"), &patch_text);
    golden::check(
        &format!("inject/{name}/pod.yaml"),
        &serde_yaml_ng::to_string(&out.pod).expect("yaml"),
    );
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("testdata/inject")
        .flatten()
        .filter(|e| e.path().join("input.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        check_case(&name);
    }
}

fn mk_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]},
    })
}

fn inject_with(
    config: &InjectorConfig,
    pod: &Value,
    tag: Option<&str>,
) -> crate::Result<Injection> {
    Injector::new(config, &MeshConfig::default()).inject(pod, tag, None)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name} in {pod}"))
}

#[test]
fn xds_address_follows_the_tag() {
    let config = InjectorConfig {
        revision: "canary".into(),
        ..InjectorConfig::default()
    };
    let pod = mk_pod(json!({}));
    let direct = inject_with(&config, &pod, None).expect("direct");
    let init = container(&direct.pod, "initContainers", "strait-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--xds-address", "strait-canary.istio-system.svc:15010"]),
        "{args:?}"
    );
    assert!(!args.contains(&"--tag"));
    assert_eq!(direct.pod["metadata"]["labels"]["strait.io/rev"], "canary");
    assert!(direct.pod["metadata"]["labels"]["strait.io/tag"].is_null());

    let tagged = inject_with(&config, &pod, Some("stable")).expect("tagged");
    let init = container(&tagged.pod, "initContainers", "strait-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--xds-address", "strait-tag-stable.istio-system.svc:15010"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--tag", "stable"]));
    assert_eq!(tagged.pod["metadata"]["labels"]["strait.io/tag"], "stable");
    let status: Value = serde_json::from_str(
        tagged.pod["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .expect("status"),
    )
    .expect("status is JSON");
    assert_eq!(status["revision"], "canary");
    assert_eq!(status["tag"], "stable");
    assert_eq!(status["containers"], json!(["istio-proxy"]));
}

#[test]
fn refusals_are_errors_naming_the_cause() {
    let config = InjectorConfig::default();
    let e = inject_with(
        &config,
        &mk_pod(json!({"sidecar.istio.io/interceptionMode": "TPROXY"})),
        None,
    )
    .expect_err("TPROXY");
    assert!(e.to_string().contains("TPROXY is not supported"), "{e}");
    let mut pod = mk_pod(json!({}));
    pod["spec"]["volumes"] = json!([{"name": "strait-envoy", "emptyDir": {}}]);
    let e = inject_with(&config, &pod, None).expect_err("volume conflict");
    assert!(e.to_string().contains("strait-envoy"), "{e}");
    let e = inject_with(&config, &json!({"metadata": {}, "spec": {}}), None)
        .expect_err("no containers");
    assert!(e.to_string().contains("spec.containers"), "{e}");
    let e = inject_with(&config, &json!({"metadata": {}}), None).expect_err("no spec");
    assert!(e.to_string().contains("spec"), "{e}");
}

#[test]
fn grace_period_covers_the_drain() {
    let config = InjectorConfig::default();
    let mut pod = mk_pod(json!({"proxy.istio.io/config": "terminationDrainDuration: 50s"}));
    pod["spec"]["terminationGracePeriodSeconds"] = json!(10);
    let out = inject_with(&config, &pod, None).expect("injects");
    assert_eq!(out.pod["spec"]["terminationGracePeriodSeconds"], 55);
    let proxy = container(&out.pod, "containers", "istio-proxy");
    assert_eq!(
        proxy["lifecycle"]["preStop"]["exec"]["command"],
        json!(["/etc/strait/strait", "drain", "--duration", "50s"])
    );
    // A longer grace period is kept.
    let mut pod = mk_pod(json!({}));
    pod["spec"]["terminationGracePeriodSeconds"] = json!(120);
    let out = inject_with(&config, &pod, None).expect("injects");
    assert_eq!(out.pod["spec"]["terminationGracePeriodSeconds"], 120);
    assert!(
        !out.patch
            .iter()
            .any(|op| matches!(op, Op::Add { path, .. } if path.contains("terminationGrace")))
    );
}

#[test]
fn labels_stay_valid_for_long_names() {
    let config = InjectorConfig::default();
    let mut pod = mk_pod(json!({}));
    pod["metadata"]["labels"] = json!({});
    pod["metadata"]["name"] = json!(format!("{}-x", "a".repeat(80)));
    let out = inject_with(&config, &pod, None).expect("injects");
    let name = out.pod["metadata"]["labels"]["service.istio.io/canonical-name"]
        .as_str()
        .expect("canonical name");
    assert!(name.len() <= 63);
    assert!(validate(&out.pod).is_empty(), "{:?}", validate(&out.pod));
}

#[test]
fn workload_names_like_istio() {
    let rs = json!({"metadata": {"generateName": "reviews-v1-5f7d8c-", "labels": {"pod-template-hash": "5f7d8c"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "reviews-v1-5f7d8c", "controller": true}]}});
    let labels = PodMeta::from_pod(&rs, "x").labels;
    assert_eq!(workload_name(&rs, &labels).as_deref(), Some("reviews-v1"));
    let job =
        json!({"metadata": {"ownerReferences": [{"kind": "Job", "name": "backup-28391234"}]}});
    assert_eq!(
        workload_name(&job, &BTreeMap::new()).as_deref(),
        Some("backup")
    );
    let sts = json!({"metadata": {"name": "db-0", "ownerReferences": [{"kind": "StatefulSet", "name": "db"}]}});
    assert_eq!(workload_name(&sts, &BTreeMap::new()).as_deref(), Some("db"));
    let bare = json!({"metadata": {"name": "solo"}});
    assert_eq!(
        workload_name(&bare, &BTreeMap::new()).as_deref(),
        Some("solo")
    );
}
