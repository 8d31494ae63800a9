//! The control socket (`control_socket`) and the old process's side of a
//! takeover: a successor connects, gets a duplicate of every listening
//! socket (asked of the workers, which keep theirs and keep accepting) and
//! of the admin port's, and once it says it serves, this process stops
//! accepting on what it took, drains the rest, and lets its sessions finish.
//! Until then nothing here changes: a successor that fails or dies leaves
//! this process serving as before.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use super::CONTROL;
use super::control::ControlThread;
use crate::handoff::wire::{self, Message, Offered, Peer};
use crate::handoff::{self, HandoffError, READY_TIMEOUT, STEP_TIMEOUT};
use crate::reload::ListenKey;
use crate::worker::Control;

/// The Unix socket a successor connects to.
#[derive(Debug)]
pub(super) struct ControlSocket {
    socket: socket2::Socket,
    path: PathBuf,
}

impl ControlSocket {
    /// Listens on `path`. A live listener already there is another running
    /// sluice: unless this process is its successor (`replacing`), starting
    /// would take its control socket away, so it is refused.
    pub(super) fn open(path: &Path, replacing: bool, registry: &Registry) -> Result<ControlSocket, HandoffError> {
        if !replacing && Peer::connect(path, STEP_TIMEOUT).is_ok() {
            return Err(HandoffError::InUse(path.display().to_string()));
        }
        let io = |source| HandoffError::Listen { path: path.display().to_string(), source };
        let socket = wire::listen(path).map_err(io)?;
        registry.register(&mut SourceFd(&socket.as_raw_fd()), CONTROL, Interest::READABLE).map_err(io)?;
        log::info!("control socket {}: a successor can take over with `sluice --takeover`", path.display());
        Ok(ControlSocket { socket, path: path.to_owned() })
    }

    fn accept(&self) -> Option<Peer> {
        let (s, _) = self.socket.accept().ok()?;
        Peer::from_socket(s, STEP_TIMEOUT).ok()
    }
}

impl ControlThread {
    /// Successors knocked on the control socket: serve each in turn.
    pub(super) fn on_successor(&mut self) {
        loop {
            let Some(peer) = self.control_socket().and_then(ControlSocket::accept) else {
                return;
            };
            if let Err(e) = self.hand_over(&peer) {
                log::warn!("takeover not done: {e}; still serving");
                let _ = peer.send(&Message::Refused { reason: e.clone() }, &[]);
            }
        }
    }

    /// One successor: offer the sockets, wait until it serves, then stop accepting.
    fn hand_over(&mut self, peer: &Peer) -> Result<(), String> {
        let pid = match peer.recv().map_err(|e| format!("reading the request: {e}"))?.0 {
            Message::Takeover { pid } => pid,
            other => return Err(format!("expected a takeover request, got {other:?}")),
        };
        if self.is_draining() {
            return Err("this process is draining already; take over from its successor".to_owned());
        }
        let listeners = self.export_listeners()?;
        let admin = match self.admin() {
            Some(a) => Some((a.addr, a.dup().map_err(|e| format!("duplicating the admin socket: {e}"))?)),
            None => None,
        };
        log::info!("pid {pid} takes over: offering {} listening socket(s)", listeners.len());
        let generation = self.shared().generation.load(Ordering::Relaxed);
        handoff::offer(peer, generation, &listeners, admin).map_err(|e| format!("offering the sockets: {e}"))?;
        drop(listeners);
        let _ = peer.set_timeout(READY_TIMEOUT);
        match peer.recv() {
            Ok((Message::Ready { taken }, _)) => {
                self.handed_over(pid, &taken);
                let _ = peer.send(&Message::Draining, &[]);
                Ok(())
            }
            Ok((other, _)) => Err(format!("pid {pid} said {other:?} instead of being ready")),
            Err(e) => Err(format!("pid {pid} went away before it was ready ({e})")),
        }
    }

    /// A duplicate of every worker's listening sockets, with their identity.
    fn export_listeners(&self) -> Result<Vec<(Offered, OwnedFd)>, String> {
        let mut out = Vec::new();
        for (slot, h) in self.handles().iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            h.send(Control::Export(tx));
            let got = rx.recv_timeout(STEP_TIMEOUT).map_err(|e| format!("worker {slot} did not answer: {e}"))?;
            out.extend(
                got.into_iter().map(|(key, addr, fd, supervised)| (Offered { key, addr, slot, supervised }, fd)),
            );
        }
        Ok(out)
    }

    /// The successor serves `taken`: stop accepting there (its queues are
    /// the successor's now), empty and close the rest, and drain.
    fn handed_over(&mut self, pid: u32, taken: &[ListenKey]) {
        log::info!(
            "pid {pid} serves now: {} listener(s) handed over; no new connections here, running sessions get up to {:?}",
            taken.len(),
            self.config().drain_timeout
        );
        if let Some(a) = self.take_admin() {
            a.stop();
        }
        // The path names the successor's socket now (or soon): ours just closes.
        if let Some(c) = self.take_control_socket() {
            log::debug!("control socket {} handed over", c.path.display());
        }
        let deadline = Instant::now() + self.config().drain_timeout;
        self.start_draining(deadline, taken.to_vec());
    }
}
