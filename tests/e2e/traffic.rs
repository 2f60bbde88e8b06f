//! Traffic management through a stock Envoy sidecar, as Istio users check it by hand: each
//! test writes Services, endpoints, DestinationRules and VirtualServices into strait's
//! directory, sends real HTTP requests through Envoy (no traffic capture: the sidecar's
//! outbound listeners bind a loopback IP of the test's own), and asserts on what came back
//! and on what the upstream servers saw.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use strait_e2e::mesh::{Endpoint, destination_rule, endpoints, service, virtual_service};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};

const NS: &str = "e2e";
const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);

/// strait with some manifests, and a sidecar Envoy whose outbound listeners bind `bind`.
struct Mesh {
    strait: Strait,
    envoy: Envoy,
    bind: IpAddr,
    client: reqwest::Client,
}

/// One response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    /// The upstream's JSON echo (`Null` when the body is not JSON, e.g. Envoy's own answers).
    body: Value,
    elapsed: Duration,
}

impl Reply {
    /// The upstream that answered 200, else `HTTP <status>`.
    fn server(&self) -> String {
        match (self.status, self.body["server"].as_str()) {
            (200, Some(s)) => s.to_string(),
            _ => format!("HTTP {}", self.status),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Mesh {
    /// Starts strait with `manifest` as its only file, and a sidecar Envoy.
    async fn start(manifest: &str) -> Mesh {
        Self::start_files(&[("mesh.yaml", manifest)]).await
    }

    /// Starts strait with these files, and a sidecar Envoy.
    async fn start_files(files: &[(&str, &str)]) -> Mesh {
        let strait = Strait::start_with(|dir| {
            for (name, text) in files {
                std::fs::write(dir.join(name), text).expect("write manifest");
            }
        })
        .await;
        let bind: IpAddr = loopback_ip().into();
        let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, false)).await;
        envoy.wait_live().await;
        Mesh {
            strait,
            envoy,
            bind,
            client: http_client(),
        }
    }

    /// Replaces a file of the config directory, and waits until Envoy has acknowledged a new
    /// version of `ty` (`RDS` for HTTP routes, `LDS` for TCP routes): from then on requests
    /// follow the edit.
    async fn edit(&self, file: &str, yaml: &str, ty: &str) {
        let versions = || {
            self.strait
                .syncz()
                .proxies
                .first()
                .and_then(|p| p.types.get(ty))
                .map(|t| (t.sent_version.clone(), t.acked_version.clone()))
        };
        let before = versions().and_then(|(_, acked)| acked);
        self.strait.write(file, yaml);
        eventually(
            &format!("{ty} edit of {file} acknowledged"),
            WAIT,
            || async {
                match versions() {
                    Some((sent, acked)) if acked.is_some() && acked != before && sent == acked => {
                        Ok(())
                    }
                    v => Err(format!("(sent, acked) {v:?}, before {before:?}")),
                }
            },
        )
        .await;
    }

    /// Sends one request for `host` to the sidecar's listener on `port`.
    async fn request_on(
        &self,
        client: &reqwest::Client,
        method: Method,
        port: u16,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let started = Instant::now();
        let mut req = client
            .request(method, format!("http://{}:{port}{path}", self.bind))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("request {host}{path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("body of {host}{path}: {e}"))?;
        Ok(Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            elapsed: started.elapsed(),
        })
    }

    /// GET `path` for `host` on the HTTP port, with extra request headers.
    async fn get_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.request_on(&self.client, Method::GET, PORT, host, path, headers)
            .await
    }

    /// GET `path` for `host` on the HTTP port.
    async fn get(&self, host: &str, path: &str) -> Result<Reply, String> {
        self.get_with(host, path, &[]).await
    }

