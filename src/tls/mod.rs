//! TLS passthrough routing: reading a client's ClientHello without
//! terminating TLS (`hello.rs`, sans-I/O) and choosing a route by its server
//! name and ALPN protocols (`names.rs`). The proxy never holds a key: the
//! TLS session stays end to end.

pub mod hello;
pub mod names;
