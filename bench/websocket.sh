#!/usr/bin/env bash
# bench/websocket.sh — WebSocket message rate and MB/s: direct to a Python `websockets` echo
# server, through harp (spliced tunnel), through harp (inspect mode), and through nginx as a
# WebSocket proxy (worker_processes 1). Alternating rounds, medians, ratios.
#
#   bench/websocket.sh [ROUNDS] [SECONDS]   (defaults: 5 rounds, 4 s per run)
#   HARP=/path/to/harp bench/websocket.sh    (another build, for an A/B)
#
# The Python client and server cost far more CPU per message than any proxy, so message-rate
# ratios show how little a proxy adds on top of a real application, not the proxy's ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
SECS=${2:-4}
OUT=$PWD/bench/out/ws
mkdir -p "$OUT/logs"
PEER=$PWD/Tests/WebSocketTests/ws_peer.py
scripts/install-deps >/dev/null
if [ -z "${HARP:-}" ]; then
  swift build -c release --product harp >/dev/null
  HARP=$PWD/.build/release/harp
fi

ECHO=19301 HARP_PORT=19302 NGINX_PORT=19303
cat > "$OUT/harp.toml" <<TOML
$(harp_head)
[http]
listen = ["127.0.0.1:$HARP_PORT"]
access_log = false
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$ECHO"
[websocket]
max_message_size = 1048576
ping_interval = 0
[[websocket.inspect]]
path_prefix = "/inspect/"
TOML
{ nginx_head nginx; cat <<CONF
http {
  access_log off;
  client_body_temp_path $OUT/body;
  proxy_temp_path $OUT/proxy;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://127.0.0.1:$ECHO;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1800s;
    }
  }
}
CONF
} > "$OUT/nginx.conf"
python3 "$PEER" server $ECHO > "$OUT/logs/echo.log" 2>&1 & ECHO_PID=$!
"$HARP" serve --config "$OUT/harp.toml" > "$OUT/logs/harp.log" 2>&1 & HARP_PID=$!
nginx -p "$OUT" -c "$OUT/nginx.conf" & NGINX_PID=$!
trap 'kill $ECHO_PID $HARP_PID $NGINX_PID 2>/dev/null || true' EXIT
sleep 1.5

url_of() { case $1 in direct) echo "ws://127.0.0.1:$ECHO/x";; harp) echo "ws://127.0.0.1:$HARP_PORT/x";;
  harp-inspect) echo "ws://127.0.0.1:$HARP_PORT/inspect/x";; nginx) echo "ws://127.0.0.1:$NGINX_PORT/x";; esac; }

RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(direct harp harp-inspect nginx)
  for ((i = 0; i < round % 4; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    small=$(python3 "$PEER" rate "$(url_of $who)" "$SECS" 64 | awk '{print $2}')
    big=$(python3 "$PEER" rate "$(url_of $who)" "$SECS" 65536 | awk '{print $3}')
    echo "$who $small $big" >> "$OUT/results.txt"
    echo "round $round $who: 64 B msgs/s=$small  64 KiB MB/s=$big"
  done
done
echo
printf "%-13s %14s %14s\n" path "64 B msgs/s" "64 KiB MB/s"
for who in direct harp harp-inspect nginx; do printf "%-13s %14s %14s\n" $who "$(column_median $who 2)" "$(column_median $who 3)"; done
echo
for who in harp harp-inspect; do
  awk -v a="$(column_median $who 2)" -v b="$(column_median direct 2)" -v c="$(column_median nginx 2)" -v x="$(column_median $who 3)" -v y="$(column_median direct 3)" -v z="$(column_median nginx 3)" -v w=$who 'BEGIN {
    printf "%s: msgs/s %.2fx direct, %.2fx nginx; MB/s %.2fx direct, %.2fx nginx\n", w, a / b, a / c, x / y, x / z }'
done
