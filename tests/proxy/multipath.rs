//! MPTCP through an `mptcp: true` route, in namespaces this test creates: a
//! client namespace joined to sluice's by two veth paths (10.1.1.0/24 and
//! 10.1.2.0/24), an MPTCP endpoint on each client address, and the upstream
//! (this test process) beside sluice. An MPTCP client and a plain TCP client
//! both relay byte-exact (the kernel's counters prove which spoke MPTCP), and
//! a 256 MiB upload survives one path taken down mid-transfer.
//! (`mptcp.rs` has the loopback tests of `mptcp: true`.)

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::backends::{self, Stream, write_stream};
use crate::harness::Sluice;
use crate::netns::{Link, Netns};
use crate::sidecar::{check_seen, duplex_client, duplex_service};

/// sluice's MPTCP listener, on the first path.
const LISTEN: &str = "10.1.1.1:8000";
/// The upstream, inside sluice's namespace.
const UPSTREAM: &str = "127.0.0.1:9000";

/// The client's and sluice's namespaces, two paths between them, sluice running with `mptcp: true`.
struct Paths {
    client: Netns,
    server: Netns,
    /// The first path: the client's end is the one taken down.
    first: Link,
    sluice: Sluice,
}

impl Paths {
    /// `None` (skip) where namespaces or MPTCP are not to be had.
    fn new() -> Option<Paths> {
        let client = Netns::new("mpc")?;
        let server = Netns::new("mps")?;
        if !client
            .try_exec(&["ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"])
            .status
            .success()
        {
            eprintln!("SKIP: this kernel (or iproute2) has no MPTCP path manager");
            return None;
        }
        if client.output(&["sysctl", "-n", "net.mptcp.enabled"]).trim() != "1" {
            eprintln!("SKIP: MPTCP is disabled (net.mptcp.enabled)");
            return None;
        }
        server.exec(&["ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"]);
        let first = client.link(&server, "10.1.1.2/24", "10.1.1.1/24");
        let second = client.link(&server, "10.1.2.2/24", "10.1.2.1/24");
        client.exec(&["ip", "mptcp", "endpoint", "add", "10.1.1.2", "dev", &first.a_if, "subflow"]);
        client.exec(&["ip", "mptcp", "endpoint", "add", "10.1.2.2", "dev", &second.a_if, "subflow"]);
        let yaml = format!(
            "workers: 1\nroutes:\n  - name: mp\n    listen: {LISTEN}\n    mptcp: true\n    upstreams: [\"{UPSTREAM}\"]\n"
        );
        let sluice = server.sluice(&yaml, &[]);
        Some(Paths { client, server, first, sluice })
    }

    /// A connection from the client's namespace to sluice: MPTCP or plain TCP.
    fn connect(&self, mptcp: bool) -> TcpStream {
        let to: SocketAddr = LISTEN.parse().expect("addr");
        self.client
            .enter(move || -> io::Result<TcpStream> {
                let proto = if mptcp { Protocol::MPTCP } else { Protocol::TCP };
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(proto))?;
                s.connect_timeout(&to.into(), Duration::from_secs(10))?;
                let s = TcpStream::from(s);
                backends::timeouts(&s);
                Ok(s)
            })
            .expect("connect to sluice")
    }

    /// A counter of the client namespace's `MPTcpExt` line in /proc/net/netstat.
    fn client_counter(&self, name: &str) -> u64 {
        mptcp_counter(&self.client.output(&["cat", "/proc/net/netstat"]), name)
    }
}

/// `name` from the `MPTcpExt:` header and value lines of /proc/net/netstat (0 if absent).
fn mptcp_counter(netstat: &str, name: &str) -> u64 {
    let lines: Vec<&str> = netstat.lines().filter(|l| l.starts_with("MPTcpExt:")).collect();
    let &[names, values] = lines.as_slice() else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_mptcp_client_and_a_plain_client_both_relay_byte_exact() {
    let Some(p) = Paths::new() else { return };
    let upstream = duplex_service(p.server.listen(UPSTREAM.parse().expect("addr")), 16 << 20);
    let before = p.client_counter("MPCapableSYNACKRX");
    duplex_client(p.connect(true), 31, 24 << 20, 16 << 20).expect("the MPTCP client's exchange");
    check_seen(&upstream, 31, 24 << 20);
    let after_mptcp = p.client_counter("MPCapableSYNACKRX");
    assert_eq!(after_mptcp, before + 1, "sluice's listener answered the MPTCP client with MP_CAPABLE");
    duplex_client(p.connect(false), 32, 24 << 20, 16 << 20).expect("the plain TCP client's exchange");
    check_seen(&upstream, 32, 24 << 20);
    assert_eq!(p.client_counter("MPCapableSYNACKRX"), after_mptcp, "the plain client spoke plain TCP");
    assert!(p.sluice.wait_log_count("reason=clean", 2, Duration::from_secs(5)), "{}", p.sluice.log());
}

#[test]
fn a_256_mib_mptcp_upload_survives_one_path_taken_down() {
    let Some(p) = Paths::new() else { return };
    let len: u64 = 256 << 20;
    // A sink that answers only after the client's FIN: on this kernel (6.18) an MPTCP connection
    // that has already received the peer's DATA_FIN does not move to the other path.
    backends::serve_listener(p.server.listen(UPSTREAM.parse().expect("addr")), |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        backends::answer_digest(&mut s);
    });
    let joins = p.client_counter("MPJoinSynAckRx");
    let c = p.connect(true);
    let written = Arc::new(AtomicU64::new(0));
    let (w, mut cw) = (Arc::clone(&written), c.try_clone().expect("clone"));
    // Bytes in flight on the path taken down wait for its retransmission timer before the
    // second subflow carries them again; on a busy machine that stalled a write past the
    // test-wide 30 s (a CI run). Bounded still, as the read below is.
    cw.set_write_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let writer = std::thread::spawn(move || -> io::Result<()> {
        let mut counting = Counting { inner: &mut cw, written: &w };
        write_stream(&mut counting, 41, len)?;
        cw.shutdown(std::net::Shutdown::Write)
    });
    // The second subflow joins, and a quarter of the bytes are sent, before the first path goes down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.client_counter("MPJoinSynAckRx") <= joins || written.load(Ordering::SeqCst) < len / 4 {
        assert!(!writer.is_finished(), "the upload ended before the path went down");
        assert!(Instant::now() < deadline, "no second subflow joined ({} bytes sent)", written.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = written.load(Ordering::SeqCst);
    p.client.exec(&["ip", "link", "set", &p.first.a_if, "down"]);
    let started = Instant::now();
    writer.join().expect("writer").expect("the upload went on over the second path");
    let mut r = c;
    r.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut reply = Vec::new();
    r.read_to_end(&mut reply).expect("the sink's answer, then a clean FIN");
    let mut want = len.to_be_bytes().to_vec();
    want.extend_from_slice(&Stream::digest(41, len).to_be_bytes());
    assert_eq!(reply, want, "the sink's count and digest of the upload");
    eprintln!(
        "mptcp: first path down after {} MiB; the remaining {} MiB arrived in {:.1} s, byte-exact",
        at >> 20,
        (len - at) >> 20,
        started.elapsed().as_secs_f64()
    );
}

/// A writer that counts what it wrote.
struct Counting<'a, W> {
    inner: &'a mut W,
    written: &'a AtomicU64,
}

impl<W: io::Write> io::Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
