//! DestinationRule: what happens to traffic after routing picked a service: load balancing,
//! connection pool limits, outlier detection, upstream TLS, and named subsets of endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Spec;
use super::common::{
    PortSelector, WorkloadLabelSelector, check_duration, check_export_to, check_labels, check_port,
    check_selector_labels, is_default, is_dns_label, is_ip, validate_fqdn,
    validate_wildcard_domain,
};
use crate::Duration;
use crate::validate::Issues;

/// The content of a DestinationRule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service the rule applies to: a registry host name, short or fully qualified,
    /// possibly with a leading wildcard.
    pub host: String,
    /// Policies for all traffic to the host, unless a subset or port overrides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of the service's endpoints, selected by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces the rule is visible to (`.`, `*` or namespace names); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Limits the rule to the client workloads with these labels, in the rule's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
}

impl DestinationRuleSpec {
    /// The subset with this name.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// A named group of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// The subset's name, used by routes as `destination.subset`.
    pub name: String,
    /// Labels an endpoint must carry to belong to the subset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Policies for this subset; they replace the rule's top-level ones field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Policies applied to the traffic to a service (or subset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// How endpoints are picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides for single ports; an override replaces the top-level settings entirely.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnels TCP to the host over HTTP CONNECT or POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// Sends a PROXY protocol header upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Caps concurrent retries relative to active requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl TrafficPolicy {
    /// The port-level override for `port`, if any.
    pub fn port_policy(&self, port: u32) -> Option<&PortTrafficPolicy> {
        self.port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|s| s.number == port))
    }

    fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
            && self.port_level_settings.is_empty()
            && self.tunnel.is_none()
            && self.proxy_protocol.is_none()
            && self.retry_budget.is_none()
    }
}

/// Policies for one port of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port these settings apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// How endpoints are picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Load balancing: a simple policy or consistent hashing (one of the two), plus locality
/// preferences and slow start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware distribution and failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Zone-aware routing (an alternative to `localityLbSetting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated slow-start window; use `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start for new endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// The standard load balancing algorithms.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Let the proxy choose (Istio's default).
    #[default]
    Unspecified,
    /// Deprecated name for `LEAST_REQUEST`.
    LeastConn,
    /// A random healthy endpoint.
    Random,
    /// Forward to the address the client asked for, without load balancing.
    Passthrough,
    /// Each healthy endpoint in turn.
    RoundRobin,
    /// The endpoint with fewer outstanding requests among two random picks.
    LeastRequest,
}

/// Consistent hashing: one hash key, optionally one algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash on this cookie, generating it when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Use a ring hash (the default algorithm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Use Maglev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
    /// Deprecated; use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub minimum_ring_size: u64,
}

/// The request property a consistent hash is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HashKey<'a> {
    /// A request header.
    HttpHeaderName(&'a str),
    /// A cookie.
    HttpCookie(&'a HttpCookie),
    /// The client's IP address.
    SourceIp,
    /// A query parameter.
    HttpQueryParameterName(&'a str),
}

impl ConsistentHashLb {
    /// The hash key that is set, if any.
    pub fn hash_key(&self) -> Option<HashKey<'_>> {
        if let Some(h) = &self.http_header_name {
            Some(HashKey::HttpHeaderName(h))
        } else if let Some(c) = &self.http_cookie {
            Some(HashKey::HttpCookie(c))
        } else if self.use_source_ip == Some(true) {
            Some(HashKey::SourceIp)
        } else {
            self.http_query_parameter_name
                .as_deref()
                .map(HashKey::HttpQueryParameterName)
        }
    }

    fn hash_keys_set(&self) -> usize {
        usize::from(self.http_header_name.is_some())
            + usize::from(self.http_cookie.is_some())
            + usize::from(self.use_source_ip.is_some())
            + usize::from(self.http_query_parameter_name.is_some())
    }
}

/// Ring hash settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring.
    #[serde(default, skip_serializing_if = "is_default")]
    pub minimum_ring_size: u64,
}

/// Maglev settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maglev {
    /// The lookup table size; a prime number.
    #[serde(default, skip_serializing_if = "is_default")]
    pub table_size: u64,
}

/// A cookie used as hash key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    /// The cookie's name.
    pub name: String,
    /// The cookie's path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Lifetime of a generated cookie; no `ttl` means a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Extra attributes of a generated cookie.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<HttpCookieAttribute>,
}

/// One attribute of a generated cookie (`SameSite=Strict`, `Secure`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookieAttribute {
    /// The attribute's name.
    pub name: String,
    /// Its value; empty for flag attributes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Locality-aware load balancing: either weighted distribution or failover order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLoadBalancerSetting {
    /// How traffic from a locality is spread over localities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Which region takes over when a region's endpoints are unhealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order endpoints into priority tiers relative to the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Turns locality load balancing on or off for this host; unset keeps the mesh default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Weighted distribution of traffic from one locality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityDistribute {
    /// The clients' locality, `region/zone/subzone`, possibly ending in `*`.
    #[serde(default)]
    pub from: String,
    /// Target localities and their weights, which sum to 100.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// A failover from one region to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityFailover {
    /// The region whose endpoints fail.
    #[serde(default)]
    pub from: String,
    /// The region that takes over.
    #[serde(default)]
    pub to: String,
}

