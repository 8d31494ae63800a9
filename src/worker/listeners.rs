//! A worker's listening sockets: taking route updates (start and reload),
//! accepting in fair batches, the connection limits (global and per route:
//! stop accepting; per client: refuse), running out of file descriptors,
//! and the drain's last accepts (everyone already queued is served, then
//! the listeners close).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::{TcpListener, TcpStream};
use socket2::SockRef;

use super::{TimerKey, Worker, WorkerSettings, is_fd_exhaustion, token};
use crate::metrics::{CloseReason, WorkerCounters};
use crate::reload::{ListenKey, RouteUpdate};
use crate::route::Route;
use crate::session::{End, Ending, HeaderRead, Session, Side};
use crate::sockets;
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

/// One route's listening socket in this worker.
pub(super) struct Listener {
    key: ListenKey,
    socket: TcpListener,
    pub(super) route: Arc<Route>,
    pub(super) balancer: Balancer,
    /// Deregistered until a retry timer or a closing session resumes it.
    paused: bool,
    /// The last accept round stopped at `ACCEPT_BATCH` with clients maybe still queued.
    pub(super) backlog: bool,
}

impl Worker {
    /// Serves exactly `routes` from now on: new ones start listening,
    /// changed ones keep their socket (with its options re-applied) and give
    /// new sessions the new route, the rest close (running sessions go on).
    pub(super) fn set_routes(&mut self, routes: Vec<RouteUpdate>, settings: WorkerSettings, now: Instant) {
        if settings != self.settings {
            self.res.resize(settings.pipe_size, settings.max_pooled_pipes);
            self.settings = settings;
        }
        if self.draining {
            return; // the new sockets close here; nothing listens during a drain
        }
        let mut keep = Vec::with_capacity(routes.len());
        for u in routes {
            let existing = self.listeners.iter().find(|(_, l)| l.key == u.key).map(|(i, _)| i);
            match (u.listener, existing) {
                (Some(mut socket), _) => {
                    let li = self.listeners.vacant_key();
                    let Some(tok) = token::listener(li) else {
                        log::error!(
                            "worker {}: too many listeners; route {} is not served here",
                            self.id,
                            u.route.name
                        );
                        continue;
                    };
                    if let Err(e) = self.poll.registry().register(&mut socket, tok, Interest::READABLE) {
                        log::error!("worker {}: cannot register the listener of route {}: {e}", self.id, u.route.name);
                        continue;
                    }
                    let balancer = balancer(&u.route);
                    self.listeners.insert(Listener {
                        key: u.key,
                        socket,
                        route: u.route,
                        balancer,
                        paused: false,
                        backlog: true, // accept whatever is queued already
                    });
                    keep.push(li);
                }
                (None, Some(li)) => {
                    let l = &mut self.listeners[li];
                    if !Arc::ptr_eq(&l.route, &u.route) {
                        l.balancer = balancer(&u.route);
                        l.route = u.route;
                        if u.changed {
                            let r = &l.route;
                            r.socket.before_listen(&l.socket);
                            // listen() again on a listening socket just updates its backlog.
                            let backlog = i32::try_from(r.backlog).unwrap_or(i32::MAX);
                            if let Err(e) = SockRef::from(&l.socket).listen(backlog) {
                                log::warn!("route {}: cannot change the backlog: {e}", r.name);
                            }
                            r.socket.after_listen(&l.socket);
                        }
                    }
                    keep.push(li);
                }
                (None, None) => log::error!("worker {}: route {} has no listener here", self.id, u.route.name),
            }
        }
        let gone: Vec<usize> = self.listeners.iter().map(|(i, _)| i).filter(|i| !keep.contains(i)).collect();
        for li in gone {
            let l = self.listeners.remove(li);
            log::debug!("worker {}: route {} stops listening on {}", self.id, l.route.name, l.route.listen);
            // Dropping the socket closes it (and takes it out of the poll).
        }
        self.accept_backlogs(now);
    }

