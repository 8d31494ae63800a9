//! `relay: sockmap`'s kernel layer: one worker's two `SOCKHASH` maps and
//! its `SK_SKB` verdict program, which send the bytes arriving on one
//! socket of a session out of the other without waking the worker. This
//! file wraps the bpf(2) calls and says what the kernel does with them; it
//! decides nothing (when to arm, disarm, forget and shut down is the
//! relay's).
//!
//! - `sockmap/insn.rs`: the verdict program, instruction by instruction.
//! - `sockmap/bpf.rs`: the bpf(2) commands (map create, program load and
//!   attach, map update, delete, lookup).
//! - `sockmap/progress.rs`: how far a direction has got (`TCP_INFO` byte
//!   counters and the queue ioctls): when all has gone out, how much the
//!   kernel holds.
//!
//! # The two maps
//! The **target map** holds each armed direction's destination under the
//! source's socket cookie; no program is attached to it, it is only where
//! `bpf_sk_redirect_hash` finds the destination. The **attach map** holds
//! the sockets whose arriving bytes go through the verdict program; taking
//! a socket out of it (`disarm`) gives its bytes back to userspace. A
//! socket in either map has a psock (and the `tcp_bpf` protocol ops).
//!
//! # Pausing a direction: tried, not kept (Linux 6.18)
//! Pausing was to be the way to take a busy direction back from the
//! kernel (which has no backpressure, and whose `disarm` corrupts a
//! receiving source: 5 and 3 of the next section): a third map, a plain
//! `HASH` of paused cookies, which the verdict program looked up before
//! redirecting, returning `SK_PASS` for a paused source so that its bytes
//! stayed with its own reader. Built and measured (the tests of that
//! build are not kept, since nothing uses it): **it is not safe on this
//! kernel**. It works in the quiet cases and loses or reorders bytes in the
//! busy ones (2 below), so the relay bounds the kernel's memory by ending
//! the session instead (`session/kernel.rs`).
//!
//! 1. Backpressure: yes. Passed bytes are charged to the source's receive
//!    buffer and its window closes: a client pushing into a paused source
//!    nobody reads got 128,000 bytes in (the accepted socket's `SO_RCVBUF`,
//!    131,072, never autotuned since nothing reads), the rest stayed in the
//!    client's send queue (4 MiB); nothing reached the upstream. The passed
//!    bytes count in `tcpi_bytes_received` *and* in `SIOCINQ`/`FIONREAD`
//!    (their `copied_seq` moves only when userspace reads them), so
//!    `Progress` needs no new term: `queued_between` stays the kernel's
//!    queue toward the destination, and reaches 0 once what was redirected
//!    before the pause has been written out.
//! 2. Loss and order: **not safe under a full-speed sender.**
//!    - One direction armed (the other in userspace), 256 MiB of u32
//!      sequence numbers, paused once mid-stream, then `read`+`write` in
//!      userspace to the end after `queued_between` reached 0 (6 µs to
//!      180 ms after the pause): 18 runs of 20 sessions (357 sessions:
//!      a failure stops its run), 356 in order and one with a wrong byte
//!      (at 165 MiB, some 60 MiB after its pause, in the userspace part).
//!    - Both directions armed, the other direction busy (the client reads
//!      its replies slowly, so the source's psock holds skbs to send it):
//!      every paused session (19 of 19, paused before the first byte)
//!      lost most of its 64 MiB: the upstream got 0 to 10 MiB; where
//!      counted, 33 to 63 MiB the sender saw acknowledged were taken off
//!      the source's queue and never readable, and `read` said end of
//!      stream with `SIOCINQ` still up to 29 MB.
//!      The same sessions unpaused, relayed by the kernel, lost nothing
//!      (16 of 16). A variant that redirects a paused skb into its own
//!      socket's ingress (`bpf_sk_redirect_hash` with `BPF_F_INGRESS`, the
//!      source in a third sockhash) instead of passing it, so that every
//!      paused skb goes through the backlog worker, is no better: 4.5 and
//!      8.8 of 64 MiB arrived, and a third session stalled (the source
//!      never readable again).
//!
//!    Why, from skmsg.c: `SK_PASS` queues straight onto `ingress_msg` only
//!    while the psock's `ingress_skb` is empty; otherwise (the other
//!    direction's skbs waiting there, or a failed `skb_linearize` /
//!    message allocation) the skb goes to the backlog worker, which takes
//!    it off `ingress_skb` before handling it and parks it on `EAGAIN`, so
//!    a later skb can find the queue empty and overtake it; the worker's
//!    errors clear the psock's `TX_ENABLED`, after which every passed skb
//!    is dropped (a reading, not traced on this kernel). Also seen: a
//!    blocking `read` of an armed source, paused or not, returns `EAGAIN`
//!    (150 to 770 times a 64 MiB session with the other direction busy;
//!    `tcp_bpf_recvmsg_parser`), so the relay must treat it as "poll again".
//! 3. `splice` from a paused source finds nothing (`EAGAIN` with 12 bytes
//!    passed): `tcp_splice_read` reads `sk_receive_queue`, the passed bytes
//!    are on the psock's `ingress_msg`. A paused direction is copied with
//!    `read`/`recv`.
//! 4. No resume. Clearing the flag lets the next skb be redirected while
//!    passed bytes may still be unread (or, by 2, still with the backlog
//!    worker); the redirected skb then reaches the destination first. A
//!    safe resume would need the program to know userspace has read all it
//!    passed (a count of passed bytes kept by the program, compared with
//!    one userspace gives when it asks): not built, since 2 makes the pause
//!    itself unsafe. A paused direction stays paused for its session.
//! 5. FIN and reset (one direction armed, 64 KiB passed): `read` returns
//!    all the bytes then end of stream; after a reset, all the bytes then
//!    `ECONNRESET`. (With the other direction busy, end of stream came
//!    early: 2.)
//! 6. Closing a paused socket with passed bytes unread frees them (64
//!    sessions × 2 × 64 KiB: TCP memory 15,588 pages, back to 13,245, its
//!    level before within the noise of other sockets) and takes the socket
//!    out of both sockhashes; the pause entry stays (a plain hash) until
//!    a `forget_pause`, which the session's end calls for both
//!    cookies, whether or not the sockets are closed yet.
//! 7. Cost: `pause` 1.4 µs, `forget_pause` 1.2 µs (one bpf(2) each). The
//!    lookup adds no measurable cost per skb: 1 GiB through an armed
//!    direction ran at 1.1–1.9 GB/s with it and 0.55–1.9 GB/s without
//!    (three runs each, twice, on a loaded two-CPU machine).
//!
//! # What this kernel does (Linux 6.18, measured by the tests in `sockmap/tests.rs`)
//! 1. **Arm and bytes already queued.** Bytes that arrived before the
//!    source was armed stay in its receive queue: the program runs from the
//!    socket's `sk_data_ready`, which only a new segment calls. The next
//!    segment carries them along, in order. [`Sockmap::kick`]
//!    (`setsockopt(SO_RCVLOWAT, 1)`, whose `tcp_set_rcvlowat` calls
//!    `tcp_data_ready`) makes the kernel take them at once; so does a
//!    1-byte `recv(MSG_PEEK | MSG_DONTWAIT)`; a 0-byte `recv(MSG_DONTWAIT)`
//!    does not. Bytes arriving after the arm go out with no userspace call.
//! 2. **One map is enough for a destination.** `bpf_sk_redirect_hash`
//!    finds the destination in the target map; it needs no program of its
//!    own. A socket only in the target map, or a source whose other
//!    direction is not armed, still answers userspace `read`, `write` and
//!    `splice` as before: arming A→B only, B→A works in userspace.
//! 3. **Disarm only a quiet source.** Disarming when every byte the peer
//!    sent has arrived (its send queue empty), even with megabytes still
//!    queued toward the destination, loses and repeats nothing: the kernel
//!    writes out what it took ([`Progress::queued_between`] falls to 0),
//!    then userspace reads the later bytes from the source, in order (64 MiB
//!    of sequence numbers, 8 disarms with up to 4 MiB queued). Disarming
//!    while segments are arriving corrupted the stream in every run: the
//!    userspace read after it returned bytes the kernel had already
//!    redirected (636 bytes again, or a few bytes off the 4-byte pattern),
//!    and a second such disarm left 0.3–0.5 MB taken and never written. With
//!    the source also a target (both directions armed) those bytes were
//!    held until the next arm instead. `disarm_under_a_backed_up_stream_measure`
//!    shows it; the caller must not disarm a source that is receiving.
//! 4. **End of stream.** After the peer's FIN the source reads EOF (recv
//!    returns 0, `EPOLLRDHUP`) as soon as the FIN arrives, while much of
//!    what came before may still be queued toward the destination. The FIN
//!    counts one byte in `tcpi_bytes_received`; so when
//!    [`Progress::queued_between`] is 1, everything has gone into the
//!    destination and `shutdown(dst, Write)` loses nothing (4 MiB checked).
//!    A connecting socket's `tcpi_bytes_acked` counts its SYN (1 at start),
//!    an accepted one's does not: hence the `balance` base.
//! 5. **Backpressure: none.** A destination whose peer stops reading does
//!    not slow the source: 128 MiB pushed in 70 ms all left the client,
//!    124 MiB of it queued between the sockets (the destination psock's
//!    `ingress_skb`), 4 MiB in the destination's send queue.
//!    [`Progress::undelivered`] counts exactly that, and all of it arrives
//!    once the peer reads. The relay must disarm above a high-water mark.
//! 6. **`forget` with bytes queued toward the destination loses them**
//!    (29 MB queued: the upstream got 4 MB of 32 MiB). Never forget before
//!    `queued_between` is 0 (or 1 after a FIN).
//! 7. **Closing an armed socket takes it out of both maps**: 10,000 sessions
//!    armed both ways and closed, in maps of 64, all armed.
//! 8. **Sockets the kernel refuses**: an MPTCP socket (as source or
//!    destination) and an unconnected TCP socket: `EOPNOTSUPP`. A full map:
//!    `E2BIG`. See [`refuses`].
//! 9. **Cost** (2,000 sessions, `cost_of_arm_and_disarm`): arming both
//!    directions 21 µs, disarming both 9.5 µs, forgetting both 9.3 µs, a
//!    kick 3.6 µs.
//!
//! 10. **A bare FIN must not reach a psock.** Redirected (or passed: `SK_PASS`
//!     falls back to the psock's send queue when its own ingress refuses an
//!     empty message), a segment with no bytes makes `sk_psock_backlog` write
//!     nothing, which it takes for a broken pipe: it sets `EPIPE` on that
//!     socket and stops its psock sending, stranding what was queued behind
//!     (a 64 MiB echo through sluice stalled with 52 MB held, every time).
//!     The verdict program drops such segments (`insn.rs`); TCP has handled
//!     the FIN already, and the source reads end of stream.
//!
//! The verdict program is attached with `BPF_SK_SKB_STREAM_VERDICT` and no
//! parser: the kernel then runs it on each skb as it arrives, with no
//! strparser (`BPF_SK_SKB_VERDICT` would do the same).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

