//! Gateways: the listeners and routes of gateway proxies (`router~…` nodes), from the
//! Gateway objects that select them and the VirtualServices bound to those Gateways.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, virtual_host};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, common_tls_context, tls_parameters,
};
use envoy_types::pb::google::protobuf::BoolValue;
use strait_api::istio::Protocol as GwProtocol;
use strait_api::istio::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use strait_model::{ConfigKey, MeshSnapshot, Proxy};

use crate::config::{ConfigIndex, VsRef, host_matches};
use crate::http_route::{self, RouteContext};
use crate::listener::{self, HttpFilters};
use crate::policy::{sds_ca_name, sds_config, sds_name};
use crate::util::{any, bool_value, ip_address};

/// What a gateway proxy receives beyond clusters and endpoints.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GatewayConfig {
    /// One listener per bound address and port.
    pub listeners: Vec<Listener>,
    /// The route configurations the listeners name.
    pub routes: Vec<RouteConfiguration>,
    /// SDS secret names the listeners refer to.
    pub secrets: BTreeSet<String>,
}

struct ServerRef<'a> {
    gateway: String,
    gateway_key: &'a ConfigKey,
    index: usize,
    server: &'a Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    /// Plain HTTP (possibly redirecting to HTTPS).
    Http,
    /// TLS terminated here, HTTP inside.
    Https,
    /// TLS passed through, routed by SNI.
    Passthrough,
    /// TLS terminated here, TCP inside.
    TlsTcp,
    /// Plain TCP.
    Tcp,
}

fn kind(s: &Server) -> ServerKind {
    let p = s.protocol();
    let tls = s.tls.as_ref().filter(|t| {
        !(t.https_redirect
            && t.mode == ServerTlsMode::default()
            && t.credential_name.is_empty()
            && t.server_certificate.is_empty())
    });
    match (p, tls) {
        (_, Some(t)) if t.is_passthrough() => ServerKind::Passthrough,
        (GwProtocol::Tls, Some(_)) => ServerKind::TlsTcp,
        (GwProtocol::Tls, None) => ServerKind::Passthrough,
        (GwProtocol::Https, _) => ServerKind::Https,
        (p, Some(_)) if p.is_http() => ServerKind::Https,
        (p, None) if p.is_http() => ServerKind::Http,
        _ => ServerKind::Tcp,
    }
}

/// The server hosts as (namespace filter, host pattern).
fn server_hosts(s: &Server) -> Vec<(Option<&str>, &str)> {
    s.hosts
        .iter()
        .map(|h| match h.split_once('/') {
            Some(("*", host)) => (None, host),
            Some((".", host)) => (Some(""), host),
            Some((ns, host)) => (Some(ns), host),
            None => (None, h.as_str()),
        })
        .collect()
}

/// The domains a VirtualService serves through a server: the more specific of each pair of
/// overlapping hosts.
fn intersect(server: &Server, gw_ns: &str, vs: &VsRef) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (ns, pattern) in server_hosts(server) {
        let ns_ok = match ns {
            None => true,
            Some("") => vs.namespace() == gw_ns,
            Some(n) => vs.namespace() == n,
        };
        if !ns_ok {
            continue;
        }
        for h in &vs.hosts {
            if host_matches(pattern, h) {
                out.insert(h.to_ascii_lowercase());
            } else if host_matches(h, pattern) {
                out.insert(pattern.to_ascii_lowercase());
            }
        }
    }
    out.into_iter().collect()
}

