//! The copy pump's buffers and the per-worker pool they come from.
//!
//! Like pipes, buffers are lent only while bytes are in flight, so an idle
//! session costs no buffer memory, and kept in a small pool so a busy worker
//! doesn't allocate per transfer.

/// Spare copy buffers of one worker.
#[derive(Debug)]
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    size: usize,
    max_pooled: usize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers keeping at most `max_pooled` spare.
    pub fn new(size: usize, max_pooled: usize) -> BufferPool {
        BufferPool { free: Vec::new(), size, max_pooled }
    }

    /// New buffer size and pool cap: spare buffers of the old size go, lent
    /// ones when they come back.
    pub fn resize(&mut self, size: usize, max_pooled: usize) {
        if size != self.size {
            self.free.clear();
            self.size = size;
        }
        self.max_pooled = max_pooled;
        self.free.truncate(max_pooled);
    }

    /// A buffer, pooled or new.
    pub fn get(&mut self) -> Box<[u8]> {
        self.free.pop().unwrap_or_else(|| vec![0; self.size].into_boxed_slice())
    }

    /// Returns a buffer (its contents are garbage from now on).
    pub fn put(&mut self, buf: Box<[u8]>) {
        if buf.len() == self.size && self.free.len() < self.max_pooled {
            self.free.push(buf);
        }
    }
}

/// Bytes read from the source and not yet written, in a lent buffer.
#[derive(Debug, Default)]
pub struct CopyStage {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl CopyStage {
    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// True while a read can add bytes.
    pub fn has_room(&self) -> bool {
        self.buf.as_ref().is_none_or(|b| self.end < b.len())
    }

    /// The free tail of the buffer, borrowing one from the pool if needed.
    pub fn space(&mut self, pool: &mut BufferPool) -> &mut [u8] {
        let buf = self.buf.get_or_insert_with(|| pool.get());
        &mut buf[self.end..]
    }

    /// Records `n` bytes read into `space()`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.buf.as_ref().is_some_and(|b| self.end <= b.len()));
    }

    /// The bytes waiting to be written.
    pub fn data(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b[self.start..self.end])
    }

    /// Records `n` bytes written out of `data()`.
    pub fn written(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the buffer back if it is empty.
    pub fn release_if_empty(&mut self, pool: &mut BufferPool) {
        if self.pending() == 0 {
            if let Some(b) = self.buf.take() {
                pool.put(b);
            }
        }
    }

    /// Gives the buffer back whatever it holds (the session is over).
    pub fn release(&mut self, pool: &mut BufferPool) {
        self.start = 0;
        self.end = 0;
        if let Some(b) = self.buf.take() {
            pool.put(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lends_and_returns_buffers() {
        let mut pool = BufferPool::new(8, 2);
        let mut st = CopyStage::default();
        assert!(st.has_room());
        let space = st.space(&mut pool);
        assert_eq!(space.len(), 8);
        space[..5].copy_from_slice(b"hello");
        st.filled(5);
        assert_eq!(st.data(), b"hello");
        st.written(2);
        assert_eq!(st.data(), b"llo");
        st.release_if_empty(&mut pool);
        assert_eq!(st.pending(), 3, "a buffer with bytes is kept");
        st.written(3);
        assert_eq!(st.pending(), 0);
        st.release_if_empty(&mut pool);
        assert!(st.buf.is_none());
        assert_eq!(pool.free.len(), 1);
    }

    #[test]
    fn a_full_buffer_has_no_room() {
        let mut pool = BufferPool::new(4, 2);
        let mut st = CopyStage::default();
        st.space(&mut pool);
        st.filled(4);
        assert!(!st.has_room());
        st.written(4);
        assert!(st.has_room(), "an emptied buffer starts over");
    }
}
