//! What a mio `Token` of a worker stands for, and back: the waker, the
//! io_uring's eventfd (`relay: uring`), a listener, or one socket of a session together with the generation of
//! that socket.
//!
//! Kinds live in the low bits, so a listener can never alias a session
//! however many of either there are. The generation exists because a
//! session's upstream socket is replaced when a connect attempt fails and
//! another upstream is tried: events for the old socket may still be in
//! the batch being handled, and must not be read as the new one's (a stale
//! "writable" would pass for a finished connect).

use mio::Token;

use crate::session::Side;

const KIND_BITS: u32 = 2;
const KEY_BITS: u32 = (usize::BITS - KIND_BITS) / 2;
const GEN_BITS: u32 = usize::BITS - KIND_BITS - KEY_BITS;
/// Sessions and listeners per worker are bounded by this (2^31 on 64-bit
/// targets, far beyond any fd limit); a key past it gets no token.
pub const MAX_KEY: usize = (1 << KEY_BITS) - 1;
const GEN_MASK: u32 = if GEN_BITS >= 32 { u32::MAX } else { (1 << GEN_BITS) - 1 };

const WAKER_KIND: usize = 0;
const LISTENER_KIND: usize = 1;
const CLIENT_KIND: usize = 2;
const UPSTREAM_KIND: usize = 3;

/// The control channel's waker.
pub const WAKER: Token = Token(WAKER_KIND);
/// The eventfd of the worker's io_uring (same kind as the waker, key 1).
pub const RING: Token = Token(1 << KIND_BITS | WAKER_KIND);

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The control channel.
    Waker,
    /// Completions of the worker's io_uring.
    Ring,
    /// Listener `key` of the worker's listener slab.
    Listener(usize),
    /// One socket of session `key`; `generation` tells upstream sockets of
    /// successive connect attempts apart (always 0 for the client).
    Session {
        /// Slot in the session slab.
        key: usize,
        /// Which socket.
        side: Side,
        /// The socket's generation (wraps; only equality matters).
        generation: u32,
    },
}

/// The token of listener `key`, or `None` past [`MAX_KEY`].
pub fn listener(key: usize) -> Option<Token> {
    (key <= MAX_KEY).then_some(Token(key << KIND_BITS | LISTENER_KIND))
}

/// The token of one socket of session `key`, or `None` past [`MAX_KEY`].
pub fn session(key: usize, side: Side, generation: u32) -> Option<Token> {
    if key > MAX_KEY {
        return None;
    }
    let kind = match side {
        Side::Client => CLIENT_KIND,
        Side::Upstream => UPSTREAM_KIND,
    };
    let generation = (generation & GEN_MASK) as usize;
    Some(Token(generation << (KIND_BITS + KEY_BITS) | key << KIND_BITS | kind))
}

/// The next generation after `g` (wrapping inside the bits a token has).
pub fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

/// What `token` stands for.
pub fn target(token: Token) -> Target {
    let t = token.0;
    let key = (t >> KIND_BITS) & MAX_KEY;
    let generation = (t >> (KIND_BITS + KEY_BITS)) as u32 & GEN_MASK;
    match t & ((1 << KIND_BITS) - 1) {
        WAKER_KIND if key == 1 => Target::Ring,
        WAKER_KIND => Target::Waker,
        LISTENER_KIND => Target::Listener(key),
        CLIENT_KIND => Target::Session { key, side: Side::Client, generation },
        _ => Target::Session { key, side: Side::Upstream, generation },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        assert_eq!(target(WAKER), Target::Waker);
        assert_eq!(target(RING), Target::Ring);
        for key in [0, 1, 65_535, 65_536, 1 << 20, MAX_KEY] {
            assert_eq!(target(listener(key).unwrap()), Target::Listener(key));
            for side in [Side::Client, Side::Upstream] {
                for generation in [0, 1, 7, GEN_MASK] {
                    let t = session(key, side, generation).unwrap();
                    assert_eq!(target(t), Target::Session { key, side, generation }, "{key} {side} {generation}");
                }
            }
        }
    }

    #[test]
    fn listeners_never_alias_sessions_or_the_waker() {
        // The old scheme (1 + key for listeners, 65,536 + 2 × key + side for
        // sessions) made listener 65,536 the token of session 0's client.
        for key in [0, 65_535, 65_536, 65_537, 1 << 24] {
            let l = listener(key).unwrap();
            assert_ne!(l, WAKER);
            assert_ne!(l, RING);
            for s in [0, key / 2, key] {
                for side in [Side::Client, Side::Upstream] {
                    assert_ne!(l, session(s, side, 0).unwrap(), "listener {key} vs session {s}");
                }
            }
        }
    }

    #[test]
    fn generations_tell_successive_upstream_sockets_apart() {
        let first = session(3, Side::Upstream, 0).unwrap();
        let second = session(3, Side::Upstream, next_generation(0)).unwrap();
        assert_ne!(first, second);
        assert_eq!(next_generation(GEN_MASK), 0, "wraps within the token's bits");
    }

    #[test]
    fn keys_past_the_limit_get_no_token() {
        assert!(listener(MAX_KEY + 1).is_none());
        assert!(session(MAX_KEY + 1, Side::Client, 0).is_none());
    }
}
