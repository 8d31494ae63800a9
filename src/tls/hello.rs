//! Reading a TLS ClientHello without terminating TLS: bytes in, "need
//! more" or a verdict out, no sockets (sans-I/O). The caller peeks at the
//! client's first bytes and asks again with more when told to.
//!
//! What a route needs from it: the server name (SNI), the ALPN protocols
//! offered, and whether the hello carries an `encrypted_client_hello`
//! extension (then the name is the outer, public one). The handshake
//! message may be split over any number of TLS records, and the records
//! over any number of TCP segments; the message is bounded at
//! [`MAX_HANDSHAKE`] bytes and the wire it takes at [`MAX_WIRE`]. Anything
//! that is not a well-formed ClientHello is refused with a reason: this is
//! the fail-closed side of routing (a malformed hello must never fall
//! through to a more permissive route).
//!
//! Building hellos, for tests and benchmarks, is `hello/build.rs`'s.

use std::fmt;

/// The largest ClientHello handshake message accepted (a post-quantum
/// key share is 1,216 bytes; padded hellos reach a few KiB).
pub const MAX_HANDSHAKE: usize = 16 << 10;
/// The most wire bytes the hello may take, record headers included (room
/// for [`MAX_HANDSHAKE`] in 1 KiB records, or a small hello in many tiny ones).
pub const MAX_WIRE: usize = MAX_HANDSHAKE + 5 * 1024;
/// A TLS record's payload is at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_ECH: u16 = 0xfe0d;

/// What a ClientHello says that routing uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name, lowercased, without a trailing dot; `None` without SNI.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order (empty without ALPN).
    pub alpn: Vec<Vec<u8>>,
    /// An `encrypted_client_hello` extension is present: the name is the outer (public) one.
    pub ech: bool,
    /// Wire bytes the hello took (its records).
    pub wire_len: usize,
}

impl ClientHello {
    /// The ALPN protocols for a log line: comma-separated, non-printable bytes as `\xNN`.
    pub fn alpn_text(&self) -> Option<String> {
        if self.alpn.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (i, p) in self.alpn.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            for &b in p {
                if b.is_ascii_graphic() && b != b',' && b != b'=' && b != b'"' && b != b'\\' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
        Some(out)
    }
}

/// Why bytes are not a ClientHello we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The first bytes are not a TLS handshake record (plain HTTP, SSLv2, garbage).
    NotTls,
    /// A record or length field that cannot be right (empty, too long, past its container).
    Malformed(&'static str),
    /// The hello (or the wire it takes) is past the bounds.
    TooLarge,
    /// The same extension twice, or two host names.
    Duplicate(&'static str),
    /// The server name is not a host name.
    BadServerName,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NotTls => f.write_str("not a TLS handshake"),
            Invalid::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
            Invalid::TooLarge => write!(f, "ClientHello larger than {MAX_HANDSHAKE} bytes"),
            Invalid::Duplicate(what) => write!(f, "malformed ClientHello: {what} twice"),
            Invalid::BadServerName => f.write_str("the server name is not a host name"),
        }
    }
}

/// What the bytes so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse {
    /// Not all there: look again once at least `need` bytes (in all) have arrived.
    NeedMore {
        /// Total bytes needed before the next step can be taken.
        need: usize,
    },
    /// A complete, well-formed ClientHello.
    Done(ClientHello),
    /// Not a ClientHello we accept.
    Invalid(Invalid),
}

/// Reads the ClientHello at the start of `wire` (the client's first bytes).
pub fn parse(wire: &[u8]) -> Parse {
    if let Some(&first) = wire.first() {
        if first != CONTENT_HANDSHAKE {
            return Parse::Invalid(Invalid::NotTls);
        }
    }
    // Walk the records, gathering the handshake message. The usual hello
    // fits its first record and is read in place; a split one is copied.
    let mut gathered: Vec<u8> = Vec::new();
    let mut in_place: Option<&[u8]> = None;
    let mut at = 0;
    let mut message_len: Option<usize> = None;
    loop {
        let Some(header) = wire.get(at..at + RECORD_HEADER) else {
            return need(at + RECORD_HEADER);
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Parse::Invalid(if at == 0 {
                Invalid::NotTls
            } else {
                Invalid::Malformed("a non-handshake record")
            });
        }
        if header[1] != 3 || header[2] > 4 {
            return Parse::Invalid(if at == 0 { Invalid::NotTls } else { Invalid::Malformed("record version") });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Parse::Invalid(Invalid::Malformed("record length"));
        }
        let end = at + RECORD_HEADER + len;
        if end > MAX_WIRE {
            return Parse::Invalid(Invalid::TooLarge);
        }
        let Some(payload) = wire.get(at + RECORD_HEADER..end) else {
            return need(end);
        };
        if at == 0 && in_place.is_none() && gathered.is_empty() {
            in_place = Some(payload);
        } else {
            if let Some(first) = in_place.take() {
                gathered.extend_from_slice(first);
            }
            gathered.extend_from_slice(payload);
        }
        let have = in_place.map_or(gathered.len(), <[u8]>::len);
        let message = in_place.unwrap_or(&gathered);
        if message_len.is_none() && have >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Parse::Invalid(Invalid::Malformed("the first handshake message is not a ClientHello"));
            }
            let n = usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
            if n > MAX_HANDSHAKE {
                return Parse::Invalid(Invalid::TooLarge);
            }
            message_len = Some(n);
        }
        at = end;
        if let Some(n) = message_len {
            if have == 4 + n {
                let body = &message[4..];
                return match client_hello(body) {
                    Ok(mut h) => {
                        h.wire_len = at;
                        Parse::Done(h)
                    }
                    Err(e) => Parse::Invalid(e),
                };
            }
            if have > 4 + n {
                // A client sends nothing after its hello before the server answers.
                return Parse::Invalid(Invalid::Malformed("bytes after the ClientHello in its record"));
            }
        }
    }
}

