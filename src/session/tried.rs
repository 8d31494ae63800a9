//! The upstreams a session has tried, in order: a fixed array, so a session
//! costs no allocation for it (`retries` is at most 10).

/// The most connect attempts a session makes (`retries` is at most 10).
pub const MAX_ATTEMPTS: usize = 11;

/// The upstreams a session has tried, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried {
    n: u8,
    list: [u32; MAX_ATTEMPTS],
}

impl Tried {
    /// Records an attempt on upstream `i` (beyond `MAX_ATTEMPTS`, the count still grows).
    pub fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(usize::from(self.n)) {
            *slot = i as u32;
        }
        self.n = self.n.saturating_add(1);
    }

    /// Attempts made.
    pub fn len(&self) -> usize {
        usize::from(self.n)
    }

    /// No attempt yet.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The upstream of the last attempt (past `MAX_ATTEMPTS`, the last one recorded).
    pub fn last(&self) -> Option<usize> {
        let n = self.len().min(MAX_ATTEMPTS);
        n.checked_sub(1).map(|i| self.list[i] as usize)
    }

    /// Upstream `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len().min(MAX_ATTEMPTS)].contains(&(i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_was_tried_and_counts_past_the_array() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in 0..MAX_ATTEMPTS + 2 {
            t.push(i * 2);
        }
        assert_eq!(t.len(), MAX_ATTEMPTS + 2);
        assert!(t.contains(0) && t.contains(2 * (MAX_ATTEMPTS - 1)));
        assert!(!t.contains(1));
    }

    #[test]
    fn the_last_attempt_is_the_current_upstream() {
        let mut t = Tried::default();
        assert_eq!(t.last(), None);
        t.push(3);
        t.push(1);
        assert_eq!(t.last(), Some(1));
    }
}
