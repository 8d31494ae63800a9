//! The handoff's messages on the wire: a Unix `SOCK_SEQPACKET` socket (one
//! message per packet, no framing to get wrong), a JSON body per message,
//! and file descriptors riding along as `SCM_RIGHTS`.
//!
//! Old and new process speak it on the control socket: the new one asks
//! (`Takeover`), the old one offers its listening sockets (`Offer`, then
//! `Sockets` packets carrying the fds), the new one says when it serves
//! (`Ready`), the old one confirms it stopped accepting (`Draining`). The
//! listening control socket is made here, owner-only; a packet with more
//! fds than the protocol allows is an error that leaves none of them open.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::listen::{ListenKey, Offered};

/// The most fds one packet carries (the kernel's `SCM_MAX_FD` is 253).
pub const FDS_PER_PACKET: usize = 200;
/// The largest message body.
const MAX_MESSAGE: usize = 1 << 20;

/// What the two processes say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Message {
    /// New → old: hand me your listeners.
    Takeover {
        /// The new process.
        pid: u32,
    },
    /// Old → new: these are coming, in `packets` `Sockets` messages, in this order.
    Offer {
        /// The old process's generation (the new one is this + 1).
        generation: u64,
        /// The old process.
        pid: u32,
        /// One entry per socket, in the order the fds follow.
        listeners: Vec<Offered>,
        /// The admin port's address, whose socket follows the listeners' (if any).
        admin: Option<SocketAddr>,
        /// How many `Sockets` packets follow.
        packets: usize,
    },
    /// Old → new: the next fds, in offer order.
    Sockets {
        /// How many fds this packet carries.
        count: usize,
    },
    /// New → old: I serve now; stop accepting on these listeners (the rest: drain them yourself).
    Ready {
        /// The listeners the new process took.
        taken: Vec<ListenKey>,
    },
    /// Old → new: stopped accepting; running sessions drain, then I exit.
    Draining,
    /// Either way: it can't be done, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A connected control-socket peer.
#[derive(Debug)]
pub struct Peer {
    socket: Socket,
}

impl Peer {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Peer> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        let peer = Peer { socket };
        peer.set_timeout(timeout)?;
        Ok(peer)
    }

    /// Wraps an accepted connection.
    pub fn from_socket(socket: Socket, timeout: Duration) -> io::Result<Peer> {
        socket.set_nonblocking(false)?;
        let peer = Peer { socket };
        peer.set_timeout(timeout)?;
        Ok(peer)
    }

    /// How long a send or receive may block.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.socket.set_write_timeout(Some(timeout))
    }

    /// Sends `msg` with `fds` attached.
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsgs: Vec<ControlMessage<'_>> =
            if raw.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&raw)] };
        let sent = sendmsg::<()>(self.socket.as_raw_fd(), &[IoSlice::new(&body)], &cmsgs, MsgFlags::empty(), None)?;
        if sent != body.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes", body.len())));
        }
        Ok(())
    }

    /// Receives one message and the fds that came with it. A message with
    /// more fds than a packet may carry is an error, and the fds of it that
    /// the kernel installed here are closed.
    pub fn recv(&self) -> io::Result<(Message, Vec<OwnedFd>)> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_PACKET]);
        let (n, flags, raw) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let msg = recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
            let mut raw = Vec::new();
            // nix will not read a truncated control buffer (MSG_CTRUNC): that case is below.
            for c in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
            (msg.bytes, msg.flags, raw)
        };
        if flags.contains(MsgFlags::MSG_CTRUNC) {
            // The kernel installed the fds that fit and dropped the rest: close ours.
            drop(own(rights_in(&cmsg)));
            let why = format!("a message carried more fds than the {FDS_PER_PACKET} a packet may");
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        let fds = own(raw);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let msg = serde_json::from_slice(&body[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((msg, fds))
    }
}

/// The fds in the `SCM_RIGHTS` messages of a control buffer `recvmsg`
/// filled (and flagged truncated, so nix will not read it): the kernel
/// writes whole headers and as many fds as fit, from the buffer's start;
/// the rest of the buffer is still zero.
#[allow(unsafe_code)]
fn rights_in(control: &[u8]) -> Vec<RawFd> {
    use nix::libc;
    let mut fds = Vec::new();
    let end = control.as_ptr() as usize + control.len();
    // SAFETY: the msghdr describes `control` only; CMSG_FIRSTHDR and
    // CMSG_NXTHDR return a header only when it lies within it, and a
    // header's data is read only up to its `cmsg_len`, checked against the
    // buffer's end first. Reads are unaligned: `control` is a byte buffer.
    unsafe {
        let mut mhdr: libc::msghdr = std::mem::zeroed();
        mhdr.msg_control = control.as_ptr() as *mut libc::c_void;
        mhdr.msg_controllen = control.len() as _;
        let mut c = libc::CMSG_FIRSTHDR(&mhdr);
        while !c.is_null() {
            let h: libc::cmsghdr = std::ptr::read_unaligned(c);
            let (len, data) = (h.cmsg_len as usize, libc::CMSG_DATA(c));
            let head = data as usize - c as usize;
            if len < head || c as usize + len > end {
                break;
            }
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                let count = (len - head) / std::mem::size_of::<RawFd>();
                fds.extend((0..count).map(|i| std::ptr::read_unaligned((data as *const RawFd).add(i))));
            }
            c = libc::CMSG_NXTHDR(&mhdr, c);
        }
    }
    fds
}

