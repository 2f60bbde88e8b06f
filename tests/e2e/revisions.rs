//! Two control-plane revisions side by side, and proxies following a revision tag.
//!
//! Two strait processes' worth of servers (`stable` and `canary`) serve the same config
//! directory. A TCP forwarder stands in for the tag's Service (`strait-tag-prod`): it sends new
//! connections to the revision the tag points at, as kube-proxy would once the Service's
//! endpoints change. Stock Envoys bootstrapped through the tag move between revisions when the
//! tag moves, without a restart, and a steady stream of requests through them sees no failure;
//! an Envoy pinned to `stable` stays there, and keeps serving when `stable` is stopped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait::serve::{ServeConfig, Server, start};
use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{Envoy, Upstream, eventually, http_client, loopback_ip, write_atomic};
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};
use strait_xds::Syncz;

const NS: &str = "shop";
const SYS: &str = "istio-system";
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A stand-in for a Kubernetes Service: new connections go to wherever it points now.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = tokio::net::TcpListener::bind((loopback_ip(), 0))
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().expect("address");
        let target = Arc::new(Mutex::new(target));
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let dest = *to.lock().expect("target");
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(dest).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { addr, target, task }
    }

    fn point(&self, to: SocketAddr) {
        *self.target.lock().expect("target") = to;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The tag `prod` as `strait tag set` leaves it: its Service selects `rev`'s control-plane
/// pods, and (as the EndpointSlice controller would) its endpoints are the pods of
/// `ready_rev`, ready.
fn tag_manifest(rev: &str, ready_rev: &str, ips: &BTreeMap<&str, IpAddr>) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\n\
         metadata: {{name: strait-tag-prod, namespace: {SYS}, labels: {{istio.io/tag: prod, istio.io/rev: {rev}, app: strait}}}}\n\
         spec: {{selector: {{app: strait, strait.io/rev: {rev}}}, clusterIP: 10.96.0.99, ports: [{{name: grpc-xds, port: 15010, targetPort: 15010}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: strait-tag-prod-x, namespace: {SYS}, labels: {{kubernetes.io/service-name: strait-tag-prod}}}}\n\
         addressType: IPv4\nports: [{{name: grpc-xds, port: 15010, protocol: TCP}}]\n\
         endpoints:\n- addresses: [{ip}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: strait-{ready_rev}-0, namespace: {SYS}}}\n",
        ip = ips[ready_rev],
    );
    for (r, ip) in ips {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: strait-{r}-0, namespace: {SYS}, labels: {{app: strait, strait.io/rev: {r}, sidecar.istio.io/inject: 'false'}}}}\n\
             spec: {{containers: [{{name: strait, image: strait}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
        ));
    }
    out
}

fn sidecar(
    xds: SocketAddr,
    pod: &str,
    bind: IpAddr,
    delta: bool,
    tag: Option<&str>,
) -> serde_json::Value {
    let mut metadata = BTreeMap::from([("STRAIT_REVISION".to_string(), "stable".to_string())]);
    if let Some(t) = tag {
        metadata.insert("STRAIT_TAG".to_string(), t.to_string());
    }
    bootstrap(&BootstrapOptions {
        xds_address: xds.to_string(),
        node_id: format!("sidecar~{bind}~{pod}.{NS}~{NS}.svc.cluster.local"),
        node_cluster: format!("{pod}.{NS}"),
        namespace: Some(NS.to_string()),
        outbound_bind: Some(bind),
        delta,
        metadata,
        ..Default::default()
    })
}

async fn revision(dir: &std::path::Path, rev: &str) -> Server {
    let mut cfg = ServeConfig::local(dir);
    cfg.revision = rev.to_string();
    cfg.poll = Duration::from_millis(250);
    cfg.tag_move_spread = Duration::from_secs(2);
    cfg.tag_move_delay = Duration::from_secs(1);
    start(cfg).await.expect("strait starts")
}

/// Which proxies (by pod name) each revision serves, all of them fully synced.
fn placement(planes: &[&Syncz]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for z in planes {
        let mut pods: Vec<String> = z
            .proxies
            .iter()
            .filter(|p| {
                ["CDS", "LDS", "EDS", "RDS"]
                    .iter()
                    .all(|t| p.types.get(*t).is_some_and(|s| s.state == "SYNCED"))
            })
            .map(|p| {
                let pod = p.proxy.split('~').nth(2).unwrap_or("?");
                pod.split('.').next().unwrap_or("?").to_string()
            })
            .collect();
        pods.sort();
        out.insert(z.revision.clone(), pods);
    }
    out
}

fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(r, pods)| (r.to_string(), pods.iter().map(|p| p.to_string()).collect()))
        .collect()
}

/// Requests sent through one Envoy, and how many failed.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn steady_traffic(
    bind: IpAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<Traffic>, tokio::task::JoinHandle<()>) {
    let t = Arc::new(Traffic::default());
    let tally = t.clone();
    let task = tokio::spawn(async move {
        let client = http_client();
        while !stop.load(Ordering::Relaxed) {
            let r = client
                .get(format!("http://{bind}:8080/steady"))
                .header("host", "web.shop")
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().as_u16() == 200 => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    let mut e = tally.errors.lock().expect("errors");
                    e.push(format!("HTTP {}", resp.status()));
                }
                Err(err) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.errors.lock().expect("errors").push(err.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (t, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_follow_the_tag_between_revisions_without_restart_or_failed_requests() {
    strait_e2e::init_logs();
    let web = Upstream::start("web-0", loopback_ip().into()).await;
    let dir = tempfile::tempdir().expect("config directory");
    let ips = BTreeMap::from([
        ("canary", IpAddr::from(loopback_ip())),
        ("stable", IpAddr::from(loopback_ip())),
    ]);
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!(
            "{}{}",
            service(NS, "web", 8080, "http"),
            endpoints(NS, "web", "http", &[Endpoint::ready(&web)])
        ),
    )
    .expect("write mesh");
    let tag_file = dir.path().join("tag.yaml");
    std::fs::write(&tag_file, tag_manifest("stable", "stable", &ips)).expect("write tag");

    let mut stable = Some(revision(dir.path(), "stable").await);
    let canary = revision(dir.path(), "canary").await;
    let stable_xds = stable.as_ref().expect("stable").xds_addr;
    let tag_service = Forwarder::start(stable_xds).await;

    // Two proxies injected through the tag (one per Envoy version under test, one SotW, one
    // Delta), one pinned to `stable`.
    let versions = strait_e2e::envoy::all_versions();
    let newest = versions[0].clone();
    let oldest = versions.last().cloned().unwrap_or_else(|| newest.clone());
    let (bind_a, bind_b, bind_p) = (
        IpAddr::from(loopback_ip()),
        IpAddr::from(loopback_ip()),
        IpAddr::from(loopback_ip()),
    );
    let tagged_a = Envoy::start_with(
        "tagged-a",
        &newest,
        &mut sidecar(tag_service.addr, "tagged-a", bind_a, false, Some("prod")),
    )
    .await;
    let tagged_b = Envoy::start_with(
        "tagged-b",
        &oldest,
        &mut sidecar(tag_service.addr, "tagged-b", bind_b, true, Some("prod")),
    )
    .await;
    let pinned = Envoy::start_with(
        "pinned",
        &newest,
        &mut sidecar(stable_xds, "pinned", bind_p, false, None),
    )
    .await;
    for e in [&tagged_a, &tagged_b, &pinned] {
        e.wait_live().await;
    }

    // The two revisions' delivery state (a stopped revision's is empty).
    let registries = [
        canary.sync.clone(),
        stable.as_ref().expect("stable").sync.clone(),
    ];
    let syncz = || registries.iter().map(|r| r.syncz()).collect::<Vec<_>>();
    let wait_for = |want: BTreeMap<String, Vec<String>>, what: &'static str| {
        let syncz = &syncz;
        async move {
            eventually(what, MOVE_TIMEOUT, || {
                let want = want.clone();
                async move {
                    let got = placement(&syncz().iter().collect::<Vec<_>>());
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("placement {got:?}"))
                    }
                }
            })
            .await;
        }
    };

    wait_for(
        expect(&[
            ("canary", &[]),
            ("stable", &["pinned", "tagged-a", "tagged-b"]),
        ]),
        "every proxy on stable",
    )
    .await;
    // proxy-status shows who follows which tag, on which revision.
    let table = strait::proxy_status::table(&syncz());
    let row = |pod: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("~{pod}.")))
            .unwrap_or_else(|| panic!("no row for {pod} in\n{table}"))
            .to_string()
    };
    let cols = |pod: &str| -> Vec<String> {
        let r = row(pod);
        r.split_whitespace()
            .skip(6)
            .take(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(cols("tagged-a"), ["stable", "prod"], "{table}");
    assert_eq!(cols("pinned"), ["stable", "-"], "{table}");

    async fn modified(e: &Envoy) -> (u64, u64) {
        (
            e.stat("listener_manager.listener_modified").await,
            e.stat("listener_manager.listener_removed").await,
        )
    }
    let before_a = modified(&tagged_a).await;
    let before_b = modified(&tagged_b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<(&str, Arc<Traffic>, tokio::task::JoinHandle<()>)> = [
        ("tagged-a", bind_a),
        ("tagged-b", bind_b),
        ("pinned", bind_p),
    ]
    .into_iter()
    .map(|(name, bind)| {
        let (t, task) = steady_traffic(bind, stop.clone());
        (name, t, task)
    })
    .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The tag Service moves to canary, but canary is not ready behind it yet: nobody moves.
    write_atomic(&tag_file, &tag_manifest("canary", "stable", &ips));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let planes = syncz();
    assert_eq!(
        placement(&planes.iter().collect::<Vec<_>>()),
        expect(&[
            ("canary", &[]),
            ("stable", &["pinned", "tagged-a", "tagged-b"])
        ]),
        "no proxy moves before the new revision is ready"
    );

    // canary's pod is ready behind the tag Service: the tagged proxies move, the pinned
    // one stays.
    tag_service.point(canary.xds_addr);
    write_atomic(&tag_file, &tag_manifest("canary", "canary", &ips));
    wait_for(
        expect(&[
            ("canary", &["tagged-a", "tagged-b"]),
            ("stable", &["pinned"]),
        ]),
        "tagged proxies on canary",
    )
    .await;
    let table = strait::proxy_status::table(&syncz());
    assert!(
        table
            .lines()
            .any(|l| l.contains("~tagged-b.") && l.contains(" canary ") && l.contains(" prod ")),
        "{table}"
    );

    // Roll back: the tag moves back, and so do they.
    tag_service.point(stable_xds);
    write_atomic(&tag_file, &tag_manifest("stable", "stable", &ips));
    wait_for(
        expect(&[
            ("canary", &[]),
            ("stable", &["pinned", "tagged-a", "tagged-b"]),
        ]),
        "tagged proxies back on stable",
    )
    .await;

    // Forward again, then the old revision goes away.
    tag_service.point(canary.xds_addr);
    write_atomic(&tag_file, &tag_manifest("canary", "canary", &ips));
    wait_for(
        expect(&[
            ("canary", &["tagged-a", "tagged-b"]),
            ("stable", &["pinned"]),
        ]),
        "tagged proxies on canary again",
    )
    .await;
    stable
        .take()
        .expect("stable")
        .stop()
        .await
        .expect("stable stops");
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for(
        expect(&[("canary", &["tagged-a", "tagged-b"]), ("stable", &[])]),
        "tagged proxies stay on canary",
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for (name, t, task) in traffic {
        task.await.expect("traffic task");
        let ok = t.ok.load(Ordering::Relaxed);
        let failed = t.failed.load(Ordering::Relaxed);
        eprintln!("{name}: {ok} requests, {failed} failed");
        assert!(ok > 100, "{name}: only {ok} requests went through");
        assert_eq!(
            failed,
            0,
            "{name}: {failed} of {} requests failed: {:?}",
            ok + failed,
            t.errors.lock().expect("errors")
        );
    }
    // The same Envoy processes throughout, and none of their listeners changed or drained.
    for (e, before) in [(&tagged_a, before_a), (&tagged_b, before_b)] {
        assert_eq!(modified(e).await, before, "listeners modified or removed");
        e.assert_no_rejections().await;
    }
    for e in [tagged_a, tagged_b, pinned] {
        let mut e = e;
        assert!(e.is_running(), "Envoy exited:\n{}", e.logs());
    }
    for p in &canary.sync.syncz().proxies {
        for (t, s) in &p.types {
            assert!(s.nack.is_none(), "{} NACKed {t}: {:?}", p.proxy, s.nack);
        }
    }
    drop(web);
}
