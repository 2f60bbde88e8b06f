//! What each proxy sees, through a stock Envoy: ServiceEntry hosts are routable (with
//! DestinationRule subsets on their endpoints' labels), a Sidecar's egress hides what it does
//! not list and shrinks the proxy's config, REGISTRY_ONLY refuses unknown hosts, a gateway
//! gets only what its Gateways route to, and mesh config turns on JSON access logs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};
use strait_e2e::mesh::{
    Endpoint, destination_rule, endpoints, gateway, istio, service, virtual_service,
};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};

const NS: &str = "scope";
const OTHER: &str = "other";
const WAIT: Duration = Duration::from_secs(15);

/// The mesh config ConfigMap with `mesh` as its YAML.
fn mesh_config(mesh: &str) -> String {
    let indented: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\n\
         data:\n  mesh: |\n{indented}"
    )
}

/// (status, upstream name) of a GET through the sidecar's port 8080 for `host`.
async fn get(bind: IpAddr, host: &str) -> (u16, String) {
    match http_client()
        .get(format!("http://{bind}:8080/"))
        .header("host", host)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (
                status,
                body["server"].as_str().unwrap_or_default().to_string(),
            )
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn expect_status(bind: IpAddr, host: &str, want: u16) {
    eventually(&format!("{host} answers {want}"), WAIT, || async {
        match get(bind, host).await {
            (s, _) if s == want => Ok(()),
            other => Err(format!("got {other:?}")),
        }
    })
    .await;
}

/// The names of Envoy's dynamic clusters.
async fn clusters(envoy: &Envoy) -> Vec<String> {
    let dump = envoy.config_dump().await;
    let mut names: Vec<String> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["dynamic_active_clusters"].as_array())
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_static_endpoints_with_subsets() {
    let ip: IpAddr = loopback_ip().into();
    let v1 = Upstream::start("pay-v1", ip).await;
    let v2 = Upstream::start("pay-v2", ip).await;
    let entry = istio(
        "ServiceEntry",
        NS,
        "payments",
        &json!({
            "hosts": ["payments.example.com"],
            "location": "MESH_EXTERNAL",
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "endpoints": [
                {"address": v1.ip().to_string(), "ports": {"http": v1.port()}, "labels": {"version": "v1"}},
                {"address": v2.ip().to_string(), "ports": {"http": v2.port()}, "labels": {"version": "v2"}},
            ],
        }),
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("entry.yaml"), &entry).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-se", strait.sidecar(NS, "client-se", bind, false)).await;

    // Routable by its host; both endpoints serve.
    expect_status(bind, "payments.example.com", 200).await;
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let (_, server) = get(bind, "payments.example.com").await;
        *seen.entry(server).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both endpoints serve: {seen:?}");

    // A subset on the entry's endpoint labels, and a route to it.
    strait.write(
        "routing.yaml",
        &format!(
            "{}{}",
            destination_rule(
                NS,
                "payments",
                &json!({"host": "payments.example.com", "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}]})
            ),
            virtual_service(
                NS,
                "payments",
                &json!({"hosts": ["payments.example.com"], "http": [
                    {"route": [{"destination": {"host": "payments.example.com", "subset": "v2"}}]}]})
            )
        ),
    );
    eventually("subset v2 only", WAIT, || async {
        for _ in 0..20 {
            let got = get(bind, "payments.example.com").await;
            if got != (200, "pay-v2".to_string()) {
                return Err(format!("got {got:?}"));
            }
        }
        Ok(())
    })
    .await;
    let before = v1.hits();
    for _ in 0..50 {
        assert_eq!(
            get(bind, "payments.example.com").await,
            (200, "pay-v2".to_string())
        );
    }
    assert_eq!(v1.hits(), before, "v1 gets nothing once routed to v2");
    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_egress_hides_unlisted_services_and_shrinks_config() {
    let ip: IpAddr = loopback_ip().into();
    let a = Upstream::start("a-0", ip).await;
    let b = Upstream::start("b-0", ip).await;
    let c = Upstream::start("c-0", ip).await;
    let mut manifests = String::new();
    manifests.push_str(&service(NS, "a", 8080, "http"));
    manifests.push_str(&endpoints(NS, "a", "http", &[Endpoint::ready(&a)]));
    for (name, u) in [("b", &b), ("c", &c)] {
        manifests.push_str("---\n");
        manifests.push_str(&service(OTHER, name, 8080, "http"));
        manifests.push_str(&endpoints(OTHER, name, "http", &[Endpoint::ready(u)]));
    }
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-sc", strait.sidecar(NS, "client-sc", bind, false)).await;
    let b_host = format!("b.{OTHER}.svc.cluster.local");
    expect_status(bind, "a", 200).await;
    expect_status(bind, &b_host, 200).await;
    let before = clusters(&envoy).await;
    assert!(before.iter().any(|c| c.contains("b.other")), "{before:?}");

    // Only the proxy's own namespace: b and c vanish from its config.
    strait.write(
        "sidecar.yaml",
        &istio(
            "Sidecar",
            NS,
            "default",
            &json!({"egress": [{"hosts": ["./*"]}]}),
        ),
    );
    expect_status(bind, &b_host, 404).await;
    let b_hits = b.hits();
    assert_eq!(get(bind, &b_host).await.0, 404);
    assert_eq!(b.hits(), b_hits, "b is not reachable");
    assert_eq!(get(bind, "a").await, (200, "a-0".to_string()));
    let after = clusters(&envoy).await;
    let gone: Vec<&String> = before.iter().filter(|c| !after.contains(c)).collect();
    assert_eq!(
        gone,
        vec![
            "outbound|8080||b.other.svc.cluster.local",
            "outbound|8080||c.other.svc.cluster.local"
        ],
        "before {before:?}\nafter {after:?}"
    );
    assert!(after.len() < before.len());

    // REGISTRY_ONLY on the Sidecar: what it does not know is refused outright.
    strait.write(
        "sidecar.yaml",
        &istio(
            "Sidecar",
            NS,
            "default",
            &json!({"egress": [{"hosts": ["./*"]}],
                    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
        ),
    );
    expect_status(bind, &b_host, 502).await;
    assert_eq!(get(bind, "unknown.example.com").await.0, 502);
    assert_eq!(get(bind, "a").await, (200, "a-0".to_string()));

    // Removing the Sidecar brings everything back.
    strait.remove("sidecar.yaml");
    expect_status(bind, &b_host, 200).await;
    assert_eq!(clusters(&envoy).await, before);
    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_mesh_refuses_unknown_hosts() {
    let ip: IpAddr = loopback_ip().into();
    let a = Upstream::start("a-0", ip).await;
    let manifests = format!(
        "{}---\n{}{}",
        mesh_config("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY"),
        service(NS, "a", 8080, "http"),
        endpoints(NS, "a", "http", &[Endpoint::ready(&a)])
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-ro", strait.sidecar(NS, "client-ro", bind, false)).await;
    expect_status(bind, "a", 200).await;
    assert_eq!(get(bind, "unknown.example.com").await.0, 502);
    assert_eq!(get(bind, "10.1.2.3:8080").await.0, 502);
    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_gets_only_what_it_routes_to() {
    let ip: IpAddr = loopback_ip().into();
    let web = Upstream::start("web-0", ip).await;
    let mut manifests = String::new();
    manifests.push_str(&service(NS, "web", 8080, "http"));
    manifests.push_str(&endpoints(NS, "web", "http", &[Endpoint::ready(&web)]));
    for name in ["db", "cache", "billing"] {
        let u = Upstream::start(&format!("{name}-0"), ip).await;
        manifests.push_str("---\n");
        manifests.push_str(&service(NS, name, 8080, "http"));
        manifests.push_str(&endpoints(NS, name, "http", &[Endpoint::ready(&u)]));
    }
    manifests.push_str(&gateway(
        "istio-system",
        "public",
        &json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 18081, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
    ));
    manifests.push_str(&virtual_service(
        NS,
        "web",
        &json!({"hosts": ["shop.example.com"], "gateways": ["istio-system/public"],
                "http": [{"route": [{"destination": {"host": "web"}}]}]}),
    ));
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start(
        "gw-scope",
        strait.router("istio-system", "gw-0", bind, &[("istio", "ingressgateway")]),
    )
    .await;
    eventually("gateway routes", WAIT, || async {
        match http_client()
            .get(format!("http://{bind}:18081/"))
            .header("host", "shop.example.com")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(
        clusters(&envoy).await,
        vec!["outbound|8080||web.scope.svc.cluster.local"],
        "only the routed service"
    );

    // Route a second service: its cluster arrives.
    strait.write(
        "db-route.yaml",
        &virtual_service(
            NS,
            "db",
            &json!({"hosts": ["db.example.com"], "gateways": ["istio-system/public"],
                    "http": [{"route": [{"destination": {"host": "db"}}]}]}),
        ),
    );
    eventually("db cluster added", WAIT, || async {
        let c = clusters(&envoy).await;
        if c == [
            "outbound|8080||db.scope.svc.cluster.local",
            "outbound|8080||web.scope.svc.cluster.local",
        ] {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_logs_from_mesh_config() {
    let ip: IpAddr = loopback_ip().into();
    let a = Upstream::start("a-0", ip).await;
    let manifests = format!(
        "{}---\n{}{}",
        mesh_config("accessLogFile: /dev/stdout\naccessLogEncoding: JSON"),
        service(NS, "a", 8080, "http"),
        endpoints(NS, "a", "http", &[Endpoint::ready(&a)])
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-log", strait.sidecar(NS, "client-log", bind, false)).await;
    expect_status(bind, "a", 200).await;
    let _ = http_client()
        .get(format!("http://{bind}:8080/logged?x=1"))
        .header("host", "a")
        .send()
        .await;
    eventually("JSON access log line", WAIT, || async {
        let logs = envoy.logs();
        let entry = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .find(|v| v["path"] == "/logged?x=1");
        match entry {
            Some(v) => {
                if v["response_code"] == 200
                    && v["upstream_cluster"] == "outbound|8080||a.scope.svc.cluster.local"
                    && v["method"] == "GET"
                {
                    Ok(())
                } else {
                    Err(format!("unexpected entry {v}"))
                }
            }
            None => Err("no JSON entry yet".into()),
        }
    })
    .await;
    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}
