//! The families about the process as operators run it: what binary this is
//! (`sluice_build_info`), since when it runs, how the last configuration
//! load went (named as Prometheus names its own reloads), and the
//! process-wide limits beside their use now. The pipe budget and its use
//! are `prometheus.rs`'s `sluice_pipes_*`; the drain is `sluice_draining`
//! with `sluice_connections_open` the sessions it still waits for.

use super::exposition::{Out, flag};
use super::snapshot::Snapshot;

/// Appends the families to `out`.
pub(super) fn render(out: &mut Out, snap: &Snapshot) {
    let info = vec![
        ("version", snap.version.clone()),
        ("commit", snap.commit.clone()),
        ("relay_modes", snap.relay_modes.clone()),
    ];
    out.gauge(
        "sluice_build_info",
        "Always 1; the labels say which sluice this is: version, git commit (unknown when built outside git), \
         and the relay modes it can run on this kernel.",
        &[(info, 1.0)],
    );
    out.gauge(
        "sluice_start_time_seconds",
        "When the process started, seconds since the Unix epoch.",
        &[(vec![], snap.start_time_secs)],
    );
    out.gauge(
        "sluice_config_last_reload_successful",
        "1 if the last configuration load (at start, or the last reload) was applied; 0 if the last reload was \
         refused and the previous configuration still serves.",
        &[(vec![], flag(snap.reloads.last_ok))],
    );
    out.gauge(
        "sluice_config_last_reload_timestamp_seconds",
        "When the last configuration load (at start, or the last reload, applied or refused) ended, seconds since \
         the Unix epoch.",
        &[(vec![], snap.reloads.last_at_secs)],
    );
    let l = &snap.limits;
    out.gauge(
        "sluice_max_connections",
        "The global max_connections: listeners pause while this many sessions are open.",
        &[(vec![], l.max_connections as f64)],
    );
    out.gauge(
        "sluice_connections_open",
        "Sessions counted against max_connections now, all routes (while draining: the sessions the drain waits for).",
        &[(vec![], l.connections as f64)],
    );
    out.gauge(
        "sluice_max_fds",
        "The open-file limit (soft RLIMIT_NOFILE, after sluice raised it to the hard limit).",
        &[(vec![], l.max_fds as f64)],
    );
    out.gauge("sluice_open_fds", "File descriptors open now.", &[(vec![], l.open_fds as f64)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{LimitsSnapshot, ReloadSnapshot};

    fn rendered(snap: &Snapshot) -> String {
        let mut out = Out(String::new());
        render(&mut out, snap);
        out.0
    }

    #[test]
    fn build_reload_and_limits_render_as_gauges() {
        let snap = Snapshot {
            version: "0.1.0".into(),
            commit: "0123456789ab".into(),
            relay_modes: "splice,copy,auto".into(),
            start_time_secs: 1_700_000_000.5,
            reloads: ReloadSnapshot { ok: 1, failed: 2, last_ok: false, last_at_secs: 1_700_000_100.25 },
            limits: LimitsSnapshot { max_connections: 100, connections: 7, max_fds: 1024, open_fds: 31 },
            ..Snapshot::default()
        };
        let text = rendered(&snap);
        for line in [
            "sluice_build_info{version=\"0.1.0\",commit=\"0123456789ab\",relay_modes=\"splice,copy,auto\"} 1",
            "sluice_start_time_seconds 1700000000.5",
            "sluice_config_last_reload_successful 0",
            "sluice_config_last_reload_timestamp_seconds 1700000100.25",
            "sluice_max_connections 100",
            "sluice_connections_open 7",
            "sluice_max_fds 1024",
            "sluice_open_fds 31",
            "# TYPE sluice_config_last_reload_successful gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let ok = Snapshot { reloads: ReloadSnapshot { last_ok: true, ..ReloadSnapshot::default() }, ..snap };
        assert!(rendered(&ok).lines().any(|l| l == "sluice_config_last_reload_successful 1"));
    }
}
