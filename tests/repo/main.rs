//! Repository checks: the documentation, the shipped dashboards and alerts,
//! and the crate's module structure held to the code.
//! - `docs_drift.rs`: docs/*.md, README.md and the `//!` file maps against the code;
//! - `dashboards.rs`: the Grafana dashboard and Prometheus alerts against a live scrape;
//! - `kubernetes.rs`: the Kubernetes examples' ConfigMaps against `sluice check` and the shipped rule files;
//! - `module_cycles.rs`: no module imports one that imports it back.

#[allow(dead_code)]
#[path = "../support/backends.rs"]
mod backends;
#[allow(dead_code)]
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/imports.rs"]
mod imports;

mod dashboards;
mod docs_drift;
mod kubernetes;
mod module_cycles;
