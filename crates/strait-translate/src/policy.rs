//! DestinationRule traffic policies applied to Envoy clusters: load balancing (simple,
//! consistent hash, warm-up), connection pools (circuit breakers, timeouts, keepalive, HTTP
//! options), outlier detection, and TLS to the upstream.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
    circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttp,
    KeepaliveSettings, TcpKeepalive, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, UInt64Value};
use strait_api::istio::{
    ClientTlsMode, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings, OutlierDetection,
    SimpleLb, TrafficPolicy,
};
use strait_model::Protocol;

use crate::util::{ads_config_source, any, duration, u32_value};

/// The typed extension protocol options key of upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// SDS resource name of a `credentialName`, as Istio spells it.
pub fn sds_name(credential: &str) -> String {
    format!("kubernetes://{credential}")
}

/// SDS resource name of the CA of a `credentialName`.
pub fn sds_ca_name(credential: &str) -> String {
    format!("kubernetes://{credential}-cacert")
}

/// The SDS config of a secret delivered over the same ADS stream.
pub fn sds_config(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_config_source()),
    }
}

/// Envoy's default circuit-breaker limits (1024) would throttle a busy mesh that asked for no
/// limits; like Istio, lift them unless a DestinationRule sets its own.
pub fn unlimited_thresholds() -> circuit_breakers::Thresholds {
    circuit_breakers::Thresholds {
        max_connections: u32_value(u32::MAX),
        max_pending_requests: u32_value(u32::MAX),
        max_requests: u32_value(u32::MAX),
        max_retries: u32_value(u32::MAX),
        track_remaining: true,
        ..Default::default()
    }
}

/// Upstream HTTP options being built for a cluster.
#[derive(Debug, Default, Clone)]
pub struct HttpOptions {
    /// Speak HTTP/2 to the upstream.
    pub http2: bool,
    /// Speak whatever the downstream spoke.
    pub use_downstream: bool,
    /// Common options (idle timeout, requests per connection, connection duration).
    pub common: Option<CommonHttp>,
    /// HTTP/2 options (concurrent streams, keepalive).
    pub http2_options: Http2ProtocolOptions,
}

impl HttpOptions {
    /// The options for a port's protocol, before any policy.
    pub fn for_protocol(protocol: Protocol) -> Self {
        HttpOptions {
            http2: protocol.is_http2(),
            ..Default::default()
        }
    }

    /// The cluster's `typed_extension_protocol_options` (empty when Envoy's defaults do).
    pub fn encode(&self) -> HashMap<String, Any> {
        let mut m = HashMap::new();
        let upstream = if self.use_downstream {
            Some(
                http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                    http_protocol_options::UseDownstreamHttpConfig {
                        http_protocol_options: Some(Http1ProtocolOptions::default()),
                        http2_protocol_options: Some(self.http2_options.clone()),
                        ..Default::default()
                    },
                ),
            )
        } else if self.http2 {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            self.http2_options.clone(),
                        ),
                    ),
                },
            ))
        } else {
            None
        };
        if upstream.is_none() && self.common.is_none() {
            return m;
        }
        let upstream = upstream.or(Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ));
        m.insert(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any(&HttpProtocolOptions {
                common_http_protocol_options: self.common,
                upstream_protocol_options: upstream,
                ..Default::default()
            }),
        );
        m
    }
}

/// What applying a policy needs to know besides the policy.
pub struct PolicyContext<'a> {
    /// The port's protocol.
    pub protocol: Protocol,
    /// Secrets the cluster refers to by SDS name, collected for the proxy's SDS view.
    pub secrets: &'a mut BTreeSet<String>,
}

/// Applies a DestinationRule traffic policy to a cluster. `http` accumulates the upstream
/// HTTP options; the caller encodes them once all is applied.
pub fn apply(
    c: &mut Cluster,
    p: &TrafficPolicy,
    http: &mut HttpOptions,
    ctx: &mut PolicyContext<'_>,
) {
    if let Some(lb) = &p.load_balancer {
        apply_load_balancer(c, lb);
    }
    if let Some(pool) = &p.connection_pool {
        apply_connection_pool(c, pool, http, ctx.protocol);
    }
    if let Some(od) = &p.outlier_detection {
        apply_outlier_detection(c, od);
    }
    if let Some(tls) = &p.tls {
        apply_tls(c, tls, ctx);
    }
}

