#!/usr/bin/env bash
# bench/exapps.sh — the ExApps gateway against a plain http route of the same harp process
# (one loop), both in front of one nginx origin standing in for an ExApp (static 1 KiB file).
# Nextcloud's AppAPI endpoints are served by a second nginx (fixed JSON answers), so the
# USER-without-cookie case measures harp's Nextcloud call, not a slow fake.
#
#   bench/exapps.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds, 5 s per wrk run)
#
# Measures wrk -t1 -c50 req/s and p99 for: the plain route; a PUBLIC ExApp route; a USER
# route with a cached session (oc_sessionPassphrase cookie); a USER route with an
# Authorization header and no cookie (one user-info call per request). Then 1 GiB down and
# up through each route, and how many user-info calls 50 concurrent requests of one new
# session make on a cold cache.
#
# For reference (measured by the issue's author, same shape: one worker, wrk -t1 -c50, nginx
# origin at 92k req/s direct), real HaRP 0.4.4 (HAProxy 2.6 + its Python SPOE agent):
# PUBLIC 11.2k req/s, USER with cookie 6.9k, USER without cookie 1.5k; 50 concurrent cold
# requests of one session made 50 user-info calls.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
SECS=${2:-5}
OUT=$PWD/bench/out/exapps
mkdir -p "$OUT/html/public" "$OUT/html/user" "$OUT/logs"

need wrk nginx
swift build -c release --product harp >/dev/null
HARP=$PWD/.build/release/harp

[ -f "$OUT/html/public/1k" ] || head -c 1024 /dev/urandom > "$OUT/html/public/1k"
cp -f "$OUT/html/public/1k" "$OUT/html/user/1k"
[ -f "$OUT/html/public/1g" ] || head -c $((1 << 30)) /dev/urandom > "$OUT/html/public/1g"

ORIGIN=19301 NEXTCLOUD=19302 PLAIN=19303 EXAPPS=19304 FRP=19305
KEY=bench-shared-key
nginx_origin_conf $ORIGIN > "$OUT/origin.conf"
ROUTES='[{"url":"^/public","access_level":0,"bruteforce_protection":[]},{"url":"^/user","access_level":1,"bruteforce_protection":[401]},{"url":"^/upload","access_level":0,"bruteforce_protection":[]}]'
{ nginx_head nextcloud; cat <<CONF
http {
  log_format calls '\$uri \$http_cookie';
  access_log $OUT/logs/nextcloud-calls.log calls;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NEXTCLOUD backlog=4096;
    default_type application/json;
    location = /index.php/apps/app_api/harp/exapp-meta {
      return 200 '{"exapp_token":"bench-secret","exapp_version":"1.0.0","host":"127.0.0.1","port":$ORIGIN,"routes":$ROUTES}';
    }
    location = /index.php/apps/app_api/harp/user-info { return 200 '{"user_id":"bench","access_level":1}'; }
  }
}
CONF
} > "$OUT/nextcloud.conf"
cat > "$OUT/harp.toml" <<TOML
$(harp_head)
plugins = ["http", "websocket", "frp", "exapps"]
[http]
listen = ["127.0.0.1:$PLAIN"]
access_log = false
upstream_keepalive = 64
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$ORIGIN"
[frp]
listen = "127.0.0.1:$FRP"
tls = "off"
shared_key = "$KEY"
[exapps]
listen = ["127.0.0.1:$EXAPPS"]
nextcloud_url = "http://127.0.0.1:$NEXTCLOUD"
shared_key = "$KEY"
TOML

nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN_PID=$!
nginx -p "$OUT" -c "$OUT/nextcloud.conf" & NC_PID=$!
$HARP serve --config "$OUT/harp.toml" > "$OUT/logs/harp.log" 2>&1 & HARP_PID=$!
trap 'kill $ORIGIN_PID $NC_PID $HARP_PID 2>/dev/null || true' EXIT
sleep 1

