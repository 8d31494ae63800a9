#!/usr/bin/env python3
"""flood: what a connection flood costs sluice's well-behaved clients, and how exact its rate limits are.

examples/flood opens and closes connections as fast as its threads can, each
from one of 1,000 loopback addresses (127.1.x.y), while 50 persistent clients,
each from its own address, run a verified 1 KiB request/response load
(closed loop) through the same proxy. Pinned the way ../shared/bench/compare
pins: load generator and echo upstream on CPU 0, the proxy on CPU 1.

Part 1, interleaved ROUNDS times (each run DURATION long):

  sluice limited   a route with max_connection_rate_per_client { per_second: 2, burst: 5 }
  sluice open      the same upstream on a route without limits (what the limit saves)
  haproxy limited  (if installed) nbthread 1, a stick table keyed by source:
                   track-sc0 src, reject if sc0_conn_rate (1 s window) is over 2

each as: clients alone, clients + a flood paced at FLOOD_RATE (default 8,000/s: the same load for every
proxy), clients + a flood as fast as the client core can make it, and that flood alone. Prints the clients'
requests/s and p99 beside the run without the flood, and refusals per second
per core: refusals / (the proxy's own CPU seconds), and / (CPU 1's busy time,
which also holds the softirq work of the resets).

Part 2, limiter accuracy across workers: sluice with 2 workers (unpinned) and
  per_client  max_connection_rate_per_client { per_second: 2, burst: 5 } (1,000 sources)
  per_route   max_connection_rate { per_second: 3000, burst: 100 }
floods each for DURATION and compares the connections admitted (accepted -
refused) with what the rule allows: sources x (burst + floor(rate x T)) and
burst + floor(rate x T), T being the flood's measured length.

    LOADGEN_BIN=... SLUICE_BIN=target/release/sluice FLOOD_BIN=target/release/examples/flood \\
        python3 bench/flood.py [ROUNDS] [DURATION_SECONDS]

PARTS=2 runs part 2 alone. Python 3 standard library only.
"""

import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import cpu_seconds, free_ports, stop_all, wait_port

LOADGEN = os.environ.get("LOADGEN_BIN", "../shared/bench/loadgen/target/release/loadgen")
SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")
FLOOD = os.environ.get("FLOOD_BIN", "target/release/examples/flood")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DURATION = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
SOURCES = 1000
RR_CONNS = 50
FLOOD_THREADS = 2
FLOOD_RATE = int(os.environ.get("FLOOD_RATE", "8000"))


def cpu1_busy():
    """Busy seconds of CPU 1 (user, nice, system, irq, softirq), and of those softirq."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu1 "):
                v = [int(x) for x in line.split()[1:]]
                hz = os.sysconf("SC_CLK_TCK")
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[6] / hz
    raise SystemExit("no cpu1 in /proc/stat: this needs 2 CPUs")


def sluice_counts(admin_port):
    """(accepted per route, rate_limited) from sluice's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    accepted = {m[0]: int(float(m[1])) for m in re.findall(r'sluice_sessions_accepted_total\{route="([^"]+)"\} (\S+)', text)}
    limited = int(float(re.search(r'sluice_refused_total\{reason="rate_limited"\} (\S+)', text).group(1)))
    return accepted, limited


