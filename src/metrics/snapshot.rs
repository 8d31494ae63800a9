//! What sluice reports about itself at one instant: every counter summed
//! over the workers and every histogram merged and summarised. It is the
//! `/stats` JSON document, the source the Prometheus text is rendered from,
//! and what `sluice stats` reads back; one data path for all three.
//!
//! Times are microseconds, sizes bytes. Maps are `BTreeMap` so the JSON is
//! stable from one scrape to the next.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// sluice's version.
    pub version: String,
    /// The git commit it was built from (`unknown` outside git).
    #[serde(default)]
    pub commit: String,
    /// The relay modes this build can run here, comma-separated (`uring` only where io_uring may be set up, `sockmap` only where a BPF sockhash may be made).
    #[serde(default)]
    pub relay_modes: String,
    /// When the process started, seconds since the Unix epoch.
    #[serde(default)]
    pub start_time_secs: f64,
    /// Seconds since the process started.
    pub uptime_secs: f64,
    /// Listeners are up and the process is not draining (`/readyz`).
    pub ready: bool,
    /// A drain is under way.
    pub draining: bool,
    /// Shedding load now (`overload:`): new clients are refused.
    #[serde(default)]
    pub overloaded: bool,
    /// Times shedding started since the process started.
    #[serde(default)]
    pub overload_episodes: u64,
    /// 1 for a process started afresh, one more than its predecessor's after each takeover.
    #[serde(default)]
    pub generation: u64,
    /// Worker threads.
    pub workers: usize,
    /// Milliseconds workers spent working rather than waiting for events,
    /// summed over workers (wall time, in whole 100 ms windows).
    #[serde(default)]
    pub busy_ms: u64,
    /// One entry per configured route, in config order (routes removed by a
    /// reload stay while they have sessions).
    pub routes: Vec<RouteSnapshot>,
    /// Splice pipes, all workers.
    pub pipes: PipeSnapshot,
    /// io_uring receive buffers (`relay: uring`), all workers.
    #[serde(default)]
    pub uring: UringSnapshot,
    /// What `relay: auto` measured, all workers.
    #[serde(default)]
    pub auto: AutoSnapshot,
    /// Accept-side events, all workers.
    pub accept: AcceptSnapshot,
    /// Configuration reloads by outcome.
    pub reloads: ReloadSnapshot,
    /// Process-wide limits and their use now.
    #[serde(default)]
    pub limits: LimitsSnapshot,
    /// Control-socket peers refused: their uid was neither sluice's nor root's.
    #[serde(default)]
    pub control_refused: u64,
    /// Upstream connections this host could not open, by cause (`fds`,
    /// `memory`, `ports`, `source`), all workers; never counted against an upstream.
    #[serde(default)]
    pub local_errors: BTreeMap<String, u64>,
    /// Kernel TCP statistics from /proc/net/snmp and /proc/net/netstat
    /// (`RetransSegs`, `OutRsts`, `AttemptFails`, `EstabResets`, `ListenOverflows`, `ListenDrops`).
    pub kernel: BTreeMap<String, u64>,
}

impl Snapshot {
    /// One line for the log at exit: sessions, close reasons, bytes by mode.
    pub fn summary(&self) -> String {
        let accepted: u64 = self.routes.iter().map(|r| r.sessions.accepted).sum();
        let mut closed: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.routes {
            for (k, v) in &r.sessions.closed {
                *closed.entry(k).or_default() += v;
            }
        }
        let sum = |f: &dyn Fn(&RouteSnapshot) -> Bytes| {
            self.routes.iter().map(f).fold(Bytes::default(), |a, b| Bytes {
                spliced: a.spliced + b.spliced,
                copied: a.copied + b.copied,
                uring: a.uring + b.uring,
                sockmap: a.sockmap + b.sockmap,
            })
        };
        let (up, down) = (sum(&|r| r.client_to_upstream), sum(&|r| r.upstream_to_client));
        let closed: Vec<String> = closed.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{accepted} sessions accepted; closed: {}; bytes client→upstream {} spliced + {} copied + {} uring + {} sockmap, \
             upstream→client {} spliced + {} copied + {} uring + {} sockmap; {} pumps copied for want of a pipe; {} accepts hit the fd limit; \
             {} upstream connections failed locally",
            if closed.is_empty() { "none".to_owned() } else { closed.join(" ") },
            up.spliced,
            up.copied,
            up.uring,
            up.sockmap,
            down.spliced,
            down.copied,
            down.uring,
            down.sockmap,
            self.pipes.copy_fallbacks,
            self.accept.fd_exhausted,
            self.local_errors.values().sum::<u64>()
        )
    }
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteSnapshot {
    /// Route name.
    pub name: String,
    /// Bound listen address.
    pub listen: String,
    /// Session counts.
    pub sessions: SessionCounts,
    /// Bytes delivered client → upstream.
    pub client_to_upstream: Bytes,
    /// Bytes delivered upstream → client.
    pub upstream_to_client: Bytes,
    /// Upstream connect attempts over all upstreams.
    pub connect_attempts: u64,
    /// Upstream connect failures over all upstreams.
    pub connect_failures: u64,
    /// Connect attempts that retried on another upstream after a failure.
    #[serde(default)]
    pub retries: u64,
    /// Upstream connect time of sessions that connected.
    pub connect_time: Latency,
    /// Time from the upstream connection to its first byte.
    pub first_byte_time: Latency,
    /// Session duration, accept to close.
    pub duration: Latency,
    /// Per upstream address.
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Clients refused right after accept (or their PROXY header or
    /// ClientHello), by reason; those refused before a route was chosen
    /// count on their listener's first route. Every reason is listed.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Times the route's listener paused at a connection limit, by reason (`global`, `route`).
    #[serde(default)]
    pub accept_paused: BTreeMap<String, u64>,
    /// Upstream connections this host could not open, by cause. Every cause is listed.
    #[serde(default)]
    pub local_errors: BTreeMap<String, u64>,
}

/// Sessions of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionCounts {
    /// Accepted (including the ones refused by the per-client limit).
    pub accepted: u64,
    /// Open right now.
    pub active: u64,
    /// Closed, by reason (`clean`, `client_reset`, `upstream_reset`,
    /// `idle_timeout`, `connect_failed`, `refused`, `drained`).
    pub closed: BTreeMap<String, u64>,
}

