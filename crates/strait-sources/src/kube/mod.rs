//! The Kubernetes source: watches one or more clusters and sends the same
//! [`ClusterEvent`]s as the directory source, tagged with each cluster's [`ClusterId`].
//!
//! Per cluster, one watch per kind (kube-runtime's `watcher`, list then watch with resource
//! versions and bookmarks): Namespaces, Nodes, Services, Pods, EndpointSlices (v1 Endpoints
//! where slices are not served), Secrets (not the bulky types), the mesh ConfigMaps of the
//! system namespace, and every config kind the API server serves, in its preferred version
//! (the `networking.istio.io` kinds in v1, else v1beta1, else v1alpha3; strait's
//! `policy.strait.io` kinds). Objects are trimmed of what nothing
//! reads, validated like manifests, and scoped to this control plane's revision.
//!
//! Failures stay local: a failed request is retried with backoff and jitter, 410 Gone
//! relists (swapped in at once), and while an API server is unreachable the index keeps what
//! it had, so proxies keep being served. [`KubeStatus`] tells the status API how each cluster
//! is doing; [`KubeMetrics`] tells Prometheus.

mod backoff;
mod convert;
mod discovery;
#[cfg(feature = "fake-api")]
pub mod fake;
mod health;
mod status;
mod trim;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use strait_model::{ClusterEvent, ClusterId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;

pub use convert::REVISION_LABEL;
pub use status::{ClusterStatus, KindStatus, KubeMetrics, KubeProblem, KubeStatus, WatchLabels};

use crate::{Error, Result};

/// The id of the first cluster when none is given (Istio's default `CLUSTER_ID`).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// How to reach a cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeConnect {
    /// The cluster strait runs in, with its service account.
    InCluster,
    /// A kubeconfig file, in its current context or the one named.
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The context; the file's current context when `None`.
        context: Option<String>,
    },
    /// A plain URL, without credentials (tests, `kubectl proxy`).
    Url(String),
}

/// A cluster to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeCluster {
    /// Its id: endpoints and workloads of this cluster carry it.
    pub id: String,
    /// How to reach it.
    pub connect: KubeConnect,
}

impl KubeCluster {
    /// The clusters the command line names: the one strait runs in (`in_cluster`), then one
    /// per kubeconfig (`PATH` or `PATH#CONTEXT`; a directory stands for every file in it, in
    /// name order). The first cluster's id is `first_id`; the others are named by their
    /// context (or, without one, the file's stem).
    pub fn from_args(
        in_cluster: bool,
        kubeconfigs: &[String],
        first_id: &str,
    ) -> Result<Vec<KubeCluster>> {
        let mut out: Vec<KubeCluster> = Vec::new();
        if in_cluster {
            out.push(KubeCluster {
                id: first_id.to_string(),
                connect: KubeConnect::InCluster,
            });
        }
        for arg in kubeconfigs {
            let (path, context) = match arg.rsplit_once('#') {
                Some((p, c)) if !c.is_empty() => (PathBuf::from(p), Some(c.to_string())),
                _ => (PathBuf::from(arg), None),
            };
            let files = if path.is_dir() {
                kubeconfig_files(&path)?
            } else {
                vec![path]
            };
            for file in files {
                let id = if out.is_empty() {
                    first_id.to_string()
                } else {
                    cluster_name(&file, context.as_deref())?
                };
                out.push(KubeCluster {
                    id,
                    connect: KubeConnect::Kubeconfig {
                        path: file,
                        context: context.clone(),
                    },
                });
            }
        }
        let mut ids: Vec<&str> = out.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::KubeClusters(format!(
                "two clusters are named {:?}; give the kubeconfigs distinct context names",
                w[0]
            )));
        }
        Ok(out)
    }
}

fn kubeconfig_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::KubeClusters(format!(
            "no kubeconfig in {}",
            dir.display()
        )));
    }
    Ok(files)
}

/// A cluster's name from its kubeconfig: the context (given, or the file's current one),
/// else the file's stem.
fn cluster_name(file: &Path, context: Option<&str>) -> Result<String> {
    if let Some(c) = context {
        return Ok(c.to_string());
    }
    let kc = Kubeconfig::read_from(file).map_err(|e| Error::KubeConfig {
        cluster: file.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(kc
        .current_context
        .filter(|c| !c.is_empty())
        .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| file.display().to_string()))
}

/// Settings of the Kubernetes source.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// This control plane's revision: config labelled `istio.io/rev` for another one is
    /// ignored, and the mesh ConfigMap may be `istio-<revision>`.
    pub revision: String,
    /// The namespace of the mesh ConfigMaps.
    pub system_namespace: String,
    /// How long a cluster other than the first may take to deliver its initial state before
    /// the control plane serves without it.
    pub sync_timeout: Duration,
    /// First retry delay after a failed request.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Without failures for this long, retry delays start over from `backoff_min`.
    pub backoff_reset: Duration,
    /// How often to look again for Istio kinds the API server did not serve.
    pub rediscover: Duration,
    /// Server-side timeout of each watch request, in seconds (kube's default, 290 s, when
    /// `None`); the watcher resumes from the last resource version when it expires.
    pub watch_timeout: Option<u32>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            revision: "default".to_string(),
            system_namespace: "istio-system".to_string(),
            sync_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(120),
            rediscover: Duration::from_secs(60),
            watch_timeout: None,
        }
    }
}

struct Connected {
    id: ClusterId,
    client: kube::Client,
    primary: bool,
}

/// Clients for every cluster, ready to run.
pub struct KubeSource {
    clusters: Vec<Connected>,
    opts: Arc<KubeOptions>,
    status: KubeStatus,
}

