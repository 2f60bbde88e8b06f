//! Types several Istio kinds share (string matches, port selectors, destinations, selectors,
//! percentages) and the checks their validators share (host names, IP addresses, regexes,
//! durations, `exportTo`, header names and values).
//!
//! As in Istio's protobuf API, a scalar field that is left out reads as its zero value: an
//! empty string or `0` means "not set". Fields that are messages or wrapper types
//! (`google.protobuf.BoolValue` and friends) are `Option`s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::validate::{Issues, is_label_key, is_label_value};

/// True when `v` equals its type's default, for `skip_serializing_if`.
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How a string is compared: `{exact: v}`, `{prefix: v}`, `{regex: v}`, or `{}`.
///
/// In YAML this is a mapping with at most one of the three keys. The empty mapping (`Any`)
/// sets no condition; on a header or query parameter it means "present, with any value".
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(try_from = "StringMatchRepr", into = "StringMatchRepr")]
pub enum StringMatch {
    /// The whole string equals the value.
    Exact(String),
    /// The string starts with the value.
    Prefix(String),
    /// The whole string matches an RE2 regular expression.
    Regex(String),
    /// No condition on the value (`{}`): for headers and query parameters, the name must be
    /// present.
    #[default]
    Any,
}

/// The wire shape of [`StringMatch`]: a oneof of three optional strings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(extend("maxProperties" = 1))]
struct StringMatchRepr {
    /// Exact string match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    /// Prefix match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// RE2 regular expression match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<StringMatchRepr> for StringMatch {
    type Error = String;

    fn try_from(r: StringMatchRepr) -> Result<Self, String> {
        match (r.exact, r.prefix, r.regex) {
            (None, None, None) => Ok(StringMatch::Any),
            (Some(v), None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(StringMatch::Regex(v)),
            _ => Err("only one of exact, prefix or regex may be set".to_string()),
        }
    }
}

impl From<StringMatch> for StringMatchRepr {
    fn from(m: StringMatch) -> Self {
        let mut r = StringMatchRepr::default();
        match m {
            StringMatch::Exact(v) => r.exact = Some(v),
            StringMatch::Prefix(v) => r.prefix = Some(v),
            StringMatch::Regex(v) => r.regex = Some(v),
            StringMatch::Any => {}
        }
        r
    }
}

impl StringMatch {
    /// The value of an exact match.
    pub fn exact(&self) -> Option<&str> {
        match self {
            StringMatch::Exact(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a prefix match.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            StringMatch::Prefix(v) => Some(v),
            _ => None,
        }
    }

    /// The expression of a regex match.
    pub fn regex(&self) -> Option<&str> {
        match self {
            StringMatch::Regex(v) => Some(v),
            _ => None,
        }
    }

    /// True for `{}`, which on headers and query parameters means "present".
    pub fn is_any(&self) -> bool {
        matches!(self, StringMatch::Any)
    }
}

/// Selects a port of a service by number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number.
    #[serde(default)]
    pub number: u32,
}

/// A percentage, 0.0 to 100.0, with fractions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    /// The percentage.
    #[serde(default)]
    pub value: f64,
}

/// Where traffic goes: a service host, optionally one of its subsets and ports.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The service's host name as the registry knows it (`reviews`,
    /// `reviews.default.svc.cluster.local`, a ServiceEntry host). Short names resolve in the
    /// namespace of the object that names them.
    pub host: String,
    /// A subset defined by a DestinationRule for this host; empty for the whole service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// The service port; may be left out when the service has exactly one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The port number, when one is given (and not zero).
    pub fn port_number(&self) -> Option<u32> {
        self.port.map(|p| p.number).filter(|n| *n != 0)
    }

    /// The subset name, when one is given.
    pub fn subset(&self) -> Option<&str> {
        (!self.subset.is_empty()).then_some(self.subset.as_str())
    }
}

/// Selects workloads (pods, VMs) by their labels: the `labels` form used by Sidecar and
/// ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Selects workloads by their labels: the `matchLabels` form (`istio.type.v1beta1`) used by
/// DestinationRule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadLabelSelector {
    /// Labels a workload must all carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A port a Gateway server listens on.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// The port number.
    pub number: u32,
    /// The protocol: HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS (any case).
    pub protocol: String,
    /// A name for the port, unique within the Gateway.
    pub name: String,
    /// Deprecated and without effect on Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

