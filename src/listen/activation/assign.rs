//! The third step of systemd socket activation: matching the sockets
//! systemd passed (`Received`, read by `activation.rs`) to the configuration
//! by the address each is bound to ([`assign`]), and handing them to the
//! route plan as `Inherited` sockets ([`Activation::into_inherited`]),
//! logging what serves where and what sluice binds itself.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::{Activation, ActivationError};
use crate::config::Config;
use crate::listen::inherit::Inherited;
use crate::listen::key::ListenKey;

/// Where a received socket serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The listener of this key (a route's address, shared routes' too).
    Route(ListenKey),
    /// The admin port.
    Admin,
}

/// Finds, for each received socket (fd, name, bound address), what it
/// serves in `config`: the route listening on that address (a fixed port:
/// port 0 is for the kernel to pick) or the admin port.
pub fn assign(received: &[(RawFd, &str, SocketAddr)], config: &Config) -> Result<Vec<Target>, ActivationError> {
    let keys = ListenKey::of_all(config);
    let admin = config.admin.as_ref().map(|a| a.listen);
    let mut targets = Vec::with_capacity(received.len());
    let mut admin_fd: Option<(RawFd, &str)> = None;
    for &(fd, name, addr) in received {
        if let Some(key) = keys.iter().find(|k| k.is_fixed() && k.addr() == addr) {
            targets.push(Target::Route(key.clone()));
        } else if admin == Some(addr) {
            if let Some((first, first_name)) = admin_fd {
                return Err(ActivationError::TooMany {
                    problem: format!(
                        "fd {first} ({first_name}) and fd {fd} ({name}) are both bound to the admin port's {addr}"
                    ),
                });
            }
            admin_fd = Some((fd, name));
            targets.push(Target::Admin);
        } else {
            let same_port = config.routes.iter().map(|r| r.listen).chain(admin).find(|a| a.port() == addr.port());
            let hint = match same_port {
                Some(a) => format!(
                    " (the config says {a}: ListenStream= must name the same address; a bare port there means [::]:{})",
                    a.port()
                ),
                None => String::new(),
            };
            return Err(ActivationError::Unmatched { fd, name: name.to_owned(), addr, hint });
        }
    }
    Ok(targets)
}

impl Activation {
    /// The sockets, matched to `config`, for the route plan to adopt (run
    /// with `workers` workers); `None` when there are none to use: not
    /// socket-activated, the variables were another process's, or a
    /// `takeover` brings the running process's sockets instead. Logs what
    /// it finds.
    pub fn into_inherited(
        self,
        config: &Config,
        workers: usize,
        takeover: bool,
    ) -> Result<Option<Inherited>, ActivationError> {
        let received = match self {
            Activation::None => return Ok(None),
            Activation::NotOurs { listen_pid } => {
                log::info!(
                    "LISTEN_PID={listen_pid} names another process (this is {}): the fds it announces are not ours",
                    std::process::id()
                );
                return Ok(None);
            }
            Activation::Sockets(r) => r,
        };
        if takeover {
            log::info!(
                "--takeover: the running sluice's sockets serve; the {} socket(s) systemd passed are not used",
                received.len()
            );
            return Ok(None);
        }
        let view: Vec<(RawFd, &str, SocketAddr)> = received.iter().map(|r| (r.fd, r.name.as_str(), r.addr)).collect();
        let targets = assign(&view, config)?;
        let keys = ListenKey::of_all(config);
        let routes_on = |key: &ListenKey| -> String {
            let names: Vec<&str> =
                config.routes.iter().zip(&keys).filter(|(_, k)| *k == key).map(|(r, _)| r.name.as_str()).collect();
            names.join(", ")
        };
        for key in keys.iter().filter(|k| k.is_fixed()) {
            let n = targets.iter().filter(|t| **t == Target::Route(key.clone())).count();
            if n > workers {
                return Err(ActivationError::TooMany {
                    problem: format!(
                        "{n} sockets for {} (route {}), more than the {workers} worker(s) can serve: systemd holds \
                         them open, so clients queued on the extra ones would wait for nobody; list the address \
                         at most {workers} time(s) in the .socket unit or raise workers",
                        fixed_addr(key),
                        routes_on(key)
                    ),
                });
            }
        }
        let mut inherited = Inherited::default();
        for (r, target) in received.into_iter().zip(targets) {
            if r.dual_stack {
                log::warn!(
                    "fd {} ({}) on {} takes IPv4 clients too (IPV6_V6ONLY off), which appear as ::ffff:a.b.c.d in \
                     logs and access lists; BindIPv6Only=ipv6-only in the .socket unit makes it IPv6 only, as \
                     sluice binds [::] itself",
                    r.fd,
                    r.name,
                    r.addr
                );
            }
            match target {
                Target::Route(key) => {
                    log::info!("fd {} ({}) from systemd: {} for route {}", r.fd, r.name, r.addr, routes_on(&key));
                    inherited.add(key, r.addr, r.socket);
                }
                Target::Admin => {
                    log::info!("fd {} ({}) from systemd: {} for the admin port", r.fd, r.name, r.addr);
                    inherited.set_admin(r.addr, r.socket);
                }
            }
        }
        let mut seen = Vec::new();
        for key in &keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            if inherited.count(key) == 0 {
                log::info!(
                    "route {}: systemd passed no socket for {}; sluice binds it",
                    routes_on(key),
                    fixed_addr(key)
                );
            }
        }
        if let Some(a) = &config.admin {
            if !inherited.has_admin() {
                log::info!("admin port: systemd passed no socket for {}; sluice binds it", a.listen);
            }
        }
        Ok(Some(inherited))
    }
}

fn fixed_addr(key: &ListenKey) -> SocketAddr {
    key.addr()
}
