//! The words every file of a session uses: which socket (`Side`) and what
//! its events said (`Readiness`). What a stage does with them is the
//! stage's.

use std::fmt;

/// Which socket of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The accepted connection.
    Client,
    /// The connection we opened.
    Upstream,
}

impl Side {
    /// The index of the direction that reads from this side (`[c2u, u2c]`), and of its socket in `[client, upstream]`.
    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Upstream => 1,
        }
    }

    /// The other socket.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// What events said about one socket. Edge-triggered, so kept sticky: set
/// by events, cleared only when a syscall says `WouldBlock`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Bytes to read.
    pub readable: bool,
    /// Room to write (or an error the next write will report).
    pub writable: bool,
    /// The peer half-closed or the socket failed (EPOLLRDHUP/HUP/ERR).
    pub hup: bool,
}

impl Readiness {
    /// Adds what a new event says.
    pub fn absorb(&mut self, ev: Readiness) {
        self.readable |= ev.readable || ev.hup;
        self.writable |= ev.writable;
        self.hup |= ev.hup;
    }
}
