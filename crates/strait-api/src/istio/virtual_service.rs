//! VirtualService: routing rules for traffic addressed to a set of hosts, applied by sidecars
//! (the `mesh` gateway) and/or by named Gateways. HTTP rules can match, rewrite, redirect,
//! retry, mirror and inject faults; TLS rules route by SNI; TCP rules by address and port.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Spec;
use super::common::{
    Destination, Percent, StringMatch, check_destination, check_duration, check_export_to,
    check_gateway_names, check_labels, check_percentage, check_port, check_regex,
    check_string_match, host_subset_of, hosts_overlap, is_default, is_dns_label, is_header_token,
    is_ip, validate_header_value, validate_ip_subnet, validate_wildcard_domain,
};
use crate::Duration;
use crate::validate::Issues;

/// The gateway name that stands for all sidecars in the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// The content of a VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Hosts the rules apply to: DNS names (possibly wildcarded), short service names or IPs.
    /// Empty for a delegate VirtualService, which is only used through another one's
    /// `delegate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways (`[namespace/]name`) and/or `mesh` that apply the rules; empty means `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Rules for HTTP traffic, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Rules for TLS traffic that is passed through, routed by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Rules for opaque TCP traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces the rules are visible to (`.`, `*` or namespace names); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

impl VirtualServiceSpec {
    /// True for a delegate (a VirtualService without hosts, used through `delegate`).
    pub fn is_delegate(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The gateways the rules apply to; `mesh` when none are named.
    pub fn effective_gateways(&self) -> Vec<&str> {
        if self.gateways.is_empty() {
            vec![MESH_GATEWAY]
        } else {
            self.gateways.iter().map(String::as_str).collect()
        }
    }

    /// True when the rules apply to sidecars.
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }
}

/// One HTTP routing rule: conditions and what to do with matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// A name for the rule, used in logs and stats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Conditions, any of which selects the rule; none means every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Where to forward requests, with weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand matching requests to the rules of another (delegate) VirtualService.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Timeout for the whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Faults to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Also send a copy of each request here, ignoring the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Several mirrors, each with its own percentage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated: share of requests mirrored, whole percent; use `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// Share of requests mirrored to `mirror` (default 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes for requests and responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl HttpRoute {
    /// True when the rule answers with a redirect.
    pub fn is_redirect(&self) -> bool {
        self.redirect.is_some()
    }

    /// True when the rule answers with a fixed response.
    pub fn is_direct_response(&self) -> bool {
        self.direct_response.is_some()
    }

    /// True when the rule hands over to a delegate VirtualService.
    pub fn is_delegate(&self) -> bool {
        self.delegate.is_some()
    }

    /// True when the rule has no conditions and so matches every request.
    pub fn matches_everything(&self) -> bool {
        self.matches.is_empty()
    }

    /// The mirror percentage in effect for `mirror`: `mirrorPercentage`, else the deprecated
    /// `mirrorPercent`, else none (everything is mirrored).
    pub fn effective_mirror_percentage(&self) -> Option<f64> {
        self.mirror_percentage
            .map(|p| p.value)
            .or(self.mirror_percent.map(f64::from))
    }
}

/// Conditions on an HTTP request; all given conditions must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// A name for the condition, appended to the rule's name in logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The URI scheme (`http`, `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The authority (Host header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Request headers by (lower-case) name; `{}` asks for presence only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// The port the request arrived on.
    #[serde(default, skip_serializing_if = "is_default")]
    pub port: u32,
    /// Labels the calling workload must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this condition is limited to (overrides the VirtualService's list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameters by name; `{}` asks for presence only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Compare `uri` case-insensitively.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ignore_uri_case: bool,
    /// Headers that must not match (or, with `{}`, must be absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
    /// Prefix for stats of requests matching this condition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
}

/// A weighted destination of an HTTP rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative share of traffic; a lone destination gets everything.
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight: i32,
    /// Header changes for traffic to this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A weighted destination of a TLS or TCP rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative share of connections; a lone destination gets everything.
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight: i32,
}

/// Header changes for requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// Changes to the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Changes to the response before it is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Header changes: overwrite, append, remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Headers to set, replacing existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to append.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// One TLS routing rule, matched on SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// Conditions, any of which selects the rule.
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Where to send matching connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions on a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    /// SNI values to match; each must fall under one of the VirtualService's hosts.
    pub sni_hosts: Vec<String>,
    /// Destination IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// The port the connection arrived on.
    #[serde(default, skip_serializing_if = "is_default")]
    pub port: u32,
    /// Labels the calling workload must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this condition is limited to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
}

/// One TCP routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// Conditions, any of which selects the rule; none means every connection.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    /// Where to send matching connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// Conditions on a TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Destination IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// The port the connection arrived on.
    #[serde(default, skip_serializing_if = "is_default")]
    pub port: u32,
    /// Source IP address or CIDR block.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_subnet: String,
    /// Labels the calling workload must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this condition is limited to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace the calling workload must run in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
}

/// A redirect response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    /// Replace the whole path with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Replace the authority (host) with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// Replace the port with this (one of `port` and `derivePort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Derive the port (one of `port` and `derivePort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme with this (`http` or `https`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    /// The status code (default 301).
    #[serde(default, skip_serializing_if = "is_default")]
    pub redirect_code: u32,
    /// Replace the matched path prefix with this (the rule must match on a uri prefix).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix_rewrite: String,
}

/// How a redirect picks its port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    #[default]
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    /// The status code.
    pub status: u32,
    /// The body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// A response body: text or base64-encoded bytes (one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpBody {
    /// The body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// The body as base64 (standard alphabet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

impl HttpBody {
    /// The body's bytes (`string` as UTF-8, or `bytes` decoded).
    pub fn contents(&self) -> Result<Vec<u8>, String> {
        match (&self.string, &self.bytes) {
            (Some(s), _) => Ok(s.as_bytes().to_vec()),
            (None, Some(b)) => decode_base64(b),
            (None, None) => Ok(Vec::new()),
        }
    }
}

