//! Reading Envoy's `Node` into the model's [`ProxyNode`].

use envoy_types::pb::envoy::config::core::v3::{Node, node};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value};
use serde_json::{Map, Value};
use strait_model::{EnvoyVersion, Locality, ProxyNode, ProxyNodeError};

/// A protobuf `Struct` as JSON.
pub fn struct_to_json(s: &Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(value::Kind::NullValue(_)) => Value::Null,
        Some(value::Kind::BoolValue(b)) => Value::Bool(*b),
        Some(value::Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(value::Kind::StringValue(s)) => Value::String(s.clone()),
        Some(value::Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(value::Kind::ListValue(l)) => {
            Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

/// Envoy's version from its node.
pub fn envoy_version(n: &Node) -> Option<EnvoyVersion> {
    match &n.user_agent_version_type {
        Some(node::UserAgentVersionType::UserAgentBuildVersion(b)) => {
            b.version.as_ref().map(|v| EnvoyVersion {
                major: v.major_number,
                minor: v.minor_number,
                patch: v.patch,
            })
        }
        Some(node::UserAgentVersionType::UserAgentVersion(s)) => {
            let mut it = s.split(['.', '-']).map(|p| p.parse::<u32>().ok());
            Some(EnvoyVersion {
                major: it.next()??,
                minor: it.next()??,
                patch: it.next().flatten().unwrap_or(0),
            })
        }
        None => None,
    }
}

/// Reads a node.
pub fn proxy_node(n: &Node) -> Result<ProxyNode, ProxyNodeError> {
    let metadata = n.metadata.as_ref().map(struct_to_json).unwrap_or_default();
    let locality = n.locality.as_ref().map(|l| Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.sub_zone.clone(),
    });
    ProxyNode::parse(&n.id, &metadata, locality, envoy_version(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;

    #[test]
    fn reads_node() {
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "NAMESPACE".to_string(),
            PbValue {
                kind: Some(value::Kind::StringValue("shop".into())),
            },
        );
        let n = Node {
            id: "sidecar~10.0.0.1~web-0.shop~shop.svc.cluster.local".into(),
            metadata: Some(Struct { fields }),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 40,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        };
        let p = proxy_node(&n).expect("valid");
        assert_eq!(p.namespace.as_deref(), Some("shop"));
        assert_eq!(
            p.envoy_version.map(|v| v.to_string()).as_deref(),
            Some("1.40.0")
        );
    }
}
