//! Locality load balancing through a stock Envoy: traffic stays in the client's zone, shifts
//! out of it in proportion as its endpoints are ejected (Envoy's overprovisioning factor),
//! fails over to the configured region, and follows `distribute` weights.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use strait_e2e::mesh::{destination_rule, service};
use strait_e2e::{Envoy, Strait, Upstream, eventually, http_client, loopback_ip};
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};

const NS: &str = "loc";
const HOST: &str = "api";

/// Nodes in two zones of region r1, and one zone in each of r2 and r3.
const NODES: &[(&str, &str, &str)] = &[
    ("node-a", "r1", "za"),
    ("node-b", "r1", "zb"),
    ("node-x", "r2", "zx"),
    ("node-y", "r3", "zy"),
];

fn nodes() -> String {
    let mut out = String::new();
    for (name, region, zone) in NODES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n\
             \x20   topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n"
        );
    }
    out
}

/// Pods on the given nodes and one EndpointSlice per upstream (each listens on its own port).
fn endpoints_on(eps: &[(&Upstream, &str)]) -> String {
    let mut out = String::new();
    for (u, node) in eps {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {NS}, labels: {{app: {HOST}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: app, image: app}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {pod}, namespace: {NS}, labels: {{kubernetes.io/service-name: {HOST}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\n\
             endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n\
             \x20 targetRef: {{kind: Pod, name: {pod}, namespace: {NS}}}\n",
            pod = u.name,
            ip = u.ip(),
            port = u.port(),
        );
    }
    out
}

/// A sidecar in `locality` whose outbound listeners bind `bind`.
fn client(strait: &Strait, pod: &str, bind: IpAddr, locality: &str) -> serde_json::Value {
    bootstrap(&BootstrapOptions {
        xds_address: strait.xds_addr().to_string(),
        node_id: format!("sidecar~{bind}~{pod}.{NS}~{NS}.svc.cluster.local"),
        node_cluster: format!("{pod}.{NS}"),
        namespace: Some(NS.to_string()),
        outbound_bind: Some(bind),
        locality: Some(strait_model::Locality::parse(locality)),
        ..Default::default()
    })
}

/// Sends `n` requests one after another; returns how many requests each upstream received
/// (in the order of `ups`) and the failures the client saw.
async fn spread(bind: IpAddr, n: usize, ups: &[&Upstream]) -> (Vec<u64>, Vec<String>) {
    let before: Vec<u64> = ups.iter().map(|u| u.hits()).collect();
    let mut failed = Vec::new();
    let http = http_client();
    for _ in 0..n {
        match http
            .get(format!("http://{bind}:8080/"))
            .header("host", HOST)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => failed.push(format!(
                "{} from {:?}",
                r.status(),
                r.headers().get("x-upstream")
            )),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let hits = ups.iter().zip(before).map(|(u, b)| u.hits() - b).collect();
    (hits, failed)
}

async fn ejected(envoy: &Envoy) -> u64 {
    let cluster = format!(
        "cluster.outbound|8080||{HOST}.{NS}.svc.cluster.local.outlier_detection.ejections_active"
    );
    envoy
        .stats("ejections_active")
        .await
        .into_iter()
        .find(|(k, _)| *k == cluster)
        .map(|(_, v)| v)
        .unwrap_or(0)
}

/// Sends requests until Envoy has ejected `want` hosts and `gone` no longer receives any.
async fn eject(envoy: &Envoy, bind: IpAddr, want: u64, gone: &Upstream) {
    let http = http_client();
    eventually("hosts ejected", Duration::from_secs(20), || async {
        let _ = http
            .get(format!("http://{bind}:8080/"))
            .header("host", HOST)
            .send()
            .await;
        match ejected(envoy).await {
            n if n >= want => Ok(()),
            n => Err(format!("{n} of {want} ejected")),
        }
    })
    .await;
    // The admin stat moves on Envoy's main thread; the load balancer can take up to an
    // outlier detection interval to stop picking the host (seen with the last host of a
    // priority). Measure only once it has.
    eventually(
        "ejected host out of rotation",
        Duration::from_secs(10),
        || async {
            let before = gone.hits();
            let _ = spread(bind, 20, &[]).await;
            match gone.hits() - before {
                0 => Ok(()),
                n => Err(format!("{} still got {n} of 20", gone.name)),
            }
        },
    )
    .await;
}

async fn wait_routable(bind: IpAddr) {
    let http = http_client();
    eventually("api routable", Duration::from_secs(15), || async {
        match http
            .get(format!("http://{bind}:8080/"))
            .header("host", HOST)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

fn share(part: u64, total: u64) -> f64 {
    part as f64 / total.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_shifts_in_proportion_then_leaves_the_zone() {
    let ip: IpAddr = loopback_ip().into();
    let a1 = Upstream::start("api-a1", ip).await;
    let a2 = Upstream::start("api-a2", ip).await;
    let b1 = Upstream::start("api-b1", ip).await;
    let b2 = Upstream::start("api-b2", ip).await;
    let x1 = Upstream::start("api-x1", ip).await;
    let manifests = format!(
        "{}---\n{}{}{}",
        nodes(),
        service(NS, HOST, 8080, "http"),
        endpoints_on(&[
            (&a1, "node-a"),
            (&a2, "node-a"),
            (&b1, "node-b"),
            (&b2, "node-b"),
            (&x1, "node-x"),
        ]),
        destination_rule(
            NS,
            HOST,
            &json!({"host": HOST, "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN"},
                "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                    "baseEjectionTime": "60s", "maxEjectionPercent": 100}}})
        ),
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-a", client(&strait, "client-a", bind, "r1/za")).await;
    wait_routable(bind).await;
    let all = [&a1, &a2, &b1, &b2, &x1];

    // Everything healthy: the client's own zone takes all of it.
    let (hits, failed) = spread(bind, 200, &all).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        hits[0] + hits[1],
        200,
        "zone za keeps all traffic: {hits:?}"
    );

    // Half of zone za ejected: with overprovisioning 1.4 it keeps 70%, zone zb gets 30%,
    // and region r2 (lower priority still) nothing.
    a1.set_status(503);
    eject(&envoy, bind, 1, &a1).await;
    let (hits, failed) = spread(bind, 400, &all).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(hits[0], 0, "ejected host gets nothing: {hits:?}");
    let local = share(hits[1], 400);
    assert!(
        (0.6..=0.8).contains(&local),
        "za keeps ~70%, got {local:.2}: {hits:?}"
    );
    assert_eq!(hits[4], 0, "r2 untouched while r1 has capacity: {hits:?}");

    // All of zone za gone: zone zb, same region, takes everything.
    a2.set_status(503);
    eject(&envoy, bind, 2, &a2).await;
    let (hits, failed) = spread(bind, 200, &all).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(hits[2] + hits[3], 200, "zb takes over: {hits:?}");

    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_to_the_configured_region() {
    let ip: IpAddr = loopback_ip().into();
    let a = Upstream::start("api-a", ip).await;
    let x = Upstream::start("api-x", ip).await;
    let y = Upstream::start("api-y", ip).await;
    let manifests = format!(
        "{}---\n{}{}{}",
        nodes(),
        service(NS, HOST, 8080, "http"),
        endpoints_on(&[(&a, "node-a"), (&x, "node-x"), (&y, "node-y")]),
        destination_rule(
            NS,
            HOST,
            &json!({"host": HOST, "trafficPolicy": {
                "loadBalancer": {"localityLbSetting": {"failover": [{"from": "r1", "to": "r3"}]}},
                "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                    "baseEjectionTime": "60s", "maxEjectionPercent": 100}}})
        ),
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client-f", client(&strait, "client-f", bind, "r1/za")).await;
    wait_routable(bind).await;
    let all = [&a, &x, &y];
    let (hits, _) = spread(bind, 100, &all).await;
    assert_eq!(hits[0], 100, "local first: {hits:?}");

    a.set_status(503);
    eject(&envoy, bind, 1, &a).await;
    let (hits, failed) = spread(bind, 200, &all).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(hits[2], 200, "r1 fails over to r3, not r2: {hits:?}");

    strait.assert_no_nacks();
    envoy.assert_no_rejections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_weights_traffic_by_locality() {
    let ip: IpAddr = loopback_ip().into();
    let a = Upstream::start("api-a", ip).await;
    let b = Upstream::start("api-b", ip).await;
    let manifests = format!(
        "{}---\n{}{}{}",
        nodes(),
        service(NS, HOST, 8080, "http"),
        endpoints_on(&[(&a, "node-a"), (&b, "node-b")]),
        destination_rule(
            NS,
            HOST,
            &json!({"host": HOST, "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                "distribute": [{"from": "r1/za/*", "to": {"r1/za/*": 80, "r1/zb/*": 20}}]}}}})
        ),
    );
    let strait = Strait::start_with(|dir| {
        std::fs::write(dir.join("mesh.yaml"), &manifests).expect("write");
    })
    .await;
    // One client the rule is for, one (in zone zb) it is not.
    let bind_a: IpAddr = loopback_ip().into();
    let bind_b: IpAddr = loopback_ip().into();
    let ea = Envoy::start("client-da", client(&strait, "client-da", bind_a, "r1/za")).await;
    let eb = Envoy::start("client-db", client(&strait, "client-db", bind_b, "r1/zb")).await;
    wait_routable(bind_a).await;
    wait_routable(bind_b).await;

    let (hits, failed) = spread(bind_a, 600, &[&a, &b]).await;
    assert!(failed.is_empty(), "{failed:?}");
    let za = share(hits[0], 600);
    assert!((0.72..=0.88).contains(&za), "80/20, got {za:.2}: {hits:?}");

    // No rule for zb: both localities weigh what their endpoints weigh.
    let (hits, failed) = spread(bind_b, 600, &[&a, &b]).await;
    assert!(failed.is_empty(), "{failed:?}");
    let za = share(hits[0], 600);
    assert!((0.4..=0.6).contains(&za), "even, got {za:.2}: {hits:?}");

    strait.assert_no_nacks();
    ea.assert_no_rejections().await;
    eb.assert_no_rejections().await;
}
