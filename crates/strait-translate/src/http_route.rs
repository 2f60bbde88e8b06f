//! VirtualService HTTP rules as Envoy routes, the way Istio translates them.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use strait_api::istio::{
    ConsistentHashLb, CorsPolicy, Destination, HashKey, HeaderOperations, Headers,
    HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute, Percent,
    RedirectPortSelection, StringMatch,
};
use strait_model::{Labels, MeshSnapshot, selector_matches};

use crate::config::{ConfigIndex, VsRef, resolve_host};
use crate::names;
use crate::util::{any, duration, seconds, u32_value};

/// The HTTP filter names whose per-route configuration routes carry.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// CORS filter name.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Where routes are being built: which proxy, which listener port, which gateways.
pub struct RouteContext<'a> {
    /// The mesh.
    pub snap: &'a MeshSnapshot,
    /// Resolved config.
    pub config: &'a ConfigIndex,
    /// The proxy's namespace.
    pub proxy_ns: &'a str,
    /// The proxy's labels.
    pub labels: &'a Labels,
    /// `mesh` for sidecars; the proxy's gateways (`ns/name`) for gateways.
    pub gateways: &'a [String],
    /// The listener (service or gateway server) port.
    pub port: u16,
    /// The listener terminates TLS (redirects keep https).
    pub tls: bool,
    /// What the proxy sees.
    pub visible: &'a crate::scope::Visibility,
}

/// Istio's default retry policy: two retries on connection failures, refused streams and 503,
/// each on another host unless requests are hashed to one.
pub fn default_retry_policy(hashed: bool) -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .to_string(),
        retriable_status_codes: vec![503],
        num_retries: u32_value(2),
        retry_host_predicate: if hashed { Vec::new() } else { previous_hosts() },
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// A route action with the VirtualService's timeout (unset: none, where Envoy alone would
/// default to 15s), which applies to gRPC calls too. `max_stream_duration` stays unset: it
/// would switch Envoy to its "new timeouts", which ignore the route `timeout`.
pub fn timed_action(timeout: Option<envoy_types::pb::google::protobuf::Duration>) -> RouteAction {
    RouteAction {
        timeout: Some(timeout.unwrap_or_else(|| seconds(0))),
        ..Default::default()
    }
}

fn previous_hosts() -> Vec<retry_policy::RetryHostPredicate> {
    vec![retry_policy::RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            any(&PreviousHostsPredicate {}),
        )),
    }]
}

/// A VirtualService `retries` block as an Envoy retry policy (`None`: retries disabled).
pub fn retry_policy(r: Option<&HttpRetry>, hashed: bool) -> Option<RetryPolicy> {
    let Some(r) = r else {
        return Some(default_retry_policy(hashed));
    };
    if r.attempts <= 0 {
        return None;
    }
    let mut out = default_retry_policy(hashed);
    out.num_retries = u32_value(r.attempts as u32);
    if !r.retry_on.trim().is_empty() {
        let mut on = Vec::new();
        let mut codes = Vec::new();
        for part in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.parse::<u32>() {
                Ok(code) if (100..=599).contains(&code) => codes.push(code),
                _ => on.push(part.to_string()),
            }
        }
        if !codes.is_empty() && !on.iter().any(|p| p == "retriable-status-codes") {
            on.push("retriable-status-codes".to_string());
        }
        out.retry_on = on.join(",");
        out.retriable_status_codes = codes;
    }
    if let Some(d) = r.per_try_timeout {
        out.per_try_timeout = Some(duration(d.get()));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore { previous_hosts() } else { Vec::new() };
    }
    if let Some(b) = r.backoff {
        out.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(b.get())),
            ..Default::default()
        });
    }
    Some(out)
}