mod bpf;
mod insn;
mod progress;
#[cfg(test)]
mod tests;

pub use progress::{Progress, byte_counters};

/// The licence the program declares: sluice's own. Neither helper it calls
/// is GPL-only, and the kernel loads it under this licence (tested).
const LICENSE: &std::ffi::CStr = c"MIT OR Apache-2.0";

/// Why a worker cannot relay in the kernel: what to tell the operator.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// EPERM (or EACCES before the program was loaded).
    #[error("{step}: not permitted ({source}): relaying in the kernel needs root, or CAP_BPF and CAP_NET_ADMIN")]
    NotPermitted {
        /// The bpf(2) command that was refused.
        step: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// EINVAL, ENOSYS, EOPNOTSUPP with no verifier log.
    #[error(
        "{step}: this kernel does not support it ({source}): sockmap needs Linux 5.10+ built with CONFIG_BPF_SYSCALL, CONFIG_BPF_STREAM_PARSER and CONFIG_NET_SOCK_MSG"
    )]
    KernelLacks {
        /// The bpf(2) command that failed.
        step: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// The verifier refused the program: a sluice bug, or a kernel that checks differently.
    #[error("the kernel's verifier refused the verdict program ({source}): {log}")]
    Refused {
        /// The kernel's error.
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Anything else (ENOMEM: the memory cgroup's limit).
    #[error("{step}: {source}")]
    Failed {
        /// The bpf(2) command that failed.
        step: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
}

impl Unavailable {
    fn of(step: &'static str, source: io::Error) -> Unavailable {
        match source.raw_os_error() {
            Some(nix::libc::EPERM | nix::libc::EACCES) => Unavailable::NotPermitted { step, source },
            Some(nix::libc::EINVAL | nix::libc::ENOSYS | nix::libc::EOPNOTSUPP) => {
                Unavailable::KernelLacks { step, source }
            }
            _ => Unavailable::Failed { step, source },
        }
    }
}

/// One worker's maps and program.
#[derive(Debug)]
pub struct Sockmap {
    /// Destinations, keyed by their source's cookie (see the module doc).
    targets: OwnedFd,
    /// Sockets whose arriving bytes the program redirects, keyed by their own cookie.
    attached: OwnedFd,
    /// The verdict program. The attach map holds it too; kept so the
    /// worker's fds show what it uses.
    _program: OwnedFd,
}

impl Sockmap {
    /// Two maps of `capacity` sockets each and the verdict program,
    /// attached to the attach map. A socket armed in both directions is
    /// in both maps once; one armed as a source only, in each once.
    pub fn new(capacity: u32) -> Result<Sockmap, Unavailable> {
        let targets = bpf::sockhash(capacity).map_err(|e| Unavailable::of("creating the target sockhash", e))?;
        let attached = bpf::sockhash(capacity).map_err(|e| Unavailable::of("creating the attach sockhash", e))?;
        let program = insn::verdict_program(targets.as_raw_fd());
        let program = bpf::load_sk_skb(&program, LICENSE).map_err(|e| {
            if e.log.is_empty() {
                Unavailable::of("loading the verdict program", e.error)
            } else {
                Unavailable::Refused { source: e.error, log: e.log }
            }
        })?;
        bpf::attach(program.as_fd(), attached.as_fd(), bpf::BPF_SK_SKB_STREAM_VERDICT)
            .map_err(|e| Unavailable::of("attaching the verdict program", e))?;
        Ok(Sockmap { targets, attached, _program: program })
    }

    /// The socket's cookie (`SO_COOKIE`): the kernel's 64-bit id of the
    /// socket, never reused while the machine runs.
    pub fn cookie(s: &impl AsFd) -> io::Result<u64> {
        socket2::SockRef::from(s).cookie()
    }

    /// Arms one direction: bytes arriving on `src` are sent out of `dst`
    /// by the kernel. `dst` goes into the target map under `src_cookie`
    /// first (a redirect finding no entry drops the bytes), then `src`
    /// into the attach map. Bytes that arrived before are not redirected
    /// until the next segment arrives or [`Sockmap::kick`].
    ///
    /// An error leaves the target entry in place; `forget` takes it out.
    /// See [`refuses`] for the errors that mean "not this socket".
    pub fn arm(&self, src: &impl AsFd, src_cookie: u64, dst: &impl AsFd) -> io::Result<()> {
        bpf::put(self.targets.as_fd(), src_cookie, dst.as_fd())?;
        bpf::put(self.attached.as_fd(), src_cookie, src.as_fd())
    }

    /// Disarms one direction: `src` leaves the attach map, and bytes
    /// arriving after stay in its receive queue for userspace. The target
    /// entry stays until [`Sockmap::forget`].
    pub fn disarm(&self, src_cookie: u64) -> io::Result<()> {
        bpf::delete(self.attached.as_fd(), src_cookie)
    }

    /// Removes the direction's target entry. Only once nothing is queued
    /// toward the destination (see [`Progress`]): bytes still queued are lost.
    pub fn forget(&self, src_cookie: u64) -> io::Result<()> {
        bpf::delete(self.targets.as_fd(), src_cookie)
    }

    /// Whether `src_cookie`'s direction is armed (its source in the attach map).
    pub fn is_armed(&self, src_cookie: u64) -> io::Result<bool> {
        bpf::lookup(self.attached.as_fd(), src_cookie).map(|c| c.is_some())
    }

    /// Whether a target entry is held under `src_cookie`.
    pub fn has_target(&self, src_cookie: u64) -> io::Result<bool> {
        bpf::lookup(self.targets.as_fd(), src_cookie).map(|c| c.is_some())
    }

    /// Makes the kernel run the program over bytes that were in `src`'s
    /// receive queue before it was armed: `SO_RCVLOWAT` 1 (the default
    /// value, so nothing else changes) makes `tcp_set_rcvlowat` call the
    /// socket's `sk_data_ready`, which is the program's entry. Copies
    /// nothing to userspace.
    pub fn kick(src: &impl AsFd) -> io::Result<()> {
        super::sockopt::set_int(src, nix::libc::SOL_SOCKET, nix::libc::SO_RCVLOWAT, 1)
    }
}

/// Whether `e`, from [`Sockmap::arm`], means "not this socket, not now", so
/// the caller relays the session in userspace: `EOPNOTSUPP` (MPTCP, not
/// connected, a protocol sockmap does not take) and `E2BIG` (the map is
/// full), both tested; `EINVAL` (a socket with a ULP such as kTLS) and
/// `EBUSY` (a psock with other programs), from net/core/sock_map.c.
pub fn refuses(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EOPNOTSUPP | nix::libc::EINVAL | nix::libc::EBUSY | nix::libc::E2BIG))
}
