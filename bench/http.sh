#!/usr/bin/env bash
# bench/http.sh — harp's http plugin vs nginx (proxy) vs HAProxy, each with one worker/loop,
# in front of one nginx origin on loopback. Rounds alternate the proxies; medians and ratios.
#
#   bench/http.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds, 5 s per wrk run)
#
# Measures: wrk -t1 -c50 req/s and p99 on 1 KiB; wrk -t1 -c16 req/s on 1 MiB; curl GB/s on
# 2 GiB, as is and chunked; proxy CPU seconds per GB (2 GiB downloads) and CPU µs per request
# (1 KiB run); then
# memory: each proxy's RSS while it holds 3,000 idle client connections (KiB per connection)
# and what it keeps after they close, over three floods.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
SECS=${2:-5}
OUT=$PWD/bench/out/http
mkdir -p "$OUT/html" "$OUT/logs"

need haproxy wrk nginx
swift build -c release --product harp >/dev/null
HARP=$PWD/.build/release/harp

[ -f "$OUT/html/1k" ] || head -c 1024 /dev/urandom > "$OUT/html/1k"
[ -f "$OUT/html/1m" ] || head -c $((1 << 20)) /dev/urandom > "$OUT/html/1m"
[ -f "$OUT/html/2g" ] || head -c $((2 << 30)) /dev/urandom > "$OUT/html/2g"

ORIGIN=19101 HARP_PORT=19102 NGINX_PORT=19103 HAPROXY_PORT=19104
nginx_origin_conf $ORIGIN > "$OUT/origin.conf"
{ nginx_head proxy; cat <<CONF
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $OUT/proxy-body;
  proxy_temp_path $OUT/proxy-temp;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
} > "$OUT/proxy.conf"
cat > "$OUT/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-response
    http-reuse always
frontend web
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN
CFG
cat > "$OUT/harp.toml" <<TOML
$(harp_head)
[http]
listen = ["127.0.0.1:$HARP_PORT"]
access_log = false
upstream_keepalive = 64
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$ORIGIN"
TOML

nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN_PID=$!
nginx -p "$OUT" -c "$OUT/proxy.conf" & NGINX_PID=$!
haproxy -f "$OUT/haproxy.cfg" -db > "$OUT/logs/haproxy.log" 2>&1 & HAPROXY_PID=$!
$HARP serve --config "$OUT/harp.toml" > "$OUT/logs/harp.log" 2>&1 & HARP_PID=$!
trap 'kill $ORIGIN_PID $NGINX_PID $HAPROXY_PID $HARP_PID 2>/dev/null || true' EXIT
sleep 1

port_of() { case $1 in harp) echo $HARP_PORT;; nginx) echo $NGINX_PORT;; haproxy) echo $HAPROXY_PORT;; esac; }
pid_of() { case $1 in harp) echo $HARP_PID;; nginx) echo $NGINX_PID;; haproxy) echo $HAPROXY_PID;; esac; }

# wrk run: prints "req/s p99_ms cpu_us_per_request"
wrk_run() {
  local who=$1 conns=$2 file=$3 pid; pid=$(pid_of "$who")
  local before; before=$(cpu_ticks "$pid")
  local text; text=$(wrk -t1 -c"$conns" -d"${SECS}s" --latency "http://127.0.0.1:$(port_of "$who")/$file")
  local after; after=$(cpu_ticks "$pid")
  echo "$text" | wrk_summary | awk -v t="$ticks" -v c=$((after - before)) '{ printf "%s %s %.2f\n", $1, $2, (c / t) * 1e6 / $3 }'
}

# 2 GiB download (path $2: 2g, or chunked/2g for the same bytes chunked): prints "GB/s cpu_s_per_GB"
big_run() {
  local who=$1 pid; pid=$(pid_of "$who")
  local before; before=$(cpu_ticks "$pid")
  local speed; speed=$(curl -s -o /dev/null -w '%{speed_download} %{size_download}' "http://127.0.0.1:$(port_of "$who")/${2:-2g}")
  local after; after=$(cpu_ticks "$pid")
  echo "$speed" | awk -v t="$ticks" -v c=$((after - before)) '{ gb = $2 / 1e9; printf "%.3f %.4f\n", $1 / 1e9, (c / t) / gb }'
}

RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(harp nginx haproxy)
  for ((i = 0; i < round % 3; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    small=$(wrk_run "$who" 50 1k); big=$(wrk_run "$who" 16 1m); huge=$(big_run "$who"); chunked=$(big_run "$who" chunked/2g)
    echo "$who $small $big $huge $chunked" >> "$OUT/results.txt"
    echo "round $round $who: 1k[rps p99ms us/req]=$small 1m[rps p99ms us/req]=$big 2g[GB/s cpu/GB]=$huge chunked 2g=$chunked"
  done
done

echo
printf "%-8s %12s %10s %10s %12s %10s %12s %12s %12s\n" proxy "1KiB req/s" "p99 ms" "us/req" "1MiB req/s" "2GiB GB/s" "CPU s/GB" "chunked GB/s" "CPU s/GB"
for who in harp nginx haproxy; do
  printf "%-8s %12s %10s %10s %12s %10s %12s %12s %12s\n" $who "$(column_median $who 2)" "$(column_median $who 3)" "$(column_median $who 4)" "$(column_median $who 5)" "$(column_median $who 8)" "$(column_median $who 9)" "$(column_median $who 10)" "$(column_median $who 11)"
done
echo
for other in nginx haproxy; do
  awk -v a="$(column_median harp 2)" -v b="$(column_median $other 2)" -v p="$(column_median harp 3)" -v q="$(column_median $other 3)" -v g="$(column_median harp 8)" -v h="$(column_median $other 8)" \
      -v c="$(column_median harp 9)" -v d="$(column_median $other 9)" -v m="$(column_median harp 5)" -v n="$(column_median $other 5)" -v other=$other 'BEGIN {
    printf "harp/%s: 1KiB req/s %.2fx, p99 %.2fx, 1MiB req/s %.2fx, 2GiB GB/s %.2fx, CPU/GB %.2fx\n", other, a / b, p / q, m / n, g / h, c / d }'
  awk -v g="$(column_median harp 10)" -v h="$(column_median $other 10)" -v c="$(column_median harp 11)" -v d="$(column_median $other 11)" -v other=$other 'BEGIN {
    printf "harp/%s chunked 2GiB: GB/s %.2fx, CPU/GB %.2fx\n", other, g / h, c / d }'
done

# Memory per idle connection: 3,000 connections that send nothing (each proxy's limits allow
# that many), held 3 s, three floods in a row. RSS is read while they are held and 1 s after.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
echo
printf "%-8s %14s %16s %22s\n" proxy "idle RSS MiB" "KiB/connection" "RSS after floods MiB"
for who in harp nginx haproxy; do
  pid=$(pid_of "$who"); base=$(rss_kib "$pid"); held=() after=()
  for flood in 1 2 3; do
    python3 Tests/HTTPProxyTests/hostile_clients.py flood "$(port_of "$who")" 3000 3 > /dev/null & flood=$!
    sleep 2; held+=("$(rss_kib "$pid")"); wait $flood; sleep 1; after+=("$(rss_kib "$pid")")
  done
  awk -v b="$base" -v h="${held[2]}" -v a1="${after[0]}" -v a2="${after[1]}" -v a3="${after[2]}" -v who=$who 'BEGIN {
    printf "%-8s %14.1f %16.1f %22s\n", who, b / 1024, (h - b) / 3000, sprintf("%.1f %.1f %.1f", a1 / 1024, a2 / 1024, a3 / 1024) }'
done
