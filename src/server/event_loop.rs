//! The control thread's loop: signals, worker exits, config file changes,
//! DNS reports, metric reclamation, a successor on the control socket and
//! the end of its takeover (run on a thread of its own: `successor.rs`);
//! the stop sequence (grace, then the workers' drain) and reloads. A stop
//! or a reload asked while a takeover is under way waits for its end where
//! it must (see `successor.rs`); the signal itself is answered at once.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use signal_hook::consts::{SIGHUP, SIGINT};
use signal_hook_mio::v1_0::Signals;

use super::plan;
use super::start::settings;
use super::watch::FileWatch;
use super::workers::Exit;
use super::{ControlThread, SIGNALS, SUCCESSOR, ServerError, WATCH_EVERY};
use crate::config;
use crate::handoff::READY_TIMEOUT;
use crate::listen::{Inherited, ListenKey};
use crate::worker::Order;

impl ControlThread {
    /// Waits for signals, file changes and the workers; returns when every worker has exited.
    pub(super) fn run(
        &mut self,
        mut poll: Poll,
        signals: &mut Signals,
        exits: &Receiver<Exit>,
    ) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(8);
        loop {
            let watch = self.watch.as_ref().map(|_| WATCH_EVERY);
            let reclaim = self.reclaim_at.map(|t| t.saturating_duration_since(Instant::now()));
            // Memory for `overload.max_memory` is looked at once a second.
            let memory = self.config.overload.and_then(|o| o.max_memory).map(|_| Duration::from_secs(1));
            let mut timeout = [watch, reclaim, memory].into_iter().flatten().min().filter(|_| !self.draining);
            if let Some(t) = self.grace_until {
                timeout = Some(t.saturating_duration_since(Instant::now()));
            }
            if let Some(t) = self.systemd_timeout() {
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ServerError::Io { what: "waiting for signals", source: e });
                }
            }
            while let Ok(r) = self.resolved.try_recv() {
                self.on_resolved(r);
            }
            if events.iter().any(|e| e.token() == SIGNALS) {
                for signal in signals.pending() {
                    self.on_signal(signal);
                }
            }
            if events.iter().any(|e| e.token() == SUCCESSOR) {
                self.on_successor();
            }
            self.on_exchange();
            if self.grace_until.is_some_and(|t| Instant::now() >= t) {
                self.stop_accepting();
            }
            if !self.draining && self.watch.as_mut().is_some_and(FileWatch::changed) {
                log::info!("{} changed: reloading", self.config.origin());
                self.reload();
            }
            while let Ok(exit) = exits.try_recv() {
                self.on_exit(exit);
            }
            self.on_systemd(Instant::now());
            if !self.draining {
                self.reclaim(Instant::now());
            }
            if let Some(rss) = self.config.overload.and(crate::overload::resident_bytes()) {
                self.shared.overload.check_memory(self.config.overload.as_ref(), rss);
            }
            if self.handles.iter().all(|h| h.thread.is_none()) {
                return self.failure.take().map_or(Ok(()), Err);
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            SIGHUP if self.draining => log::info!("SIGHUP during the drain: ignored"),
            SIGHUP => {
                log::info!("SIGHUP received: reloading {}", self.config.origin());
                self.reload();
            }
            _ if self.draining => {
                log::info!("second stop signal: closing every session now");
                if let Some(x) = &self.exchange {
                    x.abort();
                }
                self.handles.iter().for_each(|h| h.send(Order::Stop));
            }
            SIGINT => {
                log::info!(
                    "SIGINT received: no new connections; running sessions get up to {:?} to finish",
                    self.config.drain_timeout
                );
                self.drain(Duration::ZERO);
            }
            _ => {
                let grace = self.config.drain_grace;
                log::info!(
                    "SIGTERM received: /readyz says 503; accepting for {:?} more (drain_grace), then running \
                     sessions get up to {:?} to finish",
                    grace,
                    self.config.drain_timeout
                );
                self.drain(grace);
            }
        }
    }

    /// Starts the shutdown: `/readyz` says 503 now; the listeners stop
    /// accepting after `grace`.
    fn drain(&mut self, grace: Duration) {
        self.draining = true;
        self.shared.draining.store(true, Ordering::Relaxed);
        self.grace_until = Some(Instant::now() + grace);
        self.notify_stopping();
        if grace.is_zero() {
            self.stop_accepting();
        }
    }

    /// The grace is over: the workers serve what is queued, close their
    /// listeners, and give running sessions `drain_timeout`.
    fn stop_accepting(&mut self) {
        if self.grace_until.take().is_none() {
            return;
        }
        if self.exchange.as_ref().is_some_and(|x| !x.cancel()) {
            log::info!(
                "a successor holds copies of the listening sockets: they stop accepting once its takeover ends \
                 (handed over if it gets ready; at most {READY_TIMEOUT:?}; a second signal stops at once)"
            );
            self.stop_deferred = true;
            return;
        }
        self.stop_now();
    }

    /// The listeners stop accepting (serving what is queued) and running sessions get `drain_timeout`.
    pub(super) fn stop_now(&mut self) {
        log::info!("no new connections from now on; running sessions get up to {:?}", self.config.drain_timeout);
        let deadline = Instant::now() + self.config.drain_timeout;
        self.start_draining(deadline, Vec::new());
    }

    /// The workers stop accepting (closing the listeners in `handed_over`
    /// without serving their queues: a successor does) and drain until `deadline`.
    pub(super) fn start_draining(&mut self, deadline: Instant, handed_over: Vec<ListenKey>) {
        self.draining = true;
        self.grace_until = None;
        self.stop_deferred = false;
        self.shared.draining.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.send(Order::Drain { deadline, handed_over: handed_over.clone() });
        }
    }

    fn on_exit(&mut self, Exit { id, outcome }: Exit) {
        if let Some(t) = self.handles[id].thread.take() {
            // It has sent its last word: the join is immediate.
            let _ = t.join();
        }
        let why = match outcome {
            Ok(()) if self.draining => return,
            Ok(()) => "exited unexpectedly".to_owned(),
            Err(e) => e,
        };
        log::error!("worker {id} {why}; shutting down");
        self.failure.get_or_insert(ServerError::Worker(id, why));
        if !self.draining {
            self.drain(Duration::ZERO);
        }
    }

    /// Loads the config file again and, if it is good, hands the workers
    /// their new routes. A bad file changes nothing.
    pub(super) fn reload(&mut self) {
        if self.exchange.is_some() {
            // Workers asked for their sockets must not be changing them meanwhile.
            log::info!("a takeover is under way: the reload waits for its end");
            self.reload_deferred = true;
            return;
        }
        let Some(path) = self.config.source.clone() else {
            log::warn!("reload asked, but sluice runs from the command line, not a file: nothing to reload");
            return;
        };
        self.notify_reloading();
        match self.try_reload(&path) {
            Ok(summary) => {
                self.shared.reloads.record(true);
                log::info!("reloaded {}: {summary}", path.display());
                self.notify_reloaded(Ok(()));
            }
            Err(e) => {
                self.shared.reloads.record(false);
                log::error!("reload failed, the running configuration stays: {e}");
                self.notify_reloaded(Err(&e));
            }
        }
    }

    fn try_reload(&mut self, path: &std::path::Path) -> Result<String, String> {
        let loaded = config::load_file(path);
        if let (Some(w), Ok(c)) = (&mut self.watch, &loaded) {
            w.loaded(c.source_digest);
        }
        let mut new = loaded.map_err(|e| e.to_string())?;
        if new.workers != self.config.workers || new.cpu_affinity != self.config.cpu_affinity {
            log::warn!(
                "workers and cpu_affinity change with a restart or an upgrade (sluice --takeover); keeping the running ones"
            );
            new.workers = self.config.workers;
            new.cpu_affinity = self.config.cpu_affinity;
        }
        // A reload binds what it needs itself; inherited sockets come only at start.
        let mut none = Inherited::default();
        let plan = plan::plan(&self.running, &new, self.handles.len(), &self.registry, &mut self.hello, &mut none)
            .map_err(|e| e.to_string())?;
        let settings = settings(&new);
        self.shared.max_connections.store(new.max_connections, Ordering::Relaxed);
        self.shared.pipes.resize(settings.pipe_size);
        for (h, routes) in self.handles.iter().zip(plan.per_worker) {
            h.send(Order::Routes { routes, settings });
        }
        self.running = plan.running;
        self.publish_pools();
        if new.admin != self.config.admin {
            log::warn!("the admin port only changes with a restart; keeping the running one");
        }
        if new.control_socket != self.config.control_socket {
            log::warn!("the control socket only changes with a restart or an upgrade; keeping the running one");
            new.control_socket.clone_from(&self.config.control_socket);
        }
        self.shared.overload.reconfigure(new.overload.as_ref());
        if new.watch != self.config.watch {
            self.watch = new.watch.then(|| FileWatch::new(path, new.source_digest));
        }
        self.config = new;
        Ok(plan.summary)
    }
}