/// A StringMatch as Envoy's string matcher.
pub fn string_matcher(m: &StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = match m {
        StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: s.clone(),
            ..Default::default()
        }),
        StringMatch::Any => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn header_matcher(name: &str, m: &StringMatch) -> HeaderMatcher {
    // `{}` (and the regex `*`, which Istio reads the same way) means "present".
    let present = matches!(m, StringMatch::Any) || matches!(m, StringMatch::Regex(r) if r == "*");
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(if present {
            header_matcher::HeaderMatchSpecifier::PresentMatch(true)
        } else {
            header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(m, false).unwrap_or_default(),
            )
        }),
        ..Default::default()
    }
}

/// An HTTPMatchRequest as an Envoy route match.
pub fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(k, v)| header_matcher(k, v))
        .collect();
    for (k, v) in &m.without_headers {
        let mut h = header_matcher(k, v);
        h.invert_match = true;
        if !matches!(v, StringMatch::Any) {
            h.treat_missing_header_as_empty = true;
        }
        headers.push(h);
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = &m.uri {
        out.path_specifier = match uri {
            StringMatch::Exact(p) => Some(route_match::PathSpecifier::Path(p.clone())),
            StringMatch::Prefix(p) => Some(route_match::PathSpecifier::Prefix(p.clone())),
            StringMatch::Regex(r) => Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                regex: r.clone(),
                ..Default::default()
            })),
            StringMatch::Any => out.path_specifier,
        };
    }
    out.case_sensitive = Some(BoolValue {
        value: !m.ignore_uri_case,
    });
    if let Some(x) = &m.method {
        headers.push(header_matcher(":method", x));
    }
    if let Some(x) = &m.authority {
        headers.push(header_matcher(":authority", x));
    }
    if let Some(x) = &m.scheme {
        headers.push(header_matcher(":scheme", x));
    }
    out.headers = headers;
    out.query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(match string_matcher(v, false) {
                Some(sm) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm),
                None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    out
}

/// Istio's source conditions: named gateways, else source labels and namespace.
fn source_matches(m: &HttpMatchRequest, ctx: &RouteContext<'_>) -> bool {
    if !m.gateways.is_empty() {
        return m.gateways.iter().any(|g| {
            let q = crate::config::qualify_gateway(g, "");
            ctx.gateways
                .iter()
                .any(|mine| *mine == q || mine.ends_with(&format!("/{g}")) || g == mine)
        });
    }
    selector_matches(&m.source_labels, ctx.labels)
        && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy_ns)
}