    /// The drain's last accepts: every client already in a listener's queue
    /// is accepted and served (past the connection limits: they were let in
    /// by the kernel, and closing the listener would reset them), then the
    /// listeners close and new clients are refused. A client whose
    /// handshake completes between the last accept and the close is still
    /// reset by the kernel; after `drain_grace` a load balancer sends none.
    pub(super) fn stop_accepting(&mut self, now: Instant) {
        let keys: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        let mut served = 0;
        for li in keys {
            loop {
                match self.listeners[li].socket.accept() {
                    Ok((stream, addr)) => {
                        served += 1;
                        self.start_session(li, stream, addr, now);
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        let listen = self.listeners[li].route.listen;
                        log::warn!("worker {}: closing {listen}: accepting its queue failed: {e}", self.id);
                        break;
                    }
                }
            }
            // Dropping the socket closes it (and takes it out of the poll).
            let l = self.listeners.remove(li);
            log::debug!("worker {}: route {} stops listening on {}", self.id, l.route.name, l.route.listen);
        }
        if served > 0 {
            log::info!("worker {}: served {served} clients still queued when accepting stopped", self.id);
        }
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
                WorkerCounters::inc(&self.metrics.counters.accept_paused_global);
                self.pause(li, LIMIT_RETRY, now);
                return;
            }
            if self.listeners[li].route.at_limit() {
                WorkerCounters::inc(&self.metrics.counters.accept_paused_route);
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
                    let listen = self.listeners[li].route.listen;
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
            log::error!("worker {}: cannot resume listening for route {}: {e}", self.id, l.route.name);
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

    fn start_session(&mut self, li: usize, client: TcpStream, peer: SocketAddr, now: Instant) {
        WorkerCounters::inc(&self.metrics.counters.accepted);
        let route = Arc::clone(&self.listeners[li].route);
        self.metrics.stats().route(route.metric_id).accepted += 1;
        let accept_header = route.pool().accept_proxy_protocol;
        // Without a PROXY header the peer is the client: check it before anything is allocated.
        if !accept_header {
            if let Some(reason) = admission(&route, peer) {
                let close = self.refuse(&route, peer, reason);
                // A reset tells the client at once and leaves no TIME_WAIT here.
                sockets::reset_on_close(&client);
                // No session was made: its close is counted here.
                self.metrics.stats().route(route.metric_id).closed[close as usize] += 1;
                return; // dropping the socket closes it
            }
        }
        route.socket.client(&client);
        self.shared.active.fetch_add(1, Ordering::Relaxed);
        route.state.active.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id;
        self.next_id += self.id_stride;
        let session = Session::new(id, route, client, peer, li, self.settings.relay, now);
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let s = entry.insert(session);
        s.client_admitted = !accept_header && s.route.max_connections_per_client.is_some();
        let registered = match token::session(key, Side::Client, 0) {
            Some(tok) => self.poll.registry().register(&mut s.client, tok, Interest::READABLE | Interest::WRITABLE),
            None => Err(io::Error::other("too many sessions in this worker")),
        };
        if let Err(e) = registered {
            // The poll is this host's (epoll watches, memory): a local error, no upstream involved.
            if let Some(cause) = crate::local_error::classify(&e) {
                WorkerCounters::inc(&self.metrics.counters.local_errors[cause as usize]);
            }
            self.warn(format!("cannot register client {peer}: {e}; resetting it"));
            self.close(key, End { reason: CloseReason::LocalError, ending: Ending::RESET_CLIENT }, now);
            return;
        }
        log::trace!("session {}: client {peer} on route {}", self.sessions[key].id, self.sessions[key].route.name);
        if accept_header {
            // The header timeout runs from now; the header is read when the client is readable.
            let (deadline, _) = self.sessions[key].due(self.draining);
            self.arm(key, deadline);
        } else {
            self.connect(key, String::new(), now);
        }
    }

    /// The client's PROXY header may have arrived: read it, then admit the
    /// client it names (access list, per-client limit) and connect.
    pub(super) fn on_header(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        match s.read_proxy_header() {
            HeaderRead::Wait => {}
            HeaderRead::Invalid(why) => {
                WorkerCounters::inc(&self.metrics.counters.bad_proxy_header);
                log::debug!("route {}: client {}: bad PROXY header: {why}", s.route.name, s.peer_addr);
                self.close(key, End { reason: CloseReason::BadProxyHeader, ending: Ending::RESET_CLIENT }, now);
            }
            HeaderRead::Done(_) => {
                let route = Arc::clone(&s.route);
                let client = s.client_addr;
                log::trace!("session {}: PROXY header from {} says client {client}", s.id, s.peer_addr);
                if let Some(reason) = admission(&route, client) {
                    let close = self.refuse(&route, client, reason);
                    self.close(key, End { reason: close, ending: Ending::RESET_CLIENT }, now);
                    return;
                }
                self.sessions[key].client_admitted = route.max_connections_per_client.is_some();
                self.connect(key, String::new(), now);
            }
        }
    }

    /// Counts (worker-wide) and logs a refused client, and says which close
    /// reason it is (the caller resets it: a reset tells the client at once
    /// and leaves no TIME_WAIT here).
    fn refuse(&self, route: &Route, client: SocketAddr, reason: Refused) -> CloseReason {
        let (counter, close) = match reason {
            Refused::Acl(_) => (&self.metrics.counters.refused_acl, CloseReason::Denied),
            Refused::ClientLimit(_) => (&self.metrics.counters.refused_client_limit, CloseReason::Refused),
        };
        WorkerCounters::inc(counter);
        match reason {
            Refused::Acl(why) => log::debug!("route {}: refused {client}: {why}", route.name),
            Refused::ClientLimit(limit) => log::debug!(
                "route {}: refused {client}: it already has {limit} sessions (max_connections_per_client)",
                route.name
            ),
        }
        close
    }
}

/// Why a client may not have a session.
#[derive(Clone, Copy, Debug)]
enum Refused {
    Acl(crate::acl::Refusal),
    ClientLimit(usize),
}

/// Checks the route's access list and per-client limit for `client`
/// (counting it in the limit if admitted).
fn admission(route: &Route, client: SocketAddr) -> Option<Refused> {
    let acl = &route.pool().acl;
    if !acl.is_open() {
        if let Some(why) = acl.check(client.ip()) {
            return Some(Refused::Acl(why));
        }
    }
    match route.max_connections_per_client {
        Some(limit) if !route.state.admit_client(client.ip(), limit) => Some(Refused::ClientLimit(limit)),
        _ => None,
    }
}

fn balancer(route: &Route) -> Balancer {
    Balancer::new(route.pool().balance, route.upstreams.upstreams.iter().map(|u| u.weight))
}
