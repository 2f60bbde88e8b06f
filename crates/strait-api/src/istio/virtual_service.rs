//! Placeholder, replaced by the full schema.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Spec;
use crate::validate::Issues;

/// The spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Spec for VirtualServiceSpec {
    fn validate(&self, _meta: &ObjectMeta, _issues: &mut Issues) {}
}
