//! `strait proxy-status --all-revisions`: every control-plane pod asked through the API
//! server's pod proxy (the in-process fake API server forwards to the pods' IPs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use strait::serve::{ServeConfig, start};
use strait_sources::kube::fake::FakeApiServer;

fn pod_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        (std::process::id() % 200 + 20) as u8,
        251,
        n,
    ))
}

fn control_plane_pod(rev: &str, ip: IpAddr) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("strait-{rev}-0"), "namespace": "istio-system",
                     "labels": {"app": "strait", "strait.io/rev": rev}},
        "spec": {"containers": [{"name": "strait", "image": "strait"}]},
        "status": {"phase": "Running", "podIP": ip.to_string()},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathers_every_revision_through_the_api_server() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("config directory");
    let mut servers = Vec::new();
    for (n, rev) in [(1, "stable"), (2, "canary")] {
        let ip = pod_ip(n);
        let mut cfg = ServeConfig::local(dir.path());
        cfg.revision = rev.to_string();
        cfg.debug_addr = SocketAddr::new(ip, strait::proxy_status::DEBUG_PORT);
        servers.push(start(cfg).await.expect("strait starts"));
        fake.apply(control_plane_pod(rev, ip));
    }
    // A pod that does not answer: reported, the others still shown.
    fake.apply(control_plane_pod("gone", pod_ip(3)));
    // Not a control-plane pod.
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "istio-system", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web"}]},
        "status": {"phase": "Running", "podIP": pod_ip(4).to_string()},
    }));
    let kc = dir.path().join("kubeconfig.yaml");
    std::fs::write(&kc, fake.kubeconfig("fake")).expect("write kubeconfig");

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["proxy-status", "--all-revisions", "--json", "--kubeconfig"])
            .arg(&kc)
            .env_remove("KUBECONFIG")
            .output(),
    )
    .await
    .expect("in time")
    .expect("run strait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let planes: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("JSON document");
    let mut revisions: Vec<&str> = planes
        .iter()
        .filter_map(|p| p["revision"].as_str())
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, ["canary", "stable"]);
    assert!(
        stderr.contains("strait-gone-0"),
        "the silent pod is reported: {stderr}"
    );
    // One request per answering pod (the client retries the silent one); none to web-0.
    let proxied = |pod: &str| {
        fake.requests()
            .into_iter()
            .filter(|r| {
                r.path
                    .contains(&format!("/pods/{pod}:15014/proxy/debug/syncz"))
            })
            .count()
    };
    assert_eq!(proxied("strait-stable-0"), 1);
    assert_eq!(proxied("strait-canary-0"), 1);
    assert!(proxied("strait-gone-0") >= 1);
    assert_eq!(proxied("web-0"), 0);
    for s in servers {
        s.stop().await.expect("clean stop");
    }
}
