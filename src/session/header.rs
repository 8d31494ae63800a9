//! PROXY protocol headers on a session's sockets: reading the one a client
//! sends first (`accept_proxy_protocol`) and writing ours to the upstream
//! before any relayed byte (`proxy_protocol`). The codec itself is
//! `crate::proxy_protocol`; this file is only the socket I/O around it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

use crate::proxy_protocol;

/// What reading the client's PROXY header gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// Not all there yet.
    Wait,
    /// Read and consumed; the addresses it carries (source, destination),
    /// or `None` for a header that names none (`LOCAL`, `UNKNOWN`).
    Done(Option<(SocketAddr, SocketAddr)>),
    /// Malformed, or the client left or failed: why.
    Invalid(String),
}

/// Reads the client's PROXY header if it has all arrived: peeks, parses, and
/// consumes exactly the header (what follows stays in the socket for the relay).
pub fn read(client: &TcpStream) -> HeaderRead {
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    let n = match client.peek(&mut buf) {
        Ok(0) => return HeaderRead::Invalid("closed before sending its PROXY header".to_owned()),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeaderRead::Wait,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return HeaderRead::Wait,
        Err(e) => return HeaderRead::Invalid(format!("failed before sending its PROXY header: {e}")),
    };
    let header = match proxy_protocol::parse(&buf[..n]) {
        proxy_protocol::Parse::Incomplete => return HeaderRead::Wait,
        proxy_protocol::Parse::Invalid(why) => return HeaderRead::Invalid(why),
        proxy_protocol::Parse::Done(h) => h,
    };
    // The bytes are queued (we just peeked them): one read takes them.
    let mut taken = 0;
    while taken < header.len {
        match (&*client).read(&mut buf[taken..header.len]) {
            Ok(0) => return HeaderRead::Invalid("closed inside its PROXY header".to_owned()),
            Ok(k) => taken += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return HeaderRead::Invalid(format!("reading its PROXY header: {e}")),
        }
    }
    HeaderRead::Done(header.addrs)
}

/// Our PROXY header on its way to the upstream.
#[derive(Debug)]
pub struct Outgoing {
    bytes: Vec<u8>,
    written: usize,
}

impl Outgoing {
    /// The header saying `client` connected to `local`.
    pub fn new(version: proxy_protocol::Version, client: SocketAddr, local: SocketAddr) -> Outgoing {
        let mut bytes = Vec::with_capacity(proxy_protocol::V1_MAX);
        proxy_protocol::encode(version, client, local, &mut bytes);
        Outgoing { bytes, written: 0 }
    }

    /// Some of it has been written: the upstream can no longer be swapped unseen.
    pub fn started(&self) -> bool {
        self.written > 0
    }

    /// Writes what is left: `Ok(true)` once it is all out, `Ok(false)` when
    /// the socket is full (the caller's writability flag must be cleared).
    pub fn write_to(&mut self, up: &TcpStream) -> io::Result<bool> {
        while self.written < self.bytes.len() {
            match (&*up).write(&self.bytes[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
