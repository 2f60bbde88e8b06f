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
            if c.eds_cluster_config.is_none() {
                continue;
            }
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
        // SDS and RDS sources name the ADS stream: give the bootstrap one, and a node.
        clusters.push(envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "xds-grpc".into(),
            cluster_discovery_type: Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                    envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static as i32,
                ),
            ),
            load_assignment: Some(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                cluster_name: "xds-grpc".into(),
                ..Default::default()
            }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                strait_translate::util::any(&envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
                    upstream_protocol_options: Some(
                        envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                            envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig {
                                protocol_config: Some(
                                    envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default()),
                                ),
                            },
                        ),
                    ),
                    ..Default::default()
                }),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        });
        // Static validation cannot fetch SDS over ADS (the stream does not exist yet when static
        // resources are built): point SDS references at the same secrets, given statically.
        for c in &mut clusters {
            if let Some(ts) = c.transport_socket.as_mut() {
                static_sds(ts);
            }
        }
        for l in &mut listeners {
            for fc in &mut l.filter_chains {
                if let Some(ts) = fc.transport_socket.as_mut() {
                    static_sds(ts);
                }
            }
        }
        let b = Bootstrap {
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: "validate".into(),
                cluster: "validate".into(),
                ..Default::default()
            }),
            static_resources: Some(bootstrap::StaticResources {
                listeners,
                clusters,
                secrets: r.secrets.clone(),
            }),
            dynamic_resources: Some(bootstrap::DynamicResources {
                ads_config: Some(envoy_types::pb::envoy::config::core::v3::ApiConfigSource {
                    api_type: envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::Grpc as i32,
                    transport_api_version: envoy_types::pb::envoy::config::core::v3::ApiVersion::V3 as i32,
                    grpc_services: vec![envoy_types::pb::envoy::config::core::v3::GrpcService {
                        target_specifier: Some(envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                            envoy_types::pb::envoy::config::core::v3::grpc_service::EnvoyGrpc {
                                cluster_name: "xds-grpc".into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
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

/// Drops the ADS source of every SDS reference in a TLS transport socket, so the name refers
/// to a static secret.
fn static_sds(ts: &mut envoy_types::pb::envoy::config::core::v3::TransportSocket) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
    };
    fn fix(c: &mut CommonTlsContext) {
        for s in &mut c.tls_certificate_sds_secret_configs {
            s.sds_config = None;
        }
        if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
            c.validation_context_type.as_mut()
            && let Some(s) = v.validation_context_sds_secret_config.as_mut()
        {
            s.sds_config = None;
        }
    }
    let Some(ConfigType::TypedConfig(any)) = ts.config_type.as_mut() else {
        return;
    };
    if any.type_url.ends_with("UpstreamTlsContext") {
        let mut u = UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream tls");
        if let Some(c) = u.common_tls_context.as_mut() {
            fix(c);
        }
        any.value = u.encode_to_vec();
    } else if any.type_url.ends_with("DownstreamTlsContext") {
        let mut d = DownstreamTlsContext::decode(any.value.as_slice()).expect("downstream tls");
        if let Some(c) = d.common_tls_context.as_mut() {
            fix(c);
        }
        any.value = d.encode_to_vec();
    }
}
