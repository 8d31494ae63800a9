#!/usr/bin/env python3
"""TLS peers for sluice's SNI routing tests (standard library only).

serve NAME=CERT,KEY ...   one TLS server per NAME on 127.0.0.1:0, each
                          offering ALPN h2 and http/1.1; prints "NAME PORT"
                          per server, then "ready", then serves until
                          stdin closes. Each connection reads one line and
                          answers "NAME alpn=<negotiated>\n".
client ADDR SNI ALPN CA   connects to ADDR (host:port) through TLS with
                          server name SNI ("-" for none), ALPN protocols
                          ALPN (comma list, "-" for none), verifying the
                          certificate against CA (a PEM file, or "-" to not
                          verify); prints one JSON line: {"ok": true,
                          "reply": ..., "alpn": ...} or {"ok": false,
                          "error": ...}.
"""

import json
import socket
import ssl
import sys
import threading


def serve(specs):
    servers = []
    for spec in specs:
        name, files = spec.split("=", 1)
        cert, key = files.split(",", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        servers.append((name, ctx, lsock))
        print(name, lsock.getsockname()[1], flush=True)

    def handle(name, ctx, conn):
        try:
            conn.settimeout(10)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(f"{name} alpn={tls.selected_alpn_protocol() or '-'}\n".encode())
        except Exception:  # a client the test resets on purpose, say
            pass

    def accept_loop(name, ctx, lsock):
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=handle, args=(name, ctx, conn), daemon=True).start()

    for s in servers:
        threading.Thread(target=accept_loop, args=s, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def client(addr, sni, alpn, ca):
    host, port = addr.rsplit(":", 1)
    if ca == "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca)
        if sni == "-":
            ctx.check_hostname = False
    if alpn != "-":
        ctx.set_alpn_protocols(alpn.split(","))
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni) as tls:
                tls.sendall(b"hello\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = tls.recv(1024)
                    if not chunk:
                        break
                    reply += chunk
                print(json.dumps({"ok": True, "reply": reply.decode().strip(), "alpn": tls.selected_alpn_protocol()}))
    except Exception as e:  # noqa: BLE001 - the test reads the error
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif sys.argv[1] == "client":
        client(*sys.argv[2:6])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
