#!/usr/bin/env bash
# bench-tls-handshake.sh - full TLS handshakes per second and server CPU per handshake, Sluice's
# https listener against nginx on the same certificate, on loopback, in interleaved rounds.
#
# Every request is a new TCP connection and a FULL handshake on both servers:
#   - wrk runs with `Connection: close` (one request per connection) and with a small LD_PRELOAD
#     shim (built here with cc) that drops the client's session before each reconnect: plain wrk
#     keeps the SSL_SESSION across SSL_clear() and resumes it (session id or ticket) whenever the
#     server allows, which Sluice (rustls' default in-memory session cache) does;
#   - nginx runs with `ssl_session_cache off; ssl_session_tickets off`.
#   A self-check before the runs sends wrk (with the shim) to an nginx server that DOES offer
#   resumption and logs `$ssl_session_reused` / `$ssl_protocol`: it must see 0 resumed handshakes,
#   one connection per request and the TLS version asked for. Each measured run also reports the
#   server's accepted connections per request (nginx stub_status, Sluice's
#   sluice_connections_total): it must be 1.00.
#
# Configs (all on 127.0.0.1, one certificate, ECDSA P-256 by default):
#   nginx        nginx, worker_processes WORKERS, https, `return 200 "ok\n"` (no upstream)
#   nginx-proxy  the same nginx, https, proxy_pass to the backend (keep-alive upstream): the same
#                work per request as Sluice
#   sluice       `sluice dev` (control plane + one node in one process; the node runs one worker
#                thread per core), https listener on the certificate, one route to the backend
# The backend is a separate plain-HTTP nginx (1 worker, `return 200`); its CPU is not counted.
# CPU per handshake: user+sys of the server's processes (/proc/PID/stat of the process and its
# children) over the run / requests.
#
# Usage, from the repository root after `cargo build --release --bin sluice`:
#   scripts/bench-tls-handshake.sh
# Knobs (environment), defaults in brackets:
ROUNDS=${ROUNDS:-3}              # runs per (config, TLS version), interleaved
DURATION=${DURATION:-5}          # seconds per wrk run
WARMUP=${WARMUP:-1}              # seconds of discarded wrk per config and version first (0: none)
THREADS=${THREADS:-2}            # wrk threads
CONNS=${CONNS:-32}               # wrk connections (each does handshake, one request, close)
VERSIONS=${VERSIONS:-"1.3 1.2"}  # TLS versions, forced on the client side
CERT=${CERT:-ecdsa}              # ecdsa (P-256) or rsa (2048)
WORKERS=${WORKERS:-2}            # nginx worker_processes
CONFIGS=${CONFIGS:-"nginx nginx-proxy sluice"}
REF=${REF:-nginx}                # config the ratio columns compare to
BASE_PORT=${BASE_PORT:-18500}    # ports BASE_PORT+1 .. BASE_PORT+23
SLUICE_BIN=${SLUICE_BIN:-}       # [$CARGO_TARGET_DIR/release/sluice, else target/release/sluice]
OUT=${OUT:-}                     # dir for configs, logs, raw wrk output [a new temp dir]

set -euo pipefail

die() { echo "bench-tls-handshake: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

case ${1:-} in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  "") ;;
  *) die "no arguments expected (knobs are environment variables; try --help)" ;;
esac

# ---------------------------------------------------------------- tools
missing=()
command -v nginx   >/dev/null || missing+=(nginx)
command -v wrk     >/dev/null || missing+=(wrk)
command -v curl    >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v ps      >/dev/null || missing+=(procps)
command -v cc      >/dev/null || missing+=(gcc libc6-dev)
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if [[ -z $SLUICE_BIN ]]; then
  SLUICE_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/sluice
  [[ -x $SLUICE_BIN ]] || SLUICE_BIN=$PWD/target/release/sluice
fi
if [[ " $CONFIGS " == *" sluice "* ]]; then
  [[ -x $SLUICE_BIN ]] || die "no sluice binary at $SLUICE_BIN (cargo build --release --bin sluice, or set SLUICE_BIN)"
