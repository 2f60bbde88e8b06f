//! The `networking.istio.io` kinds, with the same field names and meaning as Istio's API
//! (accepted in versions v1, v1beta1 and v1alpha3, which share one schema).
//!
//! Each kind is an [`IstioObject`] around its spec type; each spec implements [`Spec`], whose
//! `validate` reports invalid fields by path (`spec.http[0].route[1].weight`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::validate::Issues;

mod common;
mod destination_rule;
mod gateway;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

/// An Istio custom resource: metadata plus a typed spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IstioObject<S> {
    /// `networking.istio.io/<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The kind name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The kind's content.
    #[serde(default)]
    pub spec: S,
    /// Status written by controllers; kept opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// What every Istio spec type offers.
pub trait Spec {
    /// Reports invalid fields (errors) and questionable ones (warnings). Paths start at
    /// `spec.`. `meta` is the object's metadata, for checks that need its namespace.
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues);
}

/// networking.istio.io VirtualService.
pub type VirtualService = IstioObject<VirtualServiceSpec>;
/// networking.istio.io DestinationRule.
pub type DestinationRule = IstioObject<DestinationRuleSpec>;
/// networking.istio.io Gateway.
pub type Gateway = IstioObject<GatewaySpec>;
/// networking.istio.io ServiceEntry.
pub type ServiceEntry = IstioObject<ServiceEntrySpec>;
/// networking.istio.io Sidecar.
pub type Sidecar = IstioObject<SidecarSpec>;
