//! Logging: env_logger for filtering (`--log LEVEL`, else `RUST_LOG`, else
//! `info`) and formatting (text, or one JSON object per line), writing into
//! an in-memory buffer that a background thread drains to stderr.
//!
//! A worker must never block (every session it holds would stall with it),
//! and must not pay a thread wake-up per line either (with a channel, each
//! access line cost a futex wake of the writer: ~7 % of connection rate).
//! So formatted lines are appended to a bounded buffer under a short mutex,
//! and the writer thread wakes every `DRAIN_EVERY` to write whatever
//! gathered. Past `MAX_BUFFERED` bytes lines are dropped and counted instead
//! of growing memory or stalling. `flush` at exit writes what is left.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::access;
use crate::config::LogFormat;

/// How often the writer thread empties the buffer.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Bytes buffered at most; a stuck stderr costs this much memory, no more.
const MAX_BUFFERED: usize = 8 << 20;

/// Lines dropped because stderr could not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Formatted lines not yet written.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Held while writing to stderr, so `flush` and the writer thread don't interleave.
static WRITING: Mutex<()> = Mutex::new(());

fn pending() -> MutexGuard<'static, Vec<u8>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `Write` env_logger formats into: each record is appended to the buffer.
struct BufferWriter;

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = pending();
        if p.len() + buf.len() > MAX_BUFFERED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else {
            p.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the logger. `level` (from `--log`) wins over `RUST_LOG`.
pub fn init(level: Option<log::LevelFilter>, format: LogFormat) {
    std::thread::Builder::new()
        .name("sluice-log".to_owned())
        .spawn(|| {
            loop {
                std::thread::sleep(DRAIN_EVERY);
                write_pending();
            }
        })
        .map(drop)
        .unwrap_or_else(|e| eprintln!("sluice: cannot start the log writer thread: {e}"));
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        b.filter_level(level);
    }
    b.target(env_logger::Target::Pipe(Box::new(BufferWriter)));
    match format {
        LogFormat::Text => {
            b.format_timestamp_millis();
        }
        LogFormat::Json => {
            b.format(|buf, record| {
                let mut obj = serde_json::Map::new();
                obj.insert("ts".into(), buf.timestamp_millis().to_string().into());
                obj.insert("level".into(), record.level().as_str().into());
                obj.insert("target".into(), record.target().into());
                let msg = record.args().to_string();
                // Access lines are JSON objects already: nest them, don't quote them.
                match (record.target() == access::TARGET).then(|| serde_json::from_str(&msg).ok()).flatten() {
                    Some(v @ serde_json::Value::Object(_)) => obj.insert("access".into(), v),
                    _ => obj.insert("msg".into(), msg.into()),
                };
                writeln!(buf, "{}", serde_json::Value::Object(obj))
            });
        }
    }
    let _ = b.try_init();
}

/// Writes what is buffered to stderr (outside the buffer's lock, so
/// loggers never wait for stderr).
fn write_pending() {
    let _w = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let lines = std::mem::take(&mut *pending());
    if !lines.is_empty() {
        let mut err = io::stderr();
        let _ = err.write_all(&lines);
        let _ = err.flush();
    }
}

/// Writes every buffered line now (at exit), and says if any were dropped.
pub fn flush() {
    write_pending();
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        eprintln!("sluice: {dropped} log lines were dropped because stderr could not keep up");
    }
}