    /// Sends `n` GETs one after the other and counts who answered (see [`Reply::server`]).
    async fn tally(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> Result<BTreeMap<String, usize>, String> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let r = self.get_with(host, path, headers).await?;
            *seen.entry(r.server()).or_default() += 1;
        }
        Ok(seen)
    }

    /// Waits until `n` requests for `host` + `path` (with `headers`) are answered by exactly
    /// the servers in `expected` (each at least once).
    async fn expect_servers(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        expected: &[&str],
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self
                .tally(host, path, headers, expected.len().max(2) * 8)
                .await;
            let last = match seen {
                Ok(seen) if seen.keys().map(String::as_str).eq(expected.iter().copied()) => {
                    return;
                }
                Ok(seen) => format!("saw {seen:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{host}{path} {headers:?} served by {expected:?}: not true after {WAIT:?}: \
                     {last}\nroutes: {}\nclusters: {}\nendpoints: {}",
                    self.dump_routes().await,
                    self.dump_clusters("outbound").await,
                    self.endpoints().await,
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of every test: Envoy rejected nothing and strait saw no NACK.
    async fn assert_clean(&self) {
        self.envoy.assert_no_rejections().await;
        self.strait.assert_no_nacks();
    }

    /// The route configurations in Envoy's config dump, for failure messages.
    async fn dump_routes(&self) -> String {
        let dump = self.envoy.config_dump().await;
        let routes: Vec<&Value> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("RoutesConfigDump"))
            })
            .collect();
        serde_json::to_string_pretty(&routes).unwrap_or_default()
    }

    /// Envoy's view of the endpoints of outbound clusters (`/clusters`: address and health).
    async fn endpoints(&self) -> String {
        self.envoy
            .admin_get("/clusters")
            .await
            .lines()
            .filter(|l| l.starts_with("outbound") && l.contains("::health_flags::"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The dynamic clusters in Envoy's config dump whose names contain `part`.
    async fn dump_clusters(&self, part: &str) -> String {
        let dump = self.envoy.config_dump().await;
        let clusters: Vec<&Value> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["dynamic_active_clusters"].as_array())
            .flatten()
            .filter(|c| {
                c["cluster"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains(part))
            })
            .collect();
        serde_json::to_string_pretty(&clusters).unwrap_or_default()
    }
}

/// A service `name` on the HTTP port with one endpoint per upstream, labelled
/// `version: <version>`.
fn versioned_service(name: &str, eps: &[(&Upstream, &'static str)]) -> String {
    let labels: Vec<[(&str, &str); 1]> = eps.iter().map(|(_, v)| [("version", *v)]).collect();
    let eps: Vec<Endpoint<'_>> = eps
        .iter()
        .zip(&labels)
        .map(|((u, _), l)| Endpoint {
            upstream: u,
            labels: l,
            ready: true,
        })
        .collect();
    // Each document starts with `---`, so these concatenate.
    format!(
        "---\n{}{}",
        service(NS, name, PORT, "http"),
        endpoints(NS, name, "http", &eps)
    )
}

/// A service `name` on the HTTP port with one unlabelled endpoint per upstream.
fn plain_service(name: &str, ups: &[&Upstream]) -> String {
    let eps: Vec<Endpoint<'_>> = ups.iter().map(|u| Endpoint::ready(u)).collect();
    // Each document starts with `---`, so these concatenate.
    format!(
        "---\n{}{}",
        service(NS, name, PORT, "http"),
        endpoints(NS, name, "http", &eps)
    )
}

/// A DestinationRule for `host` with subsets v1 and v2 (by the `version` label).
fn subsets_v1_v2(host: &str) -> String {
    destination_rule(
        NS,
        host,
        &json!({
            "host": host,
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        }),
    )
}

async fn start_upstreams(names: &[&str]) -> Vec<Upstream> {
    let mut out = Vec::new();
    for n in names {
        out.push(Upstream::start(n, loopback_ip().into()).await);
    }
    out
}

fn share(seen: &BTreeMap<String, usize>, server: &str) -> f64 {
    let total: usize = seen.values().sum();
    seen.get(server).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

// --- 1. Weighted canary ----------------------------------------------------------------------

fn canary_vs(w1: u32, w2: u32) -> String {
    virtual_service(
        NS,
        "reviews",
        &json!({
            "hosts": ["reviews"],
            "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": w1},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": w2},
            ]}],
        }),
    )
}

/// A canary rollout 100/0 → 50/50 → 0/100 by editing the VirtualService, with no Envoy
/// restart: the all-or-nothing steps are exact, the even split is even within 40–60%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_canary_steps() {
    let u = start_upstreams(&["reviews-v1", "reviews-v2"]).await;
    let mesh = Mesh::start_files(&[
        (
            "mesh.yaml",
            &format!(
                "{}{}",
                versioned_service("reviews", &[(&u[0], "v1"), (&u[1], "v2")]),
                subsets_v1_v2("reviews"),
            ),
        ),
        ("vs.yaml", &canary_vs(100, 0)),
    ])
    .await;
    let pid = mesh.envoy.pid();
    const N: usize = 300;

    mesh.expect_servers("reviews", "/", &[], &["reviews-v1"])
        .await;
    let seen = mesh.tally("reviews", "/", &[], N).await.expect("requests");
    assert_eq!(
        seen.get("reviews-v1"),
        Some(&N),
        "100/0: every request goes to v1; saw {seen:?}\n{}",
        mesh.dump_routes().await
    );

    mesh.edit("vs.yaml", &canary_vs(50, 50), "RDS").await;
    mesh.expect_servers("reviews", "/", &[], &["reviews-v1", "reviews-v2"])
        .await;
    let seen = mesh
        .tally("reviews", "/", &[], 400)
        .await
        .expect("requests");
    for v in ["reviews-v1", "reviews-v2"] {
        let s = share(&seen, v);
        assert!(
            (0.40..=0.60).contains(&s),
            "50/50: {v} should get 40-60% of 400 requests, got {:.1}%: {seen:?}",
            s * 100.0
        );
    }
    assert_eq!(
        seen.values().sum::<usize>(),
        400,
        "only v1 and v2: {seen:?}"
    );

    mesh.edit("vs.yaml", &canary_vs(0, 100), "RDS").await;
    mesh.expect_servers("reviews", "/", &[], &["reviews-v2"])
        .await;
    let seen = mesh.tally("reviews", "/", &[], N).await.expect("requests");
    assert_eq!(
        seen.get("reviews-v2"),
        Some(&N),
        "0/100: every request goes to v2; saw {seen:?}\n{}",
        mesh.dump_routes().await
    );

    assert_eq!(mesh.envoy.pid(), pid, "Envoy was never restarted");
    mesh.assert_clean().await;
}

