//! The `sluice stats` terminal view, built from `/stats` snapshots: a
//! header, one row per route (active sessions, sessions/s, Mbit/s each way,
//! spliced share, connect p50/p99, first-byte p99), close reasons, local
//! errors by cause (when there are any) and kernel counters, then one
//! route's latency distributions as bars in power-of-two buckets (the seed
//! printed `1-2ms: N requests`; this draws it).
//! Rates need two snapshots; without a previous one they show `-`.

use std::time::Duration;

use crate::metrics::snapshot::{AutoSnapshot, Latency, RouteSnapshot, Snapshot};
use crate::relay::cost::CLASSES;

/// Clear the screen and go home: prefix for `--watch` redraws.
pub const REDRAW: &str = "\x1b[H\x1b[2J";

/// Human duration from µs: `0µs`, `850µs`, `1.2ms`, `35ms`, `1.5s`, `2m05s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..10_000 => format!("{:.1}ms", us as f64 / 1e3),
        10_000..1_000_000 => format!("{}ms", us / 1_000),
        1_000_000..60_000_000 => format!("{:.1}s", us as f64 / 1e6),
        60_000_000..3_600_000_000 => format!("{}m{:02}s", us / 60_000_000, (us / 1_000_000) % 60),
        _ => format!("{}h{:02}m", us / 3_600_000_000, (us / 60_000_000) % 60),
    }
}

/// A bucket bound without fractions: `512µs`, `1ms`, `4s`, `2m08s`.
fn bound(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{}ms", us / 1_000),
        1_000_000..60_000_000 => format!("{}s", us / 1_000_000),
        _ => human_us(us),
    }
}

/// Renders one view. `previous` is an earlier snapshot and how long before
/// `now` it was taken; `route` picks the distribution shown (default: the
/// route with most sessions); nothing is wider than `width` columns.
pub fn render(now: &Snapshot, previous: Option<(&Snapshot, Duration)>, route: Option<&str>, width: usize) -> String {
    let width = width.max(40);
    let mut out = Vec::new();
    let uptime = human_us((now.uptime_secs * 1e6) as u64);
    let state = if now.draining {
        "draining"
    } else if now.ready {
        "ready"
    } else {
        "starting"
    };
    out.push(format!(
        "sluice {}  up {uptime}  {} workers  {state}  reloads {} ok / {} failed",
        now.version, now.workers, now.reloads.ok, now.reloads.failed
    ));
    let hits = now.pipes.pool_hit_rate().map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0));
    out.push(format!(
        "pipes {} in use / {} pooled / cap {}  pool hits {hits}  copy fallbacks {}",
        now.pipes.in_use, now.pipes.pooled, now.pipes.cap, now.pipes.copy_fallbacks
    ));
    out.extend(auto_costs(&now.auto));
    out.push(String::new());
    out.extend(table(now, previous));
    out.push(String::new());
    let mut closed: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for r in &now.routes {
        for (k, v) in &r.sessions.closed {
            *closed.entry(k).or_default() += v;
        }
    }
    let mut by_count: Vec<(&str, u64)> = closed.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let closed: Vec<String> = by_count.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push(format!("closed: {}", if closed.is_empty() { "none".to_owned() } else { closed.join(", ") }));
    // Addresses shared by routes that choose by TLS server name, and the clients no route took.
    let mut shared: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in &now.routes {
        match shared.iter_mut().find(|(l, _)| *l == r.listen) {
            Some((_, names)) => names.push(&r.name),
            None => shared.push((&r.listen, vec![&r.name])),
        }
    }
    for (listen, names) in shared.iter().filter(|(_, n)| n.len() > 1) {
        out.push(format!("shared {listen} (routed by TLS server name): {}", names.join(", ")));
    }
    let a = &now.accept;
    if a.bad_client_hello + a.no_route + a.client_hello_timeout + a.refused_route_limit > 0 {
        out.push(format!(
            "refused before a route: bad_client_hello {}, no_route {}, client_hello_timeout {}, route_limit {}",
            a.bad_client_hello, a.no_route, a.client_hello_timeout, a.refused_route_limit
        ));
    }
    if let Some(line) = refusals(now, previous) {
        out.push(line);
    }
    if now.overloaded {
        out.push("OVERLOADED: new clients are refused and /readyz says 503 (overload thresholds)".to_owned());
    }
    let local: Vec<String> =
        now.local_errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    if !local.is_empty() {
        out.push(format!("local errors (this host's, never an upstream's): {}", local.join(", ")));
    }
    if !now.kernel.is_empty() {
        let k: Vec<String> = now.kernel.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push(format!("kernel: {}", k.join(", ")));
    }
    let chosen = match route {
        Some(name) => now.routes.iter().find(|r| r.name == name).ok_or(name),
        None => now.routes.iter().max_by_key(|r| r.sessions.accepted).ok_or(""),
    };
    match chosen {
        Ok(r) => {
            out.push(String::new());
            out.extend(upstreams(r));
            out.push(String::new());
            out.extend(bars(&format!("route {}: upstream connect time", r.name), &r.connect_time, width));
            out.push(String::new());
            out.extend(bars(&format!("route {}: time to first upstream byte", r.name), &r.first_byte_time, width));
        }
        Err("") => {}
        Err(name) => out.push(format!("no route named {name:?}")),
    }
    let mut s = String::new();
    for line in out {
        s.push_str(&clip(&line, width));
        s.push('\n');
    }
    s
}

