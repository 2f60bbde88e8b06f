//! The ADS protocol as a scripted client sees it: subscriptions, versions, nonces, ACKs,
//! NACKs, stale nonces, and incremental (Delta) subscribe/unsubscribe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use strait_model::testing::{mk_service, mk_slice};
use strait_model::{IndexOptions, MeshIndex};
use strait_xds::{AdsService, PushController, SyncRegistry, XdsMetrics, XdsType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

struct Harness {
    addr: SocketAddr,
    push: PushController,
    sync: Arc<SyncRegistry>,
    index: MeshIndex,
    registry: prometheus_client::registry::Registry,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    /// Pushes what the index now holds.
    fn publish(&mut self) {
        let (mesh, changes) = self.index.snapshot();
        self.push.push(mesh, &changes);
    }

    /// The value of a metric line, `name` with its labels as in the text exposition.
    fn metric(&self, name: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

async fn harness() -> Harness {
    harness_with(0, strait_xds::DEFAULT_WINDOW_MB).await
}

/// `web` and `db` and `more` other services on port 8080, with a push window of `window_mb`.
async fn harness_with(more: usize, window_mb: u32) -> Harness {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = XdsMetrics::register(&mut registry);
    let sync = SyncRegistry::new("strait-test", "default");
    let push = PushController::new(metrics.clone(), sync.clone());
    let mut index = MeshIndex::new(IndexOptions::default());
    index.apply(mk_service("web", "shop", &[8080]));
    index.apply(mk_service("db", "shop", &[5432]));
    index.apply(mk_slice("web-1", "shop", "web", &["10.0.0.1"], &[8080]));
    for i in 0..more {
        index.apply(mk_service(&format!("filler-{i}"), "shop", &[8080]));
    }
    let (mesh, changes) = index.snapshot();
    push.push(mesh, &changes);
    let (stop, closing) = tokio::sync::watch::channel(false);
    let svc =
        AdsService::new(push.clone(), sync.clone(), metrics, closing).with_push_window(window_mb);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Harness {
        addr,
        push,
        sync,
        index,
        registry,
        _stop: stop,
    }
}

fn node() -> Node {
    Node {
        id: "sidecar~10.9.9.9~client-0.shop~shop.svc.cluster.local".into(),
        ..Default::default()
    }
}

fn req(t: XdsType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: t.type_url().to_string(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("a response in time")
        .expect("stream healthy")
        .expect("stream open")
}

async fn nothing<T: std::fmt::Debug>(s: &mut tonic::Streaming<T>) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), s.message()).await {
        panic!("unexpected response: {m:?}");
    }
}

fn names<F: Fn(&envoy_types::pb::google::protobuf::Any) -> String>(
    r: &DiscoveryResponse,
    f: F,
) -> Vec<String> {
    r.resources.iter().map(f).collect()
}

fn cla_name(a: &envoy_types::pb::google::protobuf::Any) -> String {
    use prost::Message;
    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(a.value.as_slice())
        .expect("cla")
        .cluster_name
}

const WEB: &str = "outbound|8080||web.shop.svc.cluster.local";
const DB: &str = "outbound|5432||db.shop.svc.cluster.local";

#[tokio::test]
async fn sotw_subscriptions_acks_and_nacks() {
    let mut h = harness().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    let mut first = req(XdsType::Cluster, &[], "", "");
    first.node = Some(node());
    tx.send(first).await.expect("send");
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();

    // CDS: the whole set, every time.
    let cds = next(&mut stream).await;
    assert_eq!(cds.type_url, XdsType::Cluster.type_url());
    assert!(cds.resources.len() >= 2);
    assert_eq!(
        cds.control_plane.as_ref().map(|c| c.identifier.as_str()),
        Some("strait-test")
    );
    tx.send(req(XdsType::Cluster, &[], &cds.version_info, &cds.nonce))
        .await
        .expect("ack");

    // EDS: only what is asked for.
    tx.send(req(XdsType::Endpoint, &[WEB], "", ""))
        .await
        .expect("eds");
    let eds = next(&mut stream).await;
    assert_eq!(names(&eds, cla_name), [WEB]);
    // A NACK is recorded with Envoy's text, and nothing is resent for it.
    let mut nack = req(XdsType::Endpoint, &[WEB], "", &eds.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad endpoint".into(),
        details: vec![],
    });
    tx.send(nack).await.expect("nack");
    nothing(&mut stream).await;
    let z = h.sync.syncz();
    assert_eq!(z.proxies[0].types["EDS"].state, "NACKED");
    assert_eq!(
        z.proxies[0].types["EDS"].nack.as_deref(),
        Some("bad endpoint")
    );

    // Asking for one more name sends that one.
    tx.send(req(XdsType::Endpoint, &[WEB, DB], "", &eds.nonce))
        .await
        .expect("more names");
    let more = next(&mut stream).await;
    assert!(names(&more, cla_name).contains(&DB.to_string()));
    tx.send(req(
        XdsType::Endpoint,
        &[WEB, DB],
        &more.version_info,
        &more.nonce,
    ))
    .await
    .expect("ack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let z = h.sync.syncz();
    assert_eq!(z.proxies[0].types["EDS"].state, "SYNCED");
    assert_eq!(z.proxies[0].types["CDS"].state, "SYNCED");

    // An endpoint change reaches EDS only, and only the changed load assignment.
    h.index.apply(mk_slice(
        "web-1",
        "shop",
        "web",
        &["10.0.0.1", "10.0.0.2"],
        &[8080],
    ));
    h.publish();
    let upd = next(&mut stream).await;
    assert_eq!(upd.type_url, XdsType::Endpoint.type_url());
    assert_eq!(names(&upd, cla_name), [WEB]);
    // A request carrying an old nonce is stale and ignored.
    tx.send(req(XdsType::Endpoint, &[WEB], "", &more.nonce))
        .await
        .expect("stale");
    nothing(&mut stream).await;
    tx.send(req(
        XdsType::Endpoint,
        &[WEB, DB],
        &upd.version_info,
        &upd.nonce,
    ))
    .await
    .expect("ack");
    nothing(&mut stream).await;
}

fn delta_req(t: XdsType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.type_url().to_string(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn delta_subscriptions_removals_and_initial_versions() {
    let mut h = harness().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    let mut first = delta_req(XdsType::Endpoint, &[WEB, "outbound|1||nope"], &[], "");
    first.node = Some(node());
    tx.send(first).await.expect("send");
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let r = next(&mut stream).await;
    assert_eq!(delta_names(&r), [WEB]);
    assert_eq!(
        r.removed_resources,
        ["outbound|1||nope"],
        "unknown names are reported as absent"
    );
    let web_version = r.resources[0].version.clone();
    tx.send(delta_req(XdsType::Endpoint, &[], &[], &r.nonce))
        .await
        .expect("ack");

    // Subscribing to more sends just that.
    tx.send(delta_req(XdsType::Endpoint, &[DB], &[], ""))
        .await
        .expect("sub");
    let r = next(&mut stream).await;
    assert_eq!(delta_names(&r), [DB]);

    // Unsubscribed names get no updates; subscribed ones do. The unsubscription rides on the
    // ACK, so once the ACK is recorded the server has seen it.
    tx.send(delta_req(XdsType::Endpoint, &[], &[DB], &r.nonce))
        .await
        .expect("ack + unsub");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.sync.syncz().proxies[0].types["EDS"].state != "SYNCED" {
        assert!(std::time::Instant::now() < deadline, "ACK never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.index
        .apply(mk_slice("web-1", "shop", "web", &["10.0.0.3"], &[8080]));
    h.index.delete(&strait_api::ObjectRef::new(
        strait_api::Kind::Service,
        "shop",
        "db",
    ));
    h.publish();
    let mut seen_web = false;
    for _ in 0..2 {
        let r = next(&mut stream).await;
        if r.type_url == XdsType::Endpoint.type_url() {
            assert_eq!(delta_names(&r), [WEB]);
            assert!(
                r.removed_resources.is_empty(),
                "db was unsubscribed: {:?}",
                r.removed_resources
            );
            assert_ne!(r.resources[0].version, web_version);
            seen_web = true;
            break;
        }
    }
    assert!(seen_web);

    // A reconnecting client that declares what it has gets only what differs.
    let (tx2, rx2) = mpsc::channel(16);
    let mut again = delta_req(XdsType::Endpoint, &[WEB], &[], "");
    again.node = Some(node());
    again.initial_resource_versions = [(WEB.to_string(), "stale".to_string())]
        .into_iter()
        .collect();
    tx2.send(again).await.expect("send");
    let mut s2 = client
        .delta_aggregated_resources(ReceiverStream::new(rx2))
        .await
        .expect("stream")
        .into_inner();
    let r = next(&mut s2).await;
    assert_eq!(delta_names(&r), [WEB]);
    let current = r.resources[0].version.clone();
    let (tx3, rx3) = mpsc::channel(16);
    let mut same = delta_req(XdsType::Endpoint, &[WEB], &[], "");
    same.node = Some(node());
    same.initial_resource_versions = [(WEB.to_string(), current)].into_iter().collect();
    tx3.send(same).await.expect("send");
    let mut s3 = client
        .delta_aggregated_resources(ReceiverStream::new(rx3))
        .await
        .expect("stream")
        .into_inner();
    let r = next(&mut s3).await;
    assert!(
        r.resources.is_empty(),
        "nothing differs: {:?}",
        delta_names(&r)
    );
    drop((tx, tx2, tx3));
}

#[tokio::test]
async fn a_node_that_cannot_be_read_is_refused() {
    let h = harness().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let mut first = req(XdsType::Cluster, &[], "", "");
    first.node = Some(Node {
        id: "not-a-proxy-id".into(),
        ..Default::default()
    });
    tx.send(first).await.expect("send");
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let err = stream.message().await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("not-a-proxy-id"),
        "{}",
        err.message()
    );
    assert!(h.sync.is_empty());
}

/// A response of either protocol.
trait Response: std::fmt::Debug {
    fn type_url(&self) -> &str;
}

impl Response for DiscoveryResponse {
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

impl Response for DeltaDiscoveryResponse {
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

/// The next response of type `t`, skipping others.
async fn next_of<R: Response>(s: &mut tonic::Streaming<R>, t: XdsType) -> R {
    loop {
        let r = next(s).await;
        if r.type_url() == t.type_url() {
            return r;
        }
    }
}

/// Whether a response of type `t` arrives within `wait` (others are skipped).
async fn arrives<R: Response>(
    s: &mut tonic::Streaming<R>,
    t: XdsType,
    wait: Duration,
) -> Option<R> {
    tokio::time::timeout(wait, next_of(s, t)).await.ok()
}

/// The node of the `i`th client proxy of the window tests.
fn client_node(i: usize) -> Node {
    Node {
        id: format!("sidecar~10.9.9.{i}~client-{i}.shop~shop.svc.cluster.local"),
        ..Default::default()
    }
}

/// Which of two proxies gets a response of type `t` first, and the response.
async fn first_of<S, R: Response>(
    proxies: &mut [(S, tonic::Streaming<R>); 2],
    t: XdsType,
) -> (usize, R) {
    let [(_, a), (_, b)] = proxies;
    tokio::select! {
        r = next_of(a, t) => (0, r),
        r = next_of(b, t) => (1, r),
    }
}

#[tokio::test]
async fn large_route_pushes_wait_for_room_and_load_assignments_do_not() {
    // About 1.5 MB of routes on port 8080, a 1 MB window: one proxy's update fills it.
    let mut h = harness_with(2500, 1).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .expect("connect");
    let mut proxies = Vec::new();
    for i in 0..2 {
        let (tx, rx) = mpsc::channel(16);
        let mut first = delta_req(XdsType::Route, &["8080"], &[], "");
        first.node = Some(client_node(i));
        tx.send(first).await.expect("send");
        tx.send(delta_req(XdsType::Endpoint, &[WEB], &[], ""))
            .await
            .expect("send");
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        // First responses are never held back.
        for t in [XdsType::Route, XdsType::Endpoint] {
            let r = next_of(&mut stream, t).await;
            assert_eq!(r.resources.len(), 1);
            tx.send(delta_req(t, &[], &[], &r.nonce))
                .await
                .expect("ack");
        }
        proxies.push((tx, stream));
    }

    // A new service on 8080: both route configurations change, and only one fits the window.
    h.index.apply(mk_service("new", "shop", &[8080]));
    h.publish();
    let mut proxies: [_; 2] = proxies.try_into().expect("two proxies");
    let (got, routes) = first_of(&mut proxies, XdsType::Route).await;
    let [a, b] = &mut proxies;
    let (first_tx, second) = if got == 0 { (&a.0, b) } else { (&b.0, a) };
    assert!(
        routes.resources[0]
            .resource
            .as_ref()
            .expect("any")
            .value
            .len()
            > 1 << 20
    );
    assert!(
        arrives(&mut second.1, XdsType::Route, Duration::from_millis(300))
            .await
            .is_none(),
        "the second large push went out while the first was unacknowledged"
    );

    // An endpoint change reaches the proxy that waits, at once.
    h.index
        .apply(mk_slice("web-1", "shop", "web", &["10.0.0.7"], &[8080]));
    h.publish();
    let eds = next_of(&mut second.1, XdsType::Endpoint).await;
    assert_eq!(delta_names(&eds), [WEB]);

    // The first proxy's ACK makes room: the second gets its routes.
    first_tx
        .send(delta_req(XdsType::Route, &[], &[], &routes.nonce))
        .await
        .expect("ack");
    let r = next_of(&mut second.1, XdsType::Route).await;
    assert_eq!(delta_names(&r), ["8080"]);
    assert_eq!(
        h.metric("strait_xds_push_window_wait_seconds_count"),
        Some(1.0)
    );
}

#[tokio::test]
async fn state_of_the_world_large_pushes_are_paced_too() {
    // The same as above on state-of-the-world streams, where ACKs carry versions and names.
    let mut h = harness_with(2500, 1).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .expect("connect");
    let mut proxies = Vec::new();
    for i in 0..2 {
        let (tx, rx) = mpsc::channel(16);
        let mut first = req(XdsType::Route, &["8080"], "", "");
        first.node = Some(client_node(i));
        tx.send(first).await.expect("send");
        tx.send(req(XdsType::Endpoint, &[WEB], "", ""))
            .await
            .expect("send");
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        for (t, name) in [(XdsType::Route, "8080"), (XdsType::Endpoint, WEB)] {
            let r = next_of(&mut stream, t).await;
            assert_eq!(r.resources.len(), 1);
            tx.send(req(t, &[name], &r.version_info, &r.nonce))
                .await
                .expect("ack");
        }
        proxies.push((tx, stream));
    }

    h.index.apply(mk_service("new", "shop", &[8080]));
    h.publish();
    let mut proxies: [_; 2] = proxies.try_into().expect("two proxies");
    let (got, routes) = first_of(&mut proxies, XdsType::Route).await;
    let [a, b] = &mut proxies;
    let (first_tx, second) = if got == 0 { (&a.0, b) } else { (&b.0, a) };
    assert!(routes.resources[0].value.len() > 1 << 20);
    assert!(
        arrives(&mut second.1, XdsType::Route, Duration::from_millis(300))
            .await
            .is_none(),
        "the second large push went out while the first was unacknowledged"
    );

    h.index
        .apply(mk_slice("web-1", "shop", "web", &["10.0.0.7"], &[8080]));
    h.publish();
    let eds = next_of(&mut second.1, XdsType::Endpoint).await;
    assert_eq!(names(&eds, cla_name), [WEB]);

    first_tx
        .send(req(
            XdsType::Route,
            &["8080"],
            &routes.version_info,
            &routes.nonce,
        ))
        .await
        .expect("ack");
    let r = next_of(&mut second.1, XdsType::Route).await;
    assert_eq!(r.resources.len(), 1);
    assert_eq!(
        h.metric("strait_xds_push_window_wait_seconds_count"),
        Some(1.0)
    );
}
