use std::path::Path;

use super::*;
use crate::config::parse_str;

const CONFIG: &str = "max_connections: 10000\npipe_size: 64KiB\nroutes:\n  - name: web\n    listen: 127.0.0.1:0\n\
        \x20   upstreams: [127.0.0.1:1]\n    backlog: 4096\n    socket: { send_buffer: 4MiB, fastopen: 16, congestion: bbr }\n";

fn good() -> Facts {
    Facts {
        somaxconn: Some(4096),
        tcp_max_syn_backlog: Some(4096),
        pipe_max_size: Some(1 << 20),
        pipe_user_pages_soft: Some(16384),
        pipe_limits_apply: true,
        tcp_rmem: Some([4096, 131072, 6291456]),
        tcp_wmem: Some([4096, 16384, 4194304]),
        rmem_max: Some(8 << 20),
        wmem_max: Some(8 << 20),
        tcp_fastopen: Some(3),
        congestion_available: Some(vec!["reno".into(), "cubic".into(), "bbr".into()]),
        tcp_tw_reuse: Some(2),
        port_range: Some((32768, 60999)),
        reserved_ports: Vec::new(),
        file_max: Some(1 << 20),
        tcp_migrate_req: Some(1),
        nofile: Some((20000, 20064)),
        io_uring_refused: None,
        sockmap_refused: None,
        mptcp_enabled: Some(1),
        cap_eff: Some(0x1ff_ffff_ffff),
        kernel: Some((6, 18)),
        conntrack: true,
        nft: Some("/usr/sbin/nft".into()),
        policy_routing: Some(PolicyRouting::default()),
    }
}

#[test]
fn upgrades_to_fewer_workers_want_tcp_migrate_req() {
    let mut config = crate::config::parse_str(CONFIG, "t").unwrap();
    let f = good();
    assert!(audit(&config, &f).iter().all(|x| x.check != "net.ipv4.tcp_migrate_req"), "no control socket");
    config.control_socket = Some("/run/sluice.sock".into());
    assert_eq!(find(&audit(&config, &f), "net.ipv4.tcp_migrate_req").level, Level::Ok);
    let off = Facts { tcp_migrate_req: Some(0), ..good() };
    let w = audit(&config, &off);
    let x = find(&w, "net.ipv4.tcp_migrate_req");
    assert_eq!(x.level, Level::Warn);
    assert_eq!(x.fix.as_deref(), Some("sysctl -w net.ipv4.tcp_migrate_req=1"));
}

fn find<'a>(fs: &'a [Finding], check: &str) -> &'a Finding {
    fs.iter().find(|f| f.check.starts_with(check)).unwrap_or_else(|| panic!("no {check} in {fs:#?}"))
}

#[test]
fn a_good_machine_has_no_warnings() {
    let c = parse_str(CONFIG, "t").unwrap();
    let fs = audit(&c, &good());
    assert!(fs.iter().all(|f| f.level == Level::Ok), "{}", render(&fs));
    assert_eq!(exit_code(&fs), 0);
}

#[test]
fn relay_uring_without_io_uring_is_a_warning_with_its_fix() {
    let c = parse_str(&format!("relay: uring\n{CONFIG}"), "t").unwrap();
    assert_eq!(find(&audit(&c, &good()), "io_uring").level, Level::Ok);
    let mut f = good();
    f.io_uring_refused = Some("io_uring_setup was refused (EPERM)".into());
    let fs = audit(&c, &f);
    let got = find(&fs, "io_uring");
    assert_eq!(got.level, Level::Warn, "{}", render(&fs));
    assert!(got.detail.contains("falls back to auto") && got.detail.contains("EPERM"), "{}", got.detail);
    assert!(got.fix.as_deref().is_some_and(|x| x.contains("kernel.io_uring_disabled=0")));
    assert_eq!(exit_code(&fs), 0, "a warning, not a failure: it still relays");
}

