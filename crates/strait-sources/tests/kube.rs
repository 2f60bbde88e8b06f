//! The Kubernetes source against the in-process fake API server: events drive a real
//! `MeshIndex`, and the tests check the snapshots it publishes (one after every event, so a
//! state that a relist would show for a moment cannot go unseen).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strait_api::Kind;
use strait_model::{
    ClusterEvent, ConfigKey, Event, IndexOptions, MeshIndex, MeshSnapshot, ServiceKey,
};
use strait_sources::kube::fake::{FakeApiServer, FakeOptions, GoneMode};
use strait_sources::kube::{
    KubeCluster, KubeConnect, KubeMetrics, KubeOptions, KubeSource, KubeStatus,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn fast_options() -> KubeOptions {
    KubeOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        backoff_reset: Duration::from_secs(5),
        rediscover: Duration::from_millis(200),
        sync_timeout: Duration::from_secs(1),
        ..KubeOptions::default()
    }
}

type Invariant = Box<dyn Fn(&MeshSnapshot) -> Result<(), String>>;

/// A running source and the index it feeds.
struct Harness {
    rx: mpsc::Receiver<ClusterEvent>,
    index: MeshIndex,
    status: KubeStatus,
    tasks: Vec<JoinHandle<()>>,
    /// Every event received, in order.
    events: Vec<ClusterEvent>,
    synced: usize,
    mesh: Arc<MeshSnapshot>,
    invariant: Option<Invariant>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Harness {
    async fn start(clusters: &[(&str, &FakeApiServer)], opts: KubeOptions) -> Harness {
        init_logs();
        let revision = opts.revision.clone();
        let clusters: Vec<KubeCluster> = clusters
            .iter()
            .map(|(id, fake)| KubeCluster {
                id: id.to_string(),
                connect: KubeConnect::Url(fake.url()),
            })
            .collect();
        let source = KubeSource::connect(&clusters, opts, Arc::new(KubeMetrics::default()))
            .await
            .expect("clients");
        let status = source.status();
        let (tx, rx) = mpsc::channel(1024);
        let tasks = source.spawn(tx);
        let mut index = MeshIndex::new(IndexOptions {
            revision,
            ..IndexOptions::default()
        });
        let (mesh, _) = index.snapshot();
        Harness {
            rx,
            index,
            status,
            tasks,
            events: Vec::new(),
            synced: 0,
            mesh,
            invariant: None,
        }
    }

    /// Applies one event, publishes a snapshot and checks the invariant on it.
    fn apply(&mut self, e: ClusterEvent) {
        if matches!(e.event, Event::Synced) {
            self.synced += 1;
        }
        self.events.push(e.clone());
        self.index.handle(e);
        if self.index.has_changes() {
            self.mesh = self.index.snapshot().0;
            if let Some(check) = &self.invariant
                && let Err(e) = check(&self.mesh)
            {
                panic!(
                    "invariant broken at mesh version {}: {e}",
                    self.mesh.version
                );
            }
        }
    }

    /// Receives events until `check` holds.
    async fn until(&mut self, what: &str, check: impl Fn(&Harness) -> bool) {
        // Some conditions are on the status, not on events: look again now and then.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(self) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{what}: not true after {WAIT:?}; status: {:#?}",
                    self.status.clusters()
                );
            }
            match tokio::time::timeout(Duration::from_millis(50), self.rx.recv()).await {
                Ok(Some(e)) => self.apply(e),
                Ok(None) => panic!("{what}: the source stopped"),
                Err(_) => {}
            }
        }
    }

    /// Receives whatever arrives within `d`.
    async fn settle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.apply(e);
        }
    }

    async fn synced(&mut self, clusters: usize) {
        self.until("synced", |h| h.synced >= clusters).await;
    }

    fn has_service(&self, ns: &str, name: &str) -> bool {
        self.mesh.services.contains_key(&ServiceKey::new(ns, name))
    }

    fn services(&self) -> BTreeSet<String> {
        self.mesh
            .services
            .keys()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect()
    }

    fn addresses(&self, ns: &str, name: &str) -> Vec<String> {
        let mut a: Vec<String> = self
            .mesh
            .endpoints_of(&ServiceKey::new(ns, name))
            .map(|e| e.addresses().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        a.sort();
        a
    }

    fn has_vs(&self, ns: &str, name: &str) -> bool {
        self.mesh
            .config
            .virtual_services
            .contains_key(&ConfigKey::new(ns, name))
    }

    /// The events received for `kind`, as short strings.
    fn history(&self, kind: Kind) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::Apply(o) if o.kind() == kind => {
                    Some(format!("apply {}", o.reference().name))
                }
                Event::Delete(r) if r.kind == kind => Some(format!("delete {}", r.name)),
                Event::Reset { kinds, objects } if kinds.contains(&kind) => {
                    let mut n: Vec<String> = objects.iter().map(|o| o.reference().name).collect();
                    n.sort();
                    Some(format!("reset {}", n.join(",")))
                }
                _ => None,
            })
            .collect()
    }

    fn kind_status(&self, cluster: &str, kind: Kind) -> strait_sources::kube::KindStatus {
        self.status
            .cluster(cluster)
            .and_then(|c| c.kinds.get(&kind).cloned())
            .unwrap_or_else(|| panic!("no status for {cluster} {kind}"))
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"istio-injection": "enabled"}}})
}

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"}},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name},
                 "ports": [{"name": "http", "port": port, "targetPort": 8080}]},
        "status": {"loadBalancer": {}},
    })
}

