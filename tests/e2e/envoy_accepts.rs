//! Every golden translation case, loaded into stock Envoy as static configuration and checked
//! with Envoy's own validator (`--mode validate`): what strait generates is what Envoy
//! accepts.

use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use prost::Message;
use strait_model::{IndexOptions, Locality, MeshIndex, Proxy, ProxyNode};

fn case(dir: &Path) -> (Arc<strait_model::MeshSnapshot>, Proxy) {
    let mut index = MeshIndex::new(IndexOptions::default());
    let input = std::fs::read_to_string(dir.join("input.yaml")).expect("input");
    let content =
        strait_sources::manifest::parse_manifests(Path::new("input.yaml"), &input, "default");
    assert!(content.refused.is_empty(), "{:?}", content.problems);
    for (_, o) in content.objects {
        index.apply(o);
    }
    let (snap, _) = index.snapshot();
    let proxy: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("proxy.yaml")).expect("proxy"))
            .expect("yaml");
    let node = ProxyNode::parse(
        proxy["id"].as_str().expect("id"),
        proxy
            .get("metadata")
            .and_then(|m| m.as_object())
            .unwrap_or(&serde_json::Map::new()),
        proxy
            .get("locality")
            .and_then(|l| l.as_str())
            .map(Locality::parse),
        None,
    )
    .expect("node");
    let p = Proxy::resolve(Arc::new(node), &snap);
    (snap, p)
}

#[test]
fn golden_cases_pass_envoy_validation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/strait-translate/testdata");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("testdata")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    let envoys = strait_e2e::envoy::all_versions();
    let work = tempfile::tempdir().expect("tempdir");
    for dir in dirs {
        let (snap, proxy) = case(&dir);
        let r = strait_translate::generate(&snap, &proxy);
        // Load assignments become the clusters' inline endpoints: static configuration has no
        // EDS to fetch them from.
        let mut clusters = r.clusters.clone();
        for c in &mut clusters {
            if let Some(cla) = r.endpoints.iter().find(|e| e.cluster_name == c.name) {
                c.cluster_discovery_type = Some(
                    envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                        envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static as i32,
                    ),
                );
                c.eds_cluster_config = None;
                c.load_assignment = Some(cla.clone());
            }
        }
        // Routes become inline in the listeners that name them.
        let mut listeners = r.listeners.clone();
        for l in &mut listeners {
            for fc in &mut l.filter_chains {
                for f in &mut fc.filters {
                    inline_routes(f, &r.routes);
                }
            }
            // Validation binds nothing, but keep addresses valid on any machine.
            l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        }
        let b = Bootstrap {
            static_resources: Some(bootstrap::StaticResources {
                listeners,
                clusters,
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = work.path().join(format!(
            "{}.pb",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("case")
        ));
        std::fs::write(&path, b.encode_to_vec()).expect("write bootstrap");
        for envoy in &envoys {
            let out = std::process::Command::new(envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    "-c",
                ])
                .arg(&path)
                .output()
                .expect("run envoy");
            assert!(
                out.status.success(),
                "{} refused {}:\n{}{}",
                envoy.display(),
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn inline_routes(
    f: &mut envoy_types::pb::envoy::config::listener::v3::Filter,
    routes: &[envoy_types::pb::envoy::config::route::v3::RouteConfiguration],
) {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    let Some(ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
        return;
    };
    if !any.type_url.ends_with("HttpConnectionManager") {
        return;
    }
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
        let rc = routes
            .iter()
            .find(|r| r.name == rds.route_config_name)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "route {} referenced but not generated",
                    rds.route_config_name
                )
            });
        hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
        any.value = hcm.encode_to_vec();
    }
}
