//! Sockets as sluice makes them: `SO_REUSEPORT` listeners, non-blocking
//! upstream connects and how their outcome is read, and the abortive close
//! that passes a reset on; on `mptcp: true` routes, MPTCP sockets. The
//! options each socket gets come from `sockopt.rs`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::local_error::SourceError;
use crate::sys::sockopt::Applied;

/// Binds a non-blocking `SO_REUSEPORT` listener, one per worker per listen
/// address: the kernel spreads new connections over the workers' sockets.
/// `opts` are the route's socket options (buffers before `listen`, so accepted
/// sockets inherit them and the window scale fits; fast open and deferred
/// accept after).
pub fn reuseport_listener(addr: SocketAddr, backlog: u32, opts: &Applied) -> io::Result<TcpListener> {
    listen_bound(reuseport_bound(addr, opts)?, backlog, opts)
}

/// The first half of [`reuseport_listener`]: a non-blocking `SO_REUSEPORT`
/// socket bound to `addr`, with the options that go before `listen`, not
/// listening yet. No client can queue on it (the kernel joins a socket to
/// its address's `SO_REUSEPORT` group when it listens), so binding every
/// new address first and listening only once all are bound lets a failure
/// leave nobody queued.
/// On an `mptcp: true` route it is an `IPPROTO_MPTCP` socket (see [`mptcp_hint`]
/// for when the kernel refuses one).
pub fn reuseport_bound(addr: SocketAddr, opts: &Applied) -> io::Result<Socket> {
    let protocol = if opts.mptcp() { Protocol::MPTCP } else { Protocol::TCP };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(protocol))?;
    if addr.is_ipv6() {
        // `[::]` means IPv6 only; a route for IPv4 too lists `0.0.0.0` as well.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    opts.before_listen(&socket);
    if opts.transparent() {
        make_transparent(&socket, addr)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// IP_TRANSPARENT (IPV6_TRANSPARENT) on a listener of `addr` (`transparent:
/// true`), with an error that says what it needs.
pub fn make_transparent(socket: &impl std::os::fd::AsFd, addr: SocketAddr) -> io::Result<()> {
    crate::sys::capture::set_transparent(socket, addr.is_ipv6()).map_err(|e| {
        // Not `PermissionDenied`: the bind error's hint about ports below 1024 would not apply.
        io::Error::other(format!(
            "the kernel refused {} ({e}): transparent: true needs CAP_NET_ADMIN (run as root, or give the \
                 binary cap_net_admin)",
            if addr.is_ipv6() { "IPV6_TRANSPARENT" } else { "IP_TRANSPARENT" }
        ))
    })
}

/// The second half: `socket` (from [`reuseport_bound`]) listens, with the
/// options that go after `listen`.
pub fn listen_bound(socket: Socket, backlog: u32, opts: &Applied) -> io::Result<TcpListener> {
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    opts.after_listen(&socket);
    Ok(TcpListener::from_std(socket.into()))
}

/// How the workers beyond the sockets handed over (by systemd or a
/// predecessor) got theirs.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// One socket per worker was handed over: nothing to add.
    Nothing,
    /// This many were bound into the handed-over socket's `SO_REUSEPORT`
    /// group: the kernel spreads clients over every worker's own queue.
    Joined(usize),
    /// This many workers got a duplicate of a handed-over socket: they share
    /// its one queue (each is woken for each client, and one accept wins).
    /// `why` says why the group could not be joined (after `joined` could).
    Shared {
        /// Duplicates made.
        count: usize,
        /// Sockets that did join before the group refused one.
        joined: usize,
        /// Why not (all) joined.
        why: String,
    },
}

/// Gives `workers` workers a socket each for `addr`, where `sockets` (at
/// least one, at most `workers`) were handed over: the missing ones join
/// the first socket's `SO_REUSEPORT` group (`join` binds one) when it has
/// one sluice could join, else are duplicates (`dup`) of the handed-over
/// ones in turn. Joining needs `SO_REUSEPORT` on the socket, the same
/// `IPV6_V6ONLY` as sluice's own (on, for IPv6), and the same effective
/// user that made it (the kernel's rule: systemd's sockets are root's).
pub fn fill_workers(
    addr: SocketAddr,
    sockets: &mut Vec<TcpListener>,
    workers: usize,
    mut join: impl FnMut() -> io::Result<TcpListener>,
) -> io::Result<Filled> {
    let given = sockets.len();
    debug_assert!(given > 0, "fill_workers needs a socket to join or share");
    if given >= workers {
        return Ok(Filled::Nothing);
    }
    let first = SockRef::from(&sockets[0]);
    let mut why = if !first.reuse_port()? {
        Some("it has no SO_REUSEPORT (ReusePort=yes in a .socket unit sets it)".to_owned())
    } else if addr.is_ipv6() && !first.only_v6()? {
        Some("it takes IPv4 too (IPV6_V6ONLY off), and sluice's own [::] sockets are IPv6 only".to_owned())
    } else {
        None
    };
    let mut joined = 0;
    while why.is_none() && sockets.len() < workers {
        match join() {
            Ok(l) => {
                joined += 1;
                sockets.push(l);
            }
            Err(e) => {
                why = Some(format!(
                    "joining its SO_REUSEPORT group failed ({e}; the group takes sockets of the user that made it only)"
                ))
            }
        }
    }
    let Some(why) = why else { return Ok(Filled::Joined(joined)) };
    let mut count = 0;
    while sockets.len() < workers {
        let copy = SockRef::from(&sockets[count % given]).try_clone()?;
        sockets.push(TcpListener::from_std(copy.into()));
        count += 1;
    }
    Ok(Filled::Shared { count, joined, why })
}

/// What tells one socket from another whatever fd refers to it (its inode
/// in the kernel's socket filesystem: every duplicate, in this process or
/// another, has the same). `None` if it cannot be read.
pub fn identity(socket: &impl std::os::fd::AsFd) -> Option<u64> {
    nix::sys::stat::fstat(socket.as_fd()).ok().map(|st| st.st_ino)
}

/// Starts a non-blocking connect to `addr` with the route's options, from
/// its `source:` address if it has one (`source: client`: from `client`, the
/// session's client IP; a health check passes `None` and leaves the choice
/// to the kernel). The result arrives later as a writable event; read it
/// with [`connect_result`]. A source that cannot be used (other family, not
/// on this host, IP_TRANSPARENT refused) fails with a [`SourceError`]
/// inside the `io::Error`.
pub fn start_connect(addr: SocketAddr, opts: &Applied, client: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = upstream_socket(addr, opts, client)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// An upstream socket for `addr` with the route's options, bound to its
/// source if it has one.
fn upstream_socket(addr: SocketAddr, opts: &Applied, client: Option<IpAddr>) -> io::Result<Socket> {
    let client = client.filter(|_| opts.source_client());
    let source = client.or(opts.source());
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() != addr.is_ipv4()) {
        return Err(SourceError::Family { source: ip, upstream: addr }.into());
    }
    let socket = new_upstream_socket(addr, opts)?;
    opts.upstream(&socket);
    if let Some(ip) = client {
        // The client's address is not this host's: binding it needs IP_TRANSPARENT.
        crate::sys::capture::set_transparent(&socket, ip.is_ipv6())
            .map_err(|error| SourceError::Bind { source: ip, error })?;
    }
    if let Some(ip) = source {
        // Port 0 with IP_BIND_ADDRESS_NO_PORT (set by `upstream`): connect
        // picks the port, unique per destination, instead of bind, unique overall.
        socket.bind(&SocketAddr::new(ip, 0).into()).map_err(|error| SourceError::Bind { source: ip, error })?;
    }
    Ok(socket)
}

/// A new upstream socket for `addr`: an MPTCP one on an `mptcp: true`
/// route (it falls back to plain TCP by itself toward a server without
/// MPTCP), a TCP one if the kernel refuses MPTCP sockets (turned off with
/// `net.mptcp.enabled`, or not built in): the route warns once and its
/// connections go on as TCP ones.
fn new_upstream_socket(addr: SocketAddr, opts: &Applied) -> io::Result<Socket> {
    let (domain, ty) = (Domain::for_address(addr), Type::STREAM.nonblocking().cloexec());
    if opts.upstream_mptcp() {
        match Socket::new(domain, ty, Some(Protocol::MPTCP)) {
            Err(e) if mptcp_hint(&e).is_some() => opts.refuse(crate::sys::sockopt::Opt::Mptcp, &e),
            made => return made,
        }
    }
    Socket::new(domain, ty, Some(Protocol::TCP))
}

/// Advice when `e`, from making an `IPPROTO_MPTCP` socket, says this kernel
/// makes none: `ENOPROTOOPT` is `net.mptcp.enabled = 0`, `EPROTONOSUPPORT`
/// (or `EINVAL` from an old kernel) a kernel without MPTCP.
pub fn mptcp_hint(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        nix::libc::ENOPROTOOPT => Some(" (MPTCP is turned off: sysctl -w net.mptcp.enabled=1, or drop mptcp: true)"),
        nix::libc::EPROTONOSUPPORT | nix::libc::EINVAL => {
            Some(" (this kernel has no MPTCP: Linux 5.6+ built with CONFIG_MPTCP, or drop mptcp: true)")
        }
        _ => None,
    }
}

