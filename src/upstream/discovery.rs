//! DNS discovery: a thread that resolves each route's upstream host names
//! again every `resolve_interval` and reports a route whose addresses
//! changed. Every A/AAAA record counts (a Kubernetes headless Service gives
//! one per ready pod). A name that fails to resolve keeps its last good
//! addresses, with a warning when it starts failing and a note when it
//! recovers. The control thread turns a report into a new version of the
//! route: new sessions use the new set, running sessions are not touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;

use super::set::resolve_spec;
use crate::config::UpstreamSpec;

/// A route whose names are to be watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The route's name.
    pub route: String,
    /// Its configured upstreams.
    pub specs: Vec<UpstreamSpec>,
    /// How often to resolve them.
    pub interval: Duration,
    /// What they resolve to now (parallel to `specs`).
    pub current: Vec<Vec<SocketAddr>>,
}

/// New addresses for a route's upstreams.
#[derive(Debug)]
pub struct Resolved {
    /// The route's name.
    pub route: String,
    /// The configured upstreams they were resolved for.
    pub specs: Vec<UpstreamSpec>,
    /// The addresses, parallel to `specs`.
    pub addrs: Vec<Vec<SocketAddr>>,
}

/// The running resolver: give it the full watch list whenever it changes.
pub struct Resolver {
    tx: Option<Sender<Vec<Watch>>>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the thread; reports go to `out`, and `waker` wakes their reader.
    pub fn start(out: Sender<Resolved>, waker: Arc<Waker>) -> std::io::Result<Resolver> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("sluice-dns".to_owned()).spawn(move || run(&rx, &out, &waker))?;
        Ok(Resolver { tx: Some(tx), thread: Some(thread) })
    }

    /// Watches exactly these routes from now on.
    pub fn set_watches(&self, watches: Vec<Watch>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(watches);
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            // It wakes at once on the closed channel (unless inside a slow lookup).
            let _ = t.join();
        }
    }
}

/// True if some upstream of the route is a host name (IP literals never change).
pub fn has_names(specs: &[UpstreamSpec]) -> bool {
    specs.iter().any(|s| s.address.as_socket_addr().is_none())
}

struct Entry {
    watch: Watch,
    next: Instant,
    /// Names failing right now (index into specs), to warn once per failure spell.
    failing: Vec<bool>,
}

fn run(rx: &Receiver<Vec<Watch>>, out: &Sender<Resolved>, waker: &Waker) {
    let mut entries: Vec<Entry> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = entries
            .iter()
            .map(|e| e.next)
            .min()
            .map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(now));
        match rx.recv_timeout(wait) {
            Ok(watches) => {
                entries = watches
                    .into_iter()
                    .map(|w| {
                        let kept = entries.iter().find(|e| e.watch.route == w.route && e.watch.specs == w.specs);
                        let next = kept.map_or(now + w.interval, |e| e.next.min(now + w.interval));
                        let failing = kept.map_or_else(|| vec![false; w.specs.len()], |e| e.failing.clone());
                        Entry { watch: w, next, failing }
                    })
                    .collect();
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for e in entries.iter_mut().filter(|e| Instant::now() >= e.next) {
            let addrs = resolve_all(e);
            e.next = Instant::now() + e.watch.interval;
            if addrs != e.watch.current {
                e.watch.current = addrs.clone();
                let report = Resolved { route: e.watch.route.clone(), specs: e.watch.specs.clone(), addrs };
                if out.send(report).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        }
    }
}

/// Resolves every name of a watch, keeping the last good addresses of a name that fails.
fn resolve_all(e: &mut Entry) -> Vec<Vec<SocketAddr>> {
    let w = &e.watch;
    w.specs
        .iter()
        .enumerate()
        .map(|(i, spec)| match resolve_spec(spec) {
            Ok(addrs) => {
                if std::mem::take(&mut e.failing[i]) {
                    log::info!("route {}: upstream {} resolves again", w.route, spec.address);
                }
                addrs
            }
            Err(err) => {
                if !std::mem::replace(&mut e.failing[i], true) {
                    log::warn!("route {}: {err}; keeping its last addresses", w.route);
                }
                w.current.get(i).cloned().unwrap_or_default()
            }
        })
        .collect()
}