#[test]
fn relay_sockmap_refused_is_a_warning_with_its_fix_only_where_asked() {
    let refused = Facts { sockmap_refused: Some("bpf(BPF_MAP_CREATE) was refused (EPERM)".into()), ..good() };
    let plain = parse_str(CONFIG, "t").unwrap();
    let got = audit(&plain, &refused);
    assert_eq!(find(&got, "sockmap").level, Level::Ok, "not asked for: {}", render(&got));
    assert_eq!(
        find(&audit(&plain, &good()), "sockmap").detail,
        "available (relay: sockmap could use it; this config does not ask for it)"
    );
    // The global setting or one route asking is enough.
    let global = parse_str(&format!("relay: sockmap\n{CONFIG}"), "t").unwrap();
    let route = parse_str(&format!("{CONFIG}    relay: sockmap\n"), "t").unwrap();
    for c in [global, route] {
        assert_eq!(find(&audit(&c, &good()), "sockmap").detail, "available: relay: sockmap uses it");
        let fs = audit(&c, &refused);
        let got = find(&fs, "sockmap");
        assert_eq!(got.level, Level::Warn, "{}", render(&fs));
        assert!(got.detail.contains("falls back to auto") && got.detail.contains("EPERM"), "{}", got.detail);
        assert!(got.fix.as_deref().is_some_and(|x| x.contains("CAP_BPF") && x.contains("seccomp")), "{:?}", got.fix);
        assert_eq!(exit_code(&fs), 0, "a warning, not a failure: it still relays");
    }
}

#[test]
fn every_rule_has_its_warning_and_fix() {
    let c = parse_str(CONFIG, "t").unwrap();
    type Breaker = Box<dyn Fn(&mut Facts)>;
    let cases: Vec<(&str, Breaker, Level, &str)> = vec![
        ("net.core.somaxconn", Box::new(|f| f.somaxconn = Some(128)), Level::Warn, "sysctl -w net.core.somaxconn=4096"),
        (
            "net.ipv4.tcp_max_syn_backlog",
            Box::new(|f| f.tcp_max_syn_backlog = Some(512)),
            Level::Warn,
            "sysctl -w net.ipv4.tcp_max_syn_backlog=4096",
        ),
        ("RLIMIT_NOFILE", Box::new(|f| f.nofile = Some((1024, 8000))), Level::Warn, "ulimit -n 20064"),
        ("RLIMIT_NOFILE", Box::new(|f| f.nofile = Some((1024, 1024))), Level::Fail, "ulimit -n 20064"),
        (
            "fs.pipe-max-size",
            Box::new(|f| f.pipe_max_size = Some(4096)),
            Level::Warn,
            "sysctl -w fs.pipe-max-size=65536",
        ),
        (
            "fs.pipe-user-pages-soft",
            Box::new(|f| f.pipe_user_pages_soft = Some(1000)),
            Level::Warn,
            "sysctl -w fs.pipe-user-pages-soft=16384",
        ),
        (
            "net.core.wmem_max",
            Box::new(|f| f.wmem_max = Some(212992)),
            Level::Warn,
            "sysctl -w net.core.wmem_max=4194304",
        ),
        (
            "net.ipv4.tcp_fastopen",
            Box::new(|f| f.tcp_fastopen = Some(1)),
            Level::Warn,
            "sysctl -w net.ipv4.tcp_fastopen=3",
        ),
        (
            "congestion bbr",
            Box::new(|f| f.congestion_available = Some(vec!["cubic".into()])),
            Level::Warn,
            "modprobe tcp_bbr",
        ),
        (
            "net.ipv4.tcp_tw_reuse",
            Box::new(|f| f.tcp_tw_reuse = Some(0)),
            Level::Warn,
            "sysctl -w net.ipv4.tcp_tw_reuse=1",
        ),
        (
            "net.ipv4.ip_local_port_range",
            Box::new(|f| f.port_range = Some((60000, 61000))),
            Level::Warn,
            "ip_local_port_range=\"1024 65535\"",
        ),
        ("fs.file-max", Box::new(|f| f.file_max = Some(1000)), Level::Warn, "sysctl -w fs.file-max=40000"),
    ];
    for (check, breakit, level, fix) in cases {
        let mut f = good();
        breakit(&mut f);
        let fs = audit(&c, &f);
        assert_eq!(find(&fs, "io_uring").level, Level::Ok, "not asked for, so not a problem");
        let got = find(&fs, check);
        assert_eq!(got.level, level, "{check}: {}", render(&fs));
        if check.starts_with("net.core.somaxconn") {
            // Per network namespace: a container sets it through its runtime.
            let container_fix = "--sysctl net.core.somaxconn=4096; Kubernetes: the pod's securityContext.sysctls";
            assert!(got.fix.as_deref().is_some_and(|x| x.contains(container_fix)), "{:?}", got.fix);
        }
        assert!(got.fix.as_deref().is_some_and(|x| x.contains(fix)), "{check}: fix {:?}", got.fix);
        assert_eq!(exit_code(&fs), i32::from(level == Level::Fail));
        assert!(render(&fs).contains(&format!("fix: {}", got.fix.as_deref().unwrap_or(""))));
    }
}

