//! The `strait` binary's library: the wiring of sources, the push controller, the ADS server
//! and the status API (`serve`), the command-line tools (`bootstrap`, `proxy-status`,
//! `validate`, `tag`), and sidecar injection (the webhook in `serve`, `inject`, and the
//! `init`, `drain` and `wait` commands of injected pods). The binary is a thin `main` over
//! this crate, so tests start exactly the same server in-process.

pub mod bootstrap;
pub mod debug;
pub mod drain;
pub mod init;
pub mod inject;
pub mod proxy_status;
pub mod serve;
mod table;
pub mod tag;
pub mod validate;
pub mod webhook;
