//! The Helm chart (`charts/strait`), rendered and linted by Helm's own Go SDK (PyPI
//! `helm-python-sdk`, driven by `tests/chart/render.py`) for the default values, a canary
//! revision and the ingress gateway. Every rendered object must deserialise into its
//! k8s-openapi type without losing a field; releases of two revisions must not share an object
//! name; the injector webhook must reach its own revision's Service with the same selectors
//! `strait tag` gives tags. Missing Python or Helm is a failure, not a skip (`bash .ci/run`
//! installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use strait::tag;
use strait_api::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use strait_api::k8s_openapi::api::apps::v1::Deployment;
use strait_api::k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use strait_api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use strait_api::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use strait_api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const NAMESPACE: &str = "istio-system";
/// The helm-python-sdk version `.ci/run` installs.
const HELM_SDK: &str = "helm-python-sdk==0.2.2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One rendered object: its template, raw value and identity.
#[derive(Debug, Clone)]
struct Rendered {
    template: String,
    value: Value,
}

impl Rendered {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// (kind, namespace, name): what must be unique in a cluster.
    fn id(&self) -> (String, String, String) {
        (
            self.kind().to_string(),
            self.value["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            self.name().to_string(),
        )
    }
}

struct Render {
    objects: Vec<Rendered>,
    lint: Value,
}

impl Render {
    fn find(&self, kind: &str, name: &str) -> &Rendered {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| {
                let have: Vec<_> = self.objects.iter().map(Rendered::id).collect();
                panic!("no {kind} {name} rendered; have {have:?}")
            })
    }

    fn typed<T: DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        serde_json::from_value(self.find(kind, name).value.clone())
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
    }
}

struct Output {
    helm: String,
    crds: Vec<(String, String)>,
    cases: BTreeMap<String, Render>,
}

fn cases() -> Value {
    json!({
        "default": {},
        "canary": {"revision": "canary"},
        "gateway": {"gateway": {"enabled": true}},
        "canary-gateway": {"revision": "canary", "gateway": {"enabled": true}},
    })
}

/// Renders every case once for all tests.
fn output() -> &'static Output {
    static OUT: OnceLock<Output> = OnceLock::new();
    OUT.get_or_init(|| {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/render.py");
        let run = Command::new(&python)
            .arg(&script)
            .arg(repo().join("charts/strait"))
            .arg(cases().to_string())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (the chart tests need Python 3 and {HELM_SDK}): {e}")
            });
        assert!(
            run.status.success(),
            "rendering the chart failed (the chart tests need {HELM_SDK}; `bash .ci/run` \
             installs it):\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let raw: Value = serde_json::from_slice(&run.stdout).expect("render.py prints JSON");
        let crds = raw["crds"]
            .as_array()
            .expect("crds")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["data"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut cases = BTreeMap::new();
        for (name, case) in raw["cases"].as_object().expect("cases") {
            let mut objects = Vec::new();
            for (template, text) in case["manifests"].as_object().expect("manifests") {
                if !template.ends_with(".yaml") {
                    continue;
                }
                let text = text.as_str().unwrap_or_default();
                for doc in serde_yaml_ng::Deserializer::from_str(text) {
                    let value: Value = serde::Deserialize::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{name}: {template} is not YAML: {e}\n{text}"));
                    if !value.is_null() {
                        objects.push(Rendered {
                            template: template.clone(),
                            value,
                        });
                    }
                }
            }
            cases.insert(
                name.clone(),
                Render {
                    objects,
                    lint: case["lint"].clone(),
                },
            );
        }
        Output {
            helm: raw["helm"].as_str().unwrap_or_default().to_string(),
            crds,
            cases,
        }
    })
}

