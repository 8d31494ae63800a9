//! Numbers about what sluice is doing. Each worker owns its metrics
//! (`stats.rs`: per route and upstream, under a per-worker mutex taken per
//! session; `counters.rs`: worker-wide atomics) and is their only writer.
//! `collect.rs` merges them into a `Snapshot` (`snapshot.rs`), which
//! `prometheus.rs` renders (with `operations.rs`'s families about the
//! process, `build_info.rs`'s facts about the binary, in the text format
//! `exposition.rs` writes); `registry.rs` names the series (and reclaims
//! those of upstreams that left).

pub(crate) mod build_info;
pub(crate) mod collect;
pub(crate) mod counters;
mod exposition;
mod operations;
pub(crate) mod prometheus;
pub(crate) mod registry;
pub mod snapshot;
pub(crate) mod stats;

pub use counters::{CloseReason, Pause, Refusal, WorkerCounters};
pub use registry::Registry;
pub use stats::{SessionRecord, WorkerMetrics};
