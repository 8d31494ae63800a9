//! `relay: auto`'s measured costs: what copying and splicing each cost this
//! worker per byte delivered, by message size class, and which of the two a
//! pump uses next.
//!
//! Nothing here is tuned on one machine. A pump under `relay: auto` picks its
//! stage at the start of each run (only with nothing in flight), and the
//! worker's clock times the run: wall time inside a non-blocking run is the
//! thread's own CPU time and the kernel work of its syscalls (on loopback
//! that includes the receiving side's TCP processing, which runs in the
//! sender's context), read from the vDSO for ~20 ns instead of the ~500 ns
//! syscall `CLOCK_THREAD_CPUTIME_ID` costs on a VM. Each class keeps, per
//! stage, decayed sums of nanoseconds and bytes: their ratio is the cost
//! per byte, the recent runs weighing most. The cheaper stage is used; one
//! run in [`EXPLORE_EVERY`] of a class tries the dearer one, so a change of
//! conditions (a busier machine, a bigger pipe, another kernel) shows
//! within a few dozen runs, and no state can lock the choice in: the
//! estimate of the stage not in use is refreshed all the time.

use std::time::Instant;

/// Which stage a run used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// `read`/`write` through a buffer.
    Copy,
    /// socket → pipe → socket.
    Splice,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Copy => Way::Splice,
            Way::Splice => Way::Copy,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Message size classes: powers of two from 1 KiB (class 0: up to 2 KiB)
/// to 32 MiB and more (the last, where long one-way streams end up).
pub const CLASSES: usize = 16;

/// One run in this many of a class tries the stage that measured dearer.
/// Exploring costs at most 1/32 of the difference between the two stages
/// (3 % where one costs twice the other), and a class that sees a thousand
/// runs a second re-measures the other stage thirty times a second.
pub const EXPLORE_EVERY: u32 = 32;

/// Each run's sample weighs 1/2^MEMORY_SHIFT: the estimate is about the
/// last eight samples of its stage.
const MEMORY_SHIFT: u32 = 3;

/// A sample above this many times the current estimate is cut to it: a run
/// the scheduler preempted says nothing about its stage.
const OUTLIER: u64 = 8;

/// The size class of a flow whose messages are `bytes` long.
pub fn class_of(bytes: u64) -> usize {
    let log2 = 63 - bytes.max(1).leading_zeros() as usize;
    log2.saturating_sub(10).min(CLASSES - 1)
}

/// The smallest message of class `class`, bytes.
pub fn class_floor(class: usize) -> u64 {
    1024 << class.min(CLASSES - 1)
}

/// Decayed sums of what one stage of one class cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    ns: u64,
    bytes: u64,
}

impl Tally {
    fn measured(&self) -> bool {
        self.bytes > 0
    }

    fn add(&mut self, ns: u64, bytes: u64) {
        let ns = if self.measured() && bytes > 0 {
            // At most OUTLIER times the current cost per byte.
            let cap = (self.ns as u128 * bytes as u128 * OUTLIER as u128 / self.bytes as u128).max(1);
            ns.min(cap.min(u64::MAX as u128) as u64)
        } else {
            ns
        };
        self.ns = self.ns - (self.ns >> MEMORY_SHIFT) + ns;
        self.bytes = self.bytes - (self.bytes >> MEMORY_SHIFT) + bytes;
    }

    /// Strictly cheaper per byte than `other` (both measured).
    fn cheaper_than(&self, other: &Tally) -> bool {
        (self.ns as u128) * (other.bytes as u128) < (other.ns as u128) * (self.bytes as u128)
    }

    /// Nanoseconds per KiB, for the record.
    fn ns_per_kib(&self) -> Option<u64> {
        self.measured().then(|| (self.ns as u128 * 1024 / self.bytes as u128) as u64)
    }
}

/// One class: both stages' tallies and the runs since it last explored.
#[derive(Clone, Copy, Debug, Default)]
struct Class {
    tally: [Tally; 2],
    since_explore: u32,
}

/// The stretch of a run being timed: started by [`Costs::start`], ended by
/// [`Costs::finish`]. One per worker (one pump runs at a time), so a pump
/// carries none of it between runs.
#[derive(Clone, Copy, Debug)]
struct Running {
    started: Instant,
    class: usize,
    way: Way,
    /// The pump's bytes delivered when the stretch began.
    from: u64,
}

/// One worker's costs of copying and splicing, by size class.
pub struct Costs {
    classes: [Class; CLASSES],
    /// Runs that tried the stage that had measured dearer (or not at all).
    pub explored: u64,
    /// A sample came in since the worker last published the estimates.
    changed: bool,
    running: Option<Running>,
    /// Tests replace the clock: nanoseconds a run of this stage moving
    /// this many bytes "took".
    #[cfg(test)]
    pub script: Option<Box<dyn FnMut(Way, u64) -> u64>>,
}

impl std::fmt::Debug for Costs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Costs").field("explored", &self.explored).finish_non_exhaustive()
    }
}

impl Default for Costs {
    fn default() -> Costs {
        Costs {
            classes: [Class::default(); CLASSES],
            explored: 0,
            changed: false,
            running: None,
            #[cfg(test)]
            script: None,
        }
    }
}

