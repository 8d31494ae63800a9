//! The access log: one line per finished session, at info on target
//! `sluice::access` — route, client (and the peer that sent its PROXY header), upstream, bytes each way (and how many
//! were spliced), connect and first-byte times, duration, close reason — as
//! `key=value` pairs, or as a JSON object with `log.format: json`.
//!
//! Turn it off with `log.access: false` (or `RUST_LOG=sluice::access=off`).
//! Lines go through the non-blocking writer of `logging.rs`, so a slow
//! stderr never stalls a worker.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::LogFormat;
use crate::metrics::SessionRecord;
use crate::session::Session;

/// The log target of access lines.
pub const TARGET: &str = "sluice::access";

/// Logs the access line of a session that just closed.
pub fn log(format: LogFormat, s: &Session, r: &SessionRecord) {
    if log::log_enabled!(target: TARGET, log::Level::Info) {
        log::info!(target: TARGET, "{}", line(format, s, r));
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The line for one session.
pub fn line(format: LogFormat, s: &Session, r: &SessionRecord) -> String {
    let upstream = r.upstream.map(|_| s.upstream_addr().to_string());
    // `peer` is who connected to us; `client` is who the PROXY header said it spoke for (the same without one).
    let fields: [(&str, Value); 13] = [
        ("session", Value::Int(s.id)),
        ("route", Value::Str(s.route.name.clone())),
        ("client", Value::Str(s.client_addr.to_string())),
        ("peer", Value::Str(s.peer_addr.to_string())),
        ("upstream", upstream.map_or(Value::Null, Value::Str)),
        ("bytes_up", Value::Int(r.client_to_upstream.0 + r.client_to_upstream.1)),
        ("bytes_down", Value::Int(r.upstream_to_client.0 + r.upstream_to_client.1)),
        ("spliced_up", Value::Int(r.client_to_upstream.0)),
        ("spliced_down", Value::Int(r.upstream_to_client.0)),
        ("connect_ms", ms(r.connect_time).map_or(Value::Null, Value::Float)),
        ("first_byte_ms", ms(r.first_byte_time).map_or(Value::Null, Value::Float)),
        ("duration_ms", ms(Some(r.duration)).map_or(Value::Null, Value::Float)),
        ("reason", Value::Str(r.reason.as_str().to_owned())),
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
    Str(String),
}
