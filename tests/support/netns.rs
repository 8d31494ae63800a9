//! Network namespaces for the tests: create them (unique names, so tests
//! running in parallel never collide), join any two with a veth pair,
//! give them addresses, routes and nftables rules, run commands or sluice
//! inside, open sockets inside from this very process (a short-lived
//! thread that joins the namespace), and remove everything on drop.
//!
//! Also the helper-process pattern: this test binary run again (`Helper`),
//! inside a namespace or not, to serve as an upstream a test must be able to
//! kill with SIGKILL. Helper tests do nothing unless `HELPER_ENV` is set.
//!
//! Every test that uses a namespace asks `Netns::new`, which answers `None`
//! (and prints why) where the machine forbids namespaces: not root, or no
//! `ip`/`nft`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Sluice;

/// The environment variable that tells a helper test what to serve (an address).
pub const HELPER_ENV: &str = "SLUICE_TEST_HELPER";

/// Runs `cmd ARGS`, panicking with its stderr if it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// True if `cmd ARGS` runs and succeeds.
pub fn can_run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A number no other namespace or interface of this test process has (names must differ across parallel tests).
fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A network namespace, deleted (with every veth end inside it) on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    /// Root-namespace veth ends (deleting the namespace does not remove them).
    host_links: Vec<String>,
}

/// A veth pair between the root namespace and a test's namespace, and its addresses.
#[derive(Debug, Clone)]
pub struct RootLink {
    /// The end in the root namespace.
    pub host_if: String,
    /// The end inside the namespace.
    pub ns_if: String,
    /// The namespace end's address (the root end has the one before it).
    pub peer: Ipv4Addr,
}

/// The two ends of a veth pair: interface names in the first and in the second namespace.
#[derive(Debug, Clone)]
pub struct Link {
    pub a_if: String,
    pub b_if: String,
}

impl Netns {
    /// A new namespace with `lo` up, named after `tag`; `None` (and a message)
    /// where namespaces, `ip` or `nft` are not available.
    pub fn new(tag: &str) -> Option<Netns> {
        if !crate::harness::is_root() {
            eprintln!("SKIP: network namespaces need root");
            return None;
        }
        for (tool, args) in [("ip", &["-V"][..]), ("nft", &["--version"][..])] {
            if !can_run(tool, args) {
                eprintln!("SKIP: `{tool}` is not installed (apt-get install iproute2 nftables)");
                return None;
            }
        }
        let name = format!("sluice-{tag}-{}-{}", std::process::id(), next_id());
        if !can_run("ip", &["netns", "add", &name]) {
            eprintln!("SKIP: cannot create a network namespace here");
            return None;
        }
        let ns = Netns { name, host_links: Vec::new() };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip netns exec NAME PROGRAM`, ready for more arguments.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a command inside, panicking with its stderr if it fails.
    pub fn exec(&self, args: &[&str]) {
        let out = self.try_exec(args);
        assert!(out.status.success(), "in {}: {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a command inside and returns what it did.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        self.command(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("ip netns exec {args:?}: {e}"))
    }

    /// Runs a command inside and returns its stdout (panics if it fails).
    pub fn output(&self, args: &[&str]) -> String {
        let out = self.try_exec(args);
        assert!(out.status.success(), "in {}: {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets a sysctl inside (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, setting: &str) {
        self.exec(&["sysctl", "-qw", setting]);
    }

    /// A veth pair from this namespace to `other`, both ends up, with
    /// addresses `a_cidr` here and `b_cidr` there (`"192.0.2.1/24"`; empty: none).
    pub fn link(&self, other: &Netns, a_cidr: &str, b_cidr: &str) -> Link {
        let id = format!("{}{}", std::process::id() % 100_000, next_id());
        // Interface names are at most 15 bytes.
        let link = Link { a_if: format!("sla{id}"), b_if: format!("slb{id}") };
        sh(
            "ip",
            &[
                "link",
                "add",
                &link.a_if,
                "netns",
                &self.name,
                "type",
                "veth",
                "peer",
                "name",
                &link.b_if,
                "netns",
                &other.name,
            ],
        );
        for (ns, ifname, cidr) in [(self, &link.a_if, a_cidr), (other, &link.b_if, b_cidr)] {
            if !cidr.is_empty() {
                ns.exec(&["ip", "addr", "add", cidr, "dev", ifname]);
            }
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        link
    }

    /// A veth pair from the root namespace to this one, with a /30 of
    /// 10.213.0.0/16 that no other namespace of this process has.
    pub fn link_to_root(&mut self) -> RootLink {
        let id = next_id();
        let block = (std::process::id() * 64 + id) % 16_384;
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block * 4;
        let (host, peer) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let tag = format!("{}{id}", std::process::id() % 100_000);
        let (host_if, ns_if) = (format!("slh{tag}"), format!("sln{tag}"));
        sh("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &self.name]);
        self.host_links.push(host_if.clone());
        sh("ip", &["addr", "add", &format!("{host}/30"), "dev", &host_if]);
        sh("ip", &["link", "set", &host_if, "up"]);
        self.addr(&format!("{peer}/30"), &ns_if);
        self.exec(&["ip", "link", "set", &ns_if, "up"]);
        RootLink { host_if, ns_if, peer }
    }

    /// Adds an address to an interface inside (`lo` too).
    pub fn addr(&self, cidr: &str, dev: &str) {
        self.exec(&["ip", "addr", "add", cidr, "dev", dev]);
    }

    /// `ip route add DEST via GW` inside (`default` for DEST is fine).
    pub fn route(&self, dest: &str, via: &str) {
        self.exec(&["ip", "route", "add", dest, "via", via]);
    }

    /// Loads an nftables file inside with its `define NAME = VALUE` lines
    /// replaced by `defines` (each must be defined in the file: a renamed
    /// define fails the test rather than silently keeping its default).
    pub fn load_nft(&self, file: &Path, defines: &[(&str, &str)]) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rules = substitute_defines(&text, defines).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes()).expect("feed nft");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft -f {} in {}: {}",
            file.display(),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns
    /// what it returns. Sockets made there belong to this namespace for
    /// good, whichever thread uses them later.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// A listener bound inside.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        self.enter(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    /// A connection from inside (with the test timeouts), or the error connect returned.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.enter(move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            crate::backends::timeouts(&s);
            Ok(s)
        })
    }

    /// Waits (bounded) until something inside accepts connections on `addr`.
    pub fn wait_listening(&self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.enter(move || TcpStream::connect_timeout(&addr, Duration::from_millis(300))).is_err() {
            assert!(Instant::now() < deadline, "nothing listened on {addr} in {}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` from an admin port inside: (status, body).
    pub fn admin_get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
        let path = path.to_owned();
        self.enter(move || crate::harness::admin_get(addr, &path))
    }

