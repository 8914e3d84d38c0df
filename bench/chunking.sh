#!/usr/bin/env bash
# bench/chunking.sh — FastCDC with harp's profile on one core: cut points alone, and cut
# points plus SHA-256 of every chunk (what indexing a folder costs), on a file in tmpfs so the
# disk never enters the figure. Compared with sha256sum over the same file (OpenSSL's SHA-256
# alone, the floor for a verified chunker).
#
#   bench/chunking.sh [ROUNDS] [SIZE_MIB]      (defaults: 5 rounds, 2048 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
SIZE=${2:-2048}
swift build -c release --product harp >/dev/null
HARP=$PWD/.build/release/harp
FILE=/dev/shm/harp-bench-chunking
trap 'rm -f "$FILE"' EXIT
head -c $((SIZE << 20)) /dev/urandom > "$FILE"

RESULTS=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  cut=$(taskset -c 0 "$HARP" storage chunk --no-hash --json "$FILE" | sed 's/.*"bytes_per_s":\([0-9]*\).*/\1/')
  hashed=$(taskset -c 0 "$HARP" storage chunk --json "$FILE" | sed 's/.*"bytes_per_s":\([0-9]*\).*/\1/')
  start=$(date +%s.%N); taskset -c 0 sha256sum "$FILE" >/dev/null; end=$(date +%s.%N)
  sha=$(awk -v s="$start" -v e="$end" -v b=$((SIZE << 20)) 'BEGIN { printf "%d", b / (e - s) }')
  echo "cut $cut" >> "$RESULTS"; echo "hashed $hashed" >> "$RESULTS"; echo "sha256sum $sha" >> "$RESULTS"
  echo "round $round: cut points $(awk -v v="$cut" 'BEGIN { printf "%.2f", v / 1e9 }') GB/s, with SHA-256 $(awk -v v="$hashed" 'BEGIN { printf "%.2f", v / 1e9 }') GB/s, sha256sum $(awk -v v="$sha" 'BEGIN { printf "%.2f", v / 1e9 }') GB/s"
done
echo
for what in cut hashed sha256sum; do
  printf "%-10s median %.2f GB/s\n" "$what" "$(grep "^$what " "$RESULTS" | awk '{ print $2 / 1e9 }' | median)"
done
rm -f "$RESULTS"
