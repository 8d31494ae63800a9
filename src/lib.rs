//! sluice: a zero-copy TCP (layer 4) reverse proxy for Linux.
//!
//! # Layout
//! - `affinity`: pinning workers to CPUs.
//! - `cli`: the command line and how its flags become a `Config`.
//! - `config`: `proxy.yaml`: schema, units, validation, errors with file:line:column.
//! - `server`: the control thread: start workers, signals, reload, drain.
//! - `reload`: config → per-worker route updates (start and reload); the file watch.
//! - `worker`: one thread, one mio loop: listeners, sessions, timers, pools.
//! - `session`: one client↔upstream pair: connecting, relaying, failures.
//! - `relay`: the pump state machine over splice pipes or copy buffers.
//! - `pipe`: splice pipes and the per-worker pipe pool.
//! - `timer`: deadlines with `now` passed in.
//! - `route`: a route as workers run it (bound, resolved).
//! - `upstream`: resolved upstream sets and balancing.
//! - `sockets`: listeners, upstream connects, abortive close.
//! - `sockopt`: one function per TCP option; where each one applies.
//! - `limits`: the fd limit and the reserve fd.
//! - `metrics`: per-worker counters.
//! - `sysctl`: reading kernel settings from /proc/sys.

pub mod affinity;
pub mod cli;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod pipe;
pub mod relay;
pub mod reload;
pub mod route;
pub mod server;
pub mod session;
pub mod sockets;
pub mod sockopt;
pub mod sysctl;
pub mod timer;
pub mod upstream;
pub mod worker;
