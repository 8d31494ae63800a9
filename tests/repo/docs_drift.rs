//! Drift between the documentation and the code is a test failure:
//! - `docs/configuration.md` names every key the loader accepts (traced from
//!   the schema by `sluice::config::accepted_keys`), and its key tables name
//!   no key the loader refuses;
//! - `docs/observability.md` names every metric family a fully featured
//!   sluice exposes, and no `sluice_*` name it doesn't;
//! - `proxy.yaml`, every sluice config under `examples/` and every block
//!   fenced as ```` ```yaml ```` in README.md and docs/*.md pass `sluice check`
//!   (fragments are fenced ```` ```yaml fragment ```` and skipped);
//! - every folder's `mod.rs` names each of its files in its `//!` header, and
//!   so does a file `x.rs` the files of its folder `x/`; a `//!` header names
//!   no file that is not in the repository;
//! - `src/lib.rs`'s layout gives every top-level module one line, and
//!   `docs/architecture.md` places every one in one layer of its diagram and
//!   gives it the same line in its source map; no module imports one of a
//!   layer above its own.
//!
//! Every failure lists all that is wrong, not the first thing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Sluice;
use crate::imports::Graph;
use crate::{backends, harness};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Reads `rel` (relative to the repository), failing clearly when it is missing.
fn read_doc(rel: &str) -> String {
    let path = Path::new(ROOT).join(rel);
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{rel} is missing"),
        Err(e) => panic!("{rel}: cannot read: {e}"),
    }
}

/// The inline code spans (`` `x` ``) of `text` outside fenced blocks, with their 1-based line.
fn inline_spans(text: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            spans.extend(spans_of(line).into_iter().map(|s| (i + 1, s)));
        }
    }
    spans
}

/// The code spans of one line (a last, unclosed backtick opens none).
fn spans_of(line: &str) -> Vec<String> {
    let pieces: Vec<&str> = line.split('`').collect();
    pieces
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1 && i + 1 < pieces.len())
        .map(|(_, s)| (*s).to_owned())
        .collect()
}

