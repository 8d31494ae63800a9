//! systemd socket activation, as `sd_listen_fds(3)` describes it: a
//! `.socket` unit binds the listening sockets and starts sluice with them at
//! fd 3 onwards, saying so in `LISTEN_PID` (which process they are for),
//! `LISTEN_FDS` (how many) and `LISTEN_FDNAMES` (their `FileDescriptorName=`s,
//! colon-separated).
//!
//! Three steps, each testable alone: [`parse`] reads the variables' values
//! (passed in, no I/O); [`from_env`] does it for this process, unsets the
//! variables, takes the fds and checks that each is a listening TCP socket;
//! [`Activation::into_inherited`] matches them to the configuration by the
//! address each is bound to, so the route plan adopts them (`inherit.rs`)
//! the way it adopts a predecessor's. Addresses systemd did not pass are
//! bound as usual. A `--takeover` wins: the running process's sockets are
//! what serves (systemd's copies of them included), so systemd's are not used.
//!
//! How worker threads share one socket per address (joining its
//! `SO_REUSEPORT` group, or duplicates) is decided where sockets are adopted
//! (`bind::adopt`, `sockets::fill_workers`).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::inherit::Inherited;
use super::key::ListenKey;
use crate::config::Config;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The most fds `LISTEN_FDS` may announce: far more listen addresses than a
/// config has, and a bound on the work a bogus value can cause.
pub const MAX_LISTEN_FDS: i32 = 65536;

/// The variables `sd_listen_fds(1)` unsets (`LISTEN_PIDFDID`, newer systemd's
/// guard against a reused pid, is unset but not compared: `LISTEN_PID` is).
const VARIABLES: [&str; 4] = ["LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why the sockets systemd passed cannot be used. Fatal at start (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A variable's value is malformed.
    #[error("socket activation: {var}={value:?} is not {what}")]
    BadValue {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// `LISTEN_FDNAMES` does not name every fd.
    #[error("socket activation: LISTEN_FDNAMES has {names} name(s) for LISTEN_FDS={fds}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Fds announced.
        fds: usize,
    },
    /// An announced fd is not something sluice can serve on.
    #[error("socket activation: fd {fd} ({name}) {problem}")]
    Unusable {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A socket bound to an address the configuration does not listen on.
    #[error(
        "socket activation: fd {fd} ({name}) is bound to {addr}, which no route or the admin port listens on{hint}"
    )]
    Unmatched {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// Where it is bound.
        addr: SocketAddr,
        /// A likely cause, if one is seen.
        hint: String,
    },
    /// More sockets for one address than a single listener can use.
    #[error("socket activation: {problem}")]
    TooMany {
        /// What is too many.
        problem: String,
    },
}

/// What the three variables announce.
#[derive(Debug, PartialEq, Eq)]
pub enum Announced {
    /// No `LISTEN_PID` or no `LISTEN_FDS`: not socket-activated.
    Nothing,
    /// `LISTEN_PID` names another process (a parent that did not `exec` us).
    NotOurs {
        /// The process they were meant for.
        listen_pid: u32,
    },
    /// Fds from `LISTEN_FDS_START` on, with their names (`unknown` without
    /// `LISTEN_FDNAMES`, as `sd_listen_fds_with_names` says).
    Fds(Vec<(RawFd, String)>),
}

