//! The control thread: turns a `Config` into running workers, then waits
//! for signals. SIGTERM/SIGINT start a drain (listeners close at once,
//! sessions get `drain_timeout`), a second one stops at once.
//!
//! Everything that may block (name resolution, binding, reading /proc)
//! happens here, before the workers start: a worker must never block.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, RelayMode, Workers, units::fmt_size};
use crate::limits;
use crate::metrics::WorkerCounters;
use crate::metrics::counters::Totals;
use crate::pipe;
use crate::route::Route;
use crate::sockopt;
use crate::upstream::ResolveError;
use crate::worker::{self, Control, Shared, Worker, WorkerSetup};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An upstream host name did not resolve.
    #[error("route {route}: {source}")]
    Resolve {
        /// The route.
        route: String,
        /// The failure.
        #[source]
        source: ResolveError,
    },
    /// A listen address could not be bound.
    #[error("route {route}: cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The route.
        route: String,
        /// The address.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// Advice for the common causes.
        hint: &'static str,
    },
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
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// One worker's listeners, one per route in route order.
type Listeners = Vec<(TcpListener, Arc<Route>)>;

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    tx: Sender<Control>,
    waker: Arc<Waker>,
    counters: Arc<WorkerCounters>,
}

impl WorkerHandle {
    fn send(&self, msg: Control) {
        // A worker that already exited has dropped its receiver: nothing to tell it.
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A worker's last word to the control thread.
struct Exit {
    id: usize,
    outcome: Result<(), String>,
}

/// Tokens of the control thread's poll.
const SIGNALS: Token = Token(0);
const WORKER_EXIT: Token = Token(1);

/// How many workers `workers:` means on this machine.
pub fn worker_count(w: Workers) -> usize {
    match w {
        Workers::Count(n) => usize::from(n),
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Starts the workers for `config` and serves until a signal ends it.
pub fn run(config: &Config) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM that arrives while we bind must drain, not kill.
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(io_err("installing signal handlers"))?;
    match limits::raise_nofile() {
        Ok(n) => log::info!("file descriptor limit: {n}"),
        Err(e) => log::warn!("cannot raise the file descriptor limit: {e}"),
    }
    let workers = worker_count(config.workers);
    let pipe_size = effective_pipe_size(config.pipe_size);
    let routes = bind_routes(config, workers)?;
    let shared = Arc::new(Shared {
        active: AtomicUsize::new(0),
        max_connections: config.max_connections,
    });

    // The control thread sleeps until a signal arrives or a worker exits.
    let poll = Poll::new().map_err(io_err("creating the control poll"))?;
    let mut signals = signals;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(io_err("registering signals"))?;
    let exit_waker =
        Arc::new(Waker::new(poll.registry(), WORKER_EXIT).map_err(io_err("creating a waker"))?);
    let (exit_tx, exits) = mpsc::channel::<Exit>();

    let mut handles = Vec::with_capacity(workers);
    for (id, listeners) in routes.into_iter().enumerate() {
        let worker_poll = Poll::new().map_err(io_err("creating a poll"))?;
        let waker = Arc::new(
            Waker::new(worker_poll.registry(), worker::WAKER)
                .map_err(io_err("creating a waker"))?,
        );
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(WorkerCounters::default());
        let setup = WorkerSetup {
            id,
            poll: worker_poll,
            listeners,
            control: rx,
            shared: Arc::clone(&shared),
            counters: Arc::clone(&counters),
            splice: config.relay == RelayMode::Splice,
            pipe_size,
        };
        let (exit_tx, exit_waker) = (exit_tx.clone(), Arc::clone(&exit_waker));
        let thread = std::thread::Builder::new()
            .name(format!("sluice-w{id}"))
            .spawn(move || {
                // Report how the worker ended, even if it panicked (debug builds unwind).
                let run = std::panic::AssertUnwindSafe(|| Worker::new(setup).and_then(Worker::run));
                let outcome = match std::panic::catch_unwind(run) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("panicked".to_owned()),
                };
                let _ = exit_tx.send(Exit { id, outcome });
                let _ = exit_waker.wake();
            })
            .map_err(io_err("starting a worker thread"))?;
        handles.push(WorkerHandle {
            thread: Some(thread),
            tx,
            waker,
            counters,
        });
    }
    log::info!(
        "sluice {} running: {workers} worker(s), relay {}, pipe size {}, max {} connections",
        env!("CARGO_PKG_VERSION"),
        config.relay,
        fmt_size(pipe_size as u64),
        config.max_connections
    );
    let result = control_loop(
        poll,
        &mut signals,
        &exits,
        &mut handles,
        config.drain_timeout,
    );
    let totals = Totals::sum(handles.iter().map(|h| &*h.counters));
    log::info!("stopped: {totals}");
    result
}

/// Waits for signals and for the workers; returns when every worker has exited.
fn control_loop(
    mut poll: Poll,
    signals: &mut Signals,
    exits: &mpsc::Receiver<Exit>,
    handles: &mut [WorkerHandle],
    drain_timeout: Duration,
) -> Result<(), ServerError> {
    let mut events = Events::with_capacity(8);
    let mut draining = false;
    let mut failure = None;
    let drain = |handles: &[WorkerHandle]| {
        let deadline = Instant::now() + drain_timeout;
        handles
            .iter()
            .for_each(|h| h.send(Control::Drain { deadline }));
    };
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ServerError::Io {
                    what: "waiting for signals",
                    source: e,
                });
            }
        }
        if events.iter().any(|e| e.token() == SIGNALS) {
            for signal in signals.pending() {
                match signal {
                    SIGHUP => log::warn!(
                        "SIGHUP received: configuration reload is not supported yet; ignoring it"
                    ),
                    _ if draining => {
                        log::info!("second stop signal: closing every session now");
                        handles.iter().for_each(|h| h.send(Control::Stop));
                    }
                    _ => {
                        draining = true;
                        let name = if signal == SIGINT {
                            "SIGINT"
                        } else {
                            "SIGTERM"
                        };
                        log::info!(
                            "{name} received: no new connections; running sessions get up to {drain_timeout:?} to finish"
                        );
                        drain(handles);
                    }
                }
            }
        }
        while let Ok(Exit { id, outcome }) = exits.try_recv() {
            if let Some(t) = handles[id].thread.take() {
                // It has sent its last word: the join is immediate.
                let _ = t.join();
            }
            let why = match outcome {
                Ok(()) if draining => continue,
                Ok(()) => "exited unexpectedly".to_owned(),
                Err(e) => e,
            };
            log::error!("worker {id} {why}; shutting down");
            failure.get_or_insert(ServerError::Worker(id, why));
            if !draining {
                draining = true;
                drain(handles);
            }
        }
        if handles.iter().all(|h| h.thread.is_none()) {
            return failure.map_or(Ok(()), Err);
        }
    }
}