fi
for v in $VERSIONS; do [[ $v == 1.2 || $v == 1.3 ]] || die "VERSIONS: 1.2 and/or 1.3, not $v"; done

[[ -n $OUT ]] || OUT=$(mktemp -d -t tls-bench.XXXXXX)
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
CLK_TCK=$(getconf CLK_TCK)

P_NGINX=$((BASE_PORT + 1)) P_NGINX_PROXY=$((BASE_PORT + 2)) P_CHECK=$((BASE_PORT + 3))
P_STATUS=$((BASE_PORT + 4)) P_BACKEND=$((BASE_PORT + 10))
P_SLUICE=$((BASE_PORT + 20)) P_API=$((BASE_PORT + 21)) P_GRPC=$((BASE_PORT + 22)) P_ADMIN=$((BASE_PORT + 23))
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $P_NGINX $P_NGINX_PROXY $P_CHECK $P_STATUS $P_BACKEND $P_SLUICE $P_API $P_GRPC $P_ADMIN; do
  port_busy "$p" && die "port $p is already in use (set BASE_PORT)"
done

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
  set +e
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p"; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU time (clock ticks, user+sys) of a pid and all its descendants
descendants() { echo "$1"; local c; for c in $(ps -o pid= --ppid "$1"); do descendants "$c"; done; }
tree_ticks() {
  local files=() p
  for p in $(descendants "$1"); do files+=("/proc/$p/stat"); done
  cat "${files[@]}" 2>/dev/null | awk '{ sub(/.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}

# ---------------------------------------------------------------- certificate
cd "$OUT"
case $CERT in
  ecdsa) keyopts=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  rsa)   keyopts=(-newkey rsa:2048) ;;
  *)     die "CERT: ecdsa or rsa, not $CERT" ;;
esac
openssl req -x509 "${keyopts[@]}" -nodes -keyout key.pem -out cert.pem -days 7 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2> openssl-req.err || die "openssl req failed"

# ---------------------------------------------------------------- client: no resumption, fixed version
# wrk calls SSL_shutdown + SSL_clear on close and SSL_connect again on the same SSL: the session of
# the previous connection stays and is offered. Drop it before the SSL_clear.
cat > noresume.c <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);
int SSL_clear(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    SSL_set_session(s, 0);
    return real(s);
}
EOF
cc -shared -fPIC -O2 -o noresume.so noresume.c -ldl || die "cannot build the wrk shim"
for v in 1.2 1.3; do   # OpenSSL reads these at SSL_CTX_new: the version wrk offers
  printf '%s\n' 'openssl_conf = conf' '[conf]' 'ssl_conf = ssl' '[ssl]' 'system_default = sys' '[sys]' \
    "MinProtocol = TLSv$v" "MaxProtocol = TLSv$v" > "client-tls$v.cnf"
done
client_wrk() {  # VERSION TIMEOUT wrk-args...
  local v=$1 t=$2; shift 2
  timeout "$t" env OPENSSL_CONF="$OUT/client-tls$v.cnf" LD_PRELOAD="$OUT/noresume.so" wrk "$@"
}