fn case(name: &str) -> &'static Render {
    output()
        .cases
        .get(name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Paths of `original` that `round_trip` lost or changed: what the typed struct does not
/// know (a misspelt or misplaced field) or reads differently.
fn lost(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => lost(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn check_typed<T: DeserializeOwned + serde::Serialize>(o: &Rendered) {
    let typed: T = serde_json::from_value(o.value.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {} ({}) does not deserialise: {e}",
            o.kind(),
            o.name(),
            o.template
        )
    });
    let back = serde_json::to_value(&typed).expect("serialise");
    let mut out = Vec::new();
    lost(&o.value, &back, "", &mut out);
    assert!(
        out.is_empty(),
        "{} {} ({}): fields its type does not have or reads differently: {out:?}",
        o.kind(),
        o.name(),
        o.template
    );
}

fn check_object(o: &Rendered) {
    let api = o.value["apiVersion"].as_str().unwrap_or_default();
    match (api, o.kind()) {
        ("apps/v1", "Deployment") => check_typed::<Deployment>(o),
        ("v1", "Service") => check_typed::<Service>(o),
        ("v1", "ServiceAccount") => check_typed::<ServiceAccount>(o),
        ("v1", "ConfigMap") => check_typed::<ConfigMap>(o),
        ("policy/v1", "PodDisruptionBudget") => check_typed::<PodDisruptionBudget>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => check_typed::<ClusterRole>(o),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            check_typed::<ClusterRoleBinding>(o)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => check_typed::<Role>(o),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => check_typed::<RoleBinding>(o),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            check_typed::<MutatingWebhookConfiguration>(o)
        }
        (api, kind) => panic!("{}: unexpected {api} {kind}", o.template),
    }
}

