//! One parsed manifest: its kind, its identity, and its typed content.

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::istio;
use crate::validate::{Issue, Issues, Severity};

/// The kinds strait understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    /// v1 Namespace.
    Namespace,
    /// v1 Node.
    Node,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// v1 Endpoints.
    Endpoints,
    /// v1 Pod.
    Pod,
    /// v1 Secret.
    Secret,
    /// v1 ConfigMap.
    ConfigMap,
    /// networking.istio.io VirtualService.
    VirtualService,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// networking.istio.io Gateway.
    Gateway,
    /// networking.istio.io ServiceEntry.
    ServiceEntry,
    /// networking.istio.io Sidecar.
    Sidecar,
    /// policy.strait.io LocalRateLimit.
    LocalRateLimit,
}

/// The API group of the Istio networking kinds.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// The versions of `networking.istio.io` that strait accepts, all with the same schema.
pub const ISTIO_NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

impl Kind {
    /// Every kind, in the order a consistent initial load applies them.
    pub const ALL: [Kind; 14] = [
        Kind::Namespace,
        Kind::Node,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Service,
        Kind::Pod,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::ServiceEntry,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::LocalRateLimit,
    ];

    /// Recognises a manifest's `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let k = match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Node") => Kind::Node,
            ("", "Service") => Kind::Service,
            ("", "Endpoints") => Kind::Endpoints,
            ("", "Pod") => Kind::Pod,
            ("", "Secret") => Kind::Secret,
            ("", "ConfigMap") => Kind::ConfigMap,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            (ISTIO_NETWORKING_GROUP, "VirtualService") => Kind::VirtualService,
            (ISTIO_NETWORKING_GROUP, "DestinationRule") => Kind::DestinationRule,
            (ISTIO_NETWORKING_GROUP, "Gateway") => Kind::Gateway,
            (ISTIO_NETWORKING_GROUP, "ServiceEntry") => Kind::ServiceEntry,
            (ISTIO_NETWORKING_GROUP, "Sidecar") => Kind::Sidecar,
            (crate::policy::POLICY_GROUP, "LocalRateLimit") => Kind::LocalRateLimit,
            _ => return None,
        };
        let version_ok = match k.group() {
            "" | "discovery.k8s.io" => version == "v1",
            crate::policy::POLICY_GROUP => crate::policy::POLICY_VERSIONS.contains(&version),
            _ => ISTIO_NETWORKING_VERSIONS.contains(&version),
        };
        version_ok.then_some(k)
    }

    /// The kind's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::LocalRateLimit => "LocalRateLimit",
        }
    }

    /// The API group (empty for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::Sidecar => ISTIO_NETWORKING_GROUP,
            Kind::LocalRateLimit => crate::policy::POLICY_GROUP,
            _ => "",
        }
    }

    /// False for cluster-scoped kinds (Namespace, Node).
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// True for the Istio networking kinds.
    pub fn is_istio(self) -> bool {
        self.group() == ISTIO_NETWORKING_GROUP
    }

    /// True for routing config kinds (Istio's and strait's own): they share a wrapper type,
    /// the `istio.io/rev` scoping rules, and push handling.
    pub fn is_config(self) -> bool {
        self.is_istio() || self.group() == crate::policy::POLICY_GROUP
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an object: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A typed object of one of the kinds strait understands.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// v1 Namespace.
    Namespace(Namespace),
    /// v1 Node.
    Node(Node),
    /// v1 Service.
    Service(Service),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// v1 Endpoints.
    Endpoints(Endpoints),
    /// v1 Pod.
    Pod(Pod),
    /// v1 Secret.
    Secret(Secret),
    /// v1 ConfigMap.
    ConfigMap(ConfigMap),
    /// networking.istio.io VirtualService.
    VirtualService(istio::VirtualService),
    /// networking.istio.io DestinationRule.
    DestinationRule(istio::DestinationRule),
    /// networking.istio.io Gateway.
    Gateway(istio::Gateway),
    /// networking.istio.io ServiceEntry.
    ServiceEntry(istio::ServiceEntry),
    /// networking.istio.io Sidecar.
    Sidecar(istio::Sidecar),
    /// policy.strait.io LocalRateLimit.
    LocalRateLimit(crate::policy::LocalRateLimit),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Pod(_) => Kind::Pod,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::Gateway(_) => Kind::Gateway,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::Sidecar(_) => Kind::Sidecar,
            Object::LocalRateLimit(_) => Kind::LocalRateLimit,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::Sidecar(o) => &o.metadata,
            Object::LocalRateLimit(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::ServiceEntry(o) => &mut o.metadata,
            Object::Sidecar(o) => &mut o.metadata,
            Object::LocalRateLimit(o) => &mut o.metadata,
        }
    }

    /// The object's identity.
    pub fn reference(&self) -> ObjectRef {
        let m = self.metadata();
        let kind = self.kind();
        ObjectRef {
            kind,
            namespace: if kind.is_namespaced() {
                m.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }

    /// Checks the object's content. Errors mean the object must not be used; warnings mean it
    /// is used but probably not what the author meant.
    pub fn validate(&self) -> Issues {
        let mut issues = Issues::new();
        let m = self.metadata();
        match m.name.as_deref() {
            None | Some("") => issues.error("metadata.name", "is required"),
            Some(n) if !crate::validate::is_dns1123_subdomain(n) => issues.error(
                "metadata.name",
                format!("{n:?} is not a valid name (lower-case DNS-1123 subdomain)"),
            ),
            Some(_) => {}
        }
        for (k, v) in m.labels.iter().flatten() {
            if !crate::validate::is_label_key(k) {
                issues.error(format!("metadata.labels[{k}]"), "invalid label key");
            }
            if !crate::validate::is_label_value(v) {
                issues.error(
                    format!("metadata.labels[{k}]"),
                    format!("invalid label value {v:?}"),
                );
            }
        }
        match self {
            Object::Service(s) => validate_service(s, &mut issues),
            Object::VirtualService(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            Object::DestinationRule(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            Object::Gateway(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            Object::ServiceEntry(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            Object::Sidecar(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            Object::LocalRateLimit(o) => istio::Spec::validate(&o.spec, m, &mut issues),
            _ => {}
        }
        issues
    }
}

fn validate_service(s: &Service, issues: &mut Issues) {
    let Some(spec) = &s.spec else { return };
    let mut seen_names = std::collections::BTreeSet::new();
    let ports = spec.ports.as_deref().unwrap_or_default();
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            issues.error(
                format!("spec.ports[{i}].port"),
                format!("{} is not a port number (1-65535)", p.port),
            );
        }
        if ports.len() > 1 && p.name.as_deref().unwrap_or_default().is_empty() {
            issues.error(
                format!("spec.ports[{i}].name"),
                "is required when a Service has more than one port",
            );
        }
        if let Some(n) = &p.name
            && !n.is_empty()
            && !seen_names.insert(n.as_str())
        {
            issues.error(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {n:?}"),
            );
        }
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) =
            &p.target_port
            && !(1..=65535).contains(t)
        {
            issues.error(
                format!("spec.ports[{i}].targetPort"),
                format!("{t} is not a port number (1-65535)"),
            );
        }
    }
}

/// An object parsed from a manifest, with the warnings its parsing raised (unknown fields).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The object.
    pub object: Object,
    /// Findings from parsing (for example fields strait does not know and ignores).
    pub warnings: Vec<Issue>,
}

/// Why a manifest could not become an [`Object`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The document is not a mapping with `apiVersion` and `kind`.
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(String),
    /// A kind strait does not handle; sources skip these quietly.
    #[error("unsupported kind {kind} ({api_version})")]
    UnsupportedKind {
        /// The manifest's apiVersion.
        api_version: String,
        /// The manifest's kind.
        kind: String,
    },
    /// A field has the wrong shape or value.
    #[error("{kind} {name}: {field}: {reason}")]
    Field {
        /// The object's kind.
        kind: Kind,
        /// namespace/name, as far as known.
        name: String,
        /// Path of the field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Turns one manifest document into a typed object. `default_namespace` is used when a
/// namespaced object names none (as `kubectl apply` does).
pub fn parse_object(
    mut value: serde_json::Value,
    default_namespace: &str,
) -> Result<Parsed, ParseError> {
    strip_nulls(&mut value);
    let obj = value
        .as_object()
        .ok_or_else(|| ParseError::NotAnObject("document is not a mapping".into()))?;
    let api_version = obj
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ParseError::NotAnObject("missing apiVersion".into()))?
        .to_string();
    let kind_str = obj
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ParseError::NotAnObject("missing kind".into()))?
        .to_string();
    let Some(kind) = Kind::from_type(&api_version, &kind_str) else {
        return Err(ParseError::UnsupportedKind {
            api_version,
            kind: kind_str,
        });
    };
    let display_name = {
        let meta = obj.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>");
        match meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
        {
            Some(ns) if kind.is_namespaced() => format!("{ns}/{name}"),
            _ if kind.is_namespaced() => format!("{default_namespace}/{name}"),
            _ => name.to_string(),
        }
    };
    let mut warnings = Vec::new();
    let mut object = match kind {
        Kind::Namespace => Object::Namespace(typed(kind, &display_name, value, &mut warnings)?),
        Kind::Node => Object::Node(typed(kind, &display_name, value, &mut warnings)?),
        Kind::Service => Object::Service(typed(kind, &display_name, value, &mut warnings)?),
        Kind::EndpointSlice => {
            Object::EndpointSlice(typed(kind, &display_name, value, &mut warnings)?)
        }
        Kind::Endpoints => Object::Endpoints(typed(kind, &display_name, value, &mut warnings)?),
        Kind::Pod => Object::Pod(typed(kind, &display_name, value, &mut warnings)?),
        Kind::Secret => Object::Secret(typed(kind, &display_name, value, &mut warnings)?),
        Kind::ConfigMap => Object::ConfigMap(typed(kind, &display_name, value, &mut warnings)?),
        Kind::VirtualService => {
            Object::VirtualService(typed(kind, &display_name, value, &mut warnings)?)
        }
        Kind::DestinationRule => {
            Object::DestinationRule(typed(kind, &display_name, value, &mut warnings)?)
        }
        Kind::Gateway => Object::Gateway(typed(kind, &display_name, value, &mut warnings)?),
        Kind::ServiceEntry => {
            Object::ServiceEntry(typed(kind, &display_name, value, &mut warnings)?)
        }
        Kind::Sidecar => Object::Sidecar(typed(kind, &display_name, value, &mut warnings)?),
        Kind::LocalRateLimit => {
            Object::LocalRateLimit(typed(kind, &display_name, value, &mut warnings)?)
        }
    };
    let meta = object.metadata_mut();
    if kind.is_namespaced() {
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some(default_namespace.to_string());
        }
    } else {
        meta.namespace = None;
    }
    Ok(Parsed { object, warnings })
}

