use super::*;
use crate::config::Config;
use crate::listen::key::ListenKey;

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
    let got = assign(&[(3, "admin", admin, false), (4, "web", web, false), (5, "web", web, false)], &c).unwrap();
    let route = Target::Route(ListenKey::Fixed(web));
    assert_eq!(got, vec![Target::Admin, route.clone(), route]);
}

#[test]
fn a_socket_nothing_listens_on_is_an_error_naming_fd_and_name() {
    let c = config(TWO_ROUTES);
    let e = assign(
        &[(3, "web", "127.0.0.1:8080".parse().unwrap(), false), (4, "stray", "127.0.0.1:7".parse().unwrap(), false)],
        &c,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "socket activation: fd 4 (stray) is bound to 127.0.0.1:7, which no route or the admin port listens on"
    );
    // A port-0 route is the kernel's to pick: nothing systemd bound is it.
    assert!(assign(&[(3, "x", "127.0.0.1:0".parse().unwrap(), false)], &c).is_err());
}

#[test]
fn the_same_port_on_another_address_gets_a_hint() {
    let e = assign(&[(3, "web", "[::]:8080".parse().unwrap(), false)], &config(TWO_ROUTES)).unwrap_err().to_string();
    assert!(e.contains("fd 3 (web) is bound to [::]:8080, which no route"), "{e}");
    assert!(e.contains("the config says 127.0.0.1:8080"), "{e}");
    assert!(e.contains("a bare port there means [::]:8080"), "{e}");
}

#[test]
fn two_sockets_for_the_admin_port_are_an_error() {
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let e = assign(&[(3, "a", admin, false), (4, "b", admin, false)], &config(TWO_ROUTES)).unwrap_err().to_string();
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
    assert_eq!(assign(&[(3, "tls", addr, false)], &c).unwrap(), vec![Target::Route(ListenKey::Fixed(addr))]);
}

#[test]
fn a_socket_serves_only_a_route_of_its_protocol() {
    let c =
        config("routes:\n  - name: mp\n    listen: 127.0.0.1:8080\n    mptcp: true\n    upstreams: [127.0.0.1:1]\n");
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(
        assign(&[(3, "mp", addr, true)], &c).unwrap(),
        vec![Target::Route(ListenKey::fixed(addr, crate::listen::key::ListenKind { transparent: false, mptcp: true }))]
    );
    let e = assign(&[(3, "tcp", addr, false)], &c).unwrap_err().to_string();
    assert!(e.contains("SocketProtocol=mptcp"), "{e}");
    let e = assign(&[(3, "mp", addr, true)], &config(TWO_ROUTES)).unwrap_err().to_string();
    assert!(e.contains("it is an MPTCP socket, and the route there has no mptcp: true"), "{e}");
}

fn received(fd: RawFd, name: &str) -> Received {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    Received { fd, name: name.to_owned(), addr, dual_stack: false, mptcp: false, socket: l }
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
        mptcp: false,
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
