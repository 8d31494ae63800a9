//! Moving bytes: the pump state machine (`pump.rs`) over its three kinds of
//! stage, splice pipes (`splice.rs`, the pipes and their pool in `pipe.rs`), copy
//! buffers (`copy.rs`) and `relay: uring`'s per-worker io_uring (`ring.rs`,
//! `pump/uring.rs`); when a pipe grows (`grow.rs`); `relay: auto`'s choice
//! between splice and copy by what each measured per byte (`cost.rs`, by the
//! flow's message size: `auto.rs`); how busy a worker is (`load.rs`);
//! which modes the kernel allows and what a refused one falls back to
//! (`modes.rs`).
//! Sessions own pumps; workers own the `Resources` and feed their busy meter.

pub mod auto;
pub mod copy;
pub mod cost;
pub mod grow;
pub mod load;
pub mod modes;
pub mod pipe;
pub mod pump;
pub mod ring;
pub mod splice;

pub use pump::{DstFailed, Pump, SrcEnd};

use copy::BufferPool;
use pipe::{PipeBudget, PipePool};

/// What a worker lends its pumps: spare pipes and buffers, what copying and
/// splicing cost it, how busy it is, and how often a pump that wanted to
/// splice had to copy.
#[derive(Debug)]
pub struct Resources {
    /// Splice pipes.
    pub pipes: PipePool,
    /// Copy buffers.
    pub buffers: BufferPool,
    /// Times a pump switched from splice to copy (no pipe, or splice
    /// refused); under `relay: auto` at most once per run that chose splice.
    pub copy_fallbacks: u64,
    /// Of those, pumps whose sockets splice refused (`EINVAL`/`ENOSYS`
    /// before a byte moved: a socket type without splice support); they
    /// copy for the rest of their session.
    pub splice_refused: u64,
    /// What each stage has cost per byte: `relay: auto` uses the cheaper.
    pub costs: cost::Costs,
    /// How busy the worker is (it feeds the meter), for the metrics.
    pub load: load::LoadMeter,
    /// The worker's io_uring, under `relay: uring`.
    pub ring: Option<ring::Ring>,
    /// The worker's sockhash and verdict program, under `relay: sockmap`.
    pub sockmap: Option<crate::sys::sockmap::Sockmap>,
    /// Bytes the kernel holds between the sockets of this worker's sessions, as of their last looks.
    pub sockmap_held: u64,
}

impl Resources {
    /// Pools for pipes of `pipe_size` bytes (within `budget`) and copy buffers of the same size.
    pub fn new(pipe_size: usize, max_pooled: usize, budget: std::sync::Arc<PipeBudget>) -> Resources {
        Resources {
            pipes: PipePool::new(pipe_size, max_pooled, budget),
            buffers: BufferPool::new(pipe_size, max_pooled),
            copy_fallbacks: 0,
            splice_refused: 0,
            costs: cost::Costs::default(),
            load: load::LoadMeter::new(std::time::Instant::now()),
            ring: None,
            sockmap: None,
            sockmap_held: 0,
        }
    }

    /// New sizes after a reload: spare pipes and buffers of the old size go.
    pub fn resize(&mut self, pipe_size: usize, max_pooled: usize) {
        self.pipes.resize(pipe_size, max_pooled);
        self.buffers.resize(pipe_size, max_pooled);
    }
}