/// Decodes standard base64, padded or not (as protobuf JSON writes `bytes`, URL-safe accepted).
fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let data = s.trim_end_matches('=').as_bytes();
    if data.len() % 4 == 1 {
        return Err("invalid base64 length".to_string());
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            let v = val(*c).ok_or_else(|| format!("invalid base64 character {:?}", *c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// Names the delegate VirtualService whose rules handle matching requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    /// The delegate's name.
    #[serde(default)]
    pub name: String,
    /// The delegate's namespace; empty for the same namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Rewrites applied before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replace the matched part of the path (the prefix or the whole exact path) with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Replace the authority (host) with this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// Rewrite the path with a regex substitution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex substitution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    /// RE2 expression to match.
    #[serde(default, rename = "match", skip_serializing_if = "String::is_empty")]
    pub pattern: String,
    /// Replacement, with `\1`-style references to capture groups.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rewrite: String,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Retries allowed per request; 0 disables retries.
    #[serde(default, skip_serializing_if = "is_default")]
    pub attempts: i32,
    /// Timeout for each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated retry conditions (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on`
    /// names, or HTTP status codes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub retry_on: String,
    /// Whether retries may go to other localities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    /// Whether retries avoid hosts already tried (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries (default 25ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

impl HttpRetry {
    /// The retry conditions of `retryOn`, split on commas.
    pub fn retry_on_policies(&self) -> impl Iterator<Item = &str> {
        self.retry_on.split(',').filter(|s| !s.is_empty())
    }
}

/// CORS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated exact origins; use `allowOrigins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Origins allowed to make requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Methods allowed (`Access-Control-Allow-Methods`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed (`Access-Control-Allow-Headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers exposed (`Access-Control-Expose-Headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached (whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed (`Access-Control-Allow-Credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// What to do with preflight requests from origins that do not match.
    #[serde(default, skip_serializing_if = "is_default")]
    pub unmatched_preflights: UnmatchedPreflights,
}

/// Handling of preflight requests from origins that are not allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// The default, which is `FORWARD`.
    #[default]
    Unspecified,
    /// Pass them on to the upstream.
    Forward,
    /// Answer them without CORS headers.
    Ignore,
}

/// Faults injected into matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    /// Delay requests before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// Deprecated whole-percent share of delayed requests; use `percentage`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub percent: i32,
    /// A fixed delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// An exponential delay (not supported by Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// An injected error (one of `httpStatus`, `grpcStatus`, `http2Error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// Answer with this HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// Answer with this gRPC status (`UNAVAILABLE`, `NOT_FOUND`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Reset with this HTTP/2 error (not supported by Istio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One mirror target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests mirrored (default 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Spec for VirtualServiceSpec {
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues) {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let delegate = self.is_delegate();
        if delegate {
            if !self.gateways.is_empty() {
                issues.error(
                    "spec.gateways",
                    "a delegate VirtualService (one without hosts) cannot name gateways",
                );
            }
            if !self.tls.is_empty() {
                issues.error(
                    "spec.tls",
                    "a delegate VirtualService (one without hosts) cannot have tls rules",
                );
            }
            if !self.tcp.is_empty() {
                issues.error(
                    "spec.tcp",
                    "a delegate VirtualService (one without hosts) cannot have tcp rules",
                );
            }
        }
        check_gateway_names(issues, "spec.gateways", &self.gateways);
        let on_gateway = !self.applies_to_mesh();

        if !on_gateway {
            for (i, r) in self.http.iter().enumerate() {
                for (j, m) in r.matches.iter().enumerate() {
                    for (what, map) in [
                        ("headers", &m.headers),
                        ("withoutHeaders", &m.without_headers),
                    ] {
                        for k in map.keys().filter(|k| is_jwt_claim(k)) {
                            issues.error(
                                format!("spec.http[{i}].match[{j}].{what}[{k}]"),
                                "routing on JWT claims only works on gateways",
                            );
                        }
                    }
                }
            }
        }

        let sni = self
            .tls
            .iter()
            .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
        let mut all_hosts_valid = true;
        for (i, h) in self.hosts.iter().enumerate() {
            let at = format!("spec.hosts[{i}]");
            let res = if on_gateway {
                validate_gateway_bound_host(sni, h)
            } else {
                validate_wildcard_domain(h)
            };
            match res {
                Err(_) if is_ip(h) => {}
                Err(e) => {
                    issues.error(at, e);
                    all_hosts_valid = false;
                }
                Ok(()) if !on_gateway && h == "*" => {
                    issues.error(
                        at,
                        "\"*\" is only allowed in a VirtualService bound to gateways (not to the mesh)",
                    );
                    all_hosts_valid = false;
                }
                Ok(()) => {}
            }
        }
        if all_hosts_valid {
            for (i, a) in self.hosts.iter().enumerate() {
                for (j, b) in self.hosts.iter().enumerate().skip(i + 1) {
                    if hosts_overlap(a, b) {
                        issues.error(
                            format!("spec.hosts[{j}]"),
                            format!("{b:?} overlaps hosts[{i}] {a:?}"),
                        );
                    }
                }
            }
        }

        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            issues.error("spec", "at least one of http, tcp or tls rules is required");
        }
        for (i, r) in self.http.iter().enumerate() {
            check_http_route(issues, &format!("spec.http[{i}]"), r, delegate);
        }
        for (i, r) in self.tls.iter().enumerate() {
            check_tls_route(issues, &format!("spec.tls[{i}]"), r, self, on_gateway);
        }
        for (i, r) in self.tcp.iter().enumerate() {
            check_tcp_route(issues, &format!("spec.tcp[{i}]"), r);
        }
        check_export_to(issues, "spec.exportTo", ns, &self.export_to, false);

        warn_unreachable(
            issues,
            "spec.http",
            self.http.iter().map(|r| {
                r.matches
                    .iter()
                    .map(|m| HttpMatchRequest {
                        name: String::new(),
                        ..m.clone()
                    })
                    .collect()
            }),
        );
        warn_unreachable(
            issues,
            "spec.tls",
            self.tls.iter().map(|r| r.matches.clone()),
        );
        warn_unreachable(
            issues,
            "spec.tcp",
            self.tcp.iter().map(|r| r.matches.clone()),
        );
    }
}

/// Istio's form for routing on JWT claims: `@request.auth.claims.<name>` header keys.
fn is_jwt_claim(key: &str) -> bool {
    key.starts_with("@request.auth.claims")
}

/// Hosts of a gateway-bound VirtualService; with TLS rules, Istio's generated SNI names
/// (`outbound_.<port>_._.<host>`, from AUTO_PASSTHROUGH gateways) are accepted too.
fn validate_gateway_bound_host(sni: bool, host: &str) -> Result<(), String> {
    if sni && host.starts_with("outbound_") {
        let parts: Vec<&str> = host.split('_').collect();
        let bad = || {
            Err(format!(
                "{host:?} does not follow the outbound_.<port>_._.<hostname> form"
            ))
        };
        if parts.len() < 4 || parts[0] != "outbound" {
            return bad();
        }
        let port = parts[1].trim_matches('.');
        let name = parts[3].trim_matches('.');
        if !port.bytes().any(|b| b.is_ascii_digit())
            || !name.bytes().any(|b| b.is_ascii_alphabetic())
        {
            return bad();
        }
        return Ok(());
    }
    validate_wildcard_domain(host)
}

