#!/bin/bash
# splice_counts.sh: syscalls, wake-ups and proxy CPU per GiB of one fixed one-way transfer.
#
#   LOADGEN_BIN=... bench/splice_counts.sh sluice|realm STREAMS [ROUTE_YAML]
#
# Starts the proxy on CPU 1 (SLUICE_BIN, default target/release/sluice; REALM_BIN for realm) in
# front of a loadgen sink on CPU 0, moves 8 GiB up in STREAMS streams, and counts with `perf stat
# -p` the proxy's splice calls, epoll_waits, all syscalls, context switches and task-clock, printed
# per GiB (docs/performance.md, "Pipes that grow"). ROUTE_YAML adds route keys, e.g.
# 'socket: { notsent_lowat: 0 }'. Needs perf with tracepoint access (root).
set -euo pipefail
which=${1:?sluice or realm}; streams=${2:?streams}; extra=${3:-}
lg=${LOADGEN_BIN:?set LOADGEN_BIN}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink=$(free_port); port=$(free_port)
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
taskset -c 0 "$lg" serve --listen "127.0.0.1:$sink" --mode sink >/dev/null 2>&1 &
if [ "$which" = realm ]; then
    taskset -c 1 "${REALM_BIN:?set REALM_BIN}" -l "127.0.0.1:$port" -r "127.0.0.1:$sink" >/dev/null 2>&1 &
else
    printf 'workers: 1\nlog: { access: false }\nroutes:\n  - name: counts\n    listen: 127.0.0.1:%s\n    upstreams: ["127.0.0.1:%s"]\n    %s\n' \
        "$port" "$sink" "$extra" > "$tmp/c.yaml"
    taskset -c 1 "${SLUICE_BIN:-target/release/sluice}" -c "$tmp/c.yaml" >/dev/null 2>&1 &
fi
proxy=$!
ready=
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { ready=1; break; }; sleep 0.1; done
[ -n "$ready" ] || { echo "the proxy never accepted on 127.0.0.1:$port" >&2; exit 1; }
# perf counts the proxy for exactly as long as the transfer runs.
perf stat -x, -e 'syscalls:sys_enter_splice,syscalls:sys_enter_epoll_wait,raw_syscalls:sys_enter,sched:sched_switch,task-clock' \
    -p "$proxy" -o "$tmp/stat" -- taskset -c 0 "$lg" throughput --bytes "$((8 / streams))g" --streams "$streams" \
    --direction up --target "127.0.0.1:$port" > "$tmp/out" 2>&1 || true  # realm fails half-close checks: still counted
rate=$(grep -o '[0-9.]* Gbit/s' "$tmp/out") || { cat "$tmp/out" >&2; exit 1; }
awk -F, -v r="$rate" -v b="$which x$streams $extra" '{v[$3]=$1} END {
    printf "%s: %s; per GiB: splice %.0f, epoll_wait %.0f, syscalls %.0f, context switches %.0f, proxy CPU %.0f ms\n",
        b, r, v["syscalls:sys_enter_splice"]/8, v["syscalls:sys_enter_epoll_wait"]/8, v["raw_syscalls:sys_enter"]/8,
        v["sched:sched_switch"]/8, v["task-clock"]/8 }' "$tmp/stat"