fn header_value(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_ascii_lowercase(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// Header operations as Envoy's (to add, to remove).
fn header_ops(ops: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| header_value(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| header_value(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    (
        add,
        ops.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    )
}

fn apply_route_headers(r: &mut Route, h: Option<&Headers>) {
    let Some(h) = h else { return };
    let (add, rm) = header_ops(h.request.as_ref());
    r.request_headers_to_add.extend(add);
    r.request_headers_to_remove.extend(rm);
    let (add, rm) = header_ops(h.response.as_ref());
    r.response_headers_to_add.extend(add);
    r.response_headers_to_remove.extend(rm);
}

fn fractional(p: f64) -> FractionalPercent {
    // Millionths keep four decimal places of Istio's percentage.
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn percent(p: Option<&Percent>, legacy: i32) -> FractionalPercent {
    match p {
        Some(p) => fractional(p.value),
        None if legacy > 0 => fractional(f64::from(legacy)),
        None => fractional(100.0),
    }
}

/// A fault block as the fault filter's per-route config (`None` when it injects nothing).
pub fn fault(f: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay?;
        Some(FaultDelay {
            percentage: Some(percent(d.percentage.as_ref(), d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                fixed.get(),
            ))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let status = a.http_status?;
        Some(FaultAbort {
            percentage: Some(percent(a.percentage.as_ref(), 0)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(status as u32)),
            ..Default::default()
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

/// A CORS policy as the CORS filter's per-route config.
pub fn cors(c: &CorsPolicy) -> EnvoyCors {
    let mut origins: Vec<StringMatcher> = c
        .allow_origins
        .iter()
        .filter_map(|m| string_matcher(m, false))
        .collect();
    origins.extend(c.allow_origin.iter().map(|o| StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(o.clone())),
        ignore_case: false,
    }));
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|v| BoolValue { value: v }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: fractional_percent::DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != strait_api::istio::UnmatchedPreflights::Ignore,
        }),
        ..Default::default()
    }
}

/// The cluster a destination names, as seen from a listener on `port`: the destination's
/// port, else the service's only port, else the listener's.
pub fn destination_cluster(
    ctx: &RouteContext<'_>,
    vs_ns: &str,
    d: &Destination,
) -> (String, String) {
    let host = resolve_host(&d.host, vs_ns, &ctx.snap.domain);
    let svc = ctx.snap.service_by_host(&host);
    let port = match d.port_number() {
        Some(p) => p as u16,
        None => match svc {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => ctx.port,
        },
    };
    (names::outbound_cluster(port, &d.subset, &host), host)
}

/// The hash policy the destination's DestinationRule asks for.
pub fn hash_policy(
    ctx: &RouteContext<'_>,
    host: &str,
    d: &Destination,
    port: u16,
) -> Option<route_action::HashPolicy> {
    let svc = ctx.snap.service_by_host(host);
    let dr = ctx.config.destination_rule(
        host,
        svc.map(|s| &*s.key.namespace),
        ctx.proxy_ns,
        ctx.labels,
    )?;
    let policy = dr.policy(port, d.subset());
    let ch: &ConsistentHashLb = policy.load_balancer.as_ref()?.consistent_hash.as_ref()?;
    let spec = match ch.hash_key()? {
        HashKey::HttpHeaderName(h) => {
            route_action::hash_policy::PolicySpecifier::Header(route_action::hash_policy::Header {
                header_name: h.to_ascii_lowercase(),
                ..Default::default()
            })
        }
        HashKey::HttpCookie(c) => {
            route_action::hash_policy::PolicySpecifier::Cookie(route_action::hash_policy::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.map(|t| duration(t.get())),
                ..Default::default()
            })
        }
        HashKey::SourceIp => route_action::hash_policy::PolicySpecifier::ConnectionProperties(
            route_action::hash_policy::ConnectionProperties { source_ip: true },
        ),
        HashKey::HttpQueryParameterName(q) => {
            route_action::hash_policy::PolicySpecifier::QueryParameter(
                route_action::hash_policy::QueryParameter {
                    name: q.to_string(),
                },
            )
        }
    };
    Some(route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    })
}

fn redirect(r: &HttpRedirect, ctx: &RouteContext<'_>) -> Option<RedirectAction> {
    let code = match r.redirect_code {
        0 | 301 => redirect_action::RedirectResponseCode::MovedPermanently,
        302 => redirect_action::RedirectResponseCode::Found,
        303 => redirect_action::RedirectResponseCode::SeeOther,
        307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
        308 => redirect_action::RedirectResponseCode::PermanentRedirect,
        // Envoy cannot answer other codes; the rule is dropped (and `validate` says so).
        _ => return None,
    };
    let mut out = RedirectAction {
        host_redirect: r.authority.clone(),
        response_code: code as i32,
        ..Default::default()
    };
    out.path_rewrite_specifier = if !r.prefix_rewrite.is_empty() {
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
            r.prefix_rewrite.clone(),
        ))
    } else if !r.uri.is_empty() {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            r.uri.clone(),
        ))
    } else {
        None
    };
    if !r.scheme.is_empty() {
        out.scheme_rewrite_specifier = Some(
            redirect_action::SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone()),
        );
    }
    let port = match (r.port, r.derive_port) {
        (Some(p), _) => Some(p),
        (None, Some(RedirectPortSelection::FromRequestPort)) => Some(u32::from(ctx.port)),
        _ => None,
    };
    if let Some(p) = port {
        let scheme = if r.scheme.is_empty() {
            if ctx.tls { "https" } else { "http" }
        } else {
            r.scheme.as_str()
        };
        // No explicit :80 for http or :443 for https.
        if !((p == 80 && scheme == "http") || (p == 443 && scheme == "https")) {
            out.port_redirect = p;
        }
    }
    Some(out)
}

