//! The config loader against hostile input: arbitrary text and mutations of
//! a valid proxy.yaml never panic, and every refusal is a located error
//! (file:line:column) naming a field or saying it is a YAML syntax error.
//! A proptest property plus a bounded random fuzz (`SLUICE_FUZZ_CASES`,
//! default 20,000 mutations).

use proptest::prelude::*;
use sluice::config::{ConfigError, parse_str};

const VALID: &str = include_str!("../../proxy.yaml");

fn check(text: &str) {
    match parse_str(text, "fuzz.yaml") {
        Ok(c) => assert!(!c.routes.is_empty()),
        Err(ConfigError::Invalid { location, message, .. }) => {
            assert!(location.is_some(), "an error without a location: {message}");
            assert!(!message.is_empty());
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in "(routes:|  - name: [a-z]{1,4}|    listen: [0-9.:]{0,20}|    upstreams: \\[[^\\]]{0,20}\\]|    [a-z_]{1,20}: [-a-z0-9\"{}:,. ]{0,20}|\n){0,30}") {
        check(&text);
    }
}

#[test]
fn mutations_of_the_shipped_config_never_panic() {
    check(VALID);
    let cases: usize = std::env::var("SLUICE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let lines: Vec<&str> = VALID.lines().collect();
    // Seeded: a failure reproduces exactly.
    let mut rng = fastrand::Rng::with_seed(0x1234_5678_9abc_def1);
    let mut rnd = |n: usize| rng.usize(..n.max(1));
    const PIECES: [&str; 14] = [
        "-1",
        "0",
        "99999999999999999999",
        "\"\"",
        "[]",
        "{}",
        "null",
        "~",
        "1e9",
        "0x10",
        "\"[::1]:0\"",
        "auto",
        "\t",
        ": :",
    ];
    for _ in 0..cases {
        let mut l: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..1 + rnd(3) {
            let i = rnd(l.len());
            match rnd(5) {
                0 => {
                    l.remove(i);
                }
                1 => {
                    let j = rnd(l.len());
                    l.insert(i, l[j].clone());
                }
                2 => {
                    // Replace the value after the first ": ".
                    if let Some((k, _)) = l[i].split_once(": ") {
                        l[i] = format!("{k}: {}", PIECES[rnd(PIECES.len())]);
                    }
                }
                3 => {
                    let s = &mut l[i];
                    let at = rnd(s.len() + 1);
                    if s.is_char_boundary(at) {
                        s.insert_str(at, PIECES[rnd(PIECES.len())]);
                    }
                }
                _ => {
                    // Indentation changes.
                    l[i] = format!("{}{}", " ".repeat(rnd(6)), l[i].trim_start());
                }
            }
        }
        check(&l.join("\n"));
    }
}
