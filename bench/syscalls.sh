#!/bin/bash
# syscalls.sh MODE rr|connrate: syscalls per request of a 1-worker sluice (proxy on CPU 1,
# client and echo backend on CPU 0) at compare's paced loads (rr-1k 10,000 req/s with 50
# connections; connrate 2,000 conn/s of 1 KiB), counted by perf stat on the syscall
# tracepoints over 5 s of the 8 s measured window (docs/performance.md, "relay: uring").
# LOADGEN_BIN and SLUICE_BIN name the binaries; needs perf, taskset and curl; ports 19621-19623.
set -u
L=${LOADGEN_BIN:-../shared/bench/loadgen/target/release/loadgen}
BIN=${SLUICE_BIN:-target/release/sluice}
MODE=$1; SCEN=$2
D=$(mktemp -d)
taskset -c 0 $L serve --listen 127.0.0.1:19621 --mode echo > /dev/null 2>&1 &
SP=$!
cat > $D/cfg.yaml <<EOC
workers: 1
relay: $MODE
log: { access: false }
admin: { listen: 127.0.0.1:19623 }
routes:
  - name: r
    listen: 127.0.0.1:19622
    upstreams: ["127.0.0.1:19621"]
EOC
taskset -c 1 $BIN -c $D/cfg.yaml > $D/proxy.log 2>&1 &
PP=$!
for i in $(seq 50); do curl -sf 127.0.0.1:19623/healthz >/dev/null && break; sleep 0.1; done
if [ $SCEN = rr ]; then
  ARGS="rr --size 1k --conns 50 --rate 10000"; RATE=10000
else
  ARGS="connrate --size 1k --rate 2000"; RATE=2000
fi
taskset -c 0 $L $ARGS --target 127.0.0.1:19622 --duration 8s --warmup 1s > $D/lg.txt 2>&1 &
LP=$!
sleep 2.5
EV=raw_syscalls:sys_enter
for s in epoll_wait io_uring_enter recvfrom sendto read write accept4 connect close shutdown setsockopt getsockopt epoll_ctl ioctl; do EV="$EV,syscalls:sys_enter_$s"; done
perf stat -x, -e $EV -p $PP -- sleep 5 2> $D/perf.txt
wait $LP
grep -E "^(rr|connrate) " $D/lg.txt | cut -c1-160
awk -F, -v rate=$RATE -v mode=$MODE -v scen=$SCEN '{n=$1; ev=$3; sub(/.*sys_enter_?/, "", ev); if (ev=="") ev="all"; if (n+0>0) printf "%s %s %-16s %9d  %.2f per request\n", mode, scen, ev, n, n/(rate*5)}' $D/perf.txt
kill $PP $SP 2>/dev/null; wait 2>/dev/null; rm -rf $D
