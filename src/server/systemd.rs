//! What the control thread tells systemd when `NOTIFY_SOCKET` is set
//! (`Type=notify` units): `READY=1` once every worker has taken its routes
//! (`MAINPID=` first for a successor of a takeover), `RELOADING=1` and
//! `READY=1` around a reload whatever its outcome, `STOPPING=1` when the
//! drain starts, `MAINPID=` of the successor a takeover handed the service
//! to (then nothing more: the service is the successor's), a `STATUS=` line
//! kept current, and `WATCHDOG=1` every half `WATCHDOG_USEC` while every
//! worker answers its pings. The wire and the texts are `notify.rs`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use mio::Waker;

use super::ControlThread;
use super::notify::{self, Notifier};
use crate::worker::{Order, Ping};

/// How often the status line is refreshed (sessions move) without a watchdog asking sooner.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The control thread's link to systemd.
#[derive(Debug)]
pub(super) struct Systemd {
    notifier: Notifier,
    /// Half of `WATCHDOG_USEC`, when the watchdog is ours.
    watchdog: Option<Duration>,
    /// When the watchdog is next fed (or the status refreshed).
    next_tick: Instant,
    /// The last ping sent to the workers.
    seq: u64,
    /// Per worker, the last ping it answered.
    answered: Vec<u64>,
    pongs: Receiver<(usize, u64)>,
    reply: Sender<(usize, u64)>,
    waker: Arc<Waker>,
    /// `READY=1` was sent for the start.
    ready: bool,
    /// This process took the service over from a predecessor: say `MAINPID=` with `READY=1`.
    successor: bool,
    /// The status line systemd has.
    status: String,
    /// How the last reload went, for the status line.
    last_reload: Option<String>,
}

impl Systemd {
    /// The link when `NOTIFY_SOCKET` is set; `successor` after a takeover.
    pub(super) fn from_env(workers: usize, waker: Arc<Waker>, successor: bool) -> Option<Systemd> {
        let notifier = Notifier::from_env()?;
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog = notify::watchdog_every(usec.as_deref(), pid.as_deref(), std::process::id());
        match watchdog {
            Some(every) => log::info!("systemd notify socket set; feeding the watchdog every {every:?}"),
            None => log::info!("systemd notify socket set"),
        }
        let (reply, pongs) = mpsc::channel();
        Some(Systemd {
            notifier,
            watchdog,
            next_tick: Instant::now() + watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY)),
            seq: 0,
            answered: vec![0; workers],
            pongs,
            reply,
            waker,
            ready: false,
            successor,
            status: String::new(),
            last_reload: None,
        })
    }

    fn every(&self) -> Duration {
        self.watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY))
    }
}

impl ControlThread {
    /// Asks every running worker to answer (the first ask follows their routes).
    pub(super) fn ping_workers(&mut self) {
        let Some(sd) = &mut self.systemd else { return };
        sd.seq += 1;
        for h in self.handles.iter().filter(|h| h.thread.is_some()) {
            h.send(Order::Ping(Ping { seq: sd.seq, reply: sd.reply.clone(), waker: Arc::clone(&sd.waker) }));
        }
    }

    /// How long the control poll may sleep before the next tick.
    pub(super) fn systemd_timeout(&self) -> Option<Duration> {
        self.systemd.as_ref().map(|sd| sd.next_tick.saturating_duration_since(Instant::now()))
    }

    /// Answers from the workers, `READY=1` once all answered the first
    /// ping, and at each tick the watchdog and the status line.
    pub(super) fn on_systemd(&mut self, now: Instant) {
        if self.systemd.is_none() {
            return;
        }
        let status = self.status_line();
        let live: Vec<usize> = (0..self.handles.len()).filter(|&i| self.handles[i].thread.is_some()).collect();
        let Some(sd) = &mut self.systemd else { return };
        while let Ok((id, seq)) = sd.pongs.try_recv() {
            if let Some(a) = sd.answered.get_mut(id) {
                *a = (*a).max(seq);
            }
        }
        let silent: Vec<usize> = live.iter().copied().filter(|&i| sd.answered[i] < sd.seq).collect();
        if !sd.ready && silent.is_empty() && sd.seq > 0 {
            sd.ready = true;
            let msg =
                if sd.successor { notify::ready_as_main(std::process::id(), &status) } else { notify::ready(&status) };
            sd.notifier.send(&msg);
            sd.status = status.clone();
        }
        if now < sd.next_tick {
            return;
        }
        sd.next_tick = now + sd.every();
        if sd.watchdog.is_some() {
            if silent.is_empty() {
                sd.notifier.send(notify::WATCHDOG);
            } else {
                log::warn!("worker(s) {silent:?} did not answer a ping: not feeding systemd's watchdog");
            }
        }
        if sd.ready && sd.status != status {
            sd.notifier.send(&notify::status(&status));
            sd.status = status;
        }
        if silent.is_empty() {
            self.ping_workers();
        }
    }

    /// A reload starts.
    pub(super) fn notify_reloading(&self) {
        if let Some(sd) = &self.systemd {
            sd.notifier.send(&notify::reloading(notify::monotonic_usec()));
        }
    }

    /// A reload ended: `Ok` applied, `Err(why)` refused (the old config serves on).
    pub(super) fn notify_reloaded(&mut self, outcome: Result<(), &str>) {
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        let text = match outcome {
            Ok(()) => format!("ok at {at}"),
            Err(why) => format!("FAILED at {at}, the previous configuration serves: {why}"),
        };
        let Some(sd) = &mut self.systemd else { return };
        sd.last_reload = Some(text);
        let status = self.status_line();
        if let Some(sd) = &mut self.systemd {
            sd.notifier.send(&notify::ready(&status));
            sd.status = status;
        }
    }

    /// The drain starts.
    pub(super) fn notify_stopping(&mut self) {
        let status = self.status_line();
        if let Some(sd) = &mut self.systemd {
            sd.notifier.send(&notify::stopping(&status));
            sd.status = status;
        }
    }

    /// A successor serves: it is the service's main process now, and this
    /// process says nothing more (a `STOPPING=1` would stop the service).
    pub(super) fn notify_handed_over(&mut self, pid: u32) {
        if let Some(sd) = self.systemd.take() {
            sd.notifier.send(&notify::main_pid(pid));
        }
    }

    /// What `systemctl status` shows under the unit.
    fn status_line(&self) -> String {
        let sessions = self.shared.active.load(Ordering::Relaxed);
        let reload = self.systemd.as_ref().and_then(|sd| sd.last_reload.as_deref()).unwrap_or("none");
        if self.draining {
            format!("draining: {sessions} session(s) left; last reload: {reload}")
        } else {
            format!(
                "serving {} route(s) on {} worker(s): {sessions} session(s) open; last reload: {reload}",
                self.config.routes.len(),
                self.handles.len()
            )
        }
    }
}
