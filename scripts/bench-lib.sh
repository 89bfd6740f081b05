# bench-lib.sh — helpers the bench-*.sh scripts source.

# ticks PID... — user+system clock ticks the processes have used so far.
ticks() {
  local t=0 p
  for p in "$@"; do [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

# median — the median of the numbers on standard input (separated by spaces or new lines).
median() {
  tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# nginx_temp_paths DIR — nginx's temp-path directives, all under DIR (made here), so that an
# nginx started by a benchmark writes nothing outside it.
nginx_temp_paths() {
  mkdir -p "$1"/{body,proxy,fastcgi,uwsgi,scgi}
  echo "client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fastcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;"
}
