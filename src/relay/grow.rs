//! When a splice pump's pipe is too small for its flow, and when a pipe
//! counts as full.
//!
//! Every pump starts on a pipe of the configured `pipe_size`. A flow that
//! leaves its pipe full after [`GROW_AFTER`] reads in a row, while its
//! destination takes all of it each time, has more queued than the pipe
//! holds and somewhere to put it: the pipe, not either socket, bounds each
//! splice, and every byte costs more syscalls and more trips through
//! `epoll_wait` than it needs to. Such a pipe is doubled (`PipePool::grow`,
//! within the pipe budget) up to the route's `notsent_lowat` (the unsent
//! bytes the route lets a socket hold; a pipe is unsent bytes held in the
//! proxy, and a destination takes about that much per writable wake-up), or
//! up to `fs.pipe-max-size` when `notsent_lowat` is off. The count starts over
//! when a read leaves the pipe short of full (the source had less than the
//! pipe could take) or when the destination blocks with bytes still in the
//! pipe (it takes less than the pipe holds: `notsent_lowat`, a slow reader,
//! a rate-capped link). A bigger pipe would buy nothing then but bytes held
//! in the proxy. So the size follows what each flow does: request/response
//! traffic, slow sources and slow destinations keep the small pipe; a bulk
//! stream grows until its reads no longer fill it or its destination can't
//! take a pipeful at once.

/// A pipe counts as full once it holds this many bytes per page of its size:
/// the kernel fills pipes by slots (one per page fragment of an skb), so a
/// pipe of N pages is full with N 1448-byte segments from a 1500-MTU NIC,
/// long before N pages of bytes. On loopback skbs carry whole pages and the
/// pipe takes more, which is full too. A 64 KiB pipe is full at 23,168
/// bytes: HAProxy's `SPLICE_FULL_HINT`.
const FULL_PER_PAGE: usize = 1448;

/// Reads in a row that leave the pipe full before it grows: one full read
/// can be a single large message, several in a row are a stream.
pub const GROW_AFTER: u8 = 4;

/// The bytes past which a pipe of `capacity` counts as full: stop filling
/// it, drain it first.
pub fn full_hint(capacity: usize) -> usize {
    (capacity / super::pipe::PAGE).max(1) * FULL_PER_PAGE
}

/// A splice pump's record of how its reads fill its pipe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Growth {
    full_in_a_row: u8,
    /// The pool said no (budget spent, kernel refused): don't ask again for this flow.
    refused: bool,
}

impl Growth {
    /// A read left `len` bytes in a pipe of `capacity` that may grow to
    /// `limit`: true if the pipe should be doubled now.
    pub fn after_read(&mut self, len: usize, capacity: usize, limit: usize) -> bool {
        if len < full_hint(capacity) {
            self.full_in_a_row = 0;
            return false;
        }
        self.full_in_a_row = self.full_in_a_row.saturating_add(1);
        if self.refused || capacity >= limit || self.full_in_a_row < GROW_AFTER {
            return false;
        }
        self.full_in_a_row = 0;
        true
    }

    /// The destination would take no more with bytes still in the pipe.
    pub fn dst_blocked(&mut self) {
        self.full_in_a_row = 0;
    }

    /// The pool could not grow the pipe.
    pub fn refused(&mut self) {
        self.refused = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K64: usize = 64 << 10;
    const M1: usize = 1 << 20;

    #[test]
    fn the_hint_is_one_segment_per_page() {
        assert_eq!(full_hint(K64), 23_168, "HAProxy's SPLICE_FULL_HINT for the default pipe");
        assert_eq!(full_hint(4 * K64), 4 * 23_168);
        assert_eq!(full_hint(100), 1448, "never zero");
    }

    #[test]
    fn grows_after_enough_full_reads_in_a_row_only() {
        let mut g = Growth::default();
        for _ in 1..GROW_AFTER {
            assert!(!g.after_read(K64, K64, M1));
        }
        assert!(g.after_read(K64, K64, M1), "the {GROW_AFTER}th full read in a row grows the pipe");
        // The count starts over for the grown pipe, and a short read resets it.
        for _ in 1..GROW_AFTER {
            assert!(!g.after_read(2 * K64, 2 * K64, M1));
        }
        assert!(!g.after_read(1000, 2 * K64, M1), "a short read: the socket, not the pipe, was the limit");
        for _ in 1..GROW_AFTER {
            assert!(!g.after_read(2 * K64, 2 * K64, M1));
        }
        assert!(g.after_read(2 * K64, 2 * K64, M1));
    }

    #[test]
    fn a_destination_that_blocks_with_bytes_left_starts_the_count_over() {
        let mut g = Growth::default();
        for round in 0..100 {
            for _ in 1..GROW_AFTER {
                assert!(!g.after_read(K64, K64, M1), "round {round}");
            }
            g.dst_blocked();
        }
        for _ in 1..GROW_AFTER {
            assert!(!g.after_read(K64, K64, M1));
        }
        assert!(g.after_read(K64, K64, M1), "once it keeps up again, the pipe grows");
    }

    #[test]
    fn request_response_and_slow_flows_never_grow() {
        let mut g = Growth::default();
        for _ in 0..1000 {
            assert!(!g.after_read(1024, K64, M1), "1 KiB messages");
            assert!(!g.after_read(full_hint(K64) - 1, K64, M1), "just short of full");
        }
    }

    #[test]
    fn doubles_up_to_the_limit_and_no_further() {
        let mut g = Growth::default();
        let mut cap = K64;
        for _ in 0..100 {
            if g.after_read(cap, cap, 256 << 10) {
                cap *= 2;
            }
        }
        assert_eq!(cap, 256 << 10);
    }

    #[test]
    fn stops_at_the_limit_and_after_a_refusal() {
        let mut g = Growth::default();
        for _ in 0..100 {
            assert!(!g.after_read(M1, M1, M1), "at the limit");
        }
        let mut g = Growth::default();
        g.refused();
        for _ in 0..100 {
            assert!(!g.after_read(K64, K64, M1), "refused once, never asked again");
        }
    }
}
