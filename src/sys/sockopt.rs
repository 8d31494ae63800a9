//! TCP socket options: one small function per option, and `Applied`, a
//! route's options ready to put on its three kinds of socket.
//!
//! Where each option goes:
//! - listener, before `listen`: `reuse_address`, `send_buffer`/`recv_buffer`
//!   (accepted sockets inherit them, and the window scale is chosen at the
//!   handshake), `congestion` (inherited by accepted sockets);
//! - listener, after `listen`: `fastopen` (queue length), `defer_accept`;
//! - accepted client socket: `nodelay`, `keepalive`, `user_timeout`, `notsent_lowat`;
//! - upstream socket, before `connect`: all of the per-connection options
//!   plus the buffers, `congestion` and `mark`; with a route `source:`,
//!   `IP_BIND_ADDRESS_NO_PORT` before the socket is bound to it.
//!
//! A refused option never fails a connection: the route warns once, names
//! the option and the kernel's reason, and stops asking for it.
//!
//! On `mptcp: true` routes the sockets are `IPPROTO_MPTCP` ones (Linux
//! 6.18 measured): every option above is taken (the MPTCP socket passes it
//! on to its subflows) except `TCP_USER_TIMEOUT`, refused with
//! `ENOPROTOOPT` and so warned about once; `TCP_INFO` is answered too. A
//! socket filter cannot be put on an MPTCP listener
//! (`EOPNOTSUPP`, see `handshakes.rs`).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::{Keepalive, SocketOptions};

/// The options, for messages and the once-only bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Opt {
    /// TCP_NODELAY.
    Nodelay,
    /// SO_KEEPALIVE + TCP_KEEPIDLE/KEEPINTVL/KEEPCNT.
    Keepalive,
    /// TCP_USER_TIMEOUT.
    UserTimeout,
    /// SO_SNDBUF.
    SendBuffer,
    /// SO_RCVBUF.
    RecvBuffer,
    /// TCP_CONGESTION.
    Congestion,
    /// TCP_FASTOPEN.
    FastOpen,
    /// TCP_NOTSENT_LOWAT.
    NotSentLowat,
    /// TCP_DEFER_ACCEPT.
    DeferAccept,
    /// SO_MARK.
    Mark,
    /// SO_REUSEADDR.
    ReuseAddress,
    /// IP_BIND_ADDRESS_NO_PORT.
    BindAddressNoPort,
    /// IPPROTO_MPTCP for upstream sockets (`mptcp: true`).
    Mptcp,
}

