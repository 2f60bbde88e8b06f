//! Sidecar injection end to end: the webhook over real HTTPS, verified against the CA bundle
//! strait published into its MutatingWebhookConfigurations (in-process fake API server);
//! replicas sharing the CA and the serving certificate renewing without a restart; the
//! bootstrap `strait init` writes, fed to stock Envoy, which connects to strait and accepts
//! everything; the commands as users and pods run them; and, against a real cluster (ignored
//! without one), the API server calling the webhook.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strait::serve::{ServeConfig, Server, start};
use strait::webhook::WebhookConfig;
use strait_api::k8s_openapi::ByteString;
use strait_e2e::fakeapi::FakeApiServer;
use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{
    Killed, Strait, Upstream, eventually, free_port, http_client, loopback_ip, strait_bin,
};
use strait_inject::patch::{self, Op};
use strait_inject::validation::validate;
use strait_sources::kube::{KubeCluster, KubeOptions};
use tokio_rustls::rustls;

const WAIT: Duration = Duration::from_secs(20);
/// The name the API server uses for revision `default`'s webhook Service.
const WEBHOOK_HOST: &str = "strait-default.istio-system.svc";

/// strait in-process against the fake API server, with the webhook on.
struct KubeServe {
    server: Server,
    _dir: tempfile::TempDir,
}

async fn start_kube(fake: &FakeApiServer, webhook: WebhookConfig) -> KubeServe {
    strait_e2e::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig("fake")).expect("kubeconfig");
    let mut cfg = ServeConfig::local("");
    cfg.kube_clusters = KubeCluster::from_args(
        false,
        &[kubeconfig.display().to_string()],
        strait_sources::kube::DEFAULT_CLUSTER_ID,
    )
    .expect("clusters");
    cfg.kube = KubeOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        rediscover: Duration::from_millis(500),
        ..KubeOptions::default()
    };
    cfg.webhook = Some(webhook);
    let server = start(cfg).await.expect("strait starts");
    eventually("strait ready", WAIT, || async {
        if server.push.is_ready() {
            Ok(())
        } else {
            Err("not ready".into())
        }
    })
    .await;
    KubeServe { server, _dir: dir }
}

impl KubeServe {
    fn webhook(&self) -> &strait::webhook::WebhookHandle {
        self.server.webhook.as_ref().expect("webhook on")
    }
}

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: strait-sidecar-injector-default
  labels: {app: strait, istio.io/rev: default}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  clientConfig:
    service: {name: strait-default, namespace: istio-system, path: /inject}
  admissionReviewVersions: [v1]
  sideEffects: None
- name: rev.object.sidecar-injector.istio.io
  clientConfig:
    service: {name: strait-default, namespace: istio-system, path: /inject}
  admissionReviewVersions: [v1]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: istio-revision-tag-stable
  labels: {istio.io/tag: stable, istio.io/rev: default}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  clientConfig:
    service: {name: strait-default, namespace: istio-system, path: /inject}
  admissionReviewVersions: [v1]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: strait-sidecar-injector-other
  labels: {app: strait, istio.io/rev: other}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  clientConfig:
    service: {name: strait-other, namespace: istio-system, path: /inject}
  admissionReviewVersions: [v1]
  sideEffects: None
";

/// The `caBundle` of each webhook of a MutatingWebhookConfiguration (`None` when unset).
fn ca_bundles(fake: &FakeApiServer, name: &str) -> Vec<Option<String>> {
    let mwc = fake
        .get(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            "",
            name,
        )
        .unwrap_or_else(|| panic!("{name} exists"));
    mwc["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let b = &w["clientConfig"]["caBundle"];
            (!b.is_null()).then(|| {
                let bytes: ByteString = serde_json::from_value(b.clone()).expect("base64");
                String::from_utf8(bytes.0).expect("PEM")
            })
        })
        .collect()
}

/// An HTTPS client that trusts only `bundle` and reaches `host` at `addr`.
fn https_client(bundle: &str, host: &str, addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve(host, addr)
        .timeout(Duration::from_secs(10));
    for c in reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).expect("PEM bundle") {
        b = b.add_root_certificate(c);
    }
    b.build().expect("client")
}

fn mk_review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
        }
    })
}

fn mk_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-5d9c-", "labels": {"app": "web", "pod-template-hash": "5d9c"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c",
                                             "uid": "9f0e", "controller": true}]},
           "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}]}})
}