impl Port {
    /// The port's protocol, parsed.
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }
}

/// The protocols Istio knows for a port, as spelled in `protocol` fields (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (or sniffed HTTP/2).
    Http,
    /// HTTP/2.
    Http2,
    /// HTTP used as a forward proxy.
    HttpProxy,
    /// HTTP over TLS.
    Https,
    /// gRPC.
    Grpc,
    /// gRPC-Web.
    GrpcWeb,
    /// Opaque TCP.
    Tcp,
    /// TLS, routed by SNI.
    Tls,
    /// UDP.
    Udp,
    /// MongoDB.
    Mongo,
    /// Redis.
    Redis,
    /// MySQL.
    MySql,
    /// Empty or unknown: Istio sniffs the protocol.
    Unsupported,
}

impl Protocol {
    /// Parses a `protocol` field as Istio does: case-insensitively, with unknown values as
    /// [`Protocol::Unsupported`].
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "http_proxy" => Protocol::HttpProxy,
            "https" => Protocol::Https,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::MySql,
            _ => Protocol::Unsupported,
        }
    }

    /// HTTP of any flavour (HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-WEB).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::HttpProxy
                | Protocol::Grpc
                | Protocol::GrpcWeb
        )
    }

    /// HTTPS or TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Handled as a TCP stream (TCP, HTTPS, TLS, MONGO, REDIS, MYSQL).
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::MySql
        )
    }
}

/// The prefix of a Unix domain socket address in `bind`, `address` and `defaultEndpoint`.
pub(crate) const UNIX_PREFIX: &str = "unix://";

// ---------------------------------------------------------------------------------------------
// Shared checks. They follow Istio's own validation (pkg/config/validation) so that an object
// Istio accepts is accepted here, and one it refuses is refused.

/// A DNS-1123 label as Istio checks it (upper case is accepted, as Istio does).
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A first label that may carry a wildcard: `*`, `*foo`, `*-foo` or a plain label.
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    s.len() <= 63 && is_dns_label(rest)
}

fn check_dns_name_length(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.len() > 255 {
        return Err(format!(
            "domain name {name:?} is too long (at most 255 characters)"
        ));
    }
    Ok(())
}

fn check_dns_labels(whole: &str, domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let last = parts[parts.len() - 1];
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {whole:?} is invalid: the top-level label {last:?} is all digits"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == parts.len() - 1 && label.is_empty() {
            break;
        }
        if !is_dns_label(label) {
            return Err(format!(
                "domain name {whole:?} is invalid: label {label:?} is not a DNS label"
            ));
        }
    }
    Ok(())
}

/// A fully qualified or short DNS name without wildcards.
pub(crate) fn validate_fqdn(name: &str) -> Result<(), String> {
    check_dns_name_length(name)?;
    check_dns_labels(name, name)
}

/// A DNS name whose first label may be a wildcard (`*.example.com`, `*`).
pub(crate) fn validate_wildcard_domain(name: &str) -> Result<(), String> {
    check_dns_name_length(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (name, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "domain name {name:?} is invalid: label {first:?} is not a DNS label"
        ));
    }
    match rest {
        Some(r) => check_dns_labels(name, r),
        None => Ok(()),
    }
}

/// Refuses wildcards other than a whole `*` or a leading `*.`.
pub(crate) fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        return Err(format!(
            "partial wildcard {host:?} is not allowed (use `*` or a leading `*.`)"
        ));
    }
    Ok(())
}

/// An IPv4 or IPv6 address.
pub(crate) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
pub(crate) fn validate_ip_subnet(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((addr, bits)) => {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                return Err(format!("{s:?} is not a valid CIDR block"));
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let ok = !bits.is_empty()
                && bits.len() <= 3
                && bits.bytes().all(|b| b.is_ascii_digit())
                && bits.parse::<u32>().is_ok_and(|n| n <= max);
            if ok {
                Ok(())
            } else {
                Err(format!("{s:?} is not a valid CIDR block"))
            }
        }
        None if is_ip(s) => Ok(()),
        None => Err(format!("{s:?} is not a valid IP address or CIDR block")),
    }
}

/// The path part of a `unix://` address: absolute (or an abstract `@name`), not a directory.
pub(crate) fn validate_unix_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix domain socket path must not be empty".to_string());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path:?} is not an absolute path to a file"));
    }
    Ok(())
}

