//! Building ClientHellos for tests and benchmarks: the shape real clients
//! send, with whatever name, ALPN list, padding and key share size is
//! needed, split over as many records as asked. The parser (`hello.rs`)
//! never uses it; the property tests, the SNI tests and
//! `examples/hello_rate.rs` do, which is why it is public and not `cfg(test)`.

/// What to put in a generated hello.
#[derive(Clone, Debug, Default)]
pub struct Spec<'a> {
    /// `server_name` (raw bytes; `None`: no SNI extension).
    pub sni: Option<&'a [u8]>,
    /// ALPN protocols.
    pub alpn: &'a [&'a [u8]],
    /// Add an `encrypted_client_hello` extension.
    pub ech: bool,
    /// Bytes of `key_share` key exchange data (1,216 for X25519MLKEM768), 0 for none.
    pub key_share: usize,
    /// Pad the handshake message to at least this many bytes (`padding` extension).
    pub pad_to: usize,
}

fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// The handshake message (type, length, body).
pub fn message(spec: &Spec<'_>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = spec.sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(&mut exts, 0, &data);
    }
    ext(&mut exts, 10, &[0, 4, 0x11, 0xec, 0, 0x1d]); // supported_groups: X25519MLKEM768, x25519
    ext(&mut exts, 43, &[2, 3, 4]); // supported_versions: TLS 1.3
    if !spec.alpn.is_empty() {
        let mut list = Vec::new();
        for p in spec.alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(&mut exts, 16, &data);
    }
    if spec.key_share > 0 {
        let mut entry = vec![0x11, 0xec];
        entry.extend_from_slice(&(spec.key_share as u16).to_be_bytes());
        entry.extend(std::iter::repeat_n(0x5a, spec.key_share));
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        ext(&mut exts, 51, &data);
    }
    if spec.ech {
        ext(&mut exts, 0xfe0d, &[0, 0, 1, 0, 1, 7, 0, 0, 0, 0]);
    }
    let mut body = vec![3, 3];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    body.push(32);
    body.extend(std::iter::repeat_n(0xaa, 32));
    body.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
    body.extend_from_slice(&[1, 0]);
    let fixed = 4 + body.len() + 2 + exts.len();
    if spec.pad_to > fixed + 4 {
        ext(&mut exts, 21, &vec![0; spec.pad_to - fixed - 4]);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}

/// `message` cut into `records` records of about equal size, as wire bytes.
pub fn records(message: &[u8], records: usize) -> Vec<u8> {
    let per = message.len().div_ceil(records.max(1)).max(1);
    let mut out = Vec::new();
    for chunk in message.chunks(per) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
