//! The shipped monitoring examples against the real binary: every PromQL
//! expression in `examples/grafana/sluice.json` and
//! `examples/prometheus/alerts.yaml` parses (`promtool check rules`) and names
//! only metric families a running sluice exposes, the alerts carry their
//! annotations, and the alerts' unit tests pass (`promtool test rules`).
//!
//! Without promtool (Debian package prometheus) the test says "skipped",
//! unless `SLUICE_REQUIRE_PROMTOOL=1` (CI) makes that a failure.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::Sluice;
use crate::{backends, harness};

const DASHBOARD: &str = "examples/grafana/sluice.json";
const ALERTS: &str = "examples/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "examples/prometheus/alerts_test.yaml";

/// What Grafana's built-in interval variables are replaced with.
const INTERVAL: &str = "5m";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// True if promtool runs; false (test skipped) if it is missing and not required.
fn have_promtool() -> bool {
    if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("SLUICE_REQUIRE_PROMTOOL").is_none_or(|v| v != "1"),
        "SLUICE_REQUIRE_PROMTOOL=1 but promtool (Debian package prometheus) does not run"
    );
    eprintln!("skipped: promtool (Debian package prometheus) is not installed");
    false
}

/// `promtool ARGS`, bounded; panics with its output unless it succeeds.
fn promtool(args: &[&str], what: &str) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}\n--- checking {what}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET /metrics from the admin port.
fn scrape(admin: SocketAddr) -> String {
    let (status, body) = harness::admin_get(admin, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    body
}

/// Every series name the exposition declares: each `# TYPE` family, and a
/// histogram's `_bucket`, `_sum` and `_count` besides.
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut f = rest.split_whitespace();
        let (Some(name), Some(kind)) = (f.next(), f.next()) else { continue };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_owned());
    }
    names
}

/// Words that are PromQL syntax, not metric names (when not followed by `(`).
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"];
/// Aggregation operators, which may come before their `by (...)` rather than `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Modifiers followed by a label list in parentheses.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names `expr` selects: identifiers outside strings, label
/// matchers, ranges and label lists that are neither functions nor keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips a balanced group opened at `b[i]`, minding strings inside.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => i = skip_string(b, i, q),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i, c) + 1;
        } else if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            // Numbers (0.99, 1e-3, 0x1f) and durations (5m, 1h30m).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = b.get(j) == Some(&b'(');
            if LABEL_LISTS.contains(&word) {
                if call {
                    i = skip_group(j, b'(', b')');
                }
            } else if !call && !KEYWORDS.contains(&word) && !AGGREGATIONS.contains(&word) {
                names.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the quote that closes the string opened at `b[i]`.
fn skip_string(b: &[u8], mut i: usize, quote: u8) -> usize {
    i += 1;
    while i < b.len() && b[i] != quote {
        if b[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i
}

/// `expr` with Grafana's variables replaced by valid PromQL: interval
/// variables by a duration, the dashboard's own (`$route`, `${instance}`,
/// `${route:regex}`) by a match-all regex (they only appear in `=~` matchers).
fn substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').unwrap_or_else(|| panic!("unclosed ${{ in {expr}"));
            (braced[..end].split(':').next().unwrap_or_default(), end + 2)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "__rate_interval" | "__interval" | "__range" => out.push_str(INTERVAL),
            "" => panic!("a bare $ in {expr}"),
            n if n.starts_with("__") => panic!("unexpected Grafana variable ${n} in {expr}"),
            _ => out.push_str(".*"),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Every `expr` string anywhere in the dashboard (panel targets, panels of
/// rows, annotations), with where it was found.
fn collect_exprs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let here = m.get("title").and_then(Value::as_str).map_or_else(|| at.to_owned(), |t| format!("{at}/{t}"));
            for (k, child) in m {
                if k == "expr" {
                    let e = child.as_str().unwrap_or_else(|| panic!("{here}: expr is not a string"));
                    out.push((here.clone(), e.to_owned()));
                } else {
                    collect_exprs(child, &here, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, at, out)),
        _ => {}
    }
}

/// The dashboard's expressions, templating queries included: a
/// `label_values(SELECTOR, label)` query contributes its selector.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    collect_exprs(&dash["panels"], "panels", &mut exprs);
    collect_exprs(&dash["annotations"], "annotations", &mut exprs);
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "route"] {
        assert!(names.contains(&want), "no ${want} variable in the dashboard: {names:?}");
    }
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let q = var["query"]["query"].as_str().or_else(|| var["query"].as_str()).expect("a query variable's query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", var["name"]));
        let (selector, _label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        exprs.push((format!("templating/{}", var["name"]), selector.trim().to_owned()));
    }
    exprs
}

