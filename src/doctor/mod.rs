//! `sluice doctor`: audits this machine's kernel settings and limits for a
//! config and prints OK/WARN/FAIL lines, each problem with the exact fix
//! (`sysctl -w …`, `ulimit -n …`). It only reads; it never writes a sysctl.
//!
//! - `facts.rs`: `Facts`, everything read from the machine, under a `/proc`
//!   root that tests point at a directory of their own;
//! - `checks.rs`: one function per check of those facts against the config;
//! - `ports.rs`: local ports per upstream address against what the routes may need;
//! - `capture.rs`: what a transparent sidecar's routes need (capabilities,
//!   TPROXY's policy routing, connection tracking);
//! - `routing.rs`: the policy routing as `ip -j rule`/`ip -j route` report it.
//!
//! This file holds what a check finds (`Finding`), the order `audit` runs the
//! checks in, and how the findings print.

use std::fmt;

use crate::config::Config;

mod capture;
mod checks;
mod facts;
mod ports;
mod routing;

pub use facts::{Facts, relay_refused};
pub use routing::{LocalMark, PolicyRouting};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine for this config.
    Ok,
    /// Works, but worse than it could (a cap, a fallback).
    Warn,
    /// The config cannot work as written on this machine.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// What was checked (a sysctl name, a limit).
    pub check: String,
    /// What was found, against what the config needs.
    pub detail: String,
    /// The command that fixes it.
    pub fix: Option<String>,
}

fn ok(check: &str, detail: String) -> Finding {
    Finding { level: Level::Ok, check: check.to_owned(), detail, fix: None }
}

fn bad(level: Level, check: &str, detail: String, fix: String) -> Finding {
    Finding { level, check: check.to_owned(), detail, fix: Some(fix) }
}

fn unknown(check: &str) -> Finding {
    Finding { level: Level::Warn, check: check.to_owned(), detail: "could not be read".to_owned(), fix: None }
}

/// Checks the machine against the config, in the order the report lists them.
pub fn audit(config: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = checks::listen_backlog(config, f);
    out.push(checks::nofile(config, f));
    out.push(checks::pipe_max_size(config, f));
    out.push(checks::pipe_user_pages(config, f));
    out.extend(checks::socket_buffers(config, f));
    out.extend(checks::fastopen(config, f));
    out.extend(checks::congestion(config, f));
    out.push(checks::tw_reuse(f));
    out.extend(ports::findings(config, f));
    out.extend(checks::migrate_req(config, f));
    out.push(checks::file_max(config, f));
    out.push(checks::io_uring(config, f));
    out.push(checks::sockmap(config, f));
    out.extend(checks::mptcp(config, f));
    out.extend(capture::findings(config, f));
    out
}

/// The findings as text: one line each, fixes indented below, and a summary.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!("{:<4} {}: {}\n", f.level, f.check, f.detail));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("     fix: {fix}\n"));
        }
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    s.push_str(&format!("{} ok, {} warnings, {} failures\n", count(Level::Ok), count(Level::Warn), count(Level::Fail)));
    s
}

/// 0 when nothing failed, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Fail))
}

#[cfg(test)]
mod tests;
