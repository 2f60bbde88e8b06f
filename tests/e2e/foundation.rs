//! The foundation, end to end: stock Envoy takes its configuration from strait and routes
//! real requests to real upstream servers; edits to the config directory change where
//! requests go without restarting anything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};

const NS: &str = "e2e";
const WAIT: Duration = Duration::from_secs(10);

/// Sends `n` requests for `host` to `bind:port` and counts which upstream answered.
async fn tally(
    bind: IpAddr,
    port: u16,
    host: &str,
    n: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let client = http_client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = client
            .get(format!("http://{bind}:{port}/hello"))
            .header("host", host)
            .send()
            .await
            .map_err(|e| format!("request for {host}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            *seen.entry(format!("HTTP {status}")).or_default() += 1;
            continue;
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        let server = body["server"].as_str().unwrap_or("?").to_string();
        *seen.entry(server).or_default() += 1;
    }
    Ok(seen)
}

/// Waits until requests for `host` are answered only by `expected` (each at least once).
async fn expect_servers(bind: IpAddr, port: u16, host: &str, expected: &[&str]) {
    eventually(&format!("{host} served by {expected:?}"), WAIT, || async {
        // Enough requests that a host still in the set is seen (1 in 2^20 to miss one of
        // two): a check passing early lets the next edit fall into the same push.
        let seen = tally(bind, port, host, (expected.len() * 6).max(20)).await?;
        let want: Vec<&str> = expected.to_vec();
        let got: Vec<&str> = seen.keys().map(String::as_str).collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("saw {seen:?}"))
        }
    })
    .await;
}

async fn routes_by_host(delta: bool) {
    routes_by_host_with(&strait_e2e::envoy::binary(), delta).await;
}

/// The oldest supported Envoy routes the same, over both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_with_every_envoy_version() {
    for bin in strait_e2e::envoy::all_versions().iter().skip(1) {
        for delta in [false, true] {
            routes_by_host_with(bin, delta).await;
        }
    }
}