// --- 2. Request matching ---------------------------------------------------------------------

/// Header, URI (exact, prefix, regex) and query parameter matches send requests to v2;
/// everything else falls through to the default route (v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_uri_and_query_matches() {
    let u = start_upstreams(&["reviews-v1", "reviews-v2"]).await;
    let to = |subset: &str| json!([{"destination": {"host": "reviews", "subset": subset}}]);
    let vs = virtual_service(
        NS,
        "reviews",
        &json!({
            "hosts": ["reviews"],
            "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": to("v2")},
                {"match": [{"uri": {"exact": "/exact"}}], "route": to("v2")},
                {"match": [{"uri": {"prefix": "/pre"}}], "route": to("v2")},
                {"match": [{"uri": {"regex": "/re/[0-9]+"}}], "route": to("v2")},
                {"match": [{"queryParams": {"canary": {"exact": "yes"}}}], "route": to("v2")},
                {"route": to("v1")},
            ],
        }),
    );
    let mesh = Mesh::start(&format!(
        "{}{}{vs}",
        versioned_service("reviews", &[(&u[0], "v1"), (&u[1], "v2")]),
        subsets_v1_v2("reviews"),
    ))
    .await;

    // (path, request headers, who answers)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("/", &[("end-user", "jason")], "reviews-v2"),
        ("/", &[("end-user", "bob")], "reviews-v1"),
        ("/", &[], "reviews-v1"),
        ("/exact", &[], "reviews-v2"),
        ("/exact/more", &[], "reviews-v1"),
        ("/pre", &[], "reviews-v2"),
        ("/pre/fix", &[], "reviews-v2"),
        ("/re/123", &[], "reviews-v2"),
        ("/re/abc", &[], "reviews-v1"),
        ("/re/123/x", &[], "reviews-v1"),
        ("/q?canary=yes", &[], "reviews-v2"),
        ("/q?canary=no", &[], "reviews-v1"),
        ("/q?other=yes", &[], "reviews-v1"),
    ];
    for (path, headers, want) in cases {
        mesh.expect_servers("reviews", path, headers, &[want]).await;
    }
    mesh.assert_clean().await;
}

// --- 3. Consistent hashing -------------------------------------------------------------------

async fn hash_mesh(hash: Value) -> (Vec<Upstream>, Mesh) {
    let u = start_upstreams(&["web-0", "web-1", "web-2"]).await;
    let mesh = Mesh::start(&format!(
        "{}{}",
        plain_service("web", &[&u[0], &u[1], &u[2]]),
        destination_rule(
            NS,
            "web",
            &json!({"host": "web", "trafficPolicy": {"loadBalancer": {"consistentHash": hash}}}),
        ),
    ))
    .await;
    // Routable (any backend) before measuring.
    eventually("web routable", WAIT, || async {
        let r = mesh.get("web", "/").await?;
        (r.status == 200)
            .then_some(())
            .ok_or(format!("HTTP {}", r.status))
    })
    .await;
    (u, mesh)
}

/// `httpHeaderName`: one header value always reaches the same backend; many values spread
/// over several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_header() {
    let (_u, mesh) = hash_mesh(json!({"httpHeaderName": "x-user"})).await;
    for user in ["alice", "bob"] {
        let seen = mesh
            .tally("web", "/", &[("x-user", user)], 50)
            .await
            .expect("requests");
        assert_eq!(
            seen.len(),
            1,
            "x-user: {user} sticks to one backend: {seen:?}\n{}\n{}",
            mesh.dump_routes().await,
            mesh.dump_clusters("web").await
        );
    }
    let mut backends = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let r = mesh
            .get_with("web", "/", &[("x-user", &user)])
            .await
            .expect("request");
        *backends.entry(r.server()).or_default() += 1;
    }
    assert!(
        backends.len() > 1,
        "30 different users spread over more than one backend: {backends:?}"
    );
    mesh.assert_clean().await;
}

