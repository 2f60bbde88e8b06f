//! The sidecar-injection admission webhook embedded in `strait serve`: HTTPS on
//! `--webhook-addr` (15017), `POST /inject` with an AdmissionReview v1, answered with a JSON
//! Patch for pods this revision injects.
//!
//! It reads the namespace labels and the mesh config from the same mesh snapshot the xDS
//! server serves from. Its serving certificate comes from the built-in CA ([`ca`]), kept in
//! the Secret `strait-ca-<revision>` when strait runs against Kubernetes (in memory without a
//! cluster, optionally written to `--webhook-ca-out`), renewed before it expires without a
//! restart; the `caBundle` of every MutatingWebhookConfiguration labelled
//! `istio.io/rev=<revision>` is kept equal to the CA bundle.

pub mod ca;
pub mod review;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use clap::{Args, ValueEnum};
use kube::Api;
use kube::api::ListParams;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use strait_api::k8s_openapi::ByteString;
use strait_api::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use strait_api::k8s_openapi::api::core::v1::Namespace;
use strait_inject::decision::{PodMeta, decide};
use strait_inject::inject::{DEFAULT_INIT_IMAGE, DEFAULT_PROXY_IMAGE, Injector, InjectorConfig};
use strait_sources::kube::KubeCluster;
use strait_xds::PushController;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use self::ca::{CaOptions, CaStore};

/// Whether Envoy is injected as a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    /// When the cluster runs Kubernetes 1.29 or later (offline: always).
    Auto,
    /// Always.
    True,
    /// Never: a regular container.
    False,
}

/// What is injected (shared by `strait serve` and `strait inject`).
#[derive(Args, Debug, Clone)]
pub struct InjectorArgs {
    /// The Envoy image injected into pods.
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE, env = "STRAIT_PROXY_IMAGE")]
    pub proxy_image: String,
    /// The image of the injected init container (strait's own, entrypoint `strait`).
    #[arg(long, default_value = DEFAULT_INIT_IMAGE, env = "STRAIT_INIT_IMAGE")]
    pub init_image: String,
    /// Inject Envoy as a native sidecar (an init container with `restartPolicy: Always`):
    /// auto does when the cluster supports it (Kubernetes 1.29 or later).
    #[arg(long, value_enum, default_value = "auto")]
    pub native_sidecars: NativeSidecars,
}

/// Options of the injection webhook of `strait serve`.
#[derive(Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Where the injection webhook listens (HTTPS), or `off`.
    #[arg(long, default_value = "0.0.0.0:15017", env = "STRAIT_WEBHOOK_ADDR")]
    pub webhook_addr: String,
    /// Write the webhook's CA bundle (PEM) to this file, and again whenever it changes.
    #[arg(long, value_name = "PATH")]
    pub webhook_ca_out: Option<PathBuf>,
    /// A further name (DNS name or IP) the serving certificate covers (repeatable).
    #[arg(long = "webhook-san", value_name = "NAME")]
    pub webhook_sans: Vec<String>,
    /// What is injected.
    #[command(flatten)]
    pub injector: InjectorArgs,
}

/// Settings of the webhook.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Listen address (port 0 picks one).
    pub addr: SocketAddr,
    /// Where to write the CA bundle.
    pub ca_out: Option<PathBuf>,
    /// Extra names in the serving certificate.
    pub extra_sans: Vec<String>,
    /// Envoy image.
    pub proxy_image: String,
    /// Init container image.
    pub init_image: String,
    /// Native sidecars.
    pub native_sidecars: NativeSidecars,
    /// CA lifetime.
    pub ca_lifetime: Duration,
    /// Serving certificate lifetime (renewed at two thirds).
    pub serving_lifetime: Duration,
    /// How often webhook configurations are checked for a stale `caBundle`.
    pub reconcile: Duration,
}

impl WebhookConfig {
    /// Defaults on loopback, port picked by the system (tests).
    pub fn local() -> Self {
        let ca = CaOptions::new("default", "istio-system", "cluster.local");
        WebhookConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_out: None,
            extra_sans: Vec::new(),
            proxy_image: DEFAULT_PROXY_IMAGE.to_string(),
            init_image: DEFAULT_INIT_IMAGE.to_string(),
            native_sidecars: NativeSidecars::Auto,
            ca_lifetime: ca.ca_lifetime,
            serving_lifetime: ca.serving_lifetime,
            reconcile: Duration::from_secs(30),
        }
    }
}

