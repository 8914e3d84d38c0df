#!/usr/bin/env bash
# bench/ab.sh — two harp binaries side by side (A = before a change, B = after), same origin,
# same configs, alternating rounds: what a kernel refactor must show to be "within noise".
#
#   bench/ab.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]     (defaults: 5 rounds, 5 s per wrk run)
#
# Measures, for each binary with one loop: plain HTTP 1 KiB keep-alive req/s and p99 (wrk
# -c50), HTTP 2 GiB download GB/s and CPU s/GB (spliced), tcp forward 2 GiB GB/s and CPU s/GB,
# HTTPS new handshakes/s (wrk, Connection: close) and HTTPS keep-alive 1 KiB req/s.
# Prints medians and B/A ratios.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
A=$1 B=$2 ROUNDS=${3:-5} SECS=${4:-5}
OUT=$PWD/bench/out/ab
mkdir -p "$OUT/html" "$OUT/logs"
need wrk nginx openssl gcc
gcc -O2 -o "$OUT/blast" bench/tools/blast.c

[ -f "$OUT/html/1k" ] || head -c 1024 /dev/urandom > "$OUT/html/1k"
[ -f "$OUT/html/2g" ] || head -c $((2 << 30)) /dev/urandom > "$OUT/html/2g"
if [ ! -f "$OUT/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
fi
ORIGIN=19501 SINK=19502
nginx_origin_conf $ORIGIN > "$OUT/origin.conf"
nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN_PID=$!
"$OUT/blast" sink $SINK > "$OUT/sink.log" & SINK_PID=$!
PIDS=()
trap 'kill $ORIGIN_PID $SINK_PID "${PIDS[@]}" 2>/dev/null || true' EXIT

# harp_config NAME BASE_PORT: http on BASE, https on BASE+1, tcp forward on BASE+2.
harp_config() {
  cat <<TOML
$(harp_head)
[http]
listen = ["127.0.0.1:$2"]
access_log = false
upstream_keepalive = 64
[[http.listen_tls]]
listen = "127.0.0.1:$(($2 + 1))"
cert = "$OUT/cert.pem"
key = "$OUT/key.pem"
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$ORIGIN"
[[tcp.forward]]
listen = "127.0.0.1:$(($2 + 2))"
upstream = "127.0.0.1:$SINK"
TOML
}
harp_config a 19510 > "$OUT/a.toml"
harp_config b 19520 > "$OUT/b.toml"
"$A" serve --config "$OUT/a.toml" > "$OUT/logs/a.log" 2>&1 & A_PID=$!
"$B" serve --config "$OUT/b.toml" > "$OUT/logs/b.log" 2>&1 & B_PID=$!
PIDS=($A_PID $B_PID)
sleep 1
port_of() { case $1 in a) echo 19510;; b) echo 19520;; esac; }
pid_of() { case $1 in a) echo $A_PID;; b) echo $B_PID;; esac; }

small() {  # "req/s p99_ms"
  wrk -t1 -c50 -d"${SECS}s" --latency "http://127.0.0.1:$(port_of "$1")/1k" | wrk_summary | awk '{ print $1, $2 }'
}
download() {  # "GB/s cpu_s_per_GB"
  local pid; pid=$(pid_of "$1")
  local before; before=$(cpu_ticks "$pid")
  local speed; speed=$(curl -s -o /dev/null -w '%{speed_download} %{size_download}' "http://127.0.0.1:$(port_of "$1")/2g")
  local after; after=$(cpu_ticks "$pid")
  echo "$speed" | awk -v t="$ticks" -v c=$((after - before)) '{ gb = $2 / 1e9; printf "%.3f %.4f\n", $1 / 1e9, (c / t) / gb }'
}
relay() {  # "GB/s cpu_s_per_GB" through the tcp forward
  local pid; pid=$(pid_of "$1")
  local before; before=$(cpu_ticks "$pid")
  local lines; lines=$(wc -l < "$OUT/sink.log")
  "$OUT/blast" send 127.0.0.1 $(($(port_of "$1") + 2)) $((2 << 30)) > /dev/null
  while [ "$(wc -l < "$OUT/sink.log")" -le "$lines" ]; do sleep 0.01; done
  local after; after=$(cpu_ticks "$pid")
  awk -v l="$(tail -n 1 "$OUT/sink.log")" -v t=$ticks -v c=$((after - before)) 'BEGIN {
    split(l, f, " "); gb = f[1] / 1e9; printf "%.3f %.4f\n", gb / f[2], (c / t) / gb }'
}
tls_rate() {  # req/s over HTTPS; extra wrk args after the name
  local who=$1; shift
  wrk -t1 -c50 -d"${SECS}s" "$@" "https://127.0.0.1:$(($(port_of "$who") + 1))/1k" | awk '/Requests\/sec/ { printf "%.0f\n", $2 }'
}

RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(a b); [ $((round % 2)) -eq 0 ] && order=(b a)
  for who in "${order[@]}"; do
    line="$who $(small "$who") $(download "$who") $(relay "$who") $(tls_rate "$who" -H 'Connection: close') $(tls_rate "$who")"
    echo "$line" >> "$RESULTS"
    echo "round $round $line"
  done
done
echo
columns=("1KiB req/s" "p99 ms" "2GiB GB/s" "CPU s/GB" "tcp GB/s" "tcp CPU s/GB" "TLS new/s" "TLS k-a req/s")
printf "%-4s" ""; printf " %14s" "${columns[@]}"; echo
for who in a b; do
  printf "%-4s" $who
  for c in 2 3 4 5 6 7 8 9; do printf " %14s" "$(column_median $who $c)"; done
  echo
done
printf "%-4s" "b/a"
for c in 2 3 4 5 6 7 8 9; do printf " %13.2fx" "$(awk -v a="$(column_median a $c)" -v b="$(column_median b $c)" 'BEGIN { print b / a }')"; done
echo