/// Zone-aware routing: prefer the client's zone, spill over when it lacks capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneAwareLoadBalancerSetting {
    /// Turns it on or off; unset keeps the mesh default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Order of regions to fail over to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order endpoints into priority tiers (no topology labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Fewest hosts in the local region for zone-aware routing to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

/// Slow start: new endpoints get a growing share of traffic during a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    /// Length of the window.
    pub duration: Duration,
    /// Share of its normal weight an endpoint starts with, in percent (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// How fast traffic ramps up; 1.0 (the default) is linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Limits on connections and requests to each upstream host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// Limits that apply to any connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// Limits that apply to HTTP traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// TCP connection limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Most connections to one host (0: the proxy's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_connections: i32,
    /// Timeout for establishing a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probes on upstream sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Longest a connection may live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Closes a connection idle this long (`0s` disables the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped (0: the OS default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub probes: u32,
    /// Idle time before probes start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Time between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// HTTP connection and request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Most requests queued while waiting for a connection (0: the proxy's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub http1_max_pending_requests: i32,
    /// Most active requests to a host (0: the proxy's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub http2_max_requests: i32,
    /// Most requests per connection; 1 disables keepalive (0: unlimited).
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_requests_per_connection: i32,
    /// Most outstanding retries to the cluster (0: the proxy's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_retries: i32,
    /// Closes a connection without active requests after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 upstream connections are upgraded to HTTP/2.
    #[serde(default, skip_serializing_if = "is_default")]
    pub h2_upgrade_policy: H2UpgradePolicy,
    /// Speak upstream the HTTP version the client spoke.
    #[serde(default, skip_serializing_if = "is_default")]
    pub use_client_protocol: bool,
    /// Most concurrent streams on one HTTP/2 connection (0: the proxy's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_concurrent_streams: i32,
    /// HTTP/2 PING keepalive on upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// Whether HTTP/1.1 upstream connections are upgraded to HTTP/2.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// Follow the mesh-wide setting.
    #[default]
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

/// HTTP/2 PING keepalive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http2KeepAlive {
    /// Time between PINGs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// How long to wait for a PING answer before closing the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Ejects endpoints that keep failing from the load balancing pool for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated; use `consecutiveGatewayErrors` or `consecutive5xxErrors`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub consecutive_errors: i32,
    /// Count locally originated failures (timeouts, resets) apart from upstream responses.
    #[serde(default, skip_serializing_if = "is_default")]
    pub split_external_local_origin_errors: bool,
    /// Local-origin failures in a row before ejection (needs the split above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502, 503 and 504 responses in a row before ejection; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx responses in a row before ejection; 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Base ejection time, multiplied by the number of times an endpoint was ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Largest share of endpoints that may be ejected, in percent.
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_ejection_percent: i32,
    /// Outlier detection pauses when fewer than this percentage of endpoints are healthy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_health_percent: i32,
    /// Response codes that count as errors (default: all 5xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// TLS settings for connections to the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// Whether and how to use TLS.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ClientTlsMode,
    /// Path of the client certificate file (MUTUAL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    /// Path of the client private key file (MUTUAL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// Path of the CA bundle to verify the server with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// A Secret holding the client certificate, key and CA (instead of files).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Identities the server certificate must present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// The SNI to send.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    /// Skip verifying the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Path of a certificate revocation list.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
}

/// Upstream TLS modes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plain text.
    #[default]
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// Mutual TLS with the given client certificate.
    Mutual,
    /// Mutual TLS with the mesh's own certificates.
    IstioMutual,
}

/// Tunnels TCP connections to the host through an HTTP proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Host the tunnel leads to: a DNS name or an IP address.
    pub target_host: String,
    /// Port the tunnel leads to.
    pub target_port: u32,
}

/// PROXY protocol settings for upstream connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// The PROXY protocol version.
    #[serde(default, skip_serializing_if = "is_default")]
    pub version: ProxyProtocolVersion,
}

/// PROXY protocol versions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
pub enum ProxyProtocolVersion {
    /// Version 1, human readable.
    #[default]
    V1,
    /// Version 2, binary.
    V2,
}

