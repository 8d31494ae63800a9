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
//! refuse one of them early.
//!
//! A connection is charged its rate's interval in whole ticks: an interval
//! that is not a whole number of ticks (a 6,000/s rule's is 1.67) is charged
//! the whole number below or above it at random, in proportion to its
//! fraction (two thirds of the time 2 ticks, one third 1), so the average
//! rate is the configured one whatever it is, above 10,000/s too; only the
//! spacing of single connections is quantised to a tick. A connection the
//! caller's other check refuses (`allow`'s `also`) is not charged at all.

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

/// What `ClientRates::allow` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Admitted: the client's budget and the other check's were charged.
    Yes,
    /// Over the client's own rate: nothing was charged.
    OverOwn,
    /// Within the client's rate, but the other check refused: the client's
    /// budget was not charged.
    OverOther,
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
#[cfg(test)]
pub const TABLE_BYTES: usize = SETS * std::mem::size_of::<Set>();

impl ClientRates {
    /// Admits a connection of the client whose (route, prefix) hashes to
    /// `key`, at `now_ns`, if its rate allows it and `also` (the route's own
    /// rate, say) admits it too; `also` runs only when the client's rate
    /// allows, under the set's lock, and the client is charged only if it
    /// says yes.
    pub fn allow(&self, key: u64, rate: Rate, now_ns: u64, also: impl FnOnce() -> bool) -> Admit {
        let set = &self.sets[(key & (SETS as u64 - 1)) as usize];
        // Never 0, which marks an empty cell.
        let tag = ((key >> SET_BITS) & ((1 << TAG_BITS) - 1)).max(1);
        let now = (now_ns / TICK_NS) & TIME_MASK;
        let interval = charge(rate.per_second);
        let tolerance = (TICKS_PER_SECOND * (rate.burst.max(1) - 1)) / rate.per_second.max(1);
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
        let verdict = if start - now > tolerance {
            Admit::OverOwn
        } else if !also() {
            Admit::OverOther
        } else {
            set.cells[slot].store(tag << TIME_BITS | ((start + interval) & TIME_MASK), Ordering::Relaxed);
            Admit::Yes
        };
        set.lock.store(0, Ordering::Release);
        verdict
    }
}

/// Ticks in a second.
const TICKS_PER_SECOND: u64 = 1_000_000_000 / TICK_NS;

/// Whole ticks to charge one connection at `per_second`: the interval
/// (`TICKS_PER_SECOND / per_second`) rounded down, or up with a probability
/// equal to its fraction, so that the charges average the interval exactly.
fn charge(per_second: u64) -> u64 {
    let per_second = per_second.max(1);
    let (whole, fraction) = (TICKS_PER_SECOND / per_second, TICKS_PER_SECOND % per_second);
    whole + u64::from(fraction > 0 && fastrand::u64(..per_second) < fraction)
}

#[cfg(test)]
mod tests;
