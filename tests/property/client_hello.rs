//! The ClientHello reader against hostile input: it never panics, never
//! asks for more than its bound, answers "need more" for every prefix of a
//! valid hello and the same verdict for every way of cutting it into
//! records, and a name it reports is always a valid, normalised host name.
//! A property test (proptest) plus a bounded random fuzz of 1,000,000
//! inputs (noise, mutated hellos, truncations) — `SLUICE_FUZZ_CASES`
//! changes the count.

use proptest::prelude::*;
use sluice::tls::hello::build::{Spec, message, records};
use sluice::tls::hello::{MAX_WIRE, Parse, parse};
use sluice::tls::names::normalize;

/// Checks the reader's promises on one input.
fn check(input: &[u8]) {
    match parse(input) {
        Parse::NeedMore { need } => {
            assert!(need > input.len(), "asked for {need} with {} in hand", input.len());
            assert!(need <= MAX_WIRE, "asked for {need}, past the bound");
        }
        Parse::Done(h) => {
            assert!(h.wire_len <= input.len() && h.wire_len <= MAX_WIRE);
            if let Some(n) = &h.server_name {
                assert_eq!(normalize(n).as_deref(), Some(n.as_str()), "a name that is not normal: {n:?}");
            }
            // What follows the hello's records does not change the verdict.
            assert_eq!(parse(&input[..h.wire_len]), Parse::Done(h));
        }
        Parse::Invalid(why) => assert!(!why.to_string().is_empty()),
    }
}

fn name() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9]{1,12}(\\.[a-z0-9-]{1,12}){0,4}").expect("regex")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&input);
    }

    #[test]
    fn every_valid_hello_reads_back_and_every_prefix_needs_more(
        host in name(),
        alpn in proptest::collection::vec(proptest::collection::vec(33u8..127, 1..12), 0..4),
        key_share in 0usize..1300,
        pad in 0usize..6000,
        n_records in 1usize..9,
        ech in any::<bool>(),
    ) {
        let alpn_refs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        let spec = Spec { sni: Some(host.as_bytes()), alpn: &alpn_refs, ech, key_share, pad_to: pad };
        let wire = records(&message(&spec), n_records);
        let Parse::Done(h) = parse(&wire) else { panic!("did not parse") };
        prop_assert_eq!(h.server_name.as_deref(), Some(host.as_str()));
        prop_assert_eq!(&h.alpn, &alpn);
        prop_assert_eq!(h.ech, ech);
        prop_assert_eq!(h.wire_len, wire.len());
        for cut in (0..wire.len()).step_by(7) {
            let verdict = parse(&wire[..cut]);
            prop_assert!(matches!(verdict, Parse::NeedMore { .. }), "prefix {} of {}: {:?}", cut, wire.len(), verdict);
        }
    }
}

#[test]
fn a_million_random_inputs_never_panic() {
    let cases = crate::mutation::cases();
    let mut rng = fastrand::Rng::with_seed(0x5eed_c11e_4e11_0001); // seeded: a failure reproduces exactly
    let seeds: Vec<Vec<u8>> = [
        Spec { sni: Some(b"a.example.com"), alpn: &[b"h2", b"http/1.1"], ..Spec::default() },
        Spec { sni: Some(b"pq.example.com"), key_share: 1216, ech: true, ..Spec::default() },
        Spec::default(),
    ]
    .iter()
    .flat_map(|s| [records(&message(s), 1), records(&message(s), 3)])
    .collect();
    let mut buf = Vec::with_capacity(4096);
    for i in 0..cases {
        buf.clear();
        let seed = &seeds[rng.usize(..seeds.len())];
        match i % 4 {
            // Noise behind a handshake record header (the reader's first gate is cheap to pass).
            0 => {
                buf.extend_from_slice(&[22, 3, rng.u8(..5), rng.u8(..), rng.u8(..)]);
                (0..rng.usize(..300)).for_each(|_| buf.push(rng.u8(..)));
            }
            // A valid hello with a few bytes flipped, inserted or removed.
            1 | 2 => {
                buf.extend_from_slice(seed);
                crate::mutation::mutate(&mut rng, &mut buf);
            }
            // A valid start followed by noise.
            _ => {
                buf.extend_from_slice(&seed[..rng.usize(..seed.len() + 1)]);
                (0..rng.usize(..200)).for_each(|_| buf.push(rng.u8(..)));
            }
        }
        check(&buf);
    }
}