#[test]
fn every_case_lints_clean() {
    assert!(
        output().helm.starts_with('v'),
        "helm version {:?}",
        output().helm
    );
    for (name, r) in &output().cases {
        let errors = r.lint["errors"].as_array().cloned().unwrap_or_default();
        assert!(errors.is_empty(), "{name}: lint errors {errors:?}");
        // Severity 2 is a warning, 3 an error; 1 (info) is advice such as "icon is recommended".
        let bad: Vec<&Value> = r.lint["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(bad.is_empty(), "{name}: lint findings {bad:?}");
    }
}

#[test]
fn every_rendered_object_is_a_valid_kubernetes_object() {
    for (name, r) in &output().cases {
        assert!(!r.objects.is_empty(), "{name} rendered nothing");
        for o in &r.objects {
            check_object(o);
        }
        let mut seen = BTreeSet::new();
        for o in &r.objects {
            assert!(seen.insert(o.id()), "{name}: {:?} rendered twice", o.id());
        }
    }
}

#[test]
fn crds_ship_in_the_chart_and_are_crds() {
    let crds = &output().crds;
    let files: BTreeSet<String> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/")
        .flatten()
        .map(|e| format!("crds/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let shipped: BTreeSet<String> = crds.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(shipped, files, "the chart ships the same CRDs as crds/");
    for (file, text) in crds {
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(text)
            .unwrap_or_else(|e| panic!("{file} is not a CustomResourceDefinition: {e}"));
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert!(
            file.ends_with(&format!("{name}.yaml")),
            "{file} holds {name}"
        );
        let same = std::fs::read_to_string(repo().join(file)).expect("read crds/ file");
        assert_eq!(*text, same, "{file} differs from the chart's copy");
    }
}

#[test]
fn two_revisions_share_no_object_name() {
    for (a, b) in [("default", "canary"), ("gateway", "canary-gateway")] {
        let ids = |c: &str| -> BTreeSet<(String, String, String)> {
            case(c).objects.iter().map(Rendered::id).collect()
        };
        let clash: Vec<_> = ids(a).intersection(&ids(b)).cloned().collect();
        assert!(clash.is_empty(), "{a} and {b} both render {clash:?}");
    }
}

#[test]
fn the_injector_webhook_reaches_its_revisions_service() {
    for (c, rev) in [("default", "default"), ("canary", "canary")] {
        let r = case(c);
        let mwc_name = tag::revision_webhook_name(rev);
        let mwc: MutatingWebhookConfiguration = r.typed("MutatingWebhookConfiguration", &mwc_name);
        let labels = mwc.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("strait"));
        assert_eq!(labels.get("istio.io/rev").map(String::as_str), Some(rev));
        assert!(!labels.contains_key("istio.io/tag"), "a revision is no tag");

        let svc_name = tag::revision_service_name(rev);
        let svc: Service = r.typed("Service", &svc_name);
        let spec = svc.spec.clone().expect("spec");
        let ports: BTreeMap<String, (i32, String)> = spec
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let target = match p.target_port {
                    Some(strait_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => i.to_string(),
                    Some(strait_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s,
                    None => p.port.to_string(),
                };
                (p.name.unwrap_or_default(), (p.port, target))
            })
            .collect();
        assert_eq!(ports["grpc-xds"], (15010, "15010".to_string()));
        assert_eq!(ports["https-webhook"], (443, "15017".to_string()));
        assert_eq!(ports["http-debug"], (15014, "15014".to_string()));
        let selector = spec.selector.clone().unwrap_or_default();
        assert_eq!(selector.get("app").map(String::as_str), Some("strait"));
        assert_eq!(selector.get("strait.io/rev").map(String::as_str), Some(rev));

        let webhooks = mwc.webhooks.clone().unwrap_or_default();
        let names: Vec<&str> = webhooks.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, tag::webhook_names(rev), "{c}");
        for w in &webhooks {
            let s = w.client_config.service.as_ref().expect("a Service");
            assert_eq!(s.name, svc_name);
            assert_eq!(s.namespace, NAMESPACE);
            assert_eq!(s.path.as_deref(), Some("/inject"));
            assert_eq!(s.port, Some(443));
            assert!(
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .is_none_or(|b| b.0.is_empty()),
                "strait patches the caBundle itself"
            );
            assert_eq!(w.side_effects, "None");
            assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
            assert!(w.reinvocation_policy.is_some());
            let (ns, obj) = tag::selectors(&w.name, rev).expect("a known webhook");
            assert_eq!(
                (w.namespace_selector.clone(), w.object_selector.clone()),
                (Some(ns), Some(obj)),
                "{c}: {} selects differently from `strait tag`",
                w.name
            );
        }

        // The Deployment's pods are what the Service selects, serving this revision.
        let deploy: Deployment = r.typed("Deployment", &svc_name);
        let template = deploy.spec.clone().expect("spec").template;
        let pod_labels = template
            .metadata
            .clone()
            .and_then(|m| m.labels)
            .unwrap_or_default();
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
        }
        let pod = template.spec.expect("pod spec");
        let args = pod.containers[0].args.clone().unwrap_or_default();
        for want in [
            "serve".to_string(),
            "--in-cluster".to_string(),
            format!("--revision={rev}"),
            format!("--system-namespace={NAMESPACE}"),
            "--webhook-addr=0.0.0.0:15017".to_string(),
        ] {
            assert!(args.contains(&want), "{c}: args {args:?} lack {want}");
        }
        let env: BTreeMap<String, String> = pod.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        assert!(
            env["STRAIT_PROXY_IMAGE"].contains("envoyproxy/envoy"),
            "{env:?}"
        );
        assert!(
            ["true", "false"].contains(&env["STRAIT_NATIVE_SIDECARS"].as_str()),
            "native sidecars resolved at install: {env:?}"
        );
        let probe = pod.containers[0]
            .readiness_probe
            .clone()
            .and_then(|p| p.http_get)
            .expect("readiness probe");
        assert_eq!(probe.path.as_deref(), Some("/ready"));
        assert_eq!(pod.service_account_name.as_deref(), Some(svc_name.as_str()));
        let _: PodDisruptionBudget = r.typed("PodDisruptionBudget", &svc_name);
    }
}

