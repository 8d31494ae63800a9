//! TPROXY capture with the shipped `examples/nftables/tproxy.nft` and the
//! policy routing its comments give (run exactly as written there), in
//! namespaces this test creates: a client (203.0.113.2) whose route to the
//! service (192.0.2.10, behind 198.51.100.2) goes through sluice's
//! namespace; sluice there accepts on a `transparent: true` route and, with
//! `source: client`, connects from the client's own address. The service's
//! route back to the client goes through sluice's namespace too, where the
//! rules' `socket transparent` line hands the replies to sluice's socket.

use std::net::SocketAddr;
use std::time::Duration;

use crate::sidecar::{ADMIN, check_seen, duplex_client, duplex_service};
use crate::netns::{Netns, commented_commands, shipped_rules};

#[test]
fn tproxy_capture_with_source_client_shows_the_upstream_the_real_client() {
    let Some(client) = Netns::new("cli") else { return };
    let Some(gw) = Netns::new("gw") else { return };
    let Some(svc) = Netns::new("svc") else { return };
    client.link(&gw, "203.0.113.2/24", "203.0.113.1/24");
    gw.link(&svc, "198.51.100.1/24", "198.51.100.2/24");
    client.route("default", "203.0.113.1");
    svc.addr("192.0.2.10/32", "lo");
    svc.route("203.0.113.0/24", "198.51.100.1");
    gw.route("192.0.2.0/24", "198.51.100.2");
    gw.sysctl("net.ipv4.ip_forward=1");
    let rules = shipped_rules("tproxy.nft");
    let commands = commented_commands(&rules);
    assert!(commands.len() >= 2, "tproxy.nft gives its policy routing as `# $ ` lines");
    for cmd in &commands {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        gw.exec(&args);
    }
    gw.load_nft(
        &rules,
        &[
            ("TPROXY_PORT", "15001"),
            ("TPROXY_MARK", "1"),
            ("CAPTURE_NET4", "192.0.2.0/24"),
            ("CAPTURE_NET6", "2001:db8::/32"),
        ],
    );
    let service: SocketAddr = "192.0.2.10:80".parse().expect("addr");
    let seen = duplex_service(svc.listen(service), 16 << 20);
    let yaml = format!(
        "workers: 1\nadmin: {{ listen: \"{ADMIN}\" }}\nroutes:\n  - name: tproxy\n    listen: 0.0.0.0:15001\n\
         \x20   transparent: true\n    original_destination: true\n    source: client\n"
    );
    let s = gw.sluice(&yaml, &[]);
    let c = client.connect(service).expect("the client connects to the service");
    let client_addr = c.local_addr().expect("local");
    duplex_client(c, 21, 32 << 20, 16 << 20).expect("the client's exchange through TPROXY");
    let seen = check_seen(&seen, 21, 32 << 20);
    assert_eq!(seen.peer.ip(), client_addr.ip(), "the service must see the client's own address");
    assert!(s.wait_log("dst=192.0.2.10:80", Duration::from_secs(5)), "{}", s.log());
    assert_eq!(s.log_count("reason="), 1, "one session: {}", s.log());
    // sluice really was in the path: its admin port counted the client.
    let accepted = gw.metric(ADMIN.parse().expect("admin"), "sluice_sessions_accepted_total", &[("route", "tproxy")]);
    assert_eq!(accepted, 1.0);
}
