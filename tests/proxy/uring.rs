//! `relay: uring` where io_uring is refused: sluice says so once and relays
//! with `auto`, and `sluice doctor` says why and how to fix it. The refusal
//! is real: `tests/support/no_uring.py` runs sluice under a seccomp filter that
//! fails io_uring_setup with EPERM, as Docker's default profile does. (The
//! byte-exactness, endings and chaos cases run in uring mode with the other
//! modes: `both_modes!` and the `_under_relay_uring` tests.)

use std::process::Command;

use crate::backends;
use crate::harness::{one_route, run, run_command, temp_config};
use crate::relay_modes::{Refused, falls_back_to_auto_and_says_so_once, under_refusal};

fn under_no_uring(args: &[&str]) -> Command {
    under_refusal(Refused::IoUring, args)
}

#[test]
fn relay_uring_falls_back_to_auto_where_io_uring_is_refused_and_says_so_once() {
    falls_back_to_auto_and_says_so_once("uring", Refused::IoUring);
}

#[test]
fn doctor_says_whether_relay_uring_can_have_its_ring() {
    let (_dir, path) = temp_config(&one_route("uring", &[backends::echo()], ""));
    let path = path.to_str().expect("utf-8 path");
    let (_, out, _) = run(&["doctor", "-c", path]);
    assert!(out.contains("OK io_uring: available: relay: uring uses it"), "{out}");
    let (_, out, _) = run_command(under_no_uring(&["doctor", "-c", path]));
    let line = out.lines().find(|l| l.contains("io_uring:")).unwrap_or_else(|| panic!("no io_uring line:\n{out}"));
    assert!(line.starts_with("WARN") && line.contains("falls back to auto"), "{line}");
    assert!(out.contains("fix: sysctl -w kernel.io_uring_disabled=0"), "{out}");
}

/// A bulk upload must not take the worker's whole buffer set: after its
/// first stop a direction receives one buffer at a time. (On multishot
/// receives throughout, one 4 GiB stream grew it to 992 buffers, 62 MiB.)
#[test]
fn a_bulk_flow_under_relay_uring_keeps_the_buffer_set_small() {
    let (s, admin) = crate::observability::with_admin(&one_route("uring", &[backends::sink()], ""));
    for seed in 0..2 {
        assert!(backends::verified_upload(s.addr(), seed, 256 << 20).expect("upload"), "upload {seed} corrupted");
    }
    let (code, m) = crate::harness::admin_get(admin, "/metrics");
    assert_eq!(code, 200);
    let buffers: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("sluice_uring_buffers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_uring_buffers in\n{m}"));
    assert!(buffers <= 64, "two 256 MiB uploads grew the buffer set to {buffers}");
    eprintln!("uring bulk: {buffers} buffers after 2 × 256 MiB");
}