/// `httpCookie` with a TTL: Envoy sets the cookie on the first response, and requests that
/// carry it stick to the backend that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_cookie() {
    let (_u, mesh) =
        hash_mesh(json!({"httpCookie": {"name": "session", "path": "/", "ttl": "60s"}})).await;
    let first = mesh.get("web", "/").await.expect("request");
    assert_eq!(first.status, 200);
    let set_cookie = first.header("set-cookie").unwrap_or_else(|| {
        panic!(
            "the first response sets the hash cookie; headers: {:?}",
            first.headers
        )
    });
    let cookie = set_cookie.split(';').next().unwrap_or_default().trim();
    assert!(
        cookie.starts_with("session="),
        "Set-Cookie names the cookie 'session': {set_cookie}"
    );
    let seen = mesh
        .tally("web", "/", &[("cookie", cookie)], 50)
        .await
        .expect("requests");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![&first.server()],
        "requests carrying {cookie} stick to {}, which answered the first: {seen:?}",
        first.server()
    );
    // The backend sees the cookie the client sent.
    let r = mesh
        .get_with("web", "/", &[("cookie", cookie)])
        .await
        .expect("request");
    assert_eq!(
        r.body["cookies"]["session"].as_str(),
        cookie.strip_prefix("session=")
    );
    let mut backends = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let c = format!("session=s{i}");
        let r = mesh
            .get_with("web", "/", &[("cookie", &c)])
            .await
            .expect("request");
        *backends.entry(r.server()).or_default() += 1;
    }
    assert!(
        backends.len() > 1,
        "30 different sessions spread over more than one backend: {backends:?}"
    );
    mesh.assert_clean().await;
}

/// `useSourceIp`: every request from one client address reaches the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_source_ip() {
    let (_u, mesh) = hash_mesh(json!({"useSourceIp": true})).await;
    let mut by_source = BTreeMap::new();
    // 16 addresses: all of them hashing to one of three backends by chance is 1 in 14
    // million (with 8 it was 1 in 2,200, and it happened).
    for _ in 0..16 {
        let source: IpAddr = loopback_ip().into();
        let client = reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..20 {
            let r = mesh
                .request_on(&client, Method::GET, PORT, "web", "/", &[])
                .await
                .expect("request");
            *seen.entry(r.server()).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            1,
            "requests from {source} stick to one backend: {seen:?}\n{}",
            mesh.dump_routes().await
        );
        by_source.insert(source, seen.into_keys().next().unwrap_or_default());
    }
    let distinct: std::collections::BTreeSet<&String> = by_source.values().collect();
    assert!(
        distinct.len() > 1,
        "16 client addresses spread over more than one backend: {by_source:?}\n{}",
        mesh.dump_clusters("web").await
    );
    mesh.assert_clean().await;
}

// --- 4. Connection pool ----------------------------------------------------------------------

/// `connectionPool` limits: 20 concurrent requests to a slow backend overflow the circuit
/// breaker (503 with `x-envoy-overloaded`), the same requests one at a time all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_overflow() {
    let u = start_upstreams(&["web-0"]).await;
    u[0].set_delay(Duration::from_millis(300));
    let mesh = Mesh::start(&format!(
        "{}{}",
        plain_service("web", &[&u[0]]),
        destination_rule(
            NS,
            "web",
            &json!({"host": "web", "trafficPolicy": {"connectionPool": {
                "tcp": {"maxConnections": 1},
                "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 1, "maxRequestsPerConnection": 1},
            }}}),
        ),
    ))
    .await;

    // One at a time: every request succeeds.
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    for i in 0..5 {
        let r = mesh.get("web", "/").await.expect("request");
        assert_eq!(r.status, 200, "sequential request {i}: {r:?}");
    }

    // Twenty at once: the ones beyond the limits are refused by Envoy.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = mesh.client.clone();
        let url = format!("http://{}:{PORT}/", mesh.bind);
        set.spawn(async move {
            let r = client
                .get(url)
                .header("host", "web")
                .send()
                .await
                .expect("request");
            let overloaded = r
                .headers()
                .get("x-envoy-overloaded")
                .is_some_and(|v| v == "true");
            (r.status().as_u16(), overloaded)
        });
    }
    let mut ok = 0;
    let mut overloaded = 0;
    let mut other = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.expect("task") {
            (200, _) => ok += 1,
            (503, true) => overloaded += 1,
            x => other.push(x),
        }
    }
    assert!(
        overloaded > 0 && ok > 0 && other.is_empty(),
        "20 concurrent requests: {ok} succeeded, {overloaded} refused with x-envoy-overloaded, \
         other {other:?}; expected some of each and nothing else\n{}",
        mesh.dump_clusters("web").await
    );
    mesh.assert_clean().await;
}

// --- 5. Outlier detection --------------------------------------------------------------------

