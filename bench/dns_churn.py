#!/usr/bin/env python3
"""dns_churn: sluice's memory under DNS churn (issue 14, item 9).

Starts sluice with WORKERS workers and one route whose only upstream is the
name `app`, resolved from a SLUICE_HOSTS_FILE every 1ms (the smallest
resolve_interval), then moves `app` to a new loopback address CHANGES times
(127.1.0.1, 127.1.0.2, ...; a second round uses 127.2.x.y). Each address gets
a backend listening on it (this script, one address at a time), and each
change is followed by SESSIONS full sessions through the proxy that reached
the new address (the backend answers with the address it was reached on, so
the script knows when sluice has picked the change up). So every address
costs what a real one costs: connect attempts, sessions, connect-time, RTT
and retransmit histograms, spread over the workers by SO_REUSEPORT.

It prints VmRSS (and VmHWM) of the sluice process every 100 changes, after
the round, after one /metrics scrape, and, with --wait, again after waiting
that many seconds (to let upstream reclamation happen) and after the next round.
--pace spreads the changes out (at least that many seconds per change), so a
churn can outlast the metrics retention (5 minutes) as a real one would.

    SLUICE_BIN=target/release/sluice python3 bench/dns_churn.py \\
        [--changes 1000] [--workers 4] [--sessions 8] [--rounds 1] [--wait SECONDS] [--pace SECONDS]

Loopback only; Python 3 standard library only.
"""

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")


def free_port():
    """A port the OS calls free now (the children need a number to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """(VmRSS, VmHWM) of `pid` in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    return int(fields["VmRSS"]), int(fields["VmHWM"])


def address(round_no, i):
    """The i-th loopback address of a round: 127.<round>.<hi>.<lo>, lo in 1..=250."""
    return f"127.{round_no}.{i // 250}.{i % 250 + 1}"


def listener(ip, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(64)
    return s


def session(proxy, backends):
    """One session through the proxy: the backend that gets it answers with the
    address it was reached on. Returns that address, or None if the proxy
    closed us (its upstream refused, e.g. a stale address)."""
    client = socket.create_connection(proxy, timeout=5)
    try:
        ready, _, _ = select.select(backends, [], [], 2.0)
        if ready:
            conn, _ = ready[0].accept()
            with conn:
                conn.sendall(conn.getsockname()[0].encode())
        got = b""
        while True:
            chunk = client.recv(64)
            if not chunk:
                break
            got += chunk
        return got.decode() or None
    except (ConnectionError, socket.timeout):
        return None
    finally:
        client.close()


def write_hosts(path, ip):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{ip} app\n")
    os.replace(tmp, path)


def churn(pid, proxy, hosts, port, round_no, changes, per_change, pace, previous):
    """Moves `app` through `changes` new addresses; returns the last backend listener."""
    start = time.monotonic()
    for i in range(changes):
        time.sleep(max(0.0, start + i * pace - time.monotonic()))
        ip = address(round_no, i)
        new = listener(ip, port)
        write_hosts(hosts, ip)
        backends = [new] + ([previous] if previous else [])
        confirmed = 0
        deadline = time.monotonic() + 30
        while confirmed < per_change:
            if time.monotonic() > deadline:
                sys.exit(f"change {i}: {ip} never reached through the proxy")
            if session(proxy, backends) == ip:
                confirmed += 1
        if previous:
            previous.close()
        previous = new
        if (i + 1) % 100 == 0:
            rss, hwm = rss_kib(pid)
            print(f"  round {round_no}: {i + 1:5} changes  {time.monotonic() - start:6.1f}s  "
                  f"VmRSS {rss / 1024:8.1f} MiB  VmHWM {hwm / 1024:8.1f} MiB", flush=True)
    return previous


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=8, help="sessions per address")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait after each round")
    ap.add_argument("--pace", type=float, default=0, help="at least this many seconds per change")
    args = ap.parse_args()

    port, proxy_port, admin_port = free_port(), free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="dns-churn-")
    hosts = os.path.join(tmp, "hosts")
    write_hosts(hosts, "127.0.0.1")
    cfg = os.path.join(tmp, "proxy.yaml")
    with open(cfg, "w") as f:
        f.write(f"""workers: {args.workers}
admin:
  listen: 127.0.0.1:{admin_port}
routes:
  - name: churn
    listen: 127.0.0.1:{proxy_port}
    upstreams: ["app:{port}"]
    resolve_interval: 1ms
    retries: 0
""")
    log = open(os.path.join(tmp, "sluice.log"), "w")
    env = dict(os.environ, SLUICE_HOSTS_FILE=hosts, RUST_LOG="warn")
    proc = subprocess.Popen([SLUICE, "-c", cfg], stdout=log, stderr=log, env=env)
    try:
        proxy = ("127.0.0.1", proxy_port)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", admin_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        rss, _ = rss_kib(proc.pid)
        print(f"{SLUICE}: {args.workers} workers, {args.changes} changes x {args.rounds} round(s), "
              f"{args.sessions} sessions per address, pace {args.pace}s, wait {args.wait}s")
        print(f"  at start: VmRSS {rss / 1024:.1f} MiB", flush=True)
        previous = None
        for r in range(1, args.rounds + 1):
            previous = churn(proc.pid, proxy, hosts, port, r, args.changes, args.sessions, args.pace, previous)
            time.sleep(1)
            rss, hwm = rss_kib(proc.pid)
            print(f"  after round {r}: VmRSS {rss / 1024:.1f} MiB  VmHWM {hwm / 1024:.1f} MiB", flush=True)
            url = f"http://127.0.0.1:{admin_port}/metrics"
            body = urllib.request.urlopen(url, timeout=120).read()
            series = sum(1 for l in body.splitlines() if l.startswith(b"sluice_upstream_sessions_total{"))
            rss, hwm = rss_kib(proc.pid)
            print(f"  after one /metrics scrape ({len(body) / 1024:.0f} KiB, {series} upstream series): "
                  f"VmRSS {rss / 1024:.1f} MiB  VmHWM {hwm / 1024:.1f} MiB", flush=True)
            if args.wait:
                time.sleep(args.wait)
                body = urllib.request.urlopen(url, timeout=120).read()
                series = sum(1 for l in body.splitlines() if l.startswith(b"sluice_upstream_sessions_total{"))
                rss, hwm = rss_kib(proc.pid)
                print(f"  {args.wait:.0f}s later, scraped again ({series} upstream series): "
                      f"VmRSS {rss / 1024:.1f} MiB  VmHWM {hwm / 1024:.1f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
