//! Property tests (proptest, then a bounded random fuzz): the parsers that
//! read what strangers send, and the config loader, against arbitrary and
//! mutated input. They never panic, and every refusal is an answer.
//! `SLUICE_FUZZ_CASES` sets how many random cases each runs.

#[path = "../support/mutation.rs"]
mod mutation;

mod client_hello;
mod config;
mod proxy_protocol;
