//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2):
//! building the header sluice sends an upstream before any relayed byte,
//! and parsing the header a load balancer in front of sluice sends it.
//!
//! Pure code on byte slices. The parser is strict (exact signature, known
//! version, command, family and protocol, address lengths that fit, ports
//! in range, v1 lines of at most 107 bytes ending in CRLF) and incremental:
//! given the first bytes of a header it says `Incomplete` as long as they
//! could still become a valid one, so the caller can peek again when more
//! arrive. It never reads past the header: whatever follows belongs to the
//! session.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::acl::canonical;

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// The longest version 1 line, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest version 2 header we accept, TLVs included. Load balancers
/// send tens of bytes of TLVs (AWS: the VPC endpoint id); this bounds what a
/// client can make us hold while leaving room for any real one.
pub const V2_MAX: usize = 16 + 2048;
/// The most bytes `parse` may need to see.
pub const MAX_HEADER: usize = V2_MAX;

/// Which version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The human-readable line.
    V1,
    /// The binary form.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Appends the header telling an upstream that `client` connected to `local`.
///
/// Both addresses are written in one family: IPv4-mapped IPv6 addresses as
/// IPv4 when both are IPv4, and an IPv4 address as IPv4-mapped IPv6 when the
/// other is a real IPv6 one.
pub fn encode(version: Version, client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    let (src, dst) = same_family(client, local);
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut line = String::with_capacity(V1_MAX);
            let _ = write!(line, "PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port());
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (ca, cb) = (canonical(a.ip()), canonical(b.ip()));
    if ca.is_ipv4() == cb.is_ipv4() {
        (SocketAddr::new(ca, a.port()), SocketAddr::new(cb, b.port()))
    } else {
        (SocketAddr::new(IpAddr::V6(v6(ca)), a.port()), SocketAddr::new(IpAddr::V6(v6(cb)), b.port()))
    }
}

/// A complete header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: exactly this many must be consumed from the stream.
    pub len: usize,
    /// `(source, destination)`: the original client and the address it
    /// connected to. `None` for `LOCAL` (v2), `UNKNOWN` (v1) and families
    /// without IP addresses: use the connection's own addresses.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// What the bytes seen so far amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A valid start: wait for more bytes.
    Incomplete,
    /// A whole header.
    Done(Header),
    /// Not a valid header; why.
    Invalid(String),
}

fn invalid<T: Into<String>>(why: T) -> Parse {
    Parse::Invalid(why.into())
}

