//! What a transparent sidecar asks of the kernel about one socket:
//! `IP_TRANSPARENT`/`IPV6_TRANSPARENT` (a listener that accepts connections
//! a `tproxy` rule steers to it, an upstream socket bound to an address
//! that is not this host's: `source: client`), and the address a client
//! really dialled before an nftables `redirect`/`dnat` changed it
//! (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`, answered by conntrack).
//! Which listener reads which, and what a loop is, is the worker's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::SockRef;

/// Sets `IP_TRANSPARENT` (IPv4) or `IPV6_TRANSPARENT` (IPv6) on `s`. Needs
/// CAP_NET_ADMIN (or CAP_NET_RAW); the kernel answers EPERM without it.
pub fn set_transparent(s: &impl AsFd, v6: bool) -> io::Result<()> {
    let s = SockRef::from(s);
    if v6 { s.set_ip_transparent_v6(true) } else { s.set_ip_transparent_v4(true) }
}

/// Whether `IP_TRANSPARENT`/`IPV6_TRANSPARENT` is on.
#[cfg(test)]
pub fn transparent(s: &impl AsFd, v6: bool) -> io::Result<bool> {
    let s = SockRef::from(s);
    if v6 { s.ip_transparent_v6() } else { s.ip_transparent_v4() }
}

/// The address the client of accepted socket `s` dialled, as conntrack
/// remembers it before a `redirect`/`dnat` rewrote it; `Ok(None)` when
/// conntrack has no entry (ENOENT: nothing translated it). An untranslated
/// connection that conntrack tracks anyway (some nat table is loaded) gives
/// this socket's own address, which callers treat alike. `v6`: the family
/// of the conntrack table to ask.
pub fn original_destination(s: &impl AsFd, v6: bool) -> io::Result<Option<SocketAddr>> {
    let s = SockRef::from(s);
    let got = if v6 { s.original_dst_v6() } else { s.original_dst_v4() };
    match got {
        Ok(a) => Ok(a.as_socket()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_nothing_translated_has_no_original_destination() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        // Without conntrack loaded the kernel says ENOPROTOOPT; with it, ENOENT
        // (no entry), or, where some nat table makes conntrack track every
        // connection (podman's CNI rules, say), the entry's own destination:
        // this socket's address, untranslated.
        match original_destination(&s, false) {
            Ok(got) => assert!(got.is_none() || got == Some(s.local_addr().unwrap()), "{got:?}"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::ENOPROTOOPT), "{e}"),
        }
    }

    #[test]
    fn transparent_needs_privilege_and_then_reads_back() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        match set_transparent(&s, false) {
            Ok(()) => assert!(transparent(&s, false).unwrap()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EPERM), "{e}"),
        }
    }
}
