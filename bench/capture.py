#!/usr/bin/env python3
"""capture: what nftables capture costs sluice, against a plain route, in one run.

Issue 29's measure: capture (an nftables `redirect` to an `original_destination: true` route) must
cost at most one extra syscall per connection and nothing per byte. The script makes a network
namespace (`sl-cap`, loopback only), runs the load generator's echo and sink backends and one sluice
with two routes in it:

- `plain`: `127.0.0.1:P` -> the backend, the usual route;
- `capture`: `original_destination: true` on `127.0.0.1:C`, reached by clients that dial
  `127.0.0.2:<backend port>` and are redirected by `nat output` (`ip daddr 127.0.0.2 redirect to :C`);
  sluice's own connections carry `socket.mark` and are exempt (`meta mark ... return`).

The nat table exists for both, so conntrack runs for both: the difference is the capture itself.
Interleaved per round: connrate (8 closed-loop workers, 1 KiB echo) and a 1 GiB upload, each through
both routes; then a paced connrate (500 conn/s, 4 s) through each under `strace -c -f`, for syscalls
per connection. Proxy on CPU 1, client and backends on CPU 0, as `../shared/bench/compare` pins them.

    sudo LOADGEN_BIN=... python3 bench/capture.py --sluice target/release/sluice --rounds 3

Needs root (a namespace, nftables) and strace. Python 3 standard library only.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, free_ports, stop_all, wait_port  # noqa: E402

LOADGEN = os.environ.get("LOADGEN_BIN", "/tmp/bench-loadgen-target/release/loadgen")
NS = "sl-cap"
MARK = 0x77
CAPTURED_IP = "127.0.0.2"
LOG = []  # sluice's log file, once it runs


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def rules(capture_port):
    return f"""table ip slcap {{
  chain out {{
    type nat hook output priority -100; policy accept;
    meta mark {MARK} return
    ip daddr {CAPTURED_IP} tcp dport != {capture_port} redirect to :{capture_port}
  }}
}}
"""


def loadgen(*args, timeout=600):
    run = sh("taskset", "-c", "0", LOADGEN, *args, timeout=timeout, check=False)
    if run.returncode:
        warned = [line for line in open(LOG[0]) if " WARN " in line or " ERROR " in line] if LOG else []
        sys.exit(f"loadgen {' '.join(args)} failed:\n{run.stdout}{run.stderr}sluice:\n{''.join(warned[-5:])}")
    return run.stdout


def inside(args):
    """Runs in the namespace: backends, sluice, the cells."""
    sh("ip", "link", "set", "lo", "up")
    tmp = tempfile.mkdtemp(prefix="slcap")
    echo, sink, plain_echo, plain_sink, cap, admin = free_ports(6)
    sh("nft", "-f", "-", input=rules(cap))
    procs = []
    try:
        for port, mode in ((echo, "echo"), (sink, "sink")):
            procs.append(subprocess.Popen(["taskset", "-c", "0", LOADGEN, "serve", "--listen", f"0.0.0.0:{port}",
                                           "--mode", mode], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
        cfg = os.path.join(tmp, "capture.yaml")
        with open(cfg, "w") as f:
            f.write(f"""workers: 1
log: {{ access: false }}
admin: {{ listen: 127.0.0.1:{admin} }}
routes:
  - {{ name: plain-echo, listen: 127.0.0.1:{plain_echo}, upstreams: ["127.0.0.1:{echo}"] }}
  - {{ name: plain-sink, listen: 127.0.0.1:{plain_sink}, upstreams: ["127.0.0.1:{sink}"] }}
  - name: capture
    listen: 127.0.0.1:{cap}
    original_destination: true
    socket: {{ mark: {MARK} }}