impl Opt {
    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Opt::Nodelay => "TCP_NODELAY",
            Opt::Keepalive => "SO_KEEPALIVE",
            Opt::UserTimeout => "TCP_USER_TIMEOUT",
            Opt::SendBuffer => "SO_SNDBUF",
            Opt::RecvBuffer => "SO_RCVBUF",
            Opt::Congestion => "TCP_CONGESTION",
            Opt::FastOpen => "TCP_FASTOPEN",
            Opt::NotSentLowat => "TCP_NOTSENT_LOWAT",
            Opt::DeferAccept => "TCP_DEFER_ACCEPT",
            Opt::Mark => "SO_MARK",
            Opt::ReuseAddress => "SO_REUSEADDR",
            Opt::BindAddressNoPort => "IP_BIND_ADDRESS_NO_PORT",
            Opt::Mptcp => "IPPROTO_MPTCP",
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

// ------------------------------------------------------------ one per option

/// TCP_NODELAY: send small segments at once instead of waiting for Nagle.
pub fn set_nodelay(s: &impl AsFd, on: bool) -> io::Result<()> {
    SockRef::from(s).set_tcp_nodelay(on)
}

/// SO_KEEPALIVE and its timings, or keepalive off.
pub fn set_keepalive(s: &impl AsFd, k: Keepalive) -> io::Result<()> {
    match k {
        Keepalive::Off => SockRef::from(s).set_keepalive(false),
        Keepalive::On { idle, interval, count } => SockRef::from(s)
            .set_tcp_keepalive(&TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(count)),
    }
}

/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the
/// kernel gives up on the connection. Zero turns it off.
pub fn set_user_timeout(s: &impl AsFd, d: Duration) -> io::Result<()> {
    SockRef::from(s).set_tcp_user_timeout(if d.is_zero() { None } else { Some(d) })
}

/// SO_SNDBUF (the kernel doubles it for bookkeeping and caps it at `net.core.wmem_max`).
pub fn set_send_buffer(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    SockRef::from(s).set_send_buffer_size(bytes)
}

/// SO_RCVBUF (doubled, capped at `net.core.rmem_max`).
pub fn set_recv_buffer(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    SockRef::from(s).set_recv_buffer_size(bytes)
}

/// TCP_CONGESTION: the congestion control algorithm by name.
pub fn set_congestion(s: &impl AsFd, name: &str) -> io::Result<()> {
    SockRef::from(s).set_tcp_congestion(name.as_bytes())
}

/// The congestion control algorithm in use.
#[cfg(test)]
pub fn congestion(s: &impl AsFd) -> io::Result<String> {
    let raw = SockRef::from(s).tcp_congestion()?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// TCP_NOTSENT_LOWAT: wake the writer only when this little is left unsent,
/// keeping less data queued in the kernel.
pub fn set_notsent_lowat(s: &impl AsFd, bytes: u32) -> io::Result<()> {
    SockRef::from(s).set_tcp_notsent_lowat(bytes)
}

/// SO_MARK: a firewall mark for policy routing (needs CAP_NET_ADMIN).
pub fn set_mark(s: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(s).set_mark(mark)
}

/// SO_REUSEADDR on a listener: rebind at once after a restart.
pub fn set_reuse_address(s: &impl AsFd, on: bool) -> io::Result<()> {
    SockRef::from(s).set_reuse_address(on)
}

/// IP_BIND_ADDRESS_NO_PORT: a `bind` to port 0 leaves the port to `connect`,
/// which picks one unique per destination. Without it `bind` must pick a
/// port free toward every destination at once, so all upstream connections
/// from one source address share a single range of ports.
pub fn set_bind_address_no_port(s: &impl AsFd, on: bool) -> io::Result<()> {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::IpBindAddressNoPort, &on).map_err(io::Error::from)
}

/// Whether IP_BIND_ADDRESS_NO_PORT is set.
#[cfg(test)]
pub fn bind_address_no_port(s: &impl AsFd) -> io::Result<bool> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::IpBindAddressNoPort).map_err(io::Error::from)
}

/// TCP_FASTOPEN on a listener: accept data in the SYN, with this many
/// pending fast-open requests at most; 0 turns it off.
pub fn set_fastopen(s: &impl AsFd, queue: u32) -> io::Result<()> {
    set_int(s, nix::libc::IPPROTO_TCP, nix::libc::TCP_FASTOPEN, queue)
}

/// The listener's TCP_FASTOPEN queue length.
#[cfg(test)]
pub fn fastopen(s: &impl AsFd) -> io::Result<u32> {
    get_int(s, nix::libc::IPPROTO_TCP, nix::libc::TCP_FASTOPEN)
}

/// TCP_DEFER_ACCEPT on a listener: don't wake accept until the client has
/// sent data (up to this long). Breaks protocols where the server speaks first.
pub fn set_defer_accept(s: &impl AsFd, d: Duration) -> io::Result<()> {
    let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    set_int(s, nix::libc::IPPROTO_TCP, nix::libc::TCP_DEFER_ACCEPT, secs)
}

/// The listener's TCP_DEFER_ACCEPT in seconds (the kernel rounds up to its
/// SYN-ACK retransmission schedule).
#[cfg(test)]
pub fn defer_accept(s: &impl AsFd) -> io::Result<u32> {
    get_int(s, nix::libc::IPPROTO_TCP, nix::libc::TCP_DEFER_ACCEPT)
}

/// `TCP_INFO` of a connected socket: (smoothed RTT in µs, total retransmitted segments).
pub fn tcp_info(s: &impl AsFd) -> io::Result<(u32, u32)> {
    let info = super::tcp_counters::tcp_info(s)?;
    let u32_at = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes inside the buffer"));
    // `tcpi_rtt` and `tcpi_total_retrans` (include/uapi/linux/tcp.h).
    Ok((u32_at(68), u32_at(100)))
}

