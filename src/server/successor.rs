//! The old process's side of a takeover: a successor that got in through
//! the control socket (`control_socket.rs`) gets a duplicate of every
//! listening socket (asked of the workers, which keep theirs and keep
//! accepting) and of the admin port's, and once it says it serves, this
//! process stops accepting on what it took, drains the rest, and lets its
//! sessions finish. Until then nothing here changes: a successor that
//! fails or dies leaves this process serving as before.
//!
//! The exchange waits on the successor (up to 10 s a step, 60 s for it to
//! be ready), so it runs on a thread of its own, one at a time: the control
//! thread keeps answering signals, worker exits and reloads meanwhile, and
//! hears how it ended through a channel and its waker. A second successor
//! meanwhile is refused. A stop (signal, worker failure) during the
//! exchange breaks it off if no socket has been offered yet; if one has,
//! the successor may be serving on them, so the listeners stop accepting
//! when the exchange ends: handed over if it got ready, else as on any
//! stop. A reload asked meanwhile is done once it ended, if this process
//! still serves.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use socket2::Socket;

use super::ControlThread;
use super::workers::WorkerLink;
use crate::handoff::wire::{Message, Peer};
use crate::handoff::{self, READY_TIMEOUT, STEP_TIMEOUT};
use crate::listen::{ListenKey, Offered};
use crate::worker::Order;

/// The successor asked, or is about to: no socket has left this process.
const ASKED: u8 = 0;
/// Sockets are being offered: the successor may hold copies and serve on them.
const OFFERED: u8 = 1;
/// The control thread broke the exchange off before any offer.
const CANCELLED: u8 = 2;

/// A takeover under way, as the control thread holds it.
pub(super) struct Exchange {
    /// `ASKED`, `OFFERED` or `CANCELLED`; whoever moves it from `ASKED` first decides.
    stage: Arc<AtomicU8>,
    /// A second handle on the connection: shutting it down wakes the
    /// exchange's blocked receive.
    conn: Socket,
    outcome: Receiver<Outcome>,
}

impl Exchange {
    /// Breaks the exchange off unless sockets have been offered; whether it did.
    pub(super) fn cancel(&self) -> bool {
        let cancelled = self.stage.compare_exchange(ASKED, CANCELLED, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if cancelled {
            let _ = self.conn.shutdown(Shutdown::Both);
        }
        cancelled
    }

    /// Breaks it off whatever its stage (the process stops at once).
    pub(super) fn abort(&self) {
        self.stage.store(CANCELLED, Ordering::SeqCst);
        let _ = self.conn.shutdown(Shutdown::Both);
    }
}

/// How an exchange ended.
enum Outcome {
    /// The successor serves: stop accepting on `taken`, then tell it on `peer`.
    Ready { pid: u32, taken: Vec<ListenKey>, peer: Peer },
    /// It did not get there (it was told why).
    Failed(String),
    /// The peer left without asking (a sluice checking that this one runs).
    Left,
}

/// What the exchange's thread takes from the control thread.
struct Offer {
    /// How to reach each worker, in slot order (to ask for duplicates).
    workers: Vec<WorkerLink>,
    admin: Option<(SocketAddr, OwnedFd)>,
    generation: u64,
}

impl ControlThread {
    /// Successors knocked on the control socket: the first allowed one
    /// starts an exchange; others are refused while one runs or this
    /// process stops.
    pub(super) fn on_successor(&mut self) {
        while let Some(socket) = self.control_socket.as_ref().and_then(|c| c.accept(&self.shared)) {
            let busy = if self.exchange.is_some() {
                Some("a takeover is under way; try again once it ended")
            } else if self.draining {
                Some("this process is draining already; take over from its successor")
            } else {
                None
            };
            let started = match busy {
                Some(why) => Err(why.to_owned()),
                None => self.start_exchange(&socket).map_err(|e| format!("cannot start the takeover: {e}")),
            };
            match started {
                Ok(x) => self.exchange = Some(x),
                Err(why) => {
                    log::warn!("takeover refused: {why}");
                    super::control_socket::refuse(socket, why);
                }
            }
        }
    }

    /// Starts the exchange with `socket` on its own thread.
    fn start_exchange(&self, socket: &Socket) -> io::Result<Exchange> {
        let peer = Peer::from_socket(socket.try_clone()?, STEP_TIMEOUT)?;
        let conn = socket.try_clone()?;
        let admin = match &self.admin {
            Some(a) => Some((a.addr, a.dup()?)),
            None => None,
        };
        let offer = Offer {
            workers: self.handles.iter().map(|h| h.link.clone()).collect(),
            admin,
            generation: self.shared.generation.load(Ordering::Relaxed),
        };
        let stage = Arc::new(AtomicU8::new(ASKED));
        let (tx, outcome) = mpsc::channel();
        let (own_stage, waker) = (Arc::clone(&stage), Arc::clone(&self.waker));
        std::thread::Builder::new().name("sluice-takeover".to_owned()).spawn(move || {
            let ended = match exchange(&peer, offer, &own_stage) {
                Ok((pid, taken)) => Outcome::Ready { pid, taken, peer },
                Err(Outcome::Failed(why)) => {
                    let _ = peer.send(&Message::Refused { reason: why.clone() }, &[]);
                    Outcome::Failed(why)
                }
                Err(_) if own_stage.load(Ordering::SeqCst) == CANCELLED => {
                    Outcome::Failed("broken off: this process stops".to_owned())
                }
                Err(other) => other,
            };
            let _ = tx.send(ended);
            let _ = waker.wake();
        })?;
        Ok(Exchange { stage, conn, outcome })
    }

