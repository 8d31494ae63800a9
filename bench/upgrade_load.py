#!/usr/bin/env python3
"""upgrade_load: hitless upgrades under load, against a plain restart and HAProxy's `-x` reload.

Runs one load against a proxy while the proxy is replaced again and again, and
counts what the clients saw. Three scenarios, each with fresh backends and
proxy (pick with --only):

  upgrade  sluice, `control_socket` set; --upgrades times (default 100): the
           config's `workers:` is rewritten (--workers, default 1,4,2,3 in
           turn) and `sluice -c cfg --takeover` is started in the background;
           the old process drains its sessions and exits by itself
  restart  sluice, a plain restart --restarts times (default 15): SIGTERM
           (`drain_grace: 0s`, `drain_timeout: 1s`), wait for the exit, start
           the new one (same alternating `workers:`)
  haproxy  HAProxy (if installed), `stats socket ... expose-fd listeners`,
           --haproxy-reloads times (default: as many as upgrades):
           `haproxy -db -f cfg -x SOCK -sf OLDPID` (`nbthread` alternating)

The load, the same for all three:
  * connection rate: --clients processes (default 2) open --rate new
    connections per second in all (default 3,000), open loop (connection i is
    due at start + i/rate, at most 1,000 in flight per process): connect, send
    64 bytes, half-close, read the echo to EOF, compare every byte. Backend:
    `loadgen serve --mode echo` (../shared/bench). Every failure is classified:
    refused (ECONNREFUSED), reset (ECONNRESET/EPIPE), timeout (not done within
    5 s), integrity (short, extra or changed bytes, or EOF before the echo),
    local (the client ran out of local ports; not the proxy's doing).
  * long streams: --streams slots (default 20) each run one stream after another
    (the slots start staggered over one stream's life). A stream sends a header
    (id, seed, length) and then --stream-rate bytes/s (default 1 MiB/s, 20 ms
    ticks, so it is never quiet for the drain's 1 s idle cut) of a seeded
    pseudo-random stream for --stream-life seconds (default 40: about 25
    upgrades); the stream server (in this script) checks every byte and answers
    each chunk with as many bytes of a second seeded stream, which the client
    checks; at the end the server reports its verdict and the client expects
    a clean EOF. A stream is ok only if every byte both ways was right and the
    session ended with FIN.
  * "every long stream completes on the process that started it": each proxy
    process writes its own log file; the access line of the session (sluice:
    `event=end route=streams peer=...:PORT ... reason=clean`; HAProxy: a
    `log-format` line with the client port, bytes both ways and the
    termination state `--`) is matched to the client's stream by port and
    start time, must show exactly the stream's bytes, and must be in the log
    of a process that was replaced while the stream ran (a session cannot
    move between processes: the log of the process that accepted it is the
    only one that can end it).

Upgrade to accepting: for sluice, from starting `sluice --takeover` to the
timestamp of its `running: generation G` log line (its workers run on the
listening sockets; until the handoff both processes accept from the same
queues); the time to `the predecessor stopped accepting` (handoff complete)
is shown too. For HAProxy, from starting the new haproxy to its stats socket
answering `show info` with the new pid (it binds that socket once it runs).
For a restart, from the SIGTERM to the new process's `running` line.

The kernel's ListenOverflows/ListenDrops (/proc/net/netstat) are read before
and after each scenario. Run as root with `unshare` available, the script
re-runs itself in a private network namespace (only loopback exists there):
the counters and the ephemeral ports are then this run's alone, not shared
with whatever else runs on the machine (--no-netns to skip).

    cargo build --release
    LOADGEN_BIN=../shared/bench/loadgen/target/release/loadgen SLUICE_BIN=target/release/sluice \\
        python3 bench/upgrade_load.py [--upgrades 100] [--restarts 15] [--only upgrade,restart,haproxy]

Prints a line per replacement and per failure, then one table. Exit status 1
if the upgrade scenario saw any refused, reset, timeout, integrity error or
broken stream. Every child is killed at the end (and dies with this script:
PR_SET_PDEATHSIG). Python 3 standard library only.
"""

import argparse
import collections
import ctypes
import datetime
import errno
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

LOADGEN = os.environ.get("LOADGEN_BIN", "../shared/bench/loadgen/target/release/loadgen")
SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")
HAPROXY = os.environ.get("HAPROXY_BIN", "haproxy")

MSG_LEN = 64  # bytes per echo connection
CONN_TIMEOUT = 5.0  # a connection not done by then is a timeout
MAX_INFLIGHT = 1000  # per client process
STREAM_HDR = struct.Struct("!4sIQQ")  # magic, stream id, seed, length
TRAILER = struct.Struct("!4sQ")  # b"OKAY" + bytes checked, or b"BAD!" + offset of the first wrong byte
TICK = 0.02  # a stream sends every 20 ms
RING = 1_000_003  # the pseudo-random ring (a prime, so a stream's offset pattern never lines up with chunks)
MAX_CHUNK = 1 << 17
_RING = None


def ring():
    global _RING
    if _RING is None:
        r = random.Random(0x5EED).randbytes(RING)
        _RING = r + r[:MAX_CHUNK]
    return _RING


def gen(seed, pos, n):
    """Bytes [pos, pos+n) of the stream with this seed (n <= MAX_CHUNK)."""
    start = (seed * 7919 + pos) % RING
    return ring()[start:start + n]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
CHILDREN = []  # every Popen, killed at the end


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed if this script dies


def spawn(cmd, out_path, err_path=None):
    """Starts cmd with stdout (and stderr) to files; it dies with this script."""
    out = open(out_path, "ab")
    err = open(err_path, "ab") if err_path else subprocess.STDOUT
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, preexec_fn=_die_with_parent)
    out.close()
    if err_path:
        err.close()
    CHILDREN.append(p)
    return p


def kill_all():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in CHILDREN:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


PROC_CPU = {}  # pid -> CPU seconds, for the processes reaped with reap()


def reap(p, timeout):
    """Waits (bounded) for p with wait4, so its CPU time is known; its exit code, or None."""
    deadline = time.monotonic() + timeout
    while p.returncode is None:
        try:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        except ChildProcessError:
            p.poll()
            break
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            PROC_CPU[p.pid] = ru.ru_utime + ru.ru_stime
            break
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    return p.returncode


