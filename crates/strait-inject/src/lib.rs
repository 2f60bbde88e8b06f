//! Sidecar injection, the admission side of the data flow: it decides which pods get a stock
//! Envoy sidecar pointed at this control plane ([`decision`]), builds the mutation of the pod
//! as an RFC 6902 JSON Patch ([`inject`]), and holds what the injected init container runs
//! (`strait init`): the iptables rules that send the pod's traffic through Envoy
//! ([`iptables`]) and the Envoy bootstrap built from the pod's downward-API identity
//! ([`init`]). [`offline`] does the same to manifests (`strait inject -f`).
//!
//! Everything here is pure: no I/O, no clocks. The webhook server, the CA and the commands
//! live in the `strait` binary.

pub mod decision;
#[cfg(test)]
mod golden;
pub mod init;
pub mod inject;
pub mod iptables;
pub mod keys;
pub mod offline;
pub mod patch;
pub mod quantity;
pub mod settings;
pub mod validation;

pub use decision::{Decision, PodMeta, decide, decide_offline};
pub use inject::{Injection, Injector, InjectorConfig};

/// Why injection could not be done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An annotation (or mesh setting) the injector reads has a value it cannot use.
    #[error("{name}: {reason}")]
    Setting {
        /// The annotation or setting.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object is not a pod (or pod template) the injector can read.
    #[error("not a valid pod: {0}")]
    Pod(String),
    /// The pod already has something with a name the injector needs.
    #[error("the pod already has {what} named {name:?}")]
    Conflict {
        /// Container or volume.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A manifest of a multi-document file could not be read or written.
    #[error("document {index}: {reason}")]
    Document {
        /// Its position in the file, from 1.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The init container's inputs (arguments, environment, downward API files) are unusable.
    #[error("{0}")]
    Init(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
