#!/usr/bin/env python3
"""percore: which core limits a loopback benchmark cell.

Runs one loadgen scenario through one proxy, pinned the way
../shared/bench/compare pins them (client and backend on CPU 0, the proxy on
CPU 1), and prints the request rate with each core's busy share (and its
softirq part), the proxy's own CPU, and voluntary context switches per
request (how often the proxy slept and had to be woken). compare gives the
medians; this tells you whether a cell is bound by the proxy's core or by the
client's, which decides what a proxy change can win there.

    LOADGEN_BIN=... SLUICE_BIN=target/release/sluice \\
        python3 bench/percore.py sluice rr 1k 50 3s [extra sluice flags...]

SLUICE_ROUTE='socket: { nodelay: false }' runs sluice from a generated config
with that extra route key instead of --listen/--upstream.
PROXY_CPU=0 puts the proxy on the client's core too, where only the total
work per byte or request counts.

proxy: direct | sluice | haproxy | haproxy-nosplice | realm (REALM_BIN); scenario: rr SIZE CONNS
DURATION, connrate - CONCURRENCY DURATION, or up|down BYTES STREAMS - (one-way
streams). Python 3 standard library only.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

LOADGEN = os.environ.get("LOADGEN_BIN", "/tmp/bench-loadgen-target/release/loadgen")
SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")


def free_port():
    """A port the OS calls free now (the children need a number to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BACKEND_PORT = free_port()
PROXY_PORT = next(p for p in iter(free_port, None) if p != BACKEND_PORT)

HAPROXY_CFG = """global
    nbthread 1
    maxconn 9000
    maxpipes 200
    {nosplice}
defaults
    mode tcp
    timeout connect 10s
    timeout client 600s
    timeout server 600s
    {splice}
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{upstream}
"""


def wait_port(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after 10 s")


def cpu_times():
    """cpuN -> [user, nice, system, idle, iowait, irq, softirq, ...] jiffies"""
    with open("/proc/stat") as f:
        return {l.split()[0]: list(map(int, l.split()[1:])) for l in f if l[:3] == "cpu" and l[3].isdigit()}


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def voluntary_switches(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/status") as f:
            total += sum(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt"))
    return total


def start_proxy(which, extra):
    if which == "sluice" and os.environ.get("SLUICE_ROUTE"):
        # A config file: one route on the usual ports with SLUICE_ROUTE's extra keys (YAML, indented 4).
        cfg = os.path.join(tempfile.mkdtemp(), "proxy.yaml")
        with open(cfg, "w") as f:
            f.write(f"workers: 1\nroutes:\n  - name: percore\n    listen: 127.0.0.1:{PROXY_PORT}\n"
                    f"    upstreams: [\"127.0.0.1:{BACKEND_PORT}\"]\n    {os.environ['SLUICE_ROUTE']}\n")
        argv = [SLUICE, "-c", cfg, *extra]
    elif which == "sluice":
        argv = [SLUICE, "--listen", f"127.0.0.1:{PROXY_PORT}", "--upstream", f"127.0.0.1:{BACKEND_PORT}",
                "--workers", "1", *extra]
    elif which in ("haproxy", "haproxy-nosplice"):
        splice = which == "haproxy"
        cfg = os.path.join(tempfile.mkdtemp(), "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(nosplice="" if splice else "nosplice", splice="option splice-auto" if splice
                                       else "", port=PROXY_PORT, upstream=BACKEND_PORT))
        argv = ["haproxy", "-db", "-f", cfg]
    elif which == "realm":
        argv = [os.environ.get("REALM_BIN", "realm"), "-l", f"127.0.0.1:{PROXY_PORT}", "-r",
                f"127.0.0.1:{BACKEND_PORT}"]
    else:
        sys.exit(f"unknown proxy {which}")
    env = dict(os.environ, TOKIO_WORKER_THREADS="1")
    cpu = os.environ.get("PROXY_CPU", "1")
    p = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(PROXY_PORT)
    return p


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    which, scenario, size, conns, secs, extra = *sys.argv[1:6], sys.argv[6:]
    mode = {"up": "sink", "down": "source"}.get(scenario, "echo")
    backend = subprocess.Popen(["taskset", "-c", "0", LOADGEN, "serve", "--listen", f"127.0.0.1:{BACKEND_PORT}",
                                "--mode", mode], stdout=subprocess.DEVNULL)
    proxy = None
    try:
        wait_port(BACKEND_PORT)
        target = BACKEND_PORT
        if which != "direct":
            proxy = start_proxy(which, extra)
            target = PROXY_PORT
        if scenario == "rr":
            args = ["rr", "--size", size, "--conns", conns, "--duration", secs, "--warmup", "0.5s"]
        elif scenario == "connrate":
            args = ["connrate", "--size", "1k", "--concurrency", conns, "--duration", secs, "--warmup", "0.5s"]
        else:
            args = ["throughput", "--bytes", size, "--streams", conns, "--direction", scenario]
        args += ["--target", f"127.0.0.1:{target}"]
        c0, t0 = cpu_times(), time.time()
        p0 = (proc_ticks(proxy.pid), voluntary_switches(proxy.pid)) if proxy else (0, 0)
        out = subprocess.run(["taskset", "-c", "0", LOADGEN, *args], capture_output=True, text=True).stdout
        c1, t1 = cpu_times(), time.time()
        p1 = (proc_ticks(proxy.pid), voluntary_switches(proxy.pid)) if proxy else (0, 0)
    finally:
        for p in (proxy, backend):
            if p:
                p.terminate()
                p.wait()
    r = json.loads(re.search(r"RESULT (\{.*\})", out).group(1))
    done = r.get("requests") or r.get("connections") or r.get("total_bytes", 0) / 65536
    rate = r.get("rps") or r.get("cps") or r.get("gbps") * 1000

    def busy(cpu):
        d = [b - a for a, b in zip(c0[cpu], c1[cpu])]
        return 100 * (sum(d) - d[3] - d[4]) / sum(d), 100 * d[6] / sum(d)

    (b0, s0), (b1, s1) = busy("cpu0"), busy("cpu1")
    tck = os.sysconf("SC_CLK_TCK")
    unit, per = ("Mbit/s", "64KiB") if "gbps" in r else ("/s", "req")
    print(f"{which:17} {' '.join(extra):22} {rate:9.0f}{unit} p99 {r.get('p99_us', 0):7.0f} us | "
          f"cpu0 {b0:5.1f}% (softirq {s0:4.1f}) cpu1 {b1:5.1f}% (softirq {s1:4.1f}) | "
          f"proxy cpu {100 * (p1[0] - p0[0]) / tck / (t1 - t0):5.1f}% sleeps/{per} {(p1[1] - p0[1]) / done:.3f}")


if __name__ == "__main__":
    main()