/// `relay: auto`'s measured costs per size class, ns per KiB copied |
/// spliced, the cheaper (the one used) marked; nothing before any were measured.
fn auto_costs(a: &AutoSnapshot) -> Option<String> {
    if a.classes.is_empty() {
        return None;
    }
    let ns = |v: Option<u64>, best: bool| v.map_or("-".to_owned(), |v| format!("{v}{}", if best { "*" } else { "" }));
    let classes: Vec<String> = a
        .classes
        .iter()
        .map(|c| {
            let splice_best = match (c.copy_ns_per_kib, c.splice_ns_per_kib) {
                (Some(copy), Some(splice)) => splice < copy,
                (copy, _) => copy.is_none(),
            };
            let size = human_bytes(c.from_bytes);
            let last = if c.from_bytes >= 1024 << (CLASSES - 1) { "+" } else { "" };
            format!("{size}{last} {}|{}", ns(c.copy_ns_per_kib, !splice_best), ns(c.splice_ns_per_kib, splice_best))
        })
        .collect();
    Some(format!("relay auto, ns per KiB copy|splice (* used): {}", classes.join("  ")))
}

/// 1024 → "1K", 1048576 → "1M" (powers of two only need these).
fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

fn clip(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

/// The per-route table.
fn table(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> Vec<String> {
    let header =
        ["route", "active", "sess/s", "Mbit/s up", "Mbit/s down", "spliced", "conn p50", "conn p99", "1st p99"];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for r in &now.routes {
        let before = previous.and_then(|(p, dt)| Some((p.routes.iter().find(|x| x.name == r.name)?, dt)));
        let rate = |f: &dyn Fn(&RouteSnapshot) -> u64, scale: f64, decimals: usize| -> String {
            match (before, previous) {
                (Some((b, dt)), _) if dt > Duration::ZERO => {
                    format!("{:.*}", decimals, f(r).saturating_sub(f(b)) as f64 * scale / dt.as_secs_f64())
                }
                (None, Some((_, dt))) if dt > Duration::ZERO => {
                    format!("{:.*}", decimals, f(r) as f64 * scale / dt.as_secs_f64())
                }
                _ => "-".to_owned(),
            }
        };
        let up = |x: &RouteSnapshot| x.client_to_upstream.total();
        let down = |x: &RouteSnapshot| x.upstream_to_client.total();
        let spliced = |x: &RouteSnapshot| x.client_to_upstream.spliced + x.upstream_to_client.spliced;
        let (sp, tot) = match before {
            Some((b, _)) => {
                (spliced(r) - spliced(b).min(spliced(r)), (up(r) + down(r)).saturating_sub(up(b) + down(b)))
            }
            None => (spliced(r), up(r) + down(r)),
        };
        let share = if tot == 0 { "-".to_owned() } else { format!("{:.0}%", sp as f64 * 100.0 / tot as f64) };
        let lat = |l: &Latency, v: u64| if l.count == 0 { "-".to_owned() } else { human_us(v) };
        rows.push([
            r.name.clone(),
            r.sessions.active.to_string(),
            rate(&|x| x.sessions.accepted, 1.0, 1),
            rate(&up, 8e-6, 2),
            rate(&down, 8e-6, 2),
            share,
            lat(&r.connect_time, r.connect_time.p50),
            lat(&r.connect_time, r.connect_time.p99),
            lat(&r.first_byte_time, r.first_byte_time.p99),
        ]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    let mut out = aligned(&header, &rows);
    if rows.is_empty() {
        out.push("(no routes)".to_owned());
    }
    out
}

/// Rows under a header and a rule: the first column left-aligned, the rest right-aligned.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.push("-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The upstreams of one route: state, load and failures.
fn upstreams(r: &RouteSnapshot) -> Vec<String> {
    let header = ["upstream", "state", "active", "sessions", "conn fails", "checks ok/failed", "ejections"];
    let rows: Vec<Vec<String>> = r
        .upstreams
        .iter()
        .filter(|u| u.current || u.health.active > 0)
        .map(|u| {
            let h = &u.health;
            let state = match (u.current, h.up, h.ejected) {
                (false, _, _) => "gone",
                (_, false, _) => "DOWN",
                (_, _, true) => "ejected",
                _ => "up",
            };
            vec![
                u.address.clone(),
                state.to_owned(),
                h.active.to_string(),
                u.sessions.to_string(),
                u.connect_failures.to_string(),
                format!("{}/{}", h.checks_ok, h.checks_failed),
                h.ejections.to_string(),
            ]
        })
        .collect();
    let mut out = vec![format!("route {}: upstreams", r.name)];
    out.extend(aligned(&header, &rows));
    out
}

/// A distribution as horizontal bars, one line per power-of-two bucket from
/// the first to the last non-empty one.
fn bars(title: &str, l: &Latency, width: usize) -> Vec<String> {
    let mut out = vec![format!("{title} ({} samples, p50 {}, p99 {})", l.count, human_us(l.p50), human_us(l.p99))];
    let first = l.pow2.iter().position(|[_, n]| *n > 0);
    let last = l.pow2.iter().rposition(|[_, n]| *n > 0);
    let (Some(first), Some(last)) = (first, last) else {
        out[0] = format!("{title}: no samples");
        return out;
    };
    let buckets = &l.pow2[first..=last];
    let labels: Vec<String> = buckets
        .iter()
        .map(|&[upper, _]| {
            let lower = upper / 2;
            // "1-2ms" when both ends share a unit, "512µs-1ms" when they don't.
            if lower > 0 && unit(lower) == unit(upper) {
                format!("{}-{}", number(lower), bound(upper))
            } else {
                format!("{}-{}", bound(lower), bound(upper))
            }
        })
        .collect();
    let label_w = labels.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    let count_w = buckets.iter().map(|[_, n]| n.to_string().len()).max().unwrap_or(1);
    let biggest = buckets.iter().map(|[_, n]| *n).max().unwrap_or(1).max(1);
    let room = width.saturating_sub(label_w + count_w + 4).max(1);
    for (label, [_, n]) in labels.iter().zip(buckets) {
        let eighths = (*n as u128 * room as u128 * 8 / biggest as u128) as usize;
        let mut bar = "█".repeat(eighths / 8);
        if eighths % 8 > 0 {
            bar.push(['▏', '▎', '▍', '▌', '▋', '▊', '▉'][eighths % 8 - 1]);
        }
        out.push(format!("{label:>label_w$} {n:>count_w$} {bar}"));
    }
    out
}

/// Refusals by reason, per second between two snapshots (or in all, for a single view).
fn refusals(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> Option<String> {
    let counts = |s: &Snapshot| {
        let a = &s.accept;
        [
            ("rate_limited", a.rate_limited),
            ("overload", a.overload),
            ("client_limit", a.refused_client_limit),
            ("acl", a.refused_acl),
            ("bad_proxy_header", a.bad_proxy_header),
            ("loop", a.refused_loop),
        ]
    };
    let cur = counts(now);
    if cur.iter().all(|(_, n)| *n == 0) {
        return None;
    }
    let parts: Vec<String> = match previous {
        Some((prev, dt)) if !dt.is_zero() => cur
            .iter()
            .zip(counts(prev))
            .map(|((k, n), (_, p))| format!("{k} {:.1}", n.saturating_sub(p) as f64 / dt.as_secs_f64()))
            .collect(),
        _ => cur.iter().map(|(k, n)| format!("{k} {n}")).collect(),
    };
    let what = if previous.is_some() { "refused/s" } else { "refused" };
    Some(format!("{what}: {}", parts.join(", ")))
}

fn unit(us: u64) -> u8 {
    match us {
        0..1_000 => 0,
        1_000..1_000_000 => 1,
        1_000_000..60_000_000 => 2,
        _ => 3,
    }
}

/// A bound's number without its unit (`512µs` → `512`).
fn number(us: u64) -> String {
    bound(us).trim_end_matches(|c: char| c.is_alphabetic()).to_owned()
}

#[cfg(test)]
mod tests;