def self_cmd(*args):
    return [sys.executable, os.path.abspath(__file__), *map(str, args)]


# ---------------------------------------------------------------- machine

def pick_ports(n):
    """n distinct free ports below the ephemeral range (so no client connection can take
    one between runs), held open together until all are chosen."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        low = 32768
    held, ports = [], []
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        held.append(s)
        ports.append(port)
        if len(ports) == n:
            break
    for s in held:
        s.close()
    if len(ports) < n:
        raise SystemExit("not enough free ports below the ephemeral range")
    return ports


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def kernel_counters():
    """TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters of this network namespace."""
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            prefix = names.split(":")[0]
            for k, v in zip(names.split()[1:], values.split()[1:]):
                out[f"{prefix}.{k}"] = int(v)
    return out


def cpu_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4] - v[7], v[7]  # busy (all but idle, iowait, steal), steal


def proc_cpu():
    """pid -> (comm, utime+stime jiffies) of every process on the machine."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        fields = s[s.rindex(")") + 2:].split()
        out[int(pid)] = (comm, int(fields[11]) + int(fields[12]))
    return out


class Load:
    """How busy the machine was, and how much of that was not this script."""

    def __init__(self):
        self.busy0, self.steal0 = cpu_jiffies()
        self.t0 = os.times()
        self.procs0 = proc_cpu()
        self.wall0 = time.monotonic()

    def finish(self):
        busy1, steal1 = cpu_jiffies()
        t1 = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        wall = time.monotonic() - self.wall0
        ncpu = os.cpu_count() or 1
        ours = sum(b - a for a, b in zip(self.t0[:4], t1[:4]))
        busy = (busy1 - self.busy0) / hz
        others = []
        me = os.getpid()
        for pid, (comm, j) in proc_cpu().items():
            if pid in self.procs0 and pid != me:
                d = (j - self.procs0[pid][1]) / hz
                if d / wall >= 0.02:
                    others.append((round(100 * d / wall), comm, pid))
        others.sort(reverse=True)
        return {
            "wall_s": round(wall, 1),
            "machine_busy_pct": round(100 * busy / wall / ncpu),  # of all cores
            "ours_pct_of_one_core": round(100 * ours / wall),
            "others_pct_of_one_core": round(100 * max(0.0, busy - ours) / wall),
            "others_top": others[:5],
            "steal_pct_of_one_core": round(100 * (steal1 - self.steal0) / hz / wall),
            "loadavg": open("/proc/loadavg").read().split()[:3],
        }


# ---------------------------------------------------------------- logs

