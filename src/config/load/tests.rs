use super::*;

fn err(text: &str) -> String {
    parse_str(text, "proxy.yaml").unwrap_err().to_string()
}

const GOOD: &str = "\
workers: 2
relay: copy
defaults:
  connect_timeout: 2s
routes:
  - name: web
    listen: 127.0.0.1:8080
    upstreams:
      - 127.0.0.1:9000
      - { address: \"127.0.0.1:9001\", weight: 3 }
    idle_timeout: 1m
  - name: db
    listen: 127.0.0.1:5433
    upstreams: [\"localhost:5432\"]
";

#[test]
fn good_config_merges_defaults() {
    let c = parse_str(GOOD, "proxy.yaml").unwrap();
    assert_eq!(c.workers, super::super::Workers::Count(2));
    assert_eq!(c.relay, super::super::RelayMode::Copy);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].connect_timeout, std::time::Duration::from_secs(2));
    assert_eq!(c.routes[0].idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(c.routes[1].idle_timeout, super::super::DEFAULT_IDLE_TIMEOUT);
    assert_eq!(c.routes[0].upstreams[1].weight, 3);
    assert_eq!(c.routes[1].upstreams[0].address.host, "localhost");
}

#[test]
fn relay_sockmap_is_a_mode_globally_and_per_route() {
    use super::super::RelayMode;
    let c = parse_str(&GOOD.replace("relay: copy", "relay: sockmap"), "proxy.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.relay, RelayMode::Sockmap);
    assert_eq!(c.routes[0].relay, None, "absent: the global one");
    assert!(c.asks(RelayMode::Sockmap) && !c.asks(RelayMode::Uring));
    let text = GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    relay: sockmap\n");
    let c = parse_str(&text, "proxy.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.relay, c.routes[0].relay, c.routes[1].relay), (RelayMode::Copy, Some(RelayMode::Sockmap), None));
    assert!(c.asks(RelayMode::Sockmap), "one route asking is enough");
    let text = GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    relay: uring\n");
    assert_eq!(parse_str(&text, "proxy.yaml").unwrap().routes[0].relay, Some(RelayMode::Uring));
}

#[test]
fn a_bad_route_relay_names_its_line_and_field() {
    let e = err(&GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    relay: bpf\n"));
    assert!(e.starts_with("proxy.yaml:12:12: routes[0].relay: unknown variant `bpf`"), "{e}");
    assert!(e.contains("sockmap"), "the accepted modes are named: {e}");
    let e = err(&GOOD.replace("relay: copy", "relay: sockhash"));
    assert!(e.starts_with("proxy.yaml:2:8: relay: unknown variant `sockhash`"), "{e}");
}

#[test]
fn notsent_lowat_defaults_to_256k_and_0_turns_it_off() {
    let lowat = |extra: &str| {
        let text = GOOD.replace("    idle_timeout: 1m\n", &format!("    idle_timeout: 1m\n{extra}"));
        let c = parse_str(&text, "proxy.yaml").unwrap_or_else(|e| panic!("{e}"));
        let again = parse_str(&c.describe(2), "again").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.routes[0].socket.notsent_lowat(), c.routes[0].socket.notsent_lowat(), "describe");
        c.routes[0].socket.notsent_lowat()
    };
    assert_eq!(lowat(""), Some(super::super::DEFAULT_NOTSENT_LOWAT));
    assert_eq!(lowat("    socket: { notsent_lowat: 0 }\n"), None);
    assert_eq!(lowat("    socket: { notsent_lowat: 16KiB }\n"), Some(16 << 10));
}

#[test]
fn single_value_errors_have_line_column_and_path() {
    let e = err(&GOOD.replace("127.0.0.1:8080", "0.0.0.0:80800"));
    assert_eq!(
        e,
        "proxy.yaml:7:13: routes[0].listen: invalid socket address \"0.0.0.0:80800\": expected IP:port, \
             e.g. \"0.0.0.0:8080\" or \"[::]:8080\""
    );
    let e = err(&GOOD.replace("2s", "2 parsecs"));
    assert!(e.starts_with("proxy.yaml:4:20: defaults.connect_timeout: invalid duration"), "{e}");
    let e = err(&GOOD.replace("relay: copy", "relay: zerocopy"));
    assert!(e.starts_with("proxy.yaml:2:8: relay: unknown variant `zerocopy`"), "{e}");
    let e = err(&GOOD.replace("weight: 3", "weight: 0"));
    assert!(e.starts_with("proxy.yaml:10:"), "{e}");
    assert!(e.contains("routes[0].upstreams[1].weight: 0 is out of range"), "{e}");
}

#[test]
fn unknown_fields_are_errors() {
    let e = err(&GOOD.replace("    idle_timeout: 1m", "    idle_timout: 1m"));
    assert!(e.starts_with("proxy.yaml:11:5: routes[0].idle_timout: unknown field `idle_timout`"), "{e}");
    let e = err(&GOOD.replace("weight: 3", "weigth: 3"));
    assert!(e.contains("routes[0].upstreams[1].weigth: unknown field `weigth`"), "{e}");
}

#[test]
fn syntax_errors_have_a_location_and_no_field() {
    let e = err("routes:\n  - name: web\n    upstreams: [\"a:1\"\n  - name: x\n");
    assert_eq!(e, "proxy.yaml:4:3: YAML syntax error: did not find expected ',' or ']', while parsing a flow sequence");
    let e = err("workers: 1\n\troutes: x\n");
    assert!(e.starts_with("proxy.yaml:2:1: YAML syntax error: found a tab character"), "{e}");
}

#[test]
fn cross_field_errors_are_located() {
    let e = err(&GOOD.replace("127.0.0.1:5433", "127.0.0.1:8080"));
    assert!(e.starts_with("proxy.yaml:13:13: routes[1].listen: listen address 127.0.0.1:8080 is the same"), "{e}");
    let e = err(&GOOD.replace("127.0.0.1:5433", "0.0.0.0:8080"));
    assert!(e.contains("routes[1].listen: listen address 0.0.0.0:8080 overlaps"), "{e}");
    let e = err(&GOOD.replace("name: db", "name: web"));
    assert!(e.starts_with("proxy.yaml:12:11: routes[1].name: route name \"web\" is already used"), "{e}");
    let e = err(&GOOD.replace("[\"localhost:5432\"]", "[]"));
    assert!(e.starts_with("proxy.yaml:14:16: routes[1].upstreams: route \"db\" has no upstreams"), "{e}");
    let e = err("workers: 1\nroutes: []\n");
    assert!(e.starts_with("proxy.yaml:2:9: routes: no routes"), "{e}");
    let e = err("workers: 1\n");
    assert!(e.starts_with("proxy.yaml:1:1: routes: no routes"), "{e}");
}

#[test]
fn other_bad_values() {
    let e = err(&GOOD.replace("workers: 2", "pipe_size: 1KiB"));
    assert!(e.starts_with("proxy.yaml:1:12: pipe_size: size \"1KiB\" is out of range"), "{e}");
    let e = err(&GOOD.replace("2s", "0s"));
    assert!(e.contains("defaults.connect_timeout: duration \"0s\" is out of range"), "{e}");
    let e = err(&GOOD.replace("name: db", "name: \"my db\""));
    assert!(e.contains("routes[1].name: invalid route name"), "{e}");
    let e = err(&GOOD.replace("127.0.0.1:9001", "127.0.0.1:9000"));
    assert!(e.contains("routes[0].upstreams[1]: upstream 127.0.0.1:9000 is listed twice"), "{e}");
    let e = err("");
    assert!(e.contains("routes"), "{e}");
}

#[test]
fn source_is_a_route_key_and_a_default() {
    let c = parse_str(&GOOD.replace("  connect_timeout: 2s\n", "  connect_timeout: 2s\n  source: 127.0.0.2\n"), "t")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].source_ip(), Some([127, 0, 0, 2].into()), "from defaults");
    assert_eq!(c.routes[1].source_ip(), Some([127, 0, 0, 2].into()), "a name may resolve to any family");
    let text = GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    source: 127.0.0.3\n");
    let c = parse_str(&text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].source_ip(), Some([127, 0, 0, 3].into()));
    assert_eq!(c.routes[1].source, None);
}