/// Applies the LocalRateLimit of the route's destination (the first destination of a
/// weighted route) to a route.
pub fn apply_rate_limit(ctx: &RouteContext<'_>, r: &mut Route, host: &str, port: u16) {
    let Some(l) = ctx.config.rate_limit(host, port) else {
        return;
    };
    let (cfg, actions) = crate::ratelimit::route_config(&l.spec);
    r.typed_per_filter_config
        .insert(crate::ratelimit::FILTER.to_string(), cfg);
    if let Some(route::Action::Route(a)) = r.action.as_mut() {
        a.rate_limits = actions;
    }
}

/// The Envoy routes of one VirtualService on this listener, in order. Rules whose conditions
/// exclude this proxy or port produce nothing.
pub fn vs_routes(ctx: &RouteContext<'_>, vs: &VsRef) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, rule) in vs.vs.spec.http.iter().enumerate() {
        let matches: Vec<Option<&HttpMatchRequest>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches
                .iter()
                .filter(|m| {
                    (m.port == 0 || m.port == u32::from(ctx.port)) && source_matches(m, ctx)
                })
                .map(Some)
                .collect()
        };
        for m in matches {
            if let Some(r) = translate_rule(ctx, vs, i, rule, m) {
                out.push(r);
            }
        }
    }
    out
}

fn translate_rule(
    ctx: &RouteContext<'_>,
    vs: &VsRef,
    index: usize,
    rule: &HttpRoute,
    m: Option<&HttpMatchRequest>,
) -> Option<Route> {
    let name = if !rule.name.is_empty() {
        match m.filter(|m| !m.name.is_empty()) {
            Some(m) => format!("{}.{}", rule.name, m.name),
            None => rule.name.clone(),
        }
    } else {
        format!("{}.{}.{index}", vs.key.namespace, vs.key.name)
    };
    let mut r = Route {
        name,
        r#match: Some(route_match(m)),
        decorator: Some(Decorator {
            operation: format!("{}:{}/*", vs.key.name, ctx.port),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut per_filter: HashMap<String, Any> = HashMap::new();
    if let Some(red) = &rule.redirect {
        r.action = Some(route::Action::Redirect(redirect(red, ctx)?));
    } else if let Some(dr) = &rule.direct_response {
        let body = dr
            .body
            .as_ref()
            .and_then(|b| b.contents().ok())
            .map(|bytes| DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(bytes)),
                ..Default::default()
            });
        r.action = Some(route::Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body,
            ..Default::default()
        }));
    } else if !rule.route.is_empty() {
        r.action = Some(route::Action::Route(route_action(ctx, vs, rule, &mut r)));
    } else {
        return None;
    }
    apply_route_headers(&mut r, rule.headers.as_ref());
    if let Some(f) = rule.fault.as_ref().and_then(fault) {
        per_filter.insert(FAULT_FILTER.to_string(), any(&f));
    }
    if let Some(c) = &rule.cors_policy {
        per_filter.insert(CORS_FILTER.to_string(), any(&cors(c)));
    }
    r.typed_per_filter_config = per_filter;
    if let Some(first) = rule.route.first() {
        let (cluster, host) = destination_cluster(ctx, vs.namespace(), &first.destination);
        let port = crate::names::parse_outbound_cluster(&cluster)
            .map(|(p, _, _)| p)
            .unwrap_or(ctx.port);
        apply_rate_limit(ctx, &mut r, &host, port);
    }
    Some(r)
}