/// `outlierDetection`: a backend answering 500 is ejected after its first failure; once fixed
/// and its ejection time over, it takes traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_restores() {
    let u = start_upstreams(&["web-good", "web-bad"]).await;
    let (good, bad) = (&u[0], &u[1]);
    bad.set_status(500);
    let mesh = Mesh::start(&format!(
        "{}{}",
        plain_service("web", &[good, bad]),
        destination_rule(
            NS,
            "web",
            &json!({"host": "web", "trafficPolicy": {"outlierDetection": {
                "consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3s",
                "maxEjectionPercent": 100,
            }}}),
        ),
    ))
    .await;
    let ejections =
        "cluster.outbound|8080||web.e2e.svc.cluster.local.outlier_detection.ejections_active";

    // The bad backend fails at most a request or so, then is ejected: 20 requests in a row
    // all succeed.
    eventually("bad backend ejected", WAIT, || async {
        let seen = mesh.tally("web", "/", &[], 20).await?;
        let active = mesh.envoy.stat(ejections).await;
        if seen.keys().collect::<Vec<_>>() == ["web-good"] && active > 0 {
            Ok(())
        } else {
            Err(format!("saw {seen:?}, {ejections} = {active}"))
        }
    })
    .await;
    let bad_hits = bad.hits();
    assert!(bad_hits > 0, "the bad backend was tried before ejection");
    let seen = mesh.tally("web", "/", &[], 20).await.expect("requests");
    assert_eq!(
        seen.get("web-good"),
        Some(&20),
        "while ejected, every request succeeds: {seen:?}\n{}",
        mesh.dump_clusters("web").await
    );

    // Fixed, and back after baseEjectionTime.
    bad.set_status(200);
    eventually("fixed backend takes traffic again", WAIT, || async {
        let seen = mesh.tally("web", "/", &[], 10).await?;
        if seen.contains_key("web-bad") && seen.keys().all(|k| k.starts_with("web-")) {
            Ok(())
        } else {
            Err(format!("saw {seen:?}"))
        }
    })
    .await;
    assert_eq!(mesh.envoy.stat(ejections).await, 0, "no ejection left");
    mesh.assert_clean().await;
}

// --- 6. Timeout ------------------------------------------------------------------------------

fn slow_vs(timeout: Option<&str>) -> String {
    let mut rule = json!({"route": [{"destination": {"host": "web"}}]});
    if let Some(t) = timeout {
        rule["timeout"] = json!(t);
    }
    virtual_service(NS, "web", &json!({"hosts": ["web"], "http": [rule]}))
}

/// A route `timeout` of 500ms answers 504 for a backend taking 2s; without it the same
/// request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout() {
    let u = start_upstreams(&["web-0"]).await;
    let mesh = Mesh::start_files(&[
        ("mesh.yaml", &plain_service("web", &[&u[0]])),
        ("vs.yaml", &slow_vs(Some("500ms"))),
    ])
    .await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let r = mesh.get("web", "/?delay_ms=2000").await.expect("request");
    assert_eq!(
        r.status,
        504,
        "timed out: {r:?}\n{}",
        mesh.dump_routes().await
    );
    assert!(
        r.elapsed >= Duration::from_millis(450) && r.elapsed < Duration::from_millis(1200),
        "answered after the 500ms timeout, not the backend's 2s: {:?}",
        r.elapsed
    );

    mesh.edit("vs.yaml", &slow_vs(None), "RDS").await;
    let r = mesh.get("web", "/?delay_ms=2000").await.expect("request");
    assert!(
        r.status == 200 && r.elapsed >= Duration::from_millis(1900),
        "without a timeout the slow request succeeds: HTTP {} after {:?}",
        r.status,
        r.elapsed
    );
    mesh.assert_clean().await;
}

// --- 7. Retries ------------------------------------------------------------------------------

fn retry_vs(retries: Option<Value>) -> String {
    let mut rule = json!({"route": [{"destination": {"host": "web"}}]});
    if let Some(r) = retries {
        rule["retries"] = r;
    }
    virtual_service(NS, "web", &json!({"hosts": ["web"], "http": [rule]}))
}

async fn failure_share(mesh: &Mesh, n: usize) -> (f64, BTreeMap<String, usize>) {
    let seen = mesh.tally("web", "/", &[], n).await.expect("requests");
    (1.0 - share(&seen, "web-0"), seen)
}

/// `retries: {attempts: 3, retryOn: 5xx}` hides a backend failing one request in four;
/// `attempts: 0` shows the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_intermittent_failures() {
    let u = start_upstreams(&["web-0"]).await;
    let mesh = Mesh::start_files(&[
        ("mesh.yaml", &plain_service("web", &[&u[0]])),
        ("vs.yaml", &retry_vs(Some(json!({"attempts": 0})))),
    ])
    .await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    u[0].fail_every(4);
    let (failed, seen) = failure_share(&mesh, 200).await;
    assert!(
        failed >= 0.15,
        "without retries about a quarter fails: {seen:?}\n{}",
        mesh.dump_routes().await
    );

    mesh.edit(
        "vs.yaml",
        &retry_vs(Some(json!({"attempts": 3, "retryOn": "5xx"}))),
        "RDS",
    )
    .await;
    let (failed, seen) = failure_share(&mesh, 200).await;
    assert!(
        failed <= 0.03,
        "with 3 retries on 5xx at least 97% succeed: {seen:?}\n{}",
        mesh.dump_routes().await
    );
    mesh.assert_clean().await;
}

/// Without a `retries` field Istio's default policy applies: two retries on connection
/// failures and on 503, so a backend failing one request in four with 503 goes unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_retry_policy_retries_503() {
    let u = start_upstreams(&["web-0"]).await;
    let mesh = Mesh::start(&format!(
        "{}{}",
        plain_service("web", &[&u[0]]),
        retry_vs(None)
    ))
    .await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    u[0].fail_every(4);
    let (failed, seen) = failure_share(&mesh, 200).await;
    assert!(
        failed <= 0.03,
        "Istio's default retry policy (2 attempts, retriable-status-codes 503) hides one 503 \
         in four: {seen:?}\n{}",
        mesh.dump_routes().await
    );
    mesh.assert_clean().await;
}

