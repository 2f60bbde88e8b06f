//! Ingress through a stock Envoy gateway (`router~…` node, labelled `istio: ingressgateway`):
//! Gateway servers become listeners on the router's loopback IP at the server's port, and
//! VirtualServices bound to the Gateway route what they admit. TLS certificates come from
//! Kubernetes Secrets (`credentialName`) in the gateway's namespace, over SDS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use strait_e2e::mesh::{Endpoint, endpoints, gateway, service, tls_secret, virtual_service};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const NS: &str = "e2e";
const GW_NS: &str = "istio-system";
const HTTP_PORT: u16 = 18080;
const HTTPS_PORT: u16 = 18443;
const PASSTHROUGH_PORT: u16 = 18444;
const WAIT: Duration = Duration::from_secs(10);

/// strait and a gateway Envoy whose listeners bind `bind`.
struct Ingress {
    strait: Strait,
    envoy: Envoy,
    bind: IpAddr,
}

impl Ingress {
    /// Starts strait with `manifest` and a gateway proxy `gw-0` in istio-system.
    async fn start(manifest: &str) -> Ingress {
        Self::start_files(&[("mesh.yaml", manifest)]).await
    }

    /// Starts strait with these files and a gateway proxy `gw-0` in istio-system.
    async fn start_files(files: &[(&str, &str)]) -> Ingress {
        let strait = Strait::start_with(|dir| {
            for (name, text) in files {
                std::fs::write(dir.join(name), text).expect("write manifest");
            }
        })
        .await;
        let bind: IpAddr = loopback_ip().into();
        let envoy = Envoy::start(
            "gateway",
            strait.router(GW_NS, "gw-0", bind, &[("istio", "ingressgateway")]),
        )
        .await;
        envoy.wait_live().await;
        Ingress {
            strait,
            envoy,
            bind,
        }
    }

    /// A plain HTTP GET through the gateway's HTTP port.
    async fn get(
        &self,
        host: &str,
        path: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value), String> {
        let r = http_client()
            .get(format!("http://{}:{HTTP_PORT}{path}", self.bind))
            .header("host", host)
            .send()
            .await
            .map_err(|e| format!("GET {host}{path}: {e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json().await.unwrap_or(Value::Null);
        Ok((status, headers, body))
    }

    /// The upstream that answered (`HTTP <status>` when not 200).
    async fn server(&self, host: &str, path: &str) -> Result<String, String> {
        let (status, _, body) = self.get(host, path).await?;
        Ok(match (status, body["server"].as_str()) {
            (200, Some(s)) => s.to_string(),
            _ => format!("HTTP {status}"),
        })
    }

    /// Waits until `host` + `path` is answered by `want`.
    async fn expect(&self, host: &str, path: &str, want: &str) {
        eventually(&format!("{host}{path} → {want}"), WAIT, || async {
            let got = self.server(host, path).await?;
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got}\n{}", self.dump().await))
            }
        })
        .await;
    }

    /// An HTTPS client for `host` (resolved to the gateway) trusting only `ca` (PEM), with
    /// an optional client identity (certificate and key PEM).
    fn https_client(
        &self,
        host: &str,
        port: u16,
        ca: &str,
        identity: Option<String>,
    ) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM"))
            .resolve(host, SocketAddr::new(self.bind, port))
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10));
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).expect("identity PEM"));
        }
        b.build().expect("HTTPS client")
    }

    /// Envoy's listeners, routes and secrets (without key material), for failure messages.
    async fn dump(&self) -> String {
        let dump = self.envoy.config_dump().await;
        let parts: Vec<&Value> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["@type"].as_str().is_some_and(|t| {
                    t.ends_with("ListenersConfigDump") || t.ends_with("RoutesConfigDump")
                })
            })
            .collect();
        serde_json::to_string_pretty(&parts).unwrap_or_default()
    }

    async fn assert_clean(&self) {
        self.envoy.assert_no_rejections().await;
        self.strait.assert_no_nacks();
    }
}

