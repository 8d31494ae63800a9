//! `relay: auto`'s rule for when a copying direction starts splicing: a
//! one-way bulk flow (a download, an upload, a replication stream) splices,
//! request/response traffic keeps copying. The pump keeps a `OneWay` while
//! it copies and asks it after each read.

/// `relay: auto` moves a direction from copy to splice once it has read this
/// many bytes while the other direction sent nothing, in reads averaging at
/// least [`AUTO_MIN_AVG_READ`]. Request/response traffic, even with 1 MiB
/// messages, keeps copying: measured on loopback, copying beats splicing for
/// 64 KiB and 1 MiB exchanges (the peers on the other end pay less per
/// message), while a long one-way stream costs the proxy less CPU spliced.
/// See docs/performance.md.
pub const AUTO_SPLICE_AFTER: u64 = 4 << 20;

/// Below this average read size a one-way flow is many small messages, for
/// which splicing costs more syscalls per message than copying.
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
}