/// What a connecting socket's first event means.
#[derive(Debug)]
pub enum ConnectState {
    /// Connected: relay.
    Connected,
    /// Connected, and already reset by the peer: relay what it sent, then
    /// pass the reset on (the error has been consumed; reads will end in EOF).
    ConnectedThenReset,
    /// Spurious wake-up: keep waiting.
    Pending,
    /// The connect failed.
    Failed(io::Error),
}

/// Reads the outcome of a non-blocking connect. `clean_writable`: the event
/// that woke us was writable with no error and no hang-up, which already says
/// connected (a socket in SYN-SENT never polls writable; a failed one polls
/// EPOLLERR), so no syscall is needed; that saves two per proxied connection.
/// Otherwise writable does not mean connected: `SO_ERROR` first (set means
/// failed), then `getpeername` (`ENOTCONN` means still in progress).
pub fn connect_result(stream: &TcpStream, clean_writable: bool) -> ConnectState {
    if clean_writable {
        return ConnectState::Connected;
    }
    match stream.take_error() {
        // A refused handshake is ECONNREFUSED; a reset means the handshake
        // completed and the peer reset afterwards (say, a server that writes
        // "too many connections" and aborts). Its bytes are still queued.
        Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            return ConnectState::ConnectedThenReset;
        }
        Ok(Some(e)) | Err(e) => return ConnectState::Failed(e),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => ConnectState::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
        Err(e) => ConnectState::Failed(e),
    }
}

/// Makes the coming close send a reset instead of a FIN (`SO_LINGER` 0).
/// Only for passing an abort on: on a normal close it would truncate data.
pub fn reset_on_close(stream: &TcpStream) {
    // Best effort: if it fails the peer sees a FIN, which still ends the stream.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The kernel's `net.core.somaxconn`, if readable.
pub fn somaxconn() -> Option<i32> {
    crate::sys::sysctl::read("net/core/somaxconn")
}

#[cfg(test)]
mod tests;
