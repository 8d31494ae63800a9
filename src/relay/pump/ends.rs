//! A pump's two ends, as linkerd2-proxy's `duplex` groups them: the
//! source's readiness and how it ended, the destination's write space and
//! how the end of the stream is passed on to it. The pump (`pump.rs`)
//! changes them; the session reads the readiness flags its events set.

use std::io;

/// How the source side of a pump ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcEnd {
    /// Still open.
    Open,
    /// Read returned 0: the peer half-closed.
    Eof,
    /// Read failed (reset, timeout): nothing more will come.
    Failed(io::ErrorKind),
}

/// The source side of a pump (its flags sticky: set by events, cleared
/// only by `WouldBlock`).
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// Had readiness we haven't consumed.
    pub readable: bool,
    /// An event said it half-closed or failed (EPOLLRDHUP/ERR/HUP). From
    /// then on a short read is no proof the socket is empty: the FIN may
    /// already be queued behind the bytes and will raise no further edge.
    pub hup: bool,
    /// How it ended.
    pub(super) end: SrcEnd,
    /// It is known to have been reset (its error already consumed): its EOF
    /// is really this failure.
    pub(super) eof_is_failure: Option<io::ErrorKind>,
}

impl Default for Source {
    fn default() -> Source {
        Source { readable: false, hup: false, end: SrcEnd::Open, eof_is_failure: None }
    }
}

/// The destination side of a pump.
#[derive(Clone, Copy, Debug, Default)]
pub struct Destination {
    /// Had write space we haven't used up (sticky).
    pub writable: bool,
    /// The source's EOF was passed on (a FIN sent, or left to `close`).
    pub(super) shut: bool,
    /// Don't pass EOF on as a FIN: the session will reset the destination instead.
    pub(super) hold_fin: bool,
    /// The other direction has finished, so this one finishing closes the
    /// session and `close` sends the FIN: no `shutdown` call for it.
    pub(super) fin_by_close: bool,
}