fn tls_version(v: TlsProtocol) -> i32 {
    match v {
        TlsProtocol::TlsAuto => tls_parameters::TlsProtocol::TlsAuto as i32,
        TlsProtocol::TlsV1_0 => tls_parameters::TlsProtocol::TlSv10 as i32,
        TlsProtocol::TlsV1_1 => tls_parameters::TlsProtocol::TlSv11 as i32,
        TlsProtocol::TlsV1_2 => tls_parameters::TlsProtocol::TlSv12 as i32,
        TlsProtocol::TlsV1_3 => tls_parameters::TlsProtocol::TlSv13 as i32,
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// The TLS context of a terminating server: certificates from SDS (`credentialName`) or files.
fn downstream_tls(
    tls: &ServerTlsSettings,
    http: bool,
    secrets: &mut BTreeSet<String>,
) -> TransportSocket {
    let mut common = CommonTlsContext {
        alpn_protocols: if http {
            vec!["h2".to_string(), "http/1.1".to_string()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let mutual = matches!(
        tls.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: tls
            .subject_alt_names
            .iter()
            .map(|s| envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher {
                san_type: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType::Dns as i32,
                matcher: Some(envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                    match_pattern: Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(s.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let creds: Vec<&String> = if tls.credential_names.is_empty() {
        std::iter::once(&tls.credential_name)
            .filter(|c| !c.is_empty())
            .collect()
    } else {
        tls.credential_names.iter().collect()
    };
    if !creds.is_empty() {
        for c in &creds {
            let n = sds_name(c);
            secrets.insert(n.clone());
            common
                .tls_certificate_sds_secret_configs
                .push(sds_config(n));
        }
        if mutual {
            let ca_source = if tls.ca_cert_credential_name.is_empty() {
                sds_ca_name(creds[0])
            } else {
                sds_name(&tls.ca_cert_credential_name)
            };
            secrets.insert(ca_source.clone());
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(sds_config(ca_source)),
                        ..Default::default()
                    },
                ),
            );
        }
    } else {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(&tls.server_certificate)),
            private_key: Some(file(&tls.private_key)),
            ..Default::default()
        });
        if mutual && !tls.ca_certificates.is_empty() {
            let mut v = validation;
            v.trusted_ca = Some(file(&tls.ca_certificates));
            common.validation_context_type =
                Some(common_tls_context::ValidationContextType::ValidationContext(v));
        }
    }
    if tls.min_protocol_version != TlsProtocol::TlsAuto
        || tls.max_protocol_version != TlsProtocol::TlsAuto
        || !tls.cipher_suites.is_empty()
    {
        common.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: tls_version(tls.min_protocol_version),
            tls_maximum_protocol_version: tls_version(tls.max_protocol_version),
            cipher_suites: tls.cipher_suites.clone(),
            ..Default::default()
        });
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: tls.mode == ServerTlsMode::Mutual,
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// A gateway HCM: like a sidecar's, plus the port stripped from Host before matching (clients
/// send `example.com:8443`).
fn gateway_hcm(
    stat_prefix: String,
    route: String,
) -> envoy_types::pb::envoy::config::listener::v3::Filter {
    let mut f =
        listener::http_connection_manager(stat_prefix, listener::rds(route), HttpFilters::Outbound);
    if let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) =
        f.config_type.as_mut()
        && let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(a.value.as_slice())
    {
        hcm.strip_port_mode = Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode::StripAnyHostPort(true),
        );
        *a = any(&hcm);
    }
    f
}

/// The virtual hosts of a route configuration serving `servers`.
fn virtual_hosts(
    ctx: &RouteContext<'_>,
    config: &ConfigIndex,
    servers: &[&ServerRef<'_>],
    port: u16,
    tls: bool,
) -> Vec<VirtualHost> {
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for s in servers {
        let rctx = RouteContext {
            port,
            tls,
            gateways: std::slice::from_ref(&s.gateway),
            ..*ctx
        };
        for vs in config.gateway_vs(&s.gateway) {
            let domains = intersect(s.server, &s.gateway_key.namespace, vs);
            if domains.is_empty() {
                continue;
            }
            let routes = http_route::vs_routes(&rctx, vs);
            for d in domains {
                let vh = vhosts.entry(d.clone()).or_insert_with(|| VirtualHost {
                    name: format!("{d}:{port}"),
                    domains: vec![d.clone()],
                    include_request_attempt_count: true,
                    ..Default::default()
                });
                vh.routes.extend(routes.iter().cloned());
                if s.server.is_https_redirect() {
                    vh.require_tls = virtual_host::TlsRequirementType::All as i32;
                }
            }
        }
        if s.server.is_https_redirect() {
            for (_, h) in server_hosts(s.server) {
                let h = h.to_ascii_lowercase();
                vhosts
                    .entry(h.clone())
                    .or_insert_with(|| VirtualHost {
                        name: format!("{h}:{port}"),
                        domains: vec![h.clone()],
                        include_request_attempt_count: true,
                        ..Default::default()
                    })
                    .require_tls = virtual_host::TlsRequirementType::All as i32;
            }
        }
    }
    if vhosts.is_empty() {
        // Nothing routable: answer 404 for everything.
        return vec![VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".to_string()],
            ..Default::default()
        }];
    }
    vhosts.into_values().collect()
}

/// Listeners, routes and secrets of a gateway proxy.
pub fn gateway_config(
    snap: &MeshSnapshot,
    config: &ConfigIndex,
    proxy: &Proxy,
    visible: &crate::scope::Visibility,
) -> GatewayConfig {
    let mut out = GatewayConfig::default();
    let gateways = config.gateways_for(
        &proxy.labels,
        &proxy.namespace,
        snap.mesh.scope_gateway_to_namespace,
    );
    let mut by_listener: BTreeMap<(IpAddr, u16), Vec<ServerRef<'_>>> = BTreeMap::new();
    let default_bind = proxy
        .node
        .outbound_bind
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    for (key, gw) in &gateways {
        for (index, server) in gw.spec.servers.iter().enumerate() {
            let Ok(number) = u16::try_from(server.port.number) else {
                continue;
            };
            let bind = server.bind.parse::<IpAddr>().unwrap_or(default_bind);
            by_listener
                .entry((bind, number))
                .or_default()
                .push(ServerRef {
                    gateway: format!("{}/{}", key.namespace, key.name),
                    gateway_key: key,
                    index,
                    server,
                });
        }
    }
    let all_gateways: Vec<String> = gateways
        .iter()
        .map(|(k, _)| format!("{}/{}", k.namespace, k.name))
        .collect();
    let ctx = RouteContext {
        snap,
        config,
        proxy_ns: &proxy.namespace,
        labels: &proxy.labels,
        gateways: &all_gateways,
        port: 0,
        tls: false,
        visible,
    };
    for ((bind, port), servers) in &by_listener {
        let mut l = Listener {
            name: format!("{bind}_{port}"),
            address: Some(ip_address(*bind, *port)),
            traffic_direction: TrafficDirection::Outbound as i32,
            ..Default::default()
        };
        let first = kind(servers[0].server);
        let plain_http: Vec<&ServerRef<'_>> = servers
            .iter()
            .filter(|s| kind(s.server) == ServerKind::Http)
            .collect();
        if first == ServerKind::Http {
            let route_name = format!("http.{port}");
            out.routes.push(RouteConfiguration {
                name: route_name.clone(),
                virtual_hosts: virtual_hosts(&ctx, config, &plain_http, *port, false),
                validate_clusters: bool_value(false),
                ..Default::default()
            });
            l.filter_chains.push(FilterChain {
                filters: vec![gateway_hcm(format!("outbound_{bind}_{port}"), route_name)],
                ..Default::default()
            });
            out.listeners.push(l);
            continue;
        }
        l.listener_filters.push(listener::tls_inspector());
        for s in servers.iter() {
            let k = kind(s.server);
            let names: Vec<String> = server_hosts(s.server)
                .into_iter()
                .map(|(_, h)| h.to_string())
                .filter(|h| h != "*")
                .collect();
            match k {
                ServerKind::Https => {
                    let Some(tls) = &s.server.tls else { continue };
                    let server_name = match (&s.server.port.name, &s.server.name) {
                        (p, _) if !p.is_empty() => p.clone(),
                        (_, n) if !n.is_empty() => n.clone(),
                        _ => s.index.to_string(),
                    };
                    let route_name = format!(
                        "https.{port}.{server_name}.{}.{}",
                        s.gateway_key.name, s.gateway_key.namespace
                    );
                    out.routes.push(RouteConfiguration {
                        name: route_name.clone(),
                        virtual_hosts: virtual_hosts(&ctx, config, &[s], *port, true),
                        validate_clusters: bool_value(false),
                        ..Default::default()
                    });
                    l.filter_chains.push(FilterChain {
                        name: route_name.clone(),
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: names,
                            ..Default::default()
                        }),
                        transport_socket: Some(downstream_tls(tls, true, &mut out.secrets)),
                        filters: vec![gateway_hcm(format!("outbound_{bind}_{port}"), route_name)],
                        ..Default::default()
                    });
                }
                ServerKind::Passthrough => {
                    // One chain per SNI a bound VirtualService's `tls` rule routes.
                    for vs in config.gateway_vs(&s.gateway) {
                        let rctx = RouteContext {
                            port: *port,
                            gateways: std::slice::from_ref(&s.gateway),
                            ..ctx
                        };
                        for (i, rule) in vs.vs.spec.tls.iter().enumerate() {
                            let snis: Vec<String> = rule
                                .matches
                                .iter()
                                .filter(|m| m.port == 0 || m.port == u32::from(*port))
                                .flat_map(|m| m.sni_hosts.iter())
                                .filter(|sni| {
                                    server_hosts(s.server)
                                        .iter()
                                        .any(|(_, h)| host_matches(h, sni))
                                })
                                .cloned()
                                .collect();
                            if snis.is_empty() {
                                continue;
                            }
                            let clusters: Vec<(String, u32)> = rule
                                .route
                                .iter()
                                .map(|d| {
                                    let (c, _) = http_route::destination_cluster(
                                        &rctx,
                                        vs.namespace(),
                                        &d.destination,
                                    );
                                    (
                                        c,
                                        if rule.route.len() == 1 {
                                            100
                                        } else {
                                            d.weight.max(0) as u32
                                        },
                                    )
                                })
                                .filter(|(_, w)| *w > 0)
                                .collect();
                            if clusters.is_empty() {
                                continue;
                            }
                            l.filter_chains.push(FilterChain {
                                name: format!("{}.{}.tls.{i}", vs.key.namespace, vs.key.name),
                                filter_chain_match: Some(FilterChainMatch {
                                    server_names: snis,
                                    transport_protocol: "tls".to_string(),
                                    ..Default::default()
                                }),
                                filters: vec![listener::tcp_proxy_weighted(
                                    &format!("outbound_{bind}_{port}"),
                                    &clusters,
                                )],
                                ..Default::default()
                            });
                        }
                    }
                }
                ServerKind::TlsTcp | ServerKind::Tcp => {
                    let rctx = RouteContext {
                        port: *port,
                        gateways: std::slice::from_ref(&s.gateway),
                        ..ctx
                    };
                    let clusters = config.gateway_vs(&s.gateway).iter().find_map(|vs| {
                        let hosts_ok = vs.hosts.iter().any(|h| {
                            server_hosts(s.server)
                                .iter()
                                .any(|(_, p)| host_matches(p, h) || host_matches(h, p))
                        });
                        if !hosts_ok {
                            return None;
                        }
                        let rule = vs.vs.spec.tcp.iter().find(|r| {
                            r.matches.is_empty()
                                || r.matches
                                    .iter()
                                    .any(|m| m.port == 0 || m.port == u32::from(*port))
                        })?;
                        let c: Vec<(String, u32)> = rule
                            .route
                            .iter()
                            .map(|d| {
                                let (c, _) = http_route::destination_cluster(
                                    &rctx,
                                    vs.namespace(),
                                    &d.destination,
                                );
                                (
                                    c,
                                    if rule.route.len() == 1 {
                                        100
                                    } else {
                                        d.weight.max(0) as u32
                                    },
                                )
                            })
                            .filter(|(_, w)| *w > 0)
                            .collect();
                        (!c.is_empty()).then_some(c)
                    });
                    let Some(clusters) = clusters else { continue };
                    let mut fc = FilterChain {
                        filters: vec![listener::tcp_proxy_weighted(
                            &format!("outbound_{bind}_{port}"),
                            &clusters,
                        )],
                        ..Default::default()
                    };
                    if k == ServerKind::TlsTcp
                        && let Some(tls) = &s.server.tls
                    {
                        fc.filter_chain_match = Some(FilterChainMatch {
                            server_names: names,
                            ..Default::default()
                        });
                        fc.transport_socket = Some(downstream_tls(tls, false, &mut out.secrets));
                    }
                    l.filter_chains.push(fc);
                }
                ServerKind::Http => {}
            }
        }
        if k_is_tcp_only(servers) {
            l.listener_filters.clear();
        }
        if !l.filter_chains.is_empty() {
            out.listeners.push(l);
        }
    }
    crate::accesslog::apply(&mut out.listeners, &snap.mesh);
    out
}

fn k_is_tcp_only(servers: &[ServerRef<'_>]) -> bool {
    servers.iter().all(|s| kind(s.server) == ServerKind::Tcp)
}
