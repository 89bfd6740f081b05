#!/usr/bin/env bash
# bench-grpc.sh [SLUICE_BIN] — gRPC unary calls (grpc.health.v1 Check, tonic on both ends: the
# grpc-load tool of the tests crate) direct to the server, through Sluice (a cluster with
# `protocol: http2`) and through nginx (`grpc_pass`), all h2c on loopback. CONNS connections x
# STREAMS calls in flight, DURATION seconds a run, ROUNDS interleaved rounds; prints calls/s and
# the proxy's CPU per call (user+system ticks over the run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bin=$(realpath "${1:-target/release/sluice}")
load=${GRPC_LOAD:-${CARGO_TARGET_DIR:-target}/release/grpc-load}
[[ -x $load ]] || { echo "no $load (cargo build --release -p sluice-e2e --bin grpc-load)" >&2; exit 1; }
rounds=${ROUNDS:-3} duration=${DURATION:-8} conns=${CONNS:-16} streams=${STREAMS:-8} workers=${WORKERS:-2}
base=${BASE_PORT:-18700}
server=$base sluice=$((base + 10)) nginx=$((base + 20))
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$load" serve "127.0.0.1:$server" & pids+=($!)
temp_paths=$(nginx_temp_paths "$tmp")
cat > "$tmp/nginx.conf" <<EOC
worker_processes $workers; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err; worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http { access_log off; $temp_paths http2_max_concurrent_streams 128;
  keepalive_requests 10000000; keepalive_timeout 120s;
  upstream g { server 127.0.0.1:$server; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$nginx http2; location / { grpc_pass grpc://g; } } }
EOC
nginx -c "$tmp/nginx.conf" -p "$tmp" & pids+=($!)
api=127.0.0.1:$((sluice + 1)) token=bench-token
SLUICE_ADMIN_TOKEN=$token RUST_LOG=warn setsid "$bin" dev --data-dir "$tmp/sluice" --api-addr "$api" \
  --grpc-addr "127.0.0.1:$((sluice + 2))" --admin-addr "127.0.0.1:$((sluice + 3))" > "$tmp/sluice.log" 2>&1 & pids+=($!)
for _ in $(seq 200); do curl -sf -o /dev/null "http://$api/healthz" && break; sleep 0.1; done
put() { curl -sf -X PUT "http://$api/v1/$1" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$2" > /dev/null; }
put clusters/g "{\"protocol\":\"http2\",\"endpoints\":[{\"address\":\"127.0.0.1:$server\"}]}"
put listeners/g "{\"address\":\"127.0.0.1:$sluice\",\"protocol\":\"http\"}"
put routes/g '{"listener":"g","match":{"path":{"prefix":"/"}},"backends":[{"cluster":"g"}]}'
for _ in $(seq 100); do "$load" call "http://127.0.0.1:$sluice" 1 1 1 2>/dev/null | grep -q "failed 0" && break; sleep 0.2; done

hz=$(getconf CLK_TCK)
declare -A rate cpu
order=(direct sluice nginx)
for r in $(seq "$rounds"); do
  for name in "${order[@]}"; do
    case $name in
      direct) port=$server procs=$(pgrep -f "$load serve 127.0.0.1:$server" | head -1) ;;
      sluice) port=$sluice procs=$(pgrep -f "$bin dev --data-dir $tmp/sluice" | head -1) ;;
      nginx) port=$nginx procs="$(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ')" ;;
    esac
    before=$(ticks $procs)
    out=$("$load" call "http://127.0.0.1:$port" "$conns" "$streams" "$duration")
    after=$(ticks $procs)
    ok=$(awk '{print $4}' <<< "$out") failed=$(awk '{print $6}' <<< "$out") r_=$(awk '{print $10}' <<< "$out")
    us=$(awk -v t=$((after - before)) -v n="$ok" -v hz="$hz" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    echo "round $r $name: $r_ calls/s, $us us CPU/call (the server's for direct), failed $failed"
    rate[$name]+="$r_ " cpu[$name]+="$us "
  done
  order=("${order[@]:1}" "${order[0]}")
done
echo; echo "| path | calls/s (median) | CPU us/call (median) |"; echo "|---|---:|---:|"
for name in direct sluice nginx; do echo "| $name | $(median <<< "${rate[$name]}") | $(median <<< "${cpu[$name]}") |"; done
awk -v a="$(median <<< "${rate[sluice]}")" -v b="$(median <<< "${rate[nginx]}")" -v c="$(median <<< "${cpu[sluice]}")" \
    -v d="$(median <<< "${cpu[nginx]}")" 'BEGIN {printf "sluice / nginx grpc_pass: %.3fx calls/s, %.3fx CPU per call\n", a / b, c / d}'
