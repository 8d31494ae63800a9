//! The provided buffers of a worker's ring: the page-aligned buffer ring
//! shared with the kernel, the buffers it points at (made on demand up to a
//! cap, freed only with the ring), giving a buffer back (`put`), and how
//! many are left for whom (`unclaimed`, `reserve`).

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, types};

/// Slots in the provided-buffer ring: the most buffers a worker can have.
pub(super) const BUF_RING_SLOTS: u16 = 4096;
/// Buffers are added this many at a time.
const GROW_BY: usize = 16;
/// The one buffer group.
pub(super) const GROUP: u16 = 0;

/// The provided buffers: a page-aligned ring of `BUF_RING_SLOTS` entries
/// shared with the kernel, and the buffers it points at.
pub(super) struct Buffers {
    ring: NonNull<types::BufRingEntry>,
    /// The buffers, by id; each `size` bytes, allocated once and freed with the ring.
    mem: Vec<NonNull<u8>>,
    pub(super) size: usize,
    max: usize,
    pub(super) made: usize,
    /// Our tail (the kernel consumes from its head up to it).
    tail: u16,
    /// Buffers given back and not yet taken by a receive, as far as we know.
    pub(super) given: usize,
    /// Receives in flight for pumps that already hold a buffer (`Receive::Another`):
    /// each will take one, so those buffers are spoken for.
    pub(super) claimed: usize,
    pub(super) leak: bool,
}

impl Buffers {
    fn layout() -> Layout {
        let bytes = BUF_RING_SLOTS as usize * std::mem::size_of::<types::BufRingEntry>();
        Layout::from_size_align(bytes, 4096).expect("a valid layout")
    }

    pub(super) fn new(uring: &IoUring, size: usize, max: usize) -> io::Result<Buffers> {
        // SAFETY: a non-zero size; the result is checked for null.
        let ring = NonNull::new(unsafe { alloc_zeroed(Self::layout()) }.cast::<types::BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let bufs = Buffers { ring, mem: Vec::new(), size, max, made: 0, tail: 0, given: 0, claimed: 0, leak: false };
        // SAFETY: the ring memory is page-aligned, BUF_RING_SLOTS entries
        // long, zeroed (tail 0), and lives until `Buffers` drops, which
        // happens after the IoUring that uses it (field order in `Ring`:
        // `uring` is dropped first, and the kernel drops the registration
        // with the ring).
        unsafe { uring.submitter().register_buf_ring_with_flags(ring.as_ptr() as u64, BUF_RING_SLOTS, GROUP, 0) }?;
        Ok(bufs)
    }

    pub(super) fn ptr(&self, bid: u16) -> NonNull<u8> {
        self.mem[bid as usize]
    }

    pub(super) fn can_grow(&self) -> bool {
        self.made < self.max
    }

    /// Buffers in the ring, roughly: given back minus taken (a receive's
    /// completion takes one). Used only to decide when starved owners retry.
    pub(super) fn available(&self) -> usize {
        self.given
    }

    /// Buffers that may still be lent (in the ring or yet to be made) and
    /// are not spoken for by a receive in flight.
    pub(super) fn unclaimed(&self) -> usize {
        (self.given + self.max - self.made).saturating_sub(self.claimed)
    }

    /// The last buffers, which only a pump that holds none may take: a
    /// quarter of the cap, at least one. Pumps hold buffers while their
    /// destination is blocked, and a destination may be blocked until a
    /// receive elsewhere gets a buffer (an echo whose replies we cannot
    /// receive stops reading): if pumps that already hold one could take
    /// the last, such flows could hold them all and wait on each other.
    pub(super) fn reserve(&self) -> usize {
        (self.max / 4).max(1)
    }

    /// Adds up to `GROW_BY` new buffers to the ring.
    pub(super) fn grow(&mut self) {
        for _ in 0..GROW_BY {
            if !self.can_grow() {
                break;
            }
            let buf: Box<[u8]> = vec![0u8; self.size].into_boxed_slice();
            let ptr = NonNull::new(Box::into_raw(buf).cast::<u8>()).expect("a box is never null");
            self.mem.push(ptr);
            self.made += 1;
            self.put((self.made - 1) as u16);
        }
    }

    /// Puts buffer `bid` at the tail of the ring and publishes the tail.
    pub(super) fn put(&mut self, bid: u16) {
        if bid as usize >= self.mem.len() {
            return;
        }
        let slot = (self.tail & (BUF_RING_SLOTS - 1)) as usize;
        // SAFETY: `slot` < BUF_RING_SLOTS, inside the ring allocation; the
        // kernel reads entries only between its head and the published tail,
        // and this slot is past the tail until the store below publishes it.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        entry.set_addr(self.mem[bid as usize].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's `resv`, which the kernel
        // never reads as an entry field; it is read with acquire ordering by
        // the kernel, so the release store publishes the entry written above.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.given += 1;
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        for p in self.mem.drain(..) {
            // SAFETY: each pointer came from `Box::into_raw` of a `size`-byte
            // boxed slice in `grow`, and the kernel no longer uses it: the
            // ring that could has been dropped and every operation cancelled.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p.as_ptr(), self.size)) });
        }
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ring.as_ptr().cast(), Self::layout()) };
    }
}
