//! The objects strait reads, before anything is indexed: Kubernetes core objects (from
//! `k8s-openapi`) and the Istio `networking.istio.io` kinds (defined here, with `serde` and
//! `schemars`). Sources turn YAML or watch events into [`Object`]s with [`parse_object`];
//! [`Object::validate`] reports what is wrong with one, field by field, before it may reach the
//! mesh index. Nothing in this crate does I/O.

pub mod duration;
pub mod istio;
pub mod labels;
pub mod mesh_config;
pub mod object;
pub mod policy;
pub mod validate;

pub use duration::Duration;
pub use mesh_config::MeshConfig;
pub use object::{Kind, Object, ObjectRef, ParseError, Parsed, parse_object};
pub use validate::{Issue, Issues, Severity};

/// Re-exported Kubernetes API types, so downstream crates name one version of them.
pub use k8s_openapi;