// --- 8. Redirects ----------------------------------------------------------------------------

/// `redirect`: 301 by default, `redirectCode` 302/307, `authority` changes the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects() {
    let u = start_upstreams(&["web-0"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new"}},
            {"match": [{"uri": {"exact": "/found"}}], "redirect": {"uri": "/new", "redirectCode": 302}},
            {"match": [{"uri": {"exact": "/temp"}}], "redirect": {"uri": "/new", "redirectCode": 307}},
            {"match": [{"uri": {"exact": "/away"}}], "redirect": {"uri": "/new", "authority": "other.example"}},
            {"route": [{"destination": {"host": "web"}}]},
        ]}),
    );
    let mesh = Mesh::start(&format!("{}{vs}", plain_service("web", &[&u[0]]))).await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let hits = u[0].hits();
    for (path, code) in [("/old", 301), ("/found", 302), ("/temp", 307)] {
        let r = mesh.get("web", path).await.expect("request");
        let loc = r.header("location").unwrap_or_default();
        assert!(
            r.status == code && loc.ends_with("/new") && loc.starts_with("http://web"),
            "{path}: expected {code} to http://web…/new, got {} Location {loc:?}\n{}",
            r.status,
            mesh.dump_routes().await
        );
    }
    let r = mesh.get("web", "/away").await.expect("request");
    let loc = r.header("location").unwrap_or_default();
    assert!(
        r.status == 301 && loc.starts_with("http://other.example") && loc.ends_with("/new"),
        "/away: expected 301 to http://other.example/new, got {} Location {loc:?}",
        r.status
    );
    assert_eq!(u[0].hits(), hits, "redirects never reach the backend");
    mesh.assert_clean().await;
}

// --- 9. Rewrites -----------------------------------------------------------------------------

/// `rewrite`: a prefix rewritten (`uri`), the Host rewritten (`authority`), a regex rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites() {
    let u = start_upstreams(&["web-0"]).await;
    let to_web = json!([{"destination": {"host": "web"}}]);
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "rewrite": {"uri": "/v2"}, "route": to_web},
            {"match": [{"uri": {"prefix": "/host"}}], "rewrite": {"authority": "other.example"}, "route": to_web},
            {"match": [{"uri": {"prefix": "/re/"}}],
             "rewrite": {"uriRegexRewrite": {"match": "^/re/([^/]+)/(.*)$", "rewrite": "/new/\\2/\\1"}},
             "route": to_web},
            {"route": to_web},
        ]}),
    );
    let mesh = Mesh::start(&format!("{}{vs}", plain_service("web", &[&u[0]]))).await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;

    let r = mesh.get("web", "/api/items?x=1").await.expect("request");
    assert_eq!(
        r.body["path"], "/v2/items?x=1",
        "prefix /api rewritten to /v2: {r:?}"
    );
    let r = mesh.get("web", "/host/x").await.expect("request");
    assert_eq!(r.body["host"], "other.example", "Host rewritten: {r:?}");
    assert_eq!(r.body["path"], "/host/x", "path untouched: {r:?}");
    let r = mesh.get("web", "/re/a/b/c").await.expect("request");
    assert_eq!(
        r.body["path"], "/new/b/c/a",
        "regex rewrite: {r:?}\n{}",
        r.body
    );
    let r = mesh.get("web", "/plain").await.expect("request");
    assert_eq!(r.body["path"], "/plain");
    assert_eq!(r.body["host"], "web");
    mesh.assert_clean().await;
}

// --- 10. Fault injection ---------------------------------------------------------------------

/// `fault.abort` answers with the injected status and never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort() {
    let u = start_upstreams(&["web-0"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"prefix": "/teapot"}}],
             "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
            {"route": [{"destination": {"host": "web"}}]},
        ]}),
    );
    let mesh = Mesh::start(&format!("{}{vs}", plain_service("web", &[&u[0]]))).await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let hits = u[0].hits();
    let seen = mesh
        .tally("web", "/teapot", &[], 20)
        .await
        .expect("requests");
    assert_eq!(
        seen.get("HTTP 418"),
        Some(&20),
        "every request aborted with 418: {seen:?}\n{}",
        mesh.dump_routes().await
    );
    assert_eq!(
        u[0].hits(),
        hits,
        "aborted requests never reach the backend"
    );
    mesh.assert_clean().await;
}