/// Reads the variables' values the way `sd_listen_fds_with_names(3)` does:
/// nothing unless `LISTEN_PID` is `our_pid`; `LISTEN_FDS` a positive count;
/// `LISTEN_FDNAMES`, when set, exactly one name per fd. (libsystemd takes any
/// count that fits an int; sluice stops at [`MAX_LISTEN_FDS`].)
pub fn parse(
    our_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    fdnames: Option<&str>,
) -> Result<Announced, ActivationError> {
    let Some(pid) = listen_pid else { return Ok(Announced::Nothing) };
    let pid =
        pid.parse::<u32>().ok().filter(|&p| p > 0 && i32::try_from(p).is_ok()).ok_or_else(|| {
            ActivationError::BadValue { var: "LISTEN_PID", value: pid.to_owned(), what: "a process id" }
        })?;
    if pid != our_pid {
        return Ok(Announced::NotOurs { listen_pid: pid });
    }
    let Some(n) = listen_fds else { return Ok(Announced::Nothing) };
    let count = n.parse::<i32>().ok().filter(|&c| c > 0 && c <= MAX_LISTEN_FDS).ok_or_else(|| {
        ActivationError::BadValue { var: "LISTEN_FDS", value: n.to_owned(), what: "a count from 1 to 65536" }
    })?;
    let fds = LISTEN_FDS_START..LISTEN_FDS_START + count;
    let names: Vec<String> = match fdnames {
        Some(list) => list.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); fds.len()],
    };
    if names.len() != fds.len() {
        return Err(ActivationError::NameCount { names: names.len(), fds: fds.len() });
    }
    Ok(Announced::Fds(fds.zip(names).collect()))
}

/// A socket systemd passed, checked.
#[derive(Debug)]
pub struct Received {
    /// The fd number it came as (for messages).
    pub fd: RawFd,
    /// Its `FileDescriptorName=`.
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// An IPv6 socket that takes IPv4 clients too (`IPV6_V6ONLY` off).
    pub dual_stack: bool,
    socket: std::net::TcpListener,
}

/// What this process was started with.
#[derive(Debug, Default)]
pub enum Activation {
    /// Not socket-activated.
    #[default]
    None,
    /// The variables were for another process.
    NotOurs {
        /// The process they named.
        listen_pid: u32,
    },
    /// Listening sockets, in fd order.
    Sockets(Vec<Received>),
}

/// Reads socket activation for this process: parses the variables, unsets
/// them (so nothing this process starts inherits them), and takes the fds,
/// each of which must be a listening TCP socket (`FD_CLOEXEC` set on it).
///
/// Call it first thing, before anything opens a file (so fds 3 onwards are
/// still the ones systemd passed) or starts a thread (unsetting a variable
/// is only sound while no other thread reads the environment).
pub fn from_env() -> Result<Activation, ActivationError> {
    let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let announced = parse(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    );
    let numbers: Vec<RawFd> = match &announced {
        Ok(Announced::Fds(fds)) => fds.iter().map(|(fd, _)| *fd).collect(),
        _ => Vec::new(),
    };
    // `claim` stops at the first fd that is not open: that one is the error.
    let mut owned = claim(&numbers).into_iter();
    match announced? {
        Announced::Nothing => Ok(Activation::None),
        Announced::NotOurs { listen_pid } => Ok(Activation::NotOurs { listen_pid }),
        Announced::Fds(fds) => {
            let mut received = Vec::with_capacity(fds.len());
            for (fd, name) in fds {
                let Some(socket) = owned.next() else {
                    return Err(ActivationError::Unusable { fd, name, problem: "is not open".to_owned() });
                };
                received.push(check(socket, fd, name)?);
            }
            Ok(Activation::Sockets(received))
        }
    }
}

