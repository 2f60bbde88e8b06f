//! The CustomResourceDefinitions of the config kinds, generated from the Rust types strait
//! parses them with (`strait_api::istio`, `strait_api::policy`), so that the API server itself
//! refuses a malformed object, naming the field, before strait ever sees it.
//!
//! Every `networking.istio.io` version Istio serves (v1, v1beta1, v1alpha3) is served with the
//! same schema, v1 is stored; the status subresource and the printer columns are Istio's.
//! strait reads objects created through Istio's own CRDs just as well: it depends on nothing
//! only these add. strait's own `policy.strait.io` kinds get theirs the same way.

use std::path::{Path, PathBuf};

use anyhow::Context;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use strait_api::istio::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
};
use strait_api::object::{ISTIO_NETWORKING_GROUP, ISTIO_NETWORKING_VERSIONS};
use strait_api::policy::{LocalRateLimitSpec, POLICY_GROUP, POLICY_VERSIONS};

use crate::openapi;

/// A printer column (`kubectl get`).
struct Column {
    name: &'static str,
    json_path: &'static str,
    type_: &'static str,
    description: &'static str,
}

const AGE: Column = Column {
    name: "Age",
    json_path: ".metadata.creationTimestamp",
    type_: "date",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.",
};

/// One kind's CRD.
pub struct CrdKind {
    /// The API group.
    pub group: &'static str,
    /// The versions served (the first is stored), all with the same schema.
    pub versions: &'static [&'static str],
    categories: &'static [&'static str],
    /// The kind.
    pub kind: &'static str,
    /// Its plural resource name.
    pub plural: &'static str,
    short_names: &'static [&'static str],
    description: &'static str,
    columns: &'static [Column],
    spec: fn() -> anyhow::Result<Value>,
}

impl CrdKind {
    /// `<plural>.<group>`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The file it is written to under `crds/`.
    pub fn file_name(&self) -> String {
        format!("{}.yaml", self.name())
    }
}

fn spec_schema<T: JsonSchema>() -> anyhow::Result<Value> {
    let root = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(root).context("schema as JSON")
}

const ISTIO_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];

/// Every kind, in the order the files are listed.
pub const KINDS: &[CrdKind] = &[
    CrdKind {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        categories: ISTIO_CATEGORIES,
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        description: "Policies that apply to traffic for a service after routing has occurred: load balancing, connection pools, outlier detection, TLS, subsets.",
        columns: &[
            Column {
                name: "Host",
                json_path: ".spec.host",
                type_: "string",
                description: "The name of a service from the service registry",
            },
            AGE,
        ],
        spec: spec_schema::<DestinationRuleSpec>,
    },
    CrdKind {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        categories: ISTIO_CATEGORIES,
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        description: "A load balancer at the edge of the mesh receiving incoming or outgoing HTTP/TCP connections: its ports, protocols, hosts and TLS.",
        columns: &[],
        spec: spec_schema::<GatewaySpec>,
    },
    CrdKind {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        categories: ISTIO_CATEGORIES,
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        description: "Adds entries (hosts, addresses, ports, endpoints) to the service registry, for services outside the mesh or not known to Kubernetes.",
        columns: &[
            Column {
                name: "Hosts",
                json_path: ".spec.hosts",
                type_: "string",
                description: "The hosts associated with the ServiceEntry",
            },
            Column {
                name: "Location",
                json_path: ".spec.location",
                type_: "string",
                description: "Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)",
            },
            Column {
                name: "Resolution",
                json_path: ".spec.resolution",
                type_: "string",
                description: "Service resolution mode for the hosts (NONE, STATIC, or DNS)",
            },
            AGE,
        ],
        spec: spec_schema::<ServiceEntrySpec>,
    },
    CrdKind {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        categories: ISTIO_CATEGORIES,
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        description: "The configuration of the sidecar proxies of selected workloads: the ports and hosts they listen on and can reach.",
        columns: &[],
        spec: spec_schema::<SidecarSpec>,
    },
    CrdKind {
        group: ISTIO_NETWORKING_GROUP,
        versions: ISTIO_NETWORKING_VERSIONS,
        categories: ISTIO_CATEGORIES,
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        description: "Routing rules for traffic to a set of hosts: matches, destinations, weights, rewrites, retries, timeouts, faults.",
        columns: &[
            Column {
                name: "Gateways",
                json_path: ".spec.gateways",
                type_: "string",
                description: "The names of gateways and sidecars that should apply these routes",
            },
            Column {
                name: "Hosts",
                json_path: ".spec.hosts",
                type_: "string",
                description: "The destination hosts to which traffic is being sent",
            },
            AGE,
        ],
        spec: spec_schema::<VirtualServiceSpec>,
    },
    CrdKind {
        group: POLICY_GROUP,
        versions: POLICY_VERSIONS,
        categories: &["strait-io"],
        kind: "LocalRateLimit",
        plural: "localratelimits",
        short_names: &[],
        description: "A local (per proxy) rate limit for requests to one destination host: 429 above the limit.",
        columns: &[
            Column {
                name: "Host",
                json_path: ".spec.host",
                type_: "string",
                description: "The destination host the limit applies to",
            },
            AGE,
        ],
        spec: spec_schema::<LocalRateLimitSpec>,
    },
];

