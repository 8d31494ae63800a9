#!/bin/bash
# socat-slot.sh: a sluice variant in compare's socat slot (install it as `socat` in a
# directory put first in PATH): compare runs
# `socat TCP-LISTEN:PORT,bind=127.0.0.1,... TCP:127.0.0.1:UP`; this runs
# SOCAT_VARIANT_BIN with a config listening on PORT, relaying to UP, and the
# top-level keys in SOCAT_VARIANT_TOP (each falls back to VARIANT_BIN /
# VARIANT_TOP; the separate names let realm-slot.sh run a third variant in
# the same run). `socat -V` prints a version line.
set -euo pipefail
bin=${SOCAT_VARIANT_BIN:-${VARIANT_BIN:-}}
top=${SOCAT_VARIANT_TOP-${VARIANT_TOP:-}}
if [ "${1:-}" = -V ]; then echo "socat-slot sluice variant version ${top:-default}"; exit 0; fi
port=${1#TCP-LISTEN:}; port=${port%%,*}
up=${2#TCP:127.0.0.1:}
cfg=$(mktemp /tmp/socat-slot.XXXXXX.yaml)
cat > "$cfg" <<EOC
workers: 1
log: { access: false }
${top}
routes:
  - name: variant
    listen: 127.0.0.1:$port
    upstreams: ["127.0.0.1:$up"]
EOC
exec "${bin:?set SOCAT_VARIANT_BIN or VARIANT_BIN}" -c "$cfg"
