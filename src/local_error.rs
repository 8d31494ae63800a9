//! Telling local failures from upstream failures. Opening an upstream
//! connection can fail because of this host: out of file descriptors,
//! kernel memory or epoll watches, out of local ports toward that address,
//! or a `source:` address it cannot use. None of that says anything about
//! the upstream, so none of it may count against it (outlier detection
//! would eject healthy upstreams exactly when the proxy is overloaded).
//!
//! `classify` sorts an error from creating, configuring, binding,
//! registering or connecting an upstream socket; `advice` gives the cause
//! and the fix for the operator's warning. What a worker does with a local
//! error (reset the client, count it, leave the upstream alone) is in
//! `worker/connect.rs`; the health checker skips its verdict.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::libc;

/// Why this host, not the upstream, could not open a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalCause {
    /// `EMFILE`/`ENFILE`: the process's (or the system's) file descriptors.
    Fds,
    /// `ENOMEM`/`ENOBUFS`: kernel memory for sockets; `ENOSPC`: the epoll watch limit.
    Memory,
    /// `EADDRNOTAVAIL`/`EADDRINUSE`: no free local port toward that upstream address.
    Ports,
    /// The route's `source:` address: not on this host, or not of the upstream's family.
    Source,
}

impl LocalCause {
    /// Every cause, in a fixed order (the counter index).
    pub const ALL: [LocalCause; 4] = [LocalCause::Fds, LocalCause::Memory, LocalCause::Ports, LocalCause::Source];

    /// A stable lowercase name for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalCause::Fds => "fds",
            LocalCause::Memory => "memory",
            LocalCause::Ports => "ports",
            LocalCause::Source => "source",
        }
    }
}

impl fmt::Display for LocalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `source:` address that could not be used for one upstream connection.
/// `sockets::start_connect` returns it inside an `io::Error`, so a bind
/// failure (`EADDRNOTAVAIL`: not an address of this host) is not mistaken
/// for a connect failure with the same errno (no free port).
#[derive(Debug)]
pub enum SourceError {
    /// The upstream is of the other address family (a host name resolved so).
    Family {
        /// The route's `source:`.
        source: IpAddr,
        /// The upstream address.
        upstream: SocketAddr,
    },
    /// `bind` refused the address.
    Bind {
        /// The route's `source:`.
        source: IpAddr,
        /// What the kernel said.
        error: io::Error,
    },
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Family { source, upstream } => write!(
                f,
                "source address {source} is {} and upstream {upstream} is {}",
                family(*source),
                family(upstream.ip())
            ),
            SourceError::Bind { source, error } => write!(f, "cannot bind source address {source}: {error}"),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::Family { .. } => None,
            SourceError::Bind { error, .. } => Some(error),
        }
    }
}

impl From<SourceError> for io::Error {
    fn from(e: SourceError) -> io::Error {
        let kind = match &e {
            SourceError::Family { .. } => io::ErrorKind::InvalidInput,
            SourceError::Bind { error, .. } => error.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// The cause if `e`, from opening an upstream connection (socket, options,
/// bind, epoll registration, connect), is this host's failure; `None` if
/// it may be the upstream's (refused, unreachable, timed out, ...).
pub fn classify(e: &io::Error) -> Option<LocalCause> {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<SourceError>()) {
        Some(SourceError::Family { .. }) => Some(LocalCause::Source),
        Some(SourceError::Bind { error, .. }) => Some(match errno_cause(error) {
            // Port 0 bound without IP_BIND_ADDRESS_NO_PORT (a kernel that refused it):
            // bind itself picks the port, and can run out.
            _ if error.raw_os_error() == Some(libc::EADDRINUSE) => LocalCause::Ports,
            Some(c @ (LocalCause::Fds | LocalCause::Memory)) => c,
            // EADDRNOTAVAIL at bind: the address is not on this host; anything else: unusable too.
            _ => LocalCause::Source,
        }),
        None => errno_cause(e),
    }
}

fn errno_cause(e: &io::Error) -> Option<LocalCause> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some(LocalCause::Fds),
        // ENOSPC only comes from epoll_ctl here (fs.epoll.max_user_watches).
        libc::ENOMEM | libc::ENOBUFS | libc::ENOSPC => Some(LocalCause::Memory),
        // At connect: every port of ip_local_port_range is in use toward this address.
        libc::EADDRNOTAVAIL | libc::EADDRINUSE => Some(LocalCause::Ports),
        _ => None,
    }
}

