//! What sluice asks of the kernel beyond reading and writing bytes, kept in
//! one folder as mio keeps its OS code under `sys/`: sockets and their
//! options, what a socket still holds, the kernel's settings and counters,
//! this process's limits and CPUs. Each file wraps one kind of system call
//! or `/proc` file and decides nothing: what to do with the answer is left
//! to the caller (`listen/`, `worker/`, `session/`, `doctor`, `admin`).
//! Splice pipes are the relay's, in `relay/pipe.rs`.
//!
//! - `sockets.rs`: `SO_REUSEPORT` listeners, non-blocking upstream connects, abortive close.
//! - `sockopt.rs`: one function per TCP option; where each one applies; `TCP_INFO`.
//! - `capture.rs`: `IP_TRANSPARENT` and a connection's original destination (`SO_ORIGINAL_DST`).
//! - `handshakes.rs`: the socket filter that stops a listener answering new handshakes before it closes.
//! - `tcp_counters.rs`: a socket's lifetime byte counters (`TCP_INFO`) and queues, in one read.
//! - `epoll.rs`: a socket watched for its endings only (what mio cannot register).
//! - `socket_queue.rs`: what a socket still holds: unread and unacknowledged bytes.
//! - `sockmap.rs`: `relay: sockmap`'s maps and verdict program (bpf(2)), and a direction's progress.
//! - `local_ports.rs`: local ports per upstream address, and what the routes may need (`doctor`).
//! - `sysctl.rs`: reading kernel settings from /proc/sys.
//! - `netstat.rs`: machine-wide TCP counters from /proc/net.
//! - `rlimit.rs`: the fd limit raised at start, the reserve fd, whether the pipe limits apply.
//! - `affinity.rs`: pinning workers to CPUs.

pub(crate) mod affinity;
pub(crate) mod capture;
pub(crate) mod epoll;
pub(crate) mod handshakes;
pub(crate) mod local_ports;
pub(crate) mod netstat;
pub(crate) mod rlimit;
pub mod socket_queue;
pub(crate) mod sockets;
pub mod sockmap;
pub(crate) mod sockopt;
pub(crate) mod sysctl;
pub(crate) mod tcp_counters;
