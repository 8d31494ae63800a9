//! How far the kernel has got with one direction of a session relayed in
//! the kernel: what arrived on the source socket and what left through the
//! destination, from `TCP_INFO`'s byte counters and the queue ioctls. The
//! relay reads it to know when everything has gone out (before it shuts the
//! destination down) and how much the kernel holds (backpressure).

use std::io;
use std::os::fd::AsFd;

use crate::sys::{socket_queue, tcp_counters};

/// One direction's counters, each since the connection opened.
///
/// Every counter counts sequence space, so a FIN counts one byte: once the
/// source has read end-of-stream, `received_by_src` is one more than the
/// data bytes. The SYN counts in neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// `tcpi_bytes_received` of the source: bytes (and FIN) its peer sent that arrived.
    pub received_by_src: u64,
    /// `SIOCINQ` of the source: arrived bytes still in its receive queue
    /// (the program has not taken them: disarmed, or not yet kicked).
    pub unread_by_src: u64,
    /// `tcpi_bytes_acked` of the destination: bytes its peer acknowledged.
    pub acked_by_dst_peer: u64,
    /// `SIOCOUTQ` of the destination: bytes written to it not yet acknowledged.
    pub unacked_in_dst: u64,
}

impl Progress {
    /// Reads the counters of `src` and `dst`.
    pub fn of(src: &impl AsFd, dst: &impl AsFd) -> io::Result<Progress> {
        // Read in this order, so that bytes arriving or acknowledged between
        // two reads can only make `queued_between` and `undelivered` larger
        // than they are, never smaller: a caller waiting for zero waits a
        // little longer, never too little.
        let unread_by_src = socket_queue::unread(src)? as u64;
        let (_, received_by_src) = byte_counters(src)?;
        let (acked_by_dst_peer, _) = byte_counters(dst)?;
        let unacked_in_dst = socket_queue::unacknowledged(dst)? as u64;
        Ok(Progress { received_by_src, unread_by_src, acked_by_dst_peer, unacked_in_dst })
    }

    /// Everything ever written to the destination: acknowledged plus not
    /// yet (plus one for the SYN on a socket that connected: its
    /// `tcpi_bytes_acked` counts it; an accepted socket's does not).
    pub fn written_to_dst(&self) -> u64 {
        self.acked_by_dst_peer + self.unacked_in_dst
    }

    /// Bytes taken out of the source's receive queue, by the program or by
    /// userspace reads.
    pub fn taken_from_src(&self) -> u64 {
        self.received_by_src.saturating_sub(self.unread_by_src)
    }

    /// `written_to_dst - taken_from_src`: read when nothing is between the
    /// two sockets (at `arm`, with userspace's buffers empty), the base of
    /// the two counts below. It holds the SYN (see `written_to_dst`) and
    /// what the caller wrote to the destination itself (a PROXY header).
    pub fn balance(&self) -> i64 {
        self.written_to_dst() as i64 - self.taken_from_src() as i64
    }

    /// Bytes taken from the source and not yet written to the destination:
    /// the kernel's queue between the two sockets (the destination psock's
    /// `ingress_skb`, which nothing bounds). After the source's FIN it is 1
    /// (the FIN) once everything has gone into the destination; the
    /// destination may be shut down then, not before. `base` is the
    /// `balance()` of a quiet moment.
    pub fn queued_between(&self, base: i64) -> i64 {
        self.taken_from_src() as i64 + base - self.written_to_dst() as i64
    }

    /// Bytes that arrived on the source and have not reached the
    /// destination's peer: what the kernel holds for this direction, the
    /// number to keep under a high-water mark. `base` as in `queued_between`.
    pub fn undelivered(&self, base: i64) -> i64 {
        self.received_by_src as i64 + base - self.acked_by_dst_peer as i64
    }
}

/// `(tcpi_bytes_acked, tcpi_bytes_received)` of a connected TCP socket.
pub fn byte_counters(s: &impl AsFd) -> io::Result<(u64, u64)> {
    tcp_counters::info(s).map(|i| (i.acked, i.received))
}
