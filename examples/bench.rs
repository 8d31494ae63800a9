//! sluice's own benchmark: starts an echo upstream (in this process, on its
//! own mio thread) and the built `sluice` binary as a child process, drives
//! it with a non-blocking closed-loop load generator (each connection sends
//! a message, waits for the whole echo, sends the next), and prints
//!
//! `Test | Relay | RPS | Mbps | AvgLat | P99Lat | CPU% | Memory`
//!
//! for small (1 KiB × 1,000 connections), medium (64 KiB × 1,000), large
//! (1 MiB × 100) messages and high concurrency (1 KiB × as many connections
//! as the fd limit allows, up to 10,000), in `relay: splice` and `relay:
//! copy` (and `auto` if asked) side by side. CPU% and Memory are the
//! proxy's, from /proc (CPU% of one core; Memory is peak RSS); latency is
//! per message, from an hdrhistogram; Mbps counts the payload one way.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench -- --duration 5s --plot latency.svg
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "sluice benchmark: splice vs copy on an echo upstream")]
struct Args {
    /// Measuring time per test and relay mode (after connections are up).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections for the small-message test.
    #[arg(long, default_value_t = 1000)]
    small_conns: usize,
    /// Connections for the medium-message test.
    #[arg(long, default_value_t = 1000)]
    medium_conns: usize,
    /// Connections for the large-message test.
    #[arg(long, default_value_t = 100)]
    large_conns: usize,
    /// Upper bound for the high-concurrency test (the fd limit may lower it).
    #[arg(long, default_value_t = 10_000)]
    max_conns: usize,
    /// Relay modes to compare, comma-separated.
    #[arg(long, default_value = "splice,copy", value_delimiter = ',')]
    modes: Vec<String>,
    /// Only these tests (small, medium, large, concurrency), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// sluice worker threads.
    #[arg(long, default_value = "auto")]
    workers: String,
    /// The sluice binary (default: next to this example, i.e. target/<profile>/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Also write the results as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also draw latency percentiles, splice vs copy, as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// One test of the table.
struct Test {
    key: &'static str,
    name: String,
    size: usize,
    conns: usize,
}

/// One row of results.
struct Row {
    test: String,
    mode: String,
    rps: f64,
    mbps: f64,
    avg_us: f64,
    p99_us: u64,
    cpu: f64,
    mem_mib: f64,
    hist: Histogram<u64>,
    errors: u64,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let limit = raise_nofile();
    let sluice = args.sluice.clone().unwrap_or_else(default_sluice);
    if !sluice.is_file() {
        return Err(io::Error::other(format!(
            "{} not found: build it first (cargo build --release) or pass --sluice PATH",
            sluice.display()
        )));
    }
    // This process holds one socket per connection on each side (load + echo); sluice holds two.
    let max_conns = args.max_conns.min(limit.saturating_sub(1000) / 2).max(1);
    let tests = [
        Test {
            key: "small",
            name: format!("Small Messages (1KB, {} connections)", args.small_conns),
            size: 1 << 10,
            conns: args.small_conns,
        },
        Test {
            key: "medium",
            name: format!("Medium Messages (64KB, {} connections)", args.medium_conns),
            size: 64 << 10,
            conns: args.medium_conns,
        },
        Test {
            key: "large",
            name: format!("Large Messages (1MB, {} connections)", args.large_conns),
            size: 1 << 20,
            conns: args.large_conns,
        },
        Test {
            key: "concurrency",
            name: format!("High Concurrency (1KB, {max_conns} connections)"),
            size: 1 << 10,
            conns: max_conns,
        },
    ];
    let echo = start_echo()?;
    let mut rows = Vec::new();
    for t in tests.iter().filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t.key)) {
        for mode in &args.modes {
            let proxy = Proxy::start(&sluice, echo, mode, &args.workers)?;
            let row = measure(&proxy, t, mode, args.duration)?;
            eprintln!("bench: {} [{mode}]: {:.0} req/s, p99 {} µs, {} errors", t.name, row.rps, row.p99_us, row.errors);
            rows.push(row);
        }
    }
    print!("{}", table(&rows));
    if let Some(path) = &args.csv {
        fs::write(path, csv(&rows))?;
    }
    if let Some(path) = &args.plot {
        plot(&rows, path).map_err(|e| io::Error::other(format!("plot: {e}")))?;
    }
    Ok(())
}