fn slice(ns: &str, name: &str, service: &str, eps: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, ready)| {
            json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": "node-1",
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("pod-{ip}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn pod(ns: &str, ip: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{ip}"), "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "app:1",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": zone}},
        "status": {"images": [{"names": ["registry/huge:1"], "sizeBytes": 1}]}})
}

fn virtual_service(ns: &str, name: &str, host: &str, weight: i64, rev: Option<&str>) -> Value {
    let mut labels = json!({});
    if let Some(r) = rev {
        labels["istio.io/rev"] = json!(r);
    }
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}, "weight": weight}]}]},
    })
}

#[tokio::test]
async fn objects_created_updated_and_deleted_reach_the_index() {
    let fake = FakeApiServer::start().await;
    fake.apply(namespace("shop"));
    fake.apply(node("node-1", "zone-a"));
    fake.apply(service("shop", "web", 80));
    fake.apply(pod("shop", "10.0.0.1", "web"));
    fake.apply(slice("shop", "web-1", "web", &[("10.0.0.1", true)]));
    fake.apply(virtual_service("shop", "web", "web", 100, None));
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "connectTimeout: 7s\n", "meshNetworks": "networks: {}"},
    }));
    fake.apply(json!({
        "apiVersion": "policy.strait.io/v1alpha1", "kind": "LocalRateLimit",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"host": "web", "limit": {"requests": 100, "per": "1s"}},
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "cert", "namespace": "shop"},
        "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"},
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {"name": "sh.helm.release.v1.x.v1", "namespace": "shop"},
        "data": {"release": "aHVnZQ=="},
    }));

    let mut h = Harness::start(&[("Kubernetes", &fake)], fast_options()).await;
    h.synced(1).await;
    assert_eq!(h.synced, 1, "one Synced per cluster");
    assert!(h.has_service("shop", "web"));
    assert_eq!(h.addresses("shop", "web"), ["10.0.0.1"]);
    assert!(h.has_vs("shop", "web"));
    assert!(
        h.mesh
            .config
            .destination_rules
            .contains_key(&ConfigKey::new("shop", "web"))
    );
    assert_eq!(
        h.mesh.mesh.connect_timeout.map(|d| d.to_string()),
        Some("7s".to_string())
    );
    assert!(
        h.mesh
            .config
            .local_rate_limits
            .contains_key(&ConfigKey::new("shop", "web"))
    );
    assert!(h.mesh.secret("shop", "cert").is_some());
    assert!(
        h.mesh.secret("shop", "sh.helm.release.v1.x.v1").is_none(),
        "Helm release secrets are not watched"
    );
    let ep = &h
        .mesh
        .endpoints_of(&ServiceKey::new("shop", "web"))
        .expect("endpoints")
        .groups[0]
        .endpoints[0];
    assert_eq!(ep.locality.zone, "zone-a");
    assert_eq!(ep.cluster.as_ref(), "Kubernetes");
    // Every initial list arrived as one Reset of its kind.
    assert_eq!(h.history(Kind::Service), ["reset web"]);

    // Changes.
    fake.apply(slice(
        "shop",
        "web-1",
        "web",
        &[("10.0.0.1", true), ("10.0.0.2", true)],
    ));
    h.until("second endpoint", |h| h.addresses("shop", "web").len() == 2)
        .await;
    fake.apply(slice(
        "shop",
        "web-1",
        "web",
        &[("10.0.0.1", true), ("10.0.0.2", false)],
    ));
    h.until("endpoint not ready", |h| {
        h.mesh
            .endpoints_of(&ServiceKey::new("shop", "web"))
            .is_some_and(|e| {
                e.groups[0].endpoints.iter().any(|e| {
                    e.address.to_string() == "10.0.0.2" && e.health != strait_model::Health::Healthy
                })
            })
    })
    .await;
    fake.apply(service("shop", "cart", 8080));
    h.until("new service", |h| h.has_service("shop", "cart"))
        .await;
    fake.delete("networking.istio.io/v1", "VirtualService", "shop", "web");
    h.until("VirtualService deleted", |h| !h.has_vs("shop", "web"))
        .await;
    fake.delete("v1", "Service", "shop", "cart");
    h.until("service deleted", |h| !h.has_service("shop", "cart"))
        .await;
    assert_eq!(
        h.history(Kind::Service),
        ["reset web", "apply cart", "delete cart"]
    );

    // Load: one list and one watch per kind, nothing per change, nothing while idle.
    h.until("every watch started", |_| {
        fake.requests().iter().filter(|r| r.is_watch()).count() >= 13
    })
    .await;
    h.settle(Duration::from_millis(500)).await;
    for plural in [
        "namespaces",
        "nodes",
        "services",
        "pods",
        "endpointslices",
        "secrets",
        "configmaps",
        "virtualservices",
        "destinationrules",
        "gateways",
        "serviceentries",
        "sidecars",
        "localratelimits",
    ] {
        assert_eq!(fake.request_counts(plural), (1, 1), "{plural}");
    }
    assert_eq!(fake.request_counts("endpoints"), (0, 0));
    let cm_watch = fake
        .requests()
        .into_iter()
        .find(|r| r.plural() == "configmaps" && r.is_watch())
        .expect("configmap watch");
    assert_eq!(
        cm_watch.path, "/api/v1/namespaces/istio-system/configmaps",
        "only the system namespace's ConfigMaps are watched"
    );
    let s = h.status.cluster("Kubernetes").expect("status");
    assert!(s.connected && s.synced, "{s:?}");
    assert_eq!(
        s.kinds[&Kind::VirtualService].resource.as_deref(),
        Some("networking.istio.io/v1 virtualservices")
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_without_losing_or_duplicating_events() {
    let fake = FakeApiServer::start().await;
    fake.apply(service("a", "s1", 80));
    fake.apply(service("a", "s3", 80));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    h.until("the service watch started", |_| {
        fake.request_counts("services").1 == 1
    })
    .await;
    assert_eq!(fake.request_counts("services"), (1, 1));

    // The connection breaks; meanwhile the cluster changes.
    fake.drop_connections();
    fake.apply(service("a", "s2", 80));
    fake.delete("v1", "Service", "a", "s1");
    fake.apply(service("a", "s3", 81));
    h.until("changes after the drop", |h| {
        h.services() == BTreeSet::from(["a/s2".to_string(), "a/s3".to_string()])
            && h.mesh.services[&ServiceKey::new("a", "s3")].ports[0].port == 81
    })
    .await;
    h.settle(Duration::from_millis(300)).await;
    assert_eq!(
        h.history(Kind::Service),
        ["reset s1,s3", "apply s2", "delete s1", "apply s3"],
        "each change exactly once, no relist"
    );
    assert_eq!(h.kind_status("c", Kind::Service).relists, 0);
    // The watch resumed from the resource version it had reached.
    let resumed: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.plural() == "services" && r.is_watch())
        .filter_map(|r| r.query.get("resourceVersion").cloned())
        .collect();
    assert!(resumed.len() >= 2, "{resumed:?}");
    assert!(resumed.iter().all(|rv| rv != "0" && !rv.is_empty()));
}

