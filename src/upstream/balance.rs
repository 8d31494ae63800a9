//! Choosing an upstream for a new session: pure code with no I/O. The
//! caller says which upstreams are candidates (`ok`: the right tier, up,
//! not ejected, not tried yet by this session) and how loaded each is.
//!
//! - `round_robin`: smooth weighted round robin (nginx's). Each pick adds
//!   every candidate's weight to its running score, takes the highest and
//!   subtracts the candidates' total from the winner: over `sum(weights)`
//!   picks each is chosen exactly `weight` times, interleaved (5,1,1 gives
//!   a a b a c a a). Non-candidates are skipped, so a down upstream's share
//!   spreads over the others in the same proportions.
//! - `least_conn`: the fewest active sessions per unit of weight; ties (an
//!   idle pool, say) go by smooth round robin among the tied, so weights
//!   still hold when sessions are short.
//! - `random`: power of two choices: two candidates drawn at random by
//!   weight, the less loaded one wins (ties: the first drawn, which keeps
//!   the shares proportional to weight when load is even).
//! - `hash_client_ip`: a consistent-hash ring with virtual nodes keyed by
//!   the upstream's address, so adding or removing one upstream moves only
//!   the clients that hash to its arcs; a client whose upstream is not a
//!   candidate walks on to the next point that is.

use crate::config::Balance;

/// The load and weight of each upstream, as the balancer sees them.
pub trait Loads {
    /// How many upstreams.
    fn count(&self) -> usize;
    /// Weight of upstream `i` (≥ 1).
    fn weight(&self, i: usize) -> u32;
    /// Sessions on upstream `i` now.
    fn load(&self, i: usize) -> usize;
}

/// Per-worker balancing state for one route.
#[derive(Clone, Debug)]
pub struct Balancer {
    kind: Balance,
    rr: SmoothRoundRobin,
    rng: fastrand::Rng,
}

impl Balancer {
    /// State for upstreams with these weights.
    pub fn new(kind: Balance, weights: impl IntoIterator<Item = u32>) -> Balancer {
        Balancer { kind, rr: SmoothRoundRobin::new(weights), rng: fastrand::Rng::new() }
    }

    /// Picks among the upstreams `ok` accepts. `client` is the client
    /// address hash, used with `ring` by `hash_client_ip`.
    pub fn pick(&mut self, loads: &impl Loads, ring: &Ring, client: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        match self.kind {
            Balance::RoundRobin => self.rr.pick(&ok),
            Balance::LeastConn => {
                let least = least_loaded(loads, &ok)?;
                let (lw, ll) = (u64::from(loads.weight(least)), loads.load(least) as u64);
                self.rr.pick(|i| ok(i) && loads.load(i) as u64 * lw == ll * u64::from(loads.weight(i)))
            }
            Balance::Random => {
                let a = self.weighted_sample(loads, &ok)?;
                let b = self.weighted_sample(loads, &ok)?;
                let (wa, wb) = (u64::from(loads.weight(a)), u64::from(loads.weight(b)));
                Some(if (loads.load(b) as u64) * wa < (loads.load(a) as u64) * wb { b } else { a })
            }
            Balance::HashClientIp => ring.lookup(client, &ok),
        }
    }

    fn weighted_sample(&mut self, loads: &impl Loads, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let total: u64 = (0..loads.count()).filter(|&i| ok(i)).map(|i| u64::from(loads.weight(i))).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.u64(0..total);
        for i in (0..loads.count()).filter(|&i| ok(i)) {
            let w = u64::from(loads.weight(i));
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        None
    }
}

/// The candidate with the fewest sessions per unit of weight (the first such).
fn least_loaded(loads: &impl Loads, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in (0..loads.count()).filter(|&i| ok(i)) {
        // load_i / w_i < load_b / w_b, without division.
        let better = best.is_none_or(|b| {
            (loads.load(i) as u64) * u64::from(loads.weight(b)) < (loads.load(b) as u64) * u64::from(loads.weight(i))
        });
        if better {
            best = Some(i);
        }
    }
    best
}

/// Smooth weighted round robin over whichever upstreams are candidates.
#[derive(Clone, Debug)]
pub struct SmoothRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl SmoothRoundRobin {
    /// State for upstreams with these weights (each ≥ 1).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> SmoothRoundRobin {
        let weights: Vec<i64> = weights.into_iter().map(|w| i64::from(w.max(1))).collect();
        SmoothRoundRobin { current: vec![0; weights.len()], weights }
    }

    /// The next upstream among those `ok` accepts, or `None` if it accepts none.
    pub fn pick(&mut self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total = 0;
        for (i, w) in self.weights.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Virtual nodes per unit of weight on the hash ring: enough that each
/// upstream's share is within about 1.5% of its weight's (a ring of 4 × 320
/// points: the standard deviation of a share is ~1/sqrt(320) of it).
const VNODES_PER_WEIGHT: u64 = 320;
/// The ring never holds more points than this (weights are scaled down).
const MAX_RING_POINTS: u64 = 1 << 18;

/// A consistent-hash ring: sorted `(point, upstream index)`.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring for upstreams identified by `keys` (their addresses) with `weights`.
    pub fn new<K: AsRef<[u8]>>(upstreams: impl IntoIterator<Item = (K, u32)>) -> Ring {
        let ups: Vec<(K, u32)> = upstreams.into_iter().collect();
        let total: u64 = ups.iter().map(|(_, w)| u64::from(*w) * VNODES_PER_WEIGHT).sum();
        let scale = if total > MAX_RING_POINTS { MAX_RING_POINTS as f64 / total as f64 } else { 1.0 };
        let mut points = Vec::new();
        for (i, (key, w)) in ups.iter().enumerate() {
            let n = ((u64::from(*w) * VNODES_PER_WEIGHT) as f64 * scale).ceil().max(1.0) as u64;
            for v in 0..n {
                let mut h = Fnv::new();
                h.write(key.as_ref());
                h.write(&v.to_le_bytes());
                points.push((h.finish(), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first candidate at or after `hash` going round the ring.
    pub fn lookup(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let n = self.points.len();
        let mut last = u32::MAX;
        for k in 0..n {
            let (_, i) = self.points[(start + k) % n];
            // Runs of points of one upstream are common: check each upstream once per run.
            if i != last {
                if ok(i as usize) {
                    return Some(i as usize);
                }
                last = i;
            }
        }
        None
    }
}

/// The hash of a client address for `hash_client_ip` (its IP, not its port;
/// IPv4-mapped IPv6 hashes as IPv4). Stable across processes and versions,
/// so several sluice instances send a client to the same upstream.
pub fn client_hash(ip: std::net::IpAddr) -> u64 {
    let mut h = Fnv::new();
    match crate::acl::canonical(ip) {
        std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
        std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.finish()
}

/// FNV-1a with a final avalanche (splitmix64's mixer): tiny, stable, and
/// spreads the short keys we hash evenly round the ring.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