fn apply_load_balancer(c: &mut Cluster, lb: &LoadBalancerSettings) {
    let warmup = lb
        .warmup
        .as_ref()
        .map(|w| w.duration)
        .or(lb.warmup_duration_secs)
        .filter(|d| !d.is_zero())
        .map(|d| cluster::SlowStartConfig {
            slow_start_window: Some(duration(d.get())),
            ..Default::default()
        });
    if let Some(ch) = &lb.consistent_hash {
        let min_ring = ch
            .ring_hash
            .as_ref()
            .map(|r| r.minimum_ring_size)
            .filter(|v| *v > 0)
            .or((ch.minimum_ring_size > 0).then_some(ch.minimum_ring_size));
        match &ch.maglev {
            Some(m) => {
                c.lb_policy = cluster::LbPolicy::Maglev as i32;
                c.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                    table_size: (m.table_size > 0).then_some(UInt64Value {
                        value: m.table_size,
                    }),
                }));
            }
            None => {
                c.lb_policy = cluster::LbPolicy::RingHash as i32;
                c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                    cluster::RingHashLbConfig {
                        minimum_ring_size: Some(UInt64Value {
                            value: min_ring.unwrap_or(1024),
                        }),
                        ..Default::default()
                    },
                ));
            }
        }
        return;
    }
    match lb.simple.unwrap_or_default() {
        SimpleLb::RoundRobin => {
            c.lb_policy = cluster::LbPolicy::RoundRobin as i32;
            if warmup.is_some() {
                c.lb_config = Some(cluster::LbConfig::RoundRobinLbConfig(
                    cluster::RoundRobinLbConfig {
                        slow_start_config: warmup,
                    },
                ));
            }
        }
        SimpleLb::Random => c.lb_policy = cluster::LbPolicy::Random as i32,
        SimpleLb::Passthrough => {
            // Connect to where the client was going, as Istio does.
            c.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
            c.load_assignment = None;
        }
        SimpleLb::LeastConn | SimpleLb::LeastRequest | SimpleLb::Unspecified => {
            c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
            if warmup.is_some() {
                c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
                    cluster::LeastRequestLbConfig {
                        slow_start_config: warmup,
                        ..Default::default()
                    },
                ));
            }
        }
    }
}

fn apply_connection_pool(
    c: &mut Cluster,
    pool: &ConnectionPoolSettings,
    http: &mut HttpOptions,
    protocol: Protocol,
) {
    let mut t = unlimited_thresholds();
    let mut common = CommonHttp::default();
    let mut has_common = false;
    if let Some(h) = &pool.http {
        if h.http2_max_requests > 0 {
            t.max_requests = u32_value(h.http2_max_requests as u32);
        }
        if h.http1_max_pending_requests > 0 {
            t.max_pending_requests = u32_value(h.http1_max_pending_requests as u32);
        }
        if h.max_retries > 0 {
            t.max_retries = u32_value(h.max_retries as u32);
        }
        if let Some(d) = h.idle_timeout {
            common.idle_timeout = Some(duration(d.get()));
            has_common = true;
        }
        if h.max_requests_per_connection > 0 {
            common.max_requests_per_connection = u32_value(h.max_requests_per_connection as u32);
            has_common = true;
        }
        if protocol.is_http() {
            match h.h2_upgrade_policy {
                H2UpgradePolicy::Upgrade => http.http2 = true,
                H2UpgradePolicy::DoNotUpgrade if !protocol.is_http2() => http.http2 = false,
                _ => {}
            }
            if h.use_client_protocol {
                http.use_downstream = true;
            }
        }
        if h.max_concurrent_streams > 0 {
            http.http2_options.max_concurrent_streams = u32_value(h.max_concurrent_streams as u32);
        }
        if let Some(k) = &h.http2_keep_alive {
            http.http2_options.connection_keepalive = Some(KeepaliveSettings {
                interval: k.interval.map(|d| duration(d.get())),
                timeout: k.timeout.map(|d| duration(d.get())),
                ..Default::default()
            });
        }
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(d) = tcp.connect_timeout {
            c.connect_timeout = Some(duration(d.get()));
        }
        if tcp.max_connections > 0 {
            t.max_connections = u32_value(tcp.max_connections as u32);
        }
        if let Some(d) = tcp.max_connection_duration {
            common.max_connection_duration = Some(duration(d.get()));
            has_common = true;
        }
        if common.idle_timeout.is_none()
            && let Some(d) = tcp.idle_timeout
        {
            common.idle_timeout = Some(duration(d.get()));
            has_common = true;
        }
        if let Some(k) = &tcp.tcp_keepalive {
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: (k.probes > 0).then(|| u32_value(k.probes)).flatten(),
                    keepalive_time: k
                        .time
                        .and_then(|d| u32_value(d.get().as_secs().max(1) as u32)),
                    keepalive_interval: k
                        .interval
                        .and_then(|d| u32_value(d.get().as_secs().max(1) as u32)),
                }),
                ..Default::default()
            });
        }
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
    if has_common && protocol.is_http() {
        http.common = Some(common);
    }
}