impl Costs {
    /// The stage for the next run of a flow of class `class`: the cheaper
    /// one, or now and then the other. A stage never measured in this class
    /// is tried first (copy before splice, so a class starts as `auto`
    /// always did). `true` with it: this run only measures (explores).
    pub fn choose(&mut self, class: usize) -> (Way, bool) {
        let c = &mut self.classes[class];
        let [copy, splice] = c.tally;
        let (best, unmeasured) = match (copy.measured(), splice.measured()) {
            (false, _) => (Way::Copy, true),
            (true, false) => (Way::Splice, true),
            (true, true) => (if splice.cheaper_than(&copy) { Way::Splice } else { Way::Copy }, false),
        };
        if unmeasured {
            self.explored += 1;
            return (best, true);
        }
        c.since_explore += 1;
        if c.since_explore >= EXPLORE_EVERY {
            c.since_explore = 0;
            self.explored += 1;
            return (best.other(), true);
        }
        (best, false)
    }

    /// A stretch of class `class` using `way` starts now, its pump having
    /// delivered `delivered` bytes so far.
    pub fn start(&mut self, class: usize, way: Way, delivered: u64) {
        self.running = Some(Running { started: Instant::now(), class, way, from: delivered });
    }

    /// The stretch ended with its pump at `delivered` bytes: its time goes
    /// to its stage, with the bytes it delivered.
    pub fn finish(&mut self, delivered: u64) {
        let Some(r) = self.running.take() else { return };
        self.changed = true;
        let bytes = delivered.saturating_sub(r.from);
        #[cfg(test)]
        if let Some(script) = self.script.as_mut() {
            let ns = script(r.way, bytes);
            self.classes[r.class].tally[r.way.index()].add(ns, bytes);
            return;
        }
        let ns = r.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.classes[r.class].tally[r.way.index()].add(ns, bytes);
    }

    /// Whether a sample came in since [`Costs::published`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The worker has published the estimates as they are now.
    pub fn published(&mut self) {
        self.changed = false;
    }

    /// The current estimates, nanoseconds per KiB for (copy, splice), of
    /// every class either stage has measured.
    pub fn estimates(&self) -> impl Iterator<Item = (usize, Option<u64>, Option<u64>)> + '_ {
        self.classes.iter().enumerate().filter_map(|(i, c)| {
            let [copy, splice] = c.tally;
            (copy.measured() || splice.measured()).then(|| (i, copy.ns_per_kib(), splice.ns_per_kib()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_from_a_kib() {
        assert_eq!(class_of(0), 0);
        assert_eq!(class_of(1024), 0);
        assert_eq!(class_of(2047), 0);
        assert_eq!(class_of(2048), 1);
        assert_eq!(class_of(64 << 10), 6);
        assert_eq!(class_of(1 << 20), 10);
        assert_eq!(class_of(u64::MAX), CLASSES - 1);
        for class in 0..CLASSES {
            assert_eq!(class_of(class_floor(class)), class);
        }
    }

    /// Runs `runs` decisions of class `class` with each stage costing the
    /// given nanoseconds per byte for 64 KiB runs; returns how many used splice.
    fn drive(costs: &mut Costs, class: usize, runs: u32, copy_ns: u64, splice_ns: u64) -> u32 {
        costs.script = Some(Box::new(move |way, bytes| bytes * if way == Way::Splice { splice_ns } else { copy_ns }));
        let mut spliced = 0;
        for _ in 0..runs {
            let (way, _) = costs.choose(class);
            costs.start(class, way, 0);
            costs.finish(64 << 10);
            spliced += (way == Way::Splice) as u32;
        }
        spliced
    }

    #[test]
    fn both_stages_are_tried_first_then_the_cheaper_is_kept_with_a_look_at_the_other() {
        let mut c = Costs::default();
        assert_eq!(c.choose(3), (Way::Copy, true), "unmeasured: copy first");
        c.classes[3].tally[0].add(1000, 1000);
        assert_eq!(c.choose(3), (Way::Splice, true), "then splice");
        let spliced = drive(&mut c, 3, 320, 2, 1);
        assert!((300..320).contains(&spliced), "splice is cheaper: {spliced} of 320");
        assert_eq!(320 - spliced, 320 / EXPLORE_EVERY, "copy tried once in every {EXPLORE_EVERY} runs");
    }

    #[test]
    fn when_the_costs_swap_the_choice_follows_within_a_few_explorations() {
        let mut c = Costs::default();
        drive(&mut c, 6, 640, 3, 1);
        assert_eq!(c.choose(6), (Way::Splice, false));
        // Splicing becomes three times dearer than copying: within two
        // explorations of copy the choice has moved, and stays moved.
        let moving = drive(&mut c, 6, 2 * EXPLORE_EVERY, 1, 3);
        assert!(moving < 2 * EXPLORE_EVERY, "never left splice");
        let settled = drive(&mut c, 6, 320, 1, 3);
        assert_eq!(settled, 320 / EXPLORE_EVERY, "after the swap splice is only tried");
        // And back.
        let spliced = drive(&mut c, 6, 2000, 3, 1);
        assert!(spliced > 1800, "splice is cheaper again: {spliced} of 2000");
        assert_eq!(c.choose(5), (Way::Copy, true), "other classes learn on their own");
    }

    #[test]
    fn a_preempted_run_moves_the_estimate_only_so_far() {
        let mut t = Tally::default();
        for _ in 0..16 {
            t.add(64 << 10, 64 << 10);
        }
        let before = t.ns_per_kib().unwrap();
        t.add(1_000_000_000, 64 << 10);
        let after = t.ns_per_kib().unwrap();
        assert!(after < before * 2, "one outlier took the estimate from {before} to {after} ns/KiB");
    }

    #[test]
    fn a_run_that_moved_nothing_still_costs() {
        let mut t = Tally::default();
        t.add(1000, 1000);
        let base = t;
        t.add(500, 0);
        assert!(base.cheaper_than(&t));
    }
}
