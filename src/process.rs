//! What the whole process shares across its threads: the session count and
//! its limit, the pipe budget, readiness and the drain (`/readyz`), reloads
//! by outcome, the generation, per-client rates, overload shedding, refused
//! control-socket peers, the sockets a supervisor holds too and the loop
//! guard of pass-through connections. Workers
//! count into it, the control thread sets it, the admin port reads it;
//! it knows none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::overload::OverloadState;
use crate::ratelimit::Limiter;
use crate::relay::pipe::PipeBudget;
use crate::sys::sockets;

/// Reloads by outcome, and how the last one went.
#[derive(Debug)]
pub struct Reloads {
    /// Applied.
    pub ok: AtomicU64,
    /// Refused (bad file, bind failure); the old config kept serving.
    pub failed: AtomicU64,
    /// The last load (start or reload) applied its file.
    pub last_ok: AtomicBool,
    /// When the last load (start or reload) ended, milliseconds since the Unix epoch.
    pub last_at_ms: AtomicU64,
}

impl Default for Reloads {
    /// The configuration loaded at start counts as the last successful load, as Prometheus counts its own.
    fn default() -> Reloads {
        Reloads {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
            last_at_ms: AtomicU64::new(unix_ms()),
        }
    }
}

impl Reloads {
    /// Counts a reload that was applied (`ok`) or refused, and stamps it.
    pub fn record(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Relaxed);
        self.last_ok.store(ok, Relaxed);
        self.last_at_ms.store(unix_ms(), Relaxed);
    }
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// State shared by the workers, the control thread and the admin port.
#[derive(Debug)]
pub struct ProcessState {
    /// Sessions open right now, all workers.
    pub active: AtomicUsize,
    /// `max_connections` (a reload may change it).
    pub max_connections: AtomicUsize,
    /// How many splice pipes the process may hold.
    pub pipes: Arc<PipeBudget>,
    /// Reloads by outcome.
    pub reloads: Reloads,
    /// Start finished: the workers run (`/readyz` says 503 until then).
    pub running: AtomicBool,
    /// A stop signal arrived (`/readyz` says 503 from then on, through the
    /// grace and the drain).
    pub draining: AtomicBool,
    /// When the process started.
    pub started: Instant,
    /// The same, milliseconds since the Unix epoch (`sluice_start_time_seconds`).
    pub started_unix_ms: u64,
    /// 1 for a process started afresh, one more than its predecessor's after a takeover.
    pub generation: AtomicU64,
    /// Per-client connection rates (made on first use: 4 MiB).
    pub limiter: std::sync::OnceLock<Limiter>,
    /// Overload shedding.
    pub overload: OverloadState,
    /// Control-socket peers refused: their uid was neither ours nor root's.
    pub control_refused: AtomicU64,
    /// Local addresses of pass-through upstream connections open now (the
    /// capture loop guard: `upstream::loop_guard`).
    pub loop_guard: crate::upstream::loop_guard::LoopGuard,
    /// Identities (`sockets::identity`) of listening sockets a supervisor
    /// (systemd) holds too: never filtered, as the filter would outlive us.
    supervised: Vec<u64>,
}

impl ProcessState {
    /// Fresh shared state.
    pub fn new(max_connections: usize, pipes: PipeBudget) -> ProcessState {
        ProcessState {
            active: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(max_connections),
            pipes: Arc::new(pipes),
            reloads: Reloads::default(),
            running: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            generation: AtomicU64::new(1),
            limiter: std::sync::OnceLock::new(),
            overload: OverloadState::default(),
            control_refused: AtomicU64::new(0),
            loop_guard: Default::default(),
            supervised: Vec::new(),
        }
    }

    /// The same, knowing which listening sockets a supervisor holds too.
    pub fn with_supervised(mut self, supervised: Vec<u64>) -> ProcessState {
        self.supervised = supervised;
        self
    }

    /// A supervisor (systemd) holds `socket` too (see `handshakes`).
    pub fn is_supervised(&self, socket: &impl std::os::fd::AsFd) -> bool {
        !self.supervised.is_empty() && sockets::identity(socket).is_some_and(|i| self.supervised.contains(&i))
    }
}
