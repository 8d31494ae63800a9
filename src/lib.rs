//! sluice: a zero-copy TCP (layer 4) reverse proxy for Linux.
//!
//! # Layout
//! The modules in layers, top to bottom: a module imports modules of its
//! own layer or below, never above, and no two import each other
//! (`docs/architecture.md` draws it; `tests/repo` checks both).
//!
//! ## Commands: what `main` runs
//! - `server`: the control thread: starts the workers, signals, reloads (the route plan, the file watch), the drain, a successor's takeover.
//! - `doctor`: `sluice doctor`, the kernel and limits audit.
//! - `stats_view`: the `sluice stats` terminal view.
//! - `cli`: the command line and how its flags become a `Config`.
//! - `logging`: env_logger through a non-blocking queue to stderr.
//!
//! ## Control: the control plane beside the control thread
//! - `admin`: the admin HTTP port: /metrics, /stats, /healthz, /readyz.
//! - `handoff`: the takeover protocol: a running sluice hands its listening sockets to a successor over a Unix socket.
//!
//! ## Workers: the data plane's threads
//! - `worker`: one thread, one mio loop: listeners, sessions, timers, pools.
//! - `access`: the access log, one line per finished session.
//!
//! ## Sessions: one client at a time
//! - `session`: one client↔upstream pair through its stages, and how it ends.
//! - `frontend`: what one listen address serves: its routes, and their name table.
//! - `route`: a route as workers run it (bound, resolved).
//!
//! ## State: what threads share
//! - `process`: what the whole process shares across threads: readiness, reloads, generation, limits.
//! - `metrics`: per-worker counters and histograms, snapshots, Prometheus text.
//! - `upstream`: resolved upstream sets, balancing, health, health checks and DNS re-resolution.
//! - `listen`: listening sockets: their keys, binding and adopting them, systemd socket activation.
//! - `overload`: refusing new clients above fd or memory thresholds (`overload:`).
//!
//! ## Bytes: moving bytes
//! - `relay`: the pump state machine over splice pipes, copy buffers or io_uring, and the pipes themselves.
//!
//! ## Kernel: what sluice asks of the kernel
//! - `sys`: sockets, their options and filters and queues, the kernel's settings and counters, this process's limits and CPUs.
//!
//! ## Rules: configuration and pure logic, no I/O
//! - `config`: `proxy.yaml`: schema, units, validation, errors with file:line:column.
//! - `proxy_protocol`: PROXY protocol v1/v2 headers: building and strict parsing.
//! - `tls`: reading a TLS ClientHello (sans-I/O) and choosing a route by its server name.
//! - `acl`: per-route allow/deny lists of CIDR blocks.
//! - `destination`: `destinations:` entries and the choice of a capture address's route by the original destination (port first, then the longest prefix).
//! - `ratelimit`: connection-rate limits per route and per client prefix, shared by the workers.
//! - `timer`: deadlines with `now` passed in.
//! - `local_error`: telling this host's failures (fds, memory, ports, `source:`) from an upstream's.

// As mio: every public type can be printed, and code in the edition's idioms
// (unused imports are warned of by default, and CI denies warnings). Modules
// only this crate uses are `pub(crate)`, so the compiler reports what nothing
// uses; the public ones are what `main.rs`, tests/ and examples/ need.
#![deny(missing_debug_implementations)]
#![warn(rust_2018_idioms)]

pub(crate) mod access;
pub(crate) mod acl;
pub mod admin;
pub mod cli;
pub mod config;
#[cfg_attr(not(test), expect(dead_code, reason = "the capture routes (issue 29) use it: remove this when they land"))]
pub(crate) mod destination;
pub mod doctor;
pub(crate) mod frontend;
pub mod handoff;
pub mod listen;
pub(crate) mod local_error;
pub mod logging;
pub mod metrics;
pub(crate) mod overload;
pub(crate) mod process;
pub mod proxy_protocol;
pub(crate) mod ratelimit;
pub(crate) mod relay;
pub(crate) mod route;
pub mod server;
pub(crate) mod session;
pub mod stats_view;
pub mod sys;
pub(crate) mod timer;
pub mod tls;
pub(crate) mod upstream;
pub(crate) mod worker;
