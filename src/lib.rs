//! sluice: a zero-copy TCP (layer 4) reverse proxy for Linux.
//!
//! # Layout
//! - `access`: the access log, one line per finished session.
//! - `acl`: per-route allow/deny lists of CIDR blocks.
//! - `admin`: the admin HTTP port: /metrics, /stats, /healthz, /readyz.
//! - `affinity`: pinning workers to CPUs.
//! - `cli`: the command line and how its flags become a `Config`.
//! - `config`: `proxy.yaml`: schema, units, validation, errors with file:line:column.
//! - `doctor`: `sluice doctor`, the kernel and limits audit.
//! - `handoff`: hitless upgrade: listening sockets handed to a successor over a Unix socket.
//! - `handshakes`: the socket filter that stops a listener answering new handshakes before it closes.
//! - `frontend`: what one listen address serves: its routes, and their name table.
//! - `server`: the control thread: start workers, signals, reload (the route plan, the file watch), drain.
//! - `ratelimit`: connection-rate limits per route and per client prefix, shared by the workers.
//! - `worker`: one thread, one mio loop: listeners, sessions, timers, pools.
//! - `session`: one client↔upstream pair through its stages, and how it ends.
//! - `relay`: the pump state machine over splice pipes or copy buffers.
//! - `proxy_protocol`: PROXY protocol v1/v2 headers: building and strict parsing.
//! - `overload`: refusing new clients above fd or memory thresholds (`overload:`).
//! - `pipe`: splice pipes and the per-worker pipe pool.
//! - `timer`: deadlines with `now` passed in.
//! - `route`: a route as workers run it (bound, resolved).
//! - `upstream`: resolved upstream sets and balancing.
//! - `sockets`: listeners, upstream connects, abortive close.
//! - `socket_queue`: what a socket still holds: unread and unacknowledged bytes.
//! - `sockopt`: one function per TCP option; where each one applies.
//! - `limits`: the fd limit and the reserve fd.
//! - `listen`: listening sockets: their keys, binding and adopting them, systemd socket activation.
//! - `local_error`: telling this host's failures (fds, memory, ports, `source:`) from an upstream's.
//! - `local_ports`: local ports per upstream address, and what the routes may need (`doctor`).
//! - `logging`: env_logger through a non-blocking queue to stderr.
//! - `metrics`: per-worker counters and histograms, snapshots, Prometheus text.
//! - `netstat`: machine-wide TCP counters from /proc/net.
//! - `stats_view`: the `sluice stats` terminal view.
//! - `sysctl`: reading kernel settings from /proc/sys.
//! - `tls`: reading a TLS ClientHello (sans-I/O) and choosing a route by its server name.

pub mod access;
pub mod acl;
pub mod admin;
pub mod affinity;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod frontend;
pub mod handoff;
pub mod handshakes;
pub mod limits;
pub mod listen;
pub mod local_error;
pub mod local_ports;
pub mod logging;
pub mod metrics;
pub mod netstat;
pub mod overload;
pub mod pipe;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod relay;
pub mod route;
pub mod server;
pub mod session;
pub mod socket_queue;
pub mod sockets;
pub mod sockopt;
pub mod stats_view;
pub mod sysctl;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod worker;
