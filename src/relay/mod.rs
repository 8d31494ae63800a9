//! Moving bytes: the pump state machine (`pump.rs`) over its two kinds of
//! stage, splice pipes (`splice.rs`, pipes from `crate::pipe`) and copy
//! buffers (`copy.rs`), when a pipe grows (`grow.rs`), and `relay: auto`'s
//! switch between them (`auto.rs`, by the worker's load: `load.rs`), and
//! `relay: uring`'s per-worker io_uring (`ring.rs`).
//! Sessions own pumps; workers own the `Resources` and feed their load meter.

pub mod auto;
pub mod copy;
pub mod grow;
pub mod load;
pub mod pump;
pub mod ring;
pub mod splice;

pub use pump::{Activity, DstFailed, Pump, SrcEnd};

use crate::pipe::{PipeBudget, PipePool};
use copy::BufferPool;

/// What a worker lends its pumps: spare pipes and buffers, how loaded it is,
/// and how often a pump that wanted to splice had to copy.
#[derive(Debug)]
pub struct Resources {
    /// Splice pipes.
    pub pipes: PipePool,
    /// Copy buffers.
    pub buffers: BufferPool,
    /// Times a pump switched from splice to copy (no pipe, or splice
    /// refused); under `relay: auto` at most once per big message.
    pub copy_fallbacks: u64,
    /// How loaded the worker is (it feeds the meter): `relay: auto` splices
    /// big request/response messages only under light load.
    pub load: load::LoadMeter,
    /// The worker's io_uring, under `relay: uring`.
    pub ring: Option<ring::Ring>,
}

impl Resources {
    /// Pools for pipes of `pipe_size` bytes (within `budget`) and copy buffers of the same size.
    pub fn new(pipe_size: usize, max_pooled: usize, budget: std::sync::Arc<PipeBudget>) -> Resources {
        Resources {
            pipes: PipePool::new(pipe_size, max_pooled, budget),
            buffers: BufferPool::new(pipe_size, max_pooled),
            copy_fallbacks: 0,
            load: load::LoadMeter::new(std::time::Instant::now()),
            ring: None,
        }
    }

    /// New sizes after a reload: spare pipes and buffers of the old size go.
    pub fn resize(&mut self, pipe_size: usize, max_pooled: usize) {
        self.pipes.resize(pipe_size, max_pooled);
        self.buffers.resize(pipe_size, max_pooled);
    }
}
