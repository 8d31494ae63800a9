//! The default `TCP_NOTSENT_LOWAT`, set by the stage: a pump's destination
//! holds the route's default unsent-queue bound while the pump splices (or
//! runs on io_uring) and the kernel's own while it copies.
//!
//! Measured on loopback (docs/performance.md, "The copy path"): the bound
//! makes splicing faster (+20-40 % on streams) but makes copying dearer per
//! byte (1.3x the CPU per Gbit/s: a writer woken each time the queue falls
//! to half of it moves half of it), and copying without it costs what
//! HAProxy without splice costs. So a route that leaves `notsent_lowat`
//! unset gets it only in the stages where it pays; one that sets it gets it
//! in every stage, from the socket's setup (`crate::sys::sockopt`).

use mio::net::TcpStream;

use super::{Pump, Stage};

/// The default bound a pump manages on its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StageLowat {
    bytes: u32,
    /// Whether the destination has it now.
    set: bool,
}

impl Pump {
    /// Sets the route's default `notsent_lowat` of `bytes` on the
    /// destination while this pump splices or uses io_uring, and takes it
    /// off while it copies (`None`: the route sets its own, or none).
    pub fn with_stage_lowat(mut self, bytes: Option<u32>) -> Pump {
        self.stage_lowat = bytes.map(|bytes| StageLowat { bytes, set: false });
        self
    }

    /// Puts the destination's bound in line with the current stage. A
    /// refusal is let be: the option only tunes.
    pub(super) fn sync_lowat(&mut self, dst: &TcpStream) {
        let Some(l) = self.stage_lowat.as_mut() else { return };
        let wanted = !matches!(self.stage, Stage::Copy(_));
        if l.set != wanted {
            l.set = wanted;
            // 0: the kernel's default (`net.ipv4.tcp_notsent_lowat`).
            let _ = crate::sys::sockopt::set_notsent_lowat(dst, if wanted { l.bytes } else { 0 });
        }
    }
}