/// A port number, 1 to 65535.
pub(crate) fn is_port(n: u32) -> bool {
    (1..=65535).contains(&n)
}

/// Reports `n` on `field` unless it is a port number.
pub(crate) fn check_port(issues: &mut Issues, field: impl Into<String>, n: u32) {
    if !is_port(n) {
        issues.error(field, format!("{n} is not a port number (1-65535)"));
    }
}

/// Durations Istio accepts for timeouts and intervals: at least 1ms, in whole milliseconds.
pub(crate) fn check_duration(issues: &mut Issues, field: impl Into<String>, d: Duration) {
    let d = d.get();
    if d < std::time::Duration::from_millis(1) {
        issues.error(field, format!("{} must be at least 1ms", Duration(d)));
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        issues.error(
            field,
            format!(
                "{} is finer than a millisecond; only millisecond precision is supported",
                Duration(d)
            ),
        );
    }
}

/// A fractional percentage: 0, or 0.0001 to 100.
pub(crate) fn check_percentage(issues: &mut Issues, field: impl Into<String>, p: &Percent) {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        issues.error(
            field,
            format!("{v} is not a percentage (0, or 0.0001 to 100)"),
        );
    }
}

/// Kubernetes label syntax for keys and values (subset labels, source labels, endpoint labels).
pub(crate) fn check_labels(issues: &mut Issues, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            issues.error(
                format!("{field}[{k}]"),
                format!("{k:?} is not a valid label key"),
            );
        }
        if !is_label_value(v) {
            issues.error(
                format!("{field}[{k}]"),
                format!("{v:?} is not a valid label value"),
            );
        }
    }
}

/// A selector's labels: no empty keys, no wildcards (errors, as in Istio); keys or values a
/// workload could never carry are warned about. An empty workload selector selects every
/// workload in the namespace, which is allowed but probably not meant (`warn_empty`).
pub(crate) fn check_selector_labels(
    issues: &mut Issues,
    field: &str,
    labels: &BTreeMap<String, String>,
    warn_empty: bool,
) {
    if warn_empty && labels.is_empty() {
        issues.warn(
            field,
            "selector has no labels, so it selects every workload in the namespace",
        );
    }
    for (k, v) in labels {
        let at = format!("{field}[{k}]");
        if k.is_empty() {
            issues.error(&at, "label key must not be empty");
            continue;
        }
        if k.contains('*') || v.contains('*') {
            issues.error(&at, "wildcards are not supported in selectors");
            continue;
        }
        if !is_label_key(k) {
            issues.warn(
                &at,
                format!("{k:?} is not a valid label key, so nothing can match it"),
            );
        }
        if !is_label_value(v) {
            issues.warn(
                &at,
                format!("{v:?} is not a valid label value, so nothing can match it"),
            );
        }
    }
}

/// Checks `exportTo` (`.`, `*`, a namespace, and for ServiceEntry `~`) and returns the
/// entries with `.` replaced by the object's own namespace.
pub(crate) fn check_export_to(
    issues: &mut Issues,
    field: &str,
    namespace: &str,
    export_to: &[String],
    allow_none: bool,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let key = if e == "." {
            namespace.to_string()
        } else {
            e.clone()
        };
        if seen.contains(&key) {
            if export_to[..i].contains(e) {
                issues.error(&at, format!("duplicate entry {e:?}"));
            } else {
                issues.error(
                    &at,
                    format!("duplicate entry: \".\" and {namespace:?} name the same namespace"),
                );
            }
            continue;
        }
        let valid = match e.as_str() {
            "." | "*" => true,
            "~" if allow_none => true,
            "~" => {
                issues.error(
                    &at,
                    "\"~\" (visible to no one) is only allowed on ServiceEntry",
                );
                false
            }
            ns if is_dns_label(ns) => true,
            _ => {
                issues.error(
                    &at,
                    format!("{e:?} is not \".\", \"*\" or a namespace name"),
                );
                false
            }
        };
        if valid {
            seen.insert(key);
        }
    }
    if export_to.len() > 1 {
        if seen.contains("*") {
            issues.error(
                field,
                "\"*\" (every namespace) cannot be combined with other entries",
            );
        }
        if seen.contains("~") {
            issues.error(
                field,
                "\"~\" (no namespace) cannot be combined with other entries",
            );
        }
    }
    seen
}