/// An HTTPS GET; the answering upstream's name (or `HTTP <status>`) and the certificate the
/// gateway presented (DER).
async fn https_get(
    client: &reqwest::Client,
    host: &str,
    port: u16,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    let r = client
        .get(format!("https://{host}:{port}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET https://{host}:{port}{path}: {}", error_chain(&e)))?;
    let cert = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let who = match (status, body["server"].as_str()) {
        (200, Some(s)) => s.to_string(),
        _ => format!("HTTP {status}"),
    };
    Ok((who, cert))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

// --- Certificates ----------------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A certificate signed by a [`Ca`], with its key.
struct Leaf {
    pem: String,
    key_pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Leaf {
    /// Certificate and key in one PEM, as reqwest's `Identity` reads it.
    fn identity(&self) -> String {
        format!("{}{}", self.pem, self.key_pem)
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca { params, key, pem }
    }

    /// A certificate for `names` (DNS SANs) with common name `cn`.
    fn issue(&self, cn: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

// --- Manifests -------------------------------------------------------------------------------

/// A service on port 8080 with one endpoint.
fn http_service(name: &str, u: &Upstream) -> String {
    format!(
        "---\n{}{}",
        service(NS, name, 8080, "http"),
        endpoints(NS, name, "http", &[Endpoint::ready(u)])
    )
}

/// A VirtualService in the services' namespace bound to the gateway `istio-system/gw`.
fn gw_vs(name: &str, hosts: &[&str], http: Value) -> String {
    virtual_service(
        NS,
        name,
        &json!({"hosts": hosts, "gateways": [format!("{GW_NS}/gw")], "http": http}),
    )
}

fn route_to(service: &str) -> Value {
    json!([{"route": [{"destination": {"host": service, "port": {"number": 8080}}}]}])
}

/// The Gateway `istio-system/gw` selecting the test's gateway proxy.
fn gw(servers: Value) -> String {
    gateway(
        GW_NS,
        "gw",
        &json!({"selector": {"istio": "ingressgateway"}, "servers": servers}),
    )
}

fn https_server(host: &str, mode: &str, credential: &str) -> Value {
    json!({
        "port": {"number": HTTPS_PORT, "name": "https", "protocol": "HTTPS"},
        "hosts": [host],
        "tls": {"mode": mode, "credentialName": credential},
    })
}

// --- 16. Host and path routing ---------------------------------------------------------------

/// Hosts admitted by the Gateway are routed by Host and path to their services; a host the
/// Gateway does not admit gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path() {
    let a = Upstream::start("a-0", loopback_ip().into()).await;
    let b = Upstream::start("b-0", loopback_ip().into()).await;
    let manifest = format!(
        "{}{}{}{}{}{}",
        http_service("a", &a),
        http_service("b", &b),
        gw(json!([{
            "port": {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"},
            "hosts": ["a.example.com", "b.example.com"],
        }])),
        gw_vs("a", &["a.example.com"], route_to("a")),
        gw_vs(
            "b",
            &["b.example.com"],
            json!([
                {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "b", "port": {"number": 8080}}}]},
                {"route": [{"destination": {"host": "a", "port": {"number": 8080}}}]},
            ])
        ),
        // Bound to the gateway, but for a host no server admits.
        gw_vs("c", &["c.example.com"], route_to("a")),
    );
    let gw = Ingress::start(&manifest).await;
    gw.expect("a.example.com", "/", "a-0").await;
    gw.expect("a.example.com", "/api", "a-0").await;
    gw.expect("b.example.com", "/api/x", "b-0").await;
    gw.expect("b.example.com", "/other", "a-0").await;
    gw.expect("a.example.com:18080", "/", "a-0").await;
    for host in ["c.example.com", "unknown.example.com"] {
        let got = gw.server(host, "/").await.expect("request");
        assert_eq!(
            got,
            "HTTP 404",
            "{host} is not admitted\n{}",
            gw.dump().await
        );
    }
    gw.assert_clean().await;
}

// --- 17. HTTPS redirect ----------------------------------------------------------------------

/// `tls.httpsRedirect` on an HTTP server answers 301 to the https:// URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect() {
    let a = Upstream::start("a-0", loopback_ip().into()).await;
    let manifest = format!(
        "{}{}{}",
        http_service("a", &a),
        gw(json!([{
            "port": {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"},
            "hosts": ["secure.example.com"],
            "tls": {"httpsRedirect": true},
        }])),
        gw_vs("a", &["secure.example.com"], route_to("a")),
    );
    let gw = Ingress::start(&manifest).await;
    eventually("redirected to https", WAIT, || async {
        let (status, headers, _) = gw.get("secure.example.com", "/path?q=1").await?;
        let loc = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if status == 301
            && loc.starts_with("https://secure.example.com")
            && loc.ends_with("/path?q=1")
        {
            Ok(())
        } else {
            Err(format!(
                "HTTP {status} Location {loc:?}\n{}",
                gw.dump().await
            ))
        }
    })
    .await;
    assert_eq!(a.hits(), 0, "redirected requests never reach the backend");
    gw.assert_clean().await;
}

// --- 18. TLS termination ---------------------------------------------------------------------

const SECURE: &str = "secure.example.com";

async fn tls_gateway(mode: &str, ca: &Ca, leaf: &Leaf) -> (Upstream, Ingress) {
    let a = Upstream::start("a-0", loopback_ip().into()).await;
    let manifest = format!(
        "{}{}{}",
        http_service("a", &a),
        gw(json!([https_server(SECURE, mode, "gw-cert")])),
        gw_vs("a", &[SECURE], route_to("a")),
    );
    let secret = tls_secret(GW_NS, "gw-cert", &leaf.pem, &leaf.key_pem, Some(&ca.pem));
    let ingress = Ingress::start_files(&[("mesh.yaml", &manifest), ("secret.yaml", &secret)]).await;
    (a, ingress)
}

/// `mode: SIMPLE` with a `credentialName`: a client trusting the CA gets through over HTTPS
/// and sees the Secret's certificate; a client trusting another CA fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination() {
    let ca = Ca::new("strait test CA");
    let leaf = ca.issue(SECURE, &[SECURE]);
    let (_a, gw) = tls_gateway("SIMPLE", &ca, &leaf).await;
    let trusting = gw.https_client(SECURE, HTTPS_PORT, &ca.pem, None);
    eventually("HTTPS through the gateway", WAIT, || async {
        match https_get(&trusting, SECURE, HTTPS_PORT, "/").await {
            Ok((who, cert)) if who == "a-0" && cert == leaf.der => Ok(()),
            Ok((who, _)) => Err(format!("answered by {who}\n{}", gw.dump().await)),
            Err(e) => Err(format!("{e}\n{}", gw.dump().await)),
        }
    })
    .await;
    let other = Ca::new("another CA");
    let untrusting = gw.https_client(SECURE, HTTPS_PORT, &other.pem, None);
    let r = https_get(&untrusting, SECURE, HTTPS_PORT, "/").await;
    assert!(
        r.is_err(),
        "a client not trusting the CA must fail the handshake: {r:?}"
    );
    gw.assert_clean().await;
}

