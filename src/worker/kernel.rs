//! The worker's side of `relay: sockmap`: making its sockhash and verdict
//! program (`sys::sockmap`), once, and keeping each session's socket
//! registrations in line with what the kernel relays (a socket the kernel
//! relays from is watched for its endings only: `sys::epoll`). What is
//! armed and when is the session's (`session/kernel.rs`).

use std::io;

use super::Worker;
use crate::session::Side;
use crate::sys::sockmap::Sockmap;

/// Sockets a worker's map can hold: both of every session it may relay in the kernel.
const MAP_CAPACITY: u32 = 1 << 16;

impl Worker {
    /// Makes the map and program if the settings ask for `relay: sockmap`
    /// and there are none yet. On failure new sessions use `auto` (see `relay_mode`).
    pub(super) fn ensure_sockmap(&mut self) {
        if !self.settings.sockmap || self.res.sockmap.is_some() {
            return;
        }
        match Sockmap::new(MAP_CAPACITY) {
            Ok(map) => self.res.sockmap = Some(map),
            Err(e) => log::warn!("worker {}: cannot set up the sockmap ({e}): new sessions relay: auto", self.id),
        }
    }

    /// `relay: sockmap`: a socket the kernel relays from is watched for its
    /// endings only, and registered as usual again once its pump has it back.
    pub(super) fn sync_watch(&mut self, key: usize) {
        use std::os::fd::AsRawFd;
        let epoll = self.poll.as_raw_fd();
        let registry = self.poll.registry();
        let s = &mut self.sessions[key];
        let generation = s.upstream_generation();
        let synced = s.sync_watch(|side, socket, endings_only| {
            let generation = if side == Side::Client { 0 } else { generation };
            let token = super::token::session(key, side, generation).ok_or_else(|| io::Error::other("no token"))?;
            if endings_only {
                crate::sys::epoll::watch_endings_only(epoll, socket, token)
            } else {
                registry.reregister(socket, token, mio::Interest::READABLE | mio::Interest::WRITABLE)
            }
        });
        if let Err(e) = synced {
            // The registration is the worker's own poll: it refusing is this host's trouble.
            log::warn!("session {}: cannot change a socket's registration: {e}", s.id());
        }
    }
}