/// Gateway references in a VirtualService or its matches: `mesh`, `name` or `namespace/name`.
pub(crate) fn check_gateway_names(issues: &mut Issues, field: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match g.split_once('/') {
            None => {
                if let Some((name, ns)) = g.split_once('.') {
                    let ns = ns.split('.').next().unwrap_or_default();
                    issues.warn(
                        &at,
                        format!(
                            "{g:?} uses the legacy name.namespace form; prefer \"{ns}/{name}\""
                        ),
                    );
                }
                if let Err(e) = validate_fqdn(g) {
                    issues.error(&at, format!("invalid gateway name: {e}"));
                }
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    issues.error(&at, "namespace and gateway name must both be given");
                    continue;
                }
                if !is_dns_label(ns) {
                    issues.error(&at, format!("{ns:?} is not a valid namespace name"));
                }
                if !is_dns_label(name) {
                    issues.error(&at, format!("{name:?} is not a valid gateway name"));
                }
            }
        }
    }
}

/// Istio (and Envoy's RE2) refuse very large expressions; Istio approximates program size by
/// length.
const MAX_REGEX_LEN: usize = 1024;

/// Checks that `re` is a regular expression Envoy (RE2) would accept.
pub(crate) fn check_regex(issues: &mut Issues, field: impl Into<String>, re: &str) {
    let field = field.into();
    if re.is_empty() {
        issues.error(field, "regex must not be empty");
        return;
    }
    if re.len() > MAX_REGEX_LEN {
        issues.error(
            field,
            format!(
                "regex is too long ({} characters, at most {MAX_REGEX_LEN})",
                re.len()
            ),
        );
        return;
    }
    if let Err(e) = regex_syntax::Parser::new().parse(re) {
        let reason = match &e {
            regex_syntax::Error::Parse(p) => p.kind().to_string(),
            regex_syntax::Error::Translate(t) => t.kind().to_string(),
            other => other.to_string(),
        };
        issues.error(
            field,
            format!("invalid regex {re:?}: {reason} (RE2 syntax is expected)"),
        );
    }
}

/// A string match where an empty prefix is refused (everything but `uri`, which Envoy allows
/// to have an empty prefix).
pub(crate) fn check_string_match(issues: &mut Issues, field: &str, m: &StringMatch) {
    match m {
        StringMatch::Prefix(p) if p.is_empty() => {
            issues.error(field, "prefix must not be empty");
        }
        StringMatch::Regex(re) => check_regex(issues, format!("{field}.regex"), re),
        _ => {}
    }
}

/// Where a destination points: a valid (possibly wildcard, never `*`) host, a valid subset
/// name, a valid port.
pub(crate) fn check_destination(issues: &mut Issues, field: &str, d: &Destination) {
    let host_at = format!("{field}.host");
    if d.host.is_empty() {
        issues.error(host_at, "is required");
    } else if d.host == "*" {
        issues.error(host_at, "\"*\" is not a valid destination host");
    } else if let Err(e) = validate_wildcard_domain(&d.host) {
        issues.error(host_at, e);
    }
    if !d.subset.is_empty() && !is_dns_label(&d.subset) {
        issues.error(
            format!("{field}.subset"),
            format!("{:?} is not a valid subset name (DNS label)", d.subset),
        );
    }
    if let Some(p) = d.port {
        check_port(issues, format!("{field}.port.number"), p.number);
    }
}

/// An optional port name: a DNS label.
pub(crate) fn check_port_name(issues: &mut Issues, field: impl Into<String>, name: &str) {
    if !is_dns_label(name) {
        issues.error(
            field,
            format!("{name:?} is not a valid port name (DNS label)"),
        );
    }
}

/// An optional protocol: empty (sniffed) or one Istio knows.
pub(crate) fn check_protocol(issues: &mut Issues, field: impl Into<String>, protocol: &str) {
    if !protocol.is_empty() && Protocol::parse(protocol) == Protocol::Unsupported {
        issues.error(
            field,
            format!(
                "unsupported protocol {protocol:?} (use HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL or UDP)"
            ),
        );
    }
}

