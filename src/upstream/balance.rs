//! Choosing an upstream for a new session: smooth weighted round robin
//! (nginx's algorithm), pure code with no I/O.
//!
//! Each pick adds every upstream's weight to its running score, takes the
//! highest, and subtracts the total from the winner. Over any window of
//! `sum(weights)` picks each upstream is chosen exactly `weight` times, and
//! the picks are interleaved (5,1,1 gives a a b a c a a, not a a a a a b c).

/// Per-worker round-robin state for one route.
#[derive(Clone, Debug)]
pub struct SmoothRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl SmoothRoundRobin {
    /// State for upstreams with these weights (each ≥ 1).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> SmoothRoundRobin {
        let weights: Vec<i64> = weights.into_iter().map(|w| i64::from(w.max(1))).collect();
        let total = weights.iter().sum();
        SmoothRoundRobin { current: vec![0; weights.len()], weights, total }
    }

    /// The index of the upstream for the next session, or `None` if there are none.
    pub fn pick(&mut self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            self.current[i] += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= self.total;
        Some(b)
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// No upstreams.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_rotate() {
        let mut rr = SmoothRoundRobin::new([1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_honoured_and_interleaved() {
        let mut rr = SmoothRoundRobin::new([5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[rr.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn empty_set_has_no_pick() {
        assert_eq!(SmoothRoundRobin::new([]).pick(), None);
    }
}
