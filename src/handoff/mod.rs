//! Hitless binary upgrade: a running sluice hands its listening sockets to
//! a new process over a Unix socket (`control_socket`), so a new release or
//! a different worker count never closes a listening socket that has
//! clients queued, and running sessions finish on the process that started
//! them.
//!
//! The exchange (`wire.rs` has the messages), driven by the new process,
//! which has made its own control socket at a temporary name first (so a
//! path that cannot be made fails before the old one hears of it):
//!
//! 1. new → old `Takeover`: the new process has loaded and validated its
//!    config (a bad one never gets this far, and the old one is untouched);
//! 2. old → new `Offer`, then `Sockets` packets: a duplicate of every
//!    worker's listening socket of every listen address (with its key,
//!    bound address and worker slot) and of the admin port's;
//! 3. the new process plans its routes with those sockets (more workers:
//!    it binds the missing ones into the same `SO_REUSEPORT` group; fewer:
//!    its workers serve the surplus ones too, or, where the kernel migrates
//!    a closing socket's handshakes (`net.ipv4.tcp_migrate_req = 1`), empty
//!    and close them), starts its workers and serves; until now the old one
//!    served too;
//! 4. new → old `Ready`: the listeners it took; the old one stops accepting
//!    on those (closing its copies, so the sockets live on in the new
//!    process with whatever is queued), drains the ones the new config
//!    dropped, answers `Draining`, lets its sessions finish within
//!    `drain_timeout` and exits 0.
//!
//! If the new process dies before step 4, the old one never stopped
//! serving; after it, the new one only renames its control socket into
//! place, and serves on if even that fails. What was received waits in a
//! `listen::Inherited` until the route plan takes it, as systemd's sockets
//! do (`listen/activation.rs`).
//!
//! # Files
//! - `mod.rs`: the exchange's steps, each side's, and why one fails;
//! - `wire.rs`: the messages and how fds travel with them (`SCM_RIGHTS`).

pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::listen::{Inherited, ListenKey, Offered};
use wire::{FDS_PER_PACKET, Message, Peer};

/// How long one step of the exchange may take before it is abandoned.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to be ready (it resolves
/// upstreams and starts its workers meanwhile).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a takeover could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The control socket could not be reached.
    #[error("cannot reach the running sluice on {path}: {source}")]
    Connect {
        /// The control socket.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The exchange broke off.
    #[error("the handoff broke off: {0}")]
    Broken(String),
    /// The running process said no.
    #[error("the running sluice refused the takeover: {0}")]
    Refused(String),
    /// Another running sluice listens on the control socket.
    #[error("control socket {0}: another sluice is running there; to replace it, start this one with --takeover")]
    InUse(String),
    /// The control socket could not be made.
    #[error("cannot listen on control socket {path}: {source}")]
    Listen {
        /// The control socket.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

fn broken(what: &str) -> impl FnOnce(io::Error) -> HandoffError + '_ {
    move |e| HandoffError::Broken(format!("{what}: {e}"))
}

/// The new process's side of steps 1–2: asks the process on `path` for its
/// sockets. Returns the connection (for `Ready`) and what was received.
pub fn take_over(path: &Path) -> Result<(Peer, Inherited), HandoffError> {
    let peer = Peer::connect(path, STEP_TIMEOUT)
        .map_err(|source| HandoffError::Connect { path: path.display().to_string(), source })?;
    peer.send(&Message::Takeover { pid: std::process::id() }, &[]).map_err(broken("asking"))?;
    let (generation, pid, listeners, admin, packets) = match peer.recv().map_err(broken("waiting for the offer"))?.0 {
        Message::Offer { generation, pid, listeners, admin, packets } => (generation, pid, listeners, admin, packets),
        Message::Refused { reason } => return Err(HandoffError::Refused(reason)),
        other => return Err(HandoffError::Broken(format!("expected an offer, got {other:?}"))),
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for _ in 0..packets {
        match peer.recv().map_err(broken("receiving sockets"))? {
            (Message::Sockets { count }, got) if got.len() == count => fds.extend(got),
            (m, got) => {
                return Err(HandoffError::Broken(format!("expected sockets, got {m:?} with {} fds", got.len())));
            }
        }
    }
    let wanted = listeners.len() + usize::from(admin.is_some());
    if fds.len() != wanted {
        return Err(HandoffError::Broken(format!("{} sockets offered, {} received", wanted, fds.len())));
    }
    let admin_fd = admin.map(|_| fds.pop().expect("counted above"));
    let inherited =
        Inherited::from_predecessor(generation, pid, listeners.into_iter().zip(fds).collect(), admin.zip(admin_fd));
    Ok((peer, inherited))
}

/// The old process's side of step 2: offers `listeners` and the admin
/// port's socket to the peer that asked.
pub fn offer(
    peer: &Peer,
    generation: u64,
    listeners: &[(Offered, OwnedFd)],
    admin: Option<(SocketAddr, OwnedFd)>,
) -> io::Result<()> {
    let mut fds: Vec<&OwnedFd> = listeners.iter().map(|(_, fd)| fd).collect();
    if let Some((_, fd)) = &admin {
        fds.push(fd);
    }
    let packets = fds.len().div_ceil(FDS_PER_PACKET);
    let offer = Message::Offer {
        generation,
        pid: std::process::id(),
        listeners: listeners.iter().map(|(o, _)| o.clone()).collect(),
        admin: admin.as_ref().map(|(a, _)| *a),
        packets,
    };
    peer.send(&offer, &[])?;
    for chunk in fds.chunks(FDS_PER_PACKET) {
        let borrowed: Vec<_> = chunk.iter().map(|fd| fd.as_fd()).collect();
        peer.send(&Message::Sockets { count: chunk.len() }, &borrowed)?;
    }
    Ok(())
}

/// The new process's side of step 4: it serves now; the old process stops
/// accepting on `taken` and confirms.
pub fn ready(peer: &Peer, taken: Vec<ListenKey>) -> Result<(), HandoffError> {
    peer.send(&Message::Ready { taken }, &[]).map_err(broken("saying ready"))?;
    match peer.recv().map_err(broken("waiting for the predecessor to stop accepting"))?.0 {
        Message::Draining => Ok(()),
        Message::Refused { reason } => Err(HandoffError::Refused(reason)),
        other => Err(HandoffError::Broken(format!("expected draining, got {other:?}"))),
    }
}