fn need(n: usize) -> Parse {
    if n > MAX_WIRE { Parse::Invalid(Invalid::TooLarge) } else { Parse::NeedMore { need: n } }
}

/// A cursor over a length-checked slice: every read says if it ran out.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Invalid> {
        if self.buf.len() < n {
            return Err(Invalid::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Invalid> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Invalid> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Invalid> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Invalid> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The ClientHello body (after the handshake header), RFC 8446 §4.1.2.
fn client_hello(body: &[u8]) -> Result<ClientHello, Invalid> {
    let mut r = Reader { buf: body };
    let version = r.u16("legacy_version")?;
    if version >> 8 != 3 {
        return Err(Invalid::Malformed("legacy_version"));
    }
    r.take(32, "random")?;
    if r.vec8("session id")?.len() > 32 {
        return Err(Invalid::Malformed("session id"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Invalid::Malformed("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(Invalid::Malformed("compression methods"));
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Ok(hello); // no extensions at all (an old client): no name
    }
    let mut exts = Reader { buf: r.vec16("extensions")? };
    if !r.is_empty() {
        return Err(Invalid::Malformed("bytes after the extensions"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension length")?;
        if seen.contains(&kind) {
            return Err(Invalid::Duplicate("an extension"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.server_name = Some(server_name(data)?),
            EXT_ALPN => hello.alpn = alpn(data)?,
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The `server_name` extension (RFC 6066 §3): one `host_name` entry.
fn server_name(data: &[u8]) -> Result<String, Invalid> {
    let mut r = Reader { buf: data };
    let mut list = Reader { buf: r.vec16("server name list")? };
    if !r.is_empty() || list.is_empty() {
        return Err(Invalid::Malformed("server name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if kind == 0 {
            if host.is_some() {
                return Err(Invalid::Duplicate("a host name"));
            }
            host = Some(name);
        }
    }
    let name = host.ok_or(Invalid::Malformed("no host name in the server name list"))?;
    let name = std::str::from_utf8(name).map_err(|_| Invalid::BadServerName)?;
    crate::tls::names::normalize(name).ok_or(Invalid::BadServerName)
}

/// The ALPN extension (RFC 7301 §3.1): a non-empty list of non-empty protocol names.
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Invalid> {
    let mut r = Reader { buf: data };
    let mut list = Reader { buf: r.vec16("ALPN list")? };
    if !r.is_empty() || list.is_empty() {
        return Err(Invalid::Malformed("ALPN list"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let p = list.vec8("ALPN protocol")?;
        if p.is_empty() {
            return Err(Invalid::Malformed("an empty ALPN protocol"));
        }
        out.push(p.to_vec());
    }
    Ok(out)
}

/// Building ClientHellos for tests and benchmarks (`hello/build.rs`).
pub mod build;

#[cfg(test)]
mod tests {
    use super::build::{Spec, message, records};
    use super::*;

    fn spec(sni: &'static [u8]) -> Spec<'static> {
        Spec { sni: Some(sni), alpn: &[b"h2", b"http/1.1"], key_share: 32, ..Spec::default() }
    }

    fn done(wire: &[u8]) -> ClientHello {
        match parse(wire) {
            Parse::Done(h) => h,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn reads_the_name_alpn_and_ech_of_a_one_record_hello() {
        let wire = records(&message(&Spec { ech: true, ..spec(b"Api.Example.COM.") }), 1);
        let h = done(&wire);
        assert_eq!(h.server_name.as_deref(), Some("api.example.com"), "lowercased, trailing dot gone");
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(h.ech);
        assert_eq!(h.wire_len, wire.len());
        assert_eq!(h.alpn_text().as_deref(), Some("h2,http/1.1"));
    }

    #[test]
    fn a_hello_without_sni_or_extensions_has_no_name() {
        let h = done(&records(&message(&Spec::default()), 1));
        assert_eq!(h.server_name, None);
        assert!(h.alpn.is_empty() && !h.ech);
        // No extensions block at all (an SSL 3-era hello).
        let mut body = vec![3, 1];
        body.extend([0; 32]);
        body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
        let mut msg = vec![1, 0, 0, body.len() as u8];
        msg.extend(body);
        assert_eq!(done(&records(&msg, 1)).server_name, None);
    }

    #[test]
    fn every_prefix_needs_more_and_every_split_reads_the_same() {
        for (pad, share, n_records) in [(0, 32, 1), (2048, 32, 3), (8192, 1216, 5), (16 << 10, 1216, 17)] {
            let msg = message(&Spec { pad_to: pad, key_share: share, ..spec(b"split.example.com") });
            assert!(msg.len() <= MAX_HANDSHAKE + 4);
            for records_count in [1, 2, n_records] {
                let wire = records(&msg, records_count);
                let want = done(&wire);
                assert_eq!(want.server_name.as_deref(), Some("split.example.com"));
                for cut in 0..wire.len() {
                    match parse(&wire[..cut]) {
                        Parse::NeedMore { need } => {
                            assert!(need > cut && need <= wire.len(), "cut {cut} of {}: need {need}", wire.len())
                        }
                        other => panic!("pad {pad}, {records_count} records, prefix {cut}: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn not_tls_is_refused_from_the_first_byte() {
        for bytes in [&b"GET / HTTP/1.1\r\n"[..], b"\x80\x2e\x01\x03\x01", b"SSH-2.0-x", b"\x16\x02\x00\x00\x01"] {
            assert_eq!(parse(bytes), Parse::Invalid(Invalid::NotTls), "{bytes:?}");
        }
        assert_eq!(parse(b"G"), Parse::Invalid(Invalid::NotTls));
        assert_eq!(parse(b""), Parse::NeedMore { need: 5 });
    }

    #[test]
    fn malformed_and_oversized_hellos_are_refused() {
        let good = message(&spec(b"a.example.com"));
        // A record claiming more than 2^14 bytes, an empty record, an alert record after the first.
        assert!(matches!(parse(&[22, 3, 1, 0x40, 0x01]), Parse::Invalid(Invalid::Malformed(_))));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Parse::Invalid(Invalid::Malformed(_))));
        let mut mixed = records(&good[..10], 1);
        mixed.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(parse(&mixed), Parse::Invalid(Invalid::Malformed(_))));
        // A handshake message claiming more than the bound.
        assert_eq!(parse(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0x01]), Parse::Invalid(Invalid::TooLarge));
        // Not a ClientHello (a ServerHello).
        let mut server = good.clone();
        server[0] = 2;
        assert!(matches!(parse(&records(&server, 1)), Parse::Invalid(Invalid::Malformed(_))));
        // Two SNI extensions.
        let twice = {
            let one = message(&Spec { alpn: &[], key_share: 0, ..spec(b"x.com") });
            let sni_ext = &one[4 + 2 + 32 + 33 + 8 + 2 + 2..][..2 + 2 + 2 + 1 + 2 + 5];
            let mut m = one.clone();
            m.extend_from_slice(sni_ext);
            let body_len = m.len() - 4;
            m[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
            let ext_at = 4 + 2 + 32 + 33 + 8 + 2;
            let ext_len = u16::from_be_bytes([m[ext_at], m[ext_at + 1]]) as usize + sni_ext.len();
            m[ext_at..ext_at + 2].copy_from_slice(&(ext_len as u16).to_be_bytes());
            m
        };
        assert_eq!(parse(&records(&twice, 1)), Parse::Invalid(Invalid::Duplicate("an extension")));
        // An empty or bad host name fails closed, never "no name".
        for bad in [&b""[..], b"..", b"a..b", b"bad name", b"x\x00y", b"\xff\xfe"] {
            let wire = records(&message(&spec(bad)), 1);
            assert_eq!(parse(&wire), Parse::Invalid(Invalid::BadServerName), "{bad:?}");
        }
    }

    #[test]
    fn bytes_after_the_hello_in_its_record_are_refused() {
        let mut msg = message(&spec(b"a.example.com"));
        msg.extend_from_slice(&[20, 0, 0, 0]);
        assert!(matches!(parse(&records(&msg, 1)), Parse::Invalid(Invalid::Malformed(_))));
    }

    #[test]
    fn non_printable_alpn_is_escaped_for_the_log() {
        let h = ClientHello { alpn: vec![b"h2".to_vec(), b"a=b,\n".to_vec()], ..ClientHello::default() };
        assert_eq!(h.alpn_text().as_deref(), Some("h2,a\\x3db\\x2c\\x0a"));
    }
}
