//! What the property tests share: how many random cases to run and how to
//! damage a valid input a little.

/// Cases per fuzz test: `SLUICE_FUZZ_CASES`, or a million.
pub fn cases() -> usize {
    std::env::var("SLUICE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// Flips, inserts or removes one to four bytes of `buf`.
pub fn mutate(rng: &mut fastrand::Rng, buf: &mut Vec<u8>) {
    for _ in 0..1 + rng.usize(..4) {
        let at = rng.usize(..buf.len() + 1);
        match rng.usize(..3) {
            0 if at < buf.len() => buf[at] = rng.u8(..),
            1 => buf.insert(at, rng.u8(..)),
            _ if at < buf.len() => {
                buf.remove(at);
            }
            _ => {}
        }
    }
}
