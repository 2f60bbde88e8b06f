//! The commands of `strait-load` and what they share: the strait child process and the
//! `/proc` sampler.

pub mod child;
pub mod envoy_check;
pub mod run;
pub mod sampler;
