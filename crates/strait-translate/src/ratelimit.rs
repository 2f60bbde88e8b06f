//! `LocalRateLimit` (strait's policy kind) as Envoy's local rate limit filter: a per-route
//! filter config holding the token buckets, and route rate-limit actions that tell it which
//! bucket a request falls in.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RateLimit, rate_limit};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    LocalRateLimitDescriptor, XRateLimitHeadersRfcVersion, rate_limit_descriptor,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use strait_api::istio::StringMatch;
use strait_api::policy::{LocalRateLimitSpec, RateLimit as Limit};

use crate::util::{any, duration, u32_value};

/// The local rate limit filter's name.
pub const FILTER: &str = "envoy.filters.http.local_ratelimit";
/// Stat prefix of the filter (`http_local_rate_limiter.http_local_rate_limit.rate_limited`).
pub const STAT_PREFIX: &str = "http_local_rate_limiter";
const RULE_KEY: &str = "strait.rule";

fn bucket(l: &Limit) -> TokenBucket {
    TokenBucket {
        max_tokens: l.requests,
        tokens_per_fill: u32_value(l.requests),
        fill_interval: Some(duration(l.per.get())),
    }
}

fn always() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

fn header_matchers(
    headers: &std::collections::BTreeMap<String, StringMatch>,
) -> Vec<HeaderMatcher> {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    headers
        .iter()
        .map(|(name, m)| HeaderMatcher {
            name: name.clone(),
            header_match_specifier: Some(match crate::http_route::string_matcher(m, false) {
                Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
                None => HeaderMatchSpecifier::PresentMatch(true),
            }),
            ..Default::default()
        })
        .collect()
}

fn entry(key: &str, value: &str) -> rate_limit_descriptor::Entry {
    rate_limit_descriptor::Entry {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// A dynamic bucket per distinct value needs a bound on how many values are tracked.
const MAX_DYNAMIC_BUCKETS: u32 = 20_000;

/// The per-route filter config and the route's rate-limit actions for a limit.
pub fn route_config(spec: &LocalRateLimitSpec) -> (Any, Vec<RateLimit>) {
    let mut descriptors = Vec::new();
    let mut actions = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let id = i.to_string();
        let mut entries = vec![entry(RULE_KEY, &id)];
        let mut rule_actions = vec![match &rule.r#match {
            Some(m) if !m.headers.is_empty() => rate_limit::Action {
                action_specifier: Some(rate_limit::action::ActionSpecifier::HeaderValueMatch(
                    rate_limit::action::HeaderValueMatch {
                        descriptor_key: RULE_KEY.to_string(),
                        descriptor_value: id.clone(),
                        expect_match: Some(envoy_types::pb::google::protobuf::BoolValue {
                            value: true,
                        }),
                        headers: header_matchers(&m.headers),
                        ..Default::default()
                    },
                )),
            },
            _ => rate_limit::Action {
                action_specifier: Some(rate_limit::action::ActionSpecifier::GenericKey(
                    rate_limit::action::GenericKey {
                        descriptor_key: RULE_KEY.to_string(),
                        descriptor_value: id.clone(),
                        ..Default::default()
                    },
                )),
            },
        }];
        if !rule.per_header.is_empty() {
            let key = format!("{RULE_KEY}.{i}.value");
            // An entry without a value is a wildcard: one bucket per distinct value.
            entries.push(entry(&key, ""));
            rule_actions.push(rate_limit::Action {
                action_specifier: Some(rate_limit::action::ActionSpecifier::RequestHeaders(
                    rate_limit::action::RequestHeaders {
                        header_name: rule.per_header.clone(),
                        descriptor_key: key,
                        skip_if_absent: false,
                    },
                )),
            });
        }
        descriptors.push(LocalRateLimitDescriptor {
            entries,
            token_bucket: Some(bucket(&rule.limit)),
            ..Default::default()
        });
        actions.push(RateLimit {
            actions: rule_actions,
            ..Default::default()
        });
    }
    let default_bucket = match &spec.limit {
        Some(l) => bucket(l),
        // Rules only: requests no rule matches are not limited.
        None => TokenBucket {
            max_tokens: u32::MAX,
            tokens_per_fill: u32_value(u32::MAX),
            fill_interval: Some(duration(std::time::Duration::from_secs(1))),
        },
    };
    let cfg = EnvoyLocalRateLimit {
        stat_prefix: STAT_PREFIX.to_string(),
        token_bucket: Some(default_bucket),
        filter_enabled: always(),
        filter_enforced: always(),
        descriptors,
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        // A matching rule replaces the default limit; it does not also draw from it.
        always_consume_default_token_bucket: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: false,
        }),
        max_dynamic_descriptors: spec
            .rules
            .iter()
            .any(|r| !r.per_header.is_empty())
            .then(|| u32_value(MAX_DYNAMIC_BUCKETS))
            .flatten(),
        ..Default::default()
    };
    (any(&cfg), actions)
}

/// The filter as listed in a connection manager: disabled until a route enables it.
pub fn hcm_filter_config() -> EnvoyLocalRateLimit {
    EnvoyLocalRateLimit {
        stat_prefix: STAT_PREFIX.to_string(),
        ..Default::default()
    }
}
