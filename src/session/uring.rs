//! A session's io_uring completions (`relay: uring`): to the pump they
//! belong to, also while the session is between upstreams and only its
//! kept client→upstream pump waits (see `Session::unconnect`).

use super::{Session, Stage};
use crate::relay::ring::{Completion, Ring};

impl Session {
    /// Its relay runs on the worker's io_uring (`relay: uring`).
    pub fn on_ring(&self) -> bool {
        self.relay_mode == crate::config::RelayMode::Uring
    }

    /// A completion of one of this session's io_uring operations, on
    /// `ring`. Returns whether the relay should run now; `Err` gives it
    /// back if no pump of this session waits for it.
    pub fn complete(&mut self, c: Completion, ring: &mut Ring) -> Result<bool, Completion> {
        match &mut self.stage {
            Stage::Relaying(r, _) if r.is_uring() => r.pump_mut(c.owner.dir).complete(c, ring),
            stage => match stage.kept_mut() {
                Some(p) if c.owner.dir == 0 => {
                    p.complete(c, ring);
                    return Ok(false);
                }
                _ => return Err(c),
            },
        }
        Ok(true)
    }

    /// A buffer came free for this session's starved receive in direction `dir`.
    pub fn unstarve(&mut self, dir: u8) -> bool {
        match &mut self.stage {
            Stage::Relaying(r, _) => r.pump_mut(dir).unstarve(),
            stage => match stage.kept_mut() {
                Some(p) => p.unstarve(),
                None => return false,
            },
        }
        true
    }
}