fn apply_outlier_detection(c: &mut Cluster, od: &OutlierDetection) {
    let mut out = EnvoyOutlier {
        // Success-rate ejection is not what Istio users configure.
        enforcing_success_rate: u32_value(0),
        ..Default::default()
    };
    let enforce = |v: u32| u32_value(if v > 0 { 100 } else { 0 });
    if let Some(v) = od.consecutive_5xx_errors {
        out.consecutive_5xx = u32_value(v);
        out.enforcing_consecutive_5xx = enforce(v);
    }
    let gateway = od
        .consecutive_gateway_errors
        // The deprecated field counted gateway errors (502, 503, 504).
        .or((od.consecutive_errors > 0).then_some(od.consecutive_errors as u32));
    if let Some(v) = gateway {
        out.consecutive_gateway_failure = u32_value(v);
        out.enforcing_consecutive_gateway_failure = enforce(v);
        if od.consecutive_5xx_errors.is_none()
            && od.consecutive_errors > 0
            && od.consecutive_gateway_errors.is_none()
        {
            // Only gateway errors eject under the deprecated field.
            out.enforcing_consecutive_5xx = u32_value(0);
        }
    }
    if let Some(d) = od.interval {
        out.interval = Some(duration(d.get()));
    }
    if let Some(d) = od.base_ejection_time {
        out.base_ejection_time = Some(duration(d.get()));
    }
    if od.max_ejection_percent > 0 {
        out.max_ejection_percent = u32_value(od.max_ejection_percent as u32);
    }
    if od.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u32_value(v);
            out.enforcing_consecutive_local_origin_failure = u32_value(100);
        }
        out.enforcing_local_origin_success_rate = u32_value(0);
    }
    c.outlier_detection = Some(out);
    // Envoy's panic threshold (50%) would send traffic to ejected hosts in small services;
    // Istio sets it from minHealthPercent (0 disables panic mode).
    let lb = c.common_lb_config.get_or_insert_with(Default::default);
    lb.healthy_panic_threshold = Some(Percent {
        value: f64::from(od.min_health_percent.max(0)),
    });
}

fn inline_file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

fn san_matchers(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: if s.contains("://") {
                subject_alt_name_matcher::SanType::Uri as i32
            } else {
                subject_alt_name_matcher::SanType::Dns as i32
            },
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(s.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn apply_tls(
    c: &mut Cluster,
    tls: &strait_api::istio::ClientTlsSettings,
    ctx: &mut PolicyContext<'_>,
) {
    if matches!(
        tls.mode,
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual
    ) {
        // ISTIO_MUTUAL needs the mesh CA, which strait does not run: traffic stays plaintext.
        return;
    }
    let mut common = CommonTlsContext::default();
    let skip_verify = tls.insecure_skip_verify.unwrap_or(false);
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(&tls.subject_alt_names),
        ..Default::default()
    };
    if !tls.credential_name.is_empty() {
        let name = sds_name(&tls.credential_name);
        if tls.mode == ClientTlsMode::Mutual {
            common
                .tls_certificate_sds_secret_configs
                .push(sds_config(name.clone()));
            ctx.secrets.insert(name);
        }
        if !skip_verify {
            let ca = sds_ca_name(&tls.credential_name);
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(sds_config(ca.clone())),
                        ..Default::default()
                    },
                ),
            );
            ctx.secrets.insert(ca);
        }
    } else {
        if tls.mode == ClientTlsMode::Mutual && !tls.client_certificate.is_empty() {
            common.tls_certificates.push(TlsCertificate {
                certificate_chain: Some(inline_file(&tls.client_certificate)),
                private_key: Some(inline_file(&tls.private_key)),
                ..Default::default()
            });
        }
        if !skip_verify && !tls.ca_certificates.is_empty() {
            let mut v = validation;
            v.trusted_ca = Some(inline_file(&tls.ca_certificates));
            common.validation_context_type =
                Some(common_tls_context::ValidationContextType::ValidationContext(v));
        }
    }
    let ctx_msg = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone(),
        ..Default::default()
    };
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx_msg))),
    });
}
