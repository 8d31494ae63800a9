//! Per-client connection rates in memory fixed at start, shared by every
//! worker: a set-associative table of GCRA cells (see `gcra.rs`), keyed by a
//! hash of (route, client prefix).
//!
//! 65,536 sets of 7 cells, one 64-byte cache line each (a spin lock word and
//! 7 × 8 bytes): 4 MiB whatever the number of clients. A cell packs a 20-bit
//! tag (more of the key's hash than the set index took) and the client's
//! theoretical arrival time in 100 µs ticks (44 bits: 55 years). A client's
//! cell is found by its tag; a new client takes a cell whose arrival time
//! has passed (such a client is back at its full burst: forgetting it loses
//! nothing), else the cell closest to that point.
//!
//! The error this allows, and no other: (1) when more than 7 clients *being
//! limited at that moment* hash to one set, the one closest to its full
//! burst is forgotten and, if it comes back, starts over with a full burst
//! (the limit is exceeded by at most one burst per eviction, never a false
//! refusal); (2) two clients whose keys share a set and a tag (a chance of
//! about 7 in 2^20 per new client and set) share one budget, which may
//! refuse one of them early. Rates above 10,000/s per client are rounded to
//! one connection per tick.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::gcra::Rate;

const SET_BITS: u32 = 16;
const SETS: usize = 1 << SET_BITS;
const WAYS: usize = 7;
const TAG_BITS: u32 = 20;
const TIME_BITS: u32 = 64 - TAG_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Nanoseconds per tick of a cell's arrival time.
pub const TICK_NS: u64 = 100_000;

/// One cache line: a lock and 7 cells (0 = empty).
#[repr(align(64))]
#[derive(Debug, Default)]
struct Set {
    lock: AtomicU32,
    cells: [AtomicU64; WAYS],
}

/// The shared per-client table.
#[derive(Debug)]
pub struct ClientRates {
    sets: Box<[Set]>,
}

impl Default for ClientRates {
    fn default() -> Self {
        ClientRates { sets: (0..SETS).map(|_| Set::default()).collect() }
    }
}

/// Bytes the table takes, whatever the number of clients.
pub const TABLE_BYTES: usize = SETS * std::mem::size_of::<Set>();

impl ClientRates {
    /// Admits a connection of the client whose (route, prefix) hashes to `key`, at `now_ns`.
    pub fn allow(&self, key: u64, rate: Rate, now_ns: u64) -> bool {
        let set = &self.sets[(key & (SETS as u64 - 1)) as usize];
        // Never 0, which marks an empty cell.
        let tag = ((key >> SET_BITS) & ((1 << TAG_BITS) - 1)).max(1);
        let now = (now_ns / TICK_NS) & TIME_MASK;
        let interval = (rate.interval_ns() / TICK_NS).max(1);
        let tolerance = interval * (rate.burst.max(1) - 1);
        while set.lock.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        let cell = |i: usize| set.cells[i].load(Ordering::Relaxed);
        let tat_of = |c: u64| c & TIME_MASK;
        let mine = (0..WAYS).find(|&i| cell(i) >> TIME_BITS == tag);
        let (slot, tat) = match mine {
            Some(i) => (i, tat_of(cell(i))),
            // A new client: an empty or replenished cell, else the one nearest replenishment.
            None => ((0..WAYS).min_by_key(|&i| tat_of(cell(i))).unwrap_or(0), 0),
        };
        let start = tat.max(now);
        let allowed = start - now <= tolerance;
        if allowed {
            set.cells[slot].store(tag << TIME_BITS | ((start + interval) & TIME_MASK), Ordering::Relaxed);
        }
        set.lock.store(0, Ordering::Release);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn key(n: u64) -> u64 {
        // What the caller does: a well-mixed hash of (route, prefix).
        xxhash_rust::xxh3::xxh3_64(&n.to_le_bytes())
    }

    #[test]
    fn the_table_is_4_mib_and_one_cache_line_per_set() {
        assert_eq!(std::mem::size_of::<Set>(), 64);
        assert_eq!(TABLE_BYTES, 4 << 20);
    }

    #[test]
    fn each_client_gets_its_own_burst_then_the_rate() {
        let t = ClientRates::default();
        let rate = Rate { per_second: 20, burst: 10 };
        for c in 0..100 {
            let admitted = (0..30).filter(|_| t.allow(key(c), rate, SEC)).count();
            assert_eq!(admitted, 10, "client {c}");
        }
        assert!(t.allow(key(5), rate, SEC + SEC / 20), "one more after an interval");
        assert!(!t.allow(key(5), rate, SEC + SEC / 20));
    }

    #[test]
    fn a_million_sources_fit_in_the_same_memory_and_a_limited_client_stays_limited() {
        let t = ClientRates::default();
        let rate = Rate { per_second: 1, burst: 5 };
        let hog = key(u64::MAX);
        let now = 10 * SEC;
        assert_eq!((0..10).filter(|_| t.allow(hog, rate, now)).count(), 5);
        // A million other sources, once each, over 100 ms: all admitted (a
        // first connection is always within the burst) ...
        for c in 0..1_000_000u64 {
            assert!(t.allow(key(c), rate, now + c * 100), "source {c} refused on its first connection");
        }
        // ... in a table that never grew ...
        assert_eq!(t.sets.len() * std::mem::size_of::<Set>(), TABLE_BYTES);
        // ... and the hog, still inside its interval, is either still refused or (if
        // evicted by more than 7 limited sources in its set) back to a fresh burst:
        // never more than one burst over the limit.
        let again = (0..10).filter(|_| t.allow(hog, rate, now + SEC / 10)).count();
        assert!(again == 0 || again == 5, "{again}");
    }

    #[test]
    fn threads_share_one_clients_budget_exactly() {
        let t = std::sync::Arc::new(ClientRates::default());
        let rate = Rate { per_second: 1, burst: 100 };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || (0..100).filter(|_| t.allow(key(42), rate, SEC)).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }
}
