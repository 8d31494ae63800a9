#!/usr/bin/env python3
"""Byte-exact traffic through sluice to an echo upstream, for .ci/container.

  echo_check.py roundtrip HOST PORT BYTES
      one session: send BYTES random bytes (while reading), half-close, read to
      EOF, compare with what was sent.
  echo_check.py hold HOST PORT BYTES READY GO
      one session: the first half round-trips, then READY is created and the
      session waits (at most 60 s) for GO to exist before the second half goes:
      the caller starts a drain in between, so the second half crosses a drain.

Prints one line saying what was checked; exit 0 when every byte came back in
order, 1 otherwise. Every socket operation has a timeout.
"""

import os
import socket
import sys
import threading
import time

TIMEOUT = 30.0


def connect(host, port):
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return socket.create_connection((host, port), timeout=TIMEOUT)
        except OSError as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"echo_check: connect {host}:{port}: {err}")
            time.sleep(0.2)


def exchange(sock, data, half_close):
    """Sends data from a thread while reading the same length back."""
    errors = []

    def send():
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            errors.append(f"send: {err}")

    sender = threading.Thread(target=send)
    sender.start()
    got = bytearray()
    try:
        while len(got) < len(data) or half_close:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got += chunk
    except OSError as err:
        errors.append(f"recv after {len(got)} bytes: {err}")
    sender.join(TIMEOUT)
    if errors:
        raise SystemExit("echo_check: " + "; ".join(errors))
    if bytes(got) != data:
        first = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), min(len(got), len(data)))
        raise SystemExit(f"echo_check: sent {len(data)} bytes, got {len(got)} back, first difference at byte {first}")


def wait_for(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"echo_check: {path} did not appear within 60 s")
        time.sleep(0.05)


def main(argv):
    if len(argv) < 4 or argv[0] not in ("roundtrip", "hold"):
        raise SystemExit(__doc__)
    mode, host, port, size = argv[0], argv[1], int(argv[2]), int(argv[3])
    data = os.urandom(size)
    sock = connect(host, port)
    if mode == "roundtrip":
        exchange(sock, data, half_close=True)
        print(f"echo_check: {size} bytes through {host}:{port}, byte-exact")
        return
    ready, go = argv[4], argv[5]
    half = size // 2
    exchange(sock, data[:half], half_close=False)
    open(ready, "w").close()
    wait_for(go)
    exchange(sock, data[half:], half_close=True)
    print(f"echo_check: {size} bytes through {host}:{port} across a drain, byte-exact")


if __name__ == "__main__":
    main(sys.argv[1:])
