//! The model stage of the data flow: sources send [`Event`]s, the [`MeshIndex`] applies them
//! (synchronously: `apply`, `delete`, `reset`) and, when the push controller asks, publishes an
//! immutable [`MeshSnapshot`] together with the [`ChangeSet`] that led to it. Translation reads
//! snapshots only; it never sees the index or the sources.
//!
//! Objects are kept in compact forms (a Service becomes a [`Service`] with parsed ports and
//! protocol; a Pod becomes a [`Workload`] with its labels, IP and locality), shared through
//! `Arc`s so that a snapshot costs a few pointer copies, not a deep clone.

mod config;
mod endpoints;
mod event;
mod index;
mod proxy;
mod secret;
mod service;
mod snapshot;
mod workload;

pub mod testing;

pub use config::{ConfigKey, ConfigStore};
pub use endpoints::{Endpoint, EndpointGroup, EndpointPort, EndpointSet, Health};
pub use event::{ChangeSet, ClusterEvent, ClusterId, Event};
pub use index::{IndexOptions, MeshIndex, parse_mesh_config};
pub use proxy::{EnvoyVersion, InterceptionMode, Proxy, ProxyKind, ProxyNode, ProxyNodeError};
pub use secret::Secret;
pub use service::{
    DnsEndpoint, EntryInfo, Protocol, Resolution, Service, ServiceKey, ServiceKind, ServicePort,
    TargetPort,
};
pub use snapshot::{MeshSnapshot, NodeKey, NsName, TagReadiness};
pub use workload::{Labels, Locality, Namespace, Node, Workload, selector_matches};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A proxy's node description is unusable.
    #[error(transparent)]
    ProxyNode(#[from] ProxyNodeError),
}

/// Result with the model's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
