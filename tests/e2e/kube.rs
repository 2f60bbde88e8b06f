//! The Kubernetes source end to end: strait watches an API server (the in-process fake here,
//! a real cluster in the ignored suite at the end) and stock Envoy routes real requests by
//! what the cluster says, following pods, readiness, services and Istio config as they
//! change, and through an API server outage.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use strait_e2e::fakeapi::{FakeApiServer, KubeStrait};
use strait_e2e::mesh::{Endpoint, endpoints, service};
use strait_e2e::{Envoy, Upstream, eventually, http_client, loopback_ip};

const NS: &str = "kube-e2e";
const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(15);

/// Sends `n` requests for `host` through Envoy and counts which upstream answered.
async fn tally(bind: IpAddr, host: &str, n: usize) -> Result<BTreeMap<String, usize>, String> {
    let client = http_client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = client
            .get(format!("http://{bind}:{PORT}/"))
            .header("host", host)
            .send()
            .await
            .map_err(|e| format!("request for {host}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            *seen.entry(format!("HTTP {status}")).or_default() += 1;
            continue;
        }
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        let server = body["server"].as_str().unwrap_or("?").to_string();
        *seen.entry(server).or_default() += 1;
    }
    Ok(seen)
}

/// Waits until requests for `host` are answered by exactly the `expected` upstreams.
async fn expect_servers(bind: IpAddr, host: &str, expected: &[&str]) {
    eventually(&format!("{host} served by {expected:?}"), WAIT, || async {
        let seen = tally(bind, host, expected.len() * 6).await?;
        let got: Vec<&str> = seen.keys().map(String::as_str).collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!("saw {seen:?}"))
        }
    })
    .await;
}

fn virtual_service(weight: i32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: a-to-b, namespace: {NS}}}\n\
         spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {{host: b}}\n      weight: {weight}\n"
    )
}