/// `fault.delay` holds every request for the fixed delay, then serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay() {
    let u = start_upstreams(&["web-0"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"prefix": "/slow"}}],
             "fault": {"delay": {"fixedDelay": "700ms", "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
            {"route": [{"destination": {"host": "web"}}]},
        ]}),
    );
    let mesh = Mesh::start(&format!("{}{vs}", plain_service("web", &[&u[0]]))).await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let fast = mesh.get("web", "/").await.expect("request");
    assert!(fast.elapsed < Duration::from_millis(500), "{fast:?}");
    for _ in 0..3 {
        let r = mesh.get("web", "/slow").await.expect("request");
        // Envoy's timers have millisecond granularity and may fire a fraction early.
        assert!(
            r.status == 200 && r.elapsed >= Duration::from_millis(695),
            "delayed by at least 700ms, then served: HTTP {} after {:?}\n{}",
            r.status,
            r.elapsed,
            mesh.dump_routes().await
        );
    }
    mesh.assert_clean().await;
}

// --- 11. Mirroring ---------------------------------------------------------------------------

/// `mirror` with `mirrorPercentage: 100`: the shadow service gets a copy of every request
/// (its Host suffixed `-shadow`), the client only the primary's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring() {
    let u = start_upstreams(&["web-0", "shadow-0"]).await;
    let (primary, shadow) = (&u[0], &u[1]);
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [{
            "route": [{"destination": {"host": "web"}}],
            "mirror": {"host": "shadow"},
            "mirrorPercentage": {"value": 100},
        }]}),
    );
    let mesh = Mesh::start(&format!(
        "{}{}{vs}",
        plain_service("web", &[primary]),
        plain_service("shadow", &[shadow]),
    ))
    .await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let before = shadow.hits();
    let seen = mesh.tally("web", "/m", &[], 30).await.expect("requests");
    assert_eq!(
        seen.get("web-0"),
        Some(&30),
        "answers come from the primary: {seen:?}"
    );
    eventually("shadow got the copies", WAIT, || async {
        let got = shadow.hits() - before;
        if got >= 30 {
            Ok(())
        } else {
            Err(format!(
                "shadow saw {got} of 30\n{}",
                mesh.dump_routes().await
            ))
        }
    })
    .await;
    let copy = shadow
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["path"] == "/m")
        .expect("a mirrored request");
    assert!(
        copy["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("web") && h.ends_with("-shadow")),
        "mirrored requests carry the original Host with -shadow: {copy}"
    );
    mesh.assert_clean().await;
}

// --- 12. Header operations -------------------------------------------------------------------

/// Request `set`/`add`/`remove` reach the backend; response `set`/`remove` reach the client;
/// per-destination headers on a weighted route follow the destination chosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_operations() {
    let u = start_upstreams(&["web-v1", "web-v2"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"prefix": "/split"}}], "route": [
                {"destination": {"host": "web", "subset": "v1"}, "weight": 50,
                 "headers": {"request": {"set": {"x-dest": "v1"}}, "response": {"set": {"x-dest-resp": "v1"}}}},
                {"destination": {"host": "web", "subset": "v2"}, "weight": 50,
                 "headers": {"request": {"set": {"x-dest": "v2"}}, "response": {"set": {"x-dest-resp": "v2"}}}},
            ]},
            {"headers": {
                "request": {"set": {"x-set": "set-value"}, "add": {"x-added": "added"}, "remove": ["x-secret"]},
                "response": {"set": {"x-resp": "resp-value"}, "remove": ["x-upstream"]},
             },
             "route": [{"destination": {"host": "web", "subset": "v1"}}]},
        ]}),
    );
    let mesh = Mesh::start(&format!(
        "{}{}{vs}",
        versioned_service("web", &[(&u[0], "v1"), (&u[1], "v2")]),
        subsets_v1_v2("web"),
    ))
    .await;
    mesh.expect_servers("web", "/", &[], &["web-v1"]).await;

    let r = mesh
        .get_with(
            "web",
            "/",
            &[
                ("x-set", "from-client"),
                ("x-secret", "s3cret"),
                ("x-keep", "k"),
            ],
        )
        .await
        .expect("request");
    let h = &r.body["headers"];
    assert_eq!(h["x-set"], "set-value", "set overwrites: {h}");
    assert_eq!(h["x-added"], "added", "add adds: {h}");
    assert!(h.get("x-secret").is_none(), "remove removes: {h}");
    assert_eq!(h["x-keep"], "k", "others pass: {h}");
    assert_eq!(r.header("x-resp"), Some("resp-value"), "{:?}", r.headers);
    assert_eq!(
        r.header("x-upstream"),
        None,
        "response header removed: {:?}",
        r.headers
    );

    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let r = mesh.get("web", "/split").await.expect("request");
        let version = r.server().trim_start_matches("web-").to_string();
        assert_eq!(
            r.body["headers"]["x-dest"].as_str(),
            Some(version.as_str()),
            "the backend sees its destination's request header: {r:?}\n{}",
            mesh.dump_routes().await
        );
        assert_eq!(
            r.header("x-dest-resp"),
            Some(version.as_str()),
            "the client sees the destination's response header: {r:?}"
        );
        *seen.entry(version).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both destinations chosen: {seen:?}");
    mesh.assert_clean().await;
}

// --- 13. Undefined subset --------------------------------------------------------------------