/// The one place socket activation needs `unsafe`: unsets the variables
/// and takes ownership of fds `numbers`, up to the first that is not open.
#[allow(unsafe_code)]
fn claim(numbers: &[RawFd]) -> Vec<OwnedFd> {
    // Unsetting is belt and braces: LISTEN_PID names this process, so a
    // child (another pid) would ignore the variables anyway, and sluice
    // never execs itself. So when another thread exists, they stay.
    if threads() == Some(1) {
        for v in VARIABLES {
            // SAFETY: remove_var races with reads of the environment on other
            // threads (libc's getenv takes no lock). This process has exactly
            // one thread, this one (just counted in /proc/self/task; only this
            // thread could start another, and it is busy here): main calls
            // this before logging starts its writer thread or server::run
            // starts any.
            unsafe { std::env::remove_var(v) };
        }
    }
    numbers
        .iter()
        .map(|&fd| {
            // SAFETY: F_GETFD reads the fd's flags and touches no memory; on a
            // number that is not open it fails with EBADF.
            let open = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } != -1;
            // SAFETY: the fd is open, and sd_listen_fds(3) hands fds 3 to
            // 3 + LISTEN_FDS - 1 to this process; nothing in it has used their
            // numbers yet (this runs before anything opens a file), so each
            // gets exactly one owner, which closes it once.
            open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .take_while(Option::is_some)
        .flatten()
        .collect()
}

/// Threads in this process (`None` without /proc).
fn threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Checks that `fd` is a listening TCP socket, and marks it close-on-exec.
fn check(fd: OwnedFd, number: RawFd, name: String) -> Result<Received, ActivationError> {
    let socket = socket2::Socket::from(fd);
    let unusable =
        |name: &str, problem: String| ActivationError::Unusable { fd: number, name: name.to_owned(), problem };
    let kind = match socket.r#type() {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSOCK) => {
            return Err(unusable(&name, "is not a socket (sluice takes ListenStream= sockets only)".to_owned()));
        }
        Err(e) => return Err(unusable(&name, format!("cannot be inspected: {e}"))),
    };
    let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
    let tcp = socket.protocol().ok().flatten() == Some(socket2::Protocol::TCP);
    let (Some(addr), true, true) = (addr, kind == socket2::Type::STREAM, tcp) else {
        return Err(unusable(
            &name,
            "is not a TCP socket (sluice takes ListenStream= sockets with an IP address only)".into(),
        ));
    };
    if !socket.is_listener().unwrap_or(false) {
        return Err(unusable(
            &name,
            format!("is bound to {addr} but not listening (with Accept=yes systemd passes connections: use Accept=no)"),
        ));
    }
    socket.set_cloexec(true).map_err(|e| unusable(&name, format!("cannot be set close-on-exec: {e}")))?;
    let dual_stack = addr.is_ipv6() && !socket.only_v6().unwrap_or(true);
    Ok(Received { fd: number, name, addr, dual_stack, socket: socket.into() })
}

/// Where a received socket serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The listener of this key (a route's address, shared routes' too).
    Route(ListenKey),
    /// The admin port.
    Admin,
}

/// Finds, for each received socket (fd, name, bound address), what it
/// serves in `config`: the route listening on that address (a fixed port:
/// port 0 is for the kernel to pick) or the admin port.
pub fn assign(received: &[(RawFd, &str, SocketAddr)], config: &Config) -> Result<Vec<Target>, ActivationError> {
    let keys = ListenKey::of_all(config);
    let admin = config.admin.as_ref().map(|a| a.listen);
    let mut targets = Vec::with_capacity(received.len());
    let mut admin_fd: Option<(RawFd, &str)> = None;
    for &(fd, name, addr) in received {
        if keys.contains(&ListenKey::Fixed(addr)) {
            targets.push(Target::Route(ListenKey::Fixed(addr)));
        } else if admin == Some(addr) {
            if let Some((first, first_name)) = admin_fd {
                return Err(ActivationError::TooMany {
                    problem: format!(
                        "fd {first} ({first_name}) and fd {fd} ({name}) are both bound to the admin port's {addr}"
                    ),
                });
            }
            admin_fd = Some((fd, name));
            targets.push(Target::Admin);
        } else {
            let same_port = config.routes.iter().map(|r| r.listen).chain(admin).find(|a| a.port() == addr.port());
            let hint = match same_port {
                Some(a) => format!(
                    " (the config says {a}: ListenStream= must name the same address; a bare port there means [::]:{})",
                    a.port()
                ),
                None => String::new(),
            };
            return Err(ActivationError::Unmatched { fd, name: name.to_owned(), addr, hint });
        }
    }
    Ok(targets)
}