url_of() {
  case $1 in
    plain) echo "http://127.0.0.1:$PLAIN/public" ;;
    public) echo "http://127.0.0.1:$EXAPPS/exapps/benchapp/public" ;;
    cached) echo "http://127.0.0.1:$EXAPPS/exapps/benchapp/user" ;;
    nocookie) echo "http://127.0.0.1:$EXAPPS/exapps/benchapp/user" ;;
  esac
}
header_of() {
  case $1 in
    cached) echo "Cookie: oc_sessionPassphrase=bench-session" ;;
    nocookie) echo "Authorization: Basic YmVuY2g6cHc=" ;;
    *) echo "X-Bench: 1" ;;
  esac
}
# Warm the record cache (the first request asks Nextcloud once).
curl -s -o /dev/null "$(url_of public)/1k"

# "req/s p99_ms"
wrk_run() { wrk -t1 -c50 -d"${SECS}s" --latency -H "$(header_of "$1")" "$(url_of "$1")/1k" | wrk_summary | awk '{ print $1, $2 }'; }
# 1 GiB down and up: "down_GB/s up_GB/s"
big_run() {
  local base; base=$(url_of "$1"); base=${base%/public}
  local down; down=$(curl -s -o /dev/null -w '%{speed_download}' "$base/public/1g")
  local up; up=$(curl -s -o /dev/null -w '%{speed_upload}' -T "$OUT/html/public/1g" "$base/upload/round-$1")
  awk -v d="$down" -v u="$up" 'BEGIN { printf "%.3f %.3f\n", d / 1e9, u / 1e9 }'
}

RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(plain public cached nocookie)
  for ((i = 0; i < round % 4; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    small=$(wrk_run "$who")
    big="- -"
    case $who in plain|public) big=$(big_run "$who") ;; esac
    echo "$who $small $big" >> "$RESULTS"
    echo "round $round $who: 1k[req/s p99ms]=$small 1GiB[down up GB/s]=$big"
  done
  # A new session, 50 requests at once on a cold session cache: how many user-info calls?
  : > "$OUT/logs/nextcloud-calls.log"  # nginx appends: writes go on at the new end
  seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -H "Cookie: oc_sessionPassphrase=cold-$round" "$(url_of cached)/1k"
  sleep 0.5
  echo "cold $(grep -c "cold-$round" "$OUT/logs/nextcloud-calls.log" || true)" >> "$RESULTS"
done

echo
printf "%-9s %12s %10s %14s %12s\n" route "1KiB req/s" "p99 ms" "1GiB down" "1GiB up"
for who in plain public cached nocookie; do
  printf "%-9s %12s %10s %14s %12s\n" $who "$(column_median $who 2)" "$(column_median $who 3)" "$(column_median $who 4 2>/dev/null || echo -)" "$(column_median $who 5 2>/dev/null || echo -)"
done
echo
awk -v p="$(column_median plain 2)" -v pub="$(column_median public 2)" -v c="$(column_median cached 2)" -v n="$(column_median nocookie 2)" \
    -v pd="$(column_median plain 4)" -v ed="$(column_median public 4)" -v pu="$(column_median plain 5)" -v eu="$(column_median public 5)" 'BEGIN {
  printf "PUBLIC/plain %.2fx (target 0.9), cached USER/plain %.2fx (target 0.85), USER without cookie/plain %.2fx\n", pub / p, c / p, n / p
  printf "1 GiB through the ExApp route / plain: down %.2fx, up %.2fx (target 0.95)\n", ed / pd, eu / pu
  printf "vs HaRP 0.4.4 (its figures above): PUBLIC %.1fx, cached USER %.1fx, USER without cookie %.1fx\n", pub / 11200, c / 6900, n / 1500 }'
echo "user-info calls for 50 concurrent cold requests of one session, per round: $(grep '^cold ' "$RESULTS" | awk '{ print $2 }' | tr '\n' ' ')"
