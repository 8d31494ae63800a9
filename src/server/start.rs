//! Starting: the control socket, a predecessor's or systemd's sockets, the
//! admin port, the workers, the route plan, then the control thread's loop
//! (`event_loop.rs`); and the global settings the workers get, at start and on
//! every reload (with the relay modes the kernel really allows: `relay/modes.rs`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use mio::{Interest, Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::control_socket::ControlSocket;
use super::plan::{self, HelloStates};
use super::watch::FileWatch;
use super::workers::{Exit, hand_out_surplus, start_worker};
use super::{ControlThread, RunOptions, SIGNALS, ServerError, WAKE, io_err, worker_count};
use crate::admin::AdminContext;
use crate::config::{Config, RelayMode, units::fmt_size};
use crate::listen::{Inherited, ListenError};
use crate::metrics::{Registry, WorkerCounters};
use crate::process::ProcessState;
use crate::relay::{modes, pipe};
use crate::sys::rlimit;
use crate::upstream::checker::Checker;
use crate::upstream::discovery::{Resolved, Resolver};
use crate::worker::WorkerSettings;

/// Starts everything, then runs the control thread until it ends.
///
/// The order matters: once a socket listens in a `SO_REUSEPORT` group the
/// kernel queues clients on it, and a process that then gives up resets
/// them; once a predecessor is told `Ready` it stops accepting. So every
/// step that can fail (the control socket, the takeover, the admin port,
/// polls and threads) comes before `plan::plan` binds, and nothing after
/// `Ready` stops the service.
pub(super) fn run(config: Config, opts: RunOptions) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM that arrives while we bind must drain, not kill.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(io_err("installing signal handlers"))?;
    let nofile = match rlimit::raise_nofile() {
        Ok(n) => {
            log::info!("file descriptor limit: {n}");
            n
        }
        Err(e) => {
            log::warn!("cannot raise the file descriptor limit: {e}");
            1024
        }
    };
    let workers = worker_count(config.workers);
    let settings = settings(&config);
    // Another sluice answering on the control socket is refused here, and ours
    // listens at its temporary name (published once we serve).
    let control_socket = match &config.control_socket {
        Some(path) => Some(ControlSocket::bind(path, opts.takeover)?),
        None => None,
    };
    // A takeover: the running process's sockets (a bad config never got here; it still serves).
    let (predecessor, mut inherited) = match (opts.takeover, &config.control_socket) {
        (true, Some(path)) => {
            let (peer, inherited) = crate::handoff::take_over(path)?;
            log::info!(
                "took {} listening socket(s) over from pid {} (generation {}) on {}",
                inherited.len(),
                inherited.from.unwrap_or(0),
                inherited.generation,
                path.display()
            );
            (Some(peer), inherited)
        }
        _ => (None, Inherited::default()),
    };
    // Socket activation: systemd's sockets, unless a takeover brought the running process's.
    if let Some(from_systemd) = opts.activation.into_inherited(&config, workers, predecessor.is_some())? {
        inherited = from_systemd;
    }
    // The admin port: a running sluice holding it shows here, before we listen anywhere.
    let admin_listener = match &config.admin {
        Some(a) => Some(match inherited.take_admin(a.listen) {
            Some(l) => l,
            None => std::net::TcpListener::bind(a.listen).map_err(|source| {
                let in_use = source.kind() == io::ErrorKind::AddrInUse;
                let hint = if in_use { " (is another sluice running with this admin address?)" } else { "" };
                ServerError::Listen(ListenError::Bind { route: "admin".to_owned(), addr: a.listen, hint, source })
            })?,
        }),
        None => None,
    };
    let successor = predecessor.is_some();
    let generation = inherited.generation + 1;
    let supervised = inherited.supervised();
    let registry = Arc::new(Registry::default());
    let shared = Arc::new(
        ProcessState::new(config.max_connections, pipe::PipeBudget::new(nofile, settings.pipe_size))
            .with_supervised(supervised),
    );
    shared.generation.store(generation, Ordering::Relaxed);

    // The control thread sleeps until a signal arrives, a worker exits, DNS reports, or the watch interval passes.
    let poll = Poll::new().map_err(io_err("creating the control poll"))?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE).map_err(io_err("registering signals"))?;
    let exit_waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io_err("creating a waker"))?);
    let (exit_tx, exits) = mpsc::channel::<Exit>();
    let (resolved_tx, resolved) = mpsc::channel::<Resolved>();
    let resolver =
        Resolver::start(resolved_tx, Arc::clone(&exit_waker)).map_err(io_err("starting the resolver thread"))?;
    let checker = Checker::start().map_err(io_err("starting the health-check thread"))?;
    // The worker threads wait for their routes; if the plan fails they just end.
    let mut handles = Vec::with_capacity(workers);
    let mut routes_to = Vec::with_capacity(workers);
    for id in 0..workers {
        let (handle, routes) = start_worker(id, workers, &shared, settings, &config, &exit_tx, &exit_waker)?;
        handles.push(handle);
        routes_to.push(routes);
    }
    let admin_ctx = AdminContext {
        workers: handles.iter().map(|h| Arc::clone(&h.metrics)).collect(),
        registry: Arc::clone(&registry),
        shared: Arc::clone(&shared),
        proc_root: "/proc".into(),
    };
    let snapshots = admin_ctx.clone_for_summary();
    let admin = match admin_listener {
        Some(listener) => {
            let handle = crate::admin::start(listener, admin_ctx).map_err(io_err("starting the admin port"))?;
            log::info!("admin port listening on {}: /metrics /stats /healthz /readyz", handle.addr);
            Some(handle)
        }
        None => None,
    };

    // Binding and listening: from here clients queue on our sockets.
    let mut hello = HelloStates::new();
    let mut plan = plan::plan(&Vec::new(), &config, workers, &registry, &mut hello, &mut inherited)?;
    for (tx, routes) in routes_to.into_iter().zip(std::mem::take(&mut plan.per_worker)) {
        // A worker that is gone already reports its exit to the control loop.
        let _ = tx.send(routes);
    }
    hand_out_surplus(std::mem::take(&mut plan.retire), &handles, &shared);
    log::info!(
        "sluice {} running: generation {generation}, {workers} worker(s), relay {}, pipe size {}, max {} connections{}",
        env!("CARGO_PKG_VERSION"),
        relay_modes(&config, settings.relay),
        fmt_size(settings.pipe_size as u64),
        config.max_connections,
        if config.watch { ", watching the config file" } else { "" }
    );
    // What the plan did not take (an address the new config dropped) the predecessor drains itself.
    drop(inherited);
    shared.overload.configure(config.overload.as_ref(), nofile, crate::overload::open_fds());
    shared.running.store(true, Ordering::Relaxed);
    if let Some(peer) = predecessor {
        match crate::handoff::ready(&peer, std::mem::take(&mut plan.taken)) {
            Ok(()) => log::info!("the predecessor stopped accepting and drains its sessions"),
            Err(e) => log::warn!("the predecessor did not confirm it stopped accepting ({e}); serving anyway"),
        }
    }
    // After Ready nothing may stop the service: a control socket that cannot be put in place is logged.
    let control_socket = control_socket.and_then(|c| c.publish(poll.registry()));
    let watch = config.source.as_deref().filter(|_| config.watch).map(|p| FileWatch::new(p, config.source_digest));
    let mut control = ControlThread {
        config,
        running: plan.running,
        hello,
        handles,
        shared,
        registry,
        watch,
        draining: false,
        grace_until: None,
        failure: None,
        checker,
        resolver,
        resolved,
        reclaim_at: None,
        admin,
        control_socket,
        exchange: None,
        stop_deferred: false,
        reload_deferred: false,
        systemd: super::systemd::Systemd::from_env(workers, Arc::clone(&exit_waker), successor),
        waker: exit_waker,
    };
    control.publish_pools();
    // READY=1 once every worker answers this (its routes came first).
    control.ping_workers();
    let result = control.run(poll, &mut signals, &exits);
    let per_worker: Vec<String> =
        control.handles.iter().map(|h| WorkerCounters::get(&h.metrics.counters.accepted).to_string()).collect();
    log::info!("stopped: {}; accepted per worker: [{}]", snapshots.snapshot().summary(), per_worker.join(", "));
    result
}

