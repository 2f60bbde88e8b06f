//! The delivery stage of the data flow: the ADS gRPC server (state of the world and
//! incremental) and the push controller that feeds it.
//!
//! [`PushController::run`] owns the [`strait_model::MeshIndex`]: it applies source events,
//! coalesces bursts (quiet period and maximum delay), and on each push builds every connected
//! proxy's [`ProxySnapshot`] through the [`ConfigCache`], which builds shared resources once
//! and encodes them once. [`AdsService`] streams those snapshots to Envoy over one ADS stream
//! per proxy, honouring subscriptions, ordering (CDS before EDS, LDS before RDS), versions and
//! nonces, and records ACKs and NACKs as data in the [`SyncRegistry`]. The server is generic
//! over [`SnapshotSource`]; it knows nothing about where configuration comes from.

mod cache;
mod grpc;
mod metrics;
mod node;
mod push;
mod read_ahead;
mod request;
mod resource;
mod server;
mod status;
mod tags;
mod window;
mod wire;

pub use cache::{ConfigCache, OwnLayers};
pub use grpc::{FrameError, MessageBuffer};
pub use metrics::XdsMetrics;
pub use node::{proxy_node, struct_to_json};
pub use push::{PushController, PushOptions};
pub use resource::{ProxySnapshot, Resource, ResourceMap, TypeView, ViewDiff, XdsType};
pub use server::{AdsService, SnapshotSource, Subscription};
pub use status::{ProxySyncz, SyncRegistry, SyncState, Syncz, TypeStatus, TypeSyncz};
pub use tags::{
    Connections, Move, TagMoveOptions, TagMover, TaggedConn, TrackedStream, run_tag_mover,
};
pub use window::{DEFAULT_WINDOW_MB, PushWindow};
pub use wire::{DeltaResponse, SotwResponse};