/// Checks that every expression parses (as recording rules through
/// promtool) and names only families in `exposed`.
fn check_exprs(source: &str, exprs: &[(String, String)], exposed: &BTreeSet<String>, dir: &Path) {
    let mut missing = Vec::new();
    for (at, e) in exprs {
        for name in metric_names(e) {
            if !exposed.contains(&name) {
                missing.push(format!("{at}: {name} in {e}"));
            }
        }
    }
    assert!(missing.is_empty(), "{source} uses metrics sluice does not expose:\n{}", missing.join("\n"));
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({ "record": format!("check:expr_{i}"), "expr": substitute(e) }))
        .collect();
    let file = dir.join("rules.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({ "groups": [{ "name": source, "rules": rules }] }))
        .expect("rules as JSON");
    std::fs::write(&file, &text).expect("write the rules file");
    promtool(&["check", "rules", file.to_str().expect("utf-8 path")], &format!("{source} as rules:\n{text}"));
}

/// Starts sluice with what the dashboard and alerts watch (two routes,
/// health-checked upstreams, one of them refusing, a rate limit, overload
/// thresholds), relays a few sessions, and returns a scrape.
fn scrape_a_busy_sluice() -> String {
    let echo = backends::echo();
    let dead = backends::refused();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let yaml = format!(
        "workers: 1\nrelay: splice\nadmin:\n  listen: {admin}\nmax_connections: 1000\n\
         overload: {{ max_fd_use: 90%, resume_fd_use: 80% }}\nroutes:\n\
         \x20 - name: web\n    listen: 127.0.0.1:0\n    upstreams:\n      - {echo}\n      - {dead}\n\
         \x20   health_check: {{ interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }}\n\
         \x20   max_connection_rate: {{ per_second: 1000, burst: 100 }}\n\
         \x20 - name: api\n    listen: 127.0.0.1:0\n    upstreams:\n      - {echo}\n"
    );
    let s = Sluice::with_config(&yaml, &[]);
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "no admin port");
    let n = 4;
    for addr in &s.addrs {
        for i in 0..n {
            let mut c = backends::connect(*addr);
            let msg = format!("hello {i}");
            c.write_all(msg.as_bytes()).expect("write");
            let mut back = vec![0; msg.len()];
            c.read_exact(&mut back).expect("echo");
            assert_eq!(back, msg.as_bytes());
        }
    }
    // Sessions are counted when they close, a little after the client's last byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(admin);
        let closed = |route: &str| {
            m.lines()
                .filter(|l| l.starts_with(&format!("sluice_sessions_closed_total{{route=\"{route}\",")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        if closed("web") >= f64::from(n) && closed("api") >= f64::from(n) {
            return m;
        }
        assert!(Instant::now() < deadline, "sessions not all closed:\n{m}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dashboard_and_alerts_use_only_exposed_metrics() {
    if !have_promtool() {
        return;
    }
    let metrics = scrape_a_busy_sluice();
    let exposed = exposed_names(&metrics);
    assert!(exposed.contains("sluice_connect_duration_seconds_bucket"), "no histograms in\n{metrics}");
    let tmp = tempfile::tempdir().expect("tempdir");

    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard")).expect("JSON");
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() > 20, "only {} expressions found in {DASHBOARD}", exprs.len());
    check_exprs(DASHBOARD, &exprs, &exposed, tmp.path());

    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo(ALERTS)).expect("read the alerts")).expect("YAML");
    let mut alert_exprs = Vec::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules").to_owned();
            for key in ["summary", "description", "runbook"] {
                let a = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(!a.trim().is_empty(), "{name}: no {key} annotation");
            }
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            assert!(runbook.starts_with("docs/") && runbook.contains(".md#"), "{name}: runbook {runbook:?}");
            alert_exprs.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    check_exprs(ALERTS, &alert_exprs, &exposed, tmp.path());
    promtool(&["check", "rules", repo(ALERTS).to_str().expect("utf-8 path")], "the alerts");
    promtool(&["test", "rules", repo(ALERT_TESTS).to_str().expect("utf-8 path")], "the alerts' unit tests");
}

#[test]
fn metric_names_skip_labels_functions_and_strings() {
    let e = r#"histogram_quantile(0.99, sum by (le, route) (rate(sluice_a_bucket{route=~"x|sluice_b", le!="1"}[5m])))
        / on (route) group_left (upstream) sluice_c offset 5m > bool 1e-3 or vector(0) unless sluice_d"#;
    assert_eq!(metric_names(e), ["sluice_a_bucket", "sluice_c", "sluice_d"]);
    assert_eq!(metric_names("up == 0"), ["up"]);
}

#[test]
fn grafana_variables_become_promql() {
    assert_eq!(
        substitute(r#"rate(x{route=~"$route", i=~"${instance:regex}"}[$__rate_interval])"#),
        r#"rate(x{route=~".*", i=~".*"}[5m])"#
    );
}
