#!/usr/bin/env python3
"""hello_rate: what routing by TLS server name costs, in connections per second.

Records a real ClientHello from `openssl s_client` (and uses a generated
post-quantum-sized one too), then runs examples/hello_rate (connect, send the
hello, read it back from an echo upstream, close; 8 loops) against, in turn:

  plain    sluice, a route without server_names (no hello is read)
  names    sluice, the same upstream behind a server_names route (peek + parse)
  haproxy  HAProxy with `tcp-request inspect-delay` and `req.ssl_sni` (if installed)

pinned the way ../shared/bench/compare pins (client and echo on CPU 0, the
proxy on CPU 1), interleaved, ROUNDS times; prints each run and the medians.

    LOADGEN_BIN=... SLUICE_BIN=target/release/sluice HELLO_RATE_BIN=target/release/examples/hello_rate \\
        python3 bench/hello_rate.py [ROUNDS] [DURATION]

Python 3 standard library only.
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import cpu_seconds, free_ports, stop_all, wait_port

LOADGEN = os.environ.get("LOADGEN_BIN", "../shared/bench/loadgen/target/release/loadgen")
SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")
HELLO_RATE = os.environ.get("HELLO_RATE_BIN", "target/release/examples/hello_rate")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DURATION = sys.argv[2] if len(sys.argv) > 2 else "4s"


def record_openssl_hello(path):
    """The first bytes `openssl s_client` sends, caught by a listener that never answers."""
    with socket.socket() as l:
        l.bind(("127.0.0.1", 0))
        l.listen(1)
        port = l.getsockname()[1]
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "app.example.com",
               "-alpn", "h2,http/1.1"]
        client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn, _ = l.accept()
        conn.settimeout(0.5)
        data = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        conn.close()
        client.kill()
        client.wait()
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def main():
    tmp = tempfile.mkdtemp()
    hello = os.path.join(tmp, "openssl.hello")
    have_openssl = shutil.which("openssl") is not None
    hellos = []
    if have_openssl:
        n = record_openssl_hello(hello)
        hellos.append((f"openssl s_client ({n} B)", ["--hello", hello]))
    hellos.append(("generated, 1,216-byte key share", ["--sni", "app.example.com"]))

    echo_port, plain_port, names_port, haproxy_port = free_ports(4)
    procs = []
    procs.append(subprocess.Popen(["taskset", "-c", "0", LOADGEN, "serve", "--listen", f"127.0.0.1:{echo_port}",
                                   "--mode", "echo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(echo_port)
    cfg = os.path.join(tmp, "proxy.yaml")
    with open(cfg, "w") as f:
        f.write(f"""workers: 1
log: {{ access: false }}
routes:
  - name: plain
    listen: 127.0.0.1:{plain_port}
    upstreams: ["127.0.0.1:{echo_port}"]
  - name: app
    listen: 127.0.0.1:{names_port}
    server_names: ["app.example.com"]
    upstreams: ["127.0.0.1:{echo_port}"]
  - name: other
    listen: 127.0.0.1:{names_port}
    server_names: ["*.example.org"]
    upstreams: ["127.0.0.1:{echo_port}"]
""")
    sluice = subprocess.Popen(["taskset", "-c", "1", SLUICE, "-c", cfg], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    procs.append(sluice)
    wait_port(plain_port)
    wait_port(names_port)
    targets = [("plain", plain_port, sluice.pid), ("names", names_port, sluice.pid)]
    if shutil.which("haproxy"):
        hcfg = os.path.join(tmp, "haproxy.cfg")
        with open(hcfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{haproxy_port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend app if {{ req.ssl_sni -i app.example.com }}
    default_backend other
backend app
    server s 127.0.0.1:{echo_port}
backend other
    server s 127.0.0.1:{echo_port}
""")
        haproxy = subprocess.Popen(["taskset", "-c", "1", "haproxy", "-db", "-f", hcfg], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        procs.append(haproxy)
        wait_port(haproxy_port)
        targets.append(("haproxy", haproxy_port, haproxy.pid))
    try:
        for label, args in hellos:
            results = {name: [] for name, _, _ in targets}
            cost = {name: [] for name, _, _ in targets}
            for r in range(ROUNDS):
                for name, port, pid in targets:
                    before, t0 = cpu_seconds(pid), time.time()
                    out = subprocess.run(["taskset", "-c", "0", HELLO_RATE, "--target", f"127.0.0.1:{port}",
                                          "--duration", DURATION] + args, capture_output=True, text=True, check=True)
                    cpu, wall = cpu_seconds(pid) - before, time.time() - t0
                    cps = float(out.stdout.split()[1])
                    errors = int(out.stdout.split("errors")[1].split()[0])
                    results[name].append(cps)
                    us_per_conn = cpu / max(cps * wall, 1) * 1e6
                    cost[name].append(us_per_conn)
                    print(f"[{label}] round {r} {name}: {out.stdout.strip()}  proxy cpu {100 * cpu / wall:.0f}% "
                          f"= {us_per_conn:.1f} us/conn", flush=True)
                    if errors:
                        print(f"  {errors} errors!", flush=True)
            med = {n: statistics.median(v) for n, v in results.items()}
            us = {n: statistics.median(v) for n, v in cost.items()}
            print(f"[{label}] medians proxy CPU per connection: "
                  + ", ".join(f"{n} {m:.1f} us" for n, m in us.items())
                  + f"; names/plain {us['names'] / us['plain']:.3f}")
            line = ", ".join(f"{n} {m:,.0f}" for n, m in med.items())
            print(f"[{label}] medians conn/s: {line}; names/plain {med['names'] / med['plain']:.3f}"
                  + (f", names/haproxy {med['names'] / med['haproxy']:.3f}" if "haproxy" in med else ""))
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    main()