/// The cluster's `/ready` detail for the (only) cluster.
async fn cluster_status(strait: &KubeStrait) -> (u16, Value) {
    let (code, body) = strait.ready().await;
    (code, body["kubernetes"]["Kubernetes"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_cluster() {
    let a0 = Upstream::start("a-0", loopback_ip().into()).await;
    let a1 = Upstream::start("a-1", loopback_ip().into()).await;
    let b0 = Upstream::start("b-0", loopback_ip().into()).await;
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\n{}{}",
        service(NS, "a", PORT, "http"),
        endpoints(
            NS,
            "a",
            "http",
            &[Endpoint::ready(&a0), Endpoint::ready(&a1)]
        ),
    ));
    let strait = KubeStrait::start(&fake).await;
    strait.wait_ready().await;
    let (_, status) = cluster_status(&strait).await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["synced"], true, "{status}");

    let bind: IpAddr = loopback_ip().into();
    let envoy = Envoy::start("client", strait.sidecar(NS, "client", bind)).await;
    envoy.wait_live().await;
    expect_servers(bind, "a", &["a-0", "a-1"]).await;

    // A pod turns not ready: its endpoint leaves Envoy.
    fake.apply_yaml(&endpoints(
        NS,
        "a",
        "http",
        &[Endpoint {
            upstream: &a1,
            labels: &[],
            ready: false,
        }],
    ));
    expect_servers(bind, "a", &["a-0"]).await;
    let a1_addr = a1.addr.to_string();
    eventually("a-1 out of Envoy's endpoints", WAIT, || async {
        let clusters = envoy.admin_get("/clusters").await;
        let healthy = clusters
            .lines()
            .any(|l| l.contains(&a1_addr) && l.ends_with("health_flags::healthy"));
        if healthy {
            Err(format!("{a1_addr} still healthy in Envoy"))
        } else {
            Ok(())
        }
    })
    .await;

    // A Service created later becomes routable.
    fake.apply_yaml(&format!(
        "{}{}",
        service(NS, "b", PORT, "http"),
        endpoints(NS, "b", "http", &[Endpoint::ready(&b0)])
    ));
    expect_servers(bind, "b", &["b-0"]).await;

    // Istio config: created, edited (invalid: refused, the last good version stays), deleted.
    fake.apply_yaml(&virtual_service(100));
    expect_servers(bind, "a", &["b-0"]).await;
    fake.apply_yaml(&virtual_service(-1));
    eventually("the invalid edit is reported", WAIT, || async {
        let (_, body) = strait.ready().await;
        let problems = body["config_problems"].as_u64().unwrap_or(0);
        let listed = body["kubernetes"]["Kubernetes"]["problems"].to_string();
        if problems == 1 && listed.contains("spec.http[0].route[0].weight") {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    expect_servers(bind, "a", &["b-0"]).await;
    fake.delete("networking.istio.io/v1", "VirtualService", NS, "a-to-b");
    expect_servers(bind, "a", &["a-0"]).await;

    // The API server goes away: strait stays ready, says so, and keeps serving the last
    // known config, to connected proxies and to new ones.
    fake.pause().await;
    eventually("outage reported", WAIT, || async {
        let (code, status) = cluster_status(&strait).await;
        if code == 200 && status["connected"] == false && status["error"].is_string() {
            Ok(())
        } else {
            Err(format!("{code}: {status}"))
        }
    })
    .await;
    expect_servers(bind, "a", &["a-0"]).await;
    let bind2: IpAddr = loopback_ip().into();
    let late = Envoy::start("late", strait.sidecar(NS, "late", bind2)).await;
    late.wait_live().await;
    expect_servers(bind2, "a", &["a-0"]).await;
    let up = |v: u8| {
        format!("strait_kube_watch_up{{cluster=\"Kubernetes\",kind=\"EndpointSlice\"}} {v}")
    };
    let metric = |want: String| {
        let strait = &strait;
        async move {
            let text = strait.metrics().await;
            if text.contains(&want) {
                Ok(())
            } else {
                Err(format!("no {want}"))
            }
        }
    };
    eventually("watch down in the metrics", WAIT, || metric(up(0))).await;

    // It comes back: changes flow again.
    fake.resume().await;
    fake.apply_yaml(&endpoints(NS, "a", "http", &[Endpoint::ready(&a1)]));
    expect_servers(bind, "a", &["a-0", "a-1"]).await;
    expect_servers(bind2, "a", &["a-0", "a-1"]).await;
    eventually("reconnected", WAIT, || async {
        let (_, status) = cluster_status(&strait).await;
        if status["connected"] == true && status["error"].is_null() {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    eventually("watch up in the metrics", WAIT, || metric(up(1))).await;

    envoy.assert_no_rejections().await;
    late.assert_no_rejections().await;
    strait.assert_no_nacks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_and_a_config_directory_feed_one_mesh() {
    strait_e2e::init_logs();
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&service(NS, "from-cluster", PORT, "http"));
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(
        dir.path().join("svc.yaml"),
        service(NS, "from-dir", PORT, "http"),
    )
    .expect("write");
    let mut cfg = strait::serve::ServeConfig::local(dir.path());
    cfg.kube_clusters = vec![strait_sources::kube::KubeCluster {
        id: "Kubernetes".into(),
        connect: strait_sources::kube::KubeConnect::Url(fake.url()),
    }];
    let server = strait::serve::start(cfg).await.expect("strait starts");
    eventually("both sources in the mesh", WAIT, || async {
        let mesh = server.push.mesh().ok_or("not ready")?;
        let names: Vec<&str> = mesh.services.keys().map(|k| &*k.name).collect();
        if names == ["from-cluster", "from-dir"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    fake.delete("v1", "Service", NS, "from-cluster");
    eventually("the cluster's service gone", WAIT, || async {
        let mesh = server.push.mesh().ok_or("not ready")?;
        if mesh.services.len() == 1 {
            Ok(())
        } else {
            Err(format!("{} services", mesh.services.len()))
        }
    })
    .await;
    server.stop().await.expect("stops");
}

/// The suite against a real cluster (`cargo xtask e2e` with `STRAIT_E2E_KUBECONFIG`): a
/// disposable one, since it installs strait's CRDs for `networking.istio.io` (replacing
/// Istio's, if there).
mod real_cluster {
    use std::path::{Path, PathBuf};

    use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::core::ApiResource;
    use kube::{Client, Config};
    use serde_json::{Value, json};

    use super::*;

    const MANAGER: &str = "strait-e2e";

    fn kubeconfig() -> PathBuf {
        std::env::var_os("STRAIT_E2E_KUBECONFIG")
            .map(PathBuf::from)
            .expect("STRAIT_E2E_KUBECONFIG names the cluster's kubeconfig")
    }

    async fn client(path: &Path) -> Client {
        let kc = Kubeconfig::read_from(path).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig config");
        Client::try_from(config).expect("client")
    }

    fn resource(obj: &Value) -> (ApiResource, bool) {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let (plural, namespaced) = match kind {
            "CustomResourceDefinition" => ("customresourcedefinitions", false),
            "Namespace" => ("namespaces", false),
            "Service" => ("services", true),
            "EndpointSlice" => ("endpointslices", true),
            "VirtualService" => ("virtualservices", true),
            "DestinationRule" => ("destinationrules", true),
            "Gateway" => ("gateways", true),
            "ServiceEntry" => ("serviceentries", true),
            "Sidecar" => ("sidecars", true),
            other => panic!("the suite does not apply {other}"),
        };
        (
            ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: plural.into(),
            },
            namespaced,
        )
    }

    fn api(client: &Client, obj: &Value) -> Api<DynamicObject> {
        let (ar, namespaced) = resource(obj);
        match obj["metadata"]["namespace"].as_str() {
            Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        }
    }

    /// Server-side applies `obj`.
    async fn apply(client: &Client, obj: Value) -> Result<(), kube::Error> {
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        api(client, &obj)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map(|_| ())
    }

    /// Creates `obj`, which the API server must refuse naming `field`.
    async fn refused(client: &Client, obj: Value, field: &str) {
        let data: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
        match api(client, &obj)
            .create(&PostParams::default(), &data)
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(
                    s.message.contains(field),
                    "the refusal names {field}: {}",
                    s.message
                );
            }
            other => panic!("{} accepted: {other:?}", obj["kind"]),
        }
    }

    /// Deletes the test namespace, also when the test fails.
    struct Cleanup {
        client: Client,
        namespace: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let client = self.client.clone();
            let ns = self.namespace.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move {
                    let ar = ApiResource {
                        group: String::new(),
                        version: "v1".into(),
                        api_version: "v1".into(),
                        kind: "Namespace".into(),
                        plural: "namespaces".into(),
                    };
                    let api: Api<DynamicObject> = Api::all_with(client, &ar);
                    let _ = api.delete(&ns, &DeleteParams::default()).await;
                });
            });
        }
    }

    async fn install_crds(client: &Client) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("crds/") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read CRD");
            let crd: Value = serde_yaml_ng::from_str(&text).expect("CRD YAML");
            names.push(crd["metadata"]["name"].as_str().expect("name").to_string());
            apply(client, crd).await.expect("CRD applied");
        }
        let ar = ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        };
        let crds: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        for name in names {
            eventually(&format!("CRD {name} established"), WAIT, || async {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".into())
                }
            })
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs cluster"]
    async fn crds_refuse_invalid_objects_and_strait_serves_the_cluster() {
        strait_e2e::init_logs();
        let path = kubeconfig();
        let client = client(&path).await;
        install_crds(&client).await;
        let ns = format!("strait-e2e-{}", std::process::id());
        let _cleanup = Cleanup {
            client: client.clone(),
            namespace: ns.clone(),
        };
        apply(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await
        .expect("namespace");

        // Invalid Istio objects: the API server itself refuses them, naming the field.
        refused(
            &client,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "no-host", "namespace": ns},
                   "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"subset": "v1"}}]}]}}),
            "spec.http[0].route[0].destination.host",
        )
        .await;
        refused(
            &client,
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                   "metadata": {"name": "bad-lb", "namespace": ns},
                   "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}}),
            "spec.trafficPolicy.loadBalancer.simple",
        )
        .await;
        refused(
            &client,
            json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
                   "metadata": {"name": "bad-port", "namespace": ns},
                   "spec": {"servers": [{"port": {"number": "eighty", "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
            "spec.servers[0].port.number",
        )
        .await;

        // Valid objects: a Service without selector and its EndpointSlice, and Istio config.
        for obj in [
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
                   "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["10.250.0.7"], "conditions": {"ready": true}}]}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "web", "namespace": ns},
                   "spec": {"hosts": ["web"], "http": [{"timeout": "3s", "route": [{"destination": {"host": "web"}}]}]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                   "metadata": {"name": "web", "namespace": ns},
                   "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}}),
        ] {
            apply(&client, obj).await.expect("applied");
        }

        // strait, outside the cluster, with the kubeconfig; a stock Envoy takes what it serves.
        let strait = KubeStrait::start_kubeconfig(&path).await;
        strait.wait_ready().await;
        let bind: IpAddr = loopback_ip().into();
        let envoy = Envoy::start("client", strait.sidecar(&ns, "client", bind)).await;
        envoy.wait_live().await;
        let cluster = format!("outbound|80||web.{ns}.svc.cluster.local");
        eventually("Envoy has the service and its endpoint", WAIT, || async {
            let clusters = envoy.admin_get("/clusters").await;
            if clusters
                .lines()
                .any(|l| l.starts_with(&format!("{cluster}::10.250.0.7:8080::")))
            {
                Ok(())
            } else {
                Err(format!("no {cluster} endpoint in:\n{clusters}"))
            }
        })
        .await;
        eventually(
            "the VirtualService's timeout is in Envoy's routes",
            WAIT,
            || async {
                let dump = envoy.config_dump().await.to_string();
                if dump.contains(&cluster) && dump.contains("\"timeout\":\"3s\"") {
                    Ok(())
                } else {
                    Err("route without the VirtualService's timeout".into())
                }
            },
        )
        .await;
        // Endpoints follow the cluster.
        apply(
            &client,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["10.250.0.8"], "conditions": {"ready": true}}]}),
        )
        .await
        .expect("slice updated");
        eventually("the new endpoint reaches Envoy", WAIT, || async {
            let clusters = envoy.admin_get("/clusters").await;
            if clusters.contains("10.250.0.8:8080") && !clusters.contains("10.250.0.7:8080") {
                Ok(())
            } else {
                Err("endpoints not updated".into())
            }
        })
        .await;
        let (code, body) = strait.ready().await;
        assert_eq!(code, 200);
        assert_eq!(
            body["kubernetes"]["Kubernetes"]["connected"], true,
            "{body}"
        );
        envoy.assert_no_rejections().await;
        strait.assert_no_nacks();
    }
}
