#!/usr/bin/env bash
# callgrind.sh [SLUICE_BIN] — user-space instructions per proxied request, a figure that machine
# noise cannot move (same binary, same load: same count). MODE=l7 (default) or MODE=l4; CONNS
# (default 4) wrk connections.
#
# Starts one nginx backend (13-byte answer, as peers.sh's), `sluice dev` under callgrind with
# counting off, one HTTP listener with a catch-all route or one TCP listener
# (sluice-candidate.sh), then counts only
# while `wrk -t1 -cCONNS` runs for DURATION seconds. Prints instructions per request and the top
# functions (inclusive); KEEP=FILE keeps the profile (for callgrind_annotate). Needs valgrind,
# nginx, wrk (scripts/install-bench-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/sluice}")
mode=${MODE:-l7} conns=${CONNS:-4} port=${PORT:-18240} backend=${BACKEND_PORT:-18250} duration=${DURATION:-10}
tmp=$(mktemp -d)
pids=()
cleanup() {
  pkill -f "callgrind-out-file=$tmp" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 100); do   # a previous run may still be letting go of the ports
  ss -ltn | grep -qE ":($port|$((port + 1))|$((port + 2))|$((port + 3))|$backend) " || break
  sleep 0.1
done

cat > "$tmp/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events {}
http { access_log off; keepalive_requests 10000000; server { listen 127.0.0.1:$backend; location / { return 200 "hello, world\n"; } } }
EOF
nginx -c "$tmp/nginx.conf" -p "$tmp" & pids+=($!)

cat > "$tmp/sluice-under-callgrind" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$tmp/callgrind.out "$bin" "\$@"
EOF
chmod +x "$tmp/sluice-under-callgrind"
SLUICE_BIN="$tmp/sluice-under-callgrind" BENCH_BACKENDS="127.0.0.1:$backend" BENCH_TMP="$tmp" \
  ../shared/bench/sluice-candidate.sh "$mode" "$port" > "$tmp/candidate.log" 2>&1 & pids+=($!)

for _ in $(seq 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.2
done
curl -sf -o /dev/null "http://127.0.0.1:$port/" || { cat "$tmp/candidate.log"; exit 1; }
wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" > /dev/null   # warm the pools
callgrind_control -i on > /dev/null
out=$(wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$port/")
callgrind_control -i off > /dev/null
callgrind_control -d > /dev/null
requests=$(awk '/requests in/ {print $1}' <<< "$out")
echo "$out" | grep -E "requests in|Non-2xx|Socket errors" || true

file=$tmp/callgrind.out.1   # the dump taken right after the counted run
[[ -n ${KEEP:-} ]] && cp "$file" "$KEEP"
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
echo "requests: $requests  instructions: $total  per request: $((total / requests))"
callgrind_annotate --inclusive=yes "$file" 2>/dev/null | sed -n '/^Ir/,$p' | head -40 || true
cp "$file" "${OUT:-/tmp/callgrind-$mode.out}"
echo "profile kept in ${OUT:-/tmp/callgrind-$mode.out}"
