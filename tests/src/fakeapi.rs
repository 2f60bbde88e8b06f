//! strait in-process against a Kubernetes API server: the in-process fake (from
//! `strait-sources`, re-exported here) or a real cluster's kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use strait::serve::{ServeConfig, Server, start};
use strait_sources::kube::{KubeCluster, KubeOptions};
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};

pub use strait_sources::kube::fake::{FakeApiServer, FakeOptions, GoneMode, RecordedRequest};

/// A running strait whose only config source is a Kubernetes cluster.
pub struct KubeStrait {
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl KubeStrait {
    /// Starts strait watching `fake` through a kubeconfig file (the `--kubeconfig` path), with
    /// short retry delays.
    pub async fn start(fake: &FakeApiServer) -> KubeStrait {
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig("fake")).expect("write kubeconfig");
        let options = KubeOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            backoff_reset: Duration::from_secs(10),
            rediscover: Duration::from_millis(500),
            ..KubeOptions::default()
        };
        Self::start_with(dir, &kubeconfig, options).await
    }

    /// Starts strait watching the cluster of `kubeconfig` (a real one), with default settings.
    pub async fn start_kubeconfig(kubeconfig: &Path) -> KubeStrait {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_with(dir, kubeconfig, KubeOptions::default()).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        kubeconfig: &Path,
        options: KubeOptions,
    ) -> KubeStrait {
        crate::init_logs();
        let clusters = KubeCluster::from_args(
            false,
            &[kubeconfig.display().to_string()],
            strait_sources::kube::DEFAULT_CLUSTER_ID,
        )
        .expect("clusters");
        let mut cfg = ServeConfig::local("");
        cfg.kube_clusters = clusters;
        cfg.kube = options;
        let server = start(cfg).await.expect("strait starts");
        KubeStrait {
            server: Some(server),
            _dir: dir,
        }
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// The ADS address.
    pub fn xds_addr(&self) -> SocketAddr {
        self.server().xds_addr
    }

    /// GETs `/ready`: the status code and the JSON body.
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        let resp = crate::http_client()
            .get(format!("http://{}/ready", self.server().debug_addr))
            .send()
            .await
            .expect("status API answers");
        let code = resp.status().as_u16();
        (code, resp.json().await.expect("JSON"))
    }

    /// GETs `/metrics`.
    pub async fn metrics(&self) -> String {
        crate::http_client()
            .get(format!("http://{}/metrics", self.server().debug_addr))
            .send()
            .await
            .expect("status API answers")
            .text()
            .await
            .expect("text")
    }

    /// Waits until strait has pushed its initial configuration.
    pub async fn wait_ready(&self) {
        crate::eventually("strait ready", Duration::from_secs(20), || async {
            match self.ready().await {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code}: {body}")),
            }
        })
        .await;
    }

    /// Fails if any proxy rejected anything strait sent.
    pub fn assert_no_nacks(&self) {
        let z = self.server().sync.syncz();
        for p in &z.proxies {
            for (t, s) in &p.types {
                assert!(s.nack.is_none(), "{} NACKed {t}: {:?}", p.proxy, s.nack);
            }
        }
    }

    /// A sidecar bootstrap without traffic capture: outbound listeners bound on `bind`.
    pub fn sidecar(&self, namespace: &str, pod: &str, bind: IpAddr) -> serde_json::Value {
        bootstrap(&BootstrapOptions {
            xds_address: self.xds_addr().to_string(),
            node_id: format!("sidecar~{bind}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            node_cluster: format!("{pod}.{namespace}"),
            namespace: Some(namespace.to_string()),
            outbound_bind: Some(bind),
            ..Default::default()
        })
    }
}

impl Drop for KubeStrait {
    fn drop(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.shutdown();
        }
    }
}
