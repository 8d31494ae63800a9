//! The `sluice` binary: parse the command line, set up logging, dispatch,
//! and map errors to exit codes (0 ok, 1 runtime failure, 2 usage or config).

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command};
use sluice::server;

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 for --help/--version.
    let cli = Cli::parse();
    init_logging(cli.log);
    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            print!("{}", config.describe(server::worker_count(config.workers)));
            ExitCode::SUCCESS
        }
        None => match server::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                eprintln!("sluice: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `--log LEVEL` wins; otherwise RUST_LOG; otherwise `info`.
fn init_logging(level: Option<log::LevelFilter>) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        b.filter_level(level);
    }
    b.format_timestamp_millis().init();
}