/// A limit on concurrent retries relative to active requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Concurrent retries as a percentage of active and pending requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries always allowed regardless of the percentage (default 3).
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_retry_concurrency: u32,
    /// Window over which requests count towards the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Spec for DestinationRuleSpec {
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues) {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        if self.host.is_empty() {
            issues.error("spec.host", "is required");
        } else if let Err(e) = validate_wildcard_domain(&self.host) {
            issues.error("spec.host", e);
        }
        if let Some(tp) = &self.traffic_policy {
            check_traffic_policy(issues, "spec.trafficPolicy", ns, tp);
        }
        let mut names = HashSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                issues.error(format!("{at}.name"), "is required");
            } else if !is_dns_label(&s.name) {
                issues.error(
                    format!("{at}.name"),
                    format!("{:?} is not a valid subset name (DNS label)", s.name),
                );
            }
            if !names.insert(s.name.as_str()) {
                issues.error(
                    format!("{at}.name"),
                    format!("duplicate subset name {:?}", s.name),
                );
            }
            check_labels(issues, &format!("{at}.labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                check_traffic_policy(issues, &format!("{at}.trafficPolicy"), ns, tp);
            }
        }
        let export = check_export_to(issues, "spec.exportTo", ns, &self.export_to, false);
        if let Some(sel) = &self.workload_selector {
            check_selector_labels(
                issues,
                "spec.workloadSelector.matchLabels",
                &sel.match_labels,
                true,
            );
            if !export.is_empty() && (!export.contains(ns) || export.len() > 1) {
                issues.error(
                    "spec.exportTo",
                    "a DestinationRule with a workloadSelector can only be exported to its own namespace",
                );
            }
        }
    }
}

fn check_traffic_policy(issues: &mut Issues, at: &str, ns: &str, tp: &TrafficPolicy) {
    if tp.is_empty() {
        issues.error(at, "traffic policy must set at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        issues.error(
            format!("{at}.tunnel"),
            "tunnel and proxyProtocol cannot be set together",
        );
    }
    if let Some(o) = &tp.outlier_detection {
        check_outlier_detection(issues, &format!("{at}.outlierDetection"), o);
    }
    if let Some(p) = &tp.connection_pool {
        check_connection_pool(issues, &format!("{at}.connectionPool"), p);
    }
    if let Some(lb) = &tp.load_balancer {
        check_load_balancer(
            issues,
            &format!("{at}.loadBalancer"),
            lb,
            tp.outlier_detection.is_some(),
        );
    }
    if let Some(tls) = &tp.tls {
        check_client_tls(issues, &format!("{at}.tls"), ns, tls);
    }
    let mut ports = HashSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pat = format!("{at}.portLevelSettings[{i}]");
        match p.port {
            None => issues.error(format!("{pat}.port"), "is required"),
            Some(PortSelector { number: 0 }) => {
                issues.error(format!("{pat}.port.number"), "is required");
            }
            Some(PortSelector { number }) => {
                check_port(issues, format!("{pat}.port.number"), number);
                if !ports.insert(number) {
                    issues.error(
                        format!("{pat}.port.number"),
                        format!("port {number} already has settings earlier in the list"),
                    );
                }
            }
        }
        if p.load_balancer.is_none()
            && p.connection_pool.is_none()
            && p.outlier_detection.is_none()
            && p.tls.is_none()
        {
            issues.error(
                &pat,
                "must set at least one of loadBalancer, connectionPool, outlierDetection or tls",
            );
            continue;
        }
        if let Some(o) = &p.outlier_detection {
            check_outlier_detection(issues, &format!("{pat}.outlierDetection"), o);
        }
        if let Some(c) = &p.connection_pool {
            check_connection_pool(issues, &format!("{pat}.connectionPool"), c);
        }
        if let Some(lb) = &p.load_balancer {
            check_load_balancer(
                issues,
                &format!("{pat}.loadBalancer"),
                lb,
                p.outlier_detection.is_some(),
            );
        }
        if let Some(tls) = &p.tls {
            check_client_tls(issues, &format!("{pat}.tls"), ns, tls);
        }
    }
    if let Some(t) = &tp.tunnel {
        let tat = format!("{at}.tunnel");
        if !matches!(t.protocol.as_str(), "" | "CONNECT" | "POST") {
            issues.error(
                format!("{tat}.protocol"),
                format!(
                    "{:?} is not a tunnel protocol (CONNECT or POST)",
                    t.protocol
                ),
            );
        }
        if validate_fqdn(&t.target_host).is_err() && !is_ip(&t.target_host) {
            issues.error(
                format!("{tat}.targetHost"),
                format!(
                    "{:?} is neither a DNS name nor an IP address",
                    t.target_host
                ),
            );
        }
        check_port(issues, format!("{tat}.targetPort"), t.target_port);
    }
    if let Some(b) = &tp.retry_budget
        && let Some(p) = b.percent
        && !(0.0..=100.0).contains(&p)
    {
        issues.error(
            format!("{at}.retryBudget.percent"),
            format!("{p} is not a percentage (0-100)"),
        );
    }
}

pub(crate) fn check_outlier_detection(issues: &mut Issues, at: &str, o: &OutlierDetection) {
    if let Some(d) = o.base_ejection_time {
        check_duration(issues, format!("{at}.baseEjectionTime"), d);
    }
    if let Some(d) = o.interval {
        check_duration(issues, format!("{at}.interval"), d);
    }
    if o.consecutive_errors != 0 {
        issues.warn(
            format!("{at}.consecutiveErrors"),
            "deprecated; use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    if !o.split_external_local_origin_errors && o.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        issues.error(
            format!("{at}.consecutiveLocalOriginFailures"),
            "only takes effect with splitExternalLocalOriginErrors: true",
        );
    }
    for (name, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if !(0..=100).contains(&v) {
            issues.error(
                format!("{at}.{name}"),
                format!("{v} is not a percentage (0-100)"),
            );
        }
    }
    for (i, c) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            issues.error(
                format!("{at}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{c} is not an HTTP status code (100-599)"),
            );
        }
    }
}

