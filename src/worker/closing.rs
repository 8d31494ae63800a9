//! Closing a worker's listeners without resetting anyone whose connect
//! succeeded — for the drain, a route a reload removed, a surplus socket
//! after an upgrade: the listener stops answering new handshakes (a socket
//! filter, `handshakes`; never on a socket systemd holds too, which outlives
//! us), keeps accepting for `HANDSHAKE_WAIT` so handshakes under way
//! complete, then everyone queued is accepted and served and it closes.
//! Listeners a successor took over close at once: it serves their queues.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;

use super::{TimerKey, Worker};
use crate::listen::ListenKey;

/// How long a closing listener (the drain, a route a reload removed, a
/// surplus socket) goes on accepting after it stopped answering new
/// handshakes, so that handshakes already under way (their SYN-ACK sent)
/// complete into the queue and are served, instead of being reset when the
/// listener closes. Covers a round trip of up to this much.
pub(super) const HANDSHAKE_WAIT: Duration = Duration::from_millis(100);

impl Worker {
    /// The drain's first step: listeners a successor took close at once; the
    /// others stop answering new handshakes and keep accepting. Returns
    /// whether any are left to close after [`HANDSHAKE_WAIT`] (with
    /// `stop_accepting`); if a filter cannot be attached, everything is
    /// closed now as before.
    pub(super) fn stop_new_handshakes(&mut self, handed_over: &[ListenKey], now: Instant) -> bool {
        let theirs: Vec<usize> =
            self.listeners.iter().filter(|(_, l)| handed_over.contains(&l.key)).map(|(i, _)| i).collect();
        for li in theirs {
            self.listeners.remove(li);
        }
        for (_, l) in &self.listeners {
            // Closing our copy of a socket systemd holds too resets no one, and a filter would outlive us.
            if self.shared.is_supervised(&l.socket) {
                continue;
            }
            if let Err(e) = crate::sys::handshakes::refuse_new_handshakes(&l.socket) {
                log::warn!(
                    "worker {}: cannot stop new handshakes on {} ({e}); closing its listeners at once",
                    self.id,
                    l.frontend.first().listen
                );
                self.stop_accepting(now);
                return false;
            }
        }
        !self.listeners.is_empty()
    }

    /// The drain's last accepts: every client already in a listener's queue
    /// is accepted and served (past the connection limits: they were let in
    /// by the kernel, and closing the listener would reset them), then the
    /// listeners close and new clients are refused. After
    /// `stop_new_handshakes` and its wait no handshake is left under way to
    /// be reset by the close (one whose round trip is longer than
    /// [`HANDSHAKE_WAIT`] still is).
    pub(super) fn stop_accepting(&mut self, now: Instant) {
        let keys: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        let served: usize = keys.into_iter().map(|li| self.close_listener(li, now)).sum();
        if served > 0 {
            log::info!("worker {}: served {served} clients still queued when accepting stopped", self.id);
        }
    }

    /// Closes listener `li` after accepting and serving every client in its
    /// queue (their connect succeeded: the close would reset them); how many.
    fn close_listener(&mut self, li: usize, now: Instant) -> usize {
        let (served, failed) = self.serve_queue(li, now);
        // Dropping the socket closes it (and takes it out of the poll).
        let l = self.listeners.remove(li);
        let listen = l.frontend.first().listen;
        if let Some(e) = failed {
            log::warn!("worker {}: closing {listen}: accepting its queue failed: {e}", self.id);
        }
        log::debug!("worker {}: stops listening on {listen} after serving {served} queued clients", self.id);
        served
    }

    /// Accepts everything queued on listener `li` and serves it. Returns how
    /// many, and the error that stopped it before the queue was empty.
    fn serve_queue(&mut self, li: usize, now: Instant) -> (usize, Option<io::Error>) {
        let mut served = 0;
        loop {
            match self.listeners[li].socket.accept() {
                Ok((stream, addr)) => {
                    served += 1;
                    self.start_session(li, stream, addr, now);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (served, None),
                Err(e) => return (served, Some(e)),
            }
        }
    }

    /// Closes a surplus socket of listener `key` the way the drain closes
    /// listeners (`retire_listener`): its clients are served as that
    /// listener's meanwhile.
    pub(super) fn retire(&mut self, key: ListenKey, socket: TcpListener, now: Instant) {
        let Some(frontend) =
            self.listeners.iter().find(|(_, l)| l.key == key && !l.retiring).map(|(_, l)| Arc::clone(&l.frontend))
        else {
            log::warn!("worker {}: a surplus socket of {key:?} has no listener here; closing it", self.id);
            return;
        };
        if let Some(li) = self.add_listener(key, socket, frontend) {
            self.retire_listener(li, now);
        }
    }

    /// Starts closing listener `li` without resetting anyone whose connect
    /// succeeds: it stops answering new handshakes (`handshakes`; not a
    /// socket a supervisor holds too, which lives on after our close) and
    /// goes on accepting for `HANDSHAKE_WAIT`, then `close_listener` serves
    /// its queue and closes it (the `CloseListener` timer). If the filter
    /// cannot be attached it closes now.
    pub(super) fn retire_listener(&mut self, li: usize, now: Instant) {
        let l = &mut self.listeners[li];
        l.retiring = true;
        let listen = l.frontend.first().listen;
        if self.shared.is_supervised(&l.socket) {
            log::warn!(
                "worker {}: {listen} is no longer served here, but systemd holds its socket: clients connecting \
                 there wait for whoever serves it next (remove it from the .socket unit)",
                self.id
            );
        } else if let Err(e) = crate::sys::handshakes::refuse_new_handshakes(&l.socket) {
            log::warn!("worker {}: cannot stop new handshakes on {listen} ({e}); closing it at once", self.id);
            self.close_listener(li, now);
            return;
        }
        log::debug!("worker {}: {listen} answers no new handshakes; it closes in {HANDSHAKE_WAIT:?}", self.id);
        self.timers.schedule(now + HANDSHAKE_WAIT, TimerKey::CloseListener(li));
    }

    /// `retire_listener`'s wait is over: serve the queue and close.
    pub(super) fn close_retired(&mut self, li: usize, now: Instant) {
        if self.listeners.get(li).is_some_and(|l| l.retiring) {
            self.close_listener(li, now);
        }
    }
}