async fn routes_by_host_with(bin: &std::path::Path, delta: bool) {
    let (ip_a, ip_b, ip_c) = (loopback_ip(), loopback_ip(), loopback_ip());
    let a = Upstream::start("a-0", ip_a.into()).await;
    let b = Upstream::start("b-0", ip_b.into()).await;
    let c = Upstream::start("c-0", ip_c.into()).await;
    let mesh = format!(
        "{}{}---\n{}{}---\n{}{}",
        service(NS, "a", 8080, "http"),
        endpoints(NS, "a", "http", &[Endpoint::ready(&a)]),
        service(NS, "b", 8080, "http-b"),
        endpoints(NS, "b", "http-b", &[Endpoint::ready(&b)]),
        service("other", "c", 9090, "http"),
        endpoints("other", "c", "http", &[Endpoint::ready(&c)]),
    );
    let strait =
        Strait::start_with(|dir| std::fs::write(dir.join("mesh.yaml"), &mesh).expect("write"))
            .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start_with(
        "client",
        bin,
        &mut strait.sidecar(NS, "client", bind, delta),
    )
    .await;
    envoy.wait_live().await;

    for host in [
        "a",
        "a:8080",
        "a.e2e",
        "a.e2e.svc",
        "a.e2e.svc.cluster.local:8080",
    ] {
        expect_servers(bind, 8080, host, &["a-0"]).await;
    }
    expect_servers(bind, 8080, "b.e2e", &["b-0"]).await;
    // Another namespace's service is reachable by its qualified names only.
    expect_servers(bind, 9090, "c.other", &["c-0"]).await;
    expect_servers(bind, 9090, "c", &["HTTP 404"]).await;
    expect_servers(bind, 8080, "unknown.example.com", &["HTTP 404"]).await;

    strait.wait_synced(1).await;
    let z = strait.syncz();
    let p = &z.proxies[0];
    assert_eq!(p.delta, delta);
    assert!(p.envoy_version.is_some(), "Envoy's version is recorded");
    for t in ["CDS", "LDS", "EDS", "RDS"] {
        assert_eq!(p.types[t].state, "SYNCED", "{t}: {:?}", p.types[t]);
    }
    envoy.assert_no_rejections().await;
    strait.assert_no_nacks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_sotw() {
    routes_by_host(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_delta() {
    routes_by_host(true).await;
}

async fn endpoints_follow_edits(delta: bool) {
    let (ip1, ip2) = (loopback_ip(), loopback_ip());
    let v1 = Upstream::start("web-1", ip1.into()).await;
    let v2 = Upstream::start("web-2", ip2.into()).await;
    let strait = Strait::start().await;
    strait.write("web.yaml", &service(NS, "web", 8080, "http"));
    strait.write(
        "web-endpoints.yaml",
        &endpoints(NS, "web", "http", &[Endpoint::ready(&v1)]),
    );
    let bind: IpAddr = loopback_ip().into();
    let mut envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, delta)).await;
    let pid = envoy.pid();
    expect_servers(bind, 8080, "web", &["web-1"]).await;
    strait.wait_synced(1).await;
    let responses = |ty: &str| strait.syncz().proxies[0].types[ty].responses;
    let baseline: Vec<u64> = ["CDS", "LDS", "RDS", "EDS"]
        .iter()
        .map(|t| responses(t))
        .collect();

    // Scale up: a second endpoint takes traffic.
    strait.write(
        "web-endpoints.yaml",
        &endpoints(
            NS,
            "web",
            "http",
            &[Endpoint::ready(&v1), Endpoint::ready(&v2)],
        ),
    );
    expect_servers(bind, 8080, "web", &["web-1", "web-2"]).await;

    // Readiness: a not-ready endpoint takes none.
    strait.write(
        "web-endpoints.yaml",
        &endpoints(
            NS,
            "web",
            "http",
            &[
                Endpoint {
                    upstream: &v1,
                    labels: &[],
                    ready: false,
                },
                Endpoint::ready(&v2),
            ],
        ),
    );
    expect_servers(bind, 8080, "web", &["web-2"]).await;

    // Scale down to the first one again.
    strait.write(
        "web-endpoints.yaml",
        &endpoints(NS, "web", "http", &[Endpoint::ready(&v1)]),
    );
    expect_servers(bind, 8080, "web", &["web-1"]).await;

    assert!(envoy.is_running(), "Envoy keeps running");
    assert_eq!(envoy.pid(), pid, "Envoy was never restarted");
    strait.wait_synced(1).await;
    envoy.assert_no_rejections().await;
    strait.assert_no_nacks();
    // Endpoint-only edits pushed EDS only: no cluster, listener or route went out again.
    let z = strait.syncz();
    let t = &z.proxies[0].types;
    for (i, ty) in ["CDS", "LDS", "RDS"].iter().enumerate() {
        assert_eq!(t[*ty].responses, baseline[i], "{ty}: {:?}", t[*ty]);
        assert_eq!(t[*ty].sent_version, t[*ty].acked_version, "{ty}");
    }
    assert!(t["EDS"].responses >= baseline[3] + 3, "EDS: {:?}", t["EDS"]);
    assert_eq!(t["EDS"].sent_version, t["EDS"].acked_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_edits_sotw() {
    endpoints_follow_edits(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_edits_delta() {
    endpoints_follow_edits(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_files_come_and_go() {
    let api = Upstream::start("api-0", loopback_ip().into()).await;
    let strait = Strait::start().await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, true)).await;
    envoy.wait_live().await;

    // A new file with a new service makes it routable.
    strait.write(
        "api.yaml",
        &format!(
            "{}{}",
            service(NS, "api", 7070, "http"),
            endpoints(NS, "api", "http", &[Endpoint::ready(&api)])
        ),
    );
    expect_servers(bind, 7070, "api", &["api-0"]).await;

    // Removing the file removes the service: the port's listener goes away.
    strait.remove("api.yaml");
    eventually("api gone", WAIT, || async {
        match http_client()
            .get(format!("http://{bind}:7070/"))
            .header("host", "api")
            .send()
            .await
        {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still answered {}", r.status())),
        }
    })
    .await;
    envoy.assert_no_rejections().await;
    strait.assert_no_nacks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edits_keep_the_last_good_config() {
    let web = Upstream::start("web-0", loopback_ip().into()).await;
    let other = Upstream::start("other-0", loopback_ip().into()).await;
    let strait = Strait::start().await;
    strait.write(
        "web.yaml",
        &format!(
            "{}{}",
            service(NS, "web", 8080, "http"),
            endpoints(NS, "web", "http", &[Endpoint::ready(&web)])
        ),
    );
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, false)).await;
    expect_servers(bind, 8080, "web", &["web-0"]).await;

    // The service's port becomes invalid: it stays as it was, and the problem is reported
    // with its file, object and field.
    strait.write(
        "web.yaml",
        &format!(
            "{}{}",
            service(NS, "web", 8080, "http").replace("port: 8080", "port: 80800"),
            endpoints(NS, "web", "http", &[Endpoint::ready(&web)])
        ),
    );
    // Another, valid change in the same directory still goes through.
    strait.write(
        "other.yaml",
        &format!(
            "{}{}",
            service(NS, "other", 8080, "http"),
            endpoints(NS, "other", "http", &[Endpoint::ready(&other)])
        ),
    );
    expect_servers(bind, 8080, "other", &["other-0"]).await;
    expect_servers(bind, 8080, "web", &["web-0"]).await;
    let problems: serde_json::Value = http_client()
        .get(format!("http://{}/debug/problems", strait.debug_addr()))
        .send()
        .await
        .expect("status API")
        .json()
        .await
        .expect("json");
    let p = &problems[0];
    assert!(
        p["file"].as_str().is_some_and(|f| f.ends_with("web.yaml")),
        "{problems}"
    );
    assert_eq!(p["field"], "spec.ports[0].port", "{problems}");
    assert_eq!(p["object"]["name"], "web", "{problems}");

    // Broken YAML keeps everything the file had.
    strait.write(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    expect_servers(bind, 8080, "web", &["web-0"]).await;
    envoy.assert_no_rejections().await;
    strait.assert_no_nacks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_are_proxied() {
    let db = Upstream::start("db-0", loopback_ip().into()).await;
    let strait = Strait::start_with(|dir| {
        std::fs::write(
            dir.join("db.yaml"),
            format!(
                "{}{}",
                service(NS, "db", 5432, "tcp-db"),
                endpoints(NS, "db", "tcp-db", &[Endpoint::ready(&db)])
            ),
        )
        .expect("write")
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, false)).await;
    // Any host name works: TCP is proxied byte for byte.
    expect_servers(bind, 5432, "whatever", &["db-0"]).await;
    assert!(
        envoy
            .stat("cluster.outbound|5432||db.e2e.svc.cluster.local.upstream_cx_total")
            .await
            > 0
    );
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_listener_forwards_to_the_application() {
    // The server pod: its sidecar listens on the pod IP at the target port and forwards to
    // the application on another address.
    let pod_ip: IpAddr = loopback_ip().into();
    let app_ip: IpAddr = loopback_ip().into();
    let app = Upstream::start("app", app_ip).await;
    let port = app.port();
    let mesh = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: srv, namespace: {NS}}}\n\
         spec:\n  clusterIP: 10.97.0.1\n  selector: {{app: srv}}\n  ports:\n  - {{name: http, port: 8080, targetPort: {port}}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: srv-0, namespace: {NS}, labels: {{app: srv}}}}\n\
         spec: {{containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {pod_ip}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: srv-0, namespace: {NS}, labels: {{kubernetes.io/service-name: srv}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\n\
         endpoints:\n- addresses: [{pod_ip}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: srv-0, namespace: {NS}}}\n"
    );
    let strait =
        Strait::start_with(|dir| std::fs::write(dir.join("srv.yaml"), &mesh).expect("write")).await;
    let mut server_bootstrap = strait.sidecar(NS, "srv-0", pod_ip, false);
    server_bootstrap["node"]["metadata"]["STRAIT_APP_ADDRESS"] =
        serde_json::json!(app_ip.to_string());
    let server = Envoy::start("server", server_bootstrap).await;
    let bind: IpAddr = loopback_ip().into();
    let client = Envoy::start("client", strait.sidecar(NS, "client", bind, false)).await;

    expect_servers(bind, 8080, "srv", &["app"]).await;
    let inbound = format!("cluster.inbound|{port}||.upstream_rq_total");
    assert!(
        server.stat(&inbound).await > 0,
        "requests went through the server's inbound cluster"
    );
    strait.wait_synced(2).await;
    client.assert_no_rejections().await;
    server.assert_no_rejections().await;
    strait.assert_no_nacks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_lists_every_proxy() {
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("svc.yaml"), service(NS, "x", 8080, "http")).expect("write")
    })
    .await;
    let (b1, b2): (IpAddr, IpAddr) = (loopback_ip().into(), loopback_ip().into());
    let _e1 = Envoy::start("one", strait.sidecar(NS, "one", b1, false)).await;
    let _e2 = Envoy::start("two", strait.sidecar(NS, "two", b2, true)).await;
    strait.wait_synced(2).await;
    let z: strait_xds::Syncz = http_client()
        .get(format!("http://{}/debug/syncz", strait.debug_addr()))
        .send()
        .await
        .expect("status API")
        .json()
        .await
        .expect("syncz JSON");
    let table = strait::proxy_status::table(&[z]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for l in &lines[1..] {
        assert_eq!(l.matches("SYNCED").count(), 4, "{table}");
        assert!(l.contains("strait-default@"), "{table}");
    }
    let ready = http_client()
        .get(format!("http://{}/ready", strait.debug_addr()))
        .send()
        .await
        .expect("ready");
    assert!(ready.status().is_success());
    let metrics = http_client()
        .get(format!("http://{}/metrics", strait.debug_addr()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("strait_xds_connected_proxies 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_envoy_gets_a_full_view() {
    for delta in [false, true] {
        let one = Upstream::start("one", loopback_ip().into()).await;
        let two = Upstream::start("two", loopback_ip().into()).await;
        let mut strait = Strait::start_with(|dir| {
            std::fs::write(
                dir.join("s.yaml"),
                format!(
                    "{}{}",
                    service(NS, "s", 8080, "http"),
                    endpoints(NS, "s", "http", &[Endpoint::ready(&one)])
                ),
            )
            .expect("write")
        })
        .await;
        let bind: IpAddr = loopback_ip().into();
        let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind, delta)).await;
        expect_servers(bind, 8080, "s", &["one"]).await;

        // The control plane goes away and comes back with different config: Envoy keeps
        // serving what it had meanwhile, then reconnects and takes the new view whole.
        strait.write(
            "s.yaml",
            &format!(
                "{}{}",
                service(NS, "s", 8080, "http"),
                endpoints(NS, "s", "http", &[Endpoint::ready(&two)])
            ),
        );
        strait.write(
            "t.yaml",
            &format!(
                "{}{}",
                service(NS, "t", 8081, "http"),
                endpoints(NS, "t", "http", &[Endpoint::ready(&one)])
            ),
        );
        strait.restart().await;
        expect_servers(bind, 8080, "s", &["two"]).await;
        expect_servers(bind, 8081, "t", &["one"]).await;
        strait.wait_synced(1).await;
        envoy.assert_no_rejections().await;
        strait.assert_no_nacks();
    }
}