async fn relist_is_atomic(gone: GoneMode) {
    let fake = FakeApiServer::start_with(FakeOptions {
        gone,
        ..FakeOptions::default()
    })
    .await;
    for i in 0..30 {
        fake.apply(service("a", &format!("stable-{i}"), 80));
    }
    for i in 0..5 {
        fake.apply(service("a", &format!("old-{i}"), 80));
    }
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    // Every snapshot from now on holds every stable service.
    h.invariant = Some(Box::new(|m: &MeshSnapshot| {
        for i in 0..30 {
            if !m
                .services
                .contains_key(&ServiceKey::new("a", &format!("stable-{i}")))
            {
                return Err(format!("stable-{i} missing"));
            }
        }
        Ok(())
    }));
    h.events.clear();
    // Nothing awaits between these steps, so the watches miss the changes and then find their
    // resource version compacted away: 410 Gone, relist.
    fake.drop_connections();
    for i in 0..5 {
        fake.delete("v1", "Service", "a", &format!("old-{i}"));
        fake.apply(service("a", &format!("new-{i}"), 80));
    }
    fake.apply(service("a", "stable-0", 99));
    fake.compact();
    h.until("relisted", |h| {
        (0..5).all(|i| h.has_service("a", &format!("new-{i}")))
            && (0..5).all(|i| !h.has_service("a", &format!("old-{i}")))
    })
    .await;
    let history = h.history(Kind::Service);
    assert_eq!(history.len(), 1, "{history:?}");
    let mut expected: Vec<String> = (0..5)
        .map(|i| format!("new-{i}"))
        .chain((0..30).map(|i| format!("stable-{i}")))
        .collect();
    expected.sort();
    assert_eq!(
        history[0],
        format!("reset {}", expected.join(",")),
        "the relist is one complete Reset"
    );
    assert_eq!(
        h.mesh.services[&ServiceKey::new("a", "stable-0")].ports[0].port,
        99
    );
    assert_eq!(h.kind_status("c", Kind::Service).relists, 1);
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(&e.event, Event::Delete(r) if r.kind == Kind::Service)),
        "no deletes: the relist swaps in"
    );
    // No tight relist loop afterwards.
    h.settle(Duration::from_millis(500)).await;
    let (lists, _) = fake.request_counts("services");
    assert_eq!(lists, 2, "the initial list and one relist");
}