    /// The sum of metric `name`'s samples whose labels include every `labels` pair, at an admin port inside (0 if none).
    pub fn metric(&self, admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = self.admin_get(admin, "/metrics");
        assert_eq!(status, 200, "{body}");
        sum_samples(&body, name, labels)
    }

    /// sluice run inside with `yaml` as its config and `extra` arguments.
    pub fn sluice(&self, yaml: &str, extra: &[&str]) -> Sluice {
        let (dir, path) = crate::harness::temp_config(yaml);
        let routes = yaml.matches("- name:").count();
        let mut cmd = self.command(crate::harness::BIN);
        cmd.arg("-c").arg(&path).args(extra);
        Sluice::spawn(cmd, routes, Some(dir))
    }
}

/// The sum of the Prometheus samples of `name` whose labels include every `labels` pair.
pub fn sum_samples(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let all = labels.iter().all(|(k, v)| labelset.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if all { value.trim().parse::<f64>().ok() } else { None }
        })
        .sum()
}

impl Drop for Netns {
    fn drop(&mut self) {
        for l in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `text` with each `define NAME = …` line of `defines` given the new value.
pub fn substitute_defines(text: &str, defines: &[(&str, &str)]) -> Result<String, String> {
    let mut seen = vec![false; defines.len()];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let name = line.strip_prefix("define ").and_then(|rest| rest.split('=').next()).map(str::trim);
        match name.and_then(|n| defines.iter().position(|(d, _)| *d == n)) {
            Some(i) => {
                seen[i] = true;
                out.push_str(&format!("define {} = {}\n", defines[i].0, defines[i].1));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    match defines.iter().zip(&seen).find(|(_, s)| !**s) {
        Some(((name, _), _)) => Err(format!("no `define {name} = …` line")),
        None => Ok(out),
    }
}

/// The commands a shipped file gives in its comments as lines starting `# $ `.
pub fn commented_commands(file: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("# $ "))
        .map(|cmd| cmd.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A file under `examples/nftables/` of this repository.
pub fn shipped_rules(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nftables").join(name)
}

/// This test binary run again as a helper: test `test` (its full path,
/// `chaos::helper_sink`) with `HELPER_ENV` set to `addr`, inside `ns` if
/// given; killed on drop. Waits (bounded) until it listens on `addr`.
#[derive(Debug)]
pub struct Helper(pub Child);

impl Helper {
    pub fn spawn(test: &str, addr: SocketAddr, ns: Option<&Netns>) -> Helper {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = match ns {
            Some(ns) => ns.command(exe),
            None => Command::new(exe),
        };
        let child = cmd
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(HELPER_ENV, addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a helper");
        // Owned before the wait: a helper that never listens is killed when the assertion unwinds.
        let helper = Helper(child);
        match ns {
            Some(ns) => ns.wait_listening(addr),
            None => wait_listening(addr),
        }
        helper
    }

    /// The address a helper test is to serve, or `None` when it runs as an ordinary test (do nothing).
    pub fn addr() -> Option<SocketAddr> {
        std::env::var(HELPER_ENV).ok().and_then(|a| a.parse().ok())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `addr` accepts connections from this namespace.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        assert!(Instant::now() < deadline, "nothing listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
