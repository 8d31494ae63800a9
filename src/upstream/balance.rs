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
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    struct Fixed {
        weights: Vec<u32>,
        loads: Vec<usize>,
    }

    impl Loads for Fixed {
        fn count(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn load(&self, i: usize) -> usize {
            self.loads[i]
        }
    }

    fn fixed(weights: &[u32]) -> Fixed {
        Fixed { weights: weights.to_vec(), loads: vec![0; weights.len()] }
    }

    fn shares(kind: Balance, weights: &[u32], n: usize) -> Vec<usize> {
        let loads = fixed(weights);
        let ring = Ring::new(weights.iter().enumerate().map(|(i, &w)| (format!("10.0.0.{i}:80"), w)));
        let mut b = Balancer::new(kind, weights.iter().copied());
        let mut counts = vec![0; weights.len()];
        for c in 0..n {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + c as u32));
            counts[b.pick(&loads, &ring, client_hash(ip), |_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_exact_and_interleaved() {
        let mut rr = SmoothRoundRobin::new([5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(shares(Balance::RoundRobin, &[1, 2, 3], 3000), [500, 1000, 1500]);
    }

    #[test]
    fn round_robin_spreads_a_missing_share_proportionally() {
        let mut rr = SmoothRoundRobin::new([1, 2, 3]);
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[rr.pick(|i| i != 0).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 200, 300]);
        assert_eq!(SmoothRoundRobin::new([]).pick(|_| true), None);
        assert_eq!(SmoothRoundRobin::new([1, 1]).pick(|_| false), None);
    }

    fn within(counts: &[usize], weights: &[u32], tolerance: f64) {
        let n: usize = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = n as f64 * f64::from(*w) / f64::from(total);
            assert!((*c as f64 - want).abs() <= want * tolerance, "{counts:?} vs weights {weights:?}");
        }
    }

    #[test]
    fn random_and_least_conn_follow_weights_when_idle() {
        within(&shares(Balance::Random, &[1, 2, 3], 30_000), &[1, 2, 3], 0.05);
        assert_eq!(shares(Balance::LeastConn, &[1, 2, 3], 3000), [500, 1000, 1500], "idle ties go round robin");
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_per_weight() {
        let mut b = Balancer::new(Balance::LeastConn, [1, 1, 2]);
        let ring = Ring::default();
        let loads = Fixed { weights: vec![1, 1, 2], loads: vec![3, 1, 4] };
        // Per weight: 3, 1, 2.
        assert_eq!(b.pick(&loads, &ring, 0, |_| true), Some(1));
        assert_eq!(b.pick(&loads, &ring, 0, |i| i != 1), Some(2));
        // Simulate long sessions: each pick adds one to its upstream.
        let mut live = Fixed { weights: vec![1, 1, 1], loads: vec![6, 0, 0] };
        for _ in 0..12 {
            let i = b.pick(&live, &ring, 0, |_| true).unwrap();
            live.loads[i] += 1;
        }
        assert_eq!(live.loads, [6, 6, 6], "the newcomers fill the empty ones first");
    }

    #[test]
    fn random_prefers_the_less_loaded_of_two() {
        let loads = Fixed { weights: vec![1, 1], loads: vec![100, 0] };
        let mut b = Balancer::new(Balance::Random, [1, 1]);
        let ring = Ring::default();
        let to_busy = (0..1000).filter(|_| b.pick(&loads, &ring, 0, |_| true) == Some(0)).count();
        // Only when both draws are the busy one (1 in 4).
        assert!((150..350).contains(&to_busy), "{to_busy}");
    }

    #[test]
    fn hashing_is_sticky_and_weighted() {
        let ring = Ring::new([("a:1", 1), ("b:1", 1), ("c:1", 2)]);
        let ip = |n: u32| client_hash(IpAddr::V4(Ipv4Addr::from(n)));
        for n in 0..100 {
            assert_eq!(ring.lookup(ip(n), |_| true), ring.lookup(ip(n), |_| true));
        }
        within(&shares(Balance::HashClientIp, &[1, 1, 2], 20_000), &[1, 1, 2], 0.15);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_hash(mapped), client_hash("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn removing_one_of_n_moves_only_its_share() {
        for n in [3usize, 5, 10] {
            let names: Vec<String> = (0..n).map(|i| format!("10.1.0.{i}:8080")).collect();
            let full = Ring::new(names.iter().map(|k| (k.as_str(), 1)));
            let less = Ring::new(names[1..].iter().map(|k| (k.as_str(), 1)));
            let clients = 20_000u32;
            let mut moved = 0;
            for c in 0..clients {
                let h = client_hash(IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + c)));
                let before = &names[full.lookup(h, |_| true).unwrap()];
                let after = &names[1 + less.lookup(h, |_| true).unwrap()];
                if before != after {
                    moved += 1;
                    assert_eq!(before, &names[0], "only clients of the removed upstream move");
                }
            }
            let frac = f64::from(moved) / f64::from(clients);
            assert!(frac <= 1.0 / n as f64 + 0.05, "n={n}: {frac:.3} of clients moved");
        }
    }

    #[test]
    fn an_unavailable_upstream_hands_its_clients_to_the_next_point() {
        let ring = Ring::new([("a:1", 1), ("b:1", 1), ("c:1", 1)]);
        let mut moved_to = [0; 3];
        for c in 0..3000u32 {
            let h = client_hash(IpAddr::V4(Ipv4Addr::from(c)));
            let first = ring.lookup(h, |_| true).unwrap();
            let without_0 = ring.lookup(h, |i| i != 0).unwrap();
            if first != 0 {
                assert_eq!(first, without_0, "clients of the others stay put");
            } else {
                moved_to[without_0] += 1;
            }
        }
        assert!(moved_to[1] > 0 && moved_to[2] > 0, "the failed one's clients spread: {moved_to:?}");
        assert_eq!(ring.lookup(1, |_| false), None);
    }
}