# ---------------------------------------------------------------- servers
cat > backend.conf <<EOF
worker_processes 1;
pid $OUT/backend.pid;
error_log $OUT/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$P_BACKEND; location / { return 200 "ok\n"; } }
}
EOF
cat > nginx.conf <<EOF
worker_processes $WORKERS;
pid $OUT/nginx.pid;
error_log $OUT/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  ssl_certificate $OUT/cert.pem;
  ssl_certificate_key $OUT/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
  upstream backend { server 127.0.0.1:$P_BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$P_NGINX ssl; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:$P_NGINX_PROXY ssl;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  # Self-check only: offers resumption (cache and tickets) and logs whether the client used it.
  log_format check '\$connection \$ssl_protocol \$ssl_session_reused';
  server {
    listen 127.0.0.1:$P_CHECK ssl;
    ssl_session_cache shared:check:1m;
    ssl_session_tickets on;
    access_log $OUT/check.log check;
    location / { return 200 "ok\n"; }
  }
  server { listen 127.0.0.1:$P_STATUS; location / { stub_status; } }
}
EOF
start_nginx() {  # NAME; sets LAST_PID
  nginx -t -q -p "$OUT" -e "$OUT/$1-t.err" -c "$OUT/$1.conf" || die "bad nginx config $OUT/$1.conf"
  nginx -p "$OUT" -e "$OUT/$1.err" -c "$OUT/$1.conf" -g 'daemon off;' &
  PIDS+=($!); LAST_PID=$!
}
wait_up() {  # URL PID
  for _ in $(seq 100); do
    curl -skf -o /dev/null --max-time 1 "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "the server for $1 exited (logs in $OUT)"
    sleep 0.1
  done
  die "nothing answers on $1 (logs in $OUT)"
}
start_nginx backend; BACKEND_PID=$LAST_PID
start_nginx nginx; NGINX_PID=$LAST_PID
wait_up "http://127.0.0.1:$P_BACKEND/" "$BACKEND_PID"
wait_up "https://127.0.0.1:$P_NGINX/" "$NGINX_PID"

SLUICE_PID=
if [[ " $CONFIGS " == *" sluice "* ]]; then
  export SLUICE_ADMIN_TOKEN=bench-token RUST_LOG=${RUST_LOG:-warn}
  "$SLUICE_BIN" dev --data-dir "$OUT/sluice-data" --api-addr "127.0.0.1:$P_API" \
    --grpc-addr "127.0.0.1:$P_GRPC" --admin-addr "127.0.0.1:$P_ADMIN" > "$OUT/sluice.log" 2>&1 &
  PIDS+=($!); SLUICE_PID=$!
  wait_up "http://127.0.0.1:$P_API/healthz" "$SLUICE_PID"
  call() {  # METHOD PATH JSON
    curl -sf -X "$1" "http://127.0.0.1:$P_API$2" -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN" \
      -H 'Content-Type: application/json' -d "$3" > /dev/null || die "sluice: $1 $2 failed"
  }
  pem() { awk 'BEGIN { ORS = "\\n" } { print }' "$1"; }   # JSON string body (PEM has no " or \)
  call PUT /v1/certificates/bench "{\"cert_pem\":\"$(pem cert.pem)\",\"key_pem\":\"$(pem key.pem)\"}"
  call PUT /v1/clusters/bench "{\"endpoints\":[{\"address\":\"127.0.0.1:$P_BACKEND\"}]}"
  call PUT /v1/listeners/bench \
    "{\"address\":\"127.0.0.1:$P_SLUICE\",\"protocol\":\"https\",\"certificates\":[\"bench\"]}"
  call PUT /v1/routes/bench '{"listener":"bench","match":{"path":{"prefix":"/"}},"backends":[{"cluster":"bench"}]}'
  wait_up "https://127.0.0.1:$P_SLUICE/" "$SLUICE_PID"
fi

port_of() { case $1 in nginx) echo "$P_NGINX" ;; nginx-proxy) echo "$P_NGINX_PROXY" ;; sluice) echo "$P_SLUICE" ;; esac; }
pid_of() { case $1 in sluice) echo "$SLUICE_PID" ;; *) echo "$NGINX_PID" ;; esac; }
for c in $CONFIGS; do [[ -n $(port_of "$c") ]] || die "unknown config in CONFIGS: $c"; done
# Accepted connections so far: nginx stub_status (all of its servers), Sluice's listener counter.
accepts() {
  case $1 in
    sluice) curl -sf "http://127.0.0.1:$P_ADMIN/metrics" |
              awk '/^sluice_connections_total\{listener="bench"\}/ { print $2; f = 1 } END { if (!f) print 0 }' ;;
    *)      curl -sf "http://127.0.0.1:$P_STATUS/" | awk 'NR == 3 { print $1 }' ;;
  esac
}

