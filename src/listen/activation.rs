//! systemd socket activation, as `sd_listen_fds(3)` describes it: a
//! `.socket` unit binds the listening sockets and starts sluice with them at
//! fd 3 onwards, saying so in `LISTEN_PID` (which process they are for),
//! `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (their `FileDescriptorName=`s,
//! colon-separated).
//!
//! Three steps, each testable alone: [`parse`] reads the variables' values
//! (passed in, no I/O); [`from_env`] does it for this process, unsets the
//! variables, takes the fds and checks that each is a listening TCP socket;
//! [`Activation::into_inherited`] matches them to the configuration by the
//! address each is bound to, so the route plan adopts them (`inherit.rs`)
//! the way it adopts a predecessor's. Addresses systemd did not pass are
//! bound as usual. A `--takeover` wins: the running process's sockets are
//! what serves (systemd's copies of them included), so systemd's are not used.
//!
//! This file reads and takes the sockets (the first two steps); the third,
//! matching them to the configuration, is `activation/assign.rs`'s. How
//! worker threads share one socket per address (joining its `SO_REUSEPORT`
//! group, or duplicates) is decided where sockets are adopted
//! (`bind::adopt`, `sockets::fill_workers`).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

mod assign;

pub use assign::{Target, assign};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The most fds `LISTEN_FDS` may announce: far more listen addresses than a
/// config has, and a bound on the work a bogus value can cause.
pub const MAX_LISTEN_FDS: i32 = 65536;

/// The variables `sd_listen_fds(1)` unsets (`LISTEN_PIDFDID`, newer systemd's
/// guard against a reused pid, is unset but not compared: `LISTEN_PID` is).
const VARIABLES: [&str; 4] = ["LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why the sockets systemd passed cannot be used. Fatal at start (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable's value is malformed.
    #[error("socket activation: {var}={value:?} is not {what}")]
    BadValue {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// `LISTEN_FDNAMES` does not name every fd.
    #[error("socket activation: LISTEN_FDNAMES has {names} name(s) for LISTEN_FDS={fds}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Fds announced.
        fds: usize,
    },
    /// An announced fd is not something sluice can serve on.
    #[error("socket activation: fd {fd} ({name}) {problem}")]
    Unusable {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A socket bound to an address the configuration does not listen on.
    #[error(
        "socket activation: fd {fd} ({name}) is bound to {addr}, which no route or the admin port listens on{hint}"
    )]
    Unmatched {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// Where it is bound.
        addr: SocketAddr,
        /// A likely cause, if one is seen.
        hint: String,
    },
    /// More sockets for one address than a single listener can use.
    #[error("socket activation: {problem}")]
    TooMany {
        /// What is too many.
        problem: String,
    },
}

/// What the three variables announce.
#[derive(Debug, PartialEq, Eq)]
pub enum Announced {
    /// No `LISTEN_PID` or no `LISTEN_FDS`: not socket-activated.
    Nothing,
    /// `LISTEN_PID` names another process (a parent that did not `exec` us).
    NotOurs {
        /// The process they were meant for.
        listen_pid: u32,
    },
    /// Fds from `LISTEN_FDS_START` on, with their names (`unknown` without
    /// `LISTEN_FDNAMES`, as `sd_listen_fds_with_names` says).
    Fds(Vec<(RawFd, String)>),
}

/// Reads the variables' values the way `sd_listen_fds_with_names(3)` does:
/// nothing unless `LISTEN_PID` is `our_pid`; `LISTEN_FDS` a positive count;
/// `LISTEN_FDNAMES`, when set, exactly one name per fd. (libsystemd takes any
/// count that fits an int; sluice stops at [`MAX_LISTEN_FDS`].)
pub fn parse(
    our_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fdnames: Option<&str>,
) -> Result<Announced, ActivationError> {
    let Some(pid) = listen_pid else { return Ok(Announced::Nothing) };
    let pid =
        pid.parse::<u32>().ok().filter(|&p| p > 0 && i32::try_from(p).is_ok()).ok_or_else(|| {
            ActivationError::BadValue { var: "LISTEN_PID", value: pid.to_owned(), what: "a process id" }
        })?;
    if pid != our_pid {
        return Ok(Announced::NotOurs { listen_pid: pid });
    }
    let Some(n) = listen_fds else { return Ok(Announced::Nothing) };
    let count = n.parse::<i32>().ok().filter(|&c| c > 0 && c <= MAX_LISTEN_FDS).ok_or_else(|| {
        ActivationError::BadValue { var: "LISTEN_FDS", value: n.to_owned(), what: "a count from 1 to 65536" }
    })?;
    let fds = LISTEN_FDS_START..LISTEN_FDS_START + count;
    let names: Vec<String> = match fdnames {
        Some(list) => list.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); fds.len()],
    };
    if names.len() != fds.len() {
        return Err(ActivationError::NameCount { names: names.len(), fds: fds.len() });
    }
    Ok(Announced::Fds(fds.zip(names).collect()))
}