/// The cause and its fix, for the warning (`e` classified as `cause`,
/// connecting to `upstream` from the route's `source`).
pub fn advice(e: &io::Error, cause: LocalCause, upstream: SocketAddr, source: Option<IpAddr>) -> String {
    let (errno, source) = match e.get_ref().and_then(|inner| inner.downcast_ref::<SourceError>()) {
        // The address tried (a `source: client` route's is the client's, not the route's).
        Some(SourceError::Bind { error, source: tried }) => (error.raw_os_error(), Some(*tried)),
        Some(SourceError::Family { source: tried, .. }) => (e.raw_os_error(), Some(*tried)),
        _ => (e.raw_os_error(), source),
    };
    match (cause, source) {
        (LocalCause::Fds, _) if errno == Some(libc::ENFILE) => {
            "the system is out of file descriptors: raise fs.file-max or lower max_connections".to_owned()
        }
        (LocalCause::Fds, _) => "out of file descriptors: raise the open-file limit (LimitNOFILE=, ulimit -n) \
                                 or lower max_connections"
            .to_owned(),
        (LocalCause::Memory, _) if errno == Some(libc::ENOSPC) => {
            "the epoll watch limit is reached: raise fs.epoll.max_user_watches or lower max_connections".to_owned()
        }
        (LocalCause::Memory, _) => "the kernel is short of socket memory: lower max_connections, or check \
                                    net.ipv4.tcp_mem and the machine's free memory"
            .to_owned(),
        (LocalCause::Ports, Some(s)) => format!(
            "no free local port from {s} to {upstream}: widen net.ipv4.ip_local_port_range, set \
             net.ipv4.tcp_tw_reuse=1, or spread the sessions over more upstream or source addresses"
        ),
        (LocalCause::Ports, None) => format!(
            "no free local port toward {upstream}: widen net.ipv4.ip_local_port_range, set \
             net.ipv4.tcp_tw_reuse=1, or spread the sessions over more upstream addresses (or, with `source:`, \
             over more source addresses: one per route or instance)"
        ),
        (LocalCause::Source, Some(s)) if s.is_ipv4() != upstream.is_ipv4() => format!(
            "`source: {s}` cannot reach an {} upstream: give the route a source of that family, or an upstream \
             name that resolves to {} addresses only",
            family(upstream.ip()),
            family(s)
        ),
        (LocalCause::Source, Some(s)) if errno == Some(libc::EPERM) => format!(
            "binding {s}, an address this host does not have, needs IP_TRANSPARENT (`source: client`): run with \
             CAP_NET_ADMIN, or change `source:`"
        ),
        (LocalCause::Source, Some(s)) if errno == Some(libc::EADDRNOTAVAIL) => {
            format!("{s} is not an address of this host: add it to an interface, or change `source:`")
        }
        (LocalCause::Source, s) => {
            format!(
                "the source address {} cannot be used: change `source:`",
                s.map_or("?".to_owned(), |s| s.to_string())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    const UP: &str = "10.0.0.1:80";

    #[test]
    fn resource_errnos_are_local() {
        for (code, cause) in [
            (libc::EMFILE, LocalCause::Fds),
            (libc::ENFILE, LocalCause::Fds),
            (libc::ENOMEM, LocalCause::Memory),
            (libc::ENOBUFS, LocalCause::Memory),
            (libc::ENOSPC, LocalCause::Memory),
            (libc::EADDRNOTAVAIL, LocalCause::Ports),
            (libc::EADDRINUSE, LocalCause::Ports),
        ] {
            assert_eq!(classify(&os(code)), Some(cause), "{}", os(code));
        }
    }

    #[test]
    fn what_the_upstream_or_the_network_says_is_not_local() {
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ECONNRESET] {
            assert_eq!(classify(&os(code)), None, "{}", os(code));
        }
        assert_eq!(classify(&io::Error::new(io::ErrorKind::TimedOut, "no answer within 3s")), None);
    }

    #[test]
    fn a_source_that_cannot_be_bound_is_local_and_not_a_port_shortage() {
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        let bind = |code| io::Error::from(SourceError::Bind { source, error: os(code) });
        assert_eq!(classify(&bind(libc::EADDRNOTAVAIL)), Some(LocalCause::Source));
        assert_eq!(classify(&bind(libc::EACCES)), Some(LocalCause::Source));
        assert_eq!(classify(&bind(libc::EADDRINUSE)), Some(LocalCause::Ports));
        assert_eq!(classify(&bind(libc::ENOBUFS)), Some(LocalCause::Memory));
        let e = bind(libc::EADDRNOTAVAIL);
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(e.to_string().starts_with("cannot bind source address 192.0.2.7: "), "{e}");
        let a = advice(&e, LocalCause::Source, UP.parse().unwrap(), Some(source));
        assert!(a.contains("192.0.2.7 is not an address of this host"), "{a}");
    }

    #[test]
    fn source_client_advice_names_the_clients_address_and_ip_transparent() {
        // A `source: client` route has no source of its own: the address is the one bind tried.
        let client: IpAddr = "192.0.2.77".parse().unwrap();
        let e = io::Error::from(SourceError::Bind { source: client, error: os(libc::EPERM) });
        let a = advice(&e, classify(&e).unwrap(), UP.parse().unwrap(), None);
        assert!(a.contains("binding 192.0.2.77") && a.contains("IP_TRANSPARENT"), "{a}");
        assert!(!a.contains('?'), "{a}");
    }

    #[test]
    fn a_family_mismatch_is_local_and_says_which_family() {
        let source: IpAddr = "10.9.9.9".parse().unwrap();
        let upstream: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let e = io::Error::from(SourceError::Family { source, upstream });
        assert_eq!(classify(&e), Some(LocalCause::Source));
        assert_eq!(e.to_string(), "source address 10.9.9.9 is IPv4 and upstream [fd00::1]:80 is IPv6");
        let a = advice(&e, LocalCause::Source, upstream, Some(source));
        assert!(a.contains("cannot reach an IPv6 upstream"), "{a}");
    }

    #[test]
    fn advice_names_the_fix() {
        let up: SocketAddr = UP.parse().unwrap();
        let src: IpAddr = "10.0.0.9".parse().unwrap();
        let say = |code, source| advice(&os(code), classify(&os(code)).unwrap(), up, source);
        assert!(say(libc::EMFILE, None).contains("LimitNOFILE="));
        assert!(say(libc::EMFILE, None).starts_with("out of file descriptors"));
        assert!(say(libc::ENFILE, None).contains("fs.file-max"));
        assert!(say(libc::ENOSPC, None).contains("fs.epoll.max_user_watches"));
        assert!(say(libc::ENOBUFS, None).contains("socket memory"));
        let ports = say(libc::EADDRNOTAVAIL, None);
        assert!(ports.contains("toward 10.0.0.1:80") && ports.contains("ip_local_port_range"), "{ports}");
        let ports = say(libc::EADDRNOTAVAIL, Some(src));
        assert!(ports.contains("from 10.0.0.9 to 10.0.0.1:80"), "{ports}");
    }
}
