//! A pump's fill: reading from the source into the stage (a pipe, a copy
//! buffer) while there is room, which is where `relay: auto` changes stage
//! once the old one is empty, a splice pipe grows, and a pump that cannot
//! splice falls back to copying. Draining and the rest of a run are in
//! `pump.rs`.

use std::io::{self, Read};

use mio::net::TcpStream;

use super::super::Resources;
use super::super::copy::CopyStage;
use super::super::cost::Way;
use super::super::grow::full_hint;
use super::super::splice;
use super::{Pump, SrcEnd, Stage};

impl Pump {
    /// Reads from `src` into the stage while there is room. Returns whether
    /// anything happened (bytes, EOF, or a source failure).
    pub(super) fn fill(&mut self, src: &TcpStream, res: &mut Resources) -> bool {
        if self.src.end != SrcEnd::Open || !self.src.readable {
            return false;
        }
        if let Some(way) = self.auto.and_then(|a| a.wanted()) {
            if self.pending() > 0 {
                // `relay: auto` chose the other stage: drain this one first.
                return false;
            }
            let delivered = self.delivered();
            self.set_stage(way == Way::Splice, res);
            if let Some(a) = self.auto.as_mut() {
                a.switched(&mut res.costs, way, delivered);
            }
        }
        let mut short_read = false;
        let r = match &mut self.stage {
            Stage::Splice { pipe, len, growth } => {
                if pipe.as_ref().is_some_and(|p| *len >= full_hint(p.capacity)) {
                    return false;
                }
                if pipe.is_none() {
                    match res.pipes.get(std::time::Instant::now) {
                        Some(p) => *pipe = Some(p),
                        None => {
                            // No pipe to be had: this pump copies from now on.
                            res.copy_fallbacks += 1;
                            self.stage = Stage::Copy(CopyStage::default());
                            return self.fill(src, res);
                        }
                    }
                }
                let p = pipe.as_ref().expect("a pipe was just taken");
                let r = match splice::socket_to_pipe(src, p) {
                    Err(e) if splice::is_unsupported(&e) && self.spliced == 0 && *len == 0 => {
                        // This socket pair can't splice: copy instead (counted).
                        if let Some(p) = pipe.take() {
                            res.pipes.put(p);
                        }
                        res.copy_fallbacks += 1;
                        res.splice_refused += 1;
                        self.stage = Stage::Copy(CopyStage::default());
                        self.auto = None;
                        return self.fill(src, res);
                    }
                    r => r.inspect(|&n| *len += n),
                };
                let limit = self.pipe_limit.map_or(res.pipes.grow_limit(), |l| res.pipes.grow_limit().min(l as usize));
                if let (Ok(1..), Some(p)) = (&r, pipe.as_mut())
                    && growth.after_read(*len, p.capacity, limit)
                    && !res.pipes.grow(p)
                {
                    growth.refused();
                }
                r
            }
            Stage::Uring(_) => return false,
            Stage::Copy(c) => {
                if !c.has_room() {
                    return false;
                }
                let space = c.space(&mut res.buffers);
                let room = space.len();
                (&*src).read(space).inspect(|&n| {
                    c.filled(n);
                    // A short read emptied the socket's queue. Edge-triggered
                    // epoll reports any byte (or FIN, or reset) that arrives
                    // after it, so the EAGAIN read that would follow is a
                    // wasted syscall per message. Not once a FIN or error was
                    // reported: it may sit behind these bytes, already signalled.
                    short_read = n > 0 && n < room && !self.src.hup;
                })
            }
        };
        if short_read {
            self.src.readable = false;
        }
        if let (Some(a), Ok(n @ 1..)) = (self.auto.as_mut(), &r) {
            a.read(*n);
        }
        match r {
            Ok(0) => {
                self.src.end = self.src.eof_is_failure.map_or(SrcEnd::Eof, SrcEnd::Failed);
                true
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // From a socket into a pipe that already holds bytes, EAGAIN
                // usually means "pipe full", not "socket empty": keep the flag,
                // or the edge is lost and the tail of the stream stalls. The
                // next drain empties the pipe and the read is tried again.
                let ambiguous = matches!(self.stage, Stage::Splice { len, .. } if len > 0);
                if !ambiguous {
                    self.src.readable = false;
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                self.src.end = SrcEnd::Failed(e.kind());
                true
            }
        }
    }
}