/// A socket systemd passed, checked.
#[derive(Debug)]
pub struct Received {
    /// The fd number it came as (for messages).
    pub fd: RawFd,
    /// Its `FileDescriptorName=`.
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// An IPv6 socket that takes IPv4 clients too (`IPV6_V6ONLY` off).
    pub dual_stack: bool,
    /// An MPTCP socket (`SocketProtocol=mptcp`): it serves an `mptcp: true` route.
    pub mptcp: bool,
    socket: std::net::TcpListener,
}

/// What this process was started with.
#[derive(Debug, Default)]
pub enum Activation {
    /// Not socket-activated.
    #[default]
    None,
    /// The variables were for another process.
    NotOurs {
        /// The process they named.
        listen_pid: u32,
    },
    /// Listening sockets, in fd order.
    Sockets(Vec<Received>),
}

/// Reads socket activation for this process: parses the variables, unsets
/// them (so nothing this process starts inherits them), and takes the fds,
/// each of which must be a listening TCP socket (`FD_CLOEXEC` set on it).
///
/// Call it first thing, before anything opens a file (so fds 3 onwards are
/// still the ones systemd passed) or starts a thread (unsetting a variable
/// is only sound while no other thread reads the environment).
pub fn from_env() -> Result<Activation, ActivationError> {
    let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let announced = parse(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    );
    let numbers: Vec<RawFd> = match &announced {
        Ok(Announced::Fds(fds)) => fds.iter().map(|(fd, _)| *fd).collect(),
        _ => Vec::new(),
    };
    // `claim` stops at the first fd that is not open: that one is the error.
    let mut owned = claim(&numbers).into_iter();
    match announced? {
        Announced::Nothing => Ok(Activation::None),
        Announced::NotOurs { listen_pid } => Ok(Activation::NotOurs { listen_pid }),
        Announced::Fds(fds) => {
            let mut received = Vec::with_capacity(fds.len());
            for (fd, name) in fds {
                let Some(socket) = owned.next() else {
                    return Err(ActivationError::Unusable { fd, name, problem: "is not open".to_owned() });
                };
                received.push(check(socket, fd, name)?);
            }
            Ok(Activation::Sockets(received))
        }
    }
}

/// The one place socket activation needs `unsafe`: unsets the variables
/// and takes ownership of fds `numbers`, up to the first that is not open.
#[allow(unsafe_code)]
fn claim(numbers: &[RawFd]) -> Vec<OwnedFd> {
    // Unsetting is belt and braces: LISTEN_PID names this process, so a
    // child (another pid) would ignore the variables anyway, and sluice
    // never execs itself. So when another thread exists, they stay.
    if threads() == Some(1) {
        for v in VARIABLES {
            // SAFETY: remove_var races with reads of the environment on other
            // threads (libc's getenv takes no lock). This process has exactly
            // one thread, this one (just counted in /proc/self/task; only this
            // thread could start another, and it is busy here): main calls
            // this before logging starts its writer thread or server::run
            // starts any.
            unsafe { std::env::remove_var(v) };
        }
    }
    numbers
        .iter()
        .map(|&fd| {
            // SAFETY: F_GETFD reads the fd's flags and touches no memory; on a
            // number that is not open it fails with EBADF.
            let open = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } != -1;
            // SAFETY: the fd is open, and sd_listen_fds(3) hands fds 3 to
            // 3 + LISTEN_FDS - 1 to this process; nothing in it has used their
            // numbers yet (this runs before anything opens a file), so each
            // gets exactly one owner, which closes it once.
            open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .take_while(Option::is_some)
        .flatten()
        .collect()
}

/// Threads in this process (`None` without /proc).
fn threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Checks that `fd` is a listening TCP socket, and marks it close-on-exec.
fn check(fd: OwnedFd, number: RawFd, name: String) -> Result<Received, ActivationError> {
    let socket = socket2::Socket::from(fd);
    let unusable =
        |name: &str, problem: String| ActivationError::Unusable { fd: number, name: name.to_owned(), problem };
    let kind = match socket.r#type() {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSOCK) => {
            return Err(unusable(&name, "is not a socket (sluice takes ListenStream= sockets only)".to_owned()));
        }
        Err(e) => return Err(unusable(&name, format!("cannot be inspected: {e}"))),
    };
    let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
    let protocol = socket.protocol().ok().flatten();
    let mptcp = protocol == Some(socket2::Protocol::MPTCP);
    let tcp = protocol == Some(socket2::Protocol::TCP) || mptcp;
    let (Some(addr), true, true) = (addr, kind == socket2::Type::STREAM, tcp) else {
        return Err(unusable(
            &name,
            "is not a TCP socket (sluice takes ListenStream= sockets with an IP address only)".into(),
        ));
    };
    if !socket.is_listener().unwrap_or(false) {
        return Err(unusable(
            &name,
            format!("is bound to {addr} but not listening (with Accept=yes systemd passes connections: use Accept=no)"),
        ));
    }
    socket.set_cloexec(true).map_err(|e| unusable(&name, format!("cannot be set close-on-exec: {e}")))?;
    let dual_stack = addr.is_ipv6() && !socket.only_v6().unwrap_or(true);
    Ok(Received { fd: number, name, addr, dual_stack, mptcp, socket: socket.into() })
}

#[cfg(test)]
mod tests;
