//! Integration tests: the real `sluice` binary against backends on
//! 127.0.0.1:0. Relay tests run in every relay mode (`both_modes!`).

#[path = "../support/backends.rs"]
mod backends;
#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/netns.rs"]
mod netns;

/// Generates `splice`, `copy`, `auto` and `uring` test functions in a module named after
/// the behaviour, each calling `$body(mode)`.
macro_rules! both_modes {
    ($($name:ident => $body:ident;)*) => {
        $(
            mod $name {
                #[test]
                fn splice() {
                    super::$body("splice");
                }
                #[test]
                fn copy() {
                    super::$body("copy");
                }
                #[test]
                fn auto() {
                    super::$body("auto");
                }
                #[test]
                fn uring() {
                    super::$body("uring");
                }

            }
        )*
    };
}

mod capture;
mod chaos;
mod cli;
mod config_errors;
mod control_socket;
mod endings;
mod lifecycle;
mod limits;
mod mptcp;
mod multipath;
mod nonroot;
mod notify;
mod observability;
mod pools;
mod proxy_protocol;
mod ratelimit;
mod relay;
mod relay_modes;
mod reload;
mod resilience;
mod second_instance;
mod sidecar;
mod sni;
mod sockmap;
mod systemd;
mod tproxy;
mod tuning;
mod upgrade;
mod uring;
mod uring_release;