impl Activation {
    /// The sockets, matched to `config`, for the route plan to adopt (run
    /// with `workers` workers); `None` when there are none to use: not
    /// socket-activated, the variables were another process's, or a
    /// `takeover` brings the running process's sockets instead. Logs what
    /// it finds.
    pub fn into_inherited(
        self,
        config: &Config,
        workers: usize,
        takeover: bool,
    ) -> Result<Option<Inherited>, ActivationError> {
        let received = match self {
            Activation::None => return Ok(None),
            Activation::NotOurs { listen_pid } => {
                log::info!(
                    "LISTEN_PID={listen_pid} names another process (this is {}): the fds it announces are not ours",
                    std::process::id()
                );
                return Ok(None);
            }
            Activation::Sockets(r) => r,
        };
        if takeover {
            log::info!(
                "--takeover: the running sluice's sockets serve; the {} socket(s) systemd passed are not used",
                received.len()
            );
            return Ok(None);
        }
        let view: Vec<(RawFd, &str, SocketAddr)> = received.iter().map(|r| (r.fd, r.name.as_str(), r.addr)).collect();
        let targets = assign(&view, config)?;
        let keys = ListenKey::of_all(config);
        let routes_on = |key: &ListenKey| -> String {
            let names: Vec<&str> =
                config.routes.iter().zip(&keys).filter(|(_, k)| *k == key).map(|(r, _)| r.name.as_str()).collect();
            names.join(", ")
        };
        for key in keys.iter().filter(|k| matches!(k, ListenKey::Fixed(_))) {
            let n = targets.iter().filter(|t| **t == Target::Route(key.clone())).count();
            if n > workers {
                return Err(ActivationError::TooMany {
                    problem: format!(
                        "{n} sockets for {} (route {}), more than the {workers} worker(s) can serve: systemd holds \
                         them open, so clients queued on the extra ones would wait for nobody; list the address \
                         at most {workers} time(s) in the .socket unit or raise workers",
                        fixed_addr(key),
                        routes_on(key)
                    ),
                });
            }
        }
        let mut inherited = Inherited::default();
        for (r, target) in received.into_iter().zip(targets) {
            if r.dual_stack {
                log::warn!(
                    "fd {} ({}) on {} takes IPv4 clients too (IPV6_V6ONLY off), which appear as ::ffff:a.b.c.d in \
                     logs and access lists; BindIPv6Only=ipv6-only in the .socket unit makes it IPv6 only, as \
                     sluice binds [::] itself",
                    r.fd,
                    r.name,
                    r.addr
                );
            }
            match target {
                Target::Route(key) => {
                    log::info!("fd {} ({}) from systemd: {} for route {}", r.fd, r.name, r.addr, routes_on(&key));
                    inherited.add(key, r.addr, r.socket);
                }
                Target::Admin => {
                    log::info!("fd {} ({}) from systemd: {} for the admin port", r.fd, r.name, r.addr);
                    inherited.set_admin(r.addr, r.socket);
                }
            }
        }
        let mut seen = Vec::new();
        for key in &keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            if inherited.count(key) == 0 {
                log::info!(
                    "route {}: systemd passed no socket for {}; sluice binds it",
                    routes_on(key),
                    fixed_addr(key)
                );
            }
        }
        if let Some(a) = &config.admin {
            if !inherited.has_admin() {
                log::info!("admin port: systemd passed no socket for {}; sluice binds it", a.listen);
            }
        }
        Ok(Some(inherited))
    }
}