#[test]
fn local_ports_are_counted_per_upstream_address_and_source() {
    let route = |name: &str, port: u16, extra: &str| {
        format!("  - name: {name}\n    listen: 127.0.0.1:{port}\n    upstreams: [10.0.0.1:80, 10.0.0.2:80]\n{extra}")
    };
    let ports = |c: &str, f: &Facts| {
        let c = parse_str(&format!("max_connections: 100000\nroutes:\n{c}"), "t").unwrap_or_else(|e| panic!("{e}"));
        audit(&c, f).into_iter().filter(|x| x.check == "net.ipv4.ip_local_port_range").collect::<Vec<_>>()
    };
    // 100,000 over two upstreams: 50,000 each > 28,232, within 64,512.
    let fs = ports(&route("web", 1, ""), &good());
    assert_eq!(fs.len(), 2, "one warning per upstream address: {fs:#?}");
    assert!(fs.iter().all(|x| x.level == Level::Warn));
    let want = "32768-60999 = 28232 ports per upstream address, but route web may have 50000 sessions open at \
                    once to 10.0.0.1:80 (";
    assert!(fs[0].detail.starts_with(want), "{}", fs[0].detail);
    assert_eq!(fs[0].fix.as_deref(), Some("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""));
    // Two routes to the same addresses share their ports: 100,000 each, past even 64,512.
    let fs = ports(&format!("{}{}", route("a", 1, ""), route("b", 2, "")), &good());
    assert!(fs[0].detail.contains("routes a, b may have 100000 sessions"), "{}", fs[0].detail);
    assert!(fs[0].fix.as_deref().is_some_and(|x| x.contains("different source: addresses")), "{:?}", fs[0].fix);
    // Route limits, reserved ports and sources.
    let limited = route("web", 1, "    max_connections: 40000\n");
    let f = Facts { reserved_ports: vec![(40000, 40099), (8080, 8080)], ..good() };
    let fs = ports(&limited, &f);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].level, Level::Ok, "{}", fs[0].detail);
    assert!(
        fs[0].detail.starts_with("32768-60999 less 100 in ip_local_reserved_ports = 28132 ports"),
        "{}",
        fs[0].detail
    );
    assert!(fs[0].detail.ends_with("the most any needs is 20000 (route web: 10.0.0.1:80)"), "{}", fs[0].detail);
    let sourced = |a: &str, b: &str| {
        format!("{}{}", route("a", 1, &format!("    source: {a}\n")), route("b", 2, &format!("    source: {b}\n")))
    };
    let fs = ports(&sourced("10.0.0.7", "10.0.0.8"), &Facts { port_range: Some((1024, 65535)), ..good() });
    assert!(fs.iter().all(|x| x.level == Level::Ok), "each source has ports of its own: {fs:#?}");
    let fs = ports(&sourced("10.0.0.7", "10.0.0.7"), &Facts { port_range: Some((1024, 65535)), ..good() });
    assert!(fs.iter().all(|x| x.level == Level::Warn) && fs.len() == 2, "one source, shared: {fs:#?}");
    let want = "routes a, b may have 100000 sessions open at once to 10.0.0.1:80 from 10.0.0.7 (";
    assert!(fs[0].detail.contains(want), "{}", fs[0].detail);
    assert_eq!(ports(&limited, &Facts { port_range: None, ..good() })[0].detail, "could not be read");
}

#[test]
fn privileged_processes_are_not_limited_by_pipe_pages() {
    let c = parse_str(CONFIG, "t").unwrap();
    let f = Facts { pipe_limits_apply: false, pipe_user_pages_soft: Some(1), ..good() };
    assert_eq!(find(&audit(&c, &f), "fs.pipe-user-pages-soft").level, Level::Ok);
}