/// Takes ownership of fds the kernel just installed in this process.
#[allow(unsafe_code)]
fn own(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: recvmsg with SCM_RIGHTS installed these fds in our table a
        // moment ago; nothing else in the process knows their numbers, so each
        // gets exactly one owner, which closes it once.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// A control socket for `path`, listening at a temporary name beside it
/// (`path` with the extension `tmp.<pid>`), which is returned too: the
/// caller renames it over `path` once it may answer there (so the path
/// always names a live listener, ours or the predecessor's, never nothing).
///
/// Only its owner may connect: mode 0600 whatever the umask. The mode is
/// set between bind() and listen(), when a connect is refused anyway, so
/// nobody gets in through the umask's mode meanwhile. (Binding under a
/// tightened umask would be as tight, but the umask is the whole process's
/// and other threads may create files at that moment.)
pub fn listen(path: &Path) -> io::Result<(Socket, PathBuf)> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let addr = SockAddr::unix(&tmp).map_err(|e| {
        let why = format!("its temporary name {} is longer than a Unix socket path may be (107 bytes)", tmp.display());
        io::Error::new(e.kind(), why)
    })?;
    let _ = std::fs::remove_file(&tmp);
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)?;
    socket.bind(&addr)?;
    let made = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).and_then(|()| socket.listen(4));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((socket, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_fds_cross_a_seqpacket_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (l, tmp) = listen(&path).unwrap();
        std::fs::rename(tmp, &path).unwrap();
        let client = Peer::connect(&path, Duration::from_secs(5)).unwrap();
        let server = loop {
            match l.accept() {
                Ok((s, _)) => break Peer::from_socket(s, Duration::from_secs(5)).unwrap(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        client.send(&Message::Takeover { pid: 7 }, &[]).unwrap();
        assert_eq!(server.recv().unwrap().0, Message::Takeover { pid: 7 });
        // A listening socket crosses and still listens on the same port.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        server.send(&Message::Sockets { count: 1 }, &[tcp.as_fd()]).unwrap();
        let (msg, fds) = client.recv().unwrap();
        assert_eq!(msg, Message::Sockets { count: 1 });
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        drop(tcp);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(got.accept().is_ok(), "the received copy accepts after the sender closed its own");
        // The other side going away is an end, not a hang.
        drop(server);
        assert_eq!(client.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// How many of this process's fds are open on `file`.
    fn open_on(file: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == file))
            .count()
    }

    #[test]
    fn a_message_with_too_many_fds_is_refused_and_leaves_none_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("marker");
        let marker = std::fs::File::create(&file).unwrap();
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).unwrap();
        let (tx, rx) = (Peer { socket: a }, Peer { socket: b });
        // 253 (the kernel's most per message) where a packet may carry FDS_PER_PACKET.
        for _ in 0..5 {
            tx.send(&Message::Sockets { count: 253 }, &vec![marker.as_fd(); 253]).unwrap();
            let e = rx.recv().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert_eq!(open_on(&file), 1, "fds of a truncated message were left open");
        }
        // Within the limit they arrive, and close with their owner.
        tx.send(&Message::Sockets { count: FDS_PER_PACKET }, &vec![marker.as_fd(); FDS_PER_PACKET]).unwrap();
        let (_, fds) = rx.recv().unwrap();
        assert_eq!((fds.len(), open_on(&file)), (FDS_PER_PACKET, FDS_PER_PACKET + 1));
        drop(fds);
        assert_eq!(open_on(&file), 1);
    }

    #[test]
    fn the_control_socket_is_its_owners_and_too_long_a_name_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (_l, tmp) = listen(&path).unwrap();
        assert_eq!(std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o777, 0o600);
        let long = dir.path().join(format!("{}.sock", "x".repeat(100)));
        let e = listen(&long).unwrap_err();
        assert!(e.to_string().contains("temporary name"), "{e}");
    }
}