// --- 19. Certificate rotation ----------------------------------------------------------------

/// Rewriting the Secret rotates the certificate: new handshakes present the new one, with no
/// Envoy restart and no listener change or drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation() {
    let ca = Ca::new("strait test CA");
    let old = ca.issue("secure-1", &[SECURE]);
    let (_a, gw) = tls_gateway("SIMPLE", &ca, &old).await;
    let client = gw.https_client(SECURE, HTTPS_PORT, &ca.pem, None);
    eventually("old certificate served", WAIT, || async {
        match https_get(&client, SECURE, HTTPS_PORT, "/").await {
            Ok((who, cert)) if who == "a-0" && cert == old.der => Ok(()),
            other => Err(format!("{:?}", other.map(|(w, _)| w))),
        }
    })
    .await;
    let pid = gw.envoy.pid();
    let modified = gw.envoy.stat("listener_manager.listener_modified").await;

    // A new CA and certificate: only clients trusting the new CA get through afterwards.
    let new_ca = Ca::new("strait test CA 2");
    let new = new_ca.issue("secure-2", &[SECURE]);
    gw.strait.write(
        "secret.yaml",
        &tls_secret(GW_NS, "gw-cert", &new.pem, &new.key_pem, Some(&new_ca.pem)),
    );
    let new_client = gw.https_client(SECURE, HTTPS_PORT, &new_ca.pem, None);
    eventually("new certificate served", WAIT, || async {
        match https_get(&new_client, SECURE, HTTPS_PORT, "/").await {
            Ok((who, cert)) if who == "a-0" && cert == new.der => Ok(()),
            Ok((who, cert)) => Err(format!(
                "{who}, presented the {} certificate",
                if cert == old.der { "old" } else { "unknown" }
            )),
            Err(e) => Err(e),
        }
    })
    .await;
    let r = https_get(&client, SECURE, HTTPS_PORT, "/").await;
    assert!(
        r.is_err(),
        "the old CA no longer verifies the gateway: {r:?}"
    );
    assert_eq!(gw.envoy.pid(), pid, "Envoy was not restarted");
    assert_eq!(
        gw.envoy.stat("listener_manager.listener_modified").await,
        modified,
        "the listener was not modified (only its secret)"
    );
    assert_eq!(
        gw.envoy
            .stat("listener_manager.total_listeners_draining")
            .await,
        0,
        "no listener drains"
    );
    gw.assert_clean().await;
}

