//! Listening sockets this process did not bind itself: received from a
//! predecessor (a takeover: `Offered` says what each is) or, for socket
//! activation, from systemd. The
//! route plan takes them by listen key before it binds anything; whatever
//! it does not take is closed when this is dropped (a predecessor still
//! holds its own copies and drains them). Which of them a supervisor holds
//! too (systemd's, and a predecessor's that came from systemd) is kept by
//! socket identity, so that no drain ever leaves a filter on them.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::key::ListenKey;
use crate::sys::sockets;

/// One listening socket on offer: which listener of which address, in which worker slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offered {
    /// The listener's identity (its address; for port 0, its first route's name too).
    pub key: ListenKey,
    /// The address it is bound to (the real port, for port 0).
    pub addr: SocketAddr,
    /// The worker that held it (0-based).
    pub slot: usize,
    /// A supervisor (systemd, for socket activation) holds this socket too
    /// and outlives us: it must never be left filtered (see `handshakes`).
    /// Absent in a predecessor's offer that predates the field: false.
    #[serde(default)]
    pub supervised: bool,
}

/// Sockets waiting to be taken.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The predecessor's generation (0 without one).
    pub generation: u64,
    /// The predecessor's process id.
    pub from: Option<u32>,
    listeners: Vec<(Offered, std::net::TcpListener)>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Inherited {
    /// What a predecessor offered.
    pub fn from_predecessor(
        generation: u64,
        pid: u32,
        listeners: Vec<(Offered, OwnedFd)>,
        admin: Option<(SocketAddr, OwnedFd)>,
    ) -> Inherited {
        Inherited {
            generation,
            from: Some(pid),
            listeners: listeners.into_iter().map(|(o, fd)| (o, std::net::TcpListener::from(fd))).collect(),
            admin: admin.map(|(a, fd)| (a, std::net::TcpListener::from(fd))),
        }
    }

    /// Adds a socket for listen key `key` (socket activation: systemd keeps
    /// its own copy, so it is supervised).
    pub fn add(&mut self, key: ListenKey, addr: SocketAddr, socket: std::net::TcpListener) {
        let slot = self.listeners.iter().filter(|(o, _)| o.key == key).count();
        self.listeners.push((Offered { key, addr, slot, supervised: true }, socket));
    }

    /// The identities (`sockets::identity`) of the listening sockets a
    /// supervisor holds too, taken or not yet.
    pub fn supervised(&self) -> Vec<u64> {
        self.listeners.iter().filter(|(o, _)| o.supervised).filter_map(|(_, s)| sockets::identity(s)).collect()
    }

    /// Sets the admin port's socket (socket activation).
    pub fn set_admin(&mut self, addr: SocketAddr, socket: std::net::TcpListener) {
        self.admin = Some((addr, socket));
    }

    /// Takes every socket of listen key `key`, in worker-slot order, with the
    /// address each is bound to.
    pub fn take(&mut self, key: &ListenKey) -> Vec<(SocketAddr, std::net::TcpListener)> {
        let (mut mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.listeners).into_iter().partition(|(o, _)| o.key == *key);
        self.listeners = rest;
        mine.sort_by_key(|(o, _)| o.slot);
        mine.into_iter().map(|(o, s)| (o.addr, s)).collect()
    }

    /// Takes the admin port's socket if it is the one `wanted` names (the
    /// same address, or any port of the same IP for a configured port 0).
    pub fn take_admin(&mut self, wanted: SocketAddr) -> Option<std::net::TcpListener> {
        let (addr, _) = self.admin.as_ref()?;
        let fits = *addr == wanted || (wanted.port() == 0 && addr.ip() == wanted.ip());
        fits.then(|| self.admin.take().map(|(_, s)| s)).flatten()
    }

    /// Listening sockets of listen key `key` not taken yet.
    pub fn count(&self, key: &ListenKey) -> usize {
        self.listeners.iter().filter(|(o, _)| o.key == *key).count()
    }

    /// An admin port's socket waits to be taken.
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// Listening sockets not taken yet.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Nothing left to take.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (SocketAddr, std::net::TcpListener) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (l.local_addr().unwrap(), l)
    }

    #[test]
    fn sockets_are_taken_by_key_in_slot_order() {
        let mut inh = Inherited::default();
        let key = ListenKey::Fixed("127.0.0.1:443".parse().unwrap());
        let other = ListenKey::Ephemeral("x".into(), "127.0.0.1:0".parse().unwrap());
        let (a0, s0) = listener();
        let (a1, s1) = listener();
        let (b, sb) = listener();
        inh.listeners.push((Offered { key: key.clone(), addr: a1, slot: 1, supervised: false }, s1));
        inh.listeners.push((Offered { key: other.clone(), addr: b, slot: 0, supervised: false }, sb));
        inh.listeners.push((Offered { key: key.clone(), addr: a0, slot: 0, supervised: true }, s0));
        let supervised = inh.supervised();
        assert_eq!(supervised.len(), 1, "one socket is a supervisor's too");
        let got: Vec<SocketAddr> = inh.take(&key).into_iter().map(|(a, _)| a).collect();
        assert_eq!(got, vec![a0, a1]);
        assert_eq!(inh.len(), 1);
        assert!(inh.take(&key).is_empty(), "taken once");
        assert_eq!(inh.take(&other).len(), 1);
        assert!(inh.is_empty());
    }

    #[test]
    fn the_admin_socket_goes_to_the_same_address_or_a_port_0_of_the_same_ip() {
        let (a, s) = listener();
        let mut inh = Inherited { admin: Some((a, s)), ..Inherited::default() };
        assert!(inh.take_admin("127.0.0.2:0".parse().unwrap()).is_none(), "another IP");
        assert!(inh.take_admin("127.0.0.1:0".parse().unwrap()).is_some());
        assert!(inh.take_admin(a).is_none(), "taken once");
    }
}