def haproxy_denied(sock_path):
    """Connections HAProxy's frontend denied by tcp-request connection rules (dcon)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "limited" and row.get("svname") == "FRONTEND":
            return int(row.get("dcon") or 0)
    raise SystemExit("haproxy: no FRONTEND row for 'limited'")


def flood(port, threads, rr_conns, duration=DURATION, cpus="0", rate=0):
    out = subprocess.run(["taskset", "-c", cpus, FLOOD, "--target", f"127.0.0.1:{port}", "--sources", str(SOURCES),
                          "--flood-threads", str(threads), "--flood-rate", str(rate), "--rr-conns", str(rr_conns),
                          "--duration", f"{duration}s"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"flood (\d+) conn/s from \d+ sources over ([\d.]+) s; clients (\d+) req/s p50 (\d+) us "
                  r"p99 (\d+) us errors (\d+)", out)
    if not m:
        raise SystemExit(f"flood said: {out!r}")
    return {"flood": int(m[1]), "secs": float(m[2]), "rps": int(m[3]), "p50": int(m[4]), "p99": int(m[5]),
            "errors": int(m[6])}


def write_sluice(path, admin, workers, routes):
    with open(path, "w") as f:
        f.write(f"workers: {workers}\nlog: {{ access: false }}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nroutes:\n")
        for name, port, upstream, extra in routes:
            f.write(f"  - name: {name}\n    listen: 127.0.0.1:{port}\n    upstreams: [\"127.0.0.1:{upstream}\"]\n")
            if extra:
                f.write(f"    {extra}\n")


def part1(tmp, echo_port, procs):
    admin, limited, opened, hport = free_ports(4)
    cfg = os.path.join(tmp, "flood.yaml")
    write_sluice(cfg, admin, 1, [
        ("limited", limited, echo_port, "max_connection_rate_per_client: { per_second: 2, burst: 5 }"),
        ("open", opened, echo_port, None),
    ])
    sluice = subprocess.Popen(["taskset", "-c", "1", SLUICE, "-c", cfg], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    procs.append(sluice)
    wait_port(limited)
    wait_port(opened)

    def sluice_refused():
        return sluice_counts(admin)[1]

    targets = [("sluice limited", limited, sluice.pid, sluice_refused),
               ("sluice open", opened, sluice.pid, None)]
    if shutil.which("haproxy"):
        hcfg, hsock = os.path.join(tmp, "haproxy.cfg"), os.path.join(tmp, "haproxy.sock")
        with open(hcfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 9000
    stats socket {hsock} level admin
defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s
frontend limited
    bind 127.0.0.1:{hport}
    stick-table type ip size 1m expire 10s store conn_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_rate gt 2 }}
    default_backend echo
backend echo
    server s 127.0.0.1:{echo_port}
""")
        haproxy = subprocess.Popen(["taskset", "-c", "1", "haproxy", "-db", "-f", hcfg], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        procs.append(haproxy)
        wait_port(hport)
        targets.append(("haproxy limited", hport, haproxy.pid, lambda: haproxy_denied(hsock)))

    # (kind, flood threads, clients, flood rate): the paced flood is the same load for every proxy, so the
    # clients' loss compares like with like; the unpaced ones run as fast as the client core can open
    # connections against that proxy (a proxy that refuses faster gets a bigger flood).
    kinds = [("clients", 0, RR_CONNS, 0), (f"clients+{FLOOD_RATE // 1000}k", FLOOD_THREADS, RR_CONNS, FLOOD_RATE),
             ("clients+flood", FLOOD_THREADS, RR_CONNS, 0), ("flood", FLOOD_THREADS, 0, 0)]
    results = {}
    for r in range(ROUNDS):
        for name, port, pid, refused in targets:
            for kind, threads, conns, rate in kinds:
                if refused is None and kind == "flood":
                    continue  # nothing refused: no refusal rate to measure
                before = (cpu_seconds(pid), cpu1_busy(), refused() if refused else 0, time.monotonic())
                res = flood(port, threads, conns, rate=rate)
                after = (cpu_seconds(pid), cpu1_busy(), refused() if refused else 0, time.monotonic())
                # Over the whole window the counters were read in (the flood's start and end included).
                wall = after[3] - before[3]
                res["proc_cpu"] = (after[0] - before[0]) / wall
                res["cpu1"] = (after[1][0] - before[1][0]) / wall
                res["softirq1"] = (after[1][1] - before[1][1]) / wall
                res["refused"] = (after[2] - before[2]) / wall
                results.setdefault((name, kind), []).append(res)
                print(f"round {r} {name:16} {kind:14} flood {res['flood']:>7,}/s refused {res['refused']:>9,.0f}/s  "
                      f"clients {res['rps']:>6,} req/s p99 {res['p99']:>6,} us errors {res['errors']}  "
                      f"proxy cpu {100 * res['proc_cpu']:.0f}% cpu1 {100 * res['cpu1']:.0f}% (softirq {100 * res['softirq1']:.0f}%)", flush=True)
                if res["errors"]:
                    print("  client errors!", flush=True)
    print("\nmedians:")
    for (name, kind), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        line = f"  {name:16} {kind:14} flood {med['flood']:>7,.0f}/s  clients {med['rps']:>6,.0f} req/s p99 {med['p99']:>6,.0f} us"
        base = results.get((name, "clients"))
        if kind.startswith("clients+") and base:
            b_rps = statistics.median(r["rps"] for r in base)
            b_p99 = statistics.median(r["p99"] for r in base)
            line += f" ({med['rps'] / b_rps:.3f}x throughput, {med['p99'] / b_p99:.2f}x p99 of clients alone)"
        if kind == "flood" and med["refused"]:
            line += (f"  refused {med['refused']:,.0f}/s at proxy cpu {100 * med['proc_cpu']:.0f}% "
                     f"= {med['refused'] / med['proc_cpu']:,.0f}/s per proxy core, "
                     f"{med['refused'] / med['cpu1']:,.0f}/s per busy CPU 1 (softirq {100 * med['softirq1']:.0f}%)")
        print(line, flush=True)
    sluice.kill()
    sluice.wait()


def part2(tmp, echo_port, procs):
    admin, per_client, per_route = free_ports(3)
    cfg = os.path.join(tmp, "accuracy.yaml")
    write_sluice(cfg, admin, 2, [
        ("per_client", per_client, echo_port, "max_connection_rate_per_client: { per_second: 2, burst: 5 }"),
        ("per_route", per_route, echo_port, "max_connection_rate: { per_second: 3000, burst: 100 }"),
    ])
    sluice = subprocess.Popen([SLUICE, "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(sluice)
    wait_port(admin)
    time.sleep(0.1)
    # The readiness probes above were admitted by no limited route; the
    # counts below are deltas, so they do not matter.
    print("\nlimiter accuracy, 2 workers:")
    # GCRA admits `burst` at once, then one more each 1/rate: burst + floor(rate x T) in T seconds.
    for name, port, allowed in [("per_client", per_client, lambda t: SOURCES * (5 + math.floor(2 * t))),
                                ("per_route", per_route, lambda t: 100 + math.floor(3000 * t))]:
        ratios = []
        for r in range(ROUNDS):
            # Every source's budget starts full again: wait out the longest refill (burst / rate).
            time.sleep(3.0)
            acc0, lim0 = sluice_counts(admin)
            res = flood(port, FLOOD_THREADS, 0, cpus="0,1")
            time.sleep(0.3)  # the last connections of the flood still queued are accepted (and counted)
            acc1, lim1 = sluice_counts(admin)
            admitted = (acc1[name] - acc0[name]) - (lim1 - lim0)
            expected = allowed(res["secs"])
            ratios.append(admitted / expected)
            print(f"  {name:10} round {r}: flood {res['flood']:,}/s for {res['secs']:.3f} s, "
                  f"admitted {admitted:,} of {acc1[name] - acc0[name]:,}; the rule allows {expected:,.0f} "
                  f"({admitted / expected:.4f})", flush=True)
        print(f"  {name:10} median admitted/allowed {statistics.median(ratios):.4f}", flush=True)
    sluice.kill()
    sluice.wait()


def main():
    tmp = tempfile.mkdtemp()
    procs = []
    (echo_port,) = free_ports(1)
    procs.append(subprocess.Popen(["taskset", "-c", "0", LOADGEN, "serve", "--listen", f"127.0.0.1:{echo_port}",
                                   "--mode", "echo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(echo_port)
    parts = os.environ.get("PARTS", "1,2").split(",")
    try:
        if "1" in parts:
            part1(tmp, echo_port, procs)
        if "2" in parts:
            part2(tmp, echo_port, procs)
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    main()
