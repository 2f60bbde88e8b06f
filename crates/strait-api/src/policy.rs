//! strait's own policy kinds (`policy.strait.io`), for what Istio only offers through
//! EnvoyFilter.
//!
//! `LocalRateLimit` caps requests to a destination host: every proxy routing to the host
//! answers 429 above the limit, counting its own traffic (a local token bucket, no rate-limit
//! service). Rules refine the default: the first rule whose match applies decides, and a rule
//! may keep one bucket per distinct value of a request header (per client, per API key).
//!
//! ```yaml
//! apiVersion: policy.strait.io/v1alpha1
//! kind: LocalRateLimit
//! metadata: {name: reviews, namespace: bookinfo}
//! spec:
//!   host: reviews
//!   limit: {requests: 100, per: 1s}
//!   rules:
//!   - match: {headers: {x-tier: {exact: gold}}}
//!     limit: {requests: 1000, per: 1s}
//!   - perHeader: x-forwarded-for
//!     limit: {requests: 10, per: 1s}
//! ```

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::istio::{IstioObject, Spec, StringMatch};
use crate::validate::Issues;

/// The API group of strait's policy kinds.
pub const POLICY_GROUP: &str = "policy.strait.io";
/// The versions of `policy.strait.io` strait accepts.
pub const POLICY_VERSIONS: &[&str] = &["v1alpha1"];

/// policy.strait.io LocalRateLimit.
pub type LocalRateLimit = IstioObject<LocalRateLimitSpec>;

/// A rate limit for requests to one destination host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRateLimitSpec {
    /// The destination host (a short name resolves in this object's namespace), as in a
    /// DestinationRule.
    pub host: String,
    /// Only requests to this service port; all ports when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// The limit for requests no rule matches. Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<RateLimit>,
    /// More specific limits, the first whose match applies wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RateLimitRule>,
}

/// A number of requests per interval (a token bucket refilled every interval).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per interval (also the burst size).
    pub requests: u32,
    /// The interval, at least 50ms.
    pub per: Duration,
}

/// A refinement of the default limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRule {
    /// Which requests the rule is for; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#match: Option<RateLimitMatch>,
    /// Keep one bucket per distinct value of this request header (requests without it fall
    /// through to the next rule).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub per_header: String,
    /// The limit of the rule (of each bucket, with `perHeader`).
    pub limit: RateLimit,
}

/// Request conditions of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitMatch {
    /// Headers and how they must match (`{}` means present).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

fn check_limit(issues: &mut Issues, field: &str, l: &RateLimit) {
    if l.requests == 0 {
        issues.error(format!("{field}.requests"), "must be at least 1");
    }
    if l.per.get() < std::time::Duration::from_millis(50) {
        issues.error(
            format!("{field}.per"),
            "must be at least 50ms (Envoy's token bucket granularity)",
        );
    }
    if !l.per.get().subsec_nanos().is_multiple_of(1_000_000) {
        issues.error(
            format!("{field}.per"),
            "must be a whole number of milliseconds",
        );
    }
}

fn valid_header(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Spec for LocalRateLimitSpec {
    fn validate(&self, _meta: &ObjectMeta, issues: &mut Issues) {
        if self.host.is_empty() {
            issues.error("spec.host", "is required");
        } else if self.host.contains('*') {
            issues.error("spec.host", "must name one host, not a wildcard");
        }
        if let Some(p) = self.port
            && !(1..=65535).contains(&p)
        {
            issues.error("spec.port", format!("{p} is not a port number (1-65535)"));
        }
        if let Some(l) = &self.limit {
            check_limit(issues, "spec.limit", l);
        }
        if self.limit.is_none() && self.rules.is_empty() {
            issues.error(
                "spec",
                "sets neither a limit nor rules: it would limit nothing",
            );
        }
        for (i, r) in self.rules.iter().enumerate() {
            let f = format!("spec.rules[{i}]");
            check_limit(issues, &format!("{f}.limit"), &r.limit);
            if !r.per_header.is_empty() && !valid_header(&r.per_header) {
                issues.error(
                    format!("{f}.perHeader"),
                    format!("{:?} is not a lower-case header name", r.per_header),
                );
            }
            if let Some(m) = &r.r#match {
                for (h, sm) in &m.headers {
                    if !valid_header(h) {
                        issues.error(
                            format!("{f}.match.headers[{h}]"),
                            "not a lower-case header name",
                        );
                    }
                    if let StringMatch::Regex(re) = sm
                        && regex_syntax::Parser::new().parse(re).is_err()
                    {
                        issues.error(
                            format!("{f}.match.headers[{h}].regex"),
                            format!("{re:?} is not a valid RE2 regular expression"),
                        );
                    }
                }
            }
            if r.r#match.is_none() && r.per_header.is_empty() {
                issues.warn(
                    &f,
                    "matches every request: later rules and the default limit never apply",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (crate::Object, Issues) {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let p = crate::parse_object(v, "default").expect("parses");
        let issues = p.object.validate();
        (p.object, issues)
    }

    #[test]
    fn parses_and_validates() {
        let (o, issues) = parse(
            "apiVersion: policy.strait.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: r}\nspec:\n  host: reviews\n  limit: {requests: 10, per: 1s}\n  rules:\n  - match: {headers: {x-tier: {exact: gold}}}\n    limit: {requests: 100, per: 1s}\n  - perHeader: x-forwarded-for\n    limit: {requests: 2, per: 500ms}\n",
        );
        assert!(!issues.has_errors(), "{:?}", issues.items());
        let crate::Object::LocalRateLimit(l) = o else {
            panic!("kind")
        };
        assert_eq!(l.spec.rules[1].per_header, "x-forwarded-for");
    }

    #[test]
    fn refuses_what_envoy_cannot_do() {
        let (_, issues) = parse(
            "apiVersion: policy.strait.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: r}\nspec:\n  host: '*.example.com'\n  limit: {requests: 0, per: 10ms}\n  rules:\n  - perHeader: X-Forwarded-For\n    limit: {requests: 1, per: 1s}\n",
        );
        let fields: Vec<&str> = issues.errors().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.host",
                "spec.limit.requests",
                "spec.limit.per",
                "spec.rules[0].perHeader"
            ]
        );
    }
}