/// What workers need to know of the global settings (re-sent on reload).
pub(super) fn settings(config: &Config) -> WorkerSettings {
    // A route of its own `relay: uring` needs the worker's ring as much as the global
    // setting does; likewise the worker's sockhash for `relay: sockmap`.
    let runs = |mode: RelayMode| {
        std::iter::once(config.relay)
            .chain(config.routes.iter().filter_map(|r| r.relay))
            .any(|m| modes::effective(m) == mode)
    };
    WorkerSettings {
        relay: modes::effective(config.relay),
        ring: runs(RelayMode::Uring),
        sockmap: runs(RelayMode::Sockmap),
        pipe_size: effective_pipe_size(config.pipe_size),
        max_pooled_pipes: config.max_pooled_pipes,
        access_log: config.log.access.then_some(config.log.format),
        access_flush: config.log.flush_interval,
    }
}

/// The relay modes sessions really get, for the running line: the global
/// one, then each route whose own differs from it (after fallbacks):
/// `auto (route fast: sockmap)`.
fn relay_modes(config: &Config, global: RelayMode) -> String {
    let own: Vec<String> = config
        .routes
        .iter()
        .filter_map(|r| {
            r.relay.map(modes::effective).filter(|m| *m != global).map(|m| format!("route {}: {m}", r.name))
        })
        .collect();
    if own.is_empty() { global.to_string() } else { format!("{global} ({})", own.join(", ")) }
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