""")
        LOG.append(os.path.join(tmp, "sluice.log"))
        log = open(LOG[0], "w")
        proxy = subprocess.Popen(["taskset", "-c", "1", args.sluice, "-c", cfg],
                                 stdout=subprocess.DEVNULL, stderr=log)
        procs.append(proxy)
        wait_port(cap)
        targets = {
            "plain": (f"127.0.0.1:{plain_echo}", f"127.0.0.1:{plain_sink}"),
            "capture": (f"{CAPTURED_IP}:{echo}", f"{CAPTURED_IP}:{sink}"),
        }
        rows = {k: {"cps": [], "us_per_conn": [], "gbps": [], "cpu_per_gbps": []} for k in targets}
        for r in range(args.rounds):
            for name, (e, s) in targets.items():
                c0, t0 = cpu_seconds(proxy.pid), time.time()
                out = loadgen("connrate", "--target", e, "--size", "1k", "--concurrency", "8",
                              "--duration", args.duration, "--warmup", "1s")
                cpu, wall = cpu_seconds(proxy.pid) - c0, time.time() - t0
                m = re.search(r"([\d.]+) conn/s", out)
                errs = re.search(r"errors=(\d+)", out)
                if not m or (errs and int(errs[1])):
                    sys.exit(f"{name}: connrate failed:\n{out}")
                cps = float(m[1])
                rows[name]["cps"].append(cps)
                # CPU over the whole call (warm-up included) per connection made in it.
                rows[name]["us_per_conn"].append(1e6 * cpu / (cps * wall))
                c0, t0 = cpu_seconds(proxy.pid), time.time()
                out = loadgen("throughput", "--target", s, "--bytes", args.bytes, "--direction", "up")
                cpu, wall = cpu_seconds(proxy.pid) - c0, time.time() - t0
                m = re.search(r"([\d.]+) Gbit/s.*errors=(\d+) integrity_errors=(\d+)", out)
                if not m or int(m[2]) or int(m[3]):
                    sys.exit(f"{name}: stream failed:\n{out}")
                rows[name]["gbps"].append(float(m[1]))
                rows[name]["cpu_per_gbps"].append(100 * cpu / wall / float(m[1]))
                print(f"round {r + 1} {name}: {cps:,.0f} conn/s, {float(m[1]):.2f} Gbit/s", flush=True)
        calls = {}
        for name, (e, _) in targets.items():
            trace = os.path.join(tmp, f"{name}.strace")
            st = subprocess.Popen(["strace", "-c", "-f", "-o", trace, "-p", str(proxy.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # strace says on stderr when it holds every thread: count from then on.
            if "attached" not in st.stderr.readline():
                sys.exit("strace could not attach to sluice")
            out = loadgen("connrate", "--target", e, "--size", "1k", "--rate", "500", "--duration", "4s",
                          "--warmup", "0s")
            st.send_signal(2)
            st.wait(timeout=30)
            made = re.search(r"([\d.]+) conn/s", out)
            total = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", open(trace).read(), re.M)
            calls[name] = int(total[1]) / (float(made[1]) * 4) if made and total else float("nan")
        print(f"\ncapture vs plain, one sluice worker, {args.rounds} rounds, medians "
              f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC):")
        print("| route | conn/s | proxy CPU µs per connection | syscalls per connection (paced 500/s, strace) "
              "| upload Gbit/s | proxy CPU % per Gbit/s |")
        print("|---|---|---|---|---|---|")
        for name, v in rows.items():
            med = {k: statistics.median(x) for k, x in v.items()}
            print(f"| {name} | {med['cps']:,.0f} | {med['us_per_conn']:.1f} | {calls[name]:.1f} | "
                  f"{med['gbps']:.2f} | {med['cpu_per_gbps']:.2f} |")
    finally:
        stop_all(procs, tmp)
        sh("nft", "delete", "table", "ip", "slcap", check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--bytes", default="1g")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        return inside(args)
    args.sluice = os.path.abspath(args.sluice)
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "add", NS)
    try:
        cmd = ["ip", "netns", "exec", NS, sys.executable, os.path.abspath(__file__), "--inside",
               "--sluice", args.sluice, "--rounds", str(args.rounds), "--duration", args.duration,
               "--bytes", args.bytes]
        subprocess.run(cmd, check=True)
    finally:
        sh("ip", "netns", "del", NS, check=False)


if __name__ == "__main__":
    main()
