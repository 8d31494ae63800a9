#!/usr/bin/env python3
"""veth: one-way streams through the proxy to a sink across a veth pair, with and without a rate cap.

Loopback is one situation; this is the second the bulk-efficiency defaults are measured on. The
script makes two network namespaces joined by a veth pair (10.77.0.1 in `sl-a`, 10.77.0.2 in
`sl-b`), runs the load generator's client and the proxy in `sl-a` (client → proxy over `sl-a`'s
loopback, proxy → sink over the veth), the sink in `sl-b`, and measures each variant interleaved:

- `veth`: the pair as it is (no cap);
- `veth + tbf RATE`: `tc qdisc ... tbf` on the proxy's side of the pair, a rate-capped link.

Per cell it prints medians over the rounds: Gbit/s, the proxy's CPU %, CPU % per Gbit/s, and for
sluice the most pipe capacity it held (`sluice_pipes_bytes`, sampled every 50 ms) and how many pipes
grew (— where the proxy does not export them). Proxy on CPU 1, client and sink on CPU 0, as `../shared/bench/compare` pins them.

    sudo LOADGEN_BIN=... python3 bench/veth.py --rounds 3 --rate 2gbit \\
        --variant grow target/release/sluice '' \\
        --variant lowat0 target/release/sluice 'socket: { notsent_lowat: 0 }' \\
        [--realm /path/to/realm]

Needs root (namespaces, tc). The namespaces are removed at the end. Python 3 standard library only.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, free_ports, stop_all, wait_port  # noqa: E402

LOADGEN = os.environ.get("LOADGEN_BIN", "/tmp/bench-loadgen-target/release/loadgen")
NS_A, NS_B = "sl-a", "sl-b"
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
SINK_PORT = 19500  # in sl-b, a namespace of its own: nothing else can hold it


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def make_namespaces():
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "sl-va", "netns", NS_A, "type", "veth", "peer", "name", "sl-vb", "netns", NS_B)
    sh("ip", "-n", NS_A, "addr", "add", f"{ADDR_A}/24", "dev", "sl-va")
    sh("ip", "-n", NS_B, "addr", "add", f"{ADDR_B}/24", "dev", "sl-vb")
    sh("ip", "-n", NS_A, "link", "set", "sl-va", "up")
    sh("ip", "-n", NS_B, "link", "set", "sl-vb", "up")


def remove_namespaces():
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)


def set_cap(rate):
    sh("tc", "qdisc", "del", "dev", "sl-va", "root", check=False)
    if rate:
        sh("tc", "qdisc", "add", "dev", "sl-va", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")


def wait_tcp(addr, port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing accepts on {addr}:{port} after {timeout} s")


def scrape(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r"^(sluice_pipes_\w+) (\S+)$", text, re.M)}


def one_cell(variant, tmp, nbytes, streams):
    """Runs one transfer through `variant`; returns (Gbit/s, proxy CPU %, peak pipe bytes, pipes grown)."""
    name, binary, route = variant
    port, admin = free_ports(2)
    if name == "realm":
        argv = [binary, "-l", f"127.0.0.1:{port}", "-r", f"{ADDR_B}:{SINK_PORT}"]
    else:
        cfg = os.path.join(tmp, f"{name}.yaml")
        with open(cfg, "w") as f:
            f.write(f"workers: 1\nlog: {{ access: false }}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nroutes:\n"
                    f"  - name: veth\n    listen: 127.0.0.1:{port}\n    upstreams: [\"{ADDR_B}:{SINK_PORT}\"]\n"
                    + (f"    {route}\n" if route else ""))
        argv = [binary, "-c", cfg]
    proxy = subprocess.Popen(["taskset", "-c", "1"] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        peak, stop = [None], threading.Event()

        def sample():
            while not stop.wait(0.05):
                seen = scrape(admin).get("sluice_pipes_bytes")
                if seen is not None:
                    peak[0] = max(peak[0] or 0.0, seen)

        sampler = threading.Thread(target=sample, daemon=True)
        if name != "realm":
            sampler.start()
        c0, t0 = cpu_seconds(proxy.pid), time.time()
        out = subprocess.run(["taskset", "-c", "0", LOADGEN, "throughput", "--bytes", nbytes, "--streams", str(streams),
                              "--direction", "up", "--target", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=600).stdout
        wall, cpu = time.time() - t0, cpu_seconds(proxy.pid) - c0
        stop.set()
        grown = scrape(admin).get("sluice_pipes_grown_total") if name != "realm" else None
        m = re.search(r"([\d.]+) Gbit/s.*errors=(\d+) integrity_errors=(\d+)", out)
        if not m:
            sys.exit(f"{name}: no result from the load generator:\n{out}")
        if int(m[3]):
            sys.exit(f"{name}: integrity errors: {out}")
        return float(m[1]), 100 * cpu / wall, peak[0], grown
    finally:
        proxy.kill()
        proxy.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", default="2gbit", help="tbf rate of the capped situation")
    ap.add_argument("--bytes", default="2g", help="bytes per stream (the capped situation moves a quarter)")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--variant", nargs=3, action="append", metavar=("NAME", "BIN", "ROUTE_YAML"), default=[])
    ap.add_argument("--realm")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    variants = [tuple(v) for v in a.variant] + ([("realm", a.realm, "")] if a.realm else [])
    if not variants:
        sys.exit("no --variant given")
    if not a.inside:
        make_namespaces()
        try:
            return subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, os.path.abspath(__file__), "--inside"]
                                  + sys.argv[1:]).returncode
        finally:
            remove_namespaces()
    tmp = tempfile.mkdtemp(prefix="veth-")
    sink = subprocess.Popen(["ip", "netns", "exec", NS_B, "taskset", "-c", "0", LOADGEN, "serve", "--listen",
                             f"{ADDR_B}:{SINK_PORT}", "--mode", "sink"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_tcp(ADDR_B, SINK_PORT)
        quarter = f"{max(1, int(a.bytes.rstrip('gG')) * 256)}m" if a.bytes[-1] in "gG" else a.bytes
        situations = [("veth", None, a.bytes), (f"veth + tbf {a.rate}", a.rate, quarter)]
        results = {}
        for r in range(a.rounds):
            for sit, rate, nbytes in situations:
                set_cap(rate)
                for v in variants:
                    res = one_cell(v, tmp, nbytes, a.streams)
                    results.setdefault((sit, v[0]), []).append(res)
                    print(f"round {r + 1} {sit:22} {v[0]:10} {res[0]:6.2f} Gbit/s proxy {res[1]:5.1f} %", flush=True)
        set_cap(None)
        print(f"\n{a.streams} stream(s) up, medians of {a.rounds}; CPU per Gbit/s = proxy CPU % / Gbit/s")
        print("| situation | variant | Gbit/s | proxy CPU | CPU % per Gbit/s | peak pipe bytes | pipes grown |")
        print("|---|---|---|---|---|---|---|")
        for (sit, name), rs in results.items():
            med = statistics.median
            peak = "—" if rs[0][2] is None else f"{med(x[2] for x in rs) / 1024:.0f} KiB"
            grown = "—" if rs[0][3] is None else f"{med(x[3] for x in rs):.0f}"
            print(f"| {sit} | {name} | {med(x[0] for x in rs):.2f} | {med(x[1] for x in rs):.1f} % | "
                  f"{med(x[1] / x[0] for x in rs):.2f} | {peak} | {grown} |")
    finally:
        stop_all([sink], tmp)


if __name__ == "__main__":
    sys.exit(main())