TS_RE = re.compile(rb"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def log_ts(line):
    m = TS_RE.match(line)
    if not m:
        return None
    d = datetime.datetime.strptime(m.group(1).decode(), "%Y-%m-%dT%H:%M:%S.%f")
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


class Tail:
    """Reads a growing log file line by line."""

    def __init__(self, path):
        self.path, self.f, self.rest = path, None, b""

    def lines(self):
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except OSError:
                return []
        data = self.rest + self.f.read()
        *done, self.rest = data.split(b"\n")
        return done

    def close(self):
        if self.f:
            self.f.close()


def wait_lines(path, wanted, proc, timeout):
    """Waits until every pattern of `wanted` (name -> bytes) appeared in the log at `path`;
    returns name -> (timestamp of the line, line), with what it found if proc exited or time ran out."""
    tail, found = Tail(path), {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for line in tail.lines():
                for name, pat in wanted.items():
                    if name not in found and pat in line:
                        found[name] = (log_ts(line), line.decode(errors="replace"))
            if len(found) == len(wanted) or proc.poll() is not None:
                for line in tail.lines():  # the last lines before an exit
                    for name, pat in wanted.items():
                        if name not in found and pat in line:
                            found[name] = (log_ts(line), line.decode(errors="replace"))
                return found
            time.sleep(0.002)
        return found
    finally:
        tail.close()


ACCESS_RE = re.compile(
    rb"event=end session=\d+ route=(\S+) client=\S+ peer=[^ ]*:(\d+) upstream=\S+ bytes_up=(\d+) bytes_down=(\d+)"
    rb" .* duration_ms=([\d.]+) reason=(\S+) aborted=(\S+)")


def parse_sluice_log(path):
    """What one sluice process logged: lifecycle times, access lines, warnings."""
    out = {"streams": [], "echo": collections.Counter(), "warnings": [], "stopped": None, "replaced": None,
           "running": None, "dropped_lines": None}
    with open(path, "rb") as f:
        for line in f:
            if b"sluice::access" in line:
                m = ACCESS_RE.search(line)
                if not m:
                    continue
                route, port, up, down, dur, reason, _ = m.groups()
                if route == b"echo":
                    out["echo"][reason.decode()] += 1
                else:
                    end = log_ts(line)
                    out["streams"].append({"port": int(port), "start": end - float(dur) / 1000, "end": end,
                                           "up": int(up), "down": int(down), "ok": reason == b"clean",
                                           "reason": reason.decode()})
                continue
            text = line.decode(errors="replace").rstrip()
            if " serves now: " in text:
                out["replaced"] = log_ts(line)
            elif "] stopped: " in text:
                out["stopped"] = text.split("] ", 1)[1]
            elif " running: generation " in text:
                out["running"] = log_ts(line)
            elif "log lines were dropped" in text:
                out["dropped_lines"] = text
            elif " WARN " in text or " ERROR " in text or "panicked" in text:
                out["warnings"].append(text)
    return out


HAPROXY_LOG_RE = re.compile(rb"^STREAM (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\S+)")


def parse_haproxy_log(path):
    out = {"streams": [], "warnings": []}
    with open(path, "rb") as f:
        for line in f:
            m = HAPROXY_LOG_RE.match(line)
            if m:
                port, ts, ms, tt, up, down, state = m.groups()
                start = int(ts) + int(ms) / 1000
                out["streams"].append({"port": int(port), "start": start, "end": start + int(tt) / 1000,
                                       "up": int(up), "down": int(down), "ok": state == b"--",
                                       "reason": state.decode()})
            elif b"[ALERT]" in line:
                out["warnings"].append(line.decode(errors="replace").rstrip())
    return out


# ---------------------------------------------------------------- backends and clients (child roles)

def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def role_stream_server(port, anomalies_path):
    """Checks each stream's bytes, answers each chunk with as many bytes of the down
    stream, then its verdict; notes anything odd in anomalies_path."""
    lock = threading.Lock()
    notes = open(anomalies_path, "a", buffering=1)

    def note(msg):
        with lock:
            notes.write(f"{time.time():.3f} {msg}\n")

    def handle(c):
        sid = "?"
        try:
            c.settimeout(30)
            hdr = recv_exact(c, STREAM_HDR.size)
            if len(hdr) < STREAM_HDR.size:
                if hdr:  # (no byte at all: a probe that only checked the port)
                    note(f"stream ?: {len(hdr)}-byte header, then EOF")
                return
            magic, sid, seed, n = STREAM_HDR.unpack(hdr)
            if magic != b"ULS1":
                note(f"stream ?: bad magic {magic!r}")
                return
            got, bad_at = 0, -1
            while got < n:
                data = c.recv(min(MAX_CHUNK, n - got))
                if not data:
                    note(f"stream {sid}: EOF after {got} of {n} bytes")
                    return
                if bad_at < 0 and data != gen(seed, got, len(data)):
                    want = gen(seed, got, len(data))
                    bad_at = got + next(i for i in range(len(data)) if data[i] != want[i])
                    note(f"stream {sid}: wrong byte at {bad_at}")
                c.sendall(gen(seed + 1, got, len(data)))
                got += len(data)
            c.sendall(TRAILER.pack(b"OKAY" if bad_at < 0 else b"BAD!", got if bad_at < 0 else bad_at))
            rest = c.recv(1)
            if rest:
                note(f"stream {sid}: bytes after the end")
        except OSError as e:
            note(f"stream {sid}: {type(e).__name__} {e}")
        finally:
            c.close()

    ring()
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(1024)
    while True:
        c, _ = l.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def role_stream_client(port, slots, rate, life, stop_path, out_path, run_seed):
    """`slots` threads, each running one verified stream after another until stop_path exists."""
    ring()
    records, lock = [], threading.Lock()
    n = int(rate * life)
    per_tick = max(1, int(rate * TICK))
    t_start = time.monotonic()

    def one(slot, k):
        sid = slot * 100000 + k
        seed = (run_seed * 1000003 + sid) % (1 << 62)
        rec = {"id": sid, "slot": slot, "port": None, "t_connect": time.time(), "t_end": None, "status": None,
               "detail": "", "up": 0, "down": 0}
        s = None
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            rec["t_connect"] = time.time()
            rec["port"] = s.getsockname()[1]
            s.settimeout(10)
            s.sendall(STREAM_HDR.pack(b"ULS1", sid, seed, n))
            t0 = time.monotonic()
            ticks = 0
            while rec["up"] < n:
                k_bytes = min(per_tick, n - rec["up"])
                s.sendall(gen(seed, rec["up"], k_bytes))
                rec["up"] += k_bytes
                while rec["down"] < rec["up"]:
                    data = s.recv(min(MAX_CHUNK, rec["up"] - rec["down"]))
                    if not data:
                        rec["status"], rec["detail"] = "integrity", f"EOF after {rec['down']} of {n} bytes down"
                        return rec
                    if data != gen(seed + 1, rec["down"], len(data)):
                        rec["status"], rec["detail"] = "integrity", f"wrong bytes down at {rec['down']}"
                        return rec
                    rec["down"] += len(data)
                ticks += 1
                delay = t0 + ticks * TICK - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            tr = recv_exact(s, TRAILER.size)
            if len(tr) < TRAILER.size:
                rec["status"], rec["detail"] = "integrity", "EOF before the verdict"
                return rec
            verdict, value = TRAILER.unpack(tr)
            if verdict != b"OKAY" or value != n:
                rec["status"], rec["detail"] = "integrity", f"server: {verdict!r} {value}"
                return rec
            s.shutdown(socket.SHUT_WR)
            rest = s.recv(1)
            if rest:
                rec["status"], rec["detail"] = "integrity", "bytes after the verdict"
                return rec
            rec["status"] = "ok"
        except ConnectionRefusedError:
            rec["status"] = "refused"
        except (ConnectionResetError, BrokenPipeError) as e:
            rec["status"], rec["detail"] = "reset", f"{type(e).__name__} after {rec['up']} up, {rec['down']} down"
        except socket.timeout:
            rec["status"], rec["detail"] = "timeout", f"after {rec['up']} up, {rec['down']} down"
        except OSError as e:
            rec["status"], rec["detail"] = "other", f"{e}"
        finally:
            rec["t_end"] = time.time()
            if s:
                s.close()
        return rec

    def slot_loop(slot):
        delay = t_start + slot * life / slots - time.monotonic()
        while delay > 0 and not os.path.exists(stop_path):
            time.sleep(min(delay, 0.1))
            delay = t_start + slot * life / slots - time.monotonic()
        k = 0
        while not os.path.exists(stop_path):
            rec = one(slot, k)
            with lock:
                records.append(rec)
            k += 1
            if rec["status"] != "ok":
                time.sleep(0.1)

    threads = [threading.Thread(target=slot_loop, args=(i,)) for i in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out_path, "w") as f:
        json.dump({"streams": records, "bytes_per_stream": n}, f)


ERRNO_CLASS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.EPIPE: "reset",
               errno.ENOTCONN: "reset", errno.ETIMEDOUT: "timeout", errno.EADDRNOTAVAIL: "local",
               errno.EADDRINUSE: "local"}


def role_conn_client(port, rate, stop_path, out_path, idx):
    """Open loop: connection i is due at start + i/rate; connect, send 64 bytes and
    half-close, read the echo to EOF, compare it. Counts every outcome."""
    ep = select.epoll()
    addr = ("127.0.0.1", port)
    pattern = random.Random(idx).randbytes(4096)
    conns = {}  # fd -> [sock, msg, t_due, state (0 connecting, 1 reading, 3 done), echo so far, t_started]
    order = collections.deque()  # entries in start order
    counts = collections.Counter()
    lat = []  # from the scheduled start (open loop: includes any lag of this client)
    lat_started = []  # from the connect() call
    failures = []
    slow = []  # (wall time done, seconds from the scheduled start) of those over 0.2 s
    per_second = collections.Counter()
    late = 0
    t0 = time.monotonic()
    w0 = time.time()
    i = 0
    stopping = False
    next_stop_check = 0.0
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT

    def fail(entry, cls, detail=""):
        counts[cls] += 1
        if len(failures) < 200000:
            failures.append((round(w0 + (time.monotonic() - t0), 4), cls, detail))
        finish(entry)

    def finish(entry):
        entry[3] = 3
        s = entry[0]
        conns.pop(s.fileno(), None)
        s.close()

    def done_ok(entry):
        now = time.monotonic()
        counts["ok"] += 1
        lat.append(now - entry[2])
        lat_started.append(now - entry[5])
        if now - entry[2] > 0.2:
            counts["slow_200ms"] += 1
            if len(slow) < 50000:
                slow.append((round(w0 + (now - t0), 4), round(now - entry[2], 4)))
        per_second[int(now - t0)] += 1
        finish(entry)

    def send_and_read(entry):
        s = entry[0]
        s.send(entry[1])
        s.shutdown(socket.SHUT_WR)
        entry[3] = 1
        ep.modify(s.fileno(), EPOLLIN)

    while True:
        now = time.monotonic()
        if now >= next_stop_check:
            next_stop_check = now + 0.1
            if not stopping and os.path.exists(stop_path):
                stopping = True
                t_stop = now
        if not stopping:
            while t0 + i / rate <= now and len(conns) < MAX_INFLIGHT:
                due = t0 + i / rate
                if now - due > 0.05:
                    late += 1
                off = (i * 61) % (4096 - MSG_LEN)
                msg = struct.pack("!IQ", idx, i) + pattern[off:off + MSG_LEN - 12]
                i += 1
                counts["attempted"] += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                entry = [s, msg, due, 0, b"", now]
                err = s.connect_ex(addr)
                if err in (errno.EINPROGRESS, 0):
                    conns[s.fileno()] = entry
                    order.append(entry)
                    ep.register(s.fileno(), EPOLLOUT)
                else:
                    conns[s.fileno()] = entry
                    fail(entry, ERRNO_CLASS.get(err, "other"), f"connect: {errno.errorcode.get(err, err)}")
        elif not conns or now - t_stop > CONN_TIMEOUT + 2:
            break
        timeout = 0.01 if stopping else max(0.0, min(0.01, t0 + i / rate - time.monotonic()))
        for fd, ev in ep.poll(timeout, 512):
            entry = conns.get(fd)
            if entry is None:
                continue
            s = entry[0]
            try:
                if entry[3] == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(entry, ERRNO_CLASS.get(err, "other"), f"connect: {errno.errorcode.get(err, err)}")
                        continue
                    send_and_read(entry)
                    continue
                while True:
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        break
                    if not data:
                        if entry[4] == entry[1]:
                            done_ok(entry)
                        elif entry[1].startswith(entry[4]):
                            fail(entry, "integrity", f"short echo: {len(entry[4])} of {MSG_LEN} bytes, then EOF")
                        else:
                            fail(entry, "integrity", f"wrong echo ({len(entry[4])} bytes)")
                        break
                    entry[4] += data
                    if len(entry[4]) > MSG_LEN:
                        fail(entry, "integrity", f"{len(entry[4])} bytes echoed for {MSG_LEN}")
                        break
            except OSError as e:
                got = len(entry[4])
                fail(entry, ERRNO_CLASS.get(e.errno, "other"),
                     f"{errno.errorcode.get(e.errno, e.errno)} {'before' if entry[3] == 0 else 'after'} send, "
                     f"{got} of {MSG_LEN} echoed")
        now = time.monotonic()
        while order and (order[0][3] == 3 or now - order[0][5] > CONN_TIMEOUT):
            entry = order.popleft()
            if entry[3] != 3:
                fail(entry, "timeout", f"{'connecting' if entry[3] == 0 else 'waiting for the echo'}")
    wall = time.monotonic() - t0
    lat.sort()
    lat_started.sort()
    q = lambda p, v=lat: round(1000 * v[min(len(v) - 1, int(p * len(v)))], 2) if v else None
    secs = sorted(per_second.values())[1:-1] or [0]  # full seconds only
    ru = os.times()
    with open(out_path, "w") as f:
        json.dump({"counts": counts, "failures": failures, "slow": slow, "late": late, "wall_s": wall,
                   "lat_ms": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": q(1.0) if lat else None},
                   "lat_started_ms": {"p50": q(0.5, lat_started), "p99": q(0.99, lat_started),
                                      "max": q(1.0, lat_started)},
                   "slow_1s": sum(1 for x in lat if x > 1.0), "ok_per_s_median": statistics.median(secs),
                   "ok_per_s_min": min(secs), "cpu_s": ru[0] + ru[1]}, f)


# ---------------------------------------------------------------- the proxies

SLUICE_CFG = """workers: {workers}
drain_grace: 0s
drain_timeout: {drain_timeout}
control_socket: {ctl}
admin: {{ listen: 127.0.0.1:{admin} }}
log: {{ access: true }}
routes:
  - name: echo
    listen: 127.0.0.1:{echo}
    upstreams: ["127.0.0.1:{echo_backend}"]
  - name: streams
    listen: 127.0.0.1:{streams}
    upstreams: ["127.0.0.1:{stream_backend}"]
"""

HAPROXY_CFG = """global
    nbthread {workers}
    maxconn 8000
    stats socket {ctl} mode 600 level admin expose-fd listeners
    log stderr format raw local0 info
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend echo
    bind 127.0.0.1:{echo} backlog 4096
    default_backend echo
frontend streams
    bind 127.0.0.1:{streams} backlog 4096
    log global
    log-format "STREAM %cp %Ts %ms %Tt %U %B %ts"
    default_backend streams
backend echo
    server s 127.0.0.1:{echo_backend}
backend streams
    server s 127.0.0.1:{stream_backend}
"""


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Proxy:
    """One proxy under test, replaced `n` times. Subclasses: how to start and replace."""

    name = ""

    def __init__(self, work, ports, args):
        self.work, self.ports, self.args = work, ports, args
        self.procs = []  # (generation, Popen, log path)
        self.events = []
        self.cfg = os.path.join(work, "proxy.cfg")
        self.ctl = os.path.join(work, "ctl.sock")

    def config(self, workers):
        raise NotImplementedError

    def log_path(self, g):
        return os.path.join(self.work, f"{self.name}-{g}.log")


class SluiceUpgrade(Proxy):
    name = "upgrade"
    drain_timeout = "120s"

    def config(self, workers):
        write_atomic(self.cfg, SLUICE_CFG.format(workers=workers, drain_timeout=self.drain_timeout, ctl=self.ctl,
                                                 admin=self.ports["admin"], echo=self.ports["echo"],
                                                 streams=self.ports["streams"],
                                                 echo_backend=self.ports["echo_backend"],
                                                 stream_backend=self.ports["stream_backend"]))

    def launch(self, g, takeover):
        path = self.log_path(g)
        p = spawn([SLUICE, "-c", self.cfg] + (["--takeover"] if takeover else []), os.devnull, path)
        self.procs.append((g, p, path))
        return p, path

    def start(self, workers):
        self.config(workers)
        p, path = self.launch(1, False)
        found = wait_lines(path, {"ctl": b"a successor can take over"}, p, 20)
        if "ctl" not in found or not (wait_port(self.ports["echo"]) and wait_port(self.ports["streams"])):
            raise SystemExit(f"sluice did not start; see {path}")

    def replace(self, i, workers):
        g = i + 2
        self.config(workers)
        t0 = time.time()
        p, path = self.launch(g, True)
        found = wait_lines(path, {"running": b" running: generation ", "handoff": b"the predecessor stopped accepting",
                                  "ctl": b"a successor can take over"}, p, 30)
        ev = {"i": i, "workers": workers, "t_launch": t0, "pid": p.pid}
        if "running" in found:
            ev["to_accepting_ms"] = round(1000 * (found["running"][0] - t0), 1)
        if "handoff" in found:
            ev["to_handoff_ms"] = round(1000 * (found["handoff"][0] - t0), 1)
        if len(found) < 3:
            with open(path, errors="replace") as f:
                ev["error"] = f"takeover incomplete (exit {p.poll()}): " + " | ".join(f.read().splitlines()[-5:])
        return ev

    def wait_old(self, deadline):
        """Every replaced process exits by itself once its sessions are done."""
        return [(g, reap(p, max(0.1, deadline - time.monotonic()))) for g, p, _ in self.procs[:-1]]

    def stop(self):
        g, p, _ = self.procs[-1]
        p.send_signal(signal.SIGINT)
        rc = reap(p, 15)
        if rc is None:
            p.kill()
        return rc

    def stats_generation(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.ports["admin"]), timeout=2)
            s.sendall(b"GET /stats HTTP/1.0\r\nHost: x\r\n\r\n")
            body = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                body += d
            s.close()
            return json.loads(body.split(b"\r\n\r\n", 1)[1])["generation"]
        except (OSError, ValueError, KeyError):
            return None

    def analyze(self):
        per = {}
        for g, p, path in self.procs:
            per[g] = parse_sluice_log(path)
            per[g]["pid"] = p.pid
            per[g]["rc"] = p.returncode
        return per