/// Bytes one way, by how they moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Through splice pipes (never in user space).
    pub spliced: u64,
    /// Through copy buffers.
    pub copied: u64,
    /// Through the worker's io_uring (`relay: uring`).
    #[serde(default)]
    pub uring: u64,
    /// Inside the kernel, from socket to socket (`relay: sockmap`); an
    /// older process's JSON has none.
    #[serde(default)]
    pub sockmap: u64,
}

impl Bytes {
    /// All the ways together.
    pub fn total(&self) -> u64 {
        self.spliced + self.copied + self.uring + self.sockmap
    }
}

/// One upstream address of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSnapshot {
    /// `IP:port`.
    pub address: String,
    /// In the route's current set (false: dropped by DNS or a reload, kept while its numbers matter).
    #[serde(default)]
    pub current: bool,
    /// Health, ejection and load right now.
    #[serde(default)]
    pub health: UpstreamState,
    /// Sessions relayed to it.
    pub sessions: u64,
    /// Connect attempts.
    pub connect_attempts: u64,
    /// Connect failures (refused, timed out, error).
    pub connect_failures: u64,
    /// Connect time.
    pub connect_time: Latency,
    /// Smoothed RTT (`TCP_INFO`) at session close.
    pub rtt: Latency,
    /// Retransmitted segments (`TCP_INFO` total_retrans) per session.
    pub retransmits: Latency,
}

/// An upstream's health right now, and its check and ejection history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamState {
    /// Active checks say it is up (always true without checks).
    pub up: bool,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Sessions on it now, all workers.
    pub active: u64,
    /// Active checks passed.
    pub checks_ok: u64,
    /// Active checks failed.
    pub checks_failed: u64,
    /// Times checks took it down.
    pub went_down: u64,
    /// Times checks brought it back.
    pub went_up: u64,
    /// Times it was ejected.
    pub ejections: u64,
}

/// A latency (or other) distribution, summarised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Their sum (µs).
    pub sum: u64,
    /// Smallest (µs).
    pub min: u64,
    /// Median (µs).
    pub p50: u64,
    /// 90th percentile (µs).
    pub p90: u64,
    /// 99th percentile (µs).
    pub p99: u64,
    /// 99.9th percentile (µs).
    pub p999: u64,
    /// Largest (µs).
    pub max: u64,
    /// Cumulative counts at the Prometheus bucket bounds: `[le_us, count]`,
    /// bounds from `PROMETHEUS_BOUNDS_US` (the implicit `+Inf` is `count`).
    pub buckets: Vec<[u64; 2]>,
    /// Counts per power-of-two bucket for the terminal view: `[upper_us, count]`
    /// with upper bounds 1, 2, 4, … µs up to the largest value (not cumulative).
    pub pow2: Vec<[u64; 2]>,
}

/// Upper bounds (µs) of the exponential Prometheus buckets for times:
/// 50 µs to 60 s, roughly ×2.5 apart.
pub const PROMETHEUS_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 2_500_000, 10_000_000,
    60_000_000,
];

/// `relay: auto`'s measured costs (`relay::cost`), all workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoSnapshot {
    /// Runs that tried the stage that had measured dearer (or not at all).
    pub explored: u64,
    /// The message size classes some worker has measured, smallest first.
    pub classes: Vec<AutoClass>,
}

