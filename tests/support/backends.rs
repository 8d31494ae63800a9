//! Upstreams for the tests, each on 127.0.0.1:0 in its own threads:
//! echo, sink (count + digest after EOF), source (a seeded stream),
//! reply-after-EOF, reset-after-N-bytes, a refused port and a black hole.
//! Plus the deterministic byte stream and digests the tests verify with.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use xxhash_rust::xxh3::Xxh3;

/// Generous bound on any single blocking socket call in a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A deterministic pseudo-random byte stream (xorshift64*), cheap enough to
/// produce hundreds of MiB in a test.
pub struct Stream {
    state: u64,
}

impl Stream {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Stream {
        Stream { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// Fills `buf` with the next bytes (whole 8-byte words; a partial tail is filled too).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `len` bytes of stream `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Stream::new(seed).fill(&mut v);
        v
    }

    /// Digest of the first `len` bytes of stream `seed` (chunked exactly as `write_stream` writes).
    pub fn digest(seed: u64, len: u64) -> u64 {
        let mut s = Stream::new(seed);
        let mut h = Xxh3::new();
        let mut buf = vec![0; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.digest()
    }
}

/// Chunk size used by stream writers (and `Stream::digest`).
pub const CHUNK: usize = 64 << 10;

/// Writes `len` bytes of stream `seed` to `w`, in `CHUNK`s.
pub fn write_stream(w: &mut impl Write, seed: u64, len: u64) -> io::Result<()> {
    let mut s = Stream::new(seed);
    let mut buf = vec![0; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads to EOF; returns (byte count, xxh3 digest). `pause` slows the reader down.
pub fn read_digest(r: &mut impl Read, pause: Option<Duration>) -> io::Result<(u64, u64)> {
    let mut h = Xxh3::new();
    let mut buf = vec![0; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h.digest()));
        }
        h.update(&buf[..n]);
        total += n as u64;
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
}

/// Sets the test-wide timeouts on a blocking socket.
pub fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
}

/// Connects to `addr` with the test timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to sluice");
    timeouts(&s);
    s
}

/// `connect` for a client that sluice may reset at once (a refused
/// upstream): the reset can arrive before `connect_timeout` has read the
/// socket's error, and then it is what the connect returns.
pub fn connect_maybe_reset(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    timeouts(&s);
    Ok(s)
}

/// A listener serving every connection with `handler` on its own thread.
/// The threads die with the test process; the listener thread stops when
/// the test drops the returned address's owner (never: tests are short).
pub fn serve(handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    serve_listener(TcpListener::bind("127.0.0.1:0").expect("bind backend"), handler)
}

/// `serve` on a listener the caller made (inside a network namespace, say).
pub fn serve_listener(l: TcpListener, handler: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    let addr = l.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            timeouts(&conn);
            let h = handler.clone();
            std::thread::Builder::new().stack_size(128 << 10).spawn(move || h(conn)).expect("backend thread");
        }
    });
    addr
}

/// Echoes every byte; passes a half-close back once everything is echoed.
pub fn echo() -> SocketAddr {
    serve(echo_one)
}

/// `echo` on a listener the caller made (an MPTCP one, say).
pub fn echo_on(l: TcpListener) -> SocketAddr {
    serve_listener(l, echo_one)
}

/// Echoes one connection's bytes, then its half-close.
fn echo_one(mut s: TcpStream) {
    let mut buf = vec![0; CHUNK];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Reads to EOF, then answers `count (u64 BE) ‖ xxh3 (u64 BE)` and closes.
pub fn sink() -> SocketAddr {
    serve(|mut s| answer_digest(&mut s))
}

/// What `sink` does with one connection: read to EOF, answer `count ‖ xxh3`.
pub fn answer_digest(s: &mut TcpStream) {
    if let Ok((n, d)) = read_digest(s, None) {
        let mut reply = n.to_be_bytes().to_vec();
        reply.extend_from_slice(&d.to_be_bytes());
        let _ = s.write_all(&reply);
    }
}

/// Sends `msg` on an open connection to an echo and reads as many bytes back,
/// concurrently (a big message would deadlock a write-then-read client).
pub fn exchange(c: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = c.try_clone()?;
    let sent = msg.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0; msg.len()];
    c.read_exact(&mut back)?;
    writer.join().expect("writer thread")?;
    Ok(back)
}

/// Sends `len` bytes of stream `seed` through `addr` to a sink, half-closes, and
/// says whether the sink's answer matches (errors are the caller's to count).
pub fn verified_upload(addr: SocketAddr, seed: u64, len: u64) -> io::Result<bool> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    timeouts(&c);
    write_stream(&mut c, seed, len)?;
    c.shutdown(Shutdown::Write)?;
    let mut reply = [0u8; 16];
    c.read_exact(&mut reply)?;
    let n = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let d = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
    Ok(n == len && d == Stream::digest(seed, len))
}

/// Sends `len` bytes of stream `seed`, then closes.
pub fn source(seed: u64, len: u64) -> SocketAddr {
    serve(move |mut s| {
        let _ = write_stream(&mut s, seed, len);
    })
}

/// Reads to EOF, then sends `reply_len` bytes of stream `seed` and closes:
/// the answer comes only after the client's half-close. Reports what it
/// received on `tx`.
pub fn reply_after_eof(seed: u64, reply_len: u64) -> (SocketAddr, mpsc::Receiver<(u64, u64)>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(tx));
    let addr = serve(move |mut s| {
        if let Ok(got) = read_digest(&mut s, None) {
            let _ = tx.lock().expect("tx").send(got);
            let _ = write_stream(&mut s, seed, reply_len);
        }
    });
    (addr, rx)
}

/// Sends `len` bytes of stream `seed`, half-closes, then reads to EOF and
/// reports what the client sent afterwards on the channel.
pub fn speak_first_then_listen(seed: u64, len: u64) -> (SocketAddr, mpsc::Receiver<(u64, u64)>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(tx));
    let addr = serve(move |mut s| {
        if write_stream(&mut s, seed, len).is_ok() && s.shutdown(Shutdown::Write).is_ok() {
            if let Ok(got) = read_digest(&mut s, None) {
                let _ = tx.lock().expect("tx").send(got);
            }
        }
    })
    .to_owned();
    (addr, rx)
}

/// Sends `len` bytes of stream `seed`, then resets the connection (SO_LINGER 0).
pub fn reset_after(seed: u64, len: u64) -> SocketAddr {
    serve(move |mut s| {
        if write_stream(&mut s, seed, len).is_ok() {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        drop(s);
    })
}

/// A loopback port with nothing listening (connects are refused).
pub fn refused() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// An upstream whose handshakes never complete: a listener that never
/// accepts, its tiny queue pre-filled so further SYNs are dropped. Returns
/// `None` (skip the test) if this kernel completes connects anyway.
pub fn black_hole() -> Option<(SocketAddr, Vec<impl Sized>)> {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    l.listen(0).expect("listen");
    let addr = l.local_addr().expect("addr").as_socket().expect("inet");
    let mut keep: Vec<Box<dyn std::any::Any>> = vec![Box::new(l)];
    // Fill the accept queue (a backlog of 0 still admits one or two).
    for _ in 0..4 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => keep.push(Box::new(s)),
            Err(_) => break,
        }
    }
    // Prove it: a further connect must time out.
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Some((addr, keep)),
        _ => None,
    }
}
