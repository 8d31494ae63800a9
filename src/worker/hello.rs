//! Routing by TLS ClientHello on an address shared by several routes: a
//! client's first bytes are peeked (`MSG_PEEK`: they stay in the kernel, so
//! the relay that follows still splices them) into the worker's scratch
//! buffer and read by `tls::hello`; its server name and ALPN list pick the
//! route (`tls::names`), which then takes the client like any of its own
//! (access list, limits, connect). A client is looked at again only once the
//! socket holds as many bytes as the parser said it needs (one `FIONREAD`
//! per later event), so one that trickles its hello costs no re-parse per
//! segment. Measured against reading the hello and forwarding it ahead of
//! the relay: the same syscalls per connection (docs/performance.md), and
//! peeking keeps the hello in the kernel and needs no buffer per waiting client.
//!
//! Fail closed: bytes that are not a ClientHello, a malformed or oversized
//! one, a client that closes before finishing it, and a hello no route
//! takes are reset and counted, and never reach any route.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Worker;
use crate::metrics::{CloseReason, Refusal};
use crate::session::{End, Ending, Stage, TlsInfo};
use crate::sys::socket_queue;
use crate::tls::hello::{self, MAX_WIRE, Parse};

impl Worker {
    /// The client of session `key` is (or may be) done with its ClientHello: read it and route.
    pub(super) fn on_hello(&mut self, key: usize, now: Instant) {
        let s = &self.sessions[key];
        let Stage::Hello(h) = s.stage() else {
            return;
        };
        let closed = s.client_hup();
        // The first look needs no count: a readable event means a byte at least.
        if h.need > 1 && !closed && socket_queue::unread(s.client()).unwrap_or(0) < h.need {
            return; // not enough for the parser's next step yet
        }
        if self.hello_buf.len() < MAX_WIRE {
            self.hello_buf.resize(MAX_WIRE, 0);
        }
        let peeked = s.client().peek(&mut self.hello_buf);
        let n = match peeked {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => return self.refuse_hello(key, CloseReason::BadClientHello, &format!("failed: {e}"), now),
        };
        let parsed = hello::parse(&self.hello_buf[..n]);
        let s = &mut self.sessions[key];
        let Stage::Hello(h) = s.stage() else {
            return;
        };
        match parsed {
            Parse::NeedMore { .. } if closed => {
                self.refuse_hello(key, CloseReason::BadClientHello, "closed before finishing its ClientHello", now)
            }
            Parse::NeedMore { need } => s.need_hello_bytes(need),
            Parse::Invalid(why) => self.refuse_hello(key, CloseReason::BadClientHello, &why.to_string(), now),
            Parse::Done(hello) => {
                let frontend = Arc::clone(&h.frontend);
                let names = frontend.names.as_ref().expect("a frontend that reads hellos has a name table");
                let choice = names.choose(hello.server_name.as_deref(), &hello.alpn);
                s.set_tls(TlsInfo { sni: hello.server_name.clone(), alpn: hello.alpn_text(), ech: hello.ech });
                match choice {
                    Some(i) => self.route_to(key, i, now),
                    None => {
                        let why = format!(
                            "no route for server name {} with ALPN {}",
                            hello.server_name.as_deref().unwrap_or("(none)"),
                            hello.alpn_text().unwrap_or_else(|| "(none)".to_owned())
                        );
                        self.refuse_hello(key, CloseReason::NoRoute, &why, now);
                    }
                }
            }
        }
    }

    /// The ClientHello chose route `i` of the session's frontend: the
    /// session becomes that route's (its counts, its client socket options,
    /// its access list and limits), then connects.
    fn route_to(&mut self, key: usize, i: usize, now: Instant) {
        let s = &mut self.sessions[key];
        let Some(route) = s.choose_route(i) else {
            return;
        };
        log::trace!("session {}: ClientHello chose route {}", s.id(), route.name);
        // The chosen route's relay mode, not the address's first route's.
        let mode = self.relay_mode(&route);
        let s = &mut self.sessions[key];
        s.set_relay_mode(mode);
        // Full already: with several routes on an address the listener can't
        // pause for one of them, so its clients are refused here.
        let full = route.at_limit();
        route.state.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.stats().route(route.metric_id).accepted += 1;
        route.socket.client(s.client());
        if full {
            self.metrics.count_refusal(route.metric_id, Refusal::RouteLimit);
            log::debug!("route {}: refused {}: at max_connections", route.name, s.client_addr());
            return self.close(key, End { reason: CloseReason::Refused, ending: Ending::RESET_CLIENT }, now);
        }
        let client = s.client_addr();
        if let Some(reason) = super::admit::admission(&self.shared, &route, client, now) {
            let close = self.refuse(&route, client, reason);
            return self.close(key, End { reason: close, ending: Ending::RESET_CLIENT }, now);
        }
        self.sessions[key].admit_client(route.max_connections_per_client.is_some());
        self.connect(key, String::new(), now);
    }

    /// Resets a client whose ClientHello led nowhere, and counts it.
    pub(super) fn refuse_hello(&mut self, key: usize, reason: CloseReason, why: &str, now: Instant) {
        let counted = match reason {
            CloseReason::NoRoute => Refusal::NoRoute,
            CloseReason::ClientHelloTimeout => Refusal::ClientHelloTimeout,
            _ => Refusal::BadClientHello,
        };
        let s = &self.sessions[key];
        // No route chosen yet: the session is on the address's first route, which counts it.
        self.metrics.count_refusal(s.route().metric_id, counted);
        log::debug!("listener {}: client {}: {why}", s.route().listen, s.peer_addr());
        self.close(key, End { reason, ending: Ending::RESET_CLIENT }, now);
    }
}