/// The pipe size we can really have: `pipe_size` capped at `fs.pipe-max-size`
/// (going past it needs `CAP_SYS_RESOURCE`).
fn effective_pipe_size(wanted: usize) -> usize {
    match pipe::pipe_max_size() {
        Some(max) if wanted > max => {
            log::warn!(
                "pipe_size {} is above fs.pipe-max-size ({}): using {}",
                fmt_size(wanted as u64),
                fmt_size(max as u64),
                fmt_size(max as u64)
            );
            max
        }
        _ => wanted,
    }
}

/// Resolves every route and binds one `SO_REUSEPORT` listener per route per
/// worker. Returns, per worker, its listeners in route order.
fn bind_routes(config: &Config, workers: usize) -> Result<Vec<Listeners>, ServerError> {
    let backlog = match sockopt::somaxconn() {
        Some(max) if max < sockopt::DEFAULT_BACKLOG => max,
        _ => sockopt::DEFAULT_BACKLOG,
    };
    let mut per_worker: Vec<Listeners> = (0..workers).map(|_| Vec::new()).collect();
    for r in &config.routes {
        let mut route = Route::resolve(r).map_err(|source| ServerError::Resolve {
            route: r.name.clone(),
            source,
        })?;
        let mut addr = r.listen;
        let mut sockets = Vec::with_capacity(workers);
        for _ in 0..workers {
            let l =
                sockopt::reuseport_listener(addr, backlog).map_err(|source| ServerError::Bind {
                    route: r.name.clone(),
                    addr,
                    hint: bind_hint(&source, addr),
                    source,
                })?;
            // Port 0: the first worker's socket gets a port, the others join it.
            addr = l
                .local_addr()
                .map_err(io_err("reading a listener's address"))?;
            sockets.push(l);
        }
        route.listen = addr;
        let upstreams: Vec<String> = route
            .upstreams
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect();
        log::info!(
            "route {} listening on {addr} -> {}",
            route.name,
            upstreams.join(", ")
        );
        let route = Arc::new(route);
        for (w, l) in sockets.into_iter().enumerate() {
            per_worker[w].push((l, Arc::clone(&route)));
        }
    }
    Ok(per_worker)
}

fn bind_hint(e: &io::Error, addr: SocketAddr) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: setcap cap_net_bind_service=+ep on the binary, \
             or listen on a port >= 1024)"
        }
        io::ErrorKind::AddrInUse => " (another process holds this address; `ss -ltnp` shows which)",
        io::ErrorKind::AddrNotAvailable => " (no interface on this machine has that address)",
        _ => "",
    }
}