/// Rewrites serde_ignored's `spec.http.0.match.?.x` into the manifest spelling
/// `spec.http[0].match.x`.
fn normalize_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for seg in p.split('.') {
        if seg == "?" || seg.is_empty() {
            continue;
        }
        if !out.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Drops `null` values from maps: the API server treats `field: null` as an absent field, and
/// so do manifests read from files.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Deserialises with the failing field's path in the error, and collects the paths of fields
/// that were ignored (Istio kinds only: k8s-openapi types drop unknown fields silently).
fn typed<T: DeserializeOwned>(
    kind: Kind,
    name: &str,
    value: serde_json::Value,
    warnings: &mut Vec<Issue>,
) -> Result<T, ParseError> {
    let mut ignored = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| ignored.push(path.to_string());
    let result = {
        let de = serde_ignored::Deserializer::new(&value, &mut on_ignored);
        serde_path_to_error::deserialize(de)
    };
    let out = result.map_err(|e| {
        let field = e.path().to_string();
        ParseError::Field {
            kind,
            name: name.to_string(),
            field: if field == "." { String::new() } else { field },
            reason: e.into_inner().to_string(),
        }
    })?;
    warnings.extend(ignored.into_iter().map(|field| Issue {
        severity: Severity::Warning,
        field: normalize_path(&field),
        message: "unknown field, ignored".to_string(),
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> serde_json::Value {
        serde_yaml_ng::from_str(s).expect("test yaml")
    }

    #[test]
    fn kinds_by_api_version() {
        assert_eq!(Kind::from_type("v1", "Service"), Some(Kind::Service));
        assert_eq!(
            Kind::from_type("networking.istio.io/v1alpha3", "VirtualService"),
            Some(Kind::VirtualService)
        );
        assert_eq!(
            Kind::from_type("networking.istio.io/v1", "Gateway"),
            Some(Kind::Gateway)
        );
        assert_eq!(Kind::from_type("networking.istio.io/v2", "Gateway"), None);
        assert_eq!(Kind::from_type("apps/v1", "Deployment"), None);
    }

    #[test]
    fn service_defaults_namespace() {
        let p = parse_object(
            yaml("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n"),
            "default",
        )
        .expect("parses");
        assert_eq!(
            p.object.reference(),
            ObjectRef::new(Kind::Service, "default", "web")
        );
        assert!(!p.object.validate().has_errors());
    }

    #[test]
    fn field_errors_name_the_field() {
        let err = parse_object(
            yaml("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: eighty}]\n"),
            "default",
        )
        .expect_err("bad port");
        match err {
            ParseError::Field {
                kind, name, field, ..
            } => {
                assert_eq!(kind, Kind::Service);
                assert_eq!(name, "shop/web");
                assert_eq!(field, "spec.ports[0].port");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn service_port_validation() {
        let p = parse_object(
            yaml("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, name: http}, {port: 70000, name: http}]\n"),
            "default",
        )
        .expect("parses");
        let issues = p.object.validate();
        let fields: Vec<_> = issues.errors().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports[1].port", "spec.ports[1].name"]);
    }

    #[test]
    fn unknown_fields_are_warnings_with_manifest_paths() {
        let p = parse_object(
            yaml("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: null}\n      wieght: 5\n"),
            "default",
        )
        .expect("parses");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert_eq!(p.warnings[0].field, "spec.http[0].route[0].wieght");
        assert_eq!(p.warnings[0].severity, Severity::Warning);
    }

    #[test]
    fn unsupported_kinds_are_reported_as_such() {
        let err = parse_object(
            yaml("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"),
            "default",
        )
        .expect_err("unsupported");
        assert!(matches!(err, ParseError::UnsupportedKind { .. }));
    }
}