/// The host part of a Gateway or Sidecar host entry: an FQDN (no short names), possibly with
/// a leading `*.`, or `*`; Gateways also accept an IP address.
fn host_part_errors(host: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if host != "*" && !host.contains('.') {
        errs.push(format!(
            "{host:?} is a short name; use a fully qualified name (or `*`)"
        ));
    }
    if let Err(e) = validate_wildcard_domain(host)
        && !(is_gateway && is_ip(host))
    {
        errs.push(e);
    }
    if let Err(e) = validate_partial_wildcard(host) {
        errs.push(e);
    }
    errs
}

/// Checks a `namespace/host` entry of a Gateway server (where the namespace part is optional
/// and may be `*` or `.`) or of a Sidecar egress listener (where it is required and may also
/// be `~`, or `~`-prefixed to exclude a namespace).
pub(crate) fn check_namespaced_host(
    issues: &mut Issues,
    field: &str,
    entry: &str,
    is_gateway: bool,
) {
    let Some((ns, host)) = entry.split_once('/') else {
        if is_gateway {
            let errs = host_part_errors(entry, true);
            if !errs.is_empty() {
                issues.error(field, errs.join("; "));
            }
        } else {
            issues.error(
                field,
                format!("{entry:?} must have the form namespace/host (for example ./* or istio-system/*)"),
            );
        }
        return;
    };
    if ns.is_empty() || host.is_empty() {
        issues.error(field, "namespace and host must both be given");
        return;
    }
    let ns_ok = if is_gateway {
        ns == "*" || ns == "." || is_dns_label(ns)
    } else {
        let ns = ns.strip_prefix('~').unwrap_or(ns);
        ns.is_empty() || ns == "*" || ns == "." || is_dns_label(ns)
    };
    let mut errs = host_part_errors(host, is_gateway);
    if !ns_ok {
        errs.insert(0, format!("{ns:?} is not a namespace name, `*` or `.`"));
    }
    if !errs.is_empty() {
        issues.error(field, errs.join("; "));
    }
}