#[tokio::test]
async fn a_relist_after_gone_in_the_watch_stream_is_atomic() {
    relist_is_atomic(GoneMode::ErrorEvent).await;
}

#[tokio::test]
async fn a_relist_after_http_gone_is_atomic() {
    relist_is_atomic(GoneMode::Http).await;
}

#[tokio::test]
async fn bookmarks_keep_idle_watches_resumable() {
    let fake = FakeApiServer::start_with(FakeOptions {
        bookmark_interval: Some(Duration::from_millis(50)),
        ..FakeOptions::default()
    })
    .await;
    fake.apply(pod("a", "10.0.0.1", "x"));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    // Services change a lot; pods not at all. Bookmarks move the pod watch along.
    for i in 0..20 {
        fake.apply(service("a", &format!("s{i}"), 80));
    }
    h.until("services", |h| h.services().len() == 20).await;
    let rv = fake.resource_version();
    h.until("a bookmark reached the pod watch", |_| {
        fake.last_bookmark("pods").is_some_and(|b| b >= rv)
    })
    .await;
    h.settle(Duration::from_millis(200)).await;
    fake.drop_connections();
    fake.compact();
    h.settle(Duration::from_millis(200)).await;
    fake.apply(pod("a", "10.0.0.2", "x"));
    h.until("the pod watch resumed", |h| {
        h.mesh
            .workload_by_ip("10.0.0.2".parse().expect("ip"))
            .is_some()
    })
    .await;
    assert_eq!(
        h.kind_status("c", Kind::Pod).relists,
        0,
        "resumed from a bookmark"
    );
    assert_eq!(fake.request_counts("pods").0, 1, "no relist of pods");
}

#[tokio::test]
async fn config_of_other_revisions_is_ignored() {
    let fake = FakeApiServer::start().await;
    fake.apply(virtual_service("a", "mine", "a", 100, Some("canary")));
    fake.apply(virtual_service("a", "all", "b", 100, None));
    fake.apply(virtual_service("a", "theirs", "c", 100, Some("stable")));
    for (name, timeout) in [
        ("istio", "1s"),
        ("istio-canary", "2s"),
        ("istio-stable", "3s"),
    ] {
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "istio-system"},
            "data": {"mesh": format!("connectTimeout: {timeout}\n")},
        }));
    }
    let mut h = Harness::start(
        &[("c", &fake)],
        KubeOptions {
            revision: "canary".into(),
            ..fast_options()
        },
    )
    .await;
    h.synced(1).await;
    assert!(h.has_vs("a", "mine") && h.has_vs("a", "all"));
    assert!(!h.has_vs("a", "theirs"));
    assert_eq!(
        h.mesh.mesh.connect_timeout.map(|d| d.to_string()),
        Some("2s".to_string()),
        "the revision's mesh ConfigMap"
    );
    // Moving an object to another revision removes it; moving it back restores it.
    fake.apply(virtual_service("a", "all", "b", 100, Some("stable")));
    h.until("relabelled away", |h| !h.has_vs("a", "all")).await;
    fake.apply(virtual_service("a", "theirs", "c", 100, None));
    h.until("unlabelled", |h| h.has_vs("a", "theirs")).await;
}