/// One message size class of `relay: auto`: what each stage costs per KiB
/// delivered, the mean over the workers that measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoClass {
    /// Its smallest message, bytes (up to twice that; the last class has no top).
    pub from_bytes: u64,
    /// Copying: nanoseconds per KiB, `None` where no worker measured it.
    pub copy_ns_per_kib: Option<u64>,
    /// Splicing: nanoseconds per KiB.
    pub splice_ns_per_kib: Option<u64>,
}

/// The receive buffers of `relay: uring`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UringSnapshot {
    /// Made so far (they are kept: the kernel's buffer ring points at them).
    pub buffers: u64,
    /// Holding received bytes not yet sent, right now.
    pub lent: u64,
    /// Receives that found no free buffer (a worker grows its set up to its cap first).
    pub starved: u64,
}

/// Splice pipes, all workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeSnapshot {
    /// Lent to pumps right now.
    pub in_use: u64,
    /// Spare in the pools right now.
    pub pooled: u64,
    /// Made with pipe2 since start.
    pub created: u64,
    /// Handed to pumps since start, from the pools or new.
    #[serde(default)]
    pub lent: u64,
    /// Times one was wanted and none could be had.
    pub refused: u64,
    /// Pipes doubled because their flow kept filling them.
    #[serde(default)]
    pub grown: u64,
    /// Times a pump that was to splice copied instead, for want of a pipe (or
    /// because splice refused the sockets); under `relay: auto` once per big message.
    pub copy_fallbacks: u64,
    /// Of those, because splice refused the pump's sockets (the rest: no pipe).
    #[serde(default)]
    pub splice_refused: u64,
    /// The process-wide cap.
    pub cap: u64,
    /// Pipe capacity held (in use and pooled), as the kernel charges it to the user.
    #[serde(default)]
    pub bytes: u64,
}

impl PipeSnapshot {
    /// The share of pipe loans the pools served without a `pipe2` call; `None` before the first loan.
    pub fn pool_hit_rate(&self) -> Option<f64> {
        (self.lent > 0).then(|| self.lent.saturating_sub(self.created) as f64 / self.lent as f64)
    }
}

/// Accept-side events, all workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptSnapshot {
    /// accept hit the fd limit (each sheds one client).
    pub fd_exhausted: u64,
    /// A listener paused at the global `max_connections`.
    pub paused_global: u64,
    /// A listener paused at its route's `max_connections`.
    pub paused_route: u64,
    /// Clients refused by `max_connections_per_client`.
    pub refused_client_limit: u64,
    /// Clients refused by an `allow`/`deny` list.
    #[serde(default)]
    pub refused_acl: u64,
    /// Clients closed for a bad or late PROXY header.
    #[serde(default)]
    pub bad_proxy_header: u64,
    /// Clients reset for bytes that are not a well-formed ClientHello (addresses routed by name).
    #[serde(default)]
    pub bad_client_hello: u64,
    /// Clients reset because no route takes their ClientHello or their original destination.
    #[serde(default)]
    pub no_route: u64,
    /// Clients of a capture address reset as a loop (sluice's own listener or connection).
    #[serde(default)]
    pub refused_loop: u64,
    /// Clients reset for not sending a complete ClientHello within `client_hello_timeout`.
    #[serde(default)]
    pub client_hello_timeout: u64,
    /// Clients routed by name to a route at its `max_connections`.
    #[serde(default)]
    pub refused_route_limit: u64,
    /// Clients over a connection rate (`max_connection_rate`, `max_connection_rate_per_client`).
    #[serde(default)]
    pub rate_limited: u64,
    /// Clients refused while shedding load (`overload:`).
    #[serde(default)]
    pub overload: u64,
}

/// Reloads by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadSnapshot {
    /// Applied.
    pub ok: u64,
    /// Refused; the old configuration kept serving.
    pub failed: u64,
    /// The last load (the one at start, or the last reload) was applied.
    #[serde(default)]
    pub last_ok: bool,
    /// When it ended, seconds since the Unix epoch.
    #[serde(default)]
    pub last_at_secs: f64,
}

/// Process-wide limits and their use (the pipe budget is in `PipeSnapshot`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsSnapshot {
    /// `max_connections`.
    pub max_connections: u64,
    /// Sessions counted against it now, all routes.
    pub connections: u64,
    /// The soft `RLIMIT_NOFILE` (after sluice raised it).
    pub max_fds: u64,
    /// File descriptors open now.
    pub open_fds: u64,
}

#[cfg(test)]
mod tests {
    use super::Bytes;

    #[test]
    fn bytes_from_an_older_process_read_with_no_sockmap_column() {
        let b: Bytes = serde_json::from_str(r#"{"spliced":5,"copied":2}"#).expect("an older process's bytes");
        assert_eq!(b, Bytes { spliced: 5, copied: 2, uring: 0, sockmap: 0 });
        let now = Bytes { sockmap: 7, ..b };
        assert_eq!(now.total(), 14, "bytes relayed in the kernel count in the total");
    }
}