impl WebhookArgs {
    /// The webhook's settings; `None` when it is `off`.
    pub fn config(&self) -> anyhow::Result<Option<WebhookConfig>> {
        if self.webhook_addr.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: SocketAddr = self.webhook_addr.trim().parse().with_context(|| {
            format!(
                "--webhook-addr {:?} is neither HOST:PORT nor off",
                self.webhook_addr
            )
        })?;
        Ok(Some(WebhookConfig {
            addr,
            ca_out: self.webhook_ca_out.clone(),
            extra_sans: self.webhook_sans.clone(),
            proxy_image: self.injector.proxy_image.clone(),
            init_image: self.injector.init_image.clone(),
            native_sidecars: self.injector.native_sidecars,
            ..WebhookConfig::local()
        }))
    }
}

/// What the webhook needs from the rest of `serve`.
#[derive(Clone)]
pub struct WebhookContext {
    /// The mesh snapshot (namespace labels, mesh config, tags).
    pub push: PushController,
    /// This control plane's revision.
    pub revision: String,
    /// The system namespace.
    pub system_namespace: String,
    /// Cluster DNS suffix.
    pub domain: String,
    /// Id of the cluster the pods run in.
    pub cluster_id: String,
    /// The cluster whose API server calls the webhook (CA Secret, webhook configurations).
    pub cluster: Option<KubeCluster>,
}

/// Injection results.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `injected`, `skipped` (not selected, already injected, not a pod creation), `denied`
    /// (the pod cannot be injected as it is) or `malformed` (not an AdmissionReview).
    pub result: &'static str,
}

