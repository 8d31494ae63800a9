//! Binding a listen address's sockets (one per worker, in one
//! `SO_REUSEPORT` group) and adopting sockets this process did not bind (a
//! predecessor's, systemd's), with the errors either can end in. What a
//! route is and which addresses to bind is the route plan's
//! (`server/plan.rs`); this knows addresses, backlogs and socket options.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::Socket;

use crate::sys::handshakes;
use crate::sys::sockets;
use crate::sys::sockopt::Applied;

/// Why a listen address could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A listen address could not be bound.
    #[error("route {route}: cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The route (or `admin`).
        route: String,
        /// The address.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// Advice for the common causes.
        hint: &'static str,
    },
    /// Adopting or sharing a socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl ListenError {
    /// `route` cannot listen on `addr`, with advice for the common causes.
    pub fn bind(route: &str, addr: SocketAddr, source: io::Error) -> ListenError {
        ListenError::Bind { route: route.to_owned(), addr, hint: bind_hint(&source, addr), source }
    }
}

/// One listen address as it is bound: whose it is (for errors and logs),
/// where, and with which options.
#[derive(Clone, Copy, Debug)]
pub struct Listener<'a> {
    /// The route's name (the first of those that share the address).
    pub name: &'a str,
    /// The configured address (port 0: the kernel picks).
    pub addr: SocketAddr,
    /// The accept queue's length.
    pub backlog: u32,
    /// The listener's socket options.
    pub options: &'a Applied,
}

/// Binds one `SO_REUSEPORT` socket per worker for a new listen address,
/// not listening yet (`listen` makes them listen). Port 0: the first socket
/// gets a port, the others join it. Returns the bound address.
pub fn bind(route: &Listener<'_>, workers: usize) -> Result<(SocketAddr, Vec<Socket>), ListenError> {
    let mut addr = route.addr;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let s = sockets::reuseport_bound(addr, route.options)
            .map_err(|source| ListenError::bind(route.name, addr, source))?;
        addr = s.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| ListenError::Io {
            what: "reading a listener's address",
            source: std::io::Error::other("not an IP socket"),
        })?;
        sockets.push(s);
    }
    Ok((addr, sockets))
}

/// Makes the sockets `bind` returned listen: everything is bound by now, so
/// no client queues on a socket whose plan then fails.
pub fn listen_bound(route: &Listener<'_>, bound: Vec<Socket>) -> Result<Vec<TcpListener>, ListenError> {
    bound
        .into_iter()
        .map(|s| sockets::listen_bound(s, route.backlog, route.options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ListenError::bind(route.name, route.addr, source))
}

/// Adopts sockets a predecessor (or systemd) bound for `route`: one per
/// worker, cleared of any socket filter an earlier process's drain left on
/// it, with this configuration's listener options applied again; the
/// missing ones bound into the same `SO_REUSEPORT` group, or duplicates of
/// the given ones where the group cannot be joined
/// (`sockets::fill_workers`); the surplus returned to be emptied and closed.
#[allow(clippy::type_complexity)]
pub fn adopt(
    route: &Listener<'_>,
    given: Vec<(SocketAddr, std::net::TcpListener)>,
    workers: usize,
) -> Result<(SocketAddr, Vec<TcpListener>, Vec<TcpListener>), ListenError> {
    let addr = given[0].0;
    let mut sockets = Vec::with_capacity(workers);
    let mut surplus = Vec::new();
    for (i, (_, s)) in given.into_iter().enumerate() {
        if let Err(source) = s.set_nonblocking(true) {
            return Err(ListenError::Io { what: "adopting a listening socket", source });
        }
        let s = TcpListener::from_std(s);
        // A filter an earlier process left on it (a drain) would drop every SYN.
        if let Err(e) = handshakes::accept_new_handshakes(&s) {
            log::warn!("route {}: cannot take a socket filter off an adopted socket: {e}", route.name);
        }
        if i < workers {
            route.options.before_listen(&s);
            if route.options.transparent() {
                // A listener of a transparent route's key; its predecessor (or systemd) may not have set it.
                sockets::make_transparent(&s, addr).map_err(|source| ListenError::bind(route.name, addr, source))?;
            }
            // listen() again on a listening socket just sets its backlog.
            let backlog = i32::try_from(route.backlog).unwrap_or(i32::MAX);
            if let Err(e) = socket2::SockRef::from(&s).listen(backlog) {
                log::warn!("route {}: cannot set the backlog of an adopted socket: {e}", route.name);
            }
            route.options.after_listen(&s);
            sockets.push(s);
        } else {
            surplus.push(s);
        }
    }
    let given = sockets.len();
    let join = || sockets::reuseport_listener(addr, route.backlog, route.options);
    match sockets::fill_workers(addr, &mut sockets, workers, join) {
        Ok(sockets::Filled::Nothing) => {}
        Ok(sockets::Filled::Joined(n)) => {
            log::info!(
                "route {}: {given} socket(s) handed over, {n} more bound into their SO_REUSEPORT group",
                route.name
            )
        }
        Ok(sockets::Filled::Shared { count, joined, why }) => log::info!(
            "route {}: {given} socket(s) handed over{}; {count} worker(s) share a duplicate of one, as {why}",
            route.name,
            if joined > 0 { format!(", {joined} more bound into their SO_REUSEPORT group") } else { String::new() }
        ),
        Err(source) => return Err(ListenError::Io { what: "sharing an adopted listening socket", source }),
    }
    Ok((addr, sockets, surplus))
}

fn bind_hint(e: &std::io::Error, addr: SocketAddr) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: setcap cap_net_bind_service=+ep on the binary, \
             or listen on a port >= 1024)"
        }
        std::io::ErrorKind::AddrInUse => " (another process holds this address; `ss -ltnp` shows which)",
        std::io::ErrorKind::AddrNotAvailable => " (no interface on this machine has that address)",
        _ => "",
    }
}
