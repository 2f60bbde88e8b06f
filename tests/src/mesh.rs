//! strait in-process with a temporary config directory, and builders of the manifests tests
//! write into it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use strait::serve::{ServeConfig, Server, start};
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};

use crate::upstream::Upstream;

/// A running strait serving a temporary directory.
pub struct Strait {
    server: Option<Server>,
    dir: tempfile::TempDir,
}

impl Strait {
    /// Starts strait on loopback (free ports) over an empty config directory.
    pub async fn start() -> Strait {
        Self::start_with(|_| {}).await
    }

    /// Starts strait after `setup` has written the initial files into its directory.
    pub async fn start_with(setup: impl FnOnce(&std::path::Path)) -> Strait {
        crate::init_logs();
        let dir = tempfile::tempdir().expect("config directory");
        setup(dir.path());
        let server = start(Self::config(dir.path(), None))
            .await
            .expect("strait starts");
        Strait {
            server: Some(server),
            dir,
        }
    }

    fn config(dir: &std::path::Path, xds: Option<SocketAddr>) -> ServeConfig {
        let mut cfg = ServeConfig::local(dir);
        cfg.poll = Duration::from_millis(250);
        if let Some(addr) = xds {
            cfg.xds_addr = addr;
        }
        cfg
    }

    /// Stops the control plane and starts a fresh one on the same xDS address and directory,
    /// as a restart or a failover would.
    pub async fn restart(&mut self) {
        let addr = self.xds_addr();
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean stop");
        }
        self.server = Some(
            start(Self::config(self.dir.path(), Some(addr)))
                .await
                .expect("strait restarts"),
        );
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// The ADS address.
    pub fn xds_addr(&self) -> SocketAddr {
        self.server().xds_addr
    }

    /// The status API address.
    pub fn debug_addr(&self) -> SocketAddr {
        self.server().debug_addr
    }

    /// Path of a file in the config directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes a manifest file (atomically).
    pub fn write(&self, file: &str, yaml: &str) {
        crate::write_atomic(&self.path(file), yaml);
    }

    /// Removes a manifest file.
    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path(file)).expect("remove manifest");
    }

    /// Delivery state.
    pub fn syncz(&self) -> strait_xds::Syncz {
        self.server().sync.syncz()
    }

    /// Fails if any proxy rejected anything strait sent.
    pub fn assert_no_nacks(&self) {
        let z = self.syncz();
        for p in &z.proxies {
            for (t, s) in &p.types {
                assert!(s.nack.is_none(), "{} NACKed {t}: {:?}", p.proxy, s.nack);
            }
        }
    }

    /// Waits until every connected proxy has acknowledged everything it was sent.
    pub async fn wait_synced(&self, proxies: usize) {
        crate::eventually("proxies synced", Duration::from_secs(20), || async {
            let z = self.syncz();
            if z.proxies.len() < proxies {
                return Err(format!(
                    "{} of {proxies} proxies connected",
                    z.proxies.len()
                ));
            }
            for p in &z.proxies {
                for (t, s) in &p.types {
                    if s.state == "STALE" || s.state == "NACKED" {
                        return Err(format!("{} {t} is {}", p.proxy, s.state));
                    }
                }
            }
            Ok(())
        })
        .await;
    }

    /// A sidecar bootstrap without traffic capture: outbound listeners bound on `bind`.
    pub fn sidecar(
        &self,
        namespace: &str,
        pod: &str,
        bind: IpAddr,
        delta: bool,
    ) -> serde_json::Value {
        bootstrap(&BootstrapOptions {
            xds_address: self.xds_addr().to_string(),
            node_id: format!("sidecar~{bind}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            node_cluster: format!("{pod}.{namespace}"),
            namespace: Some(namespace.to_string()),
            outbound_bind: Some(bind),
            delta,
            ..Default::default()
        })
    }

    /// A gateway (`router`) bootstrap without traffic capture: the Gateway servers' listeners
    /// bind `bind` at each server's port number. `labels` are what Gateway selectors match.
    pub fn router(
        &self,
        namespace: &str,
        pod: &str,
        bind: IpAddr,
        labels: &[(&str, &str)],
    ) -> serde_json::Value {
        bootstrap(&BootstrapOptions {
            xds_address: self.xds_addr().to_string(),
            node_id: format!("router~{bind}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            node_cluster: format!("{pod}.{namespace}"),
            namespace: Some(namespace.to_string()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            outbound_bind: Some(bind),
            ..Default::default()
        })
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean stop");
        }
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.shutdown();
        }
    }
}

static NEXT_IP: AtomicU32 = AtomicU32::new(1);

/// A Service with one port, a selector `app: <name>`, and a unique cluster IP (a YAML
/// document of its own, so manifests concatenate safely).
pub fn service(namespace: &str, name: &str, port: u16, port_name: &str) -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  clusterIP: 10.96.{}.{}\n  selector: {{app: {name}}}\n  ports:\n  - {{name: {port_name}, port: {port}}}\n",
        n / 250,
        n % 250 + 1
    )
}

/// One endpoint of a service: an upstream, its pod's labels, and readiness.
pub struct Endpoint<'a> {
    /// The server behind it.
    pub upstream: &'a Upstream,
    /// Labels of its pod (besides `app`).
    pub labels: &'a [(&'a str, &'a str)],
    /// Ready or not.
    pub ready: bool,
}

impl<'a> Endpoint<'a> {
    /// A ready endpoint with no extra labels.
    pub fn ready(upstream: &'a Upstream) -> Self {
        Self {
            upstream,
            labels: &[],
            ready: true,
        }
    }
}

/// Pods and EndpointSlices for `service`'s endpoints (one slice per endpoint, since each
/// upstream listens on its own port). Pod names are the upstream names.
pub fn endpoints(namespace: &str, service: &str, port_name: &str, eps: &[Endpoint<'_>]) -> String {
    let mut out = String::new();
    for e in eps {
        let u = e.upstream;
        let mut labels = format!("app: {service}");
        for (k, v) in e.labels {
            let _ = write!(labels, ", {k}: {v}");
        }
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}, labels: {{{labels}}}}}\n\
             spec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {pod}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{name: {port_name}, port: {port}, protocol: TCP}}]\n\
             endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}\n",
            pod = u.name,
            ip = u.ip(),
            port = u.port(),
            ready = e.ready,
        );
    }
    out
}

/// An Istio networking object (`kind` is `VirtualService`, `DestinationRule`, `Gateway`, …)
/// with `spec` written as JSON, which YAML reads as it is.
pub fn istio(kind: &str, namespace: &str, name: &str, spec: &serde_json::Value) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: {kind}\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// A VirtualService.
pub fn virtual_service(namespace: &str, name: &str, spec: &serde_json::Value) -> String {
    istio("VirtualService", namespace, name, spec)
}

/// A DestinationRule.
pub fn destination_rule(namespace: &str, name: &str, spec: &serde_json::Value) -> String {
    istio("DestinationRule", namespace, name, spec)
}

/// A Gateway.
pub fn gateway(namespace: &str, name: &str, spec: &serde_json::Value) -> String {
    istio("Gateway", namespace, name, spec)
}

/// A `kubernetes.io/tls` Secret with a certificate chain, its key, and optionally a CA (PEM),
/// as `credentialName` refers to.
pub fn tls_secret(namespace: &str, name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    let mut data = serde_json::json!({"tls.crt": cert, "tls.key": key});
    if let Some(ca) = ca {
        data["ca.crt"] = serde_json::json!(ca);
    }
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: kubernetes.io/tls\nstringData: {data}\n"
    )
}
