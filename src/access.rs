//! The access log, at info on target `sluice::access`: one line per finished
//! session — route, client (and the peer that sent its PROXY header),
//! upstream, the original destination on a capture address (`dst`), bytes each way (and how many were spliced), connect and
//! first-byte times, duration, close reason and whether it was aborted, and
//! on an address routed by name the ClientHello's server name, ALPN list and
//! ECH flag (the name a route was chosen by, so it is always in the log) —
//! as `key=value` pairs, or as a JSON object with `log.format: json`. With
//! `log.flush_interval`, a session open longer than that also gets a
//! `event=periodic` line every interval, with its bytes so far.
//!
//! Turn it off with `log.access: false` (or `RUST_LOG=sluice::access=off`).
//! Lines go through the non-blocking writer of `logging.rs`, so a slow
//! stderr never stalls a worker.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::config::LogFormat;
use crate::metrics::{CloseReason, SessionRecord};
use crate::session::Session;

/// The log target of access lines.
pub const TARGET: &str = "sluice::access";

/// What an access line reports.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The session ended (with this reason), or it is still running.
    pub reason: Option<CloseReason>,
    /// `[spliced, copied, uring, sockmap]` client → upstream so far.
    pub client_to_upstream: [u64; 4],
    /// `[spliced, copied, uring, sockmap]` upstream → client so far.
    pub upstream_to_client: [u64; 4],
    /// A connected upstream.
    pub connected: bool,
    /// Upstream connect time.
    pub connect_time: Option<Duration>,
    /// Connected to first upstream byte.
    pub first_byte_time: Option<Duration>,
    /// Accept to now (or to close).
    pub duration: Duration,
}

impl Entry {
    /// The final line of a session that closed.
    pub fn closed(r: &SessionRecord) -> Entry {
        Entry {
            reason: Some(r.reason),
            client_to_upstream: r.client_to_upstream,
            upstream_to_client: r.upstream_to_client,
            connected: r.upstream.is_some(),
            connect_time: r.connect_time,
            first_byte_time: r.first_byte_time,
            duration: r.duration,
        }
    }

    /// A periodic line of a session still running at `now`.
    pub fn running(s: &Session, now: Instant) -> Entry {
        let [up, down] = s.bytes();
        let relay = s.relay();
        Entry {
            reason: None,
            client_to_upstream: up,
            upstream_to_client: down,
            connected: relay.is_some(),
            connect_time: relay.map(|r| r.connect_time),
            first_byte_time: relay.and_then(|r| r.first_byte_time),
            duration: s.age(now),
        }
    }
}

/// Logs an access line for session `s`.
pub fn log(format: LogFormat, s: &Session, e: &Entry) {
    if log::log_enabled!(target: TARGET, log::Level::Info) {
        log::info!(target: TARGET, "{}", line(format, s, e));
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The line for one session.
pub fn line(format: LogFormat, s: &Session, e: &Entry) -> String {
    let upstream = e.connected.then(|| s.upstream_addr().to_string());
    let str_or_null = |v: Option<String>| v.map_or(Value::Null, Value::Str);
    // `peer` is who connected to us; `client` is who the PROXY header said it spoke for (the same without one).
    let tls = s.tls();
    let fields: [(&str, Value); 19] = [
        ("event", Value::Str(if e.reason.is_some() { "end" } else { "periodic" }.to_owned())),
        ("session", Value::Int(s.id())),
        // A client whose ClientHello chose no route has none.
        ("route", Value::Str(if s.routed() { s.route().name.clone() } else { "-".to_owned() })),
        ("client", Value::Str(s.client_addr().to_string())),
        ("peer", Value::Str(s.peer_addr().to_string())),
        ("upstream", str_or_null(upstream)),
        // Where the client was really going (a capture address), `-` elsewhere.
        ("dst", str_or_null(s.original_dst().map(|d| d.to_string()))),
        ("bytes_up", Value::Int(e.client_to_upstream.iter().sum())),
        ("bytes_down", Value::Int(e.upstream_to_client.iter().sum())),
        ("spliced_up", Value::Int(e.client_to_upstream[0])),
        ("spliced_down", Value::Int(e.upstream_to_client[0])),
        ("connect_ms", ms(e.connect_time).map_or(Value::Null, Value::Float)),
        ("first_byte_ms", ms(e.first_byte_time).map_or(Value::Null, Value::Float)),
        ("duration_ms", ms(Some(e.duration)).map_or(Value::Null, Value::Float)),
        ("reason", str_or_null(e.reason.map(|r| r.as_str().to_owned()))),
        ("aborted", e.reason.map_or(Value::Null, |r| Value::Bool(r.aborted()))),
        ("sni", str_or_null(tls.and_then(|t| t.sni.clone()))),
        ("alpn", str_or_null(tls.and_then(|t| t.alpn.clone()))),
        ("ech", tls.map_or(Value::Null, |t| Value::Int(u64::from(t.ech)))),
    ];
    let mut out = String::with_capacity(256);
    match format {
        LogFormat::Text => {
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                let _ = match v {
                    Value::Null => write!(out, "{k}=-"),
                    Value::Int(n) => write!(out, "{k}={n}"),
                    Value::Float(f) => write!(out, "{k}={f}"),
                    Value::Bool(b) => write!(out, "{k}={b}"),
                    Value::Str(t) => write!(out, "{k}={t}"),
                };
            }
        }
        LogFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Null => serde_json::Value::Null,
                        Value::Int(n) => n.into(),
                        Value::Float(f) => f.into(),
                        Value::Bool(b) => b.into(),
                        Value::Str(t) => t.into(),
                    };
                    (k.to_owned(), v)
                })
                .collect();
            out = serde_json::Value::Object(map).to_string();
        }
    }
    out
}

enum Value {
    Null,
    Int(u64),
    Float(f64),
    Bool(bool),
    Str(String),
}
