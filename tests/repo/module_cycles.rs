//! No module of `src/` imports another that imports it back, across files
//! and across folders (a folder counts as one part of its parent, so two
//! folders whose files import each other's make a circle even when no two
//! files do).
//!
//! A small reader of the crate's own paths (`tests/support/imports.rs`)
//! rather than `cargo modules dependencies --acyclic` or cargo-cycles: those
//! are tools CI would have to install and keep building against the
//! compiler, while this runs under `cargo test` with nothing else, and its
//! failure says which file takes which names from which, what a reader
//! needs to cut the circle. It reads text, not the compiler's view, so
//! `the_reader_sees_known_imports` keeps it honest on imports the crate is
//! known to have.

use crate::imports::{Graph, ModPath};

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = Graph::read();
    let circles = g.all_circles();
    let mut report = String::new();
    for c in &circles {
        let parts: Vec<String> = c.iter().map(|m| g.name(m)).collect();
        report.push_str(&format!("\na circle of {}: {}\n", c.len(), parts.join(", ")));
        let part_of = |m: &ModPath| c.iter().find(|p| m.starts_with(p)).cloned();
        for ((from, to), names) in &g.edges {
            if part_of(from).is_some() && part_of(to).is_some() && part_of(from) != part_of(to) {
                let names: Vec<&str> = names.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
                report.push_str(&format!("  {} -> {}: {}\n", g.file(from), g.file(to), names.join(", ")));
            }
        }
    }
    assert!(circles.is_empty(), "modules that import each other:{report}");
}

#[test]
fn the_reader_sees_known_imports() {
    let g = Graph::read();
    let has = |from: &[&str], to: &[&str]| {
        let (from, to): (ModPath, ModPath) =
            (from.iter().map(|s| s.to_string()).collect(), to.iter().map(|s| s.to_string()).collect());
        g.edges.contains_key(&(from, to))
    };
    // A `use` through a folder's re-export, a written-out `crate::` path, and a `super::` one.
    assert!(has(&["server", "workers"], &["worker"]), "server/workers.rs starts workers");
    assert!(has(&["worker", "connect"], &["route"]), "worker/connect.rs names crate::route::Route");
    assert!(has(&["worker", "hello"], &["worker", "admit"]), "worker/hello.rs names super::admit::admission");
    assert!(g.edges.len() > 150, "only {} imports read: the reader is broken", g.edges.len());
}
