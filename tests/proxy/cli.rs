//! The command-line contract: help, usage errors (exit 2), runtime
//! failures (exit 1).

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
