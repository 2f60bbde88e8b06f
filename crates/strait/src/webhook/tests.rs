//! The webhook's answers, without HTTP (the end-to-end tests go through HTTPS).

use prometheus_client::registry::Registry;
use strait_inject::patch::{self, Op};
use strait_model::{IndexOptions, MeshIndex};
use strait_xds::{SyncRegistry, XdsMetrics};

use super::*;

fn mk_push(manifests: &str) -> PushController {
    let mut registry = Registry::default();
    let push = PushController::new(
        XdsMetrics::register(&mut registry),
        SyncRegistry::new("test", "default"),
    );
    let mut index = MeshIndex::new(IndexOptions::default());
    for de in serde_yaml_ng::Deserializer::from_str(manifests) {
        let v: Value = serde::Deserialize::deserialize(de).expect("yaml");
        let parsed = strait_api::parse_object(v, "default").expect("object");
        index.apply(parsed.object);
    }
    let (mesh, changes) = index.snapshot();
    push.push(mesh, &changes);
    push
}

fn mk_state(push: PushController, native: bool) -> (WebhookState, Arc<WebhookMetrics>) {
    let metrics = WebhookMetrics::register(&mut Registry::default());
    let state = WebhookState {
        ctx: Arc::new(WebhookContext {
            push,
            revision: "default".into(),
            system_namespace: "istio-system".into(),
            domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            cluster: None,
        }),
        proxy_image: "envoyproxy/envoy:v1.36.4".into(),
        init_image: "strait:test".into(),
        native: Arc::new(AtomicU8::new(if native { NATIVE_YES } else { NATIVE_NO })),
        client: None,
        metrics: metrics.clone(),
    };
    (state, metrics)
}

const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig:
      holdApplicationUntilProxyStarts: true
";

fn mk_review(namespace: &str, operation: &str, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0a1b2c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "object": pod,
        }
    }))
    .expect("json")
}

fn mk_pod(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-", "labels": {"app": "web"}, "annotations": annotations},
           "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
}

fn decode_patch(review: &Value) -> Vec<Op> {
    let b64 = review["response"]["patch"].as_str().expect("patch");
    let bytes: ByteString = serde_json::from_value(json!(b64)).expect("base64");
    serde_json::from_slice(&bytes.0).expect("JSON patch")
}

#[tokio::test]
async fn answers_each_kind_of_request() {
    let (state, metrics) = mk_state(mk_push(MESH), false);
    let pod = mk_pod(json!({}));

    let (code, r, result) = state
        .answer(&mk_review("shop", "CREATE", pod.clone()))
        .await;
    assert_eq!((code, result), (StatusCode::OK, "injected"));
    assert_eq!(r["response"]["uid"], "0a1b2c");
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
    let injected = patch::apply(&pod, &decode_patch(&r)).expect("applies");
    // The mesh config of the snapshot holds the application: Envoy first.
    assert_eq!(injected["spec"]["containers"][0]["name"], "istio-proxy");
    assert!(strait_inject::validation::validate(&injected).is_empty());

    let (_, r, result) = state
        .answer(&mk_review("plain", "CREATE", pod.clone()))
        .await;
    assert_eq!(result, "skipped");
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"]["patch"].is_null());

    let (_, r, result) = state.answer(&mk_review("shop", "CREATE", injected)).await;
    assert_eq!(result, "skipped");
    assert!(r["response"]["patch"].is_null());

    let (_, r, result) = state
        .answer(&mk_review("shop", "UPDATE", pod.clone()))
        .await;
    assert_eq!(
        (result, &r["response"]["allowed"]),
        ("skipped", &json!(true))
    );

    let (code, r, result) = state.answer(b"\x00garbage").await;
    assert_eq!((code, result), (StatusCode::BAD_REQUEST, "malformed"));
    assert_eq!(r["response"]["allowed"], false);
    assert!(
        r["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an AdmissionReview")),
        "{r}"
    );

    let bad = mk_pod(json!({"sidecar.istio.io/proxyCPU": "a lot"}));
    let (_, r, result) = state.answer(&mk_review("shop", "CREATE", bad)).await;
    assert_eq!(result, "denied");
    let message = r["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("sidecar.istio.io/proxyCPU") && message.contains("shop/web-"),
        "{message}"
    );

    let counts = |result: &'static str| {
        metrics
            .injections
            .get_or_create(&ResultLabel { result })
            .get()
    };
    assert_eq!(
        (
            counts("injected"),
            counts("skipped"),
            counts("malformed"),
            counts("denied")
        ),
        (0, 0, 0, 0),
        "answer() alone does not count; the HTTP handler does"
    );
}

#[tokio::test]
async fn native_sidecars_when_the_cluster_has_them() {
    let (state, _) = mk_state(mk_push(MESH), true);
    let pod = mk_pod(json!({}));
    let (_, r, _) = state
        .answer(&mk_review("shop", "CREATE", pod.clone()))
        .await;
    let injected = patch::apply(&pod, &decode_patch(&r)).expect("applies");
    assert_eq!(injected["spec"]["initContainers"][1]["name"], "istio-proxy");
    assert_eq!(
        injected["spec"]["initContainers"][1]["restartPolicy"],
        "Always"
    );
}

#[tokio::test]
async fn not_ready_means_retry() {
    let mut registry = Registry::default();
    let push = PushController::new(
        XdsMetrics::register(&mut registry),
        SyncRegistry::new("test", "default"),
    );
    let (state, _) = mk_state(push, false);
    let (_, r, result) = state
        .answer(&mk_review("shop", "CREATE", mk_pod(json!({}))))
        .await;
    assert_eq!(result, "denied");
    assert_eq!(r["response"]["status"]["code"], 503);
}