/// The `openAPIV3Schema` of a kind (the same in every version).
pub fn schema(k: &CrdKind) -> anyhow::Result<Value> {
    let spec = openapi::structural(&(k.spec)()?)
        .with_context(|| format!("{}: the spec type cannot be a structural schema", k.kind))?;
    let schema = json!({
        "type": "object",
        "description": k.description,
        "properties": {
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let problems = openapi::structural_violations(&schema);
    anyhow::ensure!(
        problems.is_empty(),
        "{}: not a structural schema:\n{}",
        k.kind,
        problems.join("\n")
    );
    Ok(schema)
}

/// A kind's CRD.
pub fn crd(k: &CrdKind) -> anyhow::Result<Value> {
    let schema = schema(k)?;
    let columns: Vec<Value> = k
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "jsonPath": c.json_path, "type": c.type_, "description": c.description})
        })
        .collect();
    let versions: Vec<Value> = k
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut version = json!({
                "name": v,
                "served": true,
                "storage": i == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": schema},
            });
            if !columns.is_empty() {
                version["additionalPrinterColumns"] = Value::Array(columns.clone());
            }
            version
        })
        .collect();
    let mut names = json!({
        "kind": k.kind,
        "listKind": format!("{}List", k.kind),
        "plural": k.plural,
        "singular": k.kind.to_ascii_lowercase(),
        "categories": k.categories,
    });
    if !k.short_names.is_empty() {
        names["shortNames"] = json!(k.short_names);
    }
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": k.name(),
            "labels": {"app.kubernetes.io/part-of": "strait"},
        },
        "spec": {
            "group": k.group,
            "names": names,
            "scope": "Namespaced",
            "versions": versions,
        },
    }))
}

/// Rebuilds every map with its keys in order, so that the output does not depend on how
/// `serde_json` keeps maps.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, sorted(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

const HEADER: &str = "# Generated by `cargo xtask codegen` from the Rust types in crates/strait-api; do not edit.\n# Install with `kubectl apply -f crds/`.\n";

/// Every CRD file: name and content.
pub fn generate() -> anyhow::Result<Vec<(String, String)>> {
    KINDS
        .iter()
        .map(|k| {
            let yaml = serde_yaml_ng::to_string(&sorted(crd(k)?)).context("CRD as YAML")?;
            Ok((k.file_name(), format!("{HEADER}{yaml}")))
        })
        .collect()
}

/// Every directory the CRDs are written to, relative to the repository and absolute: `crds/`
/// and the Helm chart's `charts/strait/crds/` (Helm installs those before the templates).
pub fn dirs() -> Vec<(&'static str, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["crds", "charts/strait/crds"]
        .into_iter()
        .map(|d| (d, root.join(d)))
        .collect()
}

/// Files in `dir` that differ from what would be generated (missing, changed, or left over).
pub fn stale(dir: &Path) -> anyhow::Result<Vec<String>> {
    let generated = generate()?;
    let mut out = Vec::new();
    for (name, text) in &generated {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(current) if current == *text => {}
            Ok(_) => out.push(format!("{name} differs")),
            Err(_) => out.push(format!("{name} is missing")),
        }
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !generated.iter().any(|(n, _)| *n == name) {
            out.push(format!("{name} is not generated"));
        }
    }
    Ok(out)
}

