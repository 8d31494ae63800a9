//! Connection rate with a TLS ClientHello: each of `--conns` threads opens a
//! connection to `--target`, sends a ClientHello (a recorded one from
//! `--hello FILE`, e.g. captured from `openssl s_client`, or one generated
//! for `--sni NAME` with a post-quantum-sized key share), reads the same
//! number of bytes back from an echo upstream, and closes; over and over for
//! `--duration`. Prints connections per second and the p50/p99 of one
//! connect-send-echo-close cycle. What it measures is the cost of reading
//! the hello to route it (`server_names`) against a plain route, or against
//! another proxy, on the same workload.
//!
//! ```sh
//! cargo run --release --example hello_rate -- --target 127.0.0.1:8443 --sni app.example.com --duration 5s
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use sluice::tls::hello::build::{Spec, message, records};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "connection rate with a TLS ClientHello, through an echo upstream")]
struct Args {
    /// Where to connect (the proxy, or the echo upstream for a direct baseline).
    #[arg(long)]
    target: SocketAddr,
    /// A recorded ClientHello (the client's first bytes) to send.
    #[arg(long, conflicts_with = "sni")]
    hello: Option<PathBuf>,
    /// Generate a ClientHello for this server name (1,216-byte key share, ALPN h2 and http/1.1).
    #[arg(long)]
    sni: Option<String>,
    /// Concurrent connection loops.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// How long to run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

fn main() {
    let args = Args::parse();
    let hello = match (&args.hello, &args.sni) {
        (Some(path), _) => std::fs::read(path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display()))),
        (None, Some(name)) => records(
            &message(&Spec {
                sni: Some(name.as_bytes()),
                alpn: &[b"h2", b"http/1.1"],
                key_share: 1216,
                ..Spec::default()
            }),
            1,
        ),
        (None, None) => fail("give --hello FILE or --sni NAME"),
    };
    let hello = Arc::new(hello);
    let stop = Arc::new(AtomicBool::new(false));
    let merged = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.conns)
        .map(|_| {
            let (hello, stop, merged, errors, target) =
                (Arc::clone(&hello), Arc::clone(&stop), Arc::clone(&merged), Arc::clone(&errors), args.target);
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut back = vec![0u8; hello.len()];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = TcpStream::connect(target).and_then(|mut c| {
                        c.set_nodelay(true)?;
                        c.write_all(&hello)?;
                        c.read_exact(&mut back)?;
                        Ok(back == *hello)
                    });
                    match ok {
                        Ok(true) => {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                merged.lock().expect("histogram").add(&h).expect("same bounds");
            })
        })
        .collect();
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let h = merged.lock().expect("histogram");
    println!(
        "conns/s {:.0}  p50 {} us  p99 {} us  errors {}  hello {} bytes",
        h.len() as f64 / secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        errors.load(Ordering::Relaxed),
        hello.len()
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("hello_rate: {msg}");
    std::process::exit(2)
}
