//! A TCP socket's lifetime byte counters, read in one call each: what it
//! has received (`tcpi_bytes_received`) and had acknowledged
//! (`tcpi_bytes_acked`) from `TCP_INFO`, its state, and what it still holds
//! (`SIOCINQ`, `SIOCOUTQ`, see `socket_queue.rs`).
//!
//! `relay: sockmap` needs them: while the kernel relays a direction, no
//! byte passes through sluice, so what the kernel took from the source
//! (`consumed`) and put into the destination (`written`) is known only
//! from these counters. Their difference is what the kernel holds between
//! the two sockets, which has no bound of its own (`sockmap/progress.rs`
//! reads the same counters for one direction).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use super::socket_queue;

/// `struct tcp_info` offsets (include/uapi/linux/tcp.h, unchanged since 4.1):
/// `tcpi_state` is the first byte, `tcpi_bytes_acked` and
/// `tcpi_bytes_received` two `__u64` after `tcpi_max_pacing_rate`.
const STATE: usize = 0;
const BYTES_ACKED: usize = 120;
const BYTES_RECEIVED: usize = 128;
/// How much of `tcp_info` is read: up to and including `tcpi_bytes_received`.
const LEN: usize = BYTES_RECEIVED + 8;

/// Linux TCP states in `tcpi_state` that mean the peer's FIN has arrived
/// (`TCP_CLOSE_WAIT`, `TCP_LAST_ACK`, `TCP_CLOSING`, `TCP_TIME_WAIT`).
const FIN_RECEIVED: [u8; 4] = [8, 9, 11, 6];
/// `TCP_CLOSE`: reset, or closed.
const CLOSED: u8 = 7;

/// One socket's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sequence space received: data bytes, plus one for a FIN.
    pub received: u64,
    /// Bytes written that the peer acknowledged.
    pub acked: u64,
    /// Received and not read yet (a FIN not counted).
    pub unread: u64,
    /// Written and not acknowledged yet (unsent ones included).
    pub unacked: u64,
    /// `tcpi_state`.
    pub state: u8,
}

impl Counters {
    /// The peer's FIN has arrived.
    pub fn fin_received(&self) -> bool {
        FIN_RECEIVED.contains(&self.state)
    }

    /// The connection is reset or closed: nothing more goes out of it.
    pub fn closed(&self) -> bool {
        self.state == CLOSED
    }

    /// Data bytes taken out of the receive queue so far, by whoever took
    /// them (a read, a splice, the kernel's redirect). Exact for a socket
    /// still open; a closed one (`TCP_CLOSE`) may have had a FIN, counted
    /// in `received`, or a reset: a full socket that both sent and received
    /// a FIN is `TCP_CLOSE` too (the kernel hands `TIME_WAIT` to a small
    /// socket of its own), so this may be one high for it.
    pub fn consumed(&self) -> u64 {
        self.received.saturating_sub(self.unread).saturating_sub(u64::from(self.fin_received()))
    }

    /// Data bytes put into the socket so far (acknowledged or still queued).
    pub fn written(&self) -> u64 {
        self.acked + self.unacked
    }
}

/// The byte counters and state alone: one `getsockopt(TCP_INFO)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// `tcpi_bytes_received`: sequence space received (a FIN counts one).
    pub received: u64,
    /// `tcpi_bytes_acked`: bytes the peer acknowledged (a connecting socket's SYN counts one).
    pub acked: u64,
    /// `tcpi_state`.
    pub state: u8,
}

/// Reads `s`'s byte counters and state.
pub fn info(s: &impl AsFd) -> io::Result<Info> {
    let info = tcp_info(s)?;
    let u64_at = |at: usize| u64::from_ne_bytes(info[at..at + 8].try_into().expect("8 bytes inside the buffer"));
    Ok(Info { received: u64_at(BYTES_RECEIVED), acked: u64_at(BYTES_ACKED), state: info[STATE] })
}

/// How often `read` tries for counters that held still while it read them.
const TRIES: usize = 8;

/// Reads `s`'s counters: `TCP_INFO`, then the two queue `ioctl`s. Bytes
/// acknowledged in between make `written` low (never high); bytes arriving
/// in between make `consumed` low. Good for a look; a base that a later
/// count is taken from wants `read_still`.
pub fn read(s: &impl AsFd) -> io::Result<Counters> {
    let i = info(s)?;
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Ok(Counters {
        received: i.received,
        acked: i.acked,
        unread: as_u64(socket_queue::unread(s)?),
        unacked: as_u64(socket_queue::unacknowledged(s)?),
        state: i.state,
    })
}

/// Reads `s`'s counters as of one moment: `TCP_INFO`, the two queue
/// `ioctl`s, `TCP_INFO` again, until nothing arrived and nothing was
/// acknowledged in between (a base off by the bytes that moved during the
/// read would make every later count off by as many, and never heal).
/// `WouldBlock` if the socket never held still for `TRIES` reads.
pub fn read_still(s: &impl AsFd) -> io::Result<Counters> {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut before = info(s)?;
    for _ in 0..TRIES {
        let unread = as_u64(socket_queue::unread(s)?);
        let unacked = as_u64(socket_queue::unacknowledged(s)?);
        let after = info(s)?;
        if (after.received, after.acked) == (before.received, before.acked) {
            return Ok(Counters { received: after.received, acked: after.acked, unread, unacked, state: after.state });
        }
        before = after;
    }
    Err(io::Error::new(io::ErrorKind::WouldBlock, "the counters moved at every read"))
}

/// The first `LEN` bytes of `TCP_INFO` (up to `tcpi_bytes_received`, read
/// as bytes because libc's struct stops short of it; `sockopt::tcp_info`
/// reads its fields from here too); an older kernel that fills fewer is an error.
#[allow(unsafe_code)]
pub(super) fn tcp_info(s: &impl AsFd) -> io::Result<[u8; LEN]> {
    // u64-aligned storage, read as bytes.
    let mut buf = [0u64; LEN / 8];
    let mut len = LEN as nix::libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime; `buf` is a live local
    // of `LEN` bytes and `len` says so, and the kernel writes at most `len`.
    let rc = unsafe {
        nix::libc::getsockopt(
            s.as_fd().as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < LEN {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "TCP_INFO without tcpi_bytes_received (Linux < 4.1)"));
    }
    let mut out = [0u8; LEN];
    for (chunk, word) in out.chunks_exact_mut(8).zip(buf) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn consumed_and_written_count_data_bytes_and_a_fin_is_not_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        let start = read(&b).unwrap();
        assert_eq!((start.consumed(), start.written(), start.fin_received()), (0, 0, false));
        a.write_all(&[7; 1000]).unwrap();
        wait_for("1000 bytes arrive", || read(&b).unwrap().received == 1000);
        assert_eq!(read(&b).unwrap().consumed(), 0, "nothing read yet");
        let mut got = [0; 600];
        b.read_exact(&mut got).unwrap();
        assert_eq!(read(&b).unwrap().consumed(), 600);
        a.shutdown(Shutdown::Write).unwrap();
        wait_for("the FIN arrives", || read(&b).unwrap().fin_received());
        let c = read(&b).unwrap();
        assert_eq!((c.received, c.unread, c.consumed()), (1001, 400, 600), "{c:?}");
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).unwrap();
        assert_eq!(read(&b).unwrap().consumed(), 1000);
        b.write_all(&[1; 500]).unwrap();
        assert_eq!(read(&b).unwrap().written(), 500, "acknowledged or queued, 500 either way");
        wait_for("acknowledged", || read(&b).unwrap().acked == 500);
        assert!(!read(&a).unwrap().closed());
    }
}
