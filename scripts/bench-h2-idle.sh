#!/usr/bin/env bash
# bench-h2-idle.sh [SLUICE_BIN] — memory per idle HTTP/2 client connection, Sluice against nginx
# (`listen … http2`), both h2c in front of one nginx backend: RSS of the proxy's processes before
# and after N (default 2,000) clients have each opened a connection, had one request answered
# and gone quiet (scripts/h2-idle-clients.py, Python's h2 package).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bin=$(realpath "${1:-target/release/sluice}")
n=${N:-2000} base=${BASE_PORT:-18500}
backend=$base sluice=$((base + 10)) nginx=$((base + 20))
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
temp_paths=$(nginx_temp_paths "$tmp")
cat > "$tmp/backend.conf" <<EOC
worker_processes 1; daemon off; pid $tmp/backend.pid; error_log $tmp/backend.err;
events { worker_connections 4096; }
http { access_log off; $temp_paths server { listen 127.0.0.1:$backend; location / { return 200 "hello, world\n"; } } }
EOC
nginx -c "$tmp/backend.conf" -p "$tmp" & pids+=($!)
cat > "$tmp/nginx.conf" <<EOC
worker_processes 2; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err; worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http { access_log off; keepalive_timeout 300s; $temp_paths
  upstream b { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$nginx http2; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOC
nginx -c "$tmp/nginx.conf" -p "$tmp" & pids+=($!)
SLUICE_BIN="$bin" BENCH_BACKENDS="127.0.0.1:$backend" BENCH_TMP="$tmp" \
  ../shared/bench/sluice-candidate.sh l7 "$sluice" > "$tmp/sluice.log" 2>&1 & pids+=($!)
for port in $nginx $sluice; do
  for _ in $(seq 200); do curl -sf -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
for name in sluice nginx; do
  if [[ $name == nginx ]]; then port=$nginx; procs=$(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ');
  else port=$sluice; procs=$(pgrep -f "$bin dev --data-dir $tmp" | head -1); fi
  before=$(rss_kb $procs)
  mkfifo "$tmp/hold-$name"
  python3 scripts/h2-idle-clients.py "127.0.0.1:$port" "$n" < "$tmp/hold-$name" > "$tmp/clients-$name.log" &
  cpid=$!
  exec 3> "$tmp/hold-$name"
  for _ in $(seq 600); do grep -q open "$tmp/clients-$name.log" 2>/dev/null && break; sleep 0.2; done
  sleep 1
  after=$(rss_kb $procs)
  exec 3>&-
  wait "$cpid" || true
  echo "$name: $(cat "$tmp/clients-$name.log"): RSS $before -> $after KiB, $(( (after - before) * 1024 / n )) bytes per idle connection"
done
