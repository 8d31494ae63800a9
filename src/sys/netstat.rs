//! Machine-wide TCP statistics from `/proc/net/snmp` and `/proc/net/netstat`
//! (both "header line, value line" pairs per protocol), for the metrics:
//! retransmissions, resets, failed connects, accept-queue overflows.
//! (`TCP_INFO` of single sockets is in `sockopt.rs`.)

use std::collections::BTreeMap;
use std::path::Path;

/// The counters sluice reports: (section, field).
pub const REPORTED: [(&str, &str); 6] = [
    ("Tcp", "RetransSegs"),
    ("Tcp", "OutRsts"),
    ("Tcp", "AttemptFails"),
    ("Tcp", "EstabResets"),
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
];

/// Parses the snmp/netstat format into `"Section.Field" → value`. Fields
/// whose value is not a u64 (`MaxConn` is -1) are left out.
pub fn parse_snmp_style(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((section, names)), Some((section2, values))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if section != section2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<u64>() {
                out.insert(format!("{section}.{name}"), v);
            }
        }
    }
    out
}

/// The reported counters, keyed by field name, read under `proc_root`
/// (normally `/proc`). Missing files or fields are left out.
pub fn kernel_tcp_stats(proc_root: &Path) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for file in ["net/snmp", "net/netstat"] {
        if let Ok(text) = std::fs::read_to_string(proc_root.join(file)) {
            all.append(&mut parse_snmp_style(&text));
        }
    }
    REPORTED
        .iter()
        .filter_map(|(section, field)| all.get(&format!("{section}.{field}")).map(|v| ((*field).to_owned(), *v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
        Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
        Tcp: 1 200 120000 -1 100 90 7 3 12 5000 4800 42 0 9 0\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 6\n\
        IpExt: InNoRoutes\nIpExt: 0\n";

    #[test]
    fn pairs_of_lines_become_named_counters() {
        let m = parse_snmp_style(SNMP);
        assert_eq!(m.get("Tcp.RetransSegs"), Some(&42));
        assert_eq!(m.get("Ip.DefaultTTL"), Some(&64));
        assert_eq!(m.get("Tcp.MaxConn"), None, "-1 is not a counter");
    }

    #[test]
    fn the_six_reported_counters_are_read_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/snmp"), SNMP).unwrap();
        std::fs::write(dir.path().join("net/netstat"), NETSTAT).unwrap();
        let m = kernel_tcp_stats(dir.path());
        let want: BTreeMap<String, u64> = [
            ("RetransSegs", 42),
            ("OutRsts", 9),
            ("AttemptFails", 7),
            ("EstabResets", 3),
            ("ListenOverflows", 5),
            ("ListenDrops", 6),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn the_real_proc_has_them_and_a_missing_tree_has_none() {
        let m = kernel_tcp_stats(Path::new("/proc"));
        assert!(m.contains_key("RetransSegs") && m.contains_key("ListenDrops"), "{m:?}");
        assert!(kernel_tcp_stats(Path::new("/nonexistent")).is_empty());
    }
}