fn route_action(
    ctx: &RouteContext<'_>,
    vs: &VsRef,
    rule: &HttpRoute,
    r: &mut Route,
) -> RouteAction {
    let vs_ns = vs.namespace();
    let mut action = timed_action(rule.timeout.map(|t| duration(t.get())));
    if let Some(rw) = &rule.rewrite {
        if let Some(re) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: re.pattern.clone(),
                    ..Default::default()
                }),
                substitution: re.rewrite.clone(),
            });
        } else if !rw.uri.is_empty() {
            action.prefix_rewrite = rw.uri.clone();
        }
        if !rw.authority.is_empty() {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(rw.authority.clone()),
            );
        }
    }
    let mut mirrors: Vec<(&Destination, Option<f64>)> = Vec::new();
    if let Some(m) = &rule.mirror {
        mirrors.push((m, rule.effective_mirror_percentage()));
    }
    for m in &rule.mirrors {
        mirrors.push((&m.destination, m.percentage.as_ref().map(|p| p.value)));
    }
    for (d, pct) in mirrors {
        let pct = pct.unwrap_or(100.0);
        if pct <= 0.0 {
            continue;
        }
        let (cluster, _) = destination_cluster(ctx, vs_ns, d);
        action
            .request_mirror_policies
            .push(route_action::RequestMirrorPolicy {
                cluster,
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(fractional(pct)),
                    ..Default::default()
                }),
                trace_sampled: Some(BoolValue { value: false }),
                ..Default::default()
            });
    }
    let mut hashed = false;
    if let [only] = rule.route.as_slice() {
        let (cluster, host) = destination_cluster(ctx, vs_ns, &only.destination);
        action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(cluster));
        if let Some(h) = &only.headers {
            apply_route_headers(r, Some(h));
        }
        if let Some(hp) = hash_policy(
            ctx,
            &host,
            &only.destination,
            only.destination
                .port_number()
                .map(|p| p as u16)
                .unwrap_or(ctx.port),
        ) {
            action.hash_policy.push(hp);
            hashed = true;
        }
    } else {
        let clusters: Vec<weighted_cluster::ClusterWeight> = rule
            .route
            .iter()
            // A zero weight takes no traffic; Istio leaves it out when others remain.
            .filter(|d| d.weight > 0)
            .map(|d| {
                let (name, _) = destination_cluster(ctx, vs_ns, &d.destination);
                let mut cw = weighted_cluster::ClusterWeight {
                    name,
                    weight: u32_value(d.weight as u32),
                    ..Default::default()
                };
                if let Some(h) = &d.headers {
                    let (add, rm) = header_ops(h.request.as_ref());
                    cw.request_headers_to_add = add;
                    cw.request_headers_to_remove = rm;
                    let (add, rm) = header_ops(h.response.as_ref());
                    cw.response_headers_to_add = add;
                    cw.response_headers_to_remove = rm;
                }
                cw
            })
            .collect();
        action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters,
                ..Default::default()
            },
        ));
    }
    action.retry_policy = retry_policy(rule.retries.as_ref(), hashed);
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_with_codes() {
        let r = retry_policy(
            Some(&HttpRetry {
                attempts: 3,
                retry_on: "5xx, 503,gateway-error".into(),
                ..Default::default()
            }),
            false,
        )
        .expect("retries");
        assert_eq!(r.retry_on, "5xx,gateway-error,retriable-status-codes");
        assert_eq!(r.retriable_status_codes, vec![503]);
        assert_eq!(r.num_retries.map(|n| n.value), Some(3));
        assert!(
            retry_policy(Some(&HttpRetry::default()), false).is_none(),
            "attempts 0 disables"
        );
        assert!(retry_policy(None, true).is_some_and(|r| r.retry_host_predicate.is_empty()));
    }

    #[test]
    fn percentages() {
        assert_eq!(fractional(12.5).numerator, 125_000);
        assert_eq!(fractional(100.0).numerator, 1_000_000);
        assert_eq!(percent(None, 0).numerator, 1_000_000);
        assert_eq!(percent(None, 30).numerator, 300_000);
    }
}