class SluiceRestart(SluiceUpgrade):
    name = "restart"
    drain_timeout = "1s"

    def replace(self, i, workers):
        g = i + 2
        self.config(workers)
        _, old, _ = self.procs[-1]
        t0 = time.time()
        old.send_signal(signal.SIGTERM)
        if reap(old, 15) is None:
            old.kill()
        t_exit = time.time()
        p, path = self.launch(g, False)
        found = wait_lines(path, {"running": b" running: generation ", "ctl": b"a successor can take over"}, p, 30)
        ev = {"i": i, "workers": workers, "t_launch": t0, "pid": p.pid, "old_exit_ms": round(1000 * (t_exit - t0), 1)}
        if "running" in found:
            ev["to_accepting_ms"] = round(1000 * (found["running"][0] - t0), 1)
        if len(found) < 2:
            ev["error"] = f"restart failed (exit {p.poll()})"
        return ev


class HaproxyReload(Proxy):
    name = "haproxy"

    def config(self, workers):
        write_atomic(self.cfg, HAPROXY_CFG.format(workers=workers, ctl=self.ctl, echo=self.ports["echo"],
                                                  streams=self.ports["streams"],
                                                  echo_backend=self.ports["echo_backend"],
                                                  stream_backend=self.ports["stream_backend"]))

    def show_pid(self):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(1)
            s.connect(self.ctl)
            s.sendall(b"show info\n")
            data = b""
            while b"\nPid: " not in data or not data.split(b"\nPid: ", 1)[1].count(b"\n"):
                d = s.recv(4096)
                if not d:
                    break
                data += d
            s.close()
            return int(data.split(b"\nPid: ", 1)[1].split(b"\n", 1)[0])
        except (OSError, IndexError, ValueError):
            return None

    def launch(self, g, old_pid):
        path = self.log_path(g)
        cmd = [HAPROXY, "-db", "-f", self.cfg]
        if old_pid:
            cmd += ["-x", self.ctl, "-sf", str(old_pid)]
        p = spawn(cmd, os.devnull, path)
        self.procs.append((g, p, path))
        return p

    def wait_pid(self, p, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and p.poll() is None:
            if self.show_pid() == p.pid:
                return time.time()
            time.sleep(0.003)
        return None

    def start(self, workers):
        self.config(workers)
        p = self.launch(1, None)
        if not self.wait_pid(p, 20) or not (wait_port(self.ports["echo"]) and wait_port(self.ports["streams"])):
            raise SystemExit(f"haproxy did not start; see {self.log_path(1)}")

    def replace(self, i, workers):
        g = i + 2
        self.config(workers)
        old = self.procs[-1][1]
        t0 = time.time()
        p = self.launch(g, old.pid)
        t = self.wait_pid(p, 30)
        ev = {"i": i, "workers": workers, "t_launch": t0, "pid": p.pid}
        if t:
            ev["to_accepting_ms"] = round(1000 * (t - t0), 1)
        else:
            with open(self.log_path(g), errors="replace") as f:
                ev["error"] = f"reload failed (exit {p.poll()}): " + " | ".join(f.read().splitlines()[-5:])
        return ev

    wait_old = SluiceUpgrade.wait_old

    def stop(self):
        g, p, _ = self.procs[-1]
        p.send_signal(signal.SIGUSR1)  # soft stop; nothing runs any more
        rc = reap(p, 15)
        if rc is None:
            p.kill()
        return rc

    def analyze(self):
        per = {}
        for g, p, path in self.procs:
            per[g] = parse_haproxy_log(path)
            per[g]["pid"] = p.pid
            per[g]["rc"] = p.returncode
        return per


# ---------------------------------------------------------------- one scenario

def run_scenario(kind, count, args, root):
    work = os.path.join(root, kind)
    os.makedirs(work)
    names = ["echo", "streams", "admin", "echo_backend", "stream_backend"]
    ports = dict(zip(names, pick_ports(len(names))))
    proxy = {"upgrade": SluiceUpgrade, "restart": SluiceRestart, "haproxy": HaproxyReload}[kind](work, ports, args)
    workers = [int(w) for w in args.workers.split(",")]
    load = Load()
    spawn([LOADGEN, "serve", "--listen", f"127.0.0.1:{ports['echo_backend']}", "--mode", "echo"],
          os.path.join(work, "echo-backend.log"))
    anomalies = os.path.join(work, "stream-server-anomalies.txt")
    open(anomalies, "w").close()
    spawn(self_cmd("_stream_server", ports["stream_backend"], anomalies), os.path.join(work, "stream-server.log"))
    if not (wait_port(ports["echo_backend"]) and wait_port(ports["stream_backend"])):
        raise SystemExit("a backend did not start")
    proxy.start(workers[0])
    log(f"{kind}: proxy up (workers/nbthread {workers[0]}), ports {ports}")
    before = kernel_counters()
    stop = os.path.join(work, "stop")
    clients = []
    for c in range(args.clients):
        out = os.path.join(work, f"conn-client-{c}.json")
        clients.append((spawn(self_cmd("_conn_client", ports["echo"], args.rate / args.clients, stop, out, c),
                              os.path.join(work, f"conn-client-{c}.log")), out))
    streams_out = os.path.join(work, "streams.json")
    stream_client = spawn(self_cmd("_stream_client", ports["streams"], args.streams, args.stream_rate,
                                   args.stream_life, stop, streams_out, random.randrange(1 << 30)),
                          os.path.join(work, "stream-client.log"))
    time.sleep(args.warmup)
    t_load0 = time.time()
    for i in range(count):
        w = workers[(i + 1) % len(workers)]
        ev = proxy.replace(i, w)
        proxy.events.append(ev)
        log(f"{kind} #{i + 1}: workers {w}, pid {ev['pid']}: to accepting {ev.get('to_accepting_ms')} ms"
            + (f", handoff {ev['to_handoff_ms']} ms" if "to_handoff_ms" in ev else "")
            + (f", old exited after {ev['old_exit_ms']} ms" if "old_exit_ms" in ev else "")
            + (f"  ERROR {ev['error']}" if "error" in ev else ""))
        if "error" in ev:
            break
        time.sleep(args.gap)
    time.sleep(args.warmup)
    open(stop, "w").close()
    t_load1 = time.time()
    log(f"{kind}: load stopped; waiting for the clients and the streams still running (up to "
        f"{args.stream_life:.0f} s)")
    for p, _ in clients:
        try:
            p.wait(timeout=CONN_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            p.kill()
    try:
        stream_client.wait(timeout=args.stream_life + 60)
    except subprocess.TimeoutExpired:
        stream_client.kill()
    old_exits = proxy.wait_old(time.monotonic() + 30)
    after = kernel_counters()
    generation = proxy.stats_generation() if kind == "upgrade" else None
    final_rc = proxy.stop()
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    machine = load.finish()
    return summarize(kind, proxy, clients, streams_out, anomalies, before, after, old_exits, final_rc, generation,
                     t_load0, t_load1, machine, args)


def summarize(kind, proxy, clients, streams_out, anomalies, before, after, old_exits, final_rc, generation,
              t_load0, t_load1, machine, args):
    counts = collections.Counter()
    failures, slow, lat, lat2, per_s, late, cpu = [], [], [], [], [], 0, 0.0
    for _, out in clients:
        try:
            with open(out) as f:
                r = json.load(f)
        except (OSError, ValueError):
            counts["client_crashed"] += 1
            continue
        counts.update(r["counts"])
        failures += r["failures"]
        slow += r["slow"]
        lat.append(r["lat_ms"])
        lat2.append(r["lat_started_ms"])
        per_s.append(r["ok_per_s_median"])
        late += r["late"]
        cpu += r["cpu_s"]
        counts["slow_1s"] += r["slow_1s"]
    try:
        with open(streams_out) as f:
            sr = json.load(f)
        streams, n = sr["streams"], sr["bytes_per_stream"]
    except (OSError, ValueError):
        streams, n = [], 0
    per = proxy.analyze()
    events = proxy.events
    acc = [e["to_accepting_ms"] for e in events if "to_accepting_ms" in e]
    hand = [e["to_handoff_ms"] for e in events if "to_handoff_ms" in e]

    # Each stream: the access line of the process that ended it, matched by port and start time.
    replaced_at = {}
    if kind == "upgrade":
        replaced_at = {g: d["replaced"] for g, d in per.items() if d.get("replaced")}
    else:  # haproxy: the successor's accepting time; restart: the SIGTERM
        for e in events:
            replaced_at[e["i"] + 1] = e["t_launch"] + (e.get("to_accepting_ms") or 0) / 1000 \
                if kind == "haproxy" else e["t_launch"]
    proxy_lines = [(g, s) for g, d in per.items() for s in d["streams"]]
    by_port = collections.defaultdict(list)
    for g, s in proxy_lines:
        by_port[s["port"]].append((g, s))
    launches = sorted(e["t_launch"] for e in events)
    sc = collections.Counter()
    survived = []
    stream_problems = []
    for st in streams:
        sc["started"] += 1
        sc[st["status"]] += 1
        if st["status"] != "ok":
            stream_problems.append(st)
            continue
        cands = [(abs(s["start"] - st["t_connect"]), g, s) for g, s in by_port.get(st["port"], [])]
        cands = [c for c in cands if c[0] < 2.0]
        if not cands:
            sc["ok_unmatched"] += 1
            stream_problems.append(dict(st, detail="no access line of any process matches"))
            continue
        _, g, s = min(cands, key=lambda c: c[0])
        want_up, want_down = STREAM_HDR.size + n, n + TRAILER.size
        if not s["ok"] or s["up"] != want_up or s["down"] != want_down:
            sc["ok_but_proxy_disagrees"] += 1
            stream_problems.append(dict(st, detail=f"process {g}: {s}"))
            continue
        sc["ok_matched"] += 1
        lived = sum(1 for t in launches if st["t_connect"] < t < st["t_end"])
        survived.append(lived)
        rep = replaced_at.get(g)
        if rep and rep < st["t_end"]:
            sc["ok_outlived_replacement"] += 1
    fail_classes = ["refused", "reset", "timeout", "integrity", "other"]
    row = {
        "scenario": kind,
        "replacements": len(events),
        "replacement_errors": sum(1 for e in events if "error" in e),
        "attempted": counts["attempted"],
        "ok": counts["ok"],
        **{c: counts[c] for c in fail_classes},
        "local": counts["local"],
        "slow_1s": counts["slow_1s"],
        "achieved_per_s": round(counts["ok"] / max(1e-9, t_load1 - t_load0 + args.warmup)),
        "ok_per_s_median": round(sum(per_s)),
        "late_starts": late,
        "client_cpu_s": round(cpu, 1),
        "lat_ms": lat,
        "lat_started_ms": lat2,
        "streams": dict(sc),
        "stream_upgrades_lived": (statistics.median(survived), max(survived)) if survived else None,
        "listen_overflows": after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"],
        "listen_drops": after["TcpExt.ListenDrops"] - before["TcpExt.ListenDrops"],
        "kernel_delta": {k: after[k] - before[k] for k in ("Tcp.AttemptFails", "Tcp.EstabResets", "Tcp.OutRsts",
                                                              "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnClose",
                                                              "TcpExt.TCPReqQFullDrop") if k in after},
        "to_accepting_ms": ((statistics.median(acc), max(acc), min(acc)) if acc else None),
        "to_handoff_ms": ((statistics.median(hand), max(hand)) if hand else None),
        "old_exits": collections.Counter(str(rc) for _, rc in old_exits),
        "proxy_cpu_s": round(sum(PROC_CPU.get(p.pid, 0) for _, p, _ in proxy.procs), 1),
        "proxy_cpu_s_max_one": round(max(PROC_CPU.get(p.pid, 0) for _, p, _ in proxy.procs), 1),
        "final_rc": final_rc,
        "generation_at_end": generation,
        "machine": machine,
    }
    if kind != "haproxy":
        echo = collections.Counter()
        for d in per.values():
            echo.update(d["echo"])
        row["proxy_echo_reasons"] = dict(echo)
        row["proxy_warnings"] = [w for d in per.values() for w in d["warnings"]][:20]
        row["dropped_log_lines"] = [d["dropped_lines"] for d in per.values() if d["dropped_lines"]]
    else:
        row["proxy_warnings"] = [w for d in per.values() for w in d["warnings"]][:20]
    with open(anomalies) as f:
        row["stream_server_anomalies"] = f.read().splitlines()[:20]

    # Failures and slow connections next to the replacement they followed.
    ev_by_time = sorted(events, key=lambda e: e["t_launch"])
    first = int(args.workers.split(",")[0])

    def near(t):
        prev = [k for k, e in enumerate(ev_by_time) if e["t_launch"] <= t]
        if not prev:
            return 0, first, first, None
        k = prev[-1]
        e = ev_by_time[k]
        return e["i"] + 1, ev_by_time[k - 1]["workers"] if k else first, e["workers"], round(1000 * (t - e["t_launch"]))

    row["failures_near"] = [(cls, *near(t), detail) for t, cls, detail in sorted(failures)]
    row["slow_near"] = [(f"slow >{'1 s' if d > 1 else '200 ms'}", *near(t - d), f"{1000 * d:.0f} ms")
                        for t, d in sorted(slow)]
    row["slow_200ms"] = counts["slow_200ms"]
    row["stream_problems"] = stream_problems
    return row


# ---------------------------------------------------------------- report

def report(rows, args):
    fail_classes = ["refused", "reset", "timeout", "integrity"]
    print()
    print("| scenario | replacements | connections attempted | ok | refused | reset | timeouts | integrity errors "
          "| other/local | slow >200 ms / >1 s | ok conn/s | long streams ok / started | completed on their process "
          "(outlived its replacement) | ListenOverflows / ListenDrops | to accepting: median / worst (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["streams"]
        acc = r["to_accepting_ms"]
        acc_s = f"{acc[0]:.1f} / {acc[1]:.1f}" if acc else "-"
        if r["to_handoff_ms"]:
            acc_s += f" (handoff {r['to_handoff_ms'][0]:.1f} / {r['to_handoff_ms'][1]:.1f})"
        print(f"| {r['scenario']} | {r['replacements']}{' (' + str(r['replacement_errors']) + ' failed)' if r['replacement_errors'] else ''} "
              f"| {r['attempted']:,} | {r['ok']:,} | "
              + " | ".join(f"{r[c]:,}" for c in fail_classes)
              + f" | {r['other'] + r['local']} | {r['slow_200ms']} / {r['slow_1s']} | {r['achieved_per_s']:,} "
              f"| {s.get('ok', 0)} / {s.get('started', 0)} | {s.get('ok_matched', 0)} ({s.get('ok_outlived_replacement', 0)}) "
              f"| {r['listen_overflows']} / {r['listen_drops']} | {acc_s} |")
    print()
    for r in rows:
        print(f"## {r['scenario']}")
        print(f"  echo latency from the scheduled start (per client process): {r['lat_ms']}; from connect(): "
              f"{r['lat_started_ms']}; late starts (>50 ms behind schedule): {r['late_starts']}; "
              f"client CPU {r['client_cpu_s']} s")
        print(f"  streams: {r['streams']}; upgrades lived through (median, max): {r['stream_upgrades_lived']}")
        print(f"  kernel: {r['kernel_delta']}")
        print(f"  proxy CPU: {r['proxy_cpu_s']} s over all its processes, at most {r['proxy_cpu_s_max_one']} s in one")
        print(f"  old processes' exit codes: {dict(r['old_exits'])}; last one: {r['final_rc']}"
              + (f"; /stats generation at the end: {r['generation_at_end']}" if r["generation_at_end"] else ""))
        if "proxy_echo_reasons" in r:
            print(f"  proxy's access lines for the echo route, by reason: {r['proxy_echo_reasons']}")
        if r.get("dropped_log_lines"):
            print(f"  log lines dropped: {r['dropped_log_lines']}")
        for w in r["proxy_warnings"]:
            print(f"  proxy: {w}")
        for a in r["stream_server_anomalies"]:
            print(f"  stream server: {a}")
        print(f"  machine: {r['machine']}")
        if r["scenario"] != "restart" and r["replacements"]:
            seq = [int(w) for w in args.workers.split(",")]
            trans = [(seq[k % len(seq)], seq[(k + 1) % len(seq)]) for k in range(r["replacements"])]
            for label, test in (("fewer", lambda a, b: b < a), ("more", lambda a, b: b > a),
                                ("the same", lambda a, b: a == b)):
                ns = {k + 1 for k, (a, b) in enumerate(trans) if test(a, b)}
                if not ns:
                    continue
                bad = [x for x in r["failures_near"] if x[1] in ns]
                print(f"  replacements to {label} workers: {len(ns)}; {len({x[1] for x in bad})} of them with failures "
                      f"({len(bad)} connections: {dict(collections.Counter(x[0] for x in bad))})")
        for what, items in (("failures", r["failures_near"]), ("slow connections (by scheduled start)", r["slow_near"])):
            by = collections.Counter((c, n, wf, wt) for c, n, wf, wt, _, _ in items)
            if not by:
                continue
            print(f"  {what} after replacement #n (workers from -> to): count, ms after its launch, first detail")
            lines = sorted(by.items(), key=lambda x: (x[0][1], x[0][0]))
            for (c, n, wf, wt), k in lines[:60]:
                ms = [m for cc, nn, _, _, m, _ in items if (cc, nn) == (c, n) and m is not None] or [0]
                det = next(d for cc, nn, _, _, _, d in items if (cc, nn) == (c, n))
                print(f"    {c} after #{n} ({wf} -> {wt}): {k}, {min(ms)}..{max(ms)} ms; {det}")
            if len(lines) > 60:
                print(f"    ... {len(lines) - 60} more")
        for st in r["stream_problems"][:10]:
            print(f"  stream {st['id']} (port {st['port']}): {st['status']} {st['detail']}")
        if len(r["stream_problems"]) > 10:
            print(f"  ... {len(r['stream_problems']) - 10} more stream problems")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="upgrade,restart,haproxy")
    ap.add_argument("--upgrades", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=15)
    ap.add_argument("--haproxy-reloads", type=int, default=None, help="default: as many as --upgrades")
    ap.add_argument("--workers", default="1,4,2,3", help="workers: (nbthread for HAProxy) in turn")
    ap.add_argument("--rate", type=float, default=3000, help="new connections per second, all clients")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--stream-rate", type=float, default=1 << 20, help="bytes/s each way per stream")
    ap.add_argument("--stream-life", type=float, default=40.0, help="seconds per stream")
    ap.add_argument("--gap", type=float, default=1.5, help="seconds between replacements")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--no-netns", action="store_true")
    ap.add_argument("--migrate-req", action="store_true",
                    help="set net.ipv4.tcp_migrate_req=1 in the private namespace (a closing SO_REUSEPORT "
                         "listener's queue moves to another listener of its group)")
    ap.add_argument("--keep", action="store_true", help="keep the logs (the directory is printed)")
    ap.add_argument("--json", help="write every figure to this file too")
    args = ap.parse_args()
    if args.haproxy_reloads is None:
        args.haproxy_reloads = args.upgrades

    if (not args.no_netns and os.environ.get("UPGRADE_LOAD_NETNS") != "inside" and os.geteuid() == 0
            and shutil.which("unshare") and shutil.which("ip")):
        os.environ["UPGRADE_LOAD_NETNS"] = "inside"
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    if os.environ.get("UPGRADE_LOAD_NETNS") == "inside":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        log("in a private network namespace (loopback only; its own TCP counters and ports)")
        if args.migrate_req:
            with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
                f.write("1")
            log("net.ipv4.tcp_migrate_req=1 (in this namespace only)")
    elif args.migrate_req:
        raise SystemExit("--migrate-req changes a sysctl: only in the private network namespace")

    for exe in (SLUICE, LOADGEN):
        if not (shutil.which(exe) or os.access(exe, os.X_OK)):
            raise SystemExit(f"{exe} is not executable (set SLUICE_BIN / LOADGEN_BIN)")
    kinds = args.only.split(",")
    if "haproxy" in kinds and not shutil.which(HAPROXY):
        log("haproxy is not installed: skipping it")
        kinds.remove("haproxy")
    root = tempfile.mkdtemp(prefix="upgrade_load.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rows = []
    try:
        log(f"sluice {subprocess.run([SLUICE, '--version'], capture_output=True, text=True).stdout.strip()}; "
            f"{args.rate:.0f} conn/s from {args.clients} processes; {args.streams} streams of "
            f"{args.stream_rate * args.stream_life / 2**20:.0f} MiB each way over {args.stream_life:.0f} s; "
            f"logs in {root}")
        for kind in kinds:
            count = {"upgrade": args.upgrades, "restart": args.restarts, "haproxy": args.haproxy_reloads}[kind]
            rows.append(run_scenario(kind, count, args, root))
        report(rows, args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=str)
    finally:
        kill_all()
        if args.keep:
            log(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    up = next((r for r in rows if r["scenario"] == "upgrade"), None)
    if up and (any(up[c] for c in ("refused", "reset", "timeout", "integrity"))
               or up["streams"].get("ok", 0) != up["streams"].get("ok_matched", -1)
               or up["streams"].get("ok", 0) != up["streams"].get("started", 0)):
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "_stream_server":
            role_stream_server(int(rest[0]), rest[1])
        elif role == "_stream_client":
            role_stream_client(int(rest[0]), int(rest[1]), float(rest[2]), float(rest[3]), rest[4], rest[5],
                               int(rest[6]))
        elif role == "_conn_client":
            role_conn_client(int(rest[0]), float(rest[1]), rest[2], rest[3], int(rest[4]))
        sys.exit(0)
    main()
