//! Upstreams: the resolved set a route sends sessions to (`set.rs`), where
//! host names come from (`resolve.rs`), how the next one is chosen
//! (`balance.rs`), what every thread knows of each one's health
//! (`health.rs`), the active health-check thread (`checker.rs`) and the
//! DNS re-resolution thread (`discovery.rs`).

pub mod balance;
pub mod checker;
pub mod discovery;
pub mod health;
pub mod loop_guard;
pub mod resolve;
pub mod set;

pub use balance::{Balancer, client_hash};
pub use health::{Availability, UpstreamHealth};
pub use set::{ResolveError, Upstream, UpstreamKey, UpstreamSet};
