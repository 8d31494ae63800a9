//! Running unprivileged, as in a container: sluice started as `nobody`
//! (setpriv, no capabilities) relays byte-exact with pipes larger than the
//! per-user pipe page limit allows (pumps copy instead, counted; no
//! connection fails), and a port below 1024 fails with a message naming
//! CAP_NET_BIND_SERVICE. Skipped, saying why, where we can't switch users.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::backends;
use crate::harness::{BIN, Sluice};
use crate::observability::{admin_addr, stats};

/// `setpriv` arguments that drop to nobody:nogroup with no capabilities, or `None` (skip).
pub(crate) fn as_nobody() -> Option<Vec<&'static str>> {
    if !crate::harness::is_root() {
        eprintln!("SKIP: switching to nobody needs root");
        return None;
    }
    let ok = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: setpriv (util-linux) is not installed");
        return None;
    }
    // The binary must be reachable by nobody along its whole path.
    let mut p = std::path::Path::new(BIN).parent();
    while let Some(dir) = p {
        let mode = std::fs::metadata(dir).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o001 == 0 {
            eprintln!("SKIP: {} is not searchable by other users", dir.display());
            return None;
        }
        p = dir.parent();
    }
    Some(vec!["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
}

#[test]
fn a_low_port_as_nobody_names_the_capability() {
    let Some(drop_privs) = as_nobody() else { return };
    let out = Command::new("setpriv")
        .args(&drop_privs)
        .args([BIN, "--listen", "127.0.0.1:81", "--upstream", "127.0.0.1:9"])
        .output()
        .expect("run sluice as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_BIND_SERVICE"), "{err}");
}

#[test]
fn nobody_relays_byte_exact_beyond_the_pipe_page_limit() {
    let Some(drop_privs) = as_nobody() else { return };
    // A sink that waits a second before reading: every session's bytes sit in sluice's pipes
    // at once, so the pipe budget is certainly exhausted.
    let up = backends::serve(|mut s| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        backends::answer_digest(&mut s);
    });
    let admin = admin_addr();
    // 1 MiB pipes: nobody may hold fs.pipe-user-pages-soft (16,384 pages = 64 MiB) of pipes, so 64 of
    // them; 96 concurrent bulk sessions want up to 192.
    let yaml = format!(
        "workers: 1\nrelay: splice\npipe_size: 1MiB\nadmin: {{ listen: \"{admin}\" }}\nroutes:\n  - name: t\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = Command::new("setpriv");
    cmd.args(&drop_privs).arg(BIN).arg("-c").arg(&path);
    let s = Sluice::spawn(cmd, 1, Some(dir));
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(uid_line.split_whitespace().nth(1) == Some("65534"), "not running as nobody: {uid_line}");
    let addr: SocketAddr = s.addr();
    let threads: Vec<_> = (0..96u64)
        .map(|i| std::thread::spawn(move || backends::verified_upload(addr, 50 + i, 8 << 20).expect("upload")))
        .collect();
    let exact = threads.into_iter().map(|t| t.join().expect("thread")).filter(|ok| *ok).count();
    assert_eq!(exact, 96, "every session byte-exact");
    let st = stats(admin);
    let (refused, fallbacks) =
        (st["pipes"]["refused"].as_u64().unwrap_or(0), st["pipes"]["copy_fallbacks"].as_u64().unwrap_or(0));
    eprintln!("nonroot: 96 × 8 MiB as nobody with 1 MiB pipes: pipes refused {refused}, copy fallbacks {fallbacks}");
    assert!(refused + fallbacks > 0, "the per-user pipe limit was never met: {}", st["pipes"]);
}
