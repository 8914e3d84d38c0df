#!/usr/bin/env bash
# bench/relay.sh — 2 GiB through (a) harp tcp.forward, (b) HAProxy (mode tcp, nbthread 1,
# splice-request/-response), (c) nothing (direct), in alternating rounds. Prints medians of
# throughput and of the relay process's CPU seconds per GB, and harp's ratios to HAProxy.
#
#   bench/relay.sh [ROUNDS] [BYTES]     (defaults: 7 rounds, 2 GiB)
#   HAPROXY_PIPESIZE=1048576 bench/relay.sh   gives HAProxy harp's 1 MiB pipes (tune.pipesize)
#
# Needs: a release build of harp (built here), haproxy and gcc (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-7}
BYTES=${2:-$((2 * 1024 * 1024 * 1024))}
OUT=bench/out
mkdir -p "$OUT"

need haproxy gcc
gcc -O2 -o "$OUT/blast" bench/tools/blast.c
swift build -c release --product harp >/dev/null
HARP=.build/release/harp

SINK_PORT=19001 HARP_PORT=19002 HAPROXY_PORT=19003
"$OUT/blast" sink $SINK_PORT > "$OUT/sink.log" &
SINK=$!

cat > "$OUT/harp.toml" <<TOML
$(harp_head)
[[tcp.forward]]
listen = "127.0.0.1:$HARP_PORT"
upstream = "127.0.0.1:$SINK_PORT"
TOML
cat > "$OUT/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 1000
    ${HAPROXY_PIPESIZE:+tune.pipesize $HAPROXY_PIPESIZE}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-request
    option splice-response
frontend relay
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend sink
backend sink
    server sink 127.0.0.1:$SINK_PORT
CFG

$HARP serve --config "$OUT/harp.toml" > "$OUT/harp.log" 2>&1 &
HARP_PID=$!
haproxy -f "$OUT/haproxy.cfg" -db > "$OUT/haproxy.log" 2>&1 &
HAPROXY_PID=$!
trap 'kill $SINK $HARP_PID $HAPROXY_PID 2>/dev/null || true' EXIT
sleep 1


# One run: prints "GB/s cpu_s_per_GB" for the relay at PORT (process PID, or none).
run() {
  local port=$1 pid=$2 before=0 after=0
  [ "$pid" = none ] || before=$(cpu_ticks "$pid")
  local lines_before; lines_before=$(wc -l < "$OUT/sink.log")
  "$OUT/blast" send 127.0.0.1 "$port" "$BYTES" > /dev/null
  while [ "$(wc -l < "$OUT/sink.log")" -le "$lines_before" ]; do sleep 0.01; done
  [ "$pid" = none ] || after=$(cpu_ticks "$pid")
  local line; line=$(tail -n 1 "$OUT/sink.log")
  awk -v l="$line" -v t=$ticks -v c=$((after - before)) 'BEGIN {
    split(l, f, " "); gb = f[1] / 1e9; printf "%.3f %.4f\n", gb / f[2], (c / t) / gb }'
}


RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so that no contender always runs first or last.
  order=(harp haproxy direct)
  for ((i = 0; i < round % 3; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    case $who in
      harp) r=$(run $HARP_PORT $HARP_PID) ;;
      haproxy) r=$(run $HAPROXY_PORT $HAPROXY_PID) ;;
      direct) r=$(run $SINK_PORT none) ;;
    esac
    echo "$who $r" >> "$OUT/results.txt"
    echo "round $round $who: $r"
  done
done

hg=$(column_median harp 2) hc=$(column_median harp 3) pg=$(column_median haproxy 2) pc=$(column_median haproxy 3) dg=$(column_median direct 2)
echo
printf "%-10s %10s %14s\n" relay "GB/s" "CPU s/GB"
printf "%-10s %10s %14s\n" harp "$hg" "$hc"
printf "%-10s %10s %14s\n" haproxy "$pg" "$pc"
printf "%-10s %10s %14s\n" direct "$dg" "-"
awk -v hg="$hg" -v pg="$pg" -v hc="$hc" -v pc="$pc" 'BEGIN {
  printf "\nharp/haproxy throughput: %.2fx   harp/haproxy CPU per GB: %.2fx (lower is better)\n", hg / pg, hc / pc }'
