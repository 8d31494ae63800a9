//! The control thread: starts the workers from a `Config`, then waits for
//! signals, worker exits and config file changes. SIGHUP (or a changed file
//! with `watch: true`) reloads. SIGTERM stops in steps a load balancer can
//! follow: `/readyz` says 503 at once, the listeners keep accepting for
//! `drain_grace`, then the workers stop answering new handshakes, serve
//! whoever is queued and close their listeners, and running sessions get
//! `drain_timeout`. SIGINT (a terminal's Ctrl-C) skips the grace; a second
//! signal stops at once. DNS reports become new route versions; the metric
//! series of upstreams that left are reclaimed here once they have been
//! quiet long enough.
//!
//! Everything that may block (name resolution, binding, reading files and
//! /proc) happens here, never on a worker. This file holds the control
//! thread's state (`ControlThread`); the files beside it are its `impl`
//! blocks and the parts it drives.
//!
//! # Files
//! - `start.rs`: starting everything (a predecessor's listeners first with
//!   `--takeover`, or systemd's), every step that can fail before any
//!   listener listens and before a predecessor is told to stop accepting;
//!   the settings workers get;
//! - `event_loop.rs`: the loop, the stop sequence and reloads;
//! - `plan.rs`: a configuration turned into per-worker listener updates;
//! - `watch.rs`: noticing that the config file changed;
//! - `pools.rs`: what upstream pools and DNS need;
//! - `workers.rs`: starting a worker thread, and the handles that talk to it;
//! - `control_socket.rs`: the Unix socket a successor knocks on;
//! - `systemd.rs`: what systemd hears (`Type=notify`): ready, reloading,
//!   stopping, the status line, the watchdog while the workers answer;
//! - `notify.rs`: the notify socket and its messages;
//! - `successor.rs`: the old process's side of a takeover.

mod control_socket;
mod event_loop;
mod notify;
mod plan;
mod pools;
mod start;
mod successor;
mod systemd;
mod watch;
mod workers;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::{Token, Waker};

use crate::admin::AdminHandle;
use crate::config::{Config, Workers};
use crate::handoff::HandoffError;
use crate::listen::ListenError;
use crate::listen::activation::{Activation, ActivationError};
use crate::metrics::Registry;
use crate::process::ProcessState;
use crate::upstream::checker::Checker;
use crate::upstream::discovery::{Resolved, Resolver};
use control_socket::ControlSocket;
pub use plan::PlanError;
use plan::{HelloStates, Running};
use successor::Exchange;
use watch::FileWatch;
use workers::WorkerHandle;

/// Why the server could not start or stopped badly: each layer's own
/// error, or the control thread's.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The routes could not be planned (resolved, bound).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The admin port could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Threads, polls, signals.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A worker thread died.
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
    /// Taking the listeners over from a running sluice failed (it still serves).
    #[error("{0}")]
    Handoff(#[from] HandoffError),
    /// The sockets systemd passed do not fit the configuration.
    #[error("{0}")]
    Activation(#[from] ActivationError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Tokens of the control thread's poll.
const SIGNALS: Token = Token(0);
/// Woken by a worker exiting or the resolver reporting (one waker per poll).
const WAKE: Token = Token(1);
/// A successor knocks on the control socket.
const SUCCESSOR: Token = Token(2);
/// How often a watched config file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How many workers `workers:` means on this machine.
pub fn worker_count(w: Workers) -> usize {
    match w {
        Workers::Count(n) => usize::from(n),
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// How `run` starts.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take the listeners over from the process on the config's `control_socket`.
    pub takeover: bool,
    /// Listening sockets from systemd (`listen::activation::from_env`, read
    /// in `main` before any thread starts). A takeover wins over them.
    pub activation: Activation,
}

/// Starts the workers for `config` and serves until a signal ends it (or a
/// successor takes over and the drain ends). The steps, in the order that
/// keeps every client safe, are `start.rs`'s.
pub fn run(config: Config, opts: RunOptions) -> Result<(), ServerError> {
    start::run(config, opts)
}

/// What the control thread keeps.
struct ControlThread {
    config: Config,
    running: Running,
    /// Per address routed by name, its clients still sending a ClientHello.
    hello: HelloStates,
    handles: Vec<WorkerHandle>,
    shared: Arc<ProcessState>,
    registry: Arc<Registry>,
    watch: Option<FileWatch>,
    /// A stop signal arrived: no reloads from then on.
    draining: bool,
    /// The listeners stop accepting at this time (the end of `drain_grace`).
    grace_until: Option<Instant>,
    failure: Option<ServerError>,
    checker: Checker,
    resolver: Resolver,
    resolved: Receiver<Resolved>,
    /// When an upstream's metric series may next be reclaimed.
    reclaim_at: Option<Instant>,
    /// The admin port (stopped when a successor takes it over).
    admin: Option<AdminHandle>,
    /// Where a successor may knock (`control_socket`).
    control_socket: Option<ControlSocket>,
    /// The takeover under way, on its own thread.
    exchange: Option<Exchange>,
    /// The listeners stop accepting once the takeover under way ends (its
    /// successor may be serving on copies of them).
    stop_deferred: bool,
    /// A reload was asked while a takeover was under way.
    reload_deferred: bool,
    /// The control poll's waker (for the takeover's thread).
    waker: Arc<Waker>,
    /// systemd's notify socket (`NOTIFY_SOCKET`), while the service is ours.
    systemd: Option<systemd::Systemd>,
}
