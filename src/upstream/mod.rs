//! Upstreams: the resolved set a route sends sessions to (`set.rs`) and how
//! the next one is chosen (`balance.rs`).

pub mod balance;
pub mod set;

pub use balance::SmoothRoundRobin;
pub use set::{ResolveError, Upstream, UpstreamSet};