pub(crate) fn check_connection_pool(issues: &mut Issues, at: &str, p: &ConnectionPoolSettings) {
    if p.tcp.is_none() && p.http.is_none() {
        issues.error(at, "connection pool must set tcp or http");
        return;
    }
    if let Some(h) = &p.http {
        let hat = format!("{at}.http");
        for (name, v) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if v < 0 {
                issues.error(format!("{hat}.{name}"), format!("{v} is negative"));
            }
        }
        if let Some(d) = h.idle_timeout {
            check_duration(issues, format!("{hat}.idleTimeout"), d);
        }
        if h.h2_upgrade_policy == H2UpgradePolicy::Upgrade && h.use_client_protocol {
            issues.error(
                format!("{hat}.useClientProtocol"),
                "cannot be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(k) = &h.http2_keep_alive {
            for (name, d) in [("interval", k.interval), ("timeout", k.timeout)] {
                let kat = format!("{hat}.http2KeepAlive.{name}");
                match d {
                    None => issues.error(kat, "is required"),
                    Some(d) => check_duration(issues, kat, d),
                }
            }
        }
    }
    if let Some(t) = &p.tcp {
        let tat = format!("{at}.tcp");
        if t.max_connections < 0 {
            issues.error(
                format!("{tat}.maxConnections"),
                format!("{} is negative", t.max_connections),
            );
        }
        if let Some(d) = t.connect_timeout {
            check_duration(issues, format!("{tat}.connectTimeout"), d);
        }
        if let Some(d) = t.max_connection_duration {
            check_duration(issues, format!("{tat}.maxConnectionDuration"), d);
        }
        // Zero turns the idle timeout off.
        if let Some(d) = t.idle_timeout
            && d.get().as_millis() != 0
        {
            check_duration(issues, format!("{tat}.idleTimeout"), d);
        }
        if let Some(k) = &t.tcp_keepalive {
            if let Some(d) = k.time {
                check_duration(issues, format!("{tat}.tcpKeepalive.time"), d);
            }
            if let Some(d) = k.interval {
                check_duration(issues, format!("{tat}.tcpKeepalive.interval"), d);
            }
        }
    }
}

/// Maglev table sizes must stay below this prime (Envoy's limit).
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return x == 1; // Envoy counts 1 as "prime" here; 0 is caught as unset.
    }
    if x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn check_load_balancer(
    issues: &mut Issues,
    at: &str,
    lb: &LoadBalancerSettings,
    has_outlier: bool,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        issues.error(at, "only one of simple or consistentHash may be set");
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        issues.warn(
            format!("{at}.simple"),
            "LEAST_CONN is deprecated; use LEAST_REQUEST",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let cat = format!("{at}.consistentHash");
        match ch.hash_keys_set() {
            0 => issues.warn(
                &cat,
                "no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName) is set, so requests are not sticky",
            ),
            1 => {}
            _ => issues.error(
                &cat,
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set",
            ),
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                issues.error(format!("{cat}.httpCookie.name"), "is required");
            }
            let mut seen = HashSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let aat = format!("{cat}.httpCookie.attributes[{i}].name");
                if a.name.is_empty() {
                    issues.error(aat, "is required");
                } else if !seen.insert(a.name.as_str()) {
                    issues.error(aat, format!("duplicate cookie attribute {:?}", a.name));
                }
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            issues.error(&cat, "only one of ringHash or maglev may be set");
        }
        if ch.minimum_ring_size != 0 {
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                issues.error(
                    format!("{cat}.minimumRingSize"),
                    "cannot be combined with ringHash or maglev",
                );
            } else {
                issues.warn(
                    format!("{cat}.minimumRingSize"),
                    "deprecated; use ringHash.minimumRingSize",
                );
            }
        }
        if let Some(m) = &ch.maglev {
            let mat = format!("{cat}.maglev.tableSize");
            if m.table_size == 0 {
                issues.error(mat, "is required for maglev");
            } else if m.table_size >= MAGLEV_MAX_TABLE_SIZE {
                issues.error(
                    mat,
                    format!(
                        "{} is too large (must be below {MAGLEV_MAX_TABLE_SIZE})",
                        m.table_size
                    ),
                );
            } else if !is_prime(m.table_size) {
                issues.error(mat, format!("{} is not a prime number", m.table_size));
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        issues.error(
            at,
            "only one of localityLbSetting or zoneAwareLbSetting may be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        check_locality_lb(issues, &format!("{at}.localityLbSetting"), l, has_outlier);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        check_zone_aware_lb(issues, &format!("{at}.zoneAwareLbSetting"), z, has_outlier);
    }
    if lb.warmup_duration_secs.is_some() && lb.warmup.is_some() {
        issues.error(at, "only one of warmupDurationSecs or warmup may be set");
    }
    if let Some(d) = lb.warmup_duration_secs {
        check_duration(issues, format!("{at}.warmupDurationSecs"), d);
    }
    if let Some(w) = &lb.warmup {
        let wat = format!("{at}.warmup");
        check_duration(issues, format!("{wat}.duration"), w.duration);
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            issues.error(
                format!("{wat}.minimumPercent"),
                format!("{p} is not a percentage (0-100)"),
            );
        }
        if let Some(a) = w.aggression
            && a <= 0.0
        {
            issues.error(
                format!("{wat}.aggression"),
                format!("{a} must be greater than 0"),
            );
        }
    }
}