// --- 20. Mutual TLS --------------------------------------------------------------------------

/// `mode: MUTUAL`: a client without a certificate is refused; one with a certificate signed
/// by the Secret's `ca.crt` gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let ca = Ca::new("strait test CA");
    let leaf = ca.issue(SECURE, &[SECURE]);
    let client_cert = ca.issue("client", &["client.example.com"]);
    let (_a, gw) = tls_gateway("MUTUAL", &ca, &leaf).await;
    let with_cert = gw.https_client(SECURE, HTTPS_PORT, &ca.pem, Some(client_cert.identity()));
    eventually("mTLS with a client certificate", WAIT, || async {
        match https_get(&with_cert, SECURE, HTTPS_PORT, "/").await {
            Ok((who, _)) if who == "a-0" => Ok(()),
            Ok((who, _)) => Err(format!("answered by {who}\n{}", gw.dump().await)),
            Err(e) => Err(format!("{e}\n{}", gw.dump().await)),
        }
    })
    .await;
    let without = gw.https_client(SECURE, HTTPS_PORT, &ca.pem, None);
    let r = https_get(&without, SECURE, HTTPS_PORT, "/").await;
    assert!(
        r.is_err(),
        "a client without a certificate is refused: {r:?}"
    );
    // A certificate from another CA is refused too.
    let stranger = Ca::new("another CA").issue("client", &["client.example.com"]);
    let wrong = gw.https_client(SECURE, HTTPS_PORT, &ca.pem, Some(stranger.identity()));
    let r = https_get(&wrong, SECURE, HTTPS_PORT, "/").await;
    assert!(
        r.is_err(),
        "a client certificate from another CA is refused: {r:?}"
    );
    gw.assert_clean().await;
}

// --- 21. TLS passthrough ---------------------------------------------------------------------

/// A TLS upstream terminating TLS itself: answers any HTTP/1.1 request with its name and the
/// SNI it was asked for, then closes.
struct TlsUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_upstream(name: &'static str, leaf: &Leaf) -> TlsUpstream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.clone().into()),
        )
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(loopback_ip().into(), 0))
        .await
        .expect("bind TLS upstream");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls
                    .get_ref()
                    .1
                    .server_name()
                    .unwrap_or_default()
                    .to_string();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = json!({"server": name, "sni": sni}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsUpstream { addr, task }
}

/// A service whose one endpoint is `addr` (a pod named after the service).
fn service_at(name: &str, port: u16, port_name: &str, addr: SocketAddr) -> String {
    let ip = addr.ip();
    let target = addr.port();
    format!(
        "---\n{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-0, namespace: {NS}, labels: {{app: {name}}}}}\n\
         spec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-0, namespace: {NS}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: {port_name}, port: {target}, protocol: TCP}}]\n\
         endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {name}-0, namespace: {NS}}}\n",
        service(NS, name, port, port_name)
    )
}

/// `mode: PASSTHROUGH`: the gateway routes by SNI without terminating TLS; the client sees
/// the backend's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough() {
    const HOST: &str = "pass.example.com";
    let ca = Ca::new("backend CA");
    let leaf = ca.issue(HOST, &[HOST]);
    let backend = tls_upstream("tls-backend", &leaf).await;
    let manifest = format!(
        "{}{}{}",
        service_at("tls-backend", 8443, "tls", backend.addr),
        gw(json!([{
            "port": {"number": PASSTHROUGH_PORT, "name": "tls", "protocol": "TLS"},
            "hosts": [HOST],
            "tls": {"mode": "PASSTHROUGH"},
        }])),
        virtual_service(
            NS,
            "pass",
            &json!({
                "hosts": [HOST],
                "gateways": [format!("{GW_NS}/gw")],
                "tls": [{"match": [{"port": PASSTHROUGH_PORT, "sniHosts": [HOST]}],
                         "route": [{"destination": {"host": "tls-backend", "port": {"number": 8443}}}]}],
            }),
        ),
    );
    let gw = Ingress::start(&manifest).await;
    let client = gw.https_client(HOST, PASSTHROUGH_PORT, &ca.pem, None);
    eventually("TLS passed through to the backend", WAIT, || async {
        match https_get(&client, HOST, PASSTHROUGH_PORT, "/").await {
            Ok((who, cert)) if who == "tls-backend" && cert == leaf.der => Ok(()),
            Ok((who, _)) => Err(format!("answered by {who}\n{}", gw.dump().await)),
            Err(e) => Err(format!("{e}\n{}", gw.dump().await)),
        }
    })
    .await;
    gw.assert_clean().await;
}
