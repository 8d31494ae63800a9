//! TPROXY's policy routing as `ip` reports it: which firewall marks lead to a
//! routing table where every address is local (`ip rule add fwmark 1 lookup
//! 100` with `ip route add local 0.0.0.0/0 dev lo table 100`), per family.
//! Read by running `ip -j` (its JSON), which spares sluice a netlink client
//! for one audit; the parsing is pure and unit-tested here. Judging what a
//! route needs is `capture.rs`'s.

use std::process::Command;

/// A `fwmark` rule whose table routes every address to this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMark {
    /// The mark the rule matches (`fwmark`).
    pub mark: u32,
    /// Its mask (`0xffffffff` when the rule has none).
    pub mask: u32,
    /// The table it looks up, as `ip` names it.
    pub table: String,
}

/// The marks delivered locally, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyRouting {
    /// IPv4 (`ip -4 rule`).
    pub v4: Vec<LocalMark>,
    /// IPv6 (`ip -6 rule`).
    pub v6: Vec<LocalMark>,
}

/// Asks `ip` in this process's network namespace; `None` when `ip` is not
/// installed or fails (a container image without iproute2).
pub fn read() -> Option<PolicyRouting> {
    Some(PolicyRouting { v4: read_family("-4")?, v6: read_family("-6")? })
}

fn read_family(family: &str) -> Option<Vec<LocalMark>> {
    let rules = ip(&["-j", family, "rule", "show"])?;
    let mut out = Vec::new();
    for rule in mark_rules(&rules)? {
        let routes = ip(&["-j", family, "route", "show", "table", &rule.table])?;
        if routes_everything_locally(&routes) {
            out.push(rule);
        }
    }
    Some(out)
}

/// Runs `ip ARGS`; its stdout if it succeeded.
fn ip(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The positive `fwmark … lookup TABLE` rules of `ip -j rule show` (a
/// `not fwmark` rule sends the *other* packets, so it is left out).
pub(super) fn mark_rules(json: &str) -> Option<Vec<LocalMark>> {
    let rules: Vec<serde_json::Value> = serde_json::from_str(json.trim()).ok()?;
    let hex = |v: Option<&serde_json::Value>| -> Option<u32> {
        let s = v?.as_str()?;
        u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
    };
    Some(
        rules
            .iter()
            .filter(|r| r.get("not").is_none())
            .filter_map(|r| {
                let mark = hex(r.get("fwmark"))?;
                let mask = hex(r.get("fwmask")).unwrap_or(u32::MAX);
                let table = r.get("table")?.as_str()?.to_owned();
                Some(LocalMark { mark, mask, table })
            })
            .collect(),
    )
}

/// True if `ip -j route show table N` has a `local default` route (every
/// address of the family delivered to this host).
pub(super) fn routes_everything_locally(json: &str) -> bool {
    let Ok(routes) = serde_json::from_str::<Vec<serde_json::Value>>(json.trim()) else { return false };
    routes.iter().any(|r| {
        let field = |k: &str| r.get(k).and_then(serde_json::Value::as_str);
        field("type") == Some("local") && matches!(field("dst"), Some("default" | "0.0.0.0/0" | "::/0"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_that_lead_to_a_table_are_found() {
        // `ip -j rule show` after `ip rule add fwmark 1 lookup 100` and
        // `ip rule add fwmark 0x539/0xfff lookup 133` (kernel 6.18, iproute2 6.1).
        let rules = r#"[{"priority":0,"src":"all","table":"local"},
            {"priority":32764,"src":"all","fwmark":"0x539","fwmask":"0xfff","table":"133"},
            {"priority":32765,"src":"all","fwmark":"0x1","table":"100"},
            {"priority":32765,"src":"all","not":null,"fwmark":"0x2","table":"101"},
            {"priority":32766,"src":"all","table":"main"}]"#;
        let got = mark_rules(rules).expect("valid JSON");
        assert_eq!(
            got,
            vec![
                LocalMark { mark: 0x539, mask: 0xfff, table: "133".into() },
                LocalMark { mark: 1, mask: u32::MAX, table: "100".into() },
            ]
        );
        assert_eq!(mark_rules("not json"), None);
        assert_eq!(mark_rules("[]"), Some(Vec::new()));
    }

    #[test]
    fn a_local_default_route_is_what_counts() {
        let v4 = r#"[{"type":"local","dst":"default","dev":"lo","scope":"host","flags":[]}]"#;
        let v6 = r#"[{"type":"local","dst":"default","dev":"lo","metric":1024,"flags":[],"pref":"medium"}]"#;
        assert!(routes_everything_locally(v4) && routes_everything_locally(v6));
        let unicast = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]"#;
        let one_address = r#"[{"type":"local","dst":"192.0.2.7","dev":"lo","flags":[]}]"#;
        assert!(!routes_everything_locally(unicast) && !routes_everything_locally(one_address));
        assert!(!routes_everything_locally("") && !routes_everything_locally("[]"));
    }
}