const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

fn check_failovers(issues: &mut Issues, at: &str, failover: &[LocalityFailover]) {
    for (i, f) in failover.iter().enumerate() {
        let fat = format!("{at}.failover[{i}]");
        if f.from == f.to {
            issues.error(
                &fat,
                format!("from and to are the same region {:?}", f.from),
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            issues.error(&fat, "failover names regions only (no zone or subzone)");
        }
        if f.from.contains('*') || f.to.contains('*') {
            issues.error(&fat, "failover regions cannot contain the '*' wildcard");
        }
    }
}

pub(crate) fn check_locality_lb(
    issues: &mut Issues,
    at: &str,
    l: &LocalityLoadBalancerSetting,
    has_outlier: bool,
) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        issues.error(at, "distribute and failover cannot both be set");
        return;
    }
    if !l.failover.is_empty()
        && let Some(label) = l
            .failover_priority
            .iter()
            .find(|p| TOPOLOGY_LABELS.contains(&p.as_str()))
    {
        issues.error(
            format!("{at}.failoverPriority"),
            format!("cannot use the topology label {label:?} together with failover"),
        );
        return;
    }
    for (i, d) in l.distribute.iter().enumerate() {
        let dat = format!("{at}.distribute[{i}].to");
        let mut total: u64 = 0;
        let mut weights_ok = true;
        for (loc, w) in &d.to {
            if *w == 0 || *w > 100 {
                issues.error(
                    format!("{dat}[{loc}]"),
                    format!("weight {w} is not in the range 1-100"),
                );
                weights_ok = false;
            }
            total += u64::from(*w);
        }
        if weights_ok && total != 100 {
            issues.error(&dat, format!("weights sum to {total}, not 100"));
        }
        if let Err(e) = check_localities(d.to.keys().map(String::as_str)) {
            issues.error(&dat, e);
        }
    }
    if let Err(e) = check_localities(l.distribute.iter().map(|d| d.from.as_str())) {
        issues.error(format!("{at}.distribute"), e);
    }
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        issues.warn(
            at,
            "failover only happens when outlierDetection is set to find unhealthy endpoints",
        );
    }
    check_failovers(issues, at, &l.failover);
}

fn check_zone_aware_lb(
    issues: &mut Issues,
    at: &str,
    z: &ZoneAwareLoadBalancerSetting,
    has_outlier: bool,
) {
    for (i, p) in z.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&p.as_str()) {
            issues.error(
                format!("{at}.failoverPriority[{i}]"),
                format!("{p:?}: region and zone ordering is automatic with zone-aware routing"),
            );
        }
    }
    if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !has_outlier {
        issues.warn(
            at,
            "failover only happens when outlierDetection is set to find unhealthy endpoints",
        );
    }
    check_failovers(issues, at, &z.failover);
    if z.min_cluster_size == Some(0) {
        issues.error(format!("{at}.minClusterSize"), "must be at least 1");
    }
}

/// Localities (`region`, `region/zone`, `region/zone/subzone`, optionally ending in `*`) that
/// do not overlap each other.
fn check_localities<'a>(localities: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks "all of it".
    let mut seen: HashMap<&str, HashMap<&str, BTreeSet<&str>>> = HashMap::new();
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {loc:?}: at most one '*' wildcard, and only at the end"
            ));
        }
        let overlap = || Err(format!("locality {loc:?} overlaps one given before"));
        if seen.contains_key("*") {
            return overlap();
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {loc:?} has an empty region, zone or subzone"
            ));
        }
        match parts.as_slice() {
            [region] => {
                if seen.contains_key(region) {
                    return overlap();
                }
                seen.insert(region, HashMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return overlap();
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return overlap();
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || !subzones.insert(subzone) {
                    return overlap();
                }
            }
            _ => unreachable!("splitn(3) yields one to three parts"),
        }
    }
    Ok(())
}

const CONFIGMAP_PREFIX: &str = "configmap://";

