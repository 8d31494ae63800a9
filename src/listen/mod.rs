//! Listening sockets, beneath everything that serves on them: which
//! listener a socket belongs to (`ListenKey`), binding a listen address's
//! sockets or adopting ones this process did not bind, and the sockets that
//! wait to be adopted (a predecessor's, systemd's). It knows addresses and
//! socket options, not routes: the route plan (`server/plan.rs`) decides
//! what to bind, the takeover (`handoff`) brings a predecessor's sockets.
//!
//! # Files
//! - `key.rs`: `ListenKey`, what a listener is known by across reloads and processes;
//! - `bind.rs`: binding (one socket per worker, one `SO_REUSEPORT` group) and adopting, and `ListenError`;
//! - `inherit.rs`: `Inherited`, sockets received and not yet taken, and `Offered`, what a predecessor says of each;
//! - `activation.rs`: systemd socket activation (`sd_listen_fds(3)`), matched to the configuration.

pub mod activation;
pub(crate) mod bind;
pub(crate) mod inherit;
pub(crate) mod key;

pub use bind::{ListenError, Listener, adopt, bind, listen_bound};
pub use inherit::{Inherited, Offered};
pub use key::ListenKey;
