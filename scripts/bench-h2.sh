#!/usr/bin/env bash
# bench-h2.sh [SLUICE_BIN] — HTTP/2 load against Sluice, nginx (`http2` on the listen) and HAProxy
# (`proto h2`), all h2c on loopback in front of the same nginx HTTP/1.1 backend (13-byte body),
# with h2load: CONNS connections x STREAMS concurrent streams, DURATION seconds a run, ROUNDS
# interleaved rounds. Prints per run req/s and CPU per request (user+system ticks of the proxy's
# processes over the run), then the medians and Sluice's ratios to each peer.
# WORKERS (default 2): nginx worker_processes, HAProxy nbthread (Sluice uses a worker per core).
# UPSTREAM=h2: the backend speaks h2c and the proxies HTTP/2 to it (Sluice `protocol: http2`,
# HAProxy `proto h2`); nginx, which cannot proxy HTTP/2 upstream but for gRPC, sits this one out.
# Needs nginx, haproxy, h2load (scripts/install-bench-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bin=$(realpath "${1:-target/release/sluice}")
rounds=${ROUNDS:-3} duration=${DURATION:-10} conns=${CONNS:-64} streams=${STREAMS:-10} workers=${WORKERS:-2}
upstream=${UPSTREAM:-h1}
backend_listen="" haproxy_proto=""
[[ $upstream == h2 ]] && backend_listen=" http2" haproxy_proto=" proto h2"
base=${BASE_PORT:-18400}
backend=$base sluice=$((base + 10)) nginx=$((base + 20)) haproxy=$((base + 30))
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
temp_paths=$(nginx_temp_paths "$tmp")

cat > "$tmp/backend.conf" <<EOF
worker_processes 2; daemon off; pid $tmp/backend.pid; error_log $tmp/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; $temp_paths
  server { listen 127.0.0.1:$backend$backend_listen backlog=4096; location / { return 200 "hello, world\n"; } } }
EOF
nginx -c "$tmp/backend.conf" -p "$tmp" & pids+=($!)

cat > "$tmp/nginx.conf" <<EOF
worker_processes $workers; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 120s; $temp_paths
  http2_max_concurrent_streams 128;
  upstream backends { server 127.0.0.1:$backend; keepalive 512; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$nginx http2 backlog=4096;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
nginx -c "$tmp/nginx.conf" -p "$tmp" & pids+=($!)

cat > "$tmp/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend h2c
    bind 127.0.0.1:$haproxy proto h2
    default_backend b
backend b
    http-reuse always
    server b1 127.0.0.1:$backend$haproxy_proto
EOF
haproxy -f "$tmp/haproxy.cfg" & pids+=($!)

SLUICE_BIN="$bin" BENCH_BACKENDS="127.0.0.1:$backend" BENCH_TMP="$tmp" \
  setsid ../shared/bench/sluice-candidate.sh l7 "$sluice" > "$tmp/sluice.log" 2>&1 & pids+=($!)

ports="$backend $nginx $haproxy $sluice"
[[ $upstream == h2 ]] && ports="$backend $haproxy $sluice"
for port in $ports; do
  for _ in $(seq 200); do curl -sf -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$port/" 2>/dev/null && break
    curl -sf -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && [[ $port == "$backend" ]] && break; sleep 0.1; done
done

if [[ $upstream == h2 ]]; then
  # The candidate's cluster, spoken to over HTTP/2.
  curl -sf -X PUT "http://127.0.0.1:$((sluice + 1))/v1/clusters/bench" -H "Authorization: Bearer bench-token" \
    -H 'Content-Type: application/json' \
    -d "{\"protocol\":\"http2\",\"endpoints\":[{\"address\":\"127.0.0.1:$backend\"}]}" > /dev/null
  sleep 1
fi

# The processes of a proxy: its pid and its children (nginx's workers).
procs() { local p=$1; echo "$p"; pgrep -P "$p" || true; }
pid_of() {
  case $1 in
    nginx) cat "$tmp/nginx.pid" ;;
    haproxy) pgrep -f "haproxy -f $tmp/haproxy.cfg" | head -1 ;;
    sluice) pgrep -f "$bin dev --data-dir $tmp" | head -1 ;;
  esac
}
port_of() { case $1 in nginx) echo "$nginx" ;; haproxy) echo "$haproxy" ;; sluice) echo "$sluice" ;; esac; }

hz=$(getconf CLK_TCK)
declare -A rps cpu
order=(sluice nginx haproxy)
[[ $upstream == h2 ]] && order=(sluice haproxy)
names=("${order[@]}")
for r in $(seq "$rounds"); do
  for name in "${order[@]}"; do
    port=$(port_of "$name") pid=$(pid_of "$name")
    h2load -c "$conns" -m "$streams" -D 2 "http://127.0.0.1:$port/" > /dev/null 2>&1   # warm
    before=$(ticks $(procs "$pid"))
    out=$(h2load -c "$conns" -m "$streams" -D "$duration" "http://127.0.0.1:$port/" 2>&1)
    after=$(ticks $(procs "$pid"))
    done_=$(awk '/^requests:/ {print $8}' <<< "$out")
    failed=$(awk '/^requests:/ {print $10}' <<< "$out")
    ok2xx=$(awk '/^status codes:/ {print $3}' <<< "$out")
    rate=$(awk -v n="$done_" -v d="$duration" 'BEGIN {printf "%.0f", n / d}')
    us=$(awk -v t=$((after - before)) -v n="$done_" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "round $r $name: $rate req/s, $us us CPU/req, done $done_, failed $failed, 2xx $ok2xx"
    rps[$name]+="$rate " cpu[$name]+="$us "
  done
  order=("${order[@]:1}" "${order[0]}")
done
echo
echo "| proxy | req/s (median) | CPU us/req (median) |"
echo "|---|---:|---:|"
for name in "${names[@]}"; do
  echo "| $name | $(median <<< "${rps[$name]}") | $(median <<< "${cpu[$name]}") |"
done
for peer in "${names[@]:1}"; do
  awk -v a="$(median <<< "${rps[sluice]}")" -v b="$(median <<< "${rps[$peer]}")" \
      -v c="$(median <<< "${cpu[sluice]}")" -v d="$(median <<< "${cpu[$peer]}")" -v p="$peer" \
      'BEGIN {printf "sluice / %s: %.3fx req/s, %.3fx CPU per request\n", p, a / b, c / d}'
done