fn check_client_tls(issues: &mut Issues, at: &str, ns: &str, tls: &ClientTlsSettings) {
    if let Some(rest) = tls.credential_name.strip_prefix(CONFIGMAP_PREFIX) {
        let other_ns = rest.split_once('/').map(|(n, _)| n).filter(|n| *n != ns);
        if rest.is_empty() || rest.ends_with('/') || other_ns.is_some() || ns.is_empty() {
            issues.error(
                format!("{at}.credentialName"),
                format!("a configmap:// credential must name a ConfigMap in namespace {ns:?}"),
            );
        }
    }
    let skip_verify = tls.insecure_skip_verify == Some(true);
    match tls.mode {
        ClientTlsMode::Simple
            if skip_verify
                && (!tls.ca_certificates.is_empty()
                    || !tls.credential_name.is_empty()
                    || !tls.subject_alt_names.is_empty()) =>
        {
            issues.error(
                format!("{at}.insecureSkipVerify"),
                "cannot be combined with caCertificates, credentialName or subjectAltNames",
            );
        }
        ClientTlsMode::Mutual
            if skip_verify
                && (!tls.ca_certificates.is_empty() || !tls.subject_alt_names.is_empty()) =>
        {
            issues.error(
                format!("{at}.insecureSkipVerify"),
                "cannot be combined with caCertificates or subjectAltNames",
            );
        }
        _ => {}
    }
    let simple_or_mutual = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    if simple_or_mutual && !tls.credential_name.is_empty() {
        if !tls.client_certificate.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.ca_crl.is_empty()
        {
            issues.error(
                format!("{at}.credentialName"),
                "cannot be combined with clientCertificate, privateKey, caCertificates or caCrl",
            );
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_empty() {
            issues.error(
                format!("{at}.clientCertificate"),
                "is required for MUTUAL TLS (or set credentialName)",
            );
        }
        if tls.private_key.is_empty() {
            issues.error(
                format!("{at}.privateKey"),
                "is required for MUTUAL TLS (or set credentialName)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Object, parse_object};

    fn parse(yaml: &str) -> DestinationRule {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_object(v, "default").expect("parses").object {
            Object::DestinationRule(dr) => dr,
            other => panic!("not a DestinationRule: {other:?}"),
        }
    }

    use super::super::DestinationRule;

    fn issues_of(dr: &DestinationRule) -> Issues {
        Object::DestinationRule(dr.clone()).validate()
    }

    fn errors(dr: &DestinationRule) -> Vec<(String, String)> {
        issues_of(dr)
            .errors()
            .map(|i| (i.field.clone(), i.message.clone()))
            .collect()
    }

    fn error_fields(dr: &DestinationRule) -> Vec<String> {
        errors(dr).into_iter().map(|(f, _)| f).collect()
    }

    fn mk_dr(spec_yaml: &str) -> DestinationRule {
        let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
        parse(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\n  namespace: shop\nspec:\n{indented}"
        ))
    }

    const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive:
          time: 7200s
          interval: 75s
      http:
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        h2UpgradePolicy: UPGRADE
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
    tls:
      mode: ISTIO_MUTUAL
    portLevelSettings:
    - port:
        number: 9080
      loadBalancer:
        consistentHash:
          httpCookie:
            name: user
            ttl: 0s
          ringHash:
            minimumRingSize: 1024
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
  - name: v3
    labels:
      version: v3
"#;

    #[test]
    fn parses_bookinfo_reviews() {
        let dr = parse(REVIEWS);
        assert_eq!(dr.metadata.namespace.as_deref(), Some("default"));
        let s = &dr.spec;
        assert_eq!(s.host, "reviews");
        let tp = s.traffic_policy.as_ref().expect("policy");
        assert_eq!(
            tp.load_balancer.as_ref().and_then(|l| l.simple),
            Some(SimpleLb::Random)
        );
        let pool = tp.connection_pool.as_ref().expect("pool");
        let tcp = pool.tcp.as_ref().expect("tcp");
        assert_eq!(tcp.max_connections, 100);
        assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(30)));
        assert_eq!(
            tcp.tcp_keepalive.as_ref().and_then(|k| k.interval),
            Some(Duration::from_secs(75))
        );
        let http = pool.http.as_ref().expect("http");
        assert_eq!(http.http2_max_requests, 1000);
        assert_eq!(http.h2_upgrade_policy, H2UpgradePolicy::Upgrade);
        let od = tp.outlier_detection.as_ref().expect("outlier");
        assert_eq!(od.consecutive_5xx_errors, Some(7));
        assert_eq!(od.interval, Some(Duration::from_secs(300)));
        assert_eq!(od.max_ejection_percent, 50);
        assert_eq!(
            tp.tls.as_ref().map(|t| t.mode),
            Some(ClientTlsMode::IstioMutual)
        );
        let port = tp.port_policy(9080).expect("port policy");
        let ch = port
            .load_balancer
            .as_ref()
            .and_then(|l| l.consistent_hash.as_ref())
            .expect("hash");
        match ch.hash_key() {
            Some(HashKey::HttpCookie(c)) => {
                assert_eq!(c.name, "user");
                assert_eq!(c.ttl, Some(Duration::from_secs(0)));
            }
            other => panic!("unexpected hash key {other:?}"),
        }
        assert_eq!(
            ch.ring_hash.as_ref().map(|r| r.minimum_ring_size),
            Some(1024)
        );
        assert_eq!(s.subsets.len(), 3);
        assert_eq!(
            s.subset("v2").map(|v| v.labels["version"].as_str()),
            Some("v2")
        );
        assert!(
            s.subset("v2")
                .and_then(|v| v.traffic_policy.as_ref())
                .is_some()
        );
        let issues = issues_of(&dr);
        assert!(issues.items().is_empty(), "{:?}", issues.items());
    }

    #[test]
    fn round_trips() {
        let dr = parse(REVIEWS);
        let json = serde_json::to_value(&dr).expect("serialize");
        let again: DestinationRule = serde_json::from_value(json).expect("re-parse");
        assert_eq!(again, dr);
    }

    #[test]
    fn unknown_enum_value_names_the_value() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default").expect_err("bad enum");
        let text = err.to_string();
        assert!(text.contains("FASTEST"), "{text}");
        assert!(
            text.contains("spec.trafficPolicy.loadBalancer.simple"),
            "{text}"
        );
    }

    #[test]
    fn host_and_subsets() {
        let dr = mk_dr(
            "host: ''\nsubsets:\n- {name: v1}\n- {name: v1}\n- {name: V_2}\n- {name: v3, labels: {'bad key!': x}}\n",
        );
        assert_eq!(
            error_fields(&dr),
            [
                "spec.host",
                "spec.subsets[1].name",
                "spec.subsets[2].name",
                "spec.subsets[3].labels[bad key!]"
            ]
        );
        let dr = mk_dr("host: 'foo.*.com'\n");
        assert_eq!(error_fields(&dr), ["spec.host"]);
    }

    #[test]
    fn empty_traffic_policy_is_refused() {
        let dr = mk_dr("host: a\ntrafficPolicy: {}\n");
        assert_eq!(error_fields(&dr), ["spec.trafficPolicy"]);
    }

    #[test]
    fn load_balancer_oneofs() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    simple: ROUND_ROBIN\n    consistentHash:\n      httpHeaderName: x-user\n      useSourceIp: true\n      ringHash: {minimumRingSize: 10}\n      maglev: {tableSize: 65537}\n",
        );
        assert_eq!(
            error_fields(&dr),
            [
                "spec.trafficPolicy.loadBalancer",
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "spec.trafficPolicy.loadBalancer.consistentHash"
            ]
        );
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      maglev: {tableSize: 1000}\n",
        );
        let issues = issues_of(&dr);
        assert_eq!(
            error_fields(&dr),
            ["spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"]
        );
        assert_eq!(issues.warnings().count(), 1, "no hash key");
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    consistentHash:\n      httpCookie: {name: ''}\n      minimumRingSize: 5\n      ringHash: {}\n",
        );
        assert_eq!(
            error_fields(&dr),
            [
                "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
                "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize"
            ]
        );
    }

    #[test]
    fn warmup() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    simple: LEAST_REQUEST\n    warmupDurationSecs: 10s\n    warmup: {duration: 0s, minimumPercent: 120, aggression: 0}\n",
        );
        assert_eq!(
            error_fields(&dr),
            [
                "spec.trafficPolicy.loadBalancer",
                "spec.trafficPolicy.loadBalancer.warmup.duration",
                "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
                "spec.trafficPolicy.loadBalancer.warmup.aggression"
            ]
        );
    }

    #[test]
    fn connection_pool_limits() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp: {maxConnections: -1, connectTimeout: 0s, idleTimeout: 0s}\n    http:\n      http1MaxPendingRequests: -2\n      maxRetries: -1\n      h2UpgradePolicy: UPGRADE\n      useClientProtocol: true\n      http2KeepAlive: {interval: 10s}\n",
        );
        assert_eq!(
            error_fields(&dr),
            [
                "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
                "spec.trafficPolicy.connectionPool.http.maxRetries",
                "spec.trafficPolicy.connectionPool.http.useClientProtocol",
                "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
                "spec.trafficPolicy.connectionPool.tcp.maxConnections",
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout"
            ]
        );
        let dr = mk_dr("host: a\ntrafficPolicy:\n  connectionPool: {}\n");
        assert_eq!(error_fields(&dr), ["spec.trafficPolicy.connectionPool"]);
    }

    #[test]
    fn outlier_detection_rules() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  outlierDetection:\n    consecutiveErrors: 5\n    consecutiveLocalOriginFailures: 3\n    interval: 0.5ms\n    baseEjectionTime: 1.5ms\n    maxEjectionPercent: 101\n    minHealthPercent: -1\n    outlierDetectionHttpErrorCodes: [503, 99]\n",
        );
        let p = "spec.trafficPolicy.outlierDetection";
        assert_eq!(
            error_fields(&dr),
            [
                format!("{p}.baseEjectionTime"),
                format!("{p}.interval"),
                format!("{p}.consecutiveLocalOriginFailures"),
                format!("{p}.maxEjectionPercent"),
                format!("{p}.minHealthPercent"),
                format!("{p}.outlierDetectionHttpErrorCodes[1]"),
            ]
        );
        assert_eq!(
            issues_of(&dr).warnings().count(),
            1,
            "deprecated consecutiveErrors"
        );
    }

    #[test]
    fn client_tls_rules() {
        let dr = mk_dr("host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL}\n");
        assert_eq!(
            error_fields(&dr),
            [
                "spec.trafficPolicy.tls.clientCertificate",
                "spec.trafficPolicy.tls.privateKey"
            ]
        );
        let dr =
            mk_dr("host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL, credentialName: client-cert}\n");
        assert!(error_fields(&dr).is_empty());
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL, credentialName: c, caCertificates: /ca.pem}\n",
        );
        assert_eq!(error_fields(&dr), ["spec.trafficPolicy.tls.credentialName"]);
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}\n",
        );
        assert_eq!(
            error_fields(&dr),
            ["spec.trafficPolicy.tls.insecureSkipVerify"]
        );
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE, credentialName: 'configmap://other/ca'}\n",
        );
        assert_eq!(error_fields(&dr), ["spec.trafficPolicy.tls.credentialName"]);
    }

    #[test]
    fn locality_settings() {
        let base = "host: a\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer:\n    localityLbSetting:\n";
        let dr = mk_dr(&format!(
            "{base}      distribute: [{{from: us-west/zone1/*, to: {{us-west/zone1/*: 80}}}}]\n      failover: [{{from: us-east, to: eu-west}}]\n"
        ));
        assert_eq!(
            error_fields(&dr),
            ["spec.trafficPolicy.loadBalancer.localityLbSetting"]
        );
        let dr = mk_dr(&format!(
            "{base}      distribute:\n      - {{from: 'us-west/*/x', to: {{'us-west/zone1/*': 80, 'us-west/zone2/*': 20}}}}\n      - {{from: 'eu/zone1/*', to: {{'eu/zone1/*': 50, 'eu/zone2/*': 40}}}}\n      - {{from: 'eu/zone1/*', to: {{'eu/*': 100}}}}\n"
        ));
        let p = "spec.trafficPolicy.loadBalancer.localityLbSetting";
        assert_eq!(
            error_fields(&dr),
            [format!("{p}.distribute[1].to"), format!("{p}.distribute")]
        );
        let dr = mk_dr(&format!(
            "{base}      failover: [{{from: us-east, to: us-east}}, {{from: us-east/a, to: eu}}, {{from: '*', to: eu}}]\n"
        ));
        assert_eq!(
            error_fields(&dr),
            [
                format!("{p}.failover[0]"),
                format!("{p}.failover[1]"),
                format!("{p}.failover[2]")
            ]
        );
        let dr = mk_dr(&format!(
            "{base}      failover: [{{from: us-east, to: eu}}]\n      failoverPriority: [topology.kubernetes.io/zone]\n"
        ));
        assert_eq!(error_fields(&dr), [format!("{p}.failoverPriority")]);
        // Failover without outlier detection works but never triggers.
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failover: [{from: us-east, to: eu}]\n",
        );
        let issues = issues_of(&dr);
        assert!(!issues.has_errors());
        assert_eq!(issues.warnings().count(), 1);
    }

    #[test]
    fn localities_overlap() {
        assert!(check_localities(["a/b/c", "a/b/d", "a/e"].into_iter()).is_ok());
        assert!(check_localities(["a", "a/b"].into_iter()).is_err());
        assert!(check_localities(["a/b", "a/b/c"].into_iter()).is_err());
        assert!(check_localities(["*", "b"].into_iter()).is_err());
        assert!(check_localities(["a/*/c"].into_iter()).is_err());
        assert!(check_localities(["a//c"].into_iter()).is_err());
    }

    #[test]
    fn port_level_settings() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  portLevelSettings:\n  - port: {number: 80}\n    tls: {mode: ISTIO_MUTUAL}\n  - port: {number: 80}\n    tls: {mode: DISABLE}\n  - tls: {mode: DISABLE}\n  - port: {number: 70000}\n  - port: {}\n    tls: {mode: DISABLE}\n",
        );
        let p = "spec.trafficPolicy.portLevelSettings";
        assert_eq!(
            error_fields(&dr),
            [
                format!("{p}[1].port.number"),
                format!("{p}[2].port"),
                format!("{p}[3].port.number"),
                format!("{p}[3]"),
                format!("{p}[4].port.number"),
            ]
        );
    }

    #[test]
    fn tunnel_and_proxy_protocol() {
        let dr = mk_dr(
            "host: a\ntrafficPolicy:\n  tunnel: {protocol: GET, targetHost: 'bad host', targetPort: 0}\n  proxyProtocol: {version: V2}\n",
        );
        let p = "spec.trafficPolicy.tunnel";
        assert_eq!(
            error_fields(&dr),
            [
                p.to_string(),
                format!("{p}.protocol"),
                format!("{p}.targetHost"),
                format!("{p}.targetPort")
            ]
        );
    }

    #[test]
    fn export_to_and_selector() {
        let dr = mk_dr("host: a\nexportTo: ['.', shop, '*', '~', Bad_NS]\n");
        assert_eq!(
            error_fields(&dr),
            [
                "spec.exportTo[1]",
                "spec.exportTo[3]",
                "spec.exportTo[4]",
                "spec.exportTo"
            ]
        );
        let dr =
            mk_dr("host: a\nexportTo: [other]\nworkloadSelector:\n  matchLabels: {app: '*'}\n");
        assert_eq!(
            error_fields(&dr),
            ["spec.workloadSelector.matchLabels[app]", "spec.exportTo"]
        );
        let dr = mk_dr("host: a\nexportTo: ['.']\nworkloadSelector: {matchLabels: {}}\n");
        let issues = issues_of(&dr);
        assert!(!issues.has_errors(), "{:?}", issues.items());
        assert_eq!(issues.warnings().count(), 1);
    }
}