fn fixed_addr(key: &ListenKey) -> SocketAddr {
    match key {
        ListenKey::Fixed(a) | ListenKey::Ephemeral(_, a) => *a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    fn fds(list: &[(RawFd, &str)]) -> Announced {
        Announced::Fds(list.iter().map(|(fd, n)| (*fd, (*n).to_owned())).collect())
    }

    #[test]
    fn only_the_process_listen_pid_names_gets_the_fds() {
        assert_eq!(parse(PID, None, Some("2"), None).unwrap(), Announced::Nothing);
        assert_eq!(parse(PID, Some("4243"), Some("2"), None).unwrap(), Announced::NotOurs { listen_pid: 4243 });
        assert_eq!(parse(PID, Some("4242"), None, None).unwrap(), Announced::Nothing, "no LISTEN_FDS");
        assert_eq!(parse(PID, Some("4242"), Some("1"), None).unwrap(), fds(&[(3, "unknown")]));
    }

    #[test]
    fn fds_start_at_3_with_their_names() {
        assert_eq!(parse(PID, Some("4242"), Some("2"), Some("web:admin")).unwrap(), fds(&[(3, "web"), (4, "admin")]));
        assert_eq!(
            parse(PID, Some("4242"), Some("3"), None).unwrap(),
            fds(&[(3, "unknown"), (4, "unknown"), (5, "unknown")]),
            "no names: `unknown`, as sd_listen_fds_with_names says"
        );
        assert_eq!(parse(PID, Some("4242"), Some("2"), Some("web:")).unwrap(), fds(&[(3, "web"), (4, "")]));
    }

    #[test]
    fn malformed_values_are_errors_naming_the_variable() {
        let err = |pid, n, names| parse(PID, Some(pid), Some(n), names).unwrap_err().to_string();
        assert_eq!(err("x", "1", None), "socket activation: LISTEN_PID=\"x\" is not a process id");
        assert_eq!(err("0", "1", None), "socket activation: LISTEN_PID=\"0\" is not a process id");
        assert_eq!(err("-1", "1", None), "socket activation: LISTEN_PID=\"-1\" is not a process id");
        let bad_count = |n: &str| format!("socket activation: LISTEN_FDS={n:?} is not a count from 1 to 65536");
        for n in ["0", "-2", "two", "65537", "2147483647"] {
            assert_eq!(err("4242", n, None), bad_count(n));
        }
        assert!(parse(PID, Some("4242"), Some("65536"), None).is_ok());
        assert_eq!(err("4242", "2", Some("web")), "socket activation: LISTEN_FDNAMES has 1 name(s) for LISTEN_FDS=2");
        assert_eq!(err("4242", "1", Some("a:b")), "socket activation: LISTEN_FDNAMES has 2 name(s) for LISTEN_FDS=1");
    }

    #[test]
    fn a_bad_count_for_another_process_is_not_ours_to_judge() {
        assert_eq!(parse(PID, Some("7"), Some("many"), Some("a:b:c")).unwrap(), Announced::NotOurs { listen_pid: 7 });
    }

    fn config(yaml: &str) -> Config {
        crate::config::parse_str(yaml, "t").unwrap()
    }

    const TWO_ROUTES: &str = "routes:
  - name: web
    listen: 127.0.0.1:8080
    upstreams: [127.0.0.1:1]
  - name: spare
    listen: 127.0.0.1:0
    upstreams: [127.0.0.1:1]
admin:
  listen: 127.0.0.1:9901
";

    #[test]
    fn sockets_go_to_the_route_or_admin_port_on_their_address() {
        let c = config(TWO_ROUTES);
        let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let got = assign(&[(3, "admin", admin), (4, "web", web), (5, "web", web)], &c).unwrap();
        let route = Target::Route(ListenKey::Fixed(web));
        assert_eq!(got, vec![Target::Admin, route.clone(), route]);
    }

    #[test]
    fn a_socket_nothing_listens_on_is_an_error_naming_fd_and_name() {
        let c = config(TWO_ROUTES);
        let e =
            assign(&[(3, "web", "127.0.0.1:8080".parse().unwrap()), (4, "stray", "127.0.0.1:7".parse().unwrap())], &c)
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket activation: fd 4 (stray) is bound to 127.0.0.1:7, which no route or the admin port listens on"
        );
        // A port-0 route is the kernel's to pick: nothing systemd bound is it.
        assert!(assign(&[(3, "x", "127.0.0.1:0".parse().unwrap())], &c).is_err());
    }

    #[test]
    fn the_same_port_on_another_address_gets_a_hint() {
        let e = assign(&[(3, "web", "[::]:8080".parse().unwrap())], &config(TWO_ROUTES)).unwrap_err().to_string();
        assert!(e.contains("fd 3 (web) is bound to [::]:8080, which no route"), "{e}");
        assert!(e.contains("the config says 127.0.0.1:8080"), "{e}");
        assert!(e.contains("a bare port there means [::]:8080"), "{e}");
    }

    #[test]
    fn two_sockets_for_the_admin_port_are_an_error() {
        let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let e = assign(&[(3, "a", admin), (4, "b", admin)], &config(TWO_ROUTES)).unwrap_err().to_string();
        assert!(e.contains("fd 3 (a) and fd 4 (b) are both bound to the admin port's 127.0.0.1:9901"), "{e}");
    }

    #[test]
    fn routes_sharing_an_address_share_its_socket() {
        let c = config(
            "routes:
  - name: a
    listen: 127.0.0.1:8443
    server_names: [a.example]
    upstreams: [127.0.0.1:1]
  - name: b
    listen: 127.0.0.1:8443
    server_names: [b.example]
    upstreams: [127.0.0.1:2]
",
        );
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(assign(&[(3, "tls", addr)], &c).unwrap(), vec![Target::Route(ListenKey::Fixed(addr))]);
    }

    fn received(fd: RawFd, name: &str) -> Received {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        Received { fd, name: name.to_owned(), addr, dual_stack: false, socket: l }
    }

    #[test]
    fn into_inherited_fills_routes_and_admin_and_leaves_the_rest_to_bind() {
        let (web, admin) = (received(3, "web"), received(4, "admin"));
        let yaml = format!(
            "routes:\n  - name: web\n    listen: {}\n    upstreams: [127.0.0.1:1]\n  - name: other\n    listen: \
             127.0.0.1:0\n    upstreams: [127.0.0.1:1]\nadmin:\n  listen: {}\n",
            web.addr, admin.addr
        );
        let c = config(&yaml);
        let (web_addr, admin_addr) = (web.addr, admin.addr);
        let mut inh = Activation::Sockets(vec![web, admin]).into_inherited(&c, 2, false).unwrap().unwrap();
        assert_eq!(inh.take(&ListenKey::Fixed(web_addr)).len(), 1);
        assert!(inh.take_admin(admin_addr).is_some());
        assert!(inh.is_empty());
    }

    #[test]
    fn a_takeover_or_another_process_means_no_sockets_from_systemd() {
        let web = received(3, "web");
        let c = config(&format!("routes:\n  - name: web\n    listen: {}\n    upstreams: [127.0.0.1:1]\n", web.addr));
        assert!(Activation::Sockets(vec![web]).into_inherited(&c, 1, true).unwrap().is_none());
        assert!(Activation::NotOurs { listen_pid: 1 }.into_inherited(&c, 1, false).unwrap().is_none());
        assert!(Activation::None.into_inherited(&c, 1, false).unwrap().is_none());
    }

    #[test]
    fn more_sockets_for_an_address_than_workers_is_an_error() {
        let first = received(3, "web");
        let addr = first.addr;
        let second = Received {
            fd: 4,
            name: "web".into(),
            addr,
            dual_stack: false,
            socket: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let c = config(&format!("routes:\n  - name: web\n    listen: {addr}\n    upstreams: [127.0.0.1:1]\n"));
        let e = Activation::Sockets(vec![first, second]).into_inherited(&c, 1, false).unwrap_err().to_string();
        assert!(e.contains(&format!("2 sockets for {addr} (route web), more than the 1 worker(s)")), "{e}");
    }

    #[test]
    fn check_accepts_a_listening_tcp_socket_and_rejects_the_rest() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let r = check(OwnedFd::from(l), 3, "web".into()).unwrap();
        assert_eq!((r.fd, r.name.as_str(), r.addr, r.dual_stack), (3, "web", addr, false));
        let err = |fd: OwnedFd| check(fd, 4, "x".into()).unwrap_err().to_string();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            err(file.into()),
            "socket activation: fd 4 (x) is not a socket (sluice takes ListenStream= sockets only)"
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(err(udp.into()).contains("fd 4 (x) is not a TCP socket"));
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(err(unix.into()).contains("is not a TCP socket"));
        let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bound.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let e = err(bound.into());
        assert!(e.contains("but not listening (with Accept=yes systemd passes connections"), "{e}");
    }
}