/// Metrics of the webhook.
#[derive(Debug)]
pub struct WebhookMetrics {
    /// Admission requests by result.
    pub injections: Family<ResultLabel, Counter>,
    /// When the serving certificate expires (Unix seconds).
    pub cert_expiry: Gauge,
    /// Webhook configurations whose `caBundle` was patched.
    pub ca_bundle_patches: Counter,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them under `strait_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = WebhookMetrics {
            injections: Family::default(),
            cert_expiry: Gauge::default(),
            ca_bundle_patches: Counter::default(),
        };
        registry.register(
            "strait_injections",
            "Sidecar injection admission requests, by result",
            m.injections.clone(),
        );
        registry.register(
            "strait_webhook_cert_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires",
            m.cert_expiry.clone(),
        );
        registry.register(
            "strait_webhook_ca_bundle_patches",
            "caBundle updates of MutatingWebhookConfigurations",
            m.ca_bundle_patches.clone(),
        );
        Arc::new(m)
    }

    fn count(&self, result: &'static str) {
        self.injections.get_or_create(&ResultLabel { result }).inc();
    }
}

const NATIVE_UNKNOWN: u8 = 0;
const NATIVE_YES: u8 = 1;
const NATIVE_NO: u8 = 2;

#[derive(Clone)]
struct WebhookState {
    ctx: Arc<WebhookContext>,
    proxy_image: Arc<str>,
    init_image: Arc<str>,
    native: Arc<AtomicU8>,
    client: Option<kube::Client>,
    metrics: Arc<WebhookMetrics>,
}

impl WebhookState {
    fn native(&self) -> bool {
        self.native.load(Ordering::Relaxed) == NATIVE_YES
    }

    /// A namespace's labels when the snapshot does not have the namespace yet.
    async fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let Some(client) = &self.client else {
            return BTreeMap::new();
        };
        let api: Api<Namespace> = Api::all(client.clone());
        match tokio::time::timeout(Duration::from_secs(3), api.get_opt(ns)).await {
            Ok(Ok(Some(n))) => n.metadata.labels.unwrap_or_default(),
            Ok(Ok(None)) => BTreeMap::new(),
            Ok(Err(error)) => {
                warn!(namespace = %ns, %error, "namespace lookup failed");
                BTreeMap::new()
            }
            Err(_) => {
                warn!(namespace = %ns, "namespace lookup timed out");
                BTreeMap::new()
            }
        }
    }

    async fn answer(&self, body: &[u8]) -> (StatusCode, Value, &'static str) {
        let req = match review::parse(body) {
            Ok(r) => r,
            Err(m) => {
                warn!(message = %m.message, "malformed admission request");
                return (
                    StatusCode::BAD_REQUEST,
                    review::deny(&m.uid, 400, &m.message),
                    "malformed",
                );
            }
        };
        let uid = req.uid.as_str();
        let pods = req.resource.is_empty() || req.resource == "pods";
        if req.kind != "Pod" || !pods || req.operation != "CREATE" {
            return (StatusCode::OK, review::allow(uid), "skipped");
        }
        let Some(object) = req.object.as_ref().filter(|o| o.is_object()) else {
            return (
                StatusCode::OK,
                review::deny(uid, 400, "the admission request carries no pod object"),
                "malformed",
            );
        };
        let mesh = match self.ctx.push.mesh() {
            Some(m) if self.ctx.push.is_ready() => m,
            _ => {
                return (
                    StatusCode::OK,
                    review::deny(
                        uid,
                        503,
                        "strait is starting (the mesh is not loaded yet); retry",
                    ),
                    "denied",
                );
            }
        };
        let ns = if req.namespace.is_empty() {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            req.namespace.clone()
        };
        let pod_name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or_else(|| object["metadata"]["generateName"].as_str())
            .unwrap_or(req.name.as_str())
            .to_string();
        let ns_labels = match mesh.namespaces.get(ns.as_str()) {
            Some(n) => (*n.labels).clone(),
            None => self.namespace_labels(&ns).await,
        };
        let meta = PodMeta::from_pod(object, &ns);
        let decision = decide(
            &meta,
            &ns_labels,
            &self.ctx.revision,
            &mesh.tags(&self.ctx.system_namespace),
        );
        if !decision.inject {
            debug!(namespace = %ns, pod = %pod_name, reason = %decision.reason, "not injected");
            return (StatusCode::OK, review::allow(uid), "skipped");
        }
        let config = InjectorConfig {
            revision: self.ctx.revision.clone(),
            system_namespace: self.ctx.system_namespace.clone(),
            domain: self.ctx.domain.clone(),
            cluster_id: self.ctx.cluster_id.clone(),
            proxy_image: self.proxy_image.to_string(),
            init_image: self.init_image.to_string(),
            native_sidecars: self.native(),
            xds_address: None,
        };
        let injection = match Injector::new(&config, &mesh.mesh).inject(
            object,
            decision.tag.as_deref(),
            None,
        ) {
            Ok(i) => i,
            Err(e) => {
                warn!(namespace = %ns, pod = %pod_name, error = %e, "injection refused");
                let message = format!("strait cannot inject pod {ns}/{pod_name}: {e}");
                return (StatusCode::OK, review::deny(uid, 400, &message), "denied");
            }
        };
        match review::patch(uid, &injection.patch) {
            Ok(v) => {
                info!(
                    namespace = %ns,
                    pod = %pod_name,
                    revision = %self.ctx.revision,
                    tag = decision.tag.as_deref().unwrap_or(""),
                    native = config.native_sidecars,
                    reason = %decision.reason,
                    "sidecar injected"
                );
                (StatusCode::OK, v, "injected")
            }
            Err(e) => (
                StatusCode::OK,
                review::deny(uid, 500, &format!("encoding the patch: {e}")),
                "denied",
            ),
        }
    }
}

async fn inject(State(s): State<WebhookState>, body: Bytes) -> Response {
    let (code, body, result) = s.answer(&body).await;
    s.metrics.count(result);
    (code, Json(body)).into_response()
}

/// The webhook's routes.
fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/inject/", post(inject))
        .with_state(state)
}

/// A running webhook.
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    bundle: watch::Receiver<String>,
}

impl WebhookHandle {
    /// The CA bundle (PEM) clients verify the webhook with: what `caBundle` is set to.
    pub fn ca_bundle(&self) -> String {
        self.bundle.borrow().clone()
    }

    /// Waits until the CA bundle differs from `than`, and returns it.
    pub async fn ca_bundle_changed(&mut self, than: &str) -> String {
        let _ = self.bundle.wait_for(|b| b != than).await;
        self.ca_bundle()
    }
}

/// Reads `major.minor` of the API server and says whether it has native sidecars (1.29+).
async fn server_has_native_sidecars(client: &kube::Client) -> Result<bool, kube::Error> {
    let info = client.apiserver_version().await?;
    let num = |s: &str| -> u32 {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    Ok((num(&info.major), num(&info.minor)) >= (1, 29))
}

/// Sets the `caBundle` of every webhook of the MutatingWebhookConfigurations labelled
/// `istio.io/rev=<revision>` (the revision's own and its tags') to `bundle`; returns how many
/// configurations were patched.
pub async fn patch_ca_bundles(
    client: &kube::Client,
    revision: &str,
    bundle: &str,
) -> Result<usize, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("istio.io/rev={revision}")))
        .await?;
    let encoded = serde_json::to_value(ByteString(bundle.as_bytes().to_vec()))
        .map_err(kube::Error::SerdeError)?;
    let mut patched = 0;
    for mwc in list {
        let Some(name) = mwc.metadata.name.clone() else {
            continue;
        };
        let mut ops = Vec::new();
        for (i, wh) in mwc.webhooks.iter().flatten().enumerate() {
            let current = wh.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
            if current != Some(bundle.as_bytes()) {
                // The test guards against the list changing between our read and the patch.
                ops.push(
                    json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": wh.name}),
                );
                ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
            }
        }
        if ops.is_empty() {
            continue;
        }
        let body = serde_json::to_vec(&ops).map_err(kube::Error::SerdeError)?;
        let req = http::Request::patch(format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
        ))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
        client.request::<Value>(req).await?;
        info!(webhook = %name, revision, "caBundle updated");
        patched += 1;
    }
    Ok(patched)
}

fn write_ca_out(path: &std::path::Path, bundle: &str) {
    let tmp = path.with_extension("tmp~");
    let result = std::fs::write(&tmp, bundle).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = result {
        error!(path = %path.display(), %error, "cannot write the webhook CA bundle");
    }
}

fn not_after_secs(cert: &str) -> i64 {
    ca::validity(cert)
        .ok()
        .and_then(|(_, na)| na.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Starts the webhook: loads (or creates) the CA, starts HTTPS, and keeps certificate and
/// `caBundle`s current. Returns its handle and its tasks.
pub async fn start(
    cfg: WebhookConfig,
    ctx: WebhookContext,
    metrics: Arc<WebhookMetrics>,
) -> anyhow::Result<(WebhookHandle, Vec<JoinHandle<()>>)> {
    let client = match &ctx.cluster {
        Some(c) => Some(
            strait_sources::kube::client(Some(c))
                .await
                .context("Kubernetes client for the webhook")?,
        ),
        None => None,
    };
    let mut opts = CaOptions::new(&ctx.revision, &ctx.system_namespace, &ctx.domain);
    opts.extra_sans = cfg.extra_sans.clone();
    opts.ca_lifetime = cfg.ca_lifetime;
    opts.serving_lifetime = cfg.serving_lifetime;
    if client.is_none() {
        // Without a cluster, clients are on this machine.
        for n in ["localhost", "127.0.0.1", "::1"] {
            if !opts.extra_sans.iter().any(|s| s == n) {
                opts.extra_sans.push(n.to_string());
            }
        }
    }
    let store = match &client {
        Some(c) => CaStore::secret(c.clone(), &opts),
        None => CaStore::memory(),
    };
    // The API server may be briefly unreachable at start: retry for a while.
    let mut attempt = 0;
    let (material, _) = loop {
        match store.sync(&opts, SystemTime::now()).await {
            Ok(m) => break m,
            Err(e) if attempt < 10 => {
                attempt += 1;
                warn!(error = %e, attempt, "webhook CA not available yet");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(e).context("webhook CA"),
        }
    };
    metrics.cert_expiry.set(not_after_secs(&material.cert));
    let resolver = tls::CertResolver::new(tls::certified_key(&material.cert, &material.key)?);
    let tcp = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("bind the injection webhook on {}", cfg.addr))?;
    let listener = tls::TlsListener::new(tcp, tls::server_config(resolver.clone())?)
        .context("webhook listener")?;
    let addr = axum::serve::Listener::local_addr(&listener).context("webhook address")?;
    if let Some(path) = &cfg.ca_out {
        write_ca_out(path, &material.ca_bundle);
    }
    let (bundle_tx, bundle_rx) = watch::channel(material.ca_bundle.clone());

    let native = Arc::new(AtomicU8::new(match cfg.native_sidecars {
        NativeSidecars::True => NATIVE_YES,
        NativeSidecars::False => NATIVE_NO,
        // Without a cluster there is no version to ask: every maintained Kubernetes has them.
        NativeSidecars::Auto if client.is_none() => NATIVE_YES,
        NativeSidecars::Auto => NATIVE_UNKNOWN,
    }));
    let state = WebhookState {
        ctx: Arc::new(ctx.clone()),
        proxy_image: cfg.proxy_image.as_str().into(),
        init_image: cfg.init_image.as_str().into(),
        native: native.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
    };
    let mut tasks = Vec::new();
    let app = router(state);
    tasks.push(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "injection webhook stopped");
        }
    }));

    // Certificates, caBundles and the server version, on one timer.
    let tick =
        (cfg.serving_lifetime / 30).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let reconcile = cfg.reconcile;
    let revision = ctx.revision.clone();
    let ca_out = cfg.ca_out.clone();
    let mut current = material;
    tasks.push(tokio::spawn(async move {
        let mut published: Option<String> = None;
        let mut last_reconcile: Option<tokio::time::Instant> = None;
        let mut last_version_try: Option<tokio::time::Instant> = None;
        loop {
            if let Some(c) = &client {
                if native.load(Ordering::Relaxed) == NATIVE_UNKNOWN
                    && last_version_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    last_version_try = Some(tokio::time::Instant::now());
                    match server_has_native_sidecars(c).await {
                        Ok(yes) => {
                            info!(native_sidecars = yes, "Kubernetes version read");
                            native.store(if yes { NATIVE_YES } else { NATIVE_NO }, Ordering::Relaxed);
                        }
                        Err(error) => warn!(%error, "cannot read the Kubernetes version; injecting regular containers until it can"),
                    }
                }
                let due = last_reconcile.is_none_or(|t| t.elapsed() >= reconcile);
                if published.as_deref() != Some(current.ca_bundle.as_str()) || due {
                    match patch_ca_bundles(c, &revision, &current.ca_bundle).await {
                        Ok(n) => {
                            metrics.ca_bundle_patches.inc_by(n as u64);
                            published = Some(current.ca_bundle.clone());
                            last_reconcile = Some(tokio::time::Instant::now());
                        }
                        Err(error) => warn!(%error, revision = %revision, "cannot update webhook caBundles"),
                    }
                }
            }
            tokio::time::sleep(tick).await;
            let next = match store.sync(&opts, SystemTime::now()).await {
                Ok((m, _)) => m,
                Err(error) => {
                    warn!(%error, "webhook certificate check failed");
                    continue;
                }
            };
            if next.ca_bundle != current.ca_bundle {
                // Trust first: the new bundle reaches the API server (and the file) before a
                // certificate from a new CA is presented.
                if let Some(c) = &client {
                    match patch_ca_bundles(c, &revision, &next.ca_bundle).await {
                        Ok(n) => {
                            metrics.ca_bundle_patches.inc_by(n as u64);
                            published = Some(next.ca_bundle.clone());
                        }
                        Err(error) => warn!(%error, "cannot update webhook caBundles"),
                    }
                }
                if let Some(path) = &ca_out {
                    write_ca_out(path, &next.ca_bundle);
                }
                bundle_tx.send_replace(next.ca_bundle.clone());
            }
            if next.cert != current.cert {
                match tls::certified_key(&next.cert, &next.key) {
                    Ok(k) => {
                        resolver.set(k);
                        metrics.cert_expiry.set(not_after_secs(&next.cert));
                        info!("webhook serving certificate renewed");
                    }
                    Err(error) => {
                        warn!(%error, "renewed webhook certificate unusable");
                        continue;
                    }
                }
            }
            current = next;
        }
    }));
    info!(%addr, "injection webhook serving");
    Ok((
        WebhookHandle {
            addr,
            bundle: bundle_rx,
        },
        tasks,
    ))
}

#[cfg(test)]
mod tests;
