//! Bad configuration files: every one exits 2 before listening, with
//! `file:line:column: field: message`, from both `sluice check` and a plain
//! run, and never panics. A good file passes `check` and prints the merged
//! routes.

use crate::harness::{run, temp_config};

const GOOD: &str = "\
workers: 1
relay: splice
defaults:
  connect_timeout: 2s
routes:
  - name: web
    listen: 127.0.0.1:0
    upstreams:
      - 127.0.0.1:9000
      - { address: \"127.0.0.1:9001\", weight: 3 }
  - name: db
    listen: 127.0.0.1:0
    upstreams: [\"127.0.0.1:5432\"]
    idle_timeout: 1h
";

/// (what is wrong, the file, expected line:column, expected field path, words in the message)
fn bad_configs() -> Vec<(&'static str, String, &'static str, &'static str, &'static str)> {
    vec![
        ("yaml syntax", GOOD.replace("5432\"]", "5432\""), ":14:5", "", "YAML syntax error: did not find expected"),
        (
            "unknown field",
            GOOD.replace("    listen: 127.0.0.1:0\n    upstreams:\n", "    listn: 127.0.0.1:0\n    upstreams:\n"),
            ":7:5",
            "routes[0].listn",
            "unknown field",
        ),
        (
            "bad address",
            GOOD.replacen("127.0.0.1:0", "0.0.0.0:80800", 1),
            ":7:13",
            "routes[0].listen",
            "invalid socket address",
        ),
        (
            "empty upstreams",
            GOOD.replace("[\"127.0.0.1:5432\"]", "[]"),
            ":13:16",
            "routes[1].upstreams",
            "no upstreams",
        ),
        ("bad duration", GOOD.replace("2s", "3 parsecs"), ":4:20", "defaults.connect_timeout", "invalid duration"),
        ("zero duration", GOOD.replace("1h", "0s"), ":14:19", "routes[1].idle_timeout", "out of range"),
        (
            "duplicate listen",
            GOOD.replace("127.0.0.1:0", "127.0.0.1:7777"),
            ":12:13",
            "routes[1].listen",
            "same address",
        ),
        ("no routes", "workers: 1\nroutes: []\n".to_owned(), ":2:9", "routes", "no routes"),
        ("bad enum", GOOD.replace("relay: splice", "relay: zerocopy"), ":2:8", "relay", "unknown variant `zerocopy`"),
        ("pipe_size out of range", format!("pipe_size: 1KiB\n{GOOD}"), ":1:12", "pipe_size", "out of range"),
        ("duplicate name", GOOD.replace("name: db", "name: web"), ":11:11", "routes[1].name", "already used"),
        ("bad weight", GOOD.replace("weight: 3", "weight: 0"), ":10:", "routes[0].upstreams[1].weight", "out of range"),
        (
            "source of the other family than an upstream",
            GOOD.replace(
                "    upstreams:\n      - 127.0.0.1:9000",
                "    source: \"::1\"\n    upstreams:\n      - 127.0.0.1:9000",
            ),
            ":8:13",
            "routes[0].source",
            "source address ::1 is IPv6 but upstreams[0] 127.0.0.1:9000 is IPv4",
        ),
        (
            "source with a port",
            GOOD.replace("  connect_timeout: 2s", "  connect_timeout: 2s\n  source: 10.0.0.1:80"),
            ":5:11",
            "defaults.source",
            "invalid source address \"10.0.0.1:80\": expected an IP address without a port",
        ),
        (
            "bad upstream",
            GOOD.replace("127.0.0.1:9000", "nowhere"),
            ":9:9",
            "routes[0].upstreams[0]",
            "expected host:port",
        ),
    ]
}

#[test]
fn bad_configs_exit_2_with_file_line_column_and_field() {
    for (what, yaml, at, field, words) in bad_configs() {
        let (_dir, path) = temp_config(&yaml);
        let file = path.to_string_lossy().into_owned();
        for args in [vec!["check", "-c", &file], vec!["-c", &file]] {
            let (code, _out, err) = run(&args);
            assert_eq!(code, 2, "{what} ({args:?}): exit code {code}, stderr:\n{err}");
            assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
            let line = err.lines().find(|l| l.starts_with("sluice: ")).unwrap_or_else(|| panic!("{what}: {err}"));
            assert!(line.starts_with(&format!("sluice: {file}{at}")), "{what}: expected {file}{at} in: {line}");
            assert!(line.contains(&format!(" {field}: ")) || field.is_empty(), "{what}: no field {field} in: {line}");
            assert!(line.contains(words), "{what}: expected {words:?} in: {line}");
            assert!(!err.contains("listening on"), "{what}: sluice started listening despite the error");
        }
    }
}

#[test]
fn missing_file_is_a_config_error() {
    let (code, _, err) = run(&["check", "-c", "/nonexistent/proxy.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/proxy.yaml: cannot read the config file"), "{err}");
}

#[test]
fn check_prints_the_effective_routes() {
    let (_dir, path) = temp_config(GOOD);
    let (code, out, err) = run(&["check", "-c", &path.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "name: web",
        "name: db",
        "{ address: \"127.0.0.1:9001\", weight: 3 }",
        "connect_timeout: 2s",
        "idle_timeout: 10m",
        "idle_timeout: 1h",
        "drain_timeout: 25s",
        "drain_grace: 5s",
        "half_close_timeout: 1h",
        "pipe_size: 64KiB",
    ] {
        assert!(out.contains(expected), "check output lacks {expected:?}:\n{out}");
    }
}

#[test]
fn shipped_proxy_yaml_passes_check() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml");
    let (code, out, err) = run(&["check", "-c", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name: web"), "{out}");
}

/// Three routes on one address, routed by TLS server name.
const SNI: &str = "\
routes:
  - name: api
    listen: 127.0.0.1:8443
    upstreams: [\"127.0.0.1:9001\"]
    server_names: [\"api.example.com\", \"*.example.com\"]
  - name: web
    listen: 127.0.0.1:8443
    upstreams: [\"127.0.0.1:9002\"]
    server_names: [\"www.example.org\"]
  - name: fallback
    listen: 127.0.0.1:8443
    upstreams: [\"127.0.0.1:9003\"]
";

#[test]
fn routes_sharing_an_address_are_checked_with_file_line_column() {
    let (_dir, path) = temp_config(SNI);
    let (code, out, err) = run(&["check", "-c", &path.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "# 127.0.0.1:8443 routes by TLS server name (ClientHello):",
        "#   *.example.com -> api",
        "#   api.example.com -> api",
        "#   www.example.org -> web",
        "#   (no SNI, or a name no route claims) -> fallback",
        "server_names: [\"api.example.com\", \"*.example.com\"]",
        "client_hello_timeout: 5s",
    ] {
        assert!(out.contains(line), "check output lacks {line:?}:\n{out}");
    }
    let cases = [
        (
            "a name claimed twice",
            SNI.replace("www.example.org", "API.example.com."),
            ":9:",
            "routes[1].server_names[0]",
            "api.example.com is claimed twice",
        ),
        (
            "a bad wildcard",
            SNI.replace("*.example.com", "a.*.example.com"),
            ":5:",
            "routes[0].server_names[1]",
            "covers exactly one label",
        ),
        (
            "a wildcard for a TLD",
            SNI.replace("*.example.com", "*.com"),
            ":5:",
            "routes[0].server_names[1]",
            "at least two labels",
        ),
        (
            "two defaults",
            SNI.replace("    server_names: [\"www.example.org\"]\n", ""),
            ":9:",
            "routes[2]",
            "already the default",
        ),
        (
            "disagreeing backlogs",
            SNI.replace("[\"www.example.org\"]\n", "[\"www.example.org\"]\n    backlog: 100\n"),
            ":10:",
            "routes[1].backlog",
            "must agree on backlog",
        ),
        (
            "alpn without names",
            format!("{SNI}    alpn: [\"h2\"]\n"),
            ":13:",
            "routes[2].alpn",
            "alpn needs server_names",
        ),
        (
            "two plain routes on one address",
            SNI.replace("    server_names: [\"www.example.org\"]\n", "")
                .replace("    server_names: [\"api.example.com\", \"*.example.com\"]\n", ""),
            ":",
            "routes[1].listen",
            "same address",
        ),
    ];
    for (what, yaml, at, field, words) in cases {
        let (_dir, path) = temp_config(&yaml);
        let file = path.to_string_lossy().into_owned();
        let (code, _, err) = run(&["check", "-c", &file]);
        assert_eq!(code, 2, "{what}: exit code\n{err}");
        assert!(err.contains(&format!("{file}{at}")), "{what}: no {at} in {err}");
        assert!(err.contains(&format!(": {field}: ")), "{what}: no field {field} in {err}");
        assert!(err.contains(words), "{what}: no {words:?} in {err}");
    }
}
