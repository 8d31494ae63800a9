//! Completions: each CQE turned into a completion for its live owner, or,
//! for an operation its owner abandoned, into freeing what it held (and
//! telling whether a cancelled receive had taken bytes); the backlog of
//! completions reaped while a closing session was settled.
//!
//! Only a completion without `more` ends an operation: a multishot receive
//! stays in the table (and may bring more buffers, also once stopped or
//! abandoned) until its final completion.

use io_uring::cqueue;

use super::{CANCEL, Completion, Done, Held, Kind, Op, OpId, Owner, Ring};

impl Ring {
    /// The next completion for a live owner, if any.
    pub fn next_completion(&mut self) -> Option<Completion> {
        if let Some(c) = self.backlog.pop_front() {
            return Some(c);
        }
        loop {
            let cqe = self.uring.completion().next()?;
            if let Some(c) = self.complete(&cqe, &mut |_, _| {}) {
                return Some(c);
            }
        }
    }

    /// Completions already taken off the queue for `key`'s session (a
    /// session being closed): frees their buffers. Returns the directions
    /// in which bytes received will now never be delivered.
    pub fn forget(&mut self, key: usize, id: u64) -> [bool; 2] {
        let mut lost = [false; 2];
        let bufs = &mut self.bufs;
        self.backlog.retain(|c| {
            if c.owner.key != key || c.owner.id != id {
                return true;
            }
            if let Done::Received(Ok(Some(h))) = c.done {
                lost[c.owner.dir as usize & 1] = true;
                bufs.put(h.bid);
            }
            false
        });
        lost
    }

    /// Submits what was abandoned and reaps what that cancelled, so the
    /// sockets of a closing session are released by the kernel before they
    /// close. Returns the directions of session `key`/`id` whose cancelled
    /// receive had already taken bytes.
    pub fn settle(&mut self, key: usize, id: u64) -> [bool; 2] {
        let _ = self.submit();
        let mut lost = [false; 2];
        self.reap(&mut |o: Owner, got: bool| {
            if o.key == key && o.id == id {
                lost[o.dir as usize & 1] |= got;
            }
        });
        let more = self.forget(key, id);
        [lost[0] | more[0], lost[1] | more[1]]
    }

    /// Reaps every completion now in the queue: abandoned ones free their
    /// buffers (telling `seen` whether a cancelled receive had taken
    /// bytes), live ones go to the backlog.
    pub(super) fn reap(&mut self, seen: &mut dyn FnMut(Owner, bool)) {
        loop {
            let Some(cqe) = self.uring.completion().next() else {
                return;
            };
            if let Some(c) = self.complete(&cqe, seen) {
                self.backlog.push_back(c);
            }
        }
    }

    /// Turns a CQE into a completion for a live owner, or frees what an
    /// abandoned operation held.
    fn complete(&mut self, cqe: &cqueue::Entry, seen: &mut dyn FnMut(Owner, bool)) -> Option<Completion> {
        let ud = cqe.user_data();
        if ud == CANCEL {
            return None;
        }
        let op = OpId::from_user_data(ud);
        let more = cqueue::more(cqe.flags());
        let picked = cqueue::buffer_select(cqe.flags());
        let Some(&mut Op { owner, abandoned, generation, .. }) = self.op_mut(op) else {
            // No operation of ours (cannot happen: an operation leaves the
            // table with its last completion); a buffer it brought goes back.
            if let Some(bid) = picked {
                self.bufs.given = self.bufs.given.saturating_sub(1);
                self.bufs.put(bid);
            }
            return None;
        };
        let o = if more {
            Op { owner, kind: Kind::Recv { another: false }, abandoned, generation }
        } else {
            let o = self.ops.remove(op.slot());
            self.unclaim(&o.kind);
            o
        };
        let res = cqe.result();
        if picked.is_some() {
            self.bufs.given = self.bufs.given.saturating_sub(1);
        }
        let done = match (o.kind, res, picked) {
            (Kind::Recv { .. }, n @ 1.., Some(bid)) => Done::Received(Ok(Some(Held { bid, start: 0, end: n as u32 }))),
            (Kind::Recv { .. }, n, picked) => {
                if let Some(bid) = picked {
                    // A buffer with no bytes in it goes straight back.
                    self.bufs.put(bid);
                }
                if n == -nix::libc::ENOBUFS {
                    self.starved_count += 1;
                    if !o.abandoned {
                        if self.bufs.can_grow() {
                            self.bufs.grow();
                        }
                        self.starved.push(o.owner);
                    }
                }
                Done::Received(match n {
                    0 => Ok(None),
                    n if n < 0 => Err(-n),
                    _ => Err(nix::libc::EIO), // bytes without a buffer: cannot happen
                })
            }
            (Kind::Send { bid }, res, _) => {
                if o.abandoned {
                    self.bufs.put(bid);
                }
                Done::Sent(if res >= 0 { Ok(res as u32) } else { Err(-res) })
            }
        };
        if o.abandoned {
            let got = if let Done::Received(Ok(Some(h))) = done {
                self.bufs.put(h.bid);
                true
            } else {
                false
            };
            seen(o.owner, got);
            return None;
        }
        Some(Completion { owner: o.owner, op, done, more })
    }
}