async fn config_of(c: &KubeCluster) -> Result<kube::Config> {
    let err = |reason: &dyn std::fmt::Display| Error::KubeConfig {
        cluster: c.id.clone(),
        reason: reason.to_string(),
    };
    match &c.connect {
        KubeConnect::InCluster => kube::Config::incluster().map_err(|e| err(&e)),
        KubeConnect::Kubeconfig { path, context } => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| err(&e))
        }
        KubeConnect::Url(url) => {
            let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| err(&e))?;
            Ok(kube::Config::new(uri))
        }
    }
}

/// A plain client (no health reporting) for the command-line tools: for `cluster`, or with
/// `None` the environment's (`$KUBECONFIG`, `~/.kube/config`, else the pod's service account).
pub async fn client(cluster: Option<&KubeCluster>) -> Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (id, config) = match cluster {
        Some(c) => (c.id.clone(), config_of(c).await?),
        None => (
            DEFAULT_CLUSTER_ID.to_string(),
            kube::Config::infer().await.map_err(|e| Error::KubeConfig {
                cluster: DEFAULT_CLUSTER_ID.to_string(),
                reason: e.to_string(),
            })?,
        ),
    };
    kube::Client::try_from(config).map_err(|e| Error::KubeConfig {
        cluster: id,
        reason: e.to_string(),
    })
}

impl KubeSource {
    /// Reads every cluster's connection settings and builds its client. Nothing is sent to
    /// an API server yet; a cluster that is unreachable later is retried, but unusable
    /// settings (a missing kubeconfig, a bad URL) are an error here.
    pub async fn connect(
        clusters: &[KubeCluster],
        opts: KubeOptions,
        metrics: Arc<KubeMetrics>,
    ) -> Result<Self> {
        // TLS to API servers uses ring; say so once for the process, so that the choice does
        // not depend on which rustls backends other crates happen to enable.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let status = KubeStatus::new(metrics);
        let mut connected = Vec::with_capacity(clusters.len());
        for (i, c) in clusters.iter().enumerate() {
            let config = config_of(c).await?;
            let reporter = status.reporter(&c.id);
            info!(cluster = %c.id, server = %config.cluster_url, "Kubernetes cluster configured");
            let client = kube::client::ClientBuilder::try_from(config)
                .map_err(|e| Error::KubeConfig {
                    cluster: c.id.clone(),
                    reason: e.to_string(),
                })?
                .with_layer(&health::HealthLayer { reporter })
                .build();
            connected.push(Connected {
                id: ClusterId::from(c.id.as_str()),
                client,
                primary: i == 0,
            });
        }
        Ok(Self {
            clusters: connected,
            opts: Arc::new(opts),
            status,
        })
    }

    /// The shared status of every cluster.
    pub fn status(&self) -> KubeStatus {
        self.status.clone()
    }

    /// How many clusters there are: each sends one `Synced`.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// True without clusters.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Starts one task per cluster (which starts its watchers); each sends its events to
    /// `tx` and ends when `tx` closes. Aborting a task stops its cluster's watchers.
    pub fn spawn(self, tx: mpsc::Sender<ClusterEvent>) -> Vec<JoinHandle<()>> {
        self.clusters
            .into_iter()
            .map(|c| {
                let shared = Arc::new(watch::Shared {
                    reporter: self.status.reporter(&c.id),
                    cluster: c.id,
                    client: c.client,
                    opts: self.opts.clone(),
                    tx: tx.clone(),
                    primary: c.primary,
                });
                tokio::spawn(watch::run_cluster(shared))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(dir: &Path, file: &str, context: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: {context}\n\
                 clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:1'}}}}]\n\
                 users: [{{name: u, user: {{}}}}]\n\
                 contexts: [{{name: {context}, context: {{cluster: c, user: u}}}}]\n"
            ),
        )
        .expect("write kubeconfig");
        p
    }

    #[test]
    fn cluster_ids_from_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = kubeconfig(dir.path(), "a.yaml", "ctx-a");
        let remotes = dir.path().join("remotes");
        std::fs::create_dir(&remotes).expect("mkdir");
        kubeconfig(&remotes, "east", "ctx-east");
        kubeconfig(&remotes, "west", "ctx-west");
        let args = [
            a.display().to_string(),
            remotes.display().to_string(),
            format!("{}#other", a.display()),
        ];
        let got = KubeCluster::from_args(false, &args, "main").expect("clusters");
        let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["main", "ctx-east", "ctx-west", "other"]);
        let got = KubeCluster::from_args(true, &args[..1], DEFAULT_CLUSTER_ID).expect("clusters");
        assert_eq!(got[0].connect, KubeConnect::InCluster);
        assert_eq!(got[0].id, "Kubernetes");
        assert_eq!(got[1].id, "ctx-a");
        let dup = [a.display().to_string(), a.display().to_string()];
        assert!(KubeCluster::from_args(true, &dup, "x").is_err());
    }

    #[tokio::test]
    async fn clients_for_tls_and_plain_api_servers() {
        let clusters = [
            KubeCluster {
                id: "tls".into(),
                connect: KubeConnect::Url("https://127.0.0.1:6443".into()),
            },
            KubeCluster {
                id: "plain".into(),
                connect: KubeConnect::Url("http://127.0.0.1:8001".into()),
            },
        ];
        let source = KubeSource::connect(&clusters, KubeOptions::default(), Arc::default())
            .await
            .expect("clients");
        assert_eq!(source.len(), 2);
        let bad = [KubeCluster {
            id: "bad".into(),
            connect: KubeConnect::Kubeconfig {
                path: "/nonexistent/kubeconfig".into(),
                context: None,
            },
        }];
        let err = KubeSource::connect(&bad, KubeOptions::default(), Arc::default())
            .await
            .err()
            .expect("a missing kubeconfig is an error");
        assert!(err.to_string().contains("bad"), "{err}");
    }
}