/// Whether two hosts overlap (`*.foo.com` and `bar.foo.com`, or equal names).
pub(crate) fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if sa.len() < sb.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Whether every name `a` matches is also matched by `b`.
pub(crate) fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.len() >= sb.len() && sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// RFC 7230 token characters, which header names consist of.
pub(crate) fn is_header_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header value Envoy accepts in a header rule: no control characters (tab aside), and `%`
/// either doubled (`%%`) or opening a `%VARIABLE%` / `%VARIABLE(args)%` expression.
pub(crate) fn validate_header_value(v: &str) -> Result<(), String> {
    if v.chars().any(|c| (c < ' ' && c != '\t') || c == '\u{7f}') {
        return Err("contains control characters".to_string());
    }
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        // A variable: a name, then either '%' or '(' args ')' and '%'.
        let mut j = i + 1;
        while j < b.len() && b[j] != b'%' && b[j] != b'(' {
            j += 1;
        }
        if j == b.len() {
            return Err(format!(
                "unterminated %VARIABLE% expression in {v:?} (write %% for a literal %)"
            ));
        }
        if b[j] == b'(' {
            // Skip the arguments, honouring quoted strings with backslash escapes.
            let mut in_str = false;
            j += 1;
            while j < b.len() {
                match b[j] {
                    b'\\' if in_str => j += 1,
                    b'"' => in_str = !in_str,
                    b')' if !in_str => break,
                    _ => {}
                }
                j += 1;
            }
            j += 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j >= b.len() || b[j] != b'%' {
                return Err(format!("unterminated %VARIABLE(...)% expression in {v:?}"));
            }
        }
        i = j + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_shapes() {
        let m: StringMatch = serde_json::from_str(r#"{"prefix":"/api"}"#).expect("prefix");
        assert_eq!(m.prefix(), Some("/api"));
        assert_eq!(m.exact(), None);
        let m: StringMatch = serde_json::from_str("{}").expect("empty");
        assert!(m.is_any());
        let m: StringMatch = serde_json::from_str(r#"{"regex":"^a+$"}"#).expect("regex");
        assert_eq!(m.regex(), Some("^a+$"));
        let err = serde_json::from_str::<StringMatch>(r#"{"exact":"a","prefix":"b"}"#)
            .expect_err("two kinds");
        assert!(err.to_string().contains("only one of"), "{err}");
        assert_eq!(
            serde_json::to_string(&StringMatch::Exact("x".into())).expect("ser"),
            r#"{"exact":"x"}"#
        );
        assert_eq!(serde_json::to_string(&StringMatch::Any).expect("ser"), "{}");
    }

    #[test]
    fn schemas_use_istio_names() {
        let dr = serde_json::to_value(schemars::schema_for!(super::super::DestinationRuleSpec))
            .expect("schema");
        let text = dr.to_string();
        for needle in [
            "ROUND_ROBIN",
            "ISTIO_MUTUAL",
            "consecutive5xxErrors",
            "http1MaxPendingRequests",
        ] {
            assert!(
                text.contains(needle),
                "{needle} missing from DestinationRule schema"
            );
        }
        assert_eq!(dr["required"], serde_json::json!(["host"]));
        let vs = serde_json::to_value(schemars::schema_for!(super::super::VirtualServiceSpec))
            .expect("schema");
        let text = vs.to_string();
        for needle in [
            "\"match\"",
            "prefix",
            "regex",
            "FROM_REQUEST_PORT",
            "maxProperties",
        ] {
            assert!(
                text.contains(needle),
                "{needle} missing from VirtualService schema"
            );
        }
        let se = serde_json::to_value(schemars::schema_for!(super::super::ServiceEntrySpec))
            .expect("schema")
            .to_string();
        assert!(se.contains("MESH_INTERNAL") && se.contains("DNS_ROUND_ROBIN"));
    }

    #[test]
    fn domains() {
        assert!(validate_wildcard_domain("*.example.com").is_ok());
        assert!(validate_wildcard_domain("*").is_ok());
        assert!(validate_wildcard_domain("reviews").is_ok());
        assert!(validate_wildcard_domain("istio.io.").is_ok());
        assert!(validate_wildcard_domain("foo.*.com").is_err());
        assert!(validate_wildcard_domain("a..b").is_err());
        assert!(validate_wildcard_domain("10.0.0.1").is_err());
        assert!(validate_wildcard_domain("").is_err());
        assert!(validate_fqdn("*.example.com").is_err());
        assert!(validate_partial_wildcard("*foo.com").is_err());
        assert!(validate_partial_wildcard("*.foo.com").is_ok());
    }

    #[test]
    fn subnets() {
        assert!(validate_ip_subnet("10.0.0.0/8").is_ok());
        assert!(validate_ip_subnet("2001:db8::/32").is_ok());
        assert!(validate_ip_subnet("1.2.3.4").is_ok());
        assert!(validate_ip_subnet("1.2.3.4/33").is_err());
        assert!(validate_ip_subnet("1.2.3.4/+8").is_err());
        assert!(validate_ip_subnet("example.com").is_err());
    }

    #[test]
    fn host_relations() {
        assert!(hosts_overlap("*.foo.com", "bar.foo.com"));
        assert!(hosts_overlap("*.foo.com", "*.com"));
        assert!(!hosts_overlap("a.com", "b.com"));
        assert!(host_subset_of("a.foo.com", "*.foo.com"));
        assert!(!host_subset_of("*.foo.com", "a.foo.com"));
        assert!(host_subset_of("*.a.foo.com", "*.foo.com"));
    }

    #[test]
    fn header_values() {
        for ok in [
            "foo",
            "%HOSTNAME%",
            "100%%",
            "a %REQ(x-id)% b",
            "%START_TIME(%s)%",
            "",
        ] {
            assert!(validate_header_value(ok).is_ok(), "{ok}");
        }
        for bad in ["abc%123", "%START_TIME%%", "a\nb", "%REQ(x"] {
            assert!(validate_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regexes() {
        let mut i = Issues::new();
        check_regex(&mut i, "r", "^/api/v[0-9]+/.*$");
        check_regex(&mut i, "r", r"\d+\w*\p{Greek}");
        assert!(!i.has_errors(), "{:?}", i.items());
        check_regex(&mut i, "r", "a(b");
        assert!(i.has_errors());
    }

    #[test]
    fn durations() {
        let mut i = Issues::new();
        check_duration(&mut i, "d", "10ms".parse().expect("d"));
        assert!(!i.has_errors());
        check_duration(&mut i, "d", "0s".parse().expect("d"));
        check_duration(&mut i, "d", "1.0005s".parse().expect("d"));
        assert_eq!(i.errors().count(), 2);
    }
}
