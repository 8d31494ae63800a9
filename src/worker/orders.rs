//! What the control thread says to a worker: the messages a worker takes
//! from its channel (`Order`, with the listener updates of start and
//! reload), the global settings it applies to new sessions, and what it is
//! started with. The state every thread shares is `process::ProcessState`.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::Poll;
use mio::net::TcpListener;

use crate::frontend::Frontend;
use crate::listen::ListenKey;
use crate::metrics::WorkerMetrics;
use crate::process::ProcessState;

/// A message from the control thread.
#[derive(Debug)]
pub enum Order {
    /// The routes to serve from now on (start and reload); listeners not
    /// named are closed, their sessions run to completion.
    Routes {
        /// Every route, with a socket for the new ones.
        routes: Vec<ListenerUpdate>,
        /// Global settings, possibly changed.
        settings: WorkerSettings,
    },
    /// Stop accepting (serving what is queued), let sessions finish until
    /// the deadline, then exit.
    Drain {
        /// When to cut whatever is still running.
        deadline: Instant,
        /// Listeners a successor took over: close them without accepting
        /// what is queued (the successor serves it; the socket lives on there).
        handed_over: Vec<ListenKey>,
    },
    /// Send a duplicate of every listening socket (for a successor), with
    /// whether a supervisor holds it too.
    Export(Sender<Vec<(ListenKey, SocketAddr, OwnedFd, bool)>>),
    /// Serve this surplus socket of listener `key` (a predecessor had more
    /// workers) beside the worker's own, for good.
    Adopt {
        /// Which listener's routes its clients get.
        key: ListenKey,
        /// The socket.
        socket: TcpListener,
    },
    /// Close this surplus socket of listener `key` (a predecessor had more
    /// workers) as the drain closes listeners: no new handshakes, those under
    /// way completed and everything queued served as that listener's, then
    /// the close (the kernel migrates what arrives after:
    /// `net.ipv4.tcp_migrate_req` is on).
    Retire {
        /// Which listener's routes its clients get.
        key: ListenKey,
        /// The socket.
        socket: TcpListener,
    },
    /// Answer at once: the control thread feeds systemd's watchdog only
    /// while every worker does (and says `READY=1` once all have taken
    /// their first routes, which came before this on the same channel).
    Ping(Ping),
    /// Close everything now and exit.
    Stop,
}

/// A liveness question from the control thread, and how to answer it.
#[derive(Debug)]
pub struct Ping {
    /// Which question this is.
    pub seq: u64,
    /// Where the answer goes: the worker's id and `seq`.
    pub reply: Sender<(usize, u64)>,
    /// Wakes the control thread's poll.
    pub waker: Arc<mio::Waker>,
}

impl Ping {
    /// Worker `id` answers.
    pub fn answer(self, id: usize) {
        if self.reply.send((id, self.seq)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// One listen address as a worker should serve it after an update.
#[derive(Debug)]
pub struct ListenerUpdate {
    /// Which listener.
    pub key: ListenKey,
    /// The routes new clients get.
    pub frontend: Arc<Frontend>,
    /// This worker's socket for an address that is new; `None` keeps the one it has.
    pub listener: Option<TcpListener>,
    /// A route of the address changed: re-apply the listener's options.
    pub changed: bool,
}

/// The global settings a worker applies to new sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The mode of routes without their own `relay` (after fallbacks).
    pub relay: crate::config::RelayMode,
    /// The global setting or a route relays with `uring`: the worker makes its ring.
    pub ring: bool,
    /// The global setting or a route relays with `sockmap`: the worker makes its sockhash.
    pub sockmap: bool,
    /// Bytes per pipe and per copy buffer.
    pub pipe_size: usize,
    /// Spare pipes (and buffers) the worker keeps.
    pub max_pooled_pipes: usize,
    /// Write an access line per finished session, in this format.
    pub access_log: Option<crate::config::LogFormat>,
    /// Also write one for each session open longer than this, every this long.
    pub access_flush: Option<Duration>,
}

/// What a worker is started with.
pub struct WorkerSetup {
    /// 0-based index, for logs.
    pub id: usize,
    /// How many workers there are.
    pub workers: usize,
    /// Its poll, created on the control thread so the waker exists first.
    pub poll: Poll,
    /// The routes to serve, each with this worker's listening socket.
    pub routes: Vec<ListenerUpdate>,
    /// Messages from the control thread.
    pub orders: Receiver<Order>,
    /// Cross-worker state.
    pub shared: Arc<ProcessState>,
    /// This worker's metrics (the control thread and the admin port hold clones).
    pub metrics: Arc<WorkerMetrics>,
    /// Global settings.
    pub settings: WorkerSettings,
    /// Pin the thread to the n-th allowed CPU.
    pub cpu: Option<usize>,
}
