//! Numbers about what sluice is doing. Each worker owns its counters
//! (`counters.rs`) and is their only writer; readers sum them.

pub mod counters;
pub mod snapshot;

pub use counters::{CloseReason, Direction, WorkerCounters};
