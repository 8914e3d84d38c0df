#!/usr/bin/env bash
# bench/upstream.sh — upstream connection reuse under steady load: two harp builds side by
# side (A = before, B = after), alternating rounds, wrk with C kept-alive clients through an
# [[http.routes]] route to an nginx origin (1 KiB), one loop.
#
#   bench/upstream.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]    (defaults: 3 rounds, 5 s per run)
#
# For c = 50, 200 and 1,000: req/s, harp's CPU µs per request, and new upstream connections
# per 1,000 requests (harp_http_upstream_connections_opened_total before and after the run,
# read from the admin endpoint). Prints medians and B/A ratios.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
A=$1 B=$2 ROUNDS=${3:-3} SECS=${4:-5}
OUT=$PWD/bench/out/upstream
mkdir -p "$OUT/html" "$OUT/logs"
need wrk nginx curl
[ -f "$OUT/html/1k" ] || head -c 1024 /dev/urandom > "$OUT/html/1k"
ORIGIN=19601 PORT=19602 ADMIN=19603
nginx_origin_conf $ORIGIN > "$OUT/origin.conf"
nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN_PID=$!
trap 'kill $ORIGIN_PID 2>/dev/null; kill $(jobs -p) 2>/dev/null; true' EXIT
{ harp_head; printf '[admin]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = ["127.0.0.1:%s"]\naccess_log = false\n[[http.routes]]\npath_prefix = "/"\nupstream = "http://127.0.0.1:%s"\n' \
  $ADMIN $PORT $ORIGIN; } > "$OUT/harp.toml"
opened() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^harp_http_upstream_connections_opened_total / { print $2 }'; }
RESULTS=$OUT/results.txt
: > "$RESULTS"
run() {  # binary label clients
  "$1" serve --config "$OUT/harp.toml" > "$OUT/logs/$2.log" 2>&1 & local pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$ADMIN/healthz"; do sleep 0.1; done
  wrk -t2 -c"$3" -d1s "http://127.0.0.1:$PORT/1k" > /dev/null  # warm: the pool's need is learnt
  local before_open; before_open=$(opened)
  local before_cpu; before_cpu=$(cpu_ticks $pid)
  read -r rps p99 requests < <(wrk -t2 -c"$3" -d"${SECS}s" --latency "http://127.0.0.1:$PORT/1k" | wrk_summary)
  local cpu=$(( $(cpu_ticks $pid) - before_cpu )) opens; opens=$(( $(opened) - before_open ))
  kill $pid; wait $pid 2>/dev/null || true
  local us; us=$(awk -v t=$cpu -v hz=$ticks -v n=$requests 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  local per; per=$(awk -v o=$opens -v n=$requests 'BEGIN { printf "%.2f", o * 1000 / n }')
  echo "$2 c$3 $rps $us $per" | tee -a "$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
  for c in 50 200 1000; do
    if [ $((round % 2)) = 1 ]; then run "$A" a $c; run "$B" b $c; else run "$B" b $c; run "$A" a $c; fi
  done
done
printf '\n%-6s %10s %10s %10s %10s %10s %10s\n' clients "A req/s" "B req/s" "A µs/req" "B µs/req" "A new/1k" "B new/1k"
for c in 50 200 1000; do
  med() { grep "^$1 c$c " "$RESULTS" | awk -v k=$2 '{ print $k }' | median; }
  printf '%-6s %10s %10s %10s %10s %10s %10s\n' $c "$(med a 3)" "$(med b 3)" "$(med a 4)" "$(med b 4)" "$(med a 5)" "$(med b 5)"
done