/// A route to a subset the DestinationRule does not define answers 503; other routes of the
/// same VirtualService keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_subset_is_503() {
    let u = start_upstreams(&["web-v1", "web-v2"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [
            {"match": [{"uri": {"prefix": "/v3"}}], "route": [{"destination": {"host": "web", "subset": "v3"}}]},
            {"route": [{"destination": {"host": "web", "subset": "v1"}}]},
        ]}),
    );
    let mesh = Mesh::start(&format!(
        "{}{}{vs}",
        versioned_service("web", &[(&u[0], "v1"), (&u[1], "v2")]),
        subsets_v1_v2("web"),
    ))
    .await;
    mesh.expect_servers("web", "/", &[], &["web-v1"]).await;
    let seen = mesh.tally("web", "/v3", &[], 10).await.expect("requests");
    assert_eq!(
        seen.get("HTTP 503"),
        Some(&10),
        "undefined subset: 503: {seen:?}\n{}",
        mesh.dump_routes().await
    );
    mesh.expect_servers("web", "/other", &[], &["web-v1"]).await;
    mesh.assert_clean().await;
}

// --- 14. CORS --------------------------------------------------------------------------------

/// `corsPolicy`: a preflight from an allowed origin gets `access-control-allow-origin`, one
/// from another origin does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight() {
    let u = start_upstreams(&["web-0"]).await;
    let vs = virtual_service(
        NS,
        "web",
        &json!({"hosts": ["web"], "http": [{
            "corsPolicy": {
                "allowOrigins": [{"exact": "https://good.example"}],
                "allowMethods": ["GET", "POST"],
                "allowHeaders": ["x-custom"],
                "maxAge": "1h",
            },
            "route": [{"destination": {"host": "web"}}],
        }]}),
    );
    let mesh = Mesh::start(&format!("{}{vs}", plain_service("web", &[&u[0]]))).await;
    mesh.expect_servers("web", "/", &[], &["web-0"]).await;
    let preflight = |origin: &'static str| {
        let mesh = &mesh;
        async move {
            mesh.request_on(
                &mesh.client,
                Method::OPTIONS,
                PORT,
                "web",
                "/",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await
            .expect("preflight")
        }
    };
    let good = preflight("https://good.example").await;
    assert_eq!(
        good.header("access-control-allow-origin"),
        Some("https://good.example"),
        "allowed origin: {good:?}\n{}",
        mesh.dump_routes().await
    );
    let methods = good.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "allowed methods: {good:?}");
    let bad = preflight("https://evil.example").await;
    assert_eq!(
        bad.header("access-control-allow-origin"),
        None,
        "disallowed origin: {bad:?}"
    );
    mesh.assert_clean().await;
}

// --- 15. TCP weights -------------------------------------------------------------------------

fn tcp_vs(w1: u32, w2: u32) -> String {
    virtual_service(
        NS,
        "store",
        &json!({"hosts": ["store"], "tcp": [{"route": [
            {"destination": {"host": "store", "subset": "v1"}, "weight": w1},
            {"destination": {"host": "store", "subset": "v2"}, "weight": w2},
        ]}]}),
    )
}

/// A `tcp` route 100/0 sends every connection to one subset; switched to 0/100, to the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_weights() {
    const TCP_PORT: u16 = 5432;
    let u = start_upstreams(&["store-v1", "store-v2"]).await;
    let eps = [
        Endpoint {
            upstream: &u[0],
            labels: &[("version", "v1")],
            ready: true,
        },
        Endpoint {
            upstream: &u[1],
            labels: &[("version", "v2")],
            ready: true,
        },
    ];
    let mesh = Mesh::start_files(&[
        (
            "mesh.yaml",
            &format!(
                "{}{}{}",
                service(NS, "store", TCP_PORT, "tcp-store"),
                endpoints(NS, "store", "tcp-store", &eps),
                subsets_v1_v2("store"),
            ),
        ),
        ("vs.yaml", &tcp_vs(100, 0)),
    ])
    .await;
    let tally = |n: usize| {
        let mesh = &mesh;
        async move {
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..n {
                // Each request is a new connection: TCP routes pick per connection.
                let r = mesh
                    .request_on(&mesh.client, Method::GET, TCP_PORT, "store", "/", &[])
                    .await?;
                *seen.entry(r.server()).or_default() += 1;
            }
            Ok::<_, String>(seen)
        }
    };
    for (step, want) in [("100/0", "store-v1"), ("0/100", "store-v2")] {
        if step == "0/100" {
            mesh.edit("vs.yaml", &tcp_vs(0, 100), "LDS").await;
        }
        eventually(&format!("{step} in force"), WAIT, || async {
            let seen = tally(20).await?;
            (seen.keys().collect::<Vec<_>>() == [want])
                .then_some(())
                .ok_or(format!("saw {seen:?}"))
        })
        .await;
        let seen = tally(100).await.expect("requests");
        assert_eq!(
            seen.get(want),
            Some(&100),
            "{step}: every connection to {want}: {seen:?}"
        );
    }
    mesh.assert_clean().await;
}
