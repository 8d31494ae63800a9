"""benchlib: what the measurement scripts in bench/ share — free ports, readiness waits, a process's CPU time.

Imported by the scripts beside it (`python3 bench/flood.py` puts bench/ on the import path).
Python 3 standard library only.
"""

import os
import shutil
import socket
import time


def free_ports(n):
    """n distinct ports the OS calls free now (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, timeout=10):
    """Returns once something accepts on 127.0.0.1:port; exits the script after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} (a child failed to start)")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all(procs, tmp):
    """Kills and reaps every child in `procs`, then removes the scratch directory `tmp`."""
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
