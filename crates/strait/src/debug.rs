//! The status HTTP API: readiness, Prometheus metrics, and delivery state.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use strait_sources::dir::Problems;
use strait_sources::kube::KubeStatus;
use strait_xds::{PushController, SyncRegistry};

/// What the status API reads.
#[derive(Clone)]
pub struct DebugState {
    /// Readiness and the mesh being served.
    pub push: PushController,
    /// Delivery state.
    pub sync: Arc<SyncRegistry>,
    /// Prometheus metrics.
    pub registry: Arc<Registry>,
    /// Config problems, when a directory source runs.
    pub problems: Option<Problems>,
    /// The Kubernetes clusters' connections, when the Kubernetes source runs.
    pub kube: Option<KubeStatus>,
}

/// The status API's routes.
pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/problems", get(problems))
        .with_state(state)
}

async fn ready(State(s): State<DebugState>) -> Response {
    let problems = s.problems.as_ref().map(|p| p.all().len()).unwrap_or(0)
        + s.kube.as_ref().map(|k| k.problems().len()).unwrap_or(0);
    if s.push.is_ready() {
        let mesh = s.push.mesh();
        let mut body = serde_json::json!({
            "ready": true,
            "mesh_version": mesh.as_ref().map(|m| m.version),
            "services": mesh.as_ref().map(|m| m.services.len()),
            "config_objects": mesh.as_ref().map(|m| m.config.len()),
            "proxies": s.sync.len(),
            "config_problems": problems,
        });
        add_kubernetes(&mut body, s.kube.as_ref());
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let mut body =
            serde_json::json!({"ready": false, "reason": "initial configuration not loaded yet"});
        add_kubernetes(&mut body, s.kube.as_ref());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Each cluster's connection, when the Kubernetes source runs. Once ready, an unreachable API
/// server does not make strait unready (it keeps serving the last known config): it shows here.
fn add_kubernetes(body: &mut serde_json::Value, kube: Option<&KubeStatus>) {
    if let Some(k) = kube {
        body["kubernetes"] = serde_json::json!(k.clusters());
    }
}

async fn metrics(State(s): State<DebugState>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn syncz(State(s): State<DebugState>) -> Json<strait_xds::Syncz> {
    Json(s.sync.syncz())
}

async fn problems(State(s): State<DebugState>) -> Json<Vec<strait_sources::manifest::Problem>> {
    let mut all = s.problems.as_ref().map(|p| p.all()).unwrap_or_default();
    // Objects a cluster holds that strait refused; their "file" names the cluster.
    all.extend(
        s.kube
            .iter()
            .flat_map(|k| k.problems())
            .map(|(cluster, p)| strait_sources::manifest::Problem {
                file: format!("kubernetes:{cluster}").into(),
                document: None,
                object: Some(strait_api::ObjectRef::new(p.kind, p.namespace, p.name)),
                field: p.field,
                reason: p.reason,
                severity: strait_api::Severity::Error,
            }),
    );
    Json(all)
}
