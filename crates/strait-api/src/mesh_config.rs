//! Mesh-wide settings, in the shape of Istio's `MeshConfig` (the `mesh` key of the `istio`
//! ConfigMap in the root namespace). Only the fields strait acts on are typed; the rest are
//! accepted and ignored.

use serde::{Deserialize, Serialize};

use crate::Duration;

/// Mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// The namespace whose config applies mesh-wide (default `istio-system`).
    pub root_namespace: String,
    /// What sidecars do with traffic to hosts not in the registry.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Where Envoy writes access logs (`/dev/stdout`); empty disables them.
    pub access_log_file: String,
    /// TEXT or JSON.
    pub access_log_encoding: AccessLogEncoding,
    /// A custom access log format; empty uses the default.
    pub access_log_format: String,
    /// Connect timeout for upstream connections when no DestinationRule sets one.
    pub connect_timeout: Option<Duration>,
    /// Defaults for every proxy.
    pub default_config: ProxyConfig,
    /// Mesh-wide locality load balancing settings, used where a DestinationRule sets none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<crate::istio::LocalityLoadBalancerSetting>,
    /// How much a locality may lose before traffic spills to the next priority: Envoy's
    /// overprovisioning factor (strait's; 1.4 when unset, as in Envoy and Istio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<f64>,
    /// Gateways select gateway proxies in their own namespace only (strait's spelling of
    /// Istio's `PILOT_SCOPE_GATEWAY_TO_NAMESPACE`; off by default, as in Istio).
    pub scope_gateway_to_namespace: bool,
    /// Gateway proxies receive clusters and endpoints only for the hosts their Gateways'
    /// VirtualServices route to (strait's; on when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_gateway_clusters: Option<bool>,
    /// Namespaces a Service is visible to when it says nothing (`*` by default).
    pub default_service_export_to: Vec<String>,
    /// Same for VirtualServices.
    pub default_virtual_service_export_to: Vec<String>,
    /// Same for DestinationRules.
    pub default_destination_rule_export_to: Vec<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_string(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            access_log_file: String::new(),
            access_log_encoding: AccessLogEncoding::Text,
            access_log_format: String::new(),
            connect_timeout: None,
            default_config: ProxyConfig::default(),
            locality_lb_setting: None,
            overprovisioning_factor: None,
            scope_gateway_to_namespace: false,
            scope_gateway_clusters: None,
            default_service_export_to: Vec::new(),
            default_virtual_service_export_to: Vec::new(),
            default_destination_rule_export_to: Vec::new(),
        }
    }
}

/// Outbound traffic policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    /// ALLOW_ANY (default) or REGISTRY_ONLY.
    pub mode: OutboundMode,
}

/// What to do with traffic to unknown destinations.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Pass it through to its original destination.
    #[default]
    AllowAny,
    /// Refuse it.
    RegistryOnly,
}

/// Access log encoding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// Plain text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Per-proxy defaults (`defaultConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    /// The control plane address injected proxies connect to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    /// How long a draining listener keeps serving in-flight requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_duration: Option<Duration>,
    /// How long Envoy keeps running after the pod is asked to stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_drain_duration: Option<Duration>,
    /// Start Envoy before the application and hold the application until Envoy is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    /// Envoy worker threads; 0 means one per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Extra metadata added to every proxy's node.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub proxy_metadata: std::collections::BTreeMap<String, String>,
    /// Compute resources of injected Envoy containers (strait's; Istio keeps them in its
    /// Helm values as `global.proxy.resources`). The `sidecar.istio.io/proxyCPU`,
    /// `proxyMemory`, `proxyCPULimit` and `proxyMemoryLimit` annotations override them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ProxyResources>,
}

/// Requests and limits of the injected Envoy container, as in a Kubernetes container's
/// `resources` (`cpu: 100m`, `memory: 128Mi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyResources {
    /// What the scheduler reserves, by resource name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub requests: std::collections::BTreeMap<String, Quantity>,
    /// The most the container may use, by resource name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub limits: std::collections::BTreeMap<String, Quantity>,
}

/// A Kubernetes resource quantity as written in a manifest: `100m`, `1Gi`, or a bare number
/// (`cpu: 1`), kept as its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Quantity(match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::I(i) => i.to_string(),
            Text::F(f) => f.to_string(),
        }))
    }
}

impl MeshConfig {
    /// Parses the YAML text of a `mesh` ConfigMap key. Unknown fields are ignored, as Istio
    /// ignores fields it does not act on.
    pub fn from_json_value(v: serde_json::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}
