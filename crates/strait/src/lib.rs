//! The `strait` binary's library: the wiring of sources, the push controller, the ADS server
//! and the status API (`serve`), and the command-line tools (`bootstrap`, `proxy-status`,
//! `validate`). The binary is a thin `main` over this crate, so tests start exactly the same
//! server in-process.

pub mod bootstrap;
pub mod debug;
pub mod proxy_status;
pub mod serve;
pub mod validate;