/// `setsockopt` with an int value, for the options neither socket2 nor nix wrap.
#[allow(unsafe_code)]
pub(super) fn set_int(s: &impl AsFd, level: i32, name: i32, value: u32) -> io::Result<()> {
    let v = nix::libc::c_int::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is open for the borrow's lifetime; we pass a pointer to
    // a live c_int and its exact size, as setsockopt(2) requires.
    let rc = unsafe {
        nix::libc::setsockopt(
            s.as_fd().as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `getsockopt` of an int value.
#[allow(unsafe_code)]
#[cfg(test)]
fn get_int(s: &impl AsFd, level: i32, name: i32) -> io::Result<u32> {
    let mut v: nix::libc::c_int = 0;
    let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime; `v` and `len` are
    // live locals of the sizes getsockopt(2) is told about.
    let rc = unsafe {
        nix::libc::getsockopt(s.as_fd().as_raw_fd(), level, name, std::ptr::from_mut(&mut v).cast(), &mut len)
    };
    if rc == 0 { Ok(u32::try_from(v).unwrap_or(0)) } else { Err(io::Error::last_os_error()) }
}

// ------------------------------------------------------------- per route

/// A route's socket options, ready to apply to its sockets, remembering
/// which ones the kernel refused so it warns once and stops asking.
#[derive(Debug, Default)]
pub struct Applied {
    opts: SocketOptions,
    /// The route's `source:`: the local address of its upstream connections.
    source: Option<IpAddr>,
    /// `source: client`: a session's upstream connection leaves from its
    /// client's IP (IP_TRANSPARENT on the upstream socket).
    source_client: bool,
    /// `transparent: true`: IP_TRANSPARENT on the listener (TPROXY capture).
    transparent: bool,
    /// The route's `mptcp:`: its sockets are `IPPROTO_MPTCP`.
    mptcp: bool,
    route: String,
    refused: AtomicU32,
}

impl Applied {
    /// Options for route `route`. `congestion_available` is the kernel's
    /// list; an algorithm not on it is dropped here with one warning.
    pub fn new(route: &str, mut opts: SocketOptions, congestion_available: Option<&[String]>) -> Applied {
        if let (Some(name), Some(available)) = (&opts.congestion, congestion_available) {
            if !available.contains(&name.0) {
                log::warn!(
                    "route {route}: congestion control {name} is not available (the kernel has: {}); \
                     using the kernel's default (modprobe tcp_{name} to add it)",
                    available.join(" ")
                );
                opts.congestion = None;
            }
        }
        Applied {
            opts,
            source: None,
            source_client: false,
            transparent: false,
            mptcp: false,
            route: route.to_owned(),
            refused: AtomicU32::new(0),
        }
    }

    /// The same options with the route's `source:` address for upstream
    /// connections (sessions and health checks alike).
    pub fn with_source(mut self, source: Option<IpAddr>) -> Applied {
        self.source = source;
        self
    }

    /// The same options for a capture route: `transparent` listener,
    /// `source_client` upstream connections (`source: client`).
    pub fn with_capture(mut self, transparent: bool, source_client: bool) -> Applied {
        self.transparent = transparent;
        self.source_client = source_client;
        self
    }

    /// The listener is transparent (IP_TRANSPARENT before bind).
    pub fn transparent(&self) -> bool {
        self.transparent
    }

    /// Sessions' upstream connections leave from their client's IP (`source: client`).
    pub fn source_client(&self) -> bool {
        self.source_client
    }

    /// The same options for a route whose sockets are `IPPROTO_MPTCP` (`mptcp: true`).
    pub fn with_mptcp(mut self, mptcp: bool) -> Applied {
        self.mptcp = mptcp;
        self
    }

    /// The route's sockets are to be MPTCP ones: the listeners always (one
    /// that cannot be made is a start-up error); upstream sockets until the
    /// kernel refused one (`sockets::start_connect` then makes TCP ones, see
    /// [`Applied::refuse`]).
    pub fn mptcp(&self) -> bool {
        self.mptcp
    }

    /// Upstream sockets are to be MPTCP ones: `mptcp: true`, and the kernel
    /// has not refused one yet.
    pub fn upstream_mptcp(&self) -> bool {
        self.mptcp && self.refused() & Opt::Mptcp.bit() == 0
    }

    /// The local address upstream sockets are bound to, if the route sets one.
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// The options as configured (after the availability check).
    pub fn options(&self) -> &SocketOptions {
        &self.opts
    }

    /// Options the kernel refused so far (bits of `Opt`).
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sets one option unless the kernel refused it before; on a refusal,
    /// warns once for this route and stops trying.
    fn set(&self, opt: Opt, f: impl FnOnce() -> io::Result<()>) {
        if self.refused() & opt.bit() != 0 {
            return;
        }
        if let Err(e) = f() {
            self.refuse(opt, &e);
        }
    }

    /// Records that the kernel refused `opt` with `e`: the first time, warns
    /// (naming MPTCP where that is why); from now on it is not asked for.
    pub fn refuse(&self, opt: Opt, e: &io::Error) {
        if self.refused.fetch_or(opt.bit(), Ordering::Relaxed) & opt.bit() == 0 {
            let why = if opt == Opt::Mptcp {
                " (sysctl -w net.mptcp.enabled=1 turns MPTCP on; `sluice doctor` checks)"
            } else if self.mptcp && e.raw_os_error() == Some(nix::libc::ENOPROTOOPT) {
                " (the route's sockets are MPTCP ones, and this kernel's MPTCP has no such option)"
            } else {
                ""
            };
            log::warn!(
                "route {}: the kernel refused {} ({e}){why}; this route goes on without it",
                self.route,
                opt.name()
            );
        }
    }

    fn buffers_and_congestion(&self, s: &impl AsFd) {
        let o = &self.opts;
        if let Some(b) = o.send_buffer {
            self.set(Opt::SendBuffer, || set_send_buffer(s, b.get() as usize));
        }
        if let Some(b) = o.recv_buffer {
            self.set(Opt::RecvBuffer, || set_recv_buffer(s, b.get() as usize));
        }
        if let Some(name) = &o.congestion {
            self.set(Opt::Congestion, || set_congestion(s, &name.0));
        }
    }

    /// Listener options that must be in place before `listen`.
    pub fn before_listen(&self, s: &impl AsFd) {
        self.set(Opt::ReuseAddress, || set_reuse_address(s, self.opts.reuse_address()));
        self.buffers_and_congestion(s);
    }

    /// Listener options set once it listens.
    pub fn after_listen(&self, s: &impl AsFd) {
        if let Some(q) = self.opts.fastopen {
            self.set(Opt::FastOpen, || set_fastopen(s, q.get() as u32));
        }
        if let Some(d) = self.opts.defer_accept {
            self.set(Opt::DeferAccept, || set_defer_accept(s, d.get()));
        }
    }

    /// Options of every connection, client or upstream.
    fn connection(&self, s: &impl AsFd) {
        let o = &self.opts;
        self.set(Opt::Nodelay, || set_nodelay(s, o.nodelay()));
        if let Some(k) = o.keepalive {
            self.set(Opt::Keepalive, || set_keepalive(s, k));
        }
        if let Some(d) = o.user_timeout {
            self.set(Opt::UserTimeout, || set_user_timeout(s, d.get()));
        }
        // The default is set by the relay's stages (`relay/pump/lowat.rs`).
        if let Some(n) = o.configured_notsent_lowat() {
            self.set(Opt::NotSentLowat, || set_notsent_lowat(s, n));
        }
    }

    /// Options for an accepted client socket (buffers and congestion come from the listener).
    pub fn client(&self, s: &impl AsFd) {
        self.connection(s);
    }

    /// Options for an upstream socket, before it connects.
    pub fn upstream(&self, s: &impl AsFd) {
        self.connection(s);
        self.buffers_and_congestion(s);
        if let Some(m) = self.opts.mark {
            self.set(Opt::Mark, || set_mark(s, m.get() as u32));
        }
        if self.source.is_some() || self.source_client {
            // Refused (a kernel before 4.2): bind then picks the port, which still works,
            // only with fewer ports to go round (`sluice doctor` explains).
            self.set(Opt::BindAddressNoPort, || set_bind_address_no_port(s, true));
        }
    }
}

/// The kernel's available congestion control algorithms.
pub fn available_congestion() -> Option<Vec<String>> {
    let list: String = crate::sys::sysctl::read("net/ipv4/tcp_available_congestion_control")?;
    Some(list.split_whitespace().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests;
