//! The command-line contract: help, usage errors (exit 2), runtime
//! failures (exit 1).

use std::io::{Read, Write};

use crate::harness::run;

#[test]
fn help_describes_the_contract() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in ["--listen", "--upstream", "--workers", "--relay", "--log", "check", "Exit codes"] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
}

#[test]
fn every_help_says_where_the_reference_is() {
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["check", "--help"],
        vec!["stats", "--help"],
        vec!["probe", "--help"],
        vec!["doctor", "--help"],
    ] {
        let (code, out, _) = run(&args);
        assert_eq!(code, 0, "{args:?}");
        let line = out
            .lines()
            .find(|l| l.starts_with("Reference"))
            .unwrap_or_else(|| panic!("{args:?}: no Reference line:\n{out}"));
        for doc in ["docs/configuration.md", "docs/observability.md", "docs/operations.md"] {
            assert!(line.contains(doc), "{args:?}: the Reference line lacks {doc}: {line}");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
            assert!(path.is_file(), "{args:?} names {doc}, which does not exist");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--relay", "bogus", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"],
        vec!["--listen", "127.0.0.1:0"],
        vec!["--upstream", "127.0.0.1:1"],
        vec!["--listen", "nowhere", "--upstream", "127.0.0.1:1"],
        vec!["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:0"],
        vec!["--workers", "0", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1"],
        vec!["frobnicate"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: exit {code}, stderr:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn listen_address_in_use_exits_1_with_a_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, _, err) = run(&["--listen", &addr, "--upstream", "127.0.0.1:1"]);
    assert_eq!(code, 1, "stderr:\n{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn unresolvable_upstream_exits_1_naming_it() {
    let (code, _, err) = run(&["--listen", "127.0.0.1:0", "--upstream", "no-such-host.invalid:80"]);
    assert_eq!(code, 1, "stderr:\n{err}");
    assert!(err.contains("cannot resolve upstream no-such-host.invalid:80"), "{err}");
}

#[test]
fn probe_answers_for_the_admin_port_and_fails_without_one() {
    use nix::sys::signal::Signal;
    use std::time::Duration;
    let up = crate::backends::echo();
    let (s, admin) =
        crate::observability::with_admin(&crate::harness::one_route("auto", &[up], "    idle_timeout: 1m\n"));
    let a = admin.to_string();
    let (code, out, err) = run(&["probe", "--admin", &a]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/readyz: 200"), "{out}");
    assert_eq!(run(&["probe", "/healthz", "--admin", &a]).0, 0);
    // Draining: not ready any more, still alive. A busy session keeps the drain going
    // (an idle one would be closed after a second).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = std::sync::Arc::clone(&stop);
        let mut c = crate::backends::connect(s.addr());
        std::thread::spawn(move || {
            let mut b = [0u8; 4];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if c.write_all(b"ping").is_err() || c.read_exact(&mut b).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    s.signal(Signal::SIGTERM);
    assert!(s.wait_log("SIGTERM received", Duration::from_secs(5)));
    let (code, _, err) = run(&["probe", "--admin", &a]);
    assert_eq!(code, 1, "a draining sluice is not ready");
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(run(&["probe", "/healthz", "--admin", &a]).0, 0, "but alive");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    busy.join().expect("busy client");
    // Nothing listening: exit 1 with the reason.
    let free = crate::observability::admin_addr().to_string();
    let (code, _, err) = run(&["probe", "--admin", &free, "--timeout", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused"), "{err}");
    assert_eq!(run(&["probe", "/metrics", "--admin", &a]).0, 2, "only /readyz and /healthz");
}

#[test]
fn the_kubernetes_example_config_is_valid() {
    // The proxy.yaml inside examples/kubernetes/configmap.yaml, checked like any config.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes/configmap.yaml"))
        .expect("configmap.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let proxy = doc["data"]["proxy.yaml"].as_str().expect("data.proxy.yaml");
    let (_dir, path) = crate::harness::temp_config(proxy);
    let (code, out, err) = run(&["check", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    for want in ["watch: true", "drain_timeout: 25s", "balance: least_conn", "expect: \"+PONG\""] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
}

#[test]
fn check_says_where_relay_uring_falls_back_as_doctor_does() {
    let (_dir, path) = crate::harness::temp_config(
        "relay: uring\nroutes:\n  - name: r\n    listen: 127.0.0.1:0\n    upstreams: [\"127.0.0.1:1\"]\n",
    );
    let path = path.to_str().expect("utf-8");
    let (code, check, err) = run(&["check", "-c", path]);
    assert_eq!(code, 0, "{err}");
    assert!(check.contains("relay: uring"), "{check}");
    let (_, doctor, _) = run(&["doctor", "-c", path]);
    let refused = doctor
        .lines()
        .find(|l| l.contains(" io_uring: "))
        .unwrap_or_else(|| panic!("no io_uring line from doctor:\n{doctor}"))
        .contains("falls back to auto");
    let says = check.contains("# relay: uring is refused here (") && check.contains("every route relays with auto");
    assert_eq!(says, refused, "check and doctor disagree about io_uring here:\n{check}\n{doctor}");
}
