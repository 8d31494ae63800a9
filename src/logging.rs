//! Logging: env_logger for filtering (`--log LEVEL`, else `RUST_LOG`, else
//! `info`) and formatting (text, or one JSON object per line), writing into
//! a bounded channel that a background thread drains to stderr.
//!
//! A worker must never block (DESIGN pitfall 12): with a slow or stuck
//! stderr, logging only fills the channel, and lines past its capacity are
//! dropped and counted rather than stalling the event loop. `flush` at exit
//! waits (bounded) until everything queued is written.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::access;
use crate::config::LogFormat;

/// Lines queued for stderr at most; past this, lines are dropped (counted).
const QUEUE: usize = 65_536;

/// Lines dropped because stderr could not keep up.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static QUEUE_TX: OnceLock<Mutex<Option<SyncSender<Msg>>>> = OnceLock::new();

/// The `Write` env_logger formats into: one record per `write`, handed to the queue.
struct QueueWriter(SyncSender<Msg>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the logger. `level` (from `--log`) wins over `RUST_LOG`.
pub fn init(level: Option<log::LevelFilter>, format: LogFormat) {
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    let _ = QUEUE_TX.set(Mutex::new(Some(tx.clone())));
    std::thread::Builder::new()
        .name("sluice-log".to_owned())
        .spawn(move || drain(rx))
        .map(drop)
        .unwrap_or_else(|e| eprintln!("sluice: cannot start the log writer thread: {e}"));
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        b.filter_level(level);
    }
    b.target(env_logger::Target::Pipe(Box::new(QueueWriter(tx))));
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

/// Writes queued lines to stderr, flushing whenever the queue runs dry.
fn drain(rx: Receiver<Msg>) {
    // Not `stderr().lock()`: holding the lock forever would deadlock `eprintln!`.
    let mut out = io::BufWriter::with_capacity(64 << 10, io::stderr());
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(m) = next.take() {
            match m {
                Msg::Line(l) => {
                    let _ = out.write_all(&l);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// Waits (at most a second) until every queued line is on stderr.
pub fn flush() {
    let Some(tx) = QUEUE_TX.get().and_then(|m| m.lock().ok()?.clone()) else { return };
    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
    if tx.send(Msg::Flush(ack_tx)).is_ok() {
        let _ = ack_rx.recv_timeout(Duration::from_secs(1));
    }
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        eprintln!("sluice: {dropped} log lines were dropped because stderr could not keep up");
    }
}
