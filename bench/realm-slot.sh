#!/bin/bash
# realm-slot.sh: run a sluice variant in compare's `realm` slot, so two sluice
# settings share one run (interleaved, same machine state). compare starts the
# realm slot as `REALM_BIN -l LISTEN -r UPSTREAM [-n NOFILE]` with
# TOKIO_WORKER_THREADS=N; this turns that into a sluice config with the
# top-level keys in VARIANT_TOP (e.g. 'relay: splice') and the route keys in
# VARIANT_ROUTE (e.g. 'socket: { notsent_lowat: 0 }'), one line each, and runs it:
#
#   VARIANT_ROUTE='socket: { notsent_lowat: 0 }' SLUICE_ARGS=--no-access-log \
#   REALM_BIN=$PWD/bench/realm-slot.sh SLUICE_BIN=$PWD/target/release/sluice \
#       ../shared/bench/compare --proxies sluice,realm --scenarios paced,stream-up
#
# VARIANT_BIN picks another sluice binary for the slot (default: SLUICE_BIN).
set -euo pipefail
while [ $# -gt 0 ]; do
    case $1 in
        -l) listen=$2; shift 2 ;;
        -r) upstream=$2; shift 2 ;;
        *) shift ;;
    esac
done
cfg=$(mktemp "${TMPDIR:-/tmp}/realm-slot.XXXXXX.yaml")
cat > "$cfg" <<EOC
workers: ${TOKIO_WORKER_THREADS:-1}
log: { access: false }
${VARIANT_TOP:-}
routes:
  - name: variant
    listen: ${listen:?no -l}
    upstreams: ["${upstream:?no -r}"]
    ${VARIANT_ROUTE:-}
EOC
exec "${VARIANT_BIN:-${SLUICE_BIN:?set SLUICE_BIN or VARIANT_BIN}}" -c "$cfg"
