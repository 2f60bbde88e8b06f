//! The source stage of the data flow: turns the outside world into [`strait_model::Event`]s
//! on one channel. The directory source ([`dir::DirSource`]) reads a folder of the same YAML
//! manifests one would `kubectl apply`, and follows edits without a restart; the Kubernetes
//! source ([`kube::KubeSource`]) watches one or more clusters' API servers. Both send the same
//! events, and may run side by side.
//!
//! Every object is validated before it is sent; an invalid one is reported (file, document,
//! kind/name, field, reason) and skipped, and the last good version of it stays in force.

pub mod dir;
pub mod kube;
pub mod manifest;

/// Errors of the sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file watcher could not start.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// A Kubernetes cluster's connection settings are unusable.
    #[error("Kubernetes cluster {cluster}: {reason}")]
    KubeConfig {
        /// The cluster (its id, or the kubeconfig file).
        cluster: String,
        /// Why (kube's errors already spell out their causes).
        reason: String,
    },
    /// The set of clusters is unusable (two with one name, an empty directory).
    #[error("{0}")]
    KubeClusters(String),
}

/// Result with the sources' error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