fn default_sluice() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/examples/bench → target/<profile>/sluice
    exe.parent().and_then(|p| p.parent()).map_or_else(|| PathBuf::from("sluice"), |p| p.join("sluice"))
}

fn raise_nofile() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            }
            usize::try_from(hard).unwrap_or(usize::MAX).min(1 << 20)
        }
        Err(_) => 1024,
    }
}

// ------------------------------------------------------------------ proxy

/// A running sluice child.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(bin: &PathBuf, upstream: SocketAddr, mode: &str, workers: &str) -> io::Result<Proxy> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string(), "--upstream", &upstream.to_string()])
            .args(["--relay", mode, "--workers", workers, "--no-access-log", "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        // Owned before the wait: on the error path, dropping it kills the child.
        let proxy = Proxy { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("sluice did not start listening within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(14) + get(15)
    }

    /// Peak resident set (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// /proc reports CPU time in USER_HZ ticks, 100 per second on every Linux ABI.
fn clock_ticks() -> f64 {
    100.0
}

// ------------------------------------------------------------------- echo

/// A mio echo server on its own thread: everything read is written back.
fn start_echo() -> io::Result<SocketAddr> {
    // A deep listen queue (mio's default is 1,024): sluice connects once per client.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    sock.listen(65_535)?;
    sock.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(sock.into());
    let addr = listener.local_addr()?;
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, Token(usize::MAX), Interest::READABLE)?;
    std::thread::Builder::new().name("echo".into()).spawn(move || {
        let mut conns: slab::Slab<(TcpStream, Vec<u8>, usize)> = slab::Slab::new();
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if poll.poll(&mut events, None).is_err() {
                continue;
            }
            for ev in events.iter() {
                if ev.token() == Token(usize::MAX) {
                    while let Ok((mut s, _)) = listener.accept() {
                        let _ = s.set_nodelay(true);
                        let e = conns.vacant_entry();
                        if poll
                            .registry()
                            .register(&mut s, Token(e.key()), Interest::READABLE | Interest::WRITABLE)
                            .is_ok()
                        {
                            e.insert((s, Vec::new(), 0));
                        }
                    }
                    continue;
                }
                let k = ev.token().0;
                let Some((s, pending, off)) = conns.get_mut(k) else { continue };
                let mut dead = false;
                loop {
                    // Write back what is pending first (backpressure: read only when it is gone).
                    while *off < pending.len() {
                        match s.write(&pending[*off..]) {
                            Ok(n) => *off += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                dead = true;
                                break;
                            }
                        }
                    }
                    if dead || *off < pending.len() {
                        break;
                    }
                    pending.clear();
                    *off = 0;
                    match s.read(&mut buf) {
                        Ok(0) => {
                            dead = true;
                            break;
                        }
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
                if dead {
                    conns.remove(k);
                }
            }
        }
    })?;
    Ok(addr)
}

// ------------------------------------------------------------------- load

/// One closed-loop client connection.
struct Client {
    stream: TcpStream,
    sent: usize,
    received: usize,
    started: Instant,
}

fn measure(proxy: &Proxy, t: &Test, mode: &str, duration: Duration) -> io::Result<Row> {
    let mut poll = Poll::new()?;
    let mut clients: Vec<Client> = Vec::with_capacity(t.conns);
    let msg = vec![0x5au8; t.size];
    let mut buf = vec![0u8; (256 << 10).max(t.size.min(1 << 20))];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    let mut errors = 0u64;
    // Open every connection first, one at a time: a burst of thousands of SYNs would overflow the
    // listen queues (sluice's and the echo's) and measure SYN retransmits instead of the proxy.
    for i in 0..t.conns {
        let connected = std::net::TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(10))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let mut s = match connected {
            Ok(s) => TcpStream::from_std(s),
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        clients.push(Client { stream: s, sent: 0, received: 0, started: Instant::now() });
    }
    let mut events = Events::with_capacity(4096);
    let cpu0 = proxy.cpu_ticks();
    let start = Instant::now();
    for c in &mut clients {
        c.started = start;
    }
    let mut done = 0u64;
    let mut dead = vec![false; clients.len()];
    while start.elapsed() < duration {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if dead[i] {
                continue;
            }
            let c = &mut clients[i];
            let mut failed = ev.is_error();
            // Write what is left of the current message, read what has come back.
            while !failed && c.sent < t.size {
                match c.stream.write(&msg[c.sent..]) {
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                    Err(_) => failed = true,
                }
            }
            while !failed {
                match c.stream.read(&mut buf) {
                    Ok(0) => failed = true,
                    Ok(n) => {
                        c.received += n;
                        if c.received >= t.size {
                            // Echoes only ever answer what was sent: whole messages, in order.
                            let now = Instant::now();
                            let _ = hist.record(now.duration_since(c.started).as_micros().max(1) as u64);
                            done += 1;
                            c.received -= t.size;
                            c.sent = 0;
                            c.started = now;
                            while c.sent < t.size {
                                match c.stream.write(&msg[c.sent..]) {
                                    Ok(n) => c.sent += n,
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(_) => {
                                        failed = true;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                    Err(_) => failed = true,
                }
            }
            if failed {
                errors += 1;
                dead[i] = true;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (proxy.cpu_ticks() - cpu0) as f64 / clock_ticks() / secs * 100.0;
    let mem = proxy.peak_rss_mib();
    Ok(Row {
        test: t.name.clone(),
        mode: mode.to_owned(),
        rps: done as f64 / secs,
        mbps: done as f64 * t.size as f64 * 8.0 / secs / 1e6,
        avg_us: if hist.is_empty() { 0.0 } else { hist.mean() },
        p99_us: if hist.is_empty() { 0 } else { hist.value_at_quantile(0.99) },
        cpu,
        mem_mib: mem,
        hist,
        errors,
    })
}

// ----------------------------------------------------------------- output

fn lat(us: f64) -> String {
    if us >= 1000.0 { format!("{:.2}ms", us / 1000.0) } else { format!("{us:.0}µs") }
}

fn table(rows: &[Row]) -> String {
    let header = ["Test", "Relay", "RPS", "Mbps", "AvgLat", "P99Lat", "CPU%", "Memory", "Errors"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.test.clone(),
                r.mode.clone(),
                format!("{:.0}", r.rps),
                format!("{:.1}", r.mbps),
                lat(r.avg_us),
                lat(r.p99_us as f64),
                format!("{:.0}%", r.cpu),
                format!("{:.1}MiB", r.mem_mib),
                r.errors.to_string(),
            ]
        })
        .collect();
    let mut s = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for c in cells {
        s.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from("test,relay,rps,mbps,avg_lat_us,p99_lat_us,cpu_percent,peak_rss_mib,errors\n");
    for r in rows {
        s.push_str(&format!(
            "\"{}\",{},{:.1},{:.2},{:.1},{},{:.1},{:.2},{}\n",
            r.test, r.mode, r.rps, r.mbps, r.avg_us, r.p99_us, r.cpu, r.mem_mib, r.errors
        ));
    }
    s
}

/// Latency at each percentile, one line per (test, relay mode), log scale.
fn plot(rows: &[Row], path: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    const PCTS: [f64; 7] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .filter(|r| !r.hist.is_empty())
        .map(|r| {
            let pts = PCTS
                .iter()
                .enumerate()
                .map(|(i, p)| (i as f64, r.hist.value_at_quantile(p / 100.0).max(1) as f64))
                .collect();
            (format!("{} [{}]", r.test, r.mode), pts)
        })
        .collect();
    let max = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(10.0, f64::max);
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("sluice latency percentiles: splice vs copy", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(PCTS.len() - 1) as f64, (1f64..max * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(PCTS.len())
        .x_label_formatter(&|x| PCTS.get(x.round() as usize).map_or(String::new(), |p| format!("p{p}")))
        .y_desc("latency (µs)")
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i / 2);
        let style = if name.ends_with("[splice]") { color.stroke_width(2) } else { color.stroke_width(1) };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i / 2).stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