    /// The exchange under way ended (or not yet: nothing to do).
    pub(super) fn on_exchange(&mut self) {
        let Some(x) = &self.exchange else { return };
        let outcome = match x.outcome.try_recv() {
            Ok(o) => o,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Outcome::Failed("its thread ended".to_owned()),
        };
        self.exchange = None;
        match outcome {
            Outcome::Ready { pid, taken, peer } => {
                self.handed_over(pid, &taken);
                let _ = peer.set_timeout(Duration::from_secs(1));
                let _ = peer.send(&Message::Draining, &[]);
            }
            Outcome::Left => log::debug!("a peer left the control socket without asking for anything"),
            Outcome::Failed(why) if self.draining => log::warn!("takeover not done: {why}"),
            Outcome::Failed(why) => log::warn!("takeover not done: {why}; still serving"),
        }
        if std::mem::take(&mut self.stop_deferred) {
            self.stop_now();
        }
        if std::mem::take(&mut self.reload_deferred) && !self.draining {
            log::info!("the takeover ended: reloading {} as asked meanwhile", self.config.origin());
            self.reload();
        }
    }

    /// The successor serves `taken`: stop accepting there (its queues are
    /// the successor's now), empty and close the rest, and drain.
    fn handed_over(&mut self, pid: u32, taken: &[ListenKey]) {
        log::info!(
            "pid {pid} serves now: {} listener(s) handed over; no new connections here, running sessions get up to {:?}",
            taken.len(),
            self.config.drain_timeout
        );
        // Before the successor hears `Draining`: systemd has the new main pid before its `READY=1`.
        self.notify_handed_over(pid);
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        // The path names the successor's socket now (or soon): ours just closes.
        if let Some(c) = self.control_socket.take() {
            log::debug!("control socket {} handed over", c.path().display());
        }
        let deadline = Instant::now() + self.config.drain_timeout;
        self.start_draining(deadline, taken.to_vec());
    }
}

/// One successor, on the exchange's thread: offer the sockets, wait until
/// it serves. `Err` carries the outcome to report instead.
fn exchange(peer: &Peer, offer: Offer, stage: &AtomicU8) -> Result<(u32, Vec<ListenKey>), Outcome> {
    let pid = match peer.recv() {
        Ok((Message::Takeover { pid }, _)) => pid,
        Ok((other, _)) => return Err(Outcome::Failed(format!("expected a takeover request, got {other:?}"))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Outcome::Left),
        Err(e) => return Err(Outcome::Failed(format!("reading the request: {e}"))),
    };
    if stage.compare_exchange(ASKED, OFFERED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return Err(Outcome::Failed("this process is stopping; start the new one without --takeover".to_owned()));
    }
    let listeners = export_listeners(&offer.workers).map_err(Outcome::Failed)?;
    log::info!("pid {pid} takes over: offering {} listening socket(s)", listeners.len());
    handoff::offer(peer, offer.generation, &listeners, offer.admin)
        .map_err(|e| Outcome::Failed(format!("offering the sockets: {e}")))?;
    drop(listeners);
    let _ = peer.set_timeout(READY_TIMEOUT);
    match peer.recv() {
        Ok((Message::Ready { taken }, _)) => Ok((pid, taken)),
        Ok((other, _)) => Err(Outcome::Failed(format!("pid {pid} said {other:?} instead of being ready"))),
        Err(e) => Err(Outcome::Failed(format!("pid {pid} went away before it was ready ({e})"))),
    }
}

/// A duplicate of every worker's listening sockets, with their identity.
fn export_listeners(workers: &[WorkerLink]) -> Result<Vec<(Offered, OwnedFd)>, String> {
    let mut out = Vec::new();
    for (slot, link) in workers.iter().enumerate() {
        let (reply, rx) = mpsc::channel();
        link.send(Order::Export(reply));
        let got = rx.recv_timeout(STEP_TIMEOUT).map_err(|e| format!("worker {slot} did not answer: {e}"))?;
        out.extend(got.into_iter().map(|(key, addr, fd, supervised)| (Offered { key, addr, slot, supervised }, fd)));
    }
    Ok(out)
}
