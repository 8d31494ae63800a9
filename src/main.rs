//! The `sluice` binary: parse the command line, set up logging, dispatch,
//! and map errors to exit codes (0 ok, 1 runtime failure, 2 usage or config).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sluice::cli::{Cli, Command, DEFAULT_CONFIG};
use sluice::config::{self, Config};
use sluice::listen::activation;
use sluice::metrics::snapshot::Snapshot;
use sluice::{admin, doctor, logging, server, stats_view};

/// Where `sluice stats` looks when neither `--admin` nor a config says.
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 for --help/--version.
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Stats { watch, route }) => stats(&cli, *watch, route.as_deref()),
        Some(Command::Doctor { proc_root }) => {
            let Some(config) = load(&cli) else { return ExitCode::from(2) };
            let findings = doctor::audit(&config, &doctor::Facts::read(proc_root));
            print!("{}", doctor::render(&findings));
            ExitCode::from(u8::try_from(doctor::exit_code(&findings)).unwrap_or(1))
        }
        Some(Command::Probe { path, timeout }) => probe(&cli, path, *timeout),
        Some(Command::Check) => {
            let Some(config) = load(&cli) else { return ExitCode::from(2) };
            print!("{}", config.describe(server::worker_count(config.workers)));
            for line in fallbacks(&config) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        None => {
            // Socket activation first: it takes fds 3 onwards before anything opens a
            // file, and unsets LISTEN_* before any thread exists (logging starts one).
            let activation = match activation::from_env() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(1);
                }
            };
            let Some(config) = load(&cli) else { return ExitCode::from(2) };
            logging::init(cli.log, config.log.format);
            let code = match server::run(config, server::RunOptions { takeover: cli.takeover, activation }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    logging::flush();
                    eprintln!("sluice: {e}");
                    return ExitCode::from(1);
                }
            };
            logging::flush();
            code
        }
    }
}

/// The configuration the flags describe, or the error printed (exit 2).
fn load(cli: &Cli) -> Option<Config> {
    cli.config().map_err(|e| eprintln!("sluice: {e}")).ok()
}

/// Where a relay mode the config asks for falls back to `auto` on this machine (`uring`: seccomp,
/// `kernel.io_uring_disabled`; `sockmap`: no CAP_BPF, seccomp), one line per mode naming the routes
/// that relay with `auto` instead: `sluice check` says so, as startup's warning does.
fn fallbacks(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for mode in [config::RelayMode::Uring, config::RelayMode::Sockmap] {
        let routes: Vec<&str> =
            config.routes.iter().filter(|r| r.relay.unwrap_or(config.relay) == mode).map(|r| r.name.as_str()).collect();
        if routes.is_empty() {
            continue;
        }
        let Some(why) = doctor::relay_refused(mode) else { continue };
        let which = if routes.len() == config.routes.len() {
            "every route relays".to_owned()
        } else {
            format!(
                "route{} {} relay{}",
                if routes.len() > 1 { "s" } else { "" },
                routes.join(", "),
                if routes.len() > 1 { "" } else { "s" }
            )
        };
        out.push(format!("# relay: {mode} is refused here ({why}): {which} with auto"));
    }
    out
}

/// `sluice probe [PATH]`: exit 0 if the admin port answers 200, else 1, with one line saying why.
/// The container image has no shell or curl, so its HEALTHCHECK runs this.
fn probe(cli: &Cli, path: &str, timeout: f64) -> ExitCode {
    let addr = admin_addr(cli);
    let timeout = Duration::from_secs_f64(timeout.clamp(0.05, 60.0));
    match admin::get(addr, path, timeout) {
        Ok((200, body)) => {
            println!("{addr}{path}: 200 {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("sluice: {addr}{path}: HTTP {status} {}", body.trim());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("sluice: {addr}{path}: {e}");
            ExitCode::from(1)
        }
    }
}

/// The admin address for `stats` and `probe`: `--admin`, else the config's, else the default.
fn admin_addr(cli: &Cli) -> SocketAddr {
    cli.admin
        .or_else(|| admin_from_config(cli))
        .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("the default admin address is a valid socket address"))
}

/// `sluice stats`: one view (rates over one second), or redrawn every `watch` seconds.
fn stats(cli: &Cli, watch: Option<f64>, route: Option<&str>) -> ExitCode {
    let addr = admin_addr(cli);
    let width = terminal_size::terminal_size().map_or(100, |(w, _)| usize::from(w.0)).max(40);
    let interval = Duration::from_secs_f64(watch.unwrap_or(1.0).clamp(0.1, 3600.0));
    let mut previous: Option<(Snapshot, Instant)> = None;
    loop {
        let now = match fetch(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "sluice: cannot read {addr}/stats: {e} (is sluice running with an admin port? try --admin ADDR)"
                );
                return ExitCode::from(1);
            }
        };
        let taken = Instant::now();
        match &previous {
            Some((prev, at)) => {
                let view = stats_view::render(&now, Some((prev, taken - *at)), route, width);
                if watch.is_some() {
                    print!("{}{view}", stats_view::REDRAW);
                } else {
                    print!("{view}");
                    return ExitCode::SUCCESS;
                }
            }
            None if watch.is_some() => print!("{}{}", stats_view::REDRAW, stats_view::render(&now, None, route, width)),
            None => {}
        }
        previous = Some((now, taken));
        std::thread::sleep(interval);
    }
}

fn admin_from_config(cli: &Cli) -> Option<SocketAddr> {
    let path = cli.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
    config::load_file(&path).ok()?.admin.map(|a| a.listen)
}

fn fetch(addr: SocketAddr) -> Result<Snapshot, String> {
    let (status, body) = admin::get(addr, "/stats", Duration::from_secs(5)).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("unexpected /stats document: {e}"))
}
