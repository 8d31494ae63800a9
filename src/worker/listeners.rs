//! A worker's listening sockets: taking route updates (start and reload),
//! accepting in fair batches, the connection limits (global and per route:
//! stop accepting; per client: refuse), running out of file descriptors,
//! and handing duplicates to a successor. Closing them is `closing.rs`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpListener;
use socket2::SockRef;

use super::orders::ListenerUpdate;
use super::{TimerKey, Worker, WorkerSettings, is_fd_exhaustion, token};
use crate::frontend::Frontend;
use crate::listen::ListenKey;
use crate::metrics::{Pause, WorkerCounters};
use crate::route::Route;
use crate::upstream::Balancer;

/// Accepts per listener per loop turn. Accepting a whole queue at once (thousands
/// after a burst) would hold up every established session's events for tens of
/// milliseconds; HAProxy's `tune.maxaccept` is 64 for the same reason.
const ACCEPT_BATCH: usize = 64;
/// How long a listener rests after accept hit the fd limit.
const FD_RETRY: Duration = Duration::from_millis(100);

/// How long a listener rests at a connection limit before it looks again
/// (it also looks whenever one of this worker's sessions closes).
const LIMIT_RETRY: Duration = Duration::from_millis(50);

/// One listen address's socket in this worker, and the routes it serves.
pub(super) struct Listener {
    pub(super) key: ListenKey,
    pub(super) socket: TcpListener,
    pub(super) frontend: Arc<Frontend>,
    /// One per route of the frontend, in its order (they keep the rotation).
    pub(super) balancers: Vec<Balancer>,
    /// Deregistered until a retry timer or a closing session resumes it.
    paused: bool,
    /// The last accept round stopped at `ACCEPT_BATCH` with clients maybe still queued.
    pub(super) backlog: bool,
    /// Closing (its route was removed, or it is a surplus socket): it no
    /// longer answers new handshakes and closes once `HANDSHAKE_WAIT` is over.
    pub(super) retiring: bool,
}

impl Worker {
    /// Serves exactly `routes` from now on: new addresses start listening,
    /// kept ones keep their socket (with its options re-applied if a route
    /// changed) and give new clients the new routes, the rest close (running
    /// sessions go on).
    pub(super) fn set_routes(&mut self, routes: Vec<ListenerUpdate>, settings: WorkerSettings, now: Instant) {
        if settings != self.settings {
            self.res.resize(settings.pipe_size, settings.max_pooled_pipes);
            self.settings = settings;
            self.ensure_ring();
            self.ensure_sockmap();
        }
        if self.draining {
            return; // the new sockets close here; nothing listens during a drain
        }
        let mut keep = Vec::with_capacity(routes.len());
        for u in routes {
            // (A worker may hold more than one socket of an address: see `adopt_extra`.)
            let existing: Vec<usize> =
                self.listeners.iter().filter(|(_, l)| l.key == u.key && !l.retiring).map(|(i, _)| i).collect();
            if let Some(socket) = u.listener {
                keep.extend(self.add_listener(u.key, socket, u.frontend));
                continue;
            }
            if existing.is_empty() {
                log::error!("worker {}: {} has no listener here", self.id, u.frontend.first().listen);
            }
            for li in existing {
                self.update_listener(li, &u.frontend, u.changed);
                keep.push(li);
            }
        }
        let gone: Vec<usize> =
            self.listeners.iter().filter(|(i, l)| !l.retiring && !keep.contains(i)).map(|(i, _)| i).collect();
        for li in gone {
            // Its queued clients are served on the removed route.
            self.retire_listener(li, now);
        }
        self.accept_backlogs(now);
    }

    /// Serves `socket` for listen key `key` from now on; its index, or `None`
    /// if it could not be registered (logged).
    pub(super) fn add_listener(
        &mut self,
        key: ListenKey,
        mut socket: TcpListener,
        frontend: Arc<Frontend>,
    ) -> Option<usize> {
        let li = self.listeners.vacant_key();
        let first = Arc::clone(frontend.first());
        let Some(tok) = token::listener(li) else {
            log::error!("worker {}: too many listeners; {} is not served here", self.id, first.listen);
            return None;
        };
        if let Err(e) = self.poll.registry().register(&mut socket, tok, Interest::READABLE) {
            log::error!("worker {}: cannot register the listener of route {}: {e}", self.id, first.name);
            return None;
        }
        let balancers = frontend.routes.iter().map(|r| balancer(r)).collect();
        self.listeners.insert(Listener {
            key,
            socket,
            frontend,
            balancers,
            paused: false,
            backlog: true, // accept whatever is queued already
            retiring: false,
        });
        Some(li)
    }

    /// Gives listener `li`'s new clients `frontend`'s routes (a reload), with
    /// the listener options re-applied if a route `changed`.
    fn update_listener(&mut self, li: usize, frontend: &Arc<Frontend>, changed: bool) {
        let l = &mut self.listeners[li];
        if Arc::ptr_eq(&l.frontend, frontend) {
            return;
        }
        // A route that is the same Arc keeps its balancer (and its rotation).
        let old: Vec<(Arc<Route>, Balancer)> =
            l.frontend.routes.iter().cloned().zip(std::mem::take(&mut l.balancers)).collect();
        l.balancers = frontend
            .routes
            .iter()
            .map(|r| old.iter().find(|(o, _)| Arc::ptr_eq(o, r)).map_or_else(|| balancer(r), |(_, b)| b.clone()))
            .collect();
        l.frontend = Arc::clone(frontend);
        if changed {
            let r = l.frontend.first();
            r.socket.before_listen(&l.socket);
            // listen() again on a listening socket just updates its backlog.
            let backlog = i32::try_from(r.backlog).unwrap_or(i32::MAX);
            if let Err(e) = SockRef::from(&l.socket).listen(backlog) {
                log::warn!("route {}: cannot change the backlog: {e}", r.name);
            }
            r.socket.after_listen(&l.socket);
        }
    }