#[test]
fn mesh_config_is_rendered_where_the_revision_reads_it() {
    for (c, cm_name) in [("default", "istio"), ("canary", "istio-canary")] {
        let cm: ConfigMap = case(c).typed("ConfigMap", cm_name);
        let mesh = cm.data.unwrap_or_default()["mesh"].clone();
        let v: Value = serde_yaml_ng::from_str(&mesh).expect("mesh is YAML");
        let parsed = strait_api::MeshConfig::from_json_value(v.clone())
            .unwrap_or_else(|e| panic!("{c}: strait refuses the mesh config: {e}\n{mesh}"));
        assert_eq!(
            parsed.default_config.hold_application_until_proxy_starts,
            Some(false)
        );
        assert!(
            v["defaultConfig"]["resources"]["requests"].is_object(),
            "{mesh}"
        );
        assert_eq!(v["outboundTrafficPolicy"]["mode"], "ALLOW_ANY");
        assert_eq!(v["accessLogEncoding"], "TEXT");
    }
}

#[test]
fn the_gateway_is_stock_envoy_bootstrapped_against_the_revision() {
    assert!(
        !case("default")
            .objects
            .iter()
            .any(|o| o.template.ends_with("gateway.yaml")),
        "no gateway unless enabled"
    );
    for (c, rev) in [("gateway", "default"), ("canary-gateway", "canary")] {
        let r = case(c);
        let name = format!("istio-ingressgateway-{rev}");
        let deploy: Deployment = r.typed("Deployment", &name);
        let svc: Service = r.typed("Service", &name);
        let template = deploy.spec.expect("spec").template;
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        assert_eq!(
            labels.get("istio").map(String::as_str),
            Some("ingressgateway")
        );
        for (k, v) in svc.spec.and_then(|s| s.selector).unwrap_or_default() {
            assert_eq!(labels.get(&k), Some(&v), "Service selects pod label {k}");
        }
        let pod = template.spec.expect("pod spec");
        let envoy = &pod.containers[0];
        assert!(
            envoy
                .image
                .as_deref()
                .unwrap_or_default()
                .contains("envoyproxy/envoy"),
            "stock Envoy"
        );
        let args = envoy.args.clone().unwrap_or_default().join(" ");
        assert!(args.contains("--service-node router~$(POD_IP)~"), "{args}");

        let cm: ConfigMap = r.typed("ConfigMap", &format!("{name}-bootstrap"));
        let text = cm.data.unwrap_or_default()["bootstrap.yaml"].clone();
        let bootstrap: Value = serde_yaml_ng::from_str(&text).expect("bootstrap is YAML");
        let xds = bootstrap["static_resources"]["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == "xds-grpc")
            .expect("xds-grpc cluster");
        let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(
            addr["address"],
            format!("strait-{rev}.{NAMESPACE}.svc"),
            "the revision's xDS Service"
        );
        assert_eq!(addr["port_value"], 15010);
        check_bootstrap_with_envoy(c, &text, rev);
    }
}

/// Envoy's own validator accepts the gateway's bootstrap (when the tests know an Envoy:
/// `cargo xtask test` sets `STRAIT_ENVOY`).
fn check_bootstrap_with_envoy(case: &str, bootstrap: &str, rev: &str) {
    let Some(envoy) = std::env::var_os("STRAIT_ENVOY") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("strait-chart-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bootstrap.yaml");
    std::fs::write(&file, bootstrap).expect("write bootstrap");
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .args([
            "--service-node",
            &format!("router~10.0.0.1~gw.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"),
            "--service-cluster",
            &format!("istio-ingressgateway-{rev}.{NAMESPACE}"),
            "--disable-hot-restart",
            "--log-level",
            "error",
        ])
        .output()
        .expect("run envoy --mode validate");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{case}: Envoy rejects the gateway bootstrap:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
