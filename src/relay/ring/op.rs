//! What the ring's users see of an operation: whose it is (`Owner`), which
//! one it is (`OpId`: a slot of the ring's table and that slot's
//! generation), how a receive takes buffers (`Receive`), the bytes it
//! brought (`Held`), what finished (`Done`, `Completion`), and the buffer
//! counters for `/metrics`.

/// Who an operation is for: a session (slab key and id, which together
/// survive slot reuse) and a direction (0 client→upstream, 1 back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The session's slot in the worker's slab.
    pub key: usize,
    /// The session's id.
    pub id: u64,
    /// 0: client → upstream, 1: upstream → client.
    pub dir: u8,
}

/// An operation in flight, as its owner knows it: its slot in the ring's
/// table and a generation (the ring's count of operations when it was
/// made), both in the `user_data` of its entries. An id kept past its operation's end (a
/// completion still on its way to its owner) matches no later operation in
/// the same slot: stopping or abandoning it does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpId(u64);

impl OpId {
    /// The id of the operation in `slot`, taken at `generation`.
    pub(super) fn new(slot: usize, generation: u32) -> OpId {
        debug_assert!(slot < u32::MAX as usize, "slot {slot} does not fit");
        OpId(u64::from(generation) << 32 | slot as u64)
    }

    /// The id a completion's `user_data` carries.
    pub(super) fn from_user_data(user_data: u64) -> OpId {
        OpId(user_data)
    }

    /// What the operation's entries carry as `user_data`.
    pub(super) fn user_data(self) -> u64 {
        self.0
    }

    /// Its slot in the table.
    pub(super) fn slot(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    /// The slot's generation when it was taken.
    pub(super) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// How a receive takes buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// One buffer per arrival until stopped; its poll stays armed between
    /// arrivals (measured cheaper than a receive per message).
    Multishot,
    /// One buffer, one completion.
    Single,
    /// One buffer, for a pump that already holds one: counted as spoken
    /// for until it completes, so such receives never take the reserve
    /// (see `Ring::may_take_another`).
    Another,
}

/// Bytes received into buffer `bid`; `start..end` not sent yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The buffer.
    pub bid: u16,
    /// First byte not yet sent.
    pub start: u32,
    /// One past the last byte received.
    pub end: u32,
}

impl Held {
    /// Bytes still to send.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// A receive: bytes in a buffer, `None` for EOF, or an errno.
    Received(Result<Option<Held>, i32>),
    /// A send: bytes sent (from the front of the held buffer), or an error.
    Sent(Result<u32, i32>),
}

/// A completion for a live owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Whose.
    pub owner: Owner,
    /// Which operation.
    pub op: OpId,
    /// What it did.
    pub done: Done,
    /// A multishot receive goes on: more completions of `op` will come.
    pub more: bool,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingCounts {
    /// Buffers made (each `buf_size` bytes).
    pub buffers: usize,
    /// Buffers lent to sessions now (not in the ring).
    pub lent: usize,
    /// Receives that found no buffer.
    pub starved: u64,
}
