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
