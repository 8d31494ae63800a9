//! The control socket (`control_socket`): where a successor knocks. It is
//! made in two steps so that a start which cannot finish changes nothing:
//! `bind` (before any listener listens) refuses a path where another sluice
//! answers unless this process replaces it, and listens at a temporary name
//! beside the path, owner-only (0600); `publish` (once this process serves)
//! renames it over the path. A peer whose uid is neither ours nor root's is
//! refused here, logged and counted. What a successor is told is
//! `successor.rs`'s.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Uid, geteuid};

use super::SUCCESSOR;
use crate::handoff::wire::{self, Message, Peer};
use crate::handoff::{HandoffError, STEP_TIMEOUT};
use crate::process::ProcessState;

/// The Unix socket a successor connects to.
#[derive(Debug)]
pub(super) struct ControlSocket {
    socket: socket2::Socket,
    path: PathBuf,
    /// Where it listens until `publish` renames it over `path` (removed if that never happens).
    temporary: Option<PathBuf>,
}

impl ControlSocket {
    /// Listens for `path` at a temporary name. A live listener already at
    /// `path` is another running sluice: unless this process replaces it
    /// (`replacing`), starting would take its control socket away, so it is
    /// refused.
    pub(super) fn bind(path: &Path, replacing: bool) -> Result<ControlSocket, HandoffError> {
        if !replacing && Peer::connect(path, STEP_TIMEOUT).is_ok() {
            return Err(HandoffError::InUse(path.display().to_string()));
        }
        let (socket, tmp) =
            wire::listen(path).map_err(|source| HandoffError::Listen { path: path.display().to_string(), source })?;
        Ok(ControlSocket { socket, path: path.to_owned(), temporary: Some(tmp) })
    }

    /// Puts the socket at its path and starts answering there. A failure
    /// here comes after this process serves (a predecessor may have stopped
    /// accepting): it is logged, and the process serves on without a
    /// control socket.
    pub(super) fn publish(mut self, registry: &Registry) -> Option<ControlSocket> {
        let tmp = self.temporary.take()?;
        let published = std::fs::rename(&tmp, &self.path)
            .and_then(|()| registry.register(&mut SourceFd(&self.socket.as_raw_fd()), SUCCESSOR, Interest::READABLE));
        match published {
            Ok(()) => {
                log::info!(
                    "control socket {} (mode 0600): a successor can take over with `sluice --takeover`",
                    self.path.display()
                );
                Some(self)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                log::error!(
                    "cannot put the control socket at {}: {e}; serving without one (no --takeover until a restart)",
                    self.path.display()
                );
                None
            }
        }
    }

    /// The path it answers at.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection allowed in, if one is waiting; peers of other
    /// users are refused (told so, logged, counted) on the way.
    pub(super) fn accept(&self, shared: &ProcessState) -> Option<socket2::Socket> {
        loop {
            let (s, _) = self.socket.accept().ok()?;
            let Err(why) = allowed(&s) else { return Some(s) };
            shared.control_refused.fetch_add(1, Ordering::Relaxed);
            log::warn!("control socket {}: refused {why}", self.path.display());
            refuse(s, why);
        }
    }
}

/// Tells a peer no. What it sent is read first: closing a connection with
/// unread data resets it, and the peer would never read the answer. (The
/// wait for that is short: a successor asks as soon as it connects.)
pub(super) fn refuse(socket: socket2::Socket, why: String) {
    let Ok(peer) = Peer::from_socket(socket, Duration::from_millis(20)) else { return };
    let _ = peer.recv();
    let _ = peer.send(&Message::Refused { reason: why }, &[]);
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Never published: the temporary name goes. (A published path is
        // left: it names a successor's socket, or a dead one the next start
        // replaces.)
        if let Some(tmp) = &self.temporary {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Whether the process on the other end may take over: it runs as our
/// user or as root (`SO_PEERCRED`, what the kernel recorded at connect).
fn allowed(peer: &socket2::Socket) -> Result<(), String> {
    let cred = getsockopt(peer, PeerCredentials).map_err(|e| format!("a peer whose credentials are unknown ({e})"))?;
    let uid = Uid::from_raw(cred.uid());
    if uid == geteuid() || uid.is_root() {
        return Ok(());
    }
    let who = if geteuid().is_root() { "root".to_owned() } else { format!("uid {} or root", geteuid()) };
    Err(format!("pid {} (uid {uid}): only {who} may take over", cred.pid()))
}