/// Parses the start of a stream.
pub fn parse(buf: &[u8]) -> Parse {
    let v1 = b"PROXY ";
    if buf.is_empty() {
        return Parse::Incomplete;
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() { Parse::Incomplete } else { parse_v2(buf) };
    }
    let n = buf.len().min(v1.len());
    if buf[..n] == v1[..n] {
        return parse_v1(buf);
    }
    invalid("not a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if let Some(bad) = window.iter().find(|b| !(0x20..0x7f).contains(*b)) {
            return invalid(format!("v1: byte {bad:#04x} in the header line"));
        }
        return if buf.len() >= V1_MAX { invalid("v1: no CRLF within 107 bytes") } else { Parse::Incomplete };
    };
    match buf.get(cr + 1) {
        None => return Parse::Incomplete,
        Some(b'\n') => {}
        Some(_) => return invalid("v1: CR not followed by LF"),
    }
    let Ok(line) = std::str::from_utf8(&buf[..cr]) else {
        return invalid("v1: the header line is not ASCII");
    };
    if !line.is_ascii() || line.bytes().any(|b| b.is_ascii_control()) {
        return invalid("v1: control characters in the header line");
    }
    let len = cr + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.get(1).copied() {
        Some("UNKNOWN") => return Parse::Done(Header { len, addrs: None }),
        Some("TCP4" | "TCP6") => {}
        Some(other) => return invalid(format!("v1: unknown protocol {other:?} (expected TCP4, TCP6 or UNKNOWN)")),
        None => return invalid("v1: no protocol"),
    }
    if fields.len() != 6 {
        return invalid(format!("v1: expected 6 fields separated by single spaces, found {}", fields.len()));
    }
    let v4 = fields[1] == "TCP4";
    let ip = |s: &str| -> Result<IpAddr, String> {
        let parsed: Result<IpAddr, _> =
            if v4 { s.parse::<Ipv4Addr>().map(IpAddr::V4) } else { s.parse::<Ipv6Addr>().map(IpAddr::V6) };
        parsed.map_err(|_| format!("v1: {s:?} is not an {} address", if v4 { "IPv4" } else { "IPv6" }))
    };
    let port = |s: &str| -> Result<u16, String> {
        let ok =
            !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        ok.then(|| s.parse::<u16>().ok()).flatten().ok_or_else(|| format!("v1: {s:?} is not a port"))
    };
    let parsed = (|| -> Result<(SocketAddr, SocketAddr), String> {
        Ok((SocketAddr::new(ip(fields[2])?, port(fields[4])?), SocketAddr::new(ip(fields[3])?, port(fields[5])?)))
    })();
    match parsed {
        Ok(addrs) => Parse::Done(Header { len, addrs: Some(addrs) }),
        Err(why) => Parse::Invalid(why),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let Some(&ver_cmd) = buf.get(12) else {
        return Parse::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return invalid(format!("v2: version {} (only 2 exists)", ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return invalid(format!("v2: unknown command {c}")),
    };
    let Some(&fam) = buf.get(13) else {
        return Parse::Incomplete;
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Parse::Incomplete;
    };
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    let len = 16 + body;
    if len > V2_MAX {
        return invalid(format!("v2: header of {len} bytes is over the {V2_MAX}-byte limit"));
    }
    let need = match fam {
        0x00 => 0,   // AF_UNSPEC
        0x11 => 12,  // TCP over IPv4
        0x21 => 36,  // TCP over IPv6
        0x31 => 216, // UNIX stream
        0x12 | 0x22 | 0x32 => return invalid("v2: a datagram (UDP) connection on a TCP listener"),
        f => return invalid(format!("v2: unknown address family/protocol {f:#04x}")),
    };
    if body < need {
        return invalid(format!("v2: {body} bytes of addresses, {need} needed for family {fam:#04x}"));
    }
    if buf.len() < len {
        return Parse::Incomplete;
    }
    let a = &buf[16..len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let addrs = match fam {
        _ if local => None,
        0x11 => {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
        }
        0x21 => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Some((SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34))))
        }
        _ => None,
    };
    Parse::Done(Header { len, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn encoded(v: Version, c: &str, l: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, sa(c), sa(l), &mut out);
        out
    }

    /// The specification's own v1 example (section 2.1).
    #[test]
    fn v1_matches_the_specification() {
        assert_eq!(
            encoded(Version::V1, "192.168.0.1:56324", "192.168.0.11:443"),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let longest = encoded(
            Version::V1,
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        );
        assert_eq!(
            longest,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(longest.len(), 104, "the specification's worst case for TCP6");
        let v4 = encoded(Version::V1, "255.255.255.255:65535", "255.255.255.255:65535");
        assert_eq!(v4.len(), 56, "the specification's worst case for TCP4");
    }

    /// Version 2 laid out field by field as section 2.2 describes it.
    #[test]
    fn v2_matches_the_specification() {
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]); // v2 PROXY, TCP over IPv4, 12 bytes
        want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]); // 56324, 443
        assert_eq!(encoded(Version::V2, "192.168.0.1:56324", "192.168.0.11:443"), want);

        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // TCP over IPv6, 36 bytes
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x1F, 0x90, 0x00, 0x50]); // 8080, 80
        assert_eq!(encoded(Version::V2, "[2001:db8::1]:8080", "[::1]:80"), want);
    }

    #[test]
    fn mixed_families_are_written_in_one() {
        assert_eq!(
            encoded(Version::V1, "[::ffff:10.0.0.1]:1000", "10.0.0.2:80"),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n"
        );
        assert_eq!(encoded(Version::V1, "10.0.0.1:1000", "[::1]:80"), b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1000 80\r\n");
    }

    #[test]
    fn what_we_send_parses_back() {
        for v in [Version::V1, Version::V2] {
            for (c, l) in [("192.0.2.1:40000", "198.51.100.2:443"), ("[2001:db8::7]:1", "[2001:db8::8]:65535")] {
                let mut bytes = encoded(v, c, l);
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&bytes), Parse::Done(Header { len, addrs: Some((sa(c), sa(l))) }), "{v} {c}");
                for cut in 0..len {
                    assert_eq!(parse(&bytes[..cut]), Parse::Incomplete, "{v}: a prefix of {cut} bytes is incomplete");
                }
            }
        }
    }

    #[test]
    fn local_and_unknown_keep_the_connection_addresses() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parse::Done(Header { len: 15, addrs: None }));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Parse::Done(Header { len: 16, addrs: None }));
        // A v2 header with TLVs after the addresses: the TLVs are skipped.
        let mut tlv = encoded(Version::V2, "10.0.0.1:1", "10.0.0.2:2");
        tlv[15] += 7;
        tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'n', b'o', b'o', b'p']);
        assert!(matches!(parse(&tlv), Parse::Done(Header { len: 35, addrs: Some(_) })));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4\x00",
        ];
        for b in bad {
            assert!(matches!(parse(b), Parse::Invalid(_)), "{:?} must be refused", String::from_utf8_lossy(b));
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parse::Invalid(w) if w.contains("107")));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0x00, 0x0C]);
        assert!(matches!(parse(&v2), Parse::Invalid(w) if w.contains("version 3")));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x21, 0x00, 0x0C]);
        assert!(matches!(parse(&short), Parse::Invalid(w) if w.contains("36 needed")));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse(&huge), Parse::Invalid(w) if w.contains("limit")));
        let mut udp = V2_SIGNATURE.to_vec();
        udp.extend_from_slice(&[0x21, 0x12, 0x00, 0x0C]);
        assert!(matches!(parse(&udp), Parse::Invalid(w) if w.contains("UDP")));
    }
}