/// Writes the CRDs into `dir`, removing YAML files no kind generates.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let generated = generate()?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !generated.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, text) in generated {
        let path = dir.join(&name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use strait_api::parse_object;

    use super::*;

    fn kind(name: &str) -> &'static CrdKind {
        KINDS
            .iter()
            .find(|k| k.kind == name)
            .unwrap_or_else(|| panic!("no CRD for {name}"))
    }

    #[test]
    fn every_schema_is_structural() {
        for k in KINDS {
            let crd = crd(k).unwrap_or_else(|e| panic!("{e:#}"));
            for v in crd["spec"]["versions"].as_array().expect("versions") {
                let s = &v["schema"]["openAPIV3Schema"];
                assert_eq!(
                    openapi::structural_violations(s),
                    Vec::<String>::new(),
                    "{}",
                    k.kind
                );
                let text = s.to_string();
                for forbidden in [
                    "$ref",
                    "$defs",
                    "anyOf",
                    "oneOf",
                    "allOf",
                    "\"const\"",
                    "\"default\"",
                    "uint32",
                    "\"null\"",
                ] {
                    assert!(!text.contains(forbidden), "{} has {forbidden}", k.kind);
                }
            }
        }
    }

    #[test]
    fn versions_subresources_and_columns() {
        let crd = crd(kind("VirtualService")).expect("crd");
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        let names: Vec<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, ["v1", "v1beta1", "v1alpha3"]);
        let stored: Vec<bool> = versions.iter().map(|v| v["storage"] == true).collect();
        assert_eq!(stored, [true, false, false]);
        for v in versions {
            assert_eq!(v["served"], true);
            assert_eq!(v["subresources"], json!({"status": {}}));
            assert_eq!(
                v["schema"], versions[0]["schema"],
                "one schema for every version"
            );
            let cols: Vec<&str> = v["additionalPrinterColumns"]
                .as_array()
                .expect("columns")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            assert_eq!(cols, ["Gateways", "Hosts", "Age"]);
        }
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["vs"]));
        let status = &versions[0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(status["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn schemas_carry_enums_required_fields_and_formats() {
        let dr = schema(kind("DestinationRule")).expect("schema");
        let simple = dr
            .pointer("/properties/spec/properties/trafficPolicy/properties/loadBalancer/properties/simple")
            .expect("simple");
        assert!(
            simple["enum"]
                .as_array()
                .is_some_and(|e| e.contains(&json!("ROUND_ROBIN")))
        );
        let vs = schema(kind("VirtualService")).expect("schema");
        let dest = vs
            .pointer("/properties/spec/properties/http/items/properties/route/items/properties/destination")
            .expect("destination");
        assert_eq!(dest["required"], json!(["host"]));
        let number = dest
            .pointer("/properties/port/properties/number")
            .expect("port number");
        assert_eq!(number["type"], "integer");
        assert_eq!(number["maximum"], json!(u32::MAX));
        let timeout = vs
            .pointer("/properties/spec/properties/http/items/properties/timeout")
            .expect("timeout");
        assert!(timeout["pattern"].is_string());
    }

    /// Every Istio object in the repository's example and test manifests that strait accepts,
    /// the API server accepts too (the schema is never stricter than strait).
    #[test]
    fn example_manifests_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        collect_yaml(&root.join("examples"), &mut files);
        collect_yaml(&root.join("crates/strait-translate/testdata"), &mut files);
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
                    continue;
                };
                let Some(k) = KINDS.iter().find(|k| v["kind"] == k.kind) else {
                    continue;
                };
                let accepted = parse_object(v.clone(), "default")
                    .is_ok_and(|p| !p.object.validate().has_errors());
                if !accepted {
                    continue;
                }
                let errors = openapi::validate(&schema(k).expect("schema"), &v);
                assert!(
                    errors.is_empty(),
                    "{} ({}): {errors:?}",
                    file.display(),
                    v["metadata"]["name"]
                );
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} Istio objects found to check");
    }

    fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                collect_yaml(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }

    fn refused(kind_name: &str, obj: Value, field: &str) {
        let k = kind(kind_name);
        // strait refuses it too.
        let strait_refuses = match parse_object(obj.clone(), "default") {
            Ok(p) => p.object.validate().has_errors(),
            Err(_) => true,
        };
        assert!(strait_refuses, "strait accepts {obj}");
        let errors = openapi::validate(&schema(k).expect("schema"), &obj);
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "no complaint about {field}: {errors:?}"
        );
    }

    #[test]
    fn malformed_objects_are_refused_naming_the_field() {
        refused(
            "VirtualService",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"},
                   "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"subset": "v1"}}]}]}}),
            "spec.http[0].route[0].destination.host: Required value",
        );
        refused(
            "VirtualService",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"},
                   "spec": {"hosts": ["r"], "http": [{"timeout": "ten seconds", "route": [{"destination": {"host": "r"}}]}]}}),
            "spec.http[0].timeout: Invalid value",
        );
        refused(
            "DestinationRule",
            json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule", "metadata": {"name": "r"},
                   "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}}),
            "spec.trafficPolicy.loadBalancer.simple: Unsupported value",
        );
        refused(
            "Gateway",
            json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway", "metadata": {"name": "g"},
                   "spec": {"servers": [{"port": {"number": "eighty", "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
            "spec.servers[0].port.number: Invalid value",
        );
        refused(
            "ServiceEntry",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
                   "spec": {"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                            "resolution": "SOMETIMES"}}),
            "spec.resolution: Unsupported value",
        );
    }

    #[test]
    fn checked_in_crds_are_current() {
        for (name, dir) in dirs() {
            let stale = stale(&dir).expect("generate");
            assert!(
                stale.is_empty(),
                "{name}/ is stale ({}): run `cargo xtask codegen`",
                stale.join(", ")
            );
        }
    }
}
