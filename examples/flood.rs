//! A connection flood beside well-behaved clients, for measuring rate
//! limits: `--flood-threads` threads open and close connections to
//! `--target` as fast as they can, each from one of `--sources` loopback
//! addresses (127.1.x.y, round robin) — or at `--flood-rate` per second —, while `--rr-conns` persistent clients,
//! each from its own address (127.2.0.1 upward, so a per-client limit sees
//! them as the separate clients they would be), send 1 KiB messages and
//! verify each echo. Prints the flood's connection attempts per second and
//! the clients' requests per second with their p50/p99 latency.
//!
//! ```sh
//! cargo run --release --example flood -- --target 127.0.0.1:8080 --sources 1000 --flood-threads 2 --rr-conns 50
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "a connection flood from many loopback sources beside well-behaved request/response clients")]
struct Args {
    /// The proxy.
    #[arg(long)]
    target: SocketAddr,
    /// Distinct flood source addresses (127.1.0.0 upward).
    #[arg(long, default_value_t = 1000)]
    sources: u32,
    /// Flood threads (0: no flood).
    #[arg(long, default_value_t = 2)]
    flood_threads: usize,
    /// New flood connections per second, all threads together (0: as fast as they can).
    #[arg(long, default_value_t = 0)]
    flood_rate: u64,
    /// Persistent well-behaved clients (0: none).
    #[arg(long, default_value_t = 50)]
    rr_conns: usize,
    /// Message size of the well-behaved clients.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

fn source(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i))
}

/// A blocking connection to `target` from `from`.
fn connect_from(from: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&from.into())?;
    s.connect(&target.into())?;
    Ok(s.into())
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..args.flood_threads)
        .map(|t| {
            let (stop, attempts, target, sources) =
                (Arc::clone(&stop), Arc::clone(&attempts), args.target, args.sources);
            // Paced: this thread's share of the rate, on a schedule from its start (catching up when behind).
            let gap = (args.flood_rate > 0)
                .then(|| Duration::from_secs_f64(args.flood_threads as f64 / args.flood_rate as f64));
            std::thread::spawn(move || {
                let mut i = t as u32;
                let (start, mut sent) = (Instant::now(), 0u32);
                while !stop.load(Ordering::Relaxed) {
                    if let Some(gap) = gap {
                        let due = start + gap * sent;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        sent += 1;
                    }
                    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
                    if let Ok(s) = s {
                        // A reset on close: no TIME_WAIT to slow the next bind down.
                        let _ = s.set_linger(Some(Duration::ZERO));
                        if s.bind(&SocketAddr::new(source(i % sources.max(1)), 0).into()).is_ok() {
                            let _ = s.connect(&target.into());
                        }
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    i = i.wrapping_add(args.flood_threads as u32);
                }
            })
        })
        .collect();
    let merged = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let (requests, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..args.rr_conns)
        .map(|n| {
            let (stop, merged, requests, errors) =
                (Arc::clone(&stop), Arc::clone(&merged), Arc::clone(&requests), Arc::clone(&errors));
            let (target, size) = (args.target, args.size);
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let msg: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                let mut back = vec![0u8; size];
                let from =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 2, 0, 1)) + n as u32)), 0);
                let Ok(mut c) = connect_from(from, target) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = c.set_nodelay(true);
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if c.write_all(&msg).and_then(|()| c.read_exact(&mut back)).is_err() || back != msg {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                merged.lock().expect("histogram").add(&h).expect("same bounds");
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for t in flood.into_iter().chain(clients) {
        let _ = t.join();
    }
    let h = merged.lock().expect("histogram");
    println!(
        "flood {:.0} conn/s from {} sources over {:.3} s; clients {:.0} req/s p50 {} us p99 {} us errors {}",
        attempts.load(Ordering::Relaxed) as f64 / secs,
        args.sources,
        secs,
        requests.load(Ordering::Relaxed) as f64 / secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        errors.load(Ordering::Relaxed)
    );
}
