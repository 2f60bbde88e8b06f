//! `strait serve`: wires sources, the push controller, the ADS server and the status API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use prometheus_client::registry::Registry;
use strait_model::{IndexOptions, MeshIndex};
use strait_sources::dir::{DirOptions, DirSource};
use strait_sources::kube::{KubeCluster, KubeMetrics, KubeOptions, KubeSource, KubeStatus};
use strait_xds::{
    AdsService, Connections, PushController, PushOptions, SyncRegistry, TagMoveOptions, XdsMetrics,
    run_tag_mover,
};
use tokio::sync::mpsc;
use tracing::{error, info};

/// Options of `strait serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// A directory (or file) of Kubernetes/Istio manifests to serve, watched for changes.
    #[arg(long, env = "STRAIT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Watch the Kubernetes cluster strait runs in (its service account).
    #[arg(long, env = "STRAIT_IN_CLUSTER")]
    in_cluster: bool,
    /// Watch the cluster of a kubeconfig (`PATH` or `PATH#CONTEXT`; a directory means every
    /// kubeconfig in it). Repeat for more clusters: the mesh is their union.
    #[arg(long, value_name = "PATH[#CONTEXT]", env = "STRAIT_KUBECONFIG")]
    kubeconfig: Vec<String>,
    /// Id of the in-cluster (else the first) cluster; the others are named by their
    /// kubeconfig context.
    #[arg(long, default_value = strait_sources::kube::DEFAULT_CLUSTER_ID, env = "STRAIT_CLUSTER_ID")]
    cluster_id: String,
    /// How long a cluster other than the first may take to sync before strait serves without
    /// it.
    #[arg(long, default_value_t = 30_000)]
    kube_sync_timeout_ms: u64,
    /// Where the ADS gRPC server listens (plaintext).
    #[arg(long, default_value = "0.0.0.0:15010", env = "STRAIT_XDS_ADDR")]
    xds_addr: SocketAddr,
    /// Where the status API listens (/ready, /metrics, /debug/syncz).
    #[arg(long, default_value = "0.0.0.0:15014", env = "STRAIT_DEBUG_ADDR")]
    debug_addr: SocketAddr,
    /// This control plane's revision.
    #[arg(long, default_value = "default", env = "STRAIT_REVISION")]
    revision: String,
    /// Cluster DNS suffix.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Namespace of the mesh config ConfigMap (`istio`).
    #[arg(long, default_value = "istio-system")]
    system_namespace: String,
    /// Push once changes have been quiet for this many milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Push at the latest this many milliseconds after the first change of a burst.
    #[arg(long, default_value_t = 1000)]
    debounce_max_ms: u64,
    /// Large cluster, listener and route responses pushed after a change and not yet
    /// acknowledged, across all proxies, in megabytes (0: no limit). Load assignments are
    /// never held back behind them.
    #[arg(long, default_value_t = strait_xds::DEFAULT_WINDOW_MB)]
    push_window_mb: u32,
    /// How often the config directory is rescanned without change notifications.
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Proxies following a tag that moved to another revision are moved over this many
    /// seconds, each at its own offset, once that revision is ready behind the tag's Service.
    #[arg(long, default_value_t = 30)]
    tag_move_spread_s: u64,
    /// When a tag Service has no selector and no endpoints to judge readiness by: wait this
    /// many seconds after the tag moved before moving its proxies.
    #[arg(long, default_value_t = 10)]
    tag_move_delay_s: u64,
    /// The sidecar-injection webhook.
    #[command(flatten)]
    webhook: crate::webhook::WebhookArgs,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Runs `strait serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let server = start(args.config()?).await?;
        shutdown_signal().await;
        info!("shutting down");
        server.stop().await
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Everything `serve` needs, independent of the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The config directory (or file).
    pub config_dir: PathBuf,
    /// ADS listen address (port 0 picks one).
    pub xds_addr: SocketAddr,
    /// Status API listen address (port 0 picks one).
    pub debug_addr: SocketAddr,
    /// Revision.
    pub revision: String,
    /// Cluster DNS suffix.
    pub domain: String,
    /// Namespace of the mesh ConfigMap.
    pub system_namespace: String,
    /// Debounce quiet period.
    pub debounce: Duration,
    /// Debounce maximum delay.
    pub debounce_max: Duration,
    /// Push window in megabytes (0: no limit).
    pub push_window_mb: u32,
    /// Directory rescan interval.
    pub poll: Duration,
    /// Kubernetes clusters to watch (none: the directory source alone).
    pub kube_clusters: Vec<KubeCluster>,
    /// Settings of the Kubernetes source; its `revision` and `system_namespace` are taken
    /// from this config.
    pub kube: KubeOptions,
    /// The injection webhook (none: off).
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Spread of proxy moves when a tag moves away from this revision.
    pub tag_move_spread: Duration,
    /// Wait before moving when the new revision's readiness cannot be judged.
    pub tag_move_delay: Duration,
}

impl ServeConfig {
    /// Defaults for serving `config_dir` on loopback with ports picked by the system.
    pub fn local(config_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            xds_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            debug_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            revision: "default".to_string(),
            domain: "cluster.local".to_string(),
            system_namespace: "istio-system".to_string(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            push_window_mb: strait_xds::DEFAULT_WINDOW_MB,
            poll: Duration::from_secs(2),
            kube_clusters: Vec::new(),
            kube: KubeOptions::default(),
            webhook: None,
            tag_move_spread: Duration::from_secs(30),
            tag_move_delay: Duration::from_secs(10),
        }
    }
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServeConfig> {
        let kube_clusters =
            KubeCluster::from_args(self.in_cluster, &self.kubeconfig, &self.cluster_id)?;
        Ok(ServeConfig {
            config_dir: self.config_dir.clone().unwrap_or_default(),
            xds_addr: self.xds_addr,
            debug_addr: self.debug_addr,
            revision: self.revision.clone(),
            domain: self.domain.clone(),
            system_namespace: self.system_namespace.clone(),
            debounce: Duration::from_millis(self.debounce_ms),
            debounce_max: Duration::from_millis(self.debounce_max_ms.max(self.debounce_ms)),
            push_window_mb: self.push_window_mb,
            poll: Duration::from_millis(self.poll_ms.max(100)),
            kube_clusters,
            kube: KubeOptions {
                sync_timeout: Duration::from_millis(self.kube_sync_timeout_ms),
                ..KubeOptions::default()
            },
            webhook: self.webhook.config()?,
            tag_move_spread: Duration::from_secs(self.tag_move_spread_s),
            tag_move_delay: Duration::from_secs(self.tag_move_delay_s),
        })
    }
}

/// A running control plane.
pub struct Server {
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// Where the status API listens.
    pub debug_addr: SocketAddr,
    /// Delivery state.
    pub sync: Arc<SyncRegistry>,
    /// The push controller.
    pub push: PushController,
    /// The Kubernetes clusters' status, when the Kubernetes source runs.
    pub kube: Option<KubeStatus>,
    /// The injection webhook, when it runs.
    pub webhook: Option<crate::webhook::WebhookHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    closing: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    xds: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Server {
    /// Asks every task to stop, without waiting.
    pub fn shutdown(&mut self) {
        self.closing.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops serving: closes every proxy stream and the listeners, and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown();
        if let Some(xds) = self.xds.take() {
            // Streams end at once; connections get a little time to close cleanly.
            match tokio::time::timeout(Duration::from_secs(5), xds).await {
                Ok(joined) => joined.context("xDS server task")?.context("xDS server")?,
                Err(_) => tracing::warn!("xDS connections did not close within 5s"),
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(xds) = &self.xds {
            xds.abort();
        }
    }
}

/// Starts the control plane on the current tokio runtime.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
    let with_dir = !cfg.config_dir.as_os_str().is_empty();
    if !with_dir && cfg.kube_clusters.is_empty() {
        bail!(
            "no config source: pass --config-dir DIR (a folder of manifests), --in-cluster or \
             --kubeconfig FILE"
        );
    }
    if with_dir && !cfg.config_dir.exists() {
        bail!(
            "config directory {} does not exist",
            cfg.config_dir.display()
        );
    }
    let control_plane = format!("strait-{}@{}", cfg.revision, hostname());
    let mut registry = Registry::default();
    let metrics = XdsMetrics::register(&mut registry);
    let webhook_metrics = crate::webhook::WebhookMetrics::register(&mut registry);
    let kube = if cfg.kube_clusters.is_empty() {
        None
    } else {
        let opts = KubeOptions {
            revision: cfg.revision.clone(),
            system_namespace: cfg.system_namespace.clone(),
            ..cfg.kube.clone()
        };
        let kube_metrics = KubeMetrics::register(&mut registry);
        Some(
            KubeSource::connect(&cfg.kube_clusters, opts, kube_metrics)
                .await
                .context("configure the Kubernetes source")?,
        )
    };
    let sync = SyncRegistry::new(control_plane.clone(), cfg.revision.clone());
    let push = PushController::new(metrics.clone(), sync.clone());

    let (events_tx, events_rx) = mpsc::channel(4096);
    let index = MeshIndex::new(IndexOptions {
        domain: cfg.domain.clone(),
        system_namespace: cfg.system_namespace.clone(),
        revision: cfg.revision.clone(),
    });
    let mut tasks = Vec::new();
    let mut sources = 0;
    let kube_status = kube.as_ref().map(KubeSource::status);
    if let Some(kube) = kube {
        sources += kube.len();
        tasks.extend(kube.spawn(events_tx.clone()));
    }
    let problems = if with_dir {
        let source = DirSource::new(
            cfg.config_dir.clone(),
            DirOptions {
                poll_interval: cfg.poll,
                ..DirOptions::default()
            },
        );
        let problems = source.problems();
        sources += 1;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = source.run(events_tx).await {
                error!(error = %e, "config directory source stopped");
            }
        }));
        Some(problems)
    } else {
        None
    };
    tasks.push(tokio::spawn(push.clone().run(
        index,
        events_rx,
        PushOptions {
            debounce: cfg.debounce,
            debounce_max: cfg.debounce_max.max(cfg.debounce),
            sources,
        },
    )));

    let webhook = match cfg.webhook.clone() {
        Some(w) => {
            let ctx = crate::webhook::WebhookContext {
                push: push.clone(),
                revision: cfg.revision.clone(),
                system_namespace: cfg.system_namespace.clone(),
                domain: cfg.domain.clone(),
                cluster_id: cfg
                    .kube_clusters
                    .first()
                    .map(|c| c.id.clone())
                    .unwrap_or_else(|| strait_sources::kube::DEFAULT_CLUSTER_ID.to_string()),
                cluster: cfg.kube_clusters.first().cloned(),
            };
            let (handle, webhook_tasks) = crate::webhook::start(w, ctx, webhook_metrics).await?;
            tasks.extend(webhook_tasks);
            Some(handle)
        }
        None => None,
    };
    let debug = crate::debug::router(crate::debug::DebugState {
        push: push.clone(),
        sync: sync.clone(),
        registry: Arc::new(registry),
        problems,
        kube: kube_status.clone(),
    });
    let debug_listener = tokio::net::TcpListener::bind(cfg.debug_addr)
        .await
        .with_context(|| format!("bind the status API on {}", cfg.debug_addr))?;
    let debug_addr = debug_listener.local_addr().context("status API address")?;
    let xds_listener = tokio::net::TcpListener::bind(cfg.xds_addr)
        .await
        .with_context(|| format!("bind the xDS server on {}", cfg.xds_addr))?;
    let xds_addr = xds_listener.local_addr().context("xDS address")?;
    info!(
        xds = %xds_addr,
        debug = %debug_addr,
        config_dir = %cfg.config_dir.display(),
        clusters = ?cfg.kube_clusters.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        revision = %cfg.revision,
        %control_plane,
        "strait serving"
    );
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(debug_listener, debug).await {
            error!(error = %e, "status API stopped");
        }
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let connections = Connections::new();
    tasks.push(tokio::spawn(run_tag_mover(
        push.clone(),
        sync.clone(),
        connections.clone(),
        TagMoveOptions {
            delay: cfg.tag_move_delay,
            spread: cfg.tag_move_spread,
            ..TagMoveOptions::new(cfg.revision.clone(), cfg.system_namespace.clone())
        },
        closing_rx.clone(),
    )));
    let ads = AdsService::new(push.clone(), sync.clone(), metrics, closing_rx)
        .with_push_window(cfg.push_window_mb);
    let incoming = connections.incoming(
        tonic::transport::server::TcpIncoming::from(xds_listener).with_nodelay(Some(true)),
    );
    let xds = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(ads)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(Server {
        xds_addr,
        debug_addr,
        sync,
        push,
        kube: kube_status,
        webhook,
        stop: Some(stop),
        closing,
        tasks,
        xds: Some(xds),
    })
}
