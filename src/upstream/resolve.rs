//! Turning an upstream's host name into addresses: the system resolver
//! (getaddrinfo, which honours /etc/hosts, every A and AAAA record), or —
//! when `SLUICE_HOSTS_FILE` names a file — that file alone, in /etc/hosts
//! format. The second is a test seam: tests change the records of a name
//! without touching the machine's resolver. Blocking: call it from the
//! control or resolver thread, never from a worker.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The environment variable naming a hosts file to resolve from instead of the system.
pub const HOSTS_FILE_ENV: &str = "SLUICE_HOSTS_FILE";

/// Every address of `host` (a name; IP literals are handled by the caller), with `port`.
pub fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = match std::env::var_os(HOSTS_FILE_ENV) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.to_string_lossy())))?;
            from_hosts(&text, host).into_iter().map(|ip| SocketAddr::new(ip, port)).collect()
        }
        None => (host, port).to_socket_addrs()?.collect(),
    };
    let mut seen = Vec::with_capacity(addrs.len());
    addrs.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(addrs)
}

/// The addresses /etc/hosts-format `text` gives `host` (names compare without case).
pub fn from_hosts(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|name| name.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_format_gives_every_record_of_a_name() {
        let text =
            "127.0.0.1 localhost\n# comment\n10.0.0.1 app app.ns.svc  # pod 1\n10.0.0.2\tApp\nfd00::3 app\nbad line\n";
        let ips: Vec<String> = from_hosts(text, "app").iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2", "fd00::3"]);
        assert!(from_hosts(text, "other").is_empty());
    }
}