# ---------------------------------------------------------------- self-checks
{
  echo "certificate: $CERT ($(openssl x509 -in cert.pem -noout -text | grep -m1 -E 'Public-Key|ASN1 OID' | xargs))"
  for v in $VERSIONS; do
    : > check.log   # nginx appends (O_APPEND): truncating is enough
    client_wrk "$v" 30 -t1 -c4 -d1s -H 'Connection: close' "https://127.0.0.1:$P_CHECK/" > "raw/check-tls$v.txt" 2>&1 ||
      die "wrk failed on the check server (raw/check-tls$v.txt)"
    read -r lines conns reused wrong < <(awk -v want="TLSv$v" '
      { n++; c[$1] = 1; if ($3 == "r") r++; if ($2 != want) w++ }
      END { printf "%d %d %d %d\n", n, length(c), r, w }' check.log)
    echo "self-check TLS $v: $lines requests, $conns connections, $reused resumed, $wrong with another version"
    ((lines > 100 && conns == lines && reused == 0 && wrong == 0)) ||
      die "the client does not make one full TLSv$v handshake per request (see $OUT/check.log)"
    # What each server negotiates, and whether it offers resumption (informational).
    for c in $CONFIGS; do
      s=$(printf 'GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n' |
            timeout 5 openssl s_client -connect "127.0.0.1:$(port_of "$c")" -servername bench.test \
              "-tls${v/./_}" -ign_eof 2>&1 || true)
      proto=$(awk -F': *' '/^ *Protocol *:/ { print $2; exit }' <<< "$s")
      cipher=$(awk -F': *' '/^ *Cipher *:/ { print $2; exit }' <<< "$s")
      kx=$(awk -F': *' '/Server Temp Key|Negotiated TLS1.3 group/ { print $2; exit }' <<< "$s")
      tickets=$(grep -c 'Post-Handshake New Session Ticket' <<< "$s" || true)
      sid=$(awk -F': *' '/^ *Session-ID *:/ { print ($2 == "" ? "none" : "yes"); exit }' <<< "$s")
      if [[ $v == 1.3 ]]; then offer="session tickets sent: $tickets"; else offer="session id: ${sid:-?}"; fi
      echo "  $c: ${proto:-?} ${cipher:-?} ${kx:+($kx)}; $offer"
    done
  done
} | tee "$OUT/checks.txt" >&2

# ---------------------------------------------------------------- measure
run_wrk() {  # ROUND VERSION CONFIG SECONDS -> one TSV line
  local port pid raw t0 t1 a0 a1 s0 s1
  port=$(port_of "$3") pid=$(pid_of "$3")
  raw="$OUT/raw/$3.tls$2.r$1.txt"
  a0=$(accepts "$3"); t0=$(tree_ticks "$pid"); s0=$(head -1 /proc/stat)
  client_wrk "$2" $(($4 + 30)) -t"$THREADS" -c"$CONNS" -d"$4"s -H 'Connection: close' \
    "https://127.0.0.1:$port/" > "$raw" 2>&1 || log "wrk failed for $3 (see $raw)"
  t1=$(tree_ticks "$pid"); s1=$(head -1 /proc/stat); a1=$(accepts "$3")
  # nginx's counter includes the stub_status request that read a1
  [[ $3 == sluice ]] || a1=$((a1 - 1))
  awk -v r="$1" -v v="$2" -v n="$3" -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" -v acc=$((a1 - a0)) \
      -v s0="$s0" -v s1="$s1" '
    / requests in / { reqs = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END {
      cpu = reqs > 0 ? ticks / hz * 1e6 / reqs : 0
      split(s0, a, " "); split(s1, b, " ")
      for (i = 2; i <= 9; i++) tot += b[i] - a[i]
      idle = tot ? 100 * (b[5] - a[5]) / tot : 0
      printf "%s\t%s\t%s\t%.0f\t%.1f\t%.3f\t%d\t%.1f\n", r, v, n, rps, cpu, reqs ? acc / reqs : 0, err, idle
    }' "$raw"
}

read -r -a cfgs <<< "$CONFIGS"
ncfg=${#cfgs[@]}
log ""
log "configs: ${cfgs[*]}; TLS $VERSIONS; $ROUNDS rounds x ${DURATION}s; wrk -t$THREADS -c$CONNS; raw output in $OUT"
if ((WARMUP > 0)); then
  for v in $VERSIONS; do
    for c in "${cfgs[@]}"; do
      client_wrk "$v" $((WARMUP + 30)) -t"$THREADS" -c"$CONNS" -d"$WARMUP"s -H 'Connection: close' \
        "https://127.0.0.1:$(port_of "$c")/" > /dev/null 2>&1 || true
    done
  done
fi
RESULTS=$OUT/results.tsv
printf 'round\ttls\tconfig\thandshakes_per_s\tcpu_us_per_handshake\tconns_per_req\terrors\tidle_pct\n' > "$RESULTS"
for r in $(seq "$ROUNDS"); do
  for v in $VERSIONS; do
    for k in $(seq 0 $((ncfg - 1))); do
      c=${cfgs[$(( (k + r - 1) % ncfg ))]}    # rotate the start each round
      line=$(run_wrk "$r" "$v" "$c" "$DURATION")
      echo "$line" >> "$RESULTS"
      log "$(awk -F'\t' '{ printf "[round %s] TLS %s %-12s %6s hs/s  %6.1f us CPU/hs  conns/req %s  errors %s  idle %s%%", $1, $2, $3, $4, $5, $6, $7, $8 }' <<< "$line")"
    done
  done
done

# ---------------------------------------------------------------- report
{
  echo ""
  echo "TLS handshakes: wrk -t$THREADS -c$CONNS -d${DURATION}s, one request per connection, no resumption;"
  echo "$ROUNDS interleaved rounds, median (min-max); certificate $CERT; nginx worker_processes $WORKERS."
  echo "CPU/hs: user+sys of the server's processes / handshakes. Ratios: config / $REF (same TLS version)."
  awk -F'\t' 'NR > 1 { i += $8; n++ } END { if (n) printf "Whole machine %.1f%% idle on average during the runs.\n", i / n }' "$RESULTS"
  echo ""
  awk -F'\t' -v ref="$REF" '
    function median(s,   a, n, i, j, t) {
      n = split(s, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      lo = a[1]; hi = a[n]
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR == 1 { next }
    {
      k = $2 SUBSEP $3
      if (!(k in seen)) { seen[k] = 1; keys[++nk] = k }
      hs[k] = hs[k] " " $4; cpu[k] = cpu[k] " " $5; cpr[k] = cpr[k] " " $6; err[k] += $7
    }
    END {
      print "| TLS | config | handshakes/s median | min-max | CPU us/handshake | conns/req | hs/s vs " ref " | CPU vs " ref " | errors |"
      print "|---|---|---:|---:|---:|---:|---:|---:|---:|"
      for (i = 1; i <= nk; i++) {
        k = keys[i]; split(k, kv, SUBSEP); rk = kv[1] SUBSEP ref
        rh = (rk in hs) ? median(hs[rk]) : 0; rc = (rk in cpu) ? median(cpu[rk]) : 0
        m = median(hs[k]); mn = lo; mx = hi; c = median(cpu[k])
        printf "| %s | %s | %.0f | %.0f-%.0f | %.1f | %.2f | %s | %s | %d |\n", kv[1], kv[2], m, mn, mx, c,
               median(cpr[k]), rh ? sprintf("%.2f", m / rh) : "-", rc ? sprintf("%.2f", c / rc) : "-", err[k]
      }
    }' "$RESULTS"
} | tee "$OUT/table.md"
log ""
log "raw wrk output, checks.txt, results.tsv and table.md are in $OUT"