    /// Serves a surplus socket of listen key `key` (a predecessor had more
    /// workers) for good, beside this worker's own: closing it would reset the
    /// clients whose handshake is in flight to it, unless the kernel migrates
    /// them (`net.ipv4.tcp_migrate_req`).
    pub(super) fn adopt_extra(&mut self, key: ListenKey, socket: TcpListener, now: Instant) {
        let Some(frontend) = self.listeners.iter().find(|(_, l)| l.key == key).map(|(_, l)| Arc::clone(&l.frontend))
        else {
            log::warn!("worker {}: a surplus socket of {key:?} has no listener here; closing it", self.id);
            return;
        };
        self.add_listener(key, socket, frontend);
        self.accept_backlogs(now);
    }

    /// A duplicate of every listening socket, with its key, bound address
    /// and whether a supervisor holds it too (for a successor; ours stay
    /// open and keep accepting). Sockets already closing are not offered.
    pub(super) fn export_listeners(&self) -> Vec<(ListenKey, SocketAddr, OwnedFd, bool)> {
        self.listeners
            .iter()
            .filter(|(_, l)| !l.retiring)
            .filter_map(|(_, l)| {
                let addr = l.socket.local_addr().ok()?;
                let fd = l.socket.as_fd().try_clone_to_owned().ok()?;
                Some((l.key.clone(), addr, fd, self.shared.is_supervised(&l.socket)))
            })
            .collect()
    }

    /// Accepts on listeners whose last round stopped at the batch limit.
    pub(super) fn accept_backlogs(&mut self, now: Instant) {
        let pending: Vec<usize> = self.listeners.iter().filter(|(_, l)| l.backlog).map(|(i, _)| i).collect();
        for li in pending {
            self.accept(li, now);
        }
    }

    /// Accepts up to `ACCEPT_BATCH` clients on listener `li`.
    pub(super) fn accept(&mut self, li: usize, now: Instant) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if l.paused {
            return;
        }
        l.backlog = false;
        for _ in 0..ACCEPT_BATCH {
            // At a limit we stop accepting: clients wait in the kernel's
            // queue instead of being accepted and dropped.
            if self.shared.active.load(Ordering::Relaxed) >= self.shared.max_connections.load(Ordering::Relaxed) {
                self.metrics.count_pause(self.listeners[li].frontend.first().metric_id, Pause::Global);
                self.pause(li, LIMIT_RETRY, now);
                return;
            }
            if self.listeners[li].frontend.at_limit() {
                self.metrics.count_pause(self.listeners[li].frontend.first().metric_id, Pause::Route);
                self.pause(li, LIMIT_RETRY, now);
                return;
            }
            match self.listeners[li].socket.accept() {
                Ok((stream, addr)) => self.start_session(li, stream, addr, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    self.out_of_fds(li, &e, now);
                    return;
                }
                Err(e) => {
                    let listen = self.listeners[li].frontend.first().listen;
                    self.warn(format!("accept on {listen} failed: {e}; retrying shortly"));
                    self.pause(li, FD_RETRY, now);
                    return;
                }
            }
        }
        // More may be queued and no new edge will say so: come back after
        // the sessions that already have events have had their turn.
        self.listeners[li].backlog = true;
    }

    /// accept hit the fd limit. The connection stays queued and an
    /// edge-triggered loop would never hear of it again, so: spend the
    /// reserve fd to take one connection off the queue and close it (the
    /// client learns at once), and look again after a pause.
    fn out_of_fds(&mut self, li: usize, e: &io::Error, now: Instant) {
        WorkerCounters::inc(&self.metrics.counters.accept_fd_exhausted);
        let socket = &self.listeners[li].socket;
        self.reserve.spend(|| drop(socket.accept()));
        self.warn(format!(
            "out of file descriptors ({e}) with {} sessions: shedding one connection and pausing accept for {FD_RETRY:?}",
            self.sessions.len(),
        ));
        self.pause(li, FD_RETRY, now);
    }

    /// Stops accepting on `li` (out of the poll: no wake-ups while paused)
    /// until `retry` has passed or a session closes.
    fn pause(&mut self, li: usize, retry: Duration, now: Instant) {
        let l = &mut self.listeners[li];
        if !l.paused {
            l.paused = true;
            let _ = self.poll.registry().deregister(&mut l.socket);
            self.timers.schedule(now + retry, TimerKey::Accept(li));
        }
    }

    /// Takes a paused listener back into the poll and accepts what waits.
    pub(super) fn resume(&mut self, li: usize, now: Instant) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if !l.paused {
            return;
        }
        l.paused = false;
        let tok = token::listener(li).expect("a registered listener's key has a token");
        if let Err(e) = self.poll.registry().register(&mut l.socket, tok, Interest::READABLE) {
            log::error!("worker {}: cannot resume listening on {}: {e}", self.id, l.frontend.first().listen);
            return;
        }
        self.accept(li, now);
    }

    /// Resumes every paused listener (a session closed: there may be room).
    pub(super) fn resume_all(&mut self, now: Instant) {
        let paused: Vec<usize> = self.listeners.iter().filter(|(_, l)| l.paused).map(|(i, _)| i).collect();
        for li in paused {
            self.resume(li, now);
        }
    }
}

fn balancer(route: &Route) -> Balancer {
    Balancer::new(route.pool().balance, route.upstreams.upstreams.iter().map(|u| u.weight))
}