#[test]
fn facts_are_read_from_a_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, v: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    put("sys/net/core/somaxconn", "128\n");
    put("sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n");
    put("sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
    put("sys/net/ipv4/ip_local_reserved_ports", "8080,40000-40009\n");
    put("sys/net/ipv4/tcp_available_congestion_control", "reno cubic\n");
    put("self/status", "Name:\tsluice\nCapEff:\t0000000000003000\n");
    put("sys/kernel/osrelease", "5.15.0-91-generic\n");
    put("sys/net/netfilter/nf_conntrack_max", "262144\n");
    put(
        "self/limits",
        "Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 4096                 files\n",
    );
    let f = Facts::read(dir.path());
    assert_eq!(f.somaxconn, Some(128));
    assert_eq!(f.tcp_rmem, Some([4096, 131072, 6291456]));
    assert_eq!(f.port_range, Some((32768, 60999)));
    assert_eq!(f.reserved_ports, vec![(8080, 8080), (40000, 40009)]);
    assert_eq!(f.congestion_available, Some(vec!["reno".to_owned(), "cubic".to_owned()]));
    assert!(f.pipe_limits_apply);
    assert_eq!(f.nofile, Some((1024, 4096)));
    assert_eq!(f.file_max, None);
    assert_eq!(f.cap_eff, Some(0x3000), "CAP_NET_ADMIN and CAP_NET_RAW");
    assert_eq!(f.kernel, Some((5, 15)));
    assert!(f.conntrack);
    let fs = audit(&parse_str(CONFIG, "t").unwrap(), &f);
    assert_eq!(find(&fs, "net.core.somaxconn").level, Level::Warn);
    assert_eq!(find(&fs, "fs.file-max").level, Level::Warn, "unreadable facts are reported, not skipped");
}

#[test]
fn this_machine_and_the_shipped_config() {
    let f = Facts::read(Path::new("/proc"));
    assert!(f.somaxconn.is_some() && f.nofile.is_some());
    let c = crate::config::load_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml")).unwrap();
    let out = render(&audit(&c, &f));
    assert!(out.contains("net.core.somaxconn"), "{out}");
}

#[test]
fn mptcp_routes_need_net_mptcp_enabled() {
    let plain = parse_str(CONFIG, "t").unwrap();
    let off = Facts { mptcp_enabled: Some(0), ..good() };
    assert!(audit(&plain, &off).iter().all(|x| x.check != "net.mptcp.enabled"), "asked only for mptcp routes");
    let c = parse_str(&CONFIG.replace("    backlog: 4096\n", "    backlog: 4096\n    mptcp: true\n"), "t").unwrap();
    assert_eq!(find(&audit(&c, &good()), "net.mptcp.enabled").level, Level::Ok);
    let fs = audit(&c, &off);
    let x = find(&fs, "net.mptcp.enabled");
    assert_eq!(x.level, Level::Fail);
    assert!(x.detail.contains("route(s) web with mptcp: true cannot listen"), "{}", x.detail);
    assert_eq!(x.fix.as_deref(), Some("sysctl -w net.mptcp.enabled=1   (persist it in /etc/sysctl.d/)"));
    assert_eq!(exit_code(&fs), 1);
    let none = Facts { mptcp_enabled: None, ..good() };
    assert!(find(&audit(&c, &none), "net.mptcp.enabled").detail.contains("this kernel has no MPTCP"));
}

/// A transparent sidecar's routes: a `redirect` capture with a mark, and a
/// TPROXY listener that keeps the client's address.
const CAPTURE: &str = "routes:\n  - name: out\n    listen: 127.0.0.1:15001\n    original_destination: true\n\
        \x20   socket: { mark: 0x539 }\n  - name: tp\n    listen: 0.0.0.0:15002\n    transparent: true\n\
        \x20   original_destination: true\n    source: client\n";

fn tproxy_routing() -> Option<PolicyRouting> {
    let mark = LocalMark { mark: 1, mask: u32::MAX, table: "100".into() };
    Some(PolicyRouting { v4: vec![mark], v6: Vec::new() })
}

#[test]
fn a_config_that_captures_nothing_gets_no_capture_lines() {
    let c = parse_str(CONFIG, "t").unwrap();
    let bare = Facts { cap_eff: Some(0), conntrack: false, nft: None, policy_routing: None, ..good() };
    let fs = audit(&c, &bare);
    for check in ["CAP_NET_ADMIN", "SO_MARK", "policy routing", "nf_conntrack", "nft"] {
        assert!(fs.iter().all(|x| !x.check.starts_with(check)), "{check}: {}", render(&fs));
    }
}