#[tokio::test]
async fn invalid_objects_are_skipped_and_the_last_good_version_stays() {
    let fake = FakeApiServer::start().await;
    fake.apply(virtual_service("a", "r", "r", 100, None));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    let weight = |h: &Harness| {
        h.mesh.config.virtual_services[&ConfigKey::new("a", "r")]
            .spec
            .http[0]
            .route[0]
            .weight
    };
    assert_eq!(weight(&h), 100);
    // An invalid edit: refused, reported with its field, the old version stays.
    fake.apply(virtual_service("a", "r", "r", -1, None));
    h.until("problem reported", |h| {
        !h.status.cluster("c").expect("status").problems.is_empty()
    })
    .await;
    let p = &h.status.cluster("c").expect("status").problems[0];
    assert_eq!(
        (p.kind, p.name.as_str(), p.field.as_deref()),
        (
            Kind::VirtualService,
            "r",
            Some("spec.http[0].route[0].weight")
        )
    );
    h.settle(Duration::from_millis(200)).await;
    assert!(h.has_vs("a", "r"));
    assert_eq!(weight(&h), 100);
    assert_eq!(h.history(Kind::VirtualService), ["reset r"], "nothing sent");
    // A relist while it is still invalid keeps the last good version too.
    fake.drop_connections();
    fake.apply(service("a", "bump", 80));
    fake.compact();
    h.until("relisted", |h| h.history(Kind::VirtualService).len() == 2)
        .await;
    assert_eq!(weight(&h), 100);
    // Fixed: applied, problem gone.
    fake.apply(virtual_service("a", "r", "r", 0, None));
    h.until("fixed", |h| weight(h) == 0).await;
    assert!(h.status.cluster("c").expect("status").problems.is_empty());
    // A new Service that is invalid from the start never appears.
    fake.apply(service("a", "bad", 0));
    fake.apply(service("a", "good", 80));
    h.until("good service", |h| h.has_service("a", "good"))
        .await;
    assert!(!h.has_service("a", "bad"));
    let problems = h.status.cluster("c").expect("status").problems;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field.as_deref(), Some("spec.ports[0].port"));
}

#[tokio::test]
async fn discovery_picks_served_versions_and_falls_back_to_endpoints() {
    let fake = FakeApiServer::start_with(FakeOptions {
        istio_versions: vec!["v1beta1".into(), "v1alpha3".into()],
        endpoint_slices: false,
        ..FakeOptions::default()
    })
    .await;
    fake.apply(service("a", "web", 80));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "a"},
        "subsets": [{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"name": "http", "port": 8080}]}],
    }));
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "a"},
        "spec": {"selector": {"istio": "ingressgateway"},
                 "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]},
    }));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    assert_eq!(h.addresses("a", "web"), ["10.1.0.1"]);
    assert!(
        h.mesh
            .config
            .gateways
            .contains_key(&ConfigKey::new("a", "gw"))
    );
    h.until("watches started", |_| {
        fake.requests().iter().filter(|r| r.is_watch()).count() >= 13
    })
    .await;
    let paths: BTreeSet<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.is_watch())
        .map(|r| r.path)
        .collect();
    assert!(
        paths.contains("/apis/networking.istio.io/v1beta1/gateways"),
        "{paths:?}"
    );
    assert!(paths.contains("/api/v1/endpoints"), "{paths:?}");
}

#[tokio::test]
async fn istio_kinds_installed_later_are_picked_up_and_removed_with_their_crds() {
    let fake = FakeApiServer::start_with(FakeOptions {
        istio_versions: Vec::new(),
        ..FakeOptions::default()
    })
    .await;
    fake.apply(service("a", "web", 80));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    assert_eq!(h.kind_status("c", Kind::VirtualService).resource, None);
    assert!(h.status.cluster("c").expect("status").connected);
    // The CRDs get installed.
    fake.set_istio_versions(&["v1", "v1beta1", "v1alpha3"]);
    fake.apply(virtual_service("a", "r", "web", 100, None));
    h.until("VirtualService", |h| h.has_vs("a", "r")).await;
    // … and removed.
    fake.set_istio_versions(&[]);
    fake.drop_connections();
    h.until("VirtualService gone", |h| !h.has_vs("a", "r"))
        .await;
    assert!(h.has_service("a", "web"));
}