#[test]
fn mptcp_is_off_unless_set_in_the_route_or_its_defaults() {
    let c = parse_str(GOOD, "t").unwrap();
    assert!(!c.routes[0].mptcp && !c.routes[1].mptcp, "off by default");
    let c = parse_str(&GOOD.replace("  connect_timeout: 2s\n", "  connect_timeout: 2s\n  mptcp: true\n"), "t")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.routes[0].mptcp && c.routes[1].mptcp, "from defaults");
    let text = GOOD
        .replace("  connect_timeout: 2s\n", "  connect_timeout: 2s\n  mptcp: true\n")
        .replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    mptcp: false\n");
    let c = parse_str(&text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.routes[0].mptcp && c.routes[1].mptcp, "a route overrides its defaults");
    let e = err(&GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    mptcp: yes please\n"));
    assert!(e.starts_with("proxy.yaml:12:12: routes[0].mptcp: "), "{e}");
}

#[test]
fn routes_sharing_an_address_must_agree_on_mptcp() {
    let text = "routes:\n  - name: a\n    listen: 127.0.0.1:443\n    upstreams: [127.0.0.1:1]\n    mptcp: true\n\
                \x20   server_names: [a.example.com]\n  - name: b\n    listen: 127.0.0.1:443\n    upstreams: [127.0.0.1:2]\n";
    let e = err(text);
    assert!(
        e.contains("routes[1].mptcp: routes on 127.0.0.1:443 share one listener, so they must agree on mptcp"),
        "{e}"
    );
}

#[test]
fn a_source_of_the_other_family_than_a_literal_upstream_is_refused_where_it_is_set() {
    let e = err(&GOOD.replace("    idle_timeout: 1m\n", "    idle_timeout: 1m\n    source: \"fd00::5\"\n"));
    assert!(
        e.starts_with(
            "proxy.yaml:12:13: routes[0].source: source address fd00::5 is IPv6 but upstreams[0] 127.0.0.1:9000 is IPv4"
        ),
        "{e}"
    );
    let e = err(&GOOD.replace("  connect_timeout: 2s\n", "  connect_timeout: 2s\n  source: \"::1\"\n"));
    assert!(e.starts_with("proxy.yaml:10:9: routes[0].upstreams[0]: upstream 127.0.0.1:9000 is IPv4 but the route's source ::1 (from defaults.source) is IPv6"), "{e}");
    let e = err(&GOOD.replace("  connect_timeout: 2s\n", "  connect_timeout: 2s\n  source: 127.0.0.1:80\n"));
    assert!(e.starts_with("proxy.yaml:5:11: defaults.source: invalid source address \"127.0.0.1:80\""), "{e}");
}

#[test]
fn readme_yaml_snippets_are_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```yaml\n").skip(1).filter_map(|b| b.split("```").next()).collect();
    assert!(!blocks.is_empty(), "README.md has no yaml example");
    for b in blocks {
        parse_str(b, "README.md").unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
}

#[test]
fn shipped_proxy_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml");
    let c = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.routes.is_empty());
}