/// Fenced blocks: (line of the opening fence, info string, body).
fn fenced_blocks(text: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match (&mut open, t.strip_prefix("```")) {
            (None, Some(info)) => open = Some((i + 1, info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The cells of a table row `| a | b |`.
fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_owned()).collect()
}

/// The first cells of every row of every table whose header's first cell is `key`: (line, cell).
fn key_column(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_table = false;
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !t.starts_with('|') {
            in_table = false;
            continue;
        }
        let row = cells(t);
        if !in_table {
            in_table = row.first().map(String::as_str) == Some("key");
            continue;
        }
        let first = row.into_iter().next().unwrap_or_default();
        if first.chars().all(|c| matches!(c, '-' | ':' | ' ')) {
            continue; // the separator row
        }
        out.push((i + 1, first));
    }
    out
}

#[test]
fn configuration_md_documents_every_accepted_key_and_no_other() {
    let accepted = sluice::config::accepted_keys();
    let (defaults, keys): (Vec<&String>, Vec<&String>) = accepted.iter().partition(|k| k.starts_with("defaults."));
    let keys: BTreeSet<&str> = keys.into_iter().map(String::as_str).collect();
    eprintln!("{} accepted keys (and {} under defaults:):", keys.len(), defaults.len());
    for k in &keys {
        eprintln!("  {k}");
    }

    // `defaults:` holds route keys only; the docs name them once, as `routes[].X`.
    let not_route_keys: Vec<String> = defaults
        .iter()
        .map(|d| format!("routes[].{}", &d["defaults.".len()..]))
        .filter(|r| !keys.contains(r.as_str()))
        .collect();
    assert!(not_route_keys.is_empty(), "keys under defaults: that no route accepts: {not_route_keys:?}");

    let text = read_doc("docs/configuration.md");
    let named: BTreeSet<String> = inline_spans(&text).into_iter().map(|(_, s)| s).collect();
    let missing: Vec<&str> = keys.iter().copied().filter(|k| !named.contains(*k)).collect();

    let mut unknown = Vec::new();
    let mut rows = 0;
    for (line, cell) in key_column(&text) {
        rows += 1;
        let paths = spans_of(&cell);
        if paths.is_empty() || cell.split('`').step_by(2).any(|between| !matches!(between.trim(), "" | "," | "/")) {
            unknown.push(format!("docs/configuration.md:{line}: first cell {cell:?} is not key paths in backticks"));
        }
        for p in paths {
            if !keys.contains(p.as_str()) {
                unknown.push(format!("docs/configuration.md:{line}: `{p}`"));
            }
        }
    }
    let mut problems = String::new();
    if rows == 0 {
        problems.push_str("no key table (a table whose header's first cell is `key`) in docs/configuration.md\n");
    }
    listed(&mut problems, "accepted keys are not named in docs/configuration.md", &missing);
    listed(&mut problems, "key-table entries are no key the loader accepts", &unknown);
    assert!(problems.is_empty(), "{problems}");
}

/// Sends `data` through `addr`, half-closes and reads to the end (bounded).
fn send_and_read_all(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = backends::connect(addr);
    s.write_all(data).expect("send");
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// The address sluice logged after `needle` (waiting for the line, bounded).
fn logged_addr(sluice: &Sluice, needle: &str) -> SocketAddr {
    assert!(sluice.wait_log(needle, Duration::from_secs(20)), "sluice did not log {needle:?}:\n{}", sluice.log());
    let log = sluice.log();
    let rest = log.lines().find_map(|l| l.split(needle).nth(1)).expect("the line just waited for");
    let word = rest.split_whitespace().next().unwrap_or_default().trim_end_matches(':');
    word.parse().unwrap_or_else(|_| panic!("no address after {needle:?}: {rest}"))
}

/// A config with every feature that adds series: the admin port, upgrades,
/// overload shedding, the access log, a pool route with health checks,
/// outlier detection, rate and connection limits, an access list and a
/// backup; an SNI route; a route with the PROXY protocol both ways. Port 0
/// on one IP is one address, so each route has its own loopback IP.
fn featureful_config(dir: &Path, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "workers: 1
control_socket: {ctl}
admin:
  listen: 127.0.0.1:0
overload:
  max_fd_use: 99%
  max_memory: 1TiB
log:
  access: true
  flush_interval: 1s
defaults:
  connect_timeout: 2s
  outlier_detection: true
routes:
  - name: pool
    listen: 127.0.0.1:0
    upstreams:
      - {{ address: \"{a}\", weight: 2 }}
      - {{ address: \"{b}\", backup: true }}
    balance: least_conn
    retries: 1
    max_connections: 1000
    max_connections_per_client: 100
    max_connection_rate: {{ per_second: 10000 }}
    max_connection_rate_per_client: {{ per_second: 10000 }}
    allow: [127.0.0.0/8]
    health_check: {{ interval: 100ms, timeout: 90ms }}
    outlier_detection: {{}}
  - name: sni
    listen: 127.0.0.2:0
    server_names: [app.example.com]
    upstreams: [\"{a}\"]
  - name: proxied
    listen: 127.0.0.3:0
    upstreams: [\"{b}\"]
    accept_proxy_protocol: true
    proxy_protocol: v1
",
        ctl = dir.join("control.sock").display()
    )
}

/// The families of an exposition: name → type, from its `# TYPE` lines.
fn families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// The `sluice_…` names in `text`, each with whether a `*` follows it (a prefix).
fn metric_tokens(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("sluice_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && len > "sluice_".len() {
            out.push((tail[..len].to_owned(), tail[len..].starts_with('*')));
        }
        rest = &tail[len.max(1)..];
    }
    out
}

#[test]
fn observability_md_documents_every_metric_family_and_no_other() {
    let (a, b) = (backends::echo(), backends::echo());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, featureful_config(dir.path(), a, b)).expect("write the config");
    let mut cmd = Command::new(harness::BIN);
    cmd.arg("-c").arg(&config).env("RUST_LOG", "sluice=info");
    // Routes log their addresses in config order: pool, sni, proxied.
    let sluice = Sluice::spawn(cmd, 3, None);
    let [pool, sni, proxied] = sluice.addrs[..] else { panic!("three routes: {:?}", sluice.addrs) };
    let admin = logged_addr(&sluice, "admin port listening on ");

    // Traffic, so per-route and per-upstream series have samples.
    for i in 0..3 {
        let msg = format!("hello {i}");
        assert_eq!(send_and_read_all(pool, msg.as_bytes()), msg.as_bytes(), "echo through the pool route");
    }
    let header = format!("PROXY TCP4 127.0.0.1 127.0.0.1 40000 {}\r\n", proxied.port());
    let got = send_and_read_all(proxied, format!("{header}ping").as_bytes());
    assert!(got.starts_with(b"PROXY TCP4 ") && got.ends_with(b"ping"), "PROXY v1 to the upstream: {got:?}");
    send_and_read_all(sni, b"not a ClientHello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, body) = harness::admin_get(admin, "/metrics");
        assert_eq!(code, 200, "{body}");
        let checked = body.lines().any(|l| l.starts_with("sluice_upstream_health_checks_total{") && !l.ends_with(" 0"));
        if body.contains("sluice_sessions_accepted_total{route=\"pool\"} 3") && checked {
            break body;
        }
        assert!(Instant::now() < deadline, "sessions or health checks not counted within 10 s:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let scraped = families(&metrics);
    assert!(scraped.len() > 30, "few families scraped:\n{metrics}");
    eprintln!("{} families scraped:", scraped.len());
    for (name, kind) in &scraped {
        eprintln!("  {name} {kind}");
    }
    let names: BTreeSet<&str> = scraped.iter().map(|(n, _)| n.as_str()).collect();
    let histograms: Vec<&str> = scraped.iter().filter(|(_, k)| k == "histogram").map(|(n, _)| n.as_str()).collect();
    let known = |token: &str| {
        names.contains(token)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| token.strip_suffix(s).is_some_and(|base| histograms.contains(&base)))
    };

    let text = read_doc("docs/observability.md");
    let documented: BTreeSet<String> =
        inline_spans(&text).iter().flat_map(|(_, s)| metric_tokens(s)).map(|(t, _)| t).collect();
    let missing: Vec<&str> = names.iter().copied().filter(|n| !documented.contains(*n)).collect();

    let mut unknown = Vec::new();
    let fenced = fenced_blocks(&text).into_iter().flat_map(|(fence, _, body)| {
        body.lines().enumerate().map(|(i, l)| (fence + 1 + i, l.to_owned())).collect::<Vec<_>>()
    });
    for (line, span) in inline_spans(&text).into_iter().chain(fenced) {
        for (token, prefix) in metric_tokens(&span) {
            let ok = if prefix { names.iter().any(|n| n.starts_with(&token)) } else { known(&token) };
            if !ok {
                unknown.push(format!("docs/observability.md:{line}: `{token}{}`", if prefix { "*" } else { "" }));
            }
        }
    }
    let mut problems = String::new();
    listed(&mut problems, "metric families are not named in backticks in docs/observability.md", &missing);
    listed(
        &mut problems,
        "names in docs/observability.md are no family sluice exposes (histograms by base name)",
        &unknown,
    );
    assert!(problems.is_empty(), "{problems}");
}

/// Adds "N WHAT:" and the items, one per line, to `problems` (nothing if there are none).
fn listed<S: AsRef<str>>(problems: &mut String, what: &str, items: &[S]) {
    if !items.is_empty() {
        let lines: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
        problems.push_str(&format!("{} {what}:\n  {}\n", items.len(), lines.join("\n  ")));
    }
}

/// `sluice check -c path` (bounded): None if it passes, else what it said.
fn check(path: &Path) -> Option<String> {
    let (code, _, said) = harness::run(&["check", "-c", &path.display().to_string()]);
    (code != 0).then(|| format!("exit {code}: {}", said.trim()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A sluice config rather than a Kubernetes manifest or other YAML: a
/// top-level `routes:` key and no `apiVersion:`/`kind:`.
fn is_sluice_config(text: &str) -> bool {
    let top = |key: &str| text.lines().any(|l| l.starts_with(key));
    top("routes:") && !top("apiVersion:") && !top("kind:")
}

#[test]
fn shipped_configs_and_yaml_blocks_pass_sluice_check() {
    let root = Path::new(ROOT);
    let mut checked = Vec::new();
    let mut failures = Vec::new();

    let mut files = vec![root.join("proxy.yaml")];
    for p in files_under(&root.join("examples")) {
        let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && std::fs::read_to_string(&p).is_ok_and(|t| is_sluice_config(&t)) {
            files.push(p);
        }
    }
    for p in files {
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        if let Some(e) = check(&p) {
            failures.push(format!("{rel}: {e}"));
        }
        checked.push(rel);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut docs = vec![root.join("README.md")];
    docs.extend(files_under(&root.join("docs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    for doc in docs {
        let rel = doc.strip_prefix(root).unwrap_or(&doc).display().to_string();
        let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for (line, info, body) in fenced_blocks(&text) {
            if info != "yaml" {
                continue;
            }
            let file = dir.path().join(format!("{}-{line}.yaml", rel.replace('/', "_")));
            std::fs::write(&file, &body).expect("write a block");
            if let Some(e) = check(&file) {
                failures.push(format!("{rel}:{line}: the ```yaml block: {e}"));
            }
            checked.push(format!("{rel}:{line}"));
        }
    }
    eprintln!("checked {}:\n  {}", checked.len(), checked.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} of {} configs fail `sluice check` (fence fragments as ```yaml fragment):\n  {}",
        failures.len(),
        checked.len(),
        failures.join("\n  ")
    );
}

#[test]
fn doc_parsing_finds_spans_tables_and_blocks() {
    let md = "intro `a` and `b.c`\n\n| key | type |\n|---|---|\n| `x`, `y[].z` | d |\n| nope | d |\n\n\
              ```yaml\nworkers: 1\n```\n\n```yaml fragment\nx: 1\n```\n| other | t |\n|--|--|\n| `q` | r |\n";
    let spans: Vec<String> = inline_spans(md).into_iter().map(|(_, s)| s).collect();
    assert_eq!(spans, ["a", "b.c", "x", "y[].z", "q"]);
    assert_eq!(key_column(md), vec![(5, "`x`, `y[].z`".to_owned()), (6, "nope".to_owned())]);
    let blocks = fenced_blocks(md);
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[0].0, blocks[0].1.as_str(), blocks[0].2.as_str()), (8, "yaml", "workers: 1\n"));
    assert_eq!(blocks[1].1, "yaml fragment");
    let tokens = metric_tokens("rate(sluice_bytes_total[5m]) `sluice_upstream_*` xsluice_no");
    assert_eq!(tokens, vec![("sluice_bytes_total".to_owned(), false), ("sluice_upstream_".to_owned(), true)]);
    assert!(is_sluice_config("workers: 1\nroutes:\n  - name: a\n"));
    assert!(!is_sluice_config("apiVersion: v1\nkind: ConfigMap\ndata:\n  proxy.yaml: |\nroutes:\n"));
}

/// The `//!` header of a source file, as one text.
fn header(text: &str) -> String {
    text.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_mod_rs_names_each_of_its_files() {
    let mut problems = Vec::new();
    let mut folders = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = folders.pop() {
        let mut children = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("readable src") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().expect("a name").to_string_lossy().into_owned();
            if path.is_dir() {
                folders.push(path.clone());
                // A folder with a `mod.rs` is a child; one beside `x.rs` belongs to `x.rs`.
                if path.join("mod.rs").exists() {
                    children.push(format!("{name}/"));
                }
            } else if name.ends_with(".rs") && name != "mod.rs" && name != "tests.rs" {
                children.push(name);
            }
        }
        let mod_rs = dir.join("mod.rs");
        if !mod_rs.exists() {
            continue;
        }
        let head = header(&std::fs::read_to_string(&mod_rs).expect("readable mod.rs"));
        let rel = mod_rs.strip_prefix(ROOT).expect("under the repository").display().to_string();
        for child in children {
            let bare = child.trim_end_matches('/').trim_end_matches(".rs");
            if !head.contains(&child) && !head.contains(&format!("`{bare}`")) {
                problems.push(format!("{rel} does not name {child} in its //! header"));
            }
        }
    }
    problems.sort();
    assert!(problems.is_empty(), "file maps that miss files:\n{}", problems.join("\n"));
}

/// Every `.rs` file under `src/`, as (path relative to `src/`, text).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(ROOT).join("src");
    files_under(&src)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src").display().to_string();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, text)
        })
        .collect()
}

#[test]
fn every_file_with_a_folder_names_each_of_its_files() {
    // `x.rs` beside a folder `x/` (its child modules, as `tls/hello.rs` and
    // `tls/hello/build.rs`) names them as a `mod.rs` does; `tests.rs` aside.
    let all = sources();
    let mut problems = Vec::new();
    for (rel, text) in &all {
        let Some(stem) = rel.strip_suffix(".rs").filter(|s| !s.ends_with("/mod") && *s != "lib" && *s != "main") else {
            continue;
        };
        let head = header(text);
        let children = all.iter().filter_map(|(r, _)| r.strip_prefix(&format!("{stem}/")));
        for child in children.filter(|c| !c.contains('/') && *c != "tests.rs") {
            let bare = child.trim_end_matches(".rs");
            if !head.contains(child) && !head.contains(&format!("`{bare}`")) {
                problems.push(format!("src/{rel} does not name its child {stem}/{child} in its //! header"));
            }
        }
    }
    problems.sort();
    assert!(problems.is_empty(), "file maps that miss files:\n{}", problems.join("\n"));
}

#[test]
fn headers_name_only_files_that_exist() {
    // A `//!` header that names a file (`` `relay/pipe.rs` ``, `` `DESIGN.md` ``)
    // names one that is there: under `src/` by its path's tail, else from the
    // repository's root.
    let all = sources();
    let mut problems = Vec::new();
    for (rel, text) in &all {
        for span in spans_of_all(&header(text)) {
            let known = [".rs", ".md", ".py", ".sh", ".yaml"].iter().any(|e| span.ends_with(e));
            if !known || span.contains(' ') || span.contains('*') {
                continue;
            }
            let in_src = all.iter().any(|(r, _)| r == &span || r.ends_with(&format!("/{span}")));
            if !in_src && !Path::new(ROOT).join(&span).exists() {
                problems.push(format!("src/{rel} names {span}, which is not in the repository"));
            }
        }
        if header(text).contains("DESIGN") {
            problems.push(format!("src/{rel} cites a DESIGN document, which is not in the repository"));
        }
    }
    problems.sort();
    assert!(problems.is_empty(), "headers that name what is not there:\n{}", problems.join("\n"));
}

/// The code spans of a multi-line text, line by line.
fn spans_of_all(text: &str) -> Vec<String> {
    text.lines().flat_map(spans_of).collect()
}

/// The top-level modules `src/lib.rs` declares (public or not).
fn top_level_modules() -> Vec<String> {
    read_doc("src/lib.rs")
        .lines()
        .filter_map(|l| ["pub mod ", "pub(crate) mod ", "mod "].iter().find_map(|p| l.strip_prefix(p)))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect()
}

/// `src/lib.rs`'s layout lines: `//! - `name`: job`.
fn lib_jobs() -> Vec<(String, String)> {
    read_doc("src/lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//! - `"))
        .filter_map(|l| l.split_once("`: "))
        .map(|(m, job)| (m.to_owned(), job.to_owned()))
        .collect()
}

/// The layers of docs/architecture.md's diagram, top first: each
/// `subgraph` block's id and the module nodes in it.
fn diagram_layers(doc: &str) -> Vec<(String, Vec<String>)> {
    let mut layers: Vec<(String, Vec<String>)> = Vec::new();
    let mut inside = false;
    for line in doc.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("subgraph ") {
            let id = rest.split(['[', ' ']).next().unwrap_or_default().to_owned();
            layers.push((id, Vec::new()));
            inside = true;
        } else if line == "end" {
            inside = false;
        } else if inside && !line.is_empty() && !line.starts_with("direction") {
            layers.last_mut().expect("inside a subgraph").1.push(line.to_owned());
        }
    }
    layers
}

/// docs/architecture.md's source map rows: (layer, module, path, job).
fn source_map(doc: &str) -> Vec<(String, String, String, String)> {
    doc.lines()
        .filter(|l| l.starts_with("| ") && l.contains("`src/"))
        .map(cells)
        .filter(|c| c.len() == 3)
        .map(|c| {
            let path = c[1].trim_matches('`').to_owned();
            let module = path.trim_start_matches("src/").trim_end_matches('/').trim_end_matches(".rs").to_owned();
            (c[0].clone(), module, path, c[2].clone())
        })
        .collect()
}

#[test]
fn lib_rs_and_architecture_md_give_every_module_its_layer_and_its_job() {
    let modules = top_level_modules();
    assert!(modules.len() > 20, "only {} modules found in src/lib.rs", modules.len());
    let doc = read_doc("docs/architecture.md");
    let jobs = lib_jobs();
    let layers = diagram_layers(&doc);
    let map = source_map(&doc);
    let mut problems = Vec::new();
    for m in &modules {
        let lib: Vec<&String> = jobs.iter().filter(|(n, _)| n == m).map(|(_, j)| j).collect();
        if lib.len() != 1 {
            problems.push(format!("src/lib.rs gives `{m}` {} layout lines, not one", lib.len()));
        }
        let placed: Vec<&String> = layers.iter().filter(|(_, ms)| ms.contains(m)).map(|(l, _)| l).collect();
        if placed.len() != 1 {
            problems.push(format!("architecture.md's diagram places `{m}` in {} layers, not one", placed.len()));
        }
        let rows: Vec<_> = map.iter().filter(|(_, n, _, _)| n == m).collect();
        let [(layer, _, path, job)] = rows.as_slice() else {
            problems.push(format!("architecture.md's source map has {} rows for `{m}`, not one", rows.len()));
            continue;
        };
        if !Path::new(ROOT).join(path).exists() {
            problems.push(format!("architecture.md's source map names {path}, which does not exist"));
        }
        if lib.first().is_some_and(|l| *l != job) {
            problems.push(format!("`{m}`: architecture.md says \"{job}\", src/lib.rs says \"{}\"", lib[0]));
        }
        if placed.first().is_some_and(|l| *l != layer) {
            problems.push(format!("`{m}`: the source map's layer is {layer}, the diagram's {}", placed[0]));
        }
    }
    let known = |n: &String| modules.contains(n);
    for (n, _) in jobs.iter().filter(|(n, _)| !known(n)) {
        problems.push(format!("src/lib.rs's layout names `{n}`, which is no module"));
    }
    for (_, ms) in &layers {
        for n in ms.iter().filter(|n| !known(n)) {
            problems.push(format!("architecture.md's diagram names `{n}`, which is no module"));
        }
    }
    for (_, n, _, _) in map.iter().filter(|(_, n, _, _)| !known(n)) {
        problems.push(format!("architecture.md's source map names `{n}`, which is no module"));
    }
    assert!(problems.is_empty(), "the module maps drifted from the code:\n{}", problems.join("\n"));
}

#[test]
fn no_module_imports_one_of_a_layer_above_its_own() {
    let layers = diagram_layers(&read_doc("docs/architecture.md"));
    let layer_of = |m: &str| layers.iter().position(|(_, ms)| ms.iter().any(|n| n == m));
    let g = Graph::read();
    let mut problems = Vec::new();
    for ((from, to), names) in &g.edges {
        let (Some(f), Some(t)) = (from.first(), to.first()) else { continue };
        if f == t {
            continue;
        }
        if let (Some(lf), Some(lt)) = (layer_of(f), layer_of(t)) {
            if lt < lf {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                problems.push(format!(
                    "{} ({}) -> {} ({}): {}",
                    g.file(from),
                    layers[lf].0,
                    g.file(to),
                    layers[lt].0,
                    names.join(", ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "imports that run up a layer of docs/architecture.md:\n{}", problems.join("\n"));
}