#[test]
fn a_transparent_sidecar_gets_its_checks_and_fixes() {
    let c = parse_str(CAPTURE, "t").unwrap_or_else(|e| panic!("{e}"));
    let ready = Facts { policy_routing: tproxy_routing(), ..good() };
    let fs = audit(&c, &ready);
    for check in ["CAP_NET_ADMIN", "SO_MARK", "policy routing (IPv4)", "nf_conntrack", "nft"] {
        assert_eq!(find(&fs, check).level, Level::Ok, "{check}: {}", render(&fs));
    }
    assert!(fs.iter().all(|x| x.check != "policy routing (IPv6)"), "no IPv6 listener: {}", render(&fs));
    assert!(find(&fs, "policy routing").detail.starts_with("fwmark 0x1 -> table 100"), "{}", render(&fs));
    assert!(find(&fs, "CAP_NET_ADMIN").detail.contains("route tp (transparent: true)"));

    // No policy routing: TPROXY cannot deliver, a failure with the commands.
    let fs = audit(&c, &good());
    let x = find(&fs, "policy routing (IPv4)");
    assert_eq!(x.level, Level::Fail, "{}", render(&fs));
    let fix = x.fix.as_deref().unwrap_or_default();
    assert!(fix.starts_with("ip rule add fwmark 1 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100"), "{fix}");
    assert!(fix.contains("examples/nftables/tproxy.nft"), "{fix}");
    assert_eq!(exit_code(&fs), 1);
    // `ip` unreadable: a warning that still says what to set up.
    let fs = audit(&c, &Facts { policy_routing: None, ..good() });
    let x = find(&fs, "policy routing (IPv4)");
    assert_eq!(x.level, Level::Warn);
    assert!(x.fix.as_deref().is_some_and(|f| f.contains("ip route add local 0.0.0.0/0 dev lo table 100")));

    // No capability: the transparent routes fail, the mark is a warning.
    let fs = audit(&c, &Facts { cap_eff: Some(0), ..ready.clone() });
    let x = find(&fs, "CAP_NET_ADMIN");
    assert_eq!(x.level, Level::Fail, "{}", render(&fs));
    assert!(x.detail.contains("route tp (transparent: true)"), "{}", x.detail);
    assert!(x.fix.as_deref().is_some_and(|f| f.contains("setcap cap_net_admin+ep")), "{:?}", x.fix);
    let m = find(&fs, "SO_MARK");
    assert_eq!(m.level, Level::Warn);
    assert!(m.detail.contains("route out (mark 0x539)") && m.detail.contains("loop"), "{}", m.detail);
    assert!(m.fix.as_deref().is_some_and(|f| f.contains("meta skuid")), "{:?}", m.fix);
    // CAP_NET_RAW alone: enough for IP_TRANSPARENT, and for SO_MARK from Linux 5.17.
    let raw = Facts { cap_eff: Some(1 << 13), ..ready.clone() };
    let fs = audit(&c, &raw);
    assert_eq!(find(&fs, "CAP_NET_ADMIN").level, Level::Ok);
    assert_eq!(find(&fs, "SO_MARK").level, Level::Ok);
    let fs = audit(&c, &Facts { kernel: Some((5, 10)), ..raw });
    assert_eq!(find(&fs, "SO_MARK").level, Level::Warn, "{}", render(&fs));

    // No connection tracking and no nft: warnings naming the rule file.
    let fs = audit(&c, &Facts { conntrack: false, nft: None, ..ready.clone() });
    let x = find(&fs, "nf_conntrack");
    assert_eq!(x.level, Level::Warn);
    assert!(x.detail.contains("routes out see"), "tp is transparent and needs none: {}", x.detail);
    assert!(x.fix.as_deref().is_some_and(|f| f.starts_with("nft -f examples/nftables/outbound.nft")));
    assert_eq!(find(&fs, "nft").level, Level::Warn);
    let fs = audit(&c, &Facts { nft: None, ..ready });
    assert_eq!(find(&fs, "nft").level, Level::Ok, "rules loaded from elsewhere: {}", render(&fs));
}

#[test]
fn an_ipv6_transparent_listener_needs_ipv6_routing_too() {
    let c = parse_str(
        "routes:\n  - name: tp6\n    listen: \"[::]:15001\"\n    transparent: true\n    original_destination: true\n",
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fs = audit(&c, &Facts { policy_routing: tproxy_routing(), ..good() });
    assert_eq!(find(&fs, "policy routing (IPv4)").level, Level::Ok, "[::] is dual-stack");
    let x = find(&fs, "policy routing (IPv6)");
    assert_eq!(x.level, Level::Fail, "{}", render(&fs));
    assert!(
        x.fix
            .as_deref()
            .is_some_and(|f| f.starts_with("ip -6 rule add fwmark 1 lookup 100; ip -6 route add local ::/0"))
    );
}
