//! The worker threads as the control thread starts and holds them: each
//! is started (its poll, waker and thread) before anything listens and
//! waits for its routes, so a start that fails later leaves nothing
//! half-serving; surplus sockets of a predecessor with more workers are
//! dealt out to them. What a worker does is `crate::worker`'s.

use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use super::{ServerError, io_err};
use crate::config::Config;
use crate::listen::ListenKey;
use crate::metrics::WorkerMetrics;
use crate::process::ProcessState;
use crate::worker::ListenerUpdate;
use crate::worker::{self, Order, Worker, WorkerSettings, WorkerSetup};

/// A worker as the control thread holds it.
pub(super) struct WorkerHandle {
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) link: WorkerLink,
    pub(super) metrics: Arc<WorkerMetrics>,
}

impl WorkerHandle {
    pub(super) fn send(&self, msg: Order) {
        self.link.send(msg);
    }
}

/// How to tell a worker something: its channel and its poll's waker (a
/// takeover's thread holds copies).
#[derive(Clone)]
pub(super) struct WorkerLink {
    tx: Sender<Order>,
    waker: Arc<Waker>,
}

impl WorkerLink {
    /// Sends `msg` and wakes the worker. A worker that already exited has
    /// dropped its receiver: nothing to tell it.
    pub(super) fn send(&self, msg: Order) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A worker's last word to the control thread.
pub(super) struct Exit {
    pub(super) id: usize,
    pub(super) outcome: Result<(), String>,
}

/// Surplus sockets of a predecessor with more workers: emptied and closed
/// where the kernel hands what arrives meanwhile to the other sockets of the
/// group (`tcp_migrate_req`); else served for good, since closing one
/// resets the clients whose handshake is in flight to it. A socket systemd
/// holds too is always served: it lives on after our close, its queue
/// served by no one.
pub(super) fn hand_out_surplus(
    surplus: Vec<(ListenKey, mio::net::TcpListener)>,
    handles: &[WorkerHandle],
    shared: &ProcessState,
) {
    if surplus.is_empty() {
        return;
    }
    let migrate = crate::sys::sysctl::read::<u32>("net/ipv4/tcp_migrate_req") == Some(1);
    if migrate {
        log::info!("closing {} surplus listening socket(s) once emptied (net.ipv4.tcp_migrate_req = 1)", surplus.len());
    } else {
        log::info!(
            "keeping {} surplus listening socket(s) of the predecessor's extra workers open, served by this \
             process's workers: closing them would reset clients whose handshake is in flight \
             (sysctl -w net.ipv4.tcp_migrate_req=1 lets the kernel move those, and sluice closes surplus sockets)",
            surplus.len()
        );
    }
    for (i, (key, socket)) in surplus.into_iter().enumerate() {
        let retire = migrate && !shared.is_supervised(&socket);
        let msg = if retire { Order::Retire { key, socket } } else { Order::Adopt { key, socket } };
        handles[i % handles.len()].send(msg);
    }
}

/// Starts worker thread `id` of `workers`; it waits for its routes on the
/// returned channel (and ends quietly if that closes first).
pub(super) fn start_worker(
    id: usize,
    workers: usize,
    shared: &Arc<ProcessState>,
    settings: WorkerSettings,
    config: &Config,
    exit_tx: &Sender<Exit>,
    exit_waker: &Arc<Waker>,
) -> Result<(WorkerHandle, Sender<Vec<ListenerUpdate>>), ServerError> {
    let worker_poll = Poll::new().map_err(io_err("creating a poll"))?;
    let waker = Arc::new(Waker::new(worker_poll.registry(), worker::WAKER).map_err(io_err("creating a waker"))?);
    let (tx, rx) = mpsc::channel();
    let (routes_tx, routes_rx) = mpsc::channel();
    let metrics = Arc::new(WorkerMetrics::default());
    let (shared, own_metrics, cpu) = (Arc::clone(shared), Arc::clone(&metrics), config.cpu_affinity.then_some(id));
    let (exit_tx, exit_waker) = (exit_tx.clone(), Arc::clone(exit_waker));
    let thread = std::thread::Builder::new()
        .name(format!("sluice-w{id}"))
        .spawn(move || {
            let Ok(routes) = routes_rx.recv() else { return };
            let setup = WorkerSetup {
                id,
                workers,
                poll: worker_poll,
                routes,
                orders: rx,
                shared,
                metrics: own_metrics,
                settings,
                cpu,
            };
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
    Ok((WorkerHandle { thread: Some(thread), link: WorkerLink { tx, waker }, metrics }, routes_tx))
}
