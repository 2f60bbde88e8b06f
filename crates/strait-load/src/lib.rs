//! The load harness of strait. It sits outside the data flow: it writes a generated mesh into
//! a config directory (the directory source's input), edits it at a steady rate (churn), and
//! plays thousands of Envoy sidecars against the ADS server at the other end of the flow,
//! measuring how long each change takes to reach every proxy and what strait costs in CPU and
//! memory meanwhile.
//!
//! The library holds the parts that are pure or self-contained: mesh generation
//! ([`mesh`]), churn planning and convergence bookkeeping ([`churn`]), the simulated proxy
//! ([`proxy`]) and its gRPC stream ([`grpc`], writing as Envoy does through [`coalesce`]), `/proc` and Prometheus readers ([`procfs`], [`prom`]), statistics
//! ([`stats`]) and the report ([`report`]). The `strait-load` binary wires them together.

pub mod churn;
pub mod coalesce;
pub mod grpc;
pub mod mesh;
pub mod procfs;
pub mod prom;
pub mod proxy;
pub mod report;
pub mod stats;

/// Errors of the load harness library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ADS connection failed.
    #[error("xDS connection to {addr}: {message}")]
    Connect {
        /// The server.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The ADS stream failed.
    #[error("xDS stream: {0}")]
    Stream(String),
    /// A response could not be decoded.
    #[error("cannot decode a {type_url} resource: {source}")]
    Decode {
        /// The resource type.
        type_url: String,
        /// The decoding error.
        #[source]
        source: prost::DecodeError,
    },
    /// A resource of another type than the response's.
    #[error("expected a {expected} resource, got {got}")]
    WrongType {
        /// The response's type.
        expected: &'static str,
        /// The resource's type.
        got: String,
    },
    /// The request channel to the server closed.
    #[error("the request stream to the server closed")]
    Closed,
}

/// Result with the harness's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