/// Reports rules no request can reach: rules after one without conditions, and rules (or
/// conditions) that repeat an earlier condition exactly. `rules` yields each rule's conditions.
fn warn_unreachable<M: PartialEq>(
    issues: &mut Issues,
    field: &str,
    rules: impl Iterator<Item = Vec<M>>,
) {
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(M, usize)> = Vec::new();
    for (i, matches) in rules.enumerate() {
        let at = format!("{field}[{i}]");
        if let Some(c) = catch_all {
            issues.warn(
                at,
                format!("rule is never used: rule {c} before it has no match conditions and takes all traffic"),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let total = matches.len();
        let mut dups = 0;
        for (j, m) in matches.into_iter().enumerate() {
            if let Some((_, k)) = seen.iter().find(|(s, _)| *s == m) {
                issues.warn(
                    format!("{at}.match[{j}]"),
                    format!("condition is never used: rule {k} has the same condition"),
                );
                dups += 1;
            } else {
                seen.push((m, i));
            }
        }
        if dups == total {
            issues.warn(
                at,
                "rule is never used: earlier rules have all its conditions",
            );
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum RouteKind {
    /// A rule of a VirtualService with hosts and no `delegate`.
    Independent,
    /// A rule with `delegate`.
    Root,
    /// A rule of a delegate VirtualService.
    Delegate,
}

fn check_http_route(issues: &mut Issues, at: &str, r: &HttpRoute, in_delegate: bool) {
    let kind = if in_delegate {
        RouteKind::Delegate
    } else if r.delegate.is_some() {
        RouteKind::Root
    } else {
        RouteKind::Independent
    };
    check_http_route_conflicts(issues, at, r, kind);

    for (j, m) in r.matches.iter().enumerate() {
        check_http_match(issues, &format!("{at}.match[{j}]"), m);
    }
    if let Some(h) = &r.headers {
        check_headers(issues, &format!("{at}.headers"), h);
    }
    if let Some(c) = &r.cors_policy {
        check_cors(issues, &format!("{at}.corsPolicy"), c);
    }
    if let Some(f) = &r.fault {
        check_fault(issues, &format!("{at}.fault"), f);
    }
    if let Some(p) = r.mirror_percent {
        issues.warn(
            format!("{at}.mirrorPercent"),
            "deprecated; use mirrorPercentage",
        );
        if p > 100 {
            issues.error(
                format!("{at}.mirrorPercent"),
                format!("{p} is more than 100"),
            );
        }
    }
    if let Some(p) = r.mirror_percentage
        && !(0.0..=100.0).contains(&p.value)
    {
        issues.error(
            format!("{at}.mirrorPercentage.value"),
            format!("{} is not a percentage (0-100)", p.value),
        );
    }
    if let Some(m) = &r.mirror {
        check_destination(issues, &format!("{at}.mirror"), m);
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        let mat = format!("{at}.mirrors[{k}]");
        check_destination(issues, &format!("{mat}.destination"), &m.destination);
        if let Some(p) = m.percentage
            && !(0.0..=100.0).contains(&p.value)
        {
            issues.error(
                format!("{mat}.percentage.value"),
                format!("{} is not a percentage (0-100)", p.value),
            );
        }
    }
    if let Some(rd) = &r.redirect {
        check_redirect(issues, &format!("{at}.redirect"), rd, &r.matches);
    }
    if let Some(d) = &r.direct_response {
        check_direct_response(issues, &format!("{at}.directResponse"), d);
    }
    if let Some(d) = &r.delegate
        && d.name.is_empty()
    {
        issues.error(format!("{at}.delegate.name"), "is required");
    }
    if let Some(rt) = &r.retries {
        check_retries(issues, &format!("{at}.retries"), rt);
    }
    if let Some(rw) = &r.rewrite {
        check_rewrite(issues, &format!("{at}.rewrite"), rw);
    }
    check_authority_rewrite(issues, at, r);
    let mut total: i64 = 0;
    for (k, d) in r.route.iter().enumerate() {
        let dat = format!("{at}.route[{k}]");
        if let Some(h) = &d.headers {
            check_headers(issues, &format!("{dat}.headers"), h);
        }
        check_destination(issues, &format!("{dat}.destination"), &d.destination);
        if d.weight < 0 {
            issues.error(format!("{dat}.weight"), format!("{} is negative", d.weight));
        }
        total += i64::from(d.weight.max(0));
    }
    check_weight_total(
        issues,
        &format!("{at}.route"),
        r.route.iter().map(|d| d.weight),
        total,
    );
    if let Some(t) = r.timeout {
        check_duration(issues, format!("{at}.timeout"), t);
    }
}

fn check_http_route_conflicts(issues: &mut Issues, at: &str, r: &HttpRoute, kind: RouteKind) {
    if kind == RouteKind::Root {
        if r.redirect.is_some() {
            issues.error(
                format!("{at}.redirect"),
                "a rule with delegate cannot also redirect",
            );
        }
        if !r.route.is_empty() {
            issues.error(
                format!("{at}.route"),
                "a rule with delegate cannot also have a route",
            );
        }
    } else {
        if kind == RouteKind::Delegate && r.delegate.is_some() {
            issues.error(
                format!("{at}.delegate"),
                "a delegate VirtualService cannot delegate again",
            );
        }
        let (action, name) = if r.redirect.is_some() {
            (true, "redirect")
        } else if r.direct_response.is_some() {
            (true, "directResponse")
        } else {
            (false, "")
        };
        if action {
            if !r.route.is_empty() {
                issues.error(
                    format!("{at}.route"),
                    format!("cannot be combined with {name}"),
                );
            }
            if r.fault.is_some() {
                issues.error(
                    format!("{at}.fault"),
                    format!("cannot be combined with {name}"),
                );
            }
            if r.rewrite.is_some() {
                issues.error(
                    format!("{at}.rewrite"),
                    format!("cannot be combined with {name}"),
                );
            }
            if r.redirect.is_some() && r.direct_response.is_some() {
                issues.error(
                    format!("{at}.directResponse"),
                    "cannot be combined with redirect",
                );
            }
        } else if r.route.is_empty() {
            issues.error(
                at,
                "one of route, redirect, directResponse or delegate is required",
            );
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        issues.error(format!("{at}.mirrors"), "cannot be combined with mirror");
    }
}

/// HTTP/2 pseudo-headers that may be matched on.
const PSEUDO_HEADERS: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];

fn check_match_header_name(issues: &mut Issues, at: &str, name: &str) {
    if name.is_empty() {
        issues.error(at, "header name must not be empty");
    } else if is_jwt_claim(name) || PSEUDO_HEADERS.contains(&name) {
    } else if !is_header_token(name) {
        issues.error(at, format!("{name:?} is not a valid header name"));
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        issues.warn(
            at,
            format!("header names should be lower case; {name:?} is matched case-insensitively"),
        );
    }
}

fn check_http_match(issues: &mut Issues, at: &str, m: &HttpMatchRequest) {
    for (name, sm) in &m.headers {
        let hat = format!("{at}.headers[{name}]");
        check_match_header_name(issues, &hat, name);
        check_string_match(issues, &hat, sm);
    }
    for (name, sm) in &m.without_headers {
        let hat = format!("{at}.withoutHeaders[{name}]");
        check_match_header_name(issues, &hat, name);
        // `regex: "*"` is Istio's spelling of "present", not a regex.
        if sm.regex() != Some("*") {
            check_string_match(issues, &hat, sm);
        }
    }
    // Envoy accepts an empty uri prefix, but not an empty scheme/method/authority prefix.
    if let Some(StringMatch::Regex(re)) = &m.uri {
        check_regex(issues, format!("{at}.uri.regex"), re);
    }
    for (name, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(issues, &format!("{at}.{name}"), sm);
        }
    }
    for (name, sm) in &m.query_params {
        check_string_match(issues, &format!("{at}.queryParams[{name}]"), sm);
    }
    if m.port != 0 {
        check_port(issues, format!("{at}.port"), m.port);
    }
    check_labels(issues, &format!("{at}.sourceLabels"), &m.source_labels);
    check_gateway_names(issues, &format!("{at}.gateways"), &m.gateways);
    if !m.source_namespace.is_empty() && !is_dns_label(&m.source_namespace) {
        issues.error(
            format!("{at}.sourceNamespace"),
            format!("{:?} is not a valid namespace name", m.source_namespace),
        );
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn check_header_value(issues: &mut Issues, at: &str, value: &str) {
    if let Err(e) = validate_header_value(value) {
        issues.error(at, format!("invalid header value: {e}"));
    }
}

fn check_header_op_name(issues: &mut Issues, at: &str, name: &str, authority_ok: bool) {
    if name.is_empty() {
        issues.error(at, "header name must not be empty");
    } else if is_internal_header(name) && !(authority_ok && is_authority_header(name)) {
        issues.error(
            at,
            format!("{name:?} cannot be changed here (Host and ':' pseudo-headers are reserved)"),
        );
    }
}

fn check_headers(issues: &mut Issues, at: &str, h: &Headers) {
    // Only request set/add may change the authority; everything else refuses reserved names.
    for (dir, ops, authority_ok) in [
        ("request", &h.request, true),
        ("response", &h.response, false),
    ] {
        let Some(ops) = ops else { continue };
        for (verb, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let hat = format!("{at}.{dir}.{verb}[{name}]");
                check_header_op_name(issues, &hat, name, authority_ok);
                check_header_value(issues, &hat, value);
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            check_header_op_name(issues, &format!("{at}.{dir}.remove[{k}]"), name, false);
        }
    }
}

fn check_authority_rewrite(issues: &mut Issues, at: &str, r: &HttpRoute) {
    let mut count = usize::from(
        r.rewrite
            .as_ref()
            .is_some_and(|rw| !rw.authority.is_empty()),
    );
    if let Some(req) = r.headers.as_ref().and_then(|h| h.request.as_ref()) {
        count += req
            .set
            .keys()
            .chain(req.add.keys())
            .filter(|k| is_authority_header(k))
            .count();
    }
    if count > 1 {
        issues.error(
            format!("{at}.headers.request"),
            "the authority is rewritten more than once (rewrite.authority and/or host/:authority headers)",
        );
    }
}

const CORS_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

fn check_cors(issues: &mut Issues, at: &str, c: &CorsPolicy) {
    if !c.allow_origin.is_empty() {
        issues.warn(format!("{at}.allowOrigin"), "deprecated; use allowOrigins");
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        let oat = format!("{at}.allowOrigins[{i}]");
        let value = o.exact().or(o.prefix()).or(o.regex()).unwrap_or_default();
        if value.is_empty() {
            issues.error(
                oat,
                "origin match must have a non-empty exact, prefix or regex",
            );
        } else if let Some(re) = o.regex() {
            check_regex(issues, format!("{oat}.regex"), re);
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            issues.error(
                format!("{at}.allowMethods[{i}]"),
                format!("{m:?} is not an HTTP method (GET, POST, PUT, ... or *)"),
            );
        }
    }
    for (what, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && !is_header_token(h) {
                issues.error(
                    format!("{at}.{what}[{i}]"),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(d) = c.max_age {
        check_duration(issues, format!("{at}.maxAge"), d);
        if d.get().subsec_nanos() != 0 {
            issues.error(format!("{at}.maxAge"), "must be whole seconds");
        }
    }
}

/// gRPC status names Istio accepts for aborts.
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn check_http_status(issues: &mut Issues, at: String, status: i64) {
    if !(200..=599).contains(&status) {
        issues.error(
            at,
            format!("{status} is not an HTTP status in the range 200-599"),
        );
    }
}

fn check_fault(issues: &mut Issues, at: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        issues.error(at, "fault injection needs an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let aat = format!("{at}.abort");
        if let Some(p) = &a.percentage {
            check_percentage(issues, format!("{aat}.percentage.value"), p);
        }
        let set = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if set > 1 {
            issues.error(
                &aat,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            );
        }
        if let Some(s) = a.http_status {
            check_http_status(issues, format!("{aat}.httpStatus"), i64::from(s));
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_STATUSES.contains(&g.as_str())
        {
            issues.error(
                format!("{aat}.grpcStatus"),
                format!("{g:?} is not a gRPC status name (for example UNAVAILABLE or NOT_FOUND)"),
            );
        }
        if a.http2_error.is_some() {
            issues.error(
                format!("{aat}.http2Error"),
                "HTTP/2 error aborts are not supported",
            );
        }
        if set == 0 {
            issues.warn(
                &aat,
                "abort sets none of httpStatus, grpcStatus or http2Error",
            );
        }
    }
    if let Some(d) = &f.delay {
        let dat = format!("{at}.delay");
        if let Some(p) = &d.percentage {
            check_percentage(issues, format!("{dat}.percentage.value"), p);
        }
        if d.percent != 0 {
            issues.warn(format!("{dat}.percent"), "deprecated; use percentage");
            if !(0..=100).contains(&d.percent) {
                issues.error(
                    format!("{dat}.percent"),
                    format!("{} is not a percentage (0-100)", d.percent),
                );
            }
        }
        match (d.fixed_delay, d.exponential_delay) {
            (Some(_), Some(_)) => {
                issues.error(
                    &dat,
                    "only one of fixedDelay or exponentialDelay may be set",
                );
            }
            (Some(fd), None) => check_duration(issues, format!("{dat}.fixedDelay"), fd),
            (None, Some(ed)) => {
                check_duration(issues, format!("{dat}.exponentialDelay"), ed);
                issues.error(
                    format!("{dat}.exponentialDelay"),
                    "exponential delays are not supported",
                );
            }
            (None, None) => issues.error(format!("{dat}.fixedDelay"), "is required"),
        }
    }
}

fn check_redirect(issues: &mut Issues, at: &str, r: &HttpRedirect, matches: &[HttpMatchRequest]) {
    if !r.uri.is_empty() && !r.prefix_rewrite.is_empty() {
        issues.error(at, "only one of uri or prefixRewrite may be set");
    }
    if !r.prefix_rewrite.is_empty()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix().is_none()))
    {
        issues.error(
            format!("{at}.prefixRewrite"),
            "needs every uri condition of the rule to be a prefix match",
        );
    }
    if r.uri.is_empty()
        && r.prefix_rewrite.is_empty()
        && r.authority.is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.is_empty()
    {
        issues.error(
            at,
            "redirect must set uri, prefixRewrite, authority, scheme or port",
        );
    }
    if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
        issues.error(
            format!("{at}.redirectCode"),
            format!("{} is not a redirect status (3xx)", r.redirect_code),
        );
    }
    if !matches!(r.scheme.as_str(), "" | "http" | "https") {
        issues.error(
            format!("{at}.scheme"),
            format!("{:?} is not a redirect scheme (http or https)", r.scheme),
        );
    }
    if r.port.is_some() && r.derive_port.is_some() {
        issues.error(at, "only one of port or derivePort may be set");
    }
    if let Some(p) = r.port
        && p != 0
    {
        check_port(issues, format!("{at}.port"), p);
    }
}

/// Bodies above this are refused; above a tenth of it, warned about.
const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

fn check_direct_response(issues: &mut Issues, at: &str, d: &HttpDirectResponse) {
    check_http_status(issues, format!("{at}.status"), i64::from(d.status));
    let Some(body) = &d.body else { return };
    if body.string.is_some() && body.bytes.is_some() {
        issues.error(
            format!("{at}.body"),
            "only one of string or bytes may be set",
        );
        return;
    }
    match body.contents() {
        Err(e) => issues.error(format!("{at}.body.bytes"), e),
        Ok(c) if c.len() > MAX_DIRECT_RESPONSE_BODY => issues.error(
            format!("{at}.body"),
            format!("body is {} bytes; at most 1MiB is allowed", c.len()),
        ),
        Ok(c) if c.len() > 100 * 1024 => issues.warn(
            format!("{at}.body"),
            "large bodies (over 100KiB) slow down configuration updates",
        ),
        Ok(_) => {}
    }
}

/// Retry conditions Envoy understands (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Whether `code` is a registered HTTP status code (as Go's `http.StatusText` knows them).
fn is_known_http_status(code: u32) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

fn check_retries(issues: &mut Issues, at: &str, r: &HttpRetry) {
    if r.attempts < 0 {
        issues.error(
            format!("{at}.attempts"),
            format!("{} is negative", r.attempts),
        );
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        issues.error(
            format!("{at}.attempts"),
            "retries are disabled (attempts is 0) but perTryTimeout, retryOn or retryRemoteLocalities is set",
        );
    }
    if let Some(d) = r.per_try_timeout {
        check_duration(issues, format!("{at}.perTryTimeout"), d);
    }
    if !r.retry_on.is_empty() {
        for policy in r.retry_on.split(',') {
            let status_ok = !policy.is_empty()
                && policy.bytes().all(|b| b.is_ascii_digit())
                && policy.parse::<u32>().is_ok_and(is_known_http_status);
            if !status_ok && !RETRY_ON_POLICIES.contains(&policy) {
                issues.error(
                    format!("{at}.retryOn"),
                    format!("{policy:?} is not a retry condition (like 5xx, reset, connect-failure, retriable-4xx) or an HTTP status code"),
                );
            }
        }
    }
    if let Some(d) = r.backoff {
        check_duration(issues, format!("{at}.backoff"), d);
    }
}

fn check_rewrite(issues: &mut Issues, at: &str, r: &HttpRewrite) {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        issues.error(at, "only one of uri or uriRegexRewrite may be set");
    }
    if r.uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.is_empty() {
        issues.error(at, "rewrite must set uri, uriRegexRewrite or authority");
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let rat = format!("{at}.uriRegexRewrite");
        if rr.pattern.is_empty() || rr.rewrite.is_empty() {
            issues.error(&rat, "both match and rewrite are required");
        }
        if !rr.pattern.is_empty() {
            check_regex(issues, format!("{rat}.match"), &rr.pattern);
        }
    }
}

/// Weights are relative: Istio splits traffic by `weight / sum`. Negative weights are refused
/// by the caller; here, all-zero weights over several destinations are refused, and a sum
/// other than 100 is reported as probably unintended.
fn check_weight_total(
    issues: &mut Issues,
    at: &str,
    weights: impl Iterator<Item = i32>,
    total: i64,
) {
    let weights: Vec<i32> = weights.collect();
    if weights.len() > 1 && total == 0 {
        issues.error(
            at,
            "all destination weights are 0, so no destination gets traffic",
        );
    } else if total != 100 && !(weights.len() == 1 && weights[0] == 0) && !weights.is_empty() {
        issues.warn(
            at,
            format!("weights sum to {total}, not 100; traffic is split in proportion to them"),
        );
    }
}

fn check_route_destinations(issues: &mut Issues, at: &str, route: &[RouteDestination]) {
    let mut total: i64 = 0;
    for (k, d) in route.iter().enumerate() {
        let dat = format!("{at}[{k}]");
        check_destination(issues, &format!("{dat}.destination"), &d.destination);
        if d.weight < 0 {
            issues.error(format!("{dat}.weight"), format!("{} is negative", d.weight));
        }
        total += i64::from(d.weight.max(0));
    }
    check_weight_total(issues, at, route.iter().map(|d| d.weight), total);
}

fn check_l4_common(
    issues: &mut Issues,
    at: &str,
    subnets: &[String],
    port: u32,
    labels: &BTreeMap<String, String>,
    gateways: &[String],
) {
    for (k, s) in subnets.iter().enumerate() {
        if let Err(e) = validate_ip_subnet(s) {
            issues.error(format!("{at}.destinationSubnets[{k}]"), e);
        }
    }
    if port != 0 {
        check_port(issues, format!("{at}.port"), port);
    }
    check_labels(issues, &format!("{at}.sourceLabels"), labels);
    check_gateway_names(issues, &format!("{at}.gateways"), gateways);
}

fn check_tls_route(
    issues: &mut Issues,
    at: &str,
    r: &TlsRoute,
    vs: &VirtualServiceSpec,
    on_gateway: bool,
) {
    if r.matches.is_empty() {
        issues.error(
            format!("{at}.match"),
            "at least one match with sniHosts is required",
        );
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        if m.sni_hosts.is_empty() {
            issues.error(
                format!("{mat}.sniHosts"),
                "at least one SNI host is required",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sat = format!("{mat}.sniHosts[{k}]");
            let res = if on_gateway {
                validate_gateway_bound_host(true, sni)
            } else {
                validate_wildcard_domain(sni)
            };
            if let Err(e) = res {
                if is_ip(sni) {
                    issues.warn(sat, format!("{sni:?} is an IP address; SNI carries host names and most clients never send an IP"));
                } else {
                    issues.error(sat, e);
                }
                continue;
            }
            if !vs.hosts.iter().any(|h| host_subset_of(sni, h)) {
                issues.error(
                    sat,
                    format!(
                        "{sni:?} is not covered by any of the VirtualService's hosts [{}]",
                        vs.hosts.join(", ")
                    ),
                );
            }
        }
        check_l4_common(
            issues,
            &mat,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
    }
    if r.route.is_empty() {
        issues.error(
            format!("{at}.route"),
            "at least one destination is required",
        );
    }
    check_route_destinations(issues, &format!("{at}.route"), &r.route);
}

fn check_tcp_route(issues: &mut Issues, at: &str, r: &TcpRoute) {
    for (j, m) in r.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        check_l4_common(
            issues,
            &mat,
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
        );
        if !m.source_subnet.is_empty()
            && let Err(e) = validate_ip_subnet(&m.source_subnet)
        {
            issues.warn(format!("{mat}.sourceSubnet"), e);
        }
    }
    if r.route.is_empty() {
        issues.error(
            format!("{at}.route"),
            "at least one destination is required",
        );
    }
    check_route_destinations(issues, &format!("{at}.route"), &r.route);
}

#[cfg(test)]
mod tests {
    use super::super::VirtualService;
    use super::*;
    use crate::{Object, parse_object};

    fn parse(yaml: &str) -> VirtualService {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_object(v, "default").expect("parses").object {
            Object::VirtualService(vs) => vs,
            other => panic!("not a VirtualService: {other:?}"),
        }
    }

    /// A VirtualService in namespace `shop` with the given spec (YAML, unindented).
    fn mk_vs(spec_yaml: &str) -> VirtualService {
        let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
        parse(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\n  namespace: shop\nspec:\n{indented}"
        ))
    }

    fn issues_of(vs: &VirtualService) -> Issues {
        Object::VirtualService(vs.clone()).validate()
    }

    fn error_fields(vs: &VirtualService) -> Vec<String> {
        issues_of(vs).errors().map(|i| i.field.clone()).collect()
    }

    fn warning_fields(vs: &VirtualService) -> Vec<String> {
        issues_of(vs).warnings().map(|i| i.field.clone()).collect()
    }

    fn assert_clean(vs: &VirtualService) {
        let issues = issues_of(vs);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-route
spec:
  hosts:
  - reviews.prod.svc.cluster.local
  http:
  - name: "reviews-v2-routes"
    match:
    - uri:
        prefix: "/wpcatalog"
    - uri:
        prefix: "/consumercatalog"
    rewrite:
      uri: "/newcatalog"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
  - name: "reviews-v1-route"
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v1
        port:
          number: 9080
      weight: 75
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v3
      weight: 25
"#;

    #[test]
    fn parses_bookinfo_reviews() {
        let vs = parse(REVIEWS);
        let s = &vs.spec;
        assert_eq!(s.hosts, ["reviews.prod.svc.cluster.local"]);
        assert!(s.applies_to_mesh());
        assert_eq!(s.effective_gateways(), ["mesh"]);
        let r0 = &s.http[0];
        assert_eq!(r0.name, "reviews-v2-routes");
        assert_eq!(r0.matches.len(), 2);
        assert_eq!(
            r0.matches[1].uri.as_ref().and_then(|u| u.prefix()),
            Some("/consumercatalog")
        );
        assert_eq!(
            r0.rewrite.as_ref().map(|r| r.uri.as_str()),
            Some("/newcatalog")
        );
        assert_eq!(r0.route[0].destination.subset(), Some("v2"));
        assert_eq!(r0.route[0].destination.port_number(), None);
        let r1 = &s.http[1];
        assert!(r1.matches_everything());
        assert!(!r1.is_redirect());
        assert_eq!(r1.route[0].weight, 75);
        assert_eq!(r1.route[0].destination.port_number(), Some(9080));
        assert_eq!(r1.route[1].destination.subset, "v3");
        assert_clean(&vs);
    }

    const RATINGS_FAULT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
      abort:
        percentage:
          value: 0.1
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

    #[test]
    fn parses_ratings_fault_injection() {
        let vs = parse(RATINGS_FAULT);
        let r = &vs.spec.http[0];
        assert_eq!(
            r.matches[0].headers["end-user"],
            StringMatch::Exact("jason".into())
        );
        let f = r.fault.as_ref().expect("fault");
        let d = f.delay.as_ref().expect("delay");
        assert_eq!(d.fixed_delay, Some(Duration::from_secs(7)));
        assert_eq!(d.percentage.map(|p| p.value), Some(100.0));
        let a = f.abort.as_ref().expect("abort");
        assert_eq!(a.http_status, Some(500));
        assert_eq!(a.percentage.map(|p| p.value), Some(0.1));
        assert_clean(&vs);
    }

    const HTTPBIN: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
  namespace: foo
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - istio-system/httpbin-gateway
  - mesh
  http:
  - match:
    - uri:
        regex: "^/status/[0-9]+$"
      headers:
        x-canary: {}
      ignoreUriCase: true
    - uri:
        exact: /delay/1
      method:
        exact: GET
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,503
      retryRemoteLocalities: true
    headers:
      request:
        set:
          x-forwarded-by: strait
      response:
        remove: [server]
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - regex: "https://.*\\.example\\.org"
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
      allowCredentials: false
      unmatchedPreflights: IGNORE
    mirror:
      host: httpbin-shadow
    mirrorPercentage:
      value: 50
    route:
    - destination:
        host: httpbin
        port:
          number: 8000
      headers:
        response:
          add:
            x-served-by: "%HOSTNAME%"
  - match:
    - uri:
        prefix: /old
    redirect:
      uri: /new
      authority: newhttpbin.example.com
      derivePort: FROM_REQUEST_PORT
      redirectCode: 308
  - match:
    - uri:
        prefix: /v2/
    rewrite:
      uriRegexRewrite:
        match: ^/v2/(.*)$
        rewrite: /\1
    route:
    - destination: {host: httpbin}
  - directResponse:
      status: 503
      body:
        string: "unknown path"
"#;

    #[test]
    fn parses_httpbin_retries_timeouts_and_actions() {
        let vs = parse(HTTPBIN);
        let s = &vs.spec;
        assert!(s.applies_to_mesh());
        let r = &s.http[0];
        assert!(r.matches[0].headers["x-canary"].is_any());
        assert!(r.matches[0].ignore_uri_case);
        assert_eq!(
            r.matches[1].method.as_ref().and_then(|m| m.exact()),
            Some("GET")
        );
        assert_eq!(r.timeout, Some(Duration::from_secs(10)));
        let rt = r.retries.as_ref().expect("retries");
        assert_eq!(rt.attempts, 3);
        assert_eq!(rt.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            rt.retry_on_policies().collect::<Vec<_>>(),
            ["gateway-error", "connect-failure", "refused-stream", "503"]
        );
        assert_eq!(rt.retry_remote_localities, Some(true));
        let cors = r.cors_policy.as_ref().expect("cors");
        assert_eq!(
            cors.allow_origins[1].regex(),
            Some(r"https://.*\.example\.org")
        );
        assert_eq!(cors.max_age, Some(Duration::from_secs(86400)));
        assert_eq!(cors.unmatched_preflights, UnmatchedPreflights::Ignore);
        assert_eq!(r.effective_mirror_percentage(), Some(50.0));
        assert_eq!(r.route[0].destination.port_number(), Some(8000));
        let redirect = &s.http[1];
        assert!(redirect.is_redirect());
        let rd = redirect.redirect.as_ref().expect("redirect");
        assert_eq!(rd.derive_port, Some(RedirectPortSelection::FromRequestPort));
        assert_eq!(rd.redirect_code, 308);
        let rw = s.http[2]
            .rewrite
            .as_ref()
            .and_then(|r| r.uri_regex_rewrite.as_ref());
        assert_eq!(rw.map(|r| r.pattern.as_str()), Some("^/v2/(.*)$"));
        let dr = s.http[3].direct_response.as_ref().expect("direct");
        assert!(s.http[3].is_direct_response());
        assert_eq!(dr.status, 503);
        assert_eq!(
            dr.body.as_ref().map(|b| b.contents()),
            Some(Ok(b"unknown path".to_vec()))
        );
        assert_clean(&vs);
    }

    #[test]
    fn round_trips() {
        for doc in [REVIEWS, RATINGS_FAULT, HTTPBIN, TLS_TCP] {
            let vs = parse(doc);
            let json = serde_json::to_value(&vs).expect("serialize");
            let again: VirtualService = serde_json::from_value(json).expect("re-parse");
            assert_eq!(again, vs);
        }
    }

    const TLS_TCP: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo-sni
spec:
  hosts:
  - "*.bookinfo.com"
  gateways:
  - mygateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - login.bookinfo.com
    route:
    - destination:
        host: login.prod.svc.cluster.local
  tcp:
  - match:
    - port: 27017
      destinationSubnets: [10.0.0.0/8]
      sourceLabels: {app: reviews}
    route:
    - destination:
        host: mongo.backup.svc.cluster.local
        port:
          number: 5555
"#;

    #[test]
    fn parses_tls_and_tcp_routes() {
        let vs = parse(TLS_TCP);
        let s = &vs.spec;
        assert!(!s.applies_to_mesh());
        assert_eq!(s.tls[0].matches[0].sni_hosts, ["login.bookinfo.com"]);
        assert_eq!(s.tls[0].matches[0].port, 443);
        assert_eq!(s.tcp[0].matches[0].destination_subnets, ["10.0.0.0/8"]);
        assert_eq!(s.tcp[0].route[0].destination.port_number(), Some(5555));
        assert_clean(&vs);
    }

    #[test]
    fn string_match_with_two_kinds_is_a_parse_error() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  http:\n  - match:\n    - uri: {exact: /a, prefix: /b}\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default")
            .expect_err("two kinds")
            .to_string();
        assert!(err.contains("spec.http[0].match[0].uri"), "{err}");
        assert!(err.contains("only one of exact, prefix or regex"), "{err}");
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - uri: {exact: /a, typo: 1}\n    route: [{destination: {host: a}, wieght: 3}]\n",
        )
        .expect("yaml");
        let p = parse_object(v, "default").expect("parses");
        let fields: Vec<_> = p.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.http[0].match[0].uri.typo",
                "spec.http[0].route[0].wieght"
            ]
        );
    }

    #[test]
    fn unknown_enum_is_an_error_naming_the_value() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http:\n  - redirect: {uri: /x, derivePort: FROM_NOWHERE}\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default")
            .expect_err("bad enum")
            .to_string();
        assert!(err.contains("FROM_NOWHERE"), "{err}");
        assert!(err.contains("spec.http[0].redirect.derivePort"), "{err}");
    }

    #[test]
    fn hosts_rules() {
        let vs = mk_vs(
            "hosts: ['*', 'bad_host', reviews, '*.shop.com', 'a.shop.com', 10.1.2.3]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        );
        assert_eq!(error_fields(&vs), ["spec.hosts[0]", "spec.hosts[1]"]);
        let vs = mk_vs(
            "hosts: [reviews, '*.shop.com', 'a.shop.com']\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        );
        assert_eq!(error_fields(&vs), ["spec.hosts[2]"]);
        // On a gateway, `*` is fine.
        let vs = mk_vs(
            "hosts: ['*']\ngateways: [gw]\nhttp:\n- route: [{destination: {host: reviews}}]\n",
        );
        assert_clean(&vs);
    }

    #[test]
    fn delegate_rules() {
        let vs = mk_vs(
            "gateways: [gw]\nhttp:\n- route: [{destination: {host: a}}]\n  delegate: {name: other}\ntcp:\n- route: [{destination: {host: a}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            ["spec.gateways", "spec.tcp", "spec.http[0].delegate"]
        );
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- delegate: {name: other, namespace: ns2}\n- delegate: {name: x}\n  redirect: {uri: /b}\n  route: [{destination: {host: a}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            ["spec.http[1].redirect", "spec.http[1].route"]
        );
        // A delegate VirtualService (no hosts) with plain HTTP rules is fine.
        let vs = mk_vs("http:\n- route: [{destination: {host: a}}]\n");
        assert_clean(&vs);
    }

    #[test]
    fn gateway_names() {
        let vs = mk_vs(
            "hosts: [a.com]\ngateways: [mesh, ns/gw, gw.ns, 'ns/Bad_GW', '/x', 'bad gw']\nhttp:\n- route: [{destination: {host: a}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            ["spec.gateways[3]", "spec.gateways[4]", "spec.gateways[5]"]
        );
        assert_eq!(warning_fields(&vs), ["spec.gateways[2]"]);
    }

    #[test]
    fn needs_some_rules() {
        let vs = mk_vs("hosts: [a]\n");
        assert_eq!(error_fields(&vs), ["spec"]);
    }

    #[test]
    fn http_route_needs_exactly_one_action() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- name: nothing\n- redirect: {uri: /b}\n  route: [{destination: {host: a}}]\n  rewrite: {uri: /c}\n  fault: {abort: {httpStatus: 500}}\n- directResponse: {status: 200}\n  route: [{destination: {host: a}}]\n- redirect: {uri: /b}\n  directResponse: {status: 200}\n- route: [{destination: {host: a}}]\n  mirror: {host: b}\n  mirrors: [{destination: {host: c}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0]",
                "spec.http[1].route",
                "spec.http[1].fault",
                "spec.http[1].rewrite",
                "spec.http[2].route",
                "spec.http[3].directResponse",
                "spec.http[4].mirrors",
            ]
        );
    }

    #[test]
    fn weights() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- route:\n  - {destination: {host: a, subset: v1}, weight: -1}\n  - {destination: {host: a, subset: v2}, weight: 100}\n- route:\n  - {destination: {host: a, subset: v1}}\n  - {destination: {host: a, subset: v2}}\n- route:\n  - {destination: {host: a, subset: v1}, weight: 30}\n  - {destination: {host: a, subset: v2}, weight: 30}\n- route:\n  - {destination: {host: a}, weight: 100}\n",
        );
        assert_eq!(
            error_fields(&vs),
            ["spec.http[0].route[0].weight", "spec.http[1].route"]
        );
        // Sums other than 100 are legal (weights are relative) but probably unintended.
        let route_warnings: Vec<_> = warning_fields(&vs)
            .into_iter()
            .filter(|f| f.ends_with(".route"))
            .collect();
        assert_eq!(route_warnings, ["spec.http[2].route"]);
    }

    #[test]
    fn destinations() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- route:\n  - {destination: {host: '', subset: v1}, weight: 50}\n  - {destination: {host: '*', subset: V_1, port: {number: 0}}, weight: 50}\n",
        );
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0].route[0].destination.host",
                "spec.http[0].route[1].destination.host",
                "spec.http[0].route[1].destination.subset",
                "spec.http[0].route[1].destination.port.number",
            ]
        );
    }

    #[test]
    fn match_rules() {
        let vs = mk_vs(concat!(
            "hosts: [a]\nhttp:\n- match:\n",
            "  - uri: {regex: '(unclosed'}\n",
            "    scheme: {prefix: ''}\n",
            "    headers: {'bad header': {exact: x}, X-Upper: {}, ':authority': {prefix: a}}\n",
            "    withoutHeaders: {x-a: {regex: '*'}}\n",
            "    queryParams: {q: {regex: '[z-a]'}}\n",
            "    port: 70000\n",
            "    sourceLabels: {'no good': x}\n",
            "    sourceNamespace: Not_A_Namespace\n",
            "  - uri: {prefix: ''}\n",
            "  route: [{destination: {host: a}}]\n",
        ));
        let m = "spec.http[0].match[0]";
        assert_eq!(
            error_fields(&vs),
            [
                format!("{m}.headers[bad header]"),
                format!("{m}.uri.regex"),
                format!("{m}.scheme"),
                format!("{m}.queryParams[q].regex"),
                format!("{m}.port"),
                format!("{m}.sourceLabels[no good]"),
                format!("{m}.sourceNamespace"),
            ]
        );
        assert_eq!(warning_fields(&vs), [format!("{m}.headers[X-Upper]")]);
    }

    #[test]
    fn jwt_claims_only_on_gateways() {
        let base = "hosts: [a.com]\nhttp:\n- match: [{headers: {'@request.auth.claims.group': {exact: admin}}}]\n  route: [{destination: {host: a}}]\n";
        let vs = mk_vs(base);
        assert_eq!(
            error_fields(&vs),
            ["spec.http[0].match[0].headers[@request.auth.claims.group]"]
        );
        let vs = mk_vs(&format!("gateways: [gw]\n{base}"));
        assert_clean(&vs);
    }

    #[test]
    fn retries() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  retries: {attempts: -1, perTryTimeout: 0s, retryOn: '5xx,bogus,503,999', backoff: 0.1ms}\n- route: [{destination: {host: a}}]\n  retries: {retryOn: 5xx}\n",
        );
        let r = "spec.http[0].retries";
        assert_eq!(
            error_fields(&vs),
            [
                format!("{r}.attempts"),
                format!("{r}.perTryTimeout"),
                format!("{r}.retryOn"),
                format!("{r}.retryOn"),
                format!("{r}.backoff"),
                "spec.http[1].retries.attempts".to_string(),
            ]
        );
    }

    #[test]
    fn faults() {
        let vs = mk_vs(concat!(
            "hosts: [a]\nhttp:\n",
            "- route: [{destination: {host: a}}]\n",
            "  fault:\n",
            "    abort: {httpStatus: 600, percentage: {value: 101}}\n",
            "    delay: {percent: 150, exponentialDelay: 1s}\n",
            "- route: [{destination: {host: a}}]\n",
            "  fault: {abort: {grpcStatus: NOPE, http2Error: X}, delay: {percentage: {value: 0.00001}}}\n",
            "- route: [{destination: {host: a}}]\n",
            "  fault: {}\n",
        ));
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0].fault.abort.percentage.value",
                "spec.http[0].fault.abort.httpStatus",
                "spec.http[0].fault.delay.percent",
                "spec.http[0].fault.delay.exponentialDelay",
                "spec.http[1].fault.abort",
                "spec.http[1].fault.abort.grpcStatus",
                "spec.http[1].fault.abort.http2Error",
                "spec.http[1].fault.delay.percentage.value",
                "spec.http[1].fault.delay.fixedDelay",
                "spec.http[2].fault",
            ]
        );
    }

    #[test]
    fn redirects_and_rewrites() {
        let vs = mk_vs(concat!(
            "hosts: [a]\nhttp:\n",
            "- match: [{uri: {exact: /x}}]\n",
            "  redirect: {uri: /a, prefixRewrite: /b, redirectCode: 200, scheme: ftp, port: 70000, derivePort: FROM_REQUEST_PORT}\n",
            "- redirect: {}\n",
            "- route: [{destination: {host: a}}]\n",
            "  rewrite: {}\n",
            "- route: [{destination: {host: a}}]\n",
            "  rewrite: {uri: /a, uriRegexRewrite: {match: '(', rewrite: ''}}\n",
            "- route: [{destination: {host: a}}]\n",
            "  rewrite: {authority: b.com}\n",
            "  headers: {request: {set: {host: c.com}}}\n",
        ));
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0].redirect",
                "spec.http[0].redirect.prefixRewrite",
                "spec.http[0].redirect.redirectCode",
                "spec.http[0].redirect.scheme",
                "spec.http[0].redirect",
                "spec.http[0].redirect.port",
                "spec.http[1].redirect",
                "spec.http[2].rewrite",
                "spec.http[3].rewrite",
                "spec.http[3].rewrite.uriRegexRewrite",
                "spec.http[3].rewrite.uriRegexRewrite.match",
                "spec.http[4].headers.request",
            ]
        );
    }

    #[test]
    fn direct_responses() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- directResponse: {status: 100}\n- directResponse: {status: 200, body: {string: a, bytes: YQ==}}\n- directResponse: {status: 200, body: {bytes: '!!'}}\n- directResponse: {status: 200, body: {bytes: aGVsbG8=}}\n",
        );
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0].directResponse.status",
                "spec.http[1].directResponse.body",
                "spec.http[2].directResponse.body.bytes",
            ]
        );
        let body = vs.spec.http[3]
            .direct_response
            .as_ref()
            .and_then(|d| d.body.as_ref());
        assert_eq!(body.map(|b| b.contents()), Some(Ok(b"hello".to_vec())));
    }

    #[test]
    fn header_operations() {
        let vs = mk_vs(concat!(
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n",
            "  headers:\n",
            "    request: {set: {':path': /x, x-ok: 'bad %value'}, add: {':authority': b.com}, remove: [host]}\n",
            "    response: {set: {host: x}, remove: [':status', '']}\n",
        ));
        let h = "spec.http[0].headers";
        assert_eq!(
            error_fields(&vs),
            [
                format!("{h}.request.set[:path]"),
                format!("{h}.request.set[x-ok]"),
                format!("{h}.request.remove[0]"),
                format!("{h}.response.set[host]"),
                format!("{h}.response.remove[0]"),
                format!("{h}.response.remove[1]"),
            ]
        );
    }

    #[test]
    fn cors() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  corsPolicy: {allowOrigin: [a.com], allowOrigins: [{exact: ''}, {}, {regex: '('}], allowMethods: [GET, FETCH], allowHeaders: ['*', 'bad header'], maxAge: 1.5s}\n",
        );
        let c = "spec.http[0].corsPolicy";
        assert_eq!(
            error_fields(&vs),
            [
                format!("{c}.allowOrigins[0]"),
                format!("{c}.allowOrigins[1]"),
                format!("{c}.allowOrigins[2].regex"),
                format!("{c}.allowMethods[1]"),
                format!("{c}.allowHeaders[1]"),
                format!("{c}.maxAge"),
            ]
        );
        assert_eq!(warning_fields(&vs), [format!("{c}.allowOrigin")]);
    }

    #[test]
    fn mirrors() {
        let vs = mk_vs(
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  mirror: {host: b}\n  mirrorPercent: 101\n  mirrorPercentage: {value: -1}\n- route: [{destination: {host: a}}]\n  mirrors: [{destination: {host: ''}, percentage: {value: 200}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            [
                "spec.http[0].mirrorPercent",
                "spec.http[0].mirrorPercentage.value",
                "spec.http[1].mirrors[0].destination.host",
                "spec.http[1].mirrors[0].percentage.value",
            ]
        );
    }

    #[test]
    fn tls_routes() {
        let vs = mk_vs(concat!(
            "hosts: ['*.shop.com']\ngateways: [gw]\ntls:\n",
            "- match: [{sniHosts: []}]\n",
            "- match: [{sniHosts: [a.other.com, 'bad sni', 10.0.0.1, outbound_.443_._.a.shop.com], destinationSubnets: [1.2.3.4/40]}]\n",
            "  route: [{destination: {host: a}}]\n",
        ));
        assert_eq!(
            error_fields(&vs),
            [
                "spec.tls[0].match[0].sniHosts",
                "spec.tls[0].route",
                "spec.tls[1].match[0].sniHosts[0]",
                "spec.tls[1].match[0].sniHosts[1]",
                "spec.tls[1].match[0].destinationSubnets[0]",
            ]
        );
        assert_eq!(warning_fields(&vs), ["spec.tls[1].match[0].sniHosts[2]"]);
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  tls:\n  - route: [{destination: {host: a}}]\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default")
            .expect_err("match is required")
            .to_string();
        assert!(err.contains("match"), "{err}");
    }

    #[test]
    fn tcp_routes() {
        let vs = mk_vs(
            "hosts: [a]\ntcp:\n- match: [{port: 0, destinationSubnets: [nope], gateways: ['a/b/c']}]\n- route: [{destination: {host: a, port: {number: 99999}}}]\n",
        );
        assert_eq!(
            error_fields(&vs),
            [
                "spec.tcp[0].match[0].destinationSubnets[0]",
                "spec.tcp[0].match[0].gateways[0]",
                "spec.tcp[0].route",
                "spec.tcp[1].route[0].destination.port.number",
            ]
        );
    }

    #[test]
    fn unreachable_rules_are_warned() {
        let vs = mk_vs(concat!(
            "hosts: [a]\nhttp:\n",
            "- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: a}}]\n",
            "- match: [{name: again, uri: {prefix: /a}}, {uri: {prefix: /b}}]\n  route: [{destination: {host: a}}]\n",
            "- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: a}}]\n",
            "- route: [{destination: {host: a}}]\n",
            "- route: [{destination: {host: b}}]\n",
        ));
        assert!(error_fields(&vs).is_empty());
        assert_eq!(
            warning_fields(&vs),
            [
                "spec.http[1].match[0]",
                "spec.http[2].match[0]",
                "spec.http[2]",
                "spec.http[4]"
            ]
        );
    }

    #[test]
    fn export_to() {
        let vs = mk_vs(
            "hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]\nexportTo: ['.', '.', '~']\n",
        );
        assert_eq!(error_fields(&vs), ["spec.exportTo[1]", "spec.exportTo[2]"]);
    }
}
