//! `relay: auto`'s rules for which stage a direction uses, decided per flow
//! from what it does at run time:
//! - a one-way bulk flow (a download, an upload, a replication stream)
//!   splices for good ([`OneWay`]);
//! - request/response traffic copies small messages, and splices big ones
//!   (reads averaging at least [`AUTO_MIN_AVG_READ`]) only while its worker
//!   is lightly loaded ([`Auto::splice_now`]; the worker's
//!   [`crate::relay::Resources::load`]).
//!
//! The pump keeps an [`Auto`] while it may still change stage and asks it
//! whenever its stage is empty, so no byte is ever left behind in a buffer.

/// `relay: auto` moves a direction to splicing for good once it has read this
/// many bytes while the other direction sent nothing, in reads averaging at
/// least [`AUTO_MIN_AVG_READ`]. A long one-way stream costs the proxy less
/// CPU spliced, however loaded the worker. See docs/performance.md.
pub const AUTO_SPLICE_AFTER: u64 = 4 << 20;

/// Below this average read size a flow is many small messages, for which
/// splicing costs more syscalls per message than copying.
pub const AUTO_MIN_AVG_READ: u64 = 8 << 10;

/// What a copying direction has read since the other direction last moved a byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OneWay {
    bytes: u64,
    reads: u64,
}

impl OneWay {
    /// Counts a read of `n` bytes.
    pub fn read(&mut self, n: usize) {
        self.bytes += n as u64;
        self.reads += 1;
    }

    /// A one-way bulk flow: enough bytes without a reply, in big reads.
    pub fn is_bulk(&self) -> bool {
        self.bytes >= AUTO_SPLICE_AFTER && self.bytes / self.reads.max(1) >= AUTO_MIN_AVG_READ
    }
}

/// A direction under `relay: auto`: its one-way count and the size of its
/// recent reads (a moving average, each read weighing a quarter), which a
/// reply does not reset: a flow of 64 KiB requests stays a flow of big reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Auto {
    /// Since the other direction last moved.
    pub one_way: OneWay,
    avg_read: u64,
}

impl Auto {
    /// Counts a read of `n` bytes.
    pub fn read(&mut self, n: usize) {
        self.one_way.read(n);
        self.avg_read = self.avg_read - self.avg_read / 4 + n as u64 / 4;
    }

    /// The other direction moved bytes: the flow is not one-way (yet).
    pub fn other_way_moved(&mut self) {
        self.one_way = OneWay::default();
    }

    /// Whether the next message should be spliced: big reads, and a lightly
    /// loaded worker. Measured on loopback (docs/performance.md, "relay:
    /// auto and load"): at a fixed light load, splicing 64 KiB messages costs
    /// the proxy about 0.6x the CPU of copying; closed loop, copying moves
    /// more messages per second: splicing leaves the worker idle between
    /// messages and the peers pay a cross-core wake-up for each one.
    pub fn splice_now(&self, light_load: bool) -> bool {
        light_load && self.avg_read >= AUTO_MIN_AVG_READ
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_takes_enough_bytes_in_big_enough_reads() {
        let mut w = OneWay::default();
        while w.bytes < AUTO_SPLICE_AFTER - (64 << 10) {
            w.read(64 << 10);
        }
        assert!(!w.is_bulk(), "short of the threshold");
        w.read(64 << 10);
        assert!(w.is_bulk());
        // Many small messages one way are not bulk, however many bytes.
        let mut small = OneWay::default();
        for _ in 0..(64 * AUTO_SPLICE_AFTER / 1024) {
            small.read(1024);
        }
        assert!(!small.is_bulk());
    }

    #[test]
    fn big_messages_splice_only_under_light_load() {
        let mut a = Auto::default();
        assert!(!a.splice_now(true), "nothing read yet");
        for _ in 0..4 {
            a.read(64 << 10);
        }
        assert!(a.splice_now(true));
        assert!(!a.splice_now(false), "a heavily loaded worker copies");
        // A reply resets the one-way count, not the read sizes.
        a.other_way_moved();
        assert_eq!(a.one_way, OneWay::default());
        assert!(a.splice_now(true));
        // A run of small reads brings the average down.
        for _ in 0..16 {
            a.read(1024);
        }
        assert!(!a.splice_now(true), "average {} after small reads", a.avg_read);
    }

    #[test]
    fn small_messages_never_splice() {
        let mut a = Auto::default();
        for _ in 0..10_000 {
            a.read(1024);
        }
        assert!(!a.splice_now(true));
    }
}