#[tokio::test]
async fn an_unreachable_api_server_keeps_the_last_state_and_says_so() {
    let fake = FakeApiServer::start().await;
    fake.apply(service("a", "web", 80));
    fake.apply(virtual_service("a", "r", "web", 100, None));
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    h.events.clear();
    fake.pause().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        h.settle(Duration::from_millis(50)).await;
        let s = h.status.cluster("c").expect("status");
        if !s.connected {
            assert!(s.error.is_some(), "{s:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected: {s:?}"
        );
    }
    h.settle(Duration::from_millis(500)).await;
    assert!(
        h.events.is_empty(),
        "nothing changes while unreachable: {:?}",
        h.events
    );
    assert!(h.has_service("a", "web") && h.has_vs("a", "r"));
    fake.resume().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.status.cluster("c").expect("status").connected {
        h.settle(Duration::from_millis(50)).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reconnected: {:?}",
            h.status.cluster("c")
        );
    }
    fake.apply(service("a", "later", 80));
    h.until("changes flow again", |h| h.has_service("a", "later"))
        .await;
    let s = h.status.cluster("c").expect("status");
    assert!(s.error.is_none() && s.last_error.is_some(), "{s:?}");
}

#[tokio::test]
async fn failed_requests_are_retried_with_backoff() {
    let fake = FakeApiServer::start().await;
    fake.apply(service("a", "web", 80));
    fake.fail_next(6, 503);
    let mut h = Harness::start(&[("c", &fake)], fast_options()).await;
    h.synced(1).await;
    assert!(h.has_service("a", "web"));
    // Retries are spaced out: nowhere near a tight loop.
    h.settle(Duration::from_millis(300)).await;
    assert!(
        fake.requests().len() < 60,
        "{} requests",
        fake.requests().len()
    );
}

#[tokio::test]
async fn clusters_merge_and_fail_independently() {
    let east = FakeApiServer::start().await;
    let west = FakeApiServer::start().await;
    for (fake, zone, ip) in [(&east, "east-1", "10.0.0.1"), (&west, "west-1", "10.9.0.1")] {
        fake.apply(node("node-1", zone));
        fake.apply(service("shop", "web", 80));
        fake.apply(pod("shop", ip, "web"));
        fake.apply(slice("shop", "web-1", "web", &[(ip, true)]));
    }
    let mut h = Harness::start(&[("east", &east), ("west", &west)], fast_options()).await;
    h.synced(2).await;
    assert_eq!(h.addresses("shop", "web"), ["10.0.0.1", "10.9.0.1"]);
    let set = h
        .mesh
        .endpoints_of(&ServiceKey::new("shop", "web"))
        .expect("endpoints")
        .clone();
    for g in &set.groups {
        for e in &g.endpoints {
            let want = if e.cluster.as_ref() == "east" {
                "east-1"
            } else {
                "west-1"
            };
            assert_eq!(e.locality.zone, want, "{e:?}");
        }
    }
    // West goes away; east keeps changing.
    west.pause().await;
    east.apply(slice(
        "shop",
        "web-1",
        "web",
        &[("10.0.0.1", true), ("10.0.0.2", true)],
    ));
    h.until("east changes", |h| h.addresses("shop", "web").len() == 3)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.status.cluster("west").expect("west").connected {
        h.settle(Duration::from_millis(50)).await;
        assert!(tokio::time::Instant::now() < deadline);
    }
    assert!(h.status.cluster("east").expect("east").connected);
    assert!(h.addresses("shop", "web").contains(&"10.9.0.1".to_string()));
}

#[tokio::test]
async fn an_unreachable_secondary_cluster_does_not_block_readiness() {
    let main = FakeApiServer::start().await;
    let remote = FakeApiServer::start().await;
    remote.pause().await;
    main.apply(service("a", "web", 80));
    let mut h = Harness::start(&[("main", &main), ("remote", &remote)], fast_options()).await;
    // The main cluster syncs; the remote one is given up on after the sync timeout.
    h.synced(2).await;
    assert!(h.has_service("a", "web"));
    let remote_status = h.status.cluster("remote").expect("remote");
    assert!(!remote_status.synced && !remote_status.connected);
    remote.apply(service("b", "late", 80));
    remote.resume().await;
    h.until("remote arrives later", |h| h.has_service("b", "late"))
        .await;
}