async fn post(client: &reqwest::Client, port: u16, body: Vec<u8>) -> (u16, Value) {
    let resp = client
        .post(format!("https://{WEBHOOK_HOST}:{port}/inject"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook answers over HTTPS");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("AdmissionReview JSON"))
}

fn decode_patch(review: &Value) -> Vec<Op> {
    let bytes: ByteString =
        serde_json::from_value(review["response"]["patch"].clone()).expect("base64 patch");
    serde_json::from_slice(&bytes.0).expect("JSON patch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers_over_https_verified_with_the_published_ca_bundle() {
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(CLUSTER);
    let strait = start_kube(&fake, WebhookConfig::local()).await;
    let hook = strait.webhook();
    let bundle = hook.ca_bundle();
    assert!(bundle.contains("BEGIN CERTIFICATE"));

    // strait publishes its CA into its own and its tags' webhook configurations, not others'.
    eventually("caBundle published", WAIT, || async {
        let own = ca_bundles(&fake, "strait-sidecar-injector-default");
        let tag = ca_bundles(&fake, "istio-revision-tag-stable");
        if own
            .iter()
            .chain(&tag)
            .all(|b| b.as_deref() == Some(bundle.as_str()))
        {
            Ok(())
        } else {
            Err(format!("own {own:?}, tag {tag:?}"))
        }
    })
    .await;
    assert_eq!(
        ca_bundles(&fake, "strait-sidecar-injector-other"),
        vec![None]
    );
    // The CA is kept in the revision's Secret, for the other replicas.
    let secret = fake
        .get("v1", "Secret", "istio-system", "strait-ca-default")
        .expect("CA Secret");
    let stored: ByteString =
        serde_json::from_value(secret["data"]["ca-cert.pem"].clone()).expect("ca-cert.pem");
    assert_eq!(String::from_utf8(stored.0).expect("PEM"), bundle);

    // A client that trusts exactly what the API server was given.
    let published = ca_bundles(&fake, "strait-sidecar-injector-default")[0]
        .clone()
        .expect("bundle");
    let port = hook.addr.port();
    let client = https_client(&published, WEBHOOK_HOST, hook.addr);

    let pod = mk_pod();
    let (code, r) = post(
        &client,
        port,
        serde_json::to_vec(&mk_review("u-1", "shop", &pod)).expect("json"),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["response"]["uid"], "u-1");
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
    let injected = patch::apply(&pod, &decode_patch(&r)).expect("the patch applies");
    assert_eq!(validate(&injected), Vec::<String>::new());
    let names = |list: &str| -> Vec<String> {
        injected["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    // The fake API server has no /version: strait does not know the cluster has native
    // sidecars and injects a regular container.
    assert_eq!(names("initContainers"), vec!["strait-init"]);
    assert_eq!(names("containers"), vec!["web", "istio-proxy"]);
    assert_eq!(injected["metadata"]["labels"]["strait.io/rev"], "default");
    assert_eq!(
        injected["metadata"]["labels"]["service.istio.io/canonical-name"],
        "web"
    );

    let (_, r) = post(
        &client,
        port,
        serde_json::to_vec(&mk_review("u-2", "plain", &pod)).expect("json"),
    )
    .await;
    assert_eq!(
        (&r["response"]["uid"], &r["response"]["allowed"]),
        (&json!("u-2"), &json!(true))
    );
    assert!(r["response"]["patch"].is_null(), "not selected: {r}");

    let (_, r) = post(
        &client,
        port,
        serde_json::to_vec(&mk_review("u-3", "shop", &injected)).expect("json"),
    )
    .await;
    assert_eq!(r["response"]["allowed"], true);
    assert!(r["response"]["patch"].is_null(), "already injected: {r}");

    let (code, r) = post(&client, port, b"{\"kind\": \"Nonsense\"".to_vec()).await;
    assert_eq!(code, 400);
    assert_eq!(r["response"]["allowed"], false);
    let message = r["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("not an AdmissionReview"), "{message}");

    // The status API counts them.
    let metrics = http_client()
        .get(format!("http://{}/metrics", strait.server.debug_addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "strait_injections_total{result=\"injected\"} 1",
        "strait_injections_total{result=\"skipped\"} 2",
        "strait_injections_total{result=\"malformed\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }

    // A client trusting another CA refuses the server: verification is real.
    let other = rcgen::generate_simple_self_signed(vec![WEBHOOK_HOST.to_string()]).expect("CA");
    let stranger = https_client(&other.cert.pem(), WEBHOOK_HOST, hook.addr);
    let refused = stranger
        .post(format!("https://{WEBHOOK_HOST}:{port}/inject"))
        .body("{}")
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

/// The leaf certificate the webhook presents, verified against `bundle`.
async fn presented_certificate(bundle: &str, addr: SocketAddr) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(WEBHOOK_HOST).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(leaf.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_ca_and_certificates_renew_without_restart() {
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(CLUSTER);
    let cfg = WebhookConfig {
        serving_lifetime: Duration::from_secs(3),
        ..WebhookConfig::local()
    };
    // Two replicas start at once: one creates the Secret, the other uses it (a replica that
    // lost the race adopts what the Secret holds).
    let (a, b) = tokio::join!(start_kube(&fake, cfg.clone()), start_kube(&fake, cfg));
    eventually("replicas share one CA", WAIT, || async {
        let (x, y) = (a.webhook().ca_bundle(), b.webhook().ca_bundle());
        if x == y {
            Ok(())
        } else {
            Err("two CAs".into())
        }
    })
    .await;
    let bundle = a.webhook().ca_bundle();
    let secret = fake
        .get("v1", "Secret", "istio-system", "strait-ca-default")
        .expect("CA Secret");
    let stored: ByteString =
        serde_json::from_value(secret["data"]["ca-cert.pem"].clone()).expect("ca-cert.pem");
    assert_eq!(String::from_utf8(stored.0).expect("PEM"), bundle);
    eventually("caBundle published", WAIT, || async {
        let own = ca_bundles(&fake, "strait-sidecar-injector-default");
        if own.iter().all(|b| b.as_deref() == Some(bundle.as_str())) {
            Ok(())
        } else {
            Err(format!("{own:?}"))
        }
    })
    .await;

    let first = presented_certificate(&bundle, a.webhook().addr)
        .await
        .expect("verified handshake");
    // At two thirds of its short lifetime the certificate is renewed; the running server
    // presents the new one, still trusted through the same published bundle.
    eventually("serving certificate renewed", WAIT, || async {
        let now = presented_certificate(&bundle, a.webhook().addr).await?;
        if now != first {
            Ok(())
        } else {
            Err("same certificate".into())
        }
    })
    .await;
    for replica in [&a, &b] {
        let hook = replica.webhook();
        let client = https_client(&bundle, WEBHOOK_HOST, hook.addr);
        let (code, r) = post(
            &client,
            hook.addr.port(),
            serde_json::to_vec(&mk_review("u", "shop", &mk_pod())).expect("json"),
        )
        .await;
        assert_eq!(
            (code, &r["response"]["allowed"]),
            (200, &json!(true)),
            "{r}"
        );
        assert_eq!(hook.ca_bundle(), bundle, "the CA did not change");
    }
}

// ---- The bootstrap `strait init` writes, with stock Envoy ----

/// A stock Envoy spawned with an exact bootstrap (its admin port is part of the bootstrap:
/// the readiness listener routes to it). Killed when dropped.
struct EnvoyChild {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for EnvoyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
            eprintln!("--- Envoy log ---\n{log}");
        }
    }
}

fn spawn_envoy(bin: &Path, bootstrap: &Value) -> EnvoyChild {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("envoy.json");
    std::fs::write(&config, serde_json::to_vec_pretty(bootstrap).expect("json")).expect("write");
    let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log");
    // The same arguments the injector gives the container (minus what needs a pod).
    let child = Command::new(bin)
        .args(["-c"])
        .arg(&config)
        .args([
            "--disable-hot-restart",
            "--drain-time-s",
            "3",
            "--drain-strategy",
            "immediate",
        ])
        .args(["--concurrency", "1", "--log-level", "warning"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    EnvoyChild { child, dir }
}

/// Holds the machine-wide lock on the capture ports (15001, 15006): a sidecar with traffic
/// capture binds them on all addresses, so such tests, in this process or another, take
/// turns.
struct CapturePorts(std::fs::File);

impl CapturePorts {
    async fn lock() -> CapturePorts {
        let path = std::env::temp_dir().join("strait-e2e-capture-ports.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("lock file");
        let file = tokio::task::spawn_blocking(move || {
            file.lock().expect("lock");
            file
        })
        .await
        .expect("lock task");
        CapturePorts(file)
    }
}

impl Drop for CapturePorts {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The init container's arguments as the injector writes them, pointed at `xds`.
fn init_args(xds: SocketAddr, podinfo: &Path, tag: Option<&str>) -> strait::init::InitArgs {
    strait::init::InitArgs {
        revision: "canary".into(),
        tag: tag.map(str::to_string),
        xds_address: xds.to_string(),
        cluster_id: "Kubernetes".into(),
        domain: "cluster.local".into(),
        status_port: 15021,
        stats_port: 15090,
        inbound_ports: "*".into(),
        exclude_inbound_ports: "15021,15090".into(),
        outbound_ip_ranges: "*".into(),
        exclude_outbound_ip_ranges: String::new(),
        include_outbound_ports: String::new(),
        exclude_outbound_ports: String::new(),
        metadata: vec!["ISTIO_META_MESH_ID=cluster.local".into()],
        delta: false,
        bootstrap: podinfo.join("envoy.json"),
        copy_binary: PathBuf::new(),
        podinfo: podinfo.to_path_buf(),
        capture_ipv6: false,
        iptables_restore: "iptables-restore".into(),
        ip6tables_restore: "ip6tables-restore".into(),
        dry_run: true,
    }
}

/// Moves a static listener of the bootstrap to `ip` and a port the system picks.
fn rebind(bootstrap: &mut Value, listener: &str, ip: IpAddr) {
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array_mut()
        .expect("static listeners");
    let l = listeners
        .iter_mut()
        .find(|l| l["name"] == listener)
        .unwrap_or_else(|| panic!("no {listener}"));
    l["address"]["socket_address"] = json!({"address": ip.to_string(), "port_value": 0});
}

/// The port Envoy bound for a listener (from its admin interface).
async fn bound_port(admin: SocketAddr, listener: &str) -> Result<u16, String> {
    let v: Value = http_client()
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    v["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == listener)
        .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{listener} not bound yet"))
}

async fn status_of(url: &str) -> Result<u16, String> {
    http_client()
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_bootstrap_is_accepted_by_stock_envoy() {
    let _ports = CapturePorts::lock().await;
    let up = Upstream::start("web-0", loopback_ip().into()).await;
    let mesh = format!(
        "{}{}",
        service("shop", "web", 8080, "http"),
        endpoints("shop", "web", "http", &[Endpoint::ready(&up)])
    );
    let strait =
        Strait::start_with(|dir| std::fs::write(dir.join("mesh.yaml"), &mesh).expect("write"))
            .await;
    for (i, bin) in strait_e2e::envoy::all_versions().iter().enumerate() {
        // The downward API as the kubelet writes it.
        let podinfo = tempfile::tempdir().expect("podinfo");
        std::fs::write(
            podinfo.path().join("labels"),
            "app=\"client\"\nservice.istio.io/canonical-name=\"client\"\nstrait.io/rev=\"canary\"\n",
        )
        .expect("labels");
        std::fs::write(
            podinfo.path().join("annotations"),
            "sidecar.istio.io/status=\"{\\\"revision\\\":\\\"canary\\\"}\"\n",
        )
        .expect("annotations");
        let pod = format!("client-{i}");
        let env = |k: &str| {
            Some(match k {
                "POD_NAME" => pod.clone(),
                "POD_NAMESPACE" => "shop".into(),
                "INSTANCE_IP" => "10.44.0.7".into(),
                "INSTANCE_IPS" => "10.44.0.7".into(),
                "SERVICE_ACCOUNT" => "client".into(),
                _ => return None,
            })
        };
        let args = init_args(strait.xds_addr(), podinfo.path(), Some("stable"));
        let plan = args.plan(&env).expect("init plan");
        let mut bootstrap = plan.bootstrap;
        let node_id = format!("sidecar~10.44.0.7~{pod}.shop~shop.svc.cluster.local");
        assert_eq!(bootstrap["node"]["id"], node_id.as_str());
        assert_eq!(bootstrap["node"]["metadata"]["STRAIT_TAG"], "stable");
        assert_eq!(bootstrap["node"]["metadata"]["STRAIT_REVISION"], "canary");
        // Only what cannot be the same on a test machine changes: ports on loopback.
        let lo: IpAddr = loopback_ip().into();
        let admin_port = free_port(IpAddr::from([127, 0, 0, 1])).port();
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(admin_port);
        for c in bootstrap["static_resources"]["clusters"]
            .as_array_mut()
            .expect("clusters")
        {
            if c["name"] == "strait-admin" {
                c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                    ["port_value"] = json!(admin_port);
            }
        }
        rebind(&mut bootstrap, "strait-health", lo);
        rebind(&mut bootstrap, "strait-stats", lo);
        let envoy = spawn_envoy(bin, &bootstrap);
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));

        // Envoy connects, receives its configuration (with capture: virtualOutbound and
        // virtualInbound) and accepts all of it.
        eventually("Envoy live", WAIT, || async {
            match status_of(&format!("http://{admin}/ready")).await? {
                200 => Ok(()),
                c => Err(format!("/ready {c}")),
            }
        })
        .await;
        strait.wait_synced(1).await;
        strait.assert_no_nacks();
        let z = strait.syncz();
        let p = z
            .proxies
            .iter()
            .find(|p| p.proxy.contains(&pod))
            .unwrap_or_else(|| panic!("{pod} connected: {z:?}"));
        for t in ["CDS", "EDS", "LDS", "RDS"] {
            assert_eq!(
                p.types[t].state,
                "SYNCED",
                "{} {t}: {:?}",
                bin.display(),
                p.types[t]
            );
        }
        let listeners = reqwest::get(format!("http://{admin}/listeners"))
            .await
            .expect("listeners")
            .text()
            .await
            .expect("text");
        for l in ["virtualOutbound", "virtualInbound", "strait-health"] {
            assert!(listeners.contains(l), "{l} missing:\n{listeners}");
        }

        // The kubelet's readiness probe and Prometheus reach Envoy without its admin port.
        let health = bound_port(admin, "strait-health")
            .await
            .expect("health port");
        let stats = bound_port(admin, "strait-stats").await.expect("stats port");
        assert_eq!(
            status_of(&format!("http://{lo}:{health}/healthz/ready")).await,
            Ok(200)
        );
        assert_eq!(
            status_of(&format!("http://{lo}:{health}/stats")).await,
            Ok(404)
        );
        assert_eq!(
            status_of(&format!("http://{lo}:{stats}/stats/prometheus")).await,
            Ok(200)
        );

        // The preStop hook's request: Envoy drains its inbound listeners (connections are
        // told to close; after --drain-time-s they stop) and keeps running, outbound and
        // readiness listeners included, until the kubelet stops it.
        let code = strait::drain::admin_request(admin, "POST", strait::drain::DRAIN_PATH)
            .expect("drain request");
        assert_eq!(code, 200);
        eventually(
            "inbound listeners stopped after the drain time",
            WAIT,
            || async {
                let stats = http_client()
                    .get(format!(
                        "http://{admin}/stats?filter=listener_manager.listener_stopped"
                    ))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                if stats.trim() == "listener_manager.listener_stopped: 0" || stats.trim().is_empty()
                {
                    Err(stats)
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(
            status_of(&format!("http://{lo}:{health}/healthz/ready")).await,
            Ok(200)
        );
        assert!(
            strait
                .syncz()
                .proxies
                .iter()
                .any(|p| p.proxy.contains(&pod))
        );
        drop(envoy);
        eventually("proxy gone", WAIT, || async {
            if strait
                .syncz()
                .proxies
                .iter()
                .any(|p| p.proxy.contains(&pod))
            {
                Err("still connected".into())
            } else {
                Ok(())
            }
        })
        .await;
    }
}

// ---- The commands, through the real binary ----

#[test]
fn inject_and_init_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("app.yaml");
    std::fs::write(
        &input,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec:\n      containers: [{name: web, image: nginx}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
    )
    .expect("write");
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
         data:\n  mesh: |\n    defaultConfig:\n      holdApplicationUntilProxyStarts: true\n",
    )
    .expect("write");
    let out = Command::new(strait_bin())
        .args(["inject", "-f"])
        .arg(&input)
        .args([
            "--revision",
            "canary",
            "--tag",
            "stable",
            "--native-sidecars",
            "false",
            "--mesh-config",
        ])
        .arg(&mesh)
        .output()
        .expect("strait inject runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("injected: Deployment/shop/web"), "{stderr}");
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("YAML"))
        .collect();
    assert_eq!(docs.len(), 2);
    let template = &docs[0]["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["name"], "istio-proxy",
        "held: Envoy first"
    );
    assert_eq!(template["metadata"]["labels"]["strait.io/tag"], "stable");
    let args = template["spec"]["initContainers"][0]["args"].to_string();
    assert!(
        args.contains("strait-tag-stable.istio-system.svc:15010"),
        "{args}"
    );
    assert_eq!(docs[1]["kind"], "Service");

    // From standard input to a file.
    let output = dir.path().join("out.yaml");
    let mut child = Command::new(strait_bin())
        .args(["inject", "-f", "-", "-o"])
        .arg(&output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strait inject runs");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n")
            .expect("write stdin");
    }
    assert!(child.wait().expect("exits").success());
    let text = std::fs::read_to_string(&output).expect("output file");
    assert!(
        text.contains("istio-proxy") && text.contains("strait-init"),
        "{text}"
    );

    // What the init container would do, printed.
    let podinfo = tempfile::tempdir().expect("podinfo");
    std::fs::write(podinfo.path().join("labels"), "app=\"web\"\n").expect("labels");
    let out = Command::new(strait_bin())
        .args([
            "init",
            "--dry-run",
            "--revision",
            "canary",
            "--exclude-outbound-ports",
            "5432",
        ])
        .arg("--podinfo")
        .arg(podinfo.path())
        .env("POD_NAME", "web-1")
        .env("POD_NAMESPACE", "shop")
        .env("INSTANCE_IP", "10.1.2.3")
        .output()
        .expect("strait init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "# iptables-restore input",
        "-A STRAIT_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A STRAIT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "\"id\": \"sidecar~10.1.2.3~web-1.shop~shop.svc.cluster.local\"",
        "\"STRAIT_REVISION\": \"canary\"",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    // Bad arguments are refused with a reason.
    let out = Command::new(strait_bin())
        .args(["init", "--dry-run", "--inbound-ports", "http"])
        .output()
        .expect("strait init runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inbound-ports"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_cluster_writes_its_ca_and_injects() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n",
    )
    .expect("write");
    let lo = IpAddr::from([127, 0, 0, 1]);
    let (xds, debug, webhook) = (
        free_port(lo).port(),
        free_port(lo).port(),
        free_port(lo).port(),
    );
    let ca = dir.path().join("webhook-ca.pem");
    let _server = Killed(
        Command::new(strait_bin())
            .args(["serve", "--config-dir"])
            .arg(dir.path())
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--debug-addr", &format!("127.0.0.1:{debug}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .arg("--webhook-ca-out")
            .arg(&ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strait serve starts"),
    );
    eventually("ready", WAIT, || async {
        match status_of(&format!("http://127.0.0.1:{debug}/ready")).await? {
            200 if ca.exists() => Ok(()),
            c => Err(format!("ready {c}, CA file {}", ca.exists())),
        }
    })
    .await;
    let bundle = std::fs::read_to_string(&ca).expect("CA file");
    let addr = SocketAddr::from(([127, 0, 0, 1], webhook));
    let client = https_client(&bundle, "localhost", addr);
    let resp = client
        .post(format!("https://localhost:{webhook}/inject"))
        .json(&mk_review("cli", "shop", &mk_pod()))
        .send()
        .await
        .expect("HTTPS");
    let r: Value = resp.json().await.expect("JSON");
    assert_eq!(r["response"]["allowed"], true, "{r}");
    let injected = patch::apply(&mk_pod(), &decode_patch(&r)).expect("applies");
    // Without a cluster, native sidecars are assumed (every maintained Kubernetes has them).
    assert_eq!(
        injected["spec"]["initContainers"][1]["restartPolicy"],
        "Always"
    );
    assert!(validate(&injected).is_empty());
}

// ---- A real cluster ----

/// Against a real cluster (`cargo xtask e2e` with `STRAIT_E2E_KUBECONFIG`): strait runs on
/// this machine, so the API server must be able to reach it; `STRAIT_E2E_WEBHOOK_HOST` is
/// this machine's address as the API server sees it (for kind: the gateway of the `kind`
/// Docker network, often 172.18.0.1).
mod cluster {
    use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
    use kube::core::ApiResource;

    use super::*;

    fn env(name: &str) -> String {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set (see the comment on this module)"))
    }

    fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    struct Cleanup {
        client: kube::Client,
        namespace: String,
        webhook: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (client, ns, wh) = (
                self.client.clone(),
                self.namespace.clone(),
                self.webhook.clone(),
            );
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move {
                    let dp = DeleteParams::default();
                    let mwc: Api<DynamicObject> = Api::all_with(
                        client.clone(),
                        &ar(
                            "admissionregistration.k8s.io/v1",
                            "MutatingWebhookConfiguration",
                            "mutatingwebhookconfigurations",
                        ),
                    );
                    let _ = mwc.delete(&wh, &dp).await;
                    let nss: Api<DynamicObject> =
                        Api::all_with(client, &ar("v1", "Namespace", "namespaces"));
                    let _ = nss.delete(&ns, &dp).await;
                });
            });
        }
    }

    fn tracing_log(e: &kube::Error) {
        eprintln!("pod creation refused, retrying: {e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs cluster"]
    async fn the_api_server_calls_the_webhook_and_the_pod_carries_the_sidecar() {
        strait_e2e::init_logs();
        let kubeconfig = PathBuf::from(env("STRAIT_E2E_KUBECONFIG"));
        let host = env("STRAIT_E2E_WEBHOOK_HOST");
        let clusters = KubeCluster::from_args(
            false,
            &[kubeconfig.display().to_string()],
            strait_sources::kube::DEFAULT_CLUSTER_ID,
        )
        .expect("cluster");
        let client = strait_sources::kube::client(clusters.first())
            .await
            .expect("client");
        let id = std::process::id();
        let revision = format!("e2e{id}");
        let ns = format!("strait-inject-e2e-{id}");
        let webhook_name = format!("strait-sidecar-injector-{revision}");
        let _cleanup = Cleanup {
            client: client.clone(),
            namespace: ns.clone(),
            webhook: webhook_name.clone(),
        };
        let pp = PostParams::default();
        let nss: Api<DynamicObject> =
            Api::all_with(client.clone(), &ar("v1", "Namespace", "namespaces"));
        nss.create(
            &pp,
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"istio.io/rev": revision}}}))
            .expect("namespace"),
        )
        .await
        .expect("namespace created");

        // strait on this machine: the test namespace is its system namespace (CA Secret).
        let mut cfg = ServeConfig::local("");
        cfg.kube_clusters = clusters;
        cfg.revision = revision.clone();
        cfg.system_namespace = ns.clone();
        cfg.webhook = Some(WebhookConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            extra_sans: vec![host.clone()],
            ..WebhookConfig::local()
        });
        let server = start(cfg).await.expect("strait starts");
        let port = server.webhook.as_ref().expect("webhook").addr.port();

        // The webhook configuration, without caBundle: strait fills it in.
        let mwcs: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ar(
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration",
                "mutatingwebhookconfigurations",
            ),
        );
        mwcs.create(
            &pp,
            &serde_json::from_value(json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": webhook_name, "labels": {"app": "strait", "istio.io/rev": revision}},
                "webhooks": [{
                    "name": "rev.namespace.sidecar-injector.istio.io",
                    "clientConfig": {"url": format!("https://{host}:{port}/inject")},
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                    "namespaceSelector": {"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": [revision]}]},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 10,
                }],
            }))
            .expect("webhook configuration"),
        )
        .await
        .expect("webhook configuration created");

        let pods: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &ar("v1", "Pod", "pods"));
        let pod: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]},
        }))
        .expect("pod");
        // Until strait has published its CA, the API server cannot call it (failurePolicy
        // Fail refuses the pod): retry for a bounded time.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let created = loop {
            match pods.create(&pp, &pod).await {
                Ok(p) => break p,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing_log(&e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("the pod was not created through the webhook: {e}"),
            }
        };
        let created = serde_json::to_value(created).expect("json");
        let names: Vec<&str> = ["initContainers", "containers"]
            .iter()
            .flat_map(|l| created["spec"][*l].as_array().into_iter().flatten())
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(
            names.contains(&"strait-init") && names.contains(&"istio-proxy"),
            "{names:?}"
        );
        assert_eq!(
            created["metadata"]["labels"]["strait.io/rev"],
            revision.as_str()
        );
        assert!(created["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
        drop(server);
    }
}
