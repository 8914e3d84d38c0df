#!/usr/bin/env bash
# bench/allocs.sh — counts heap allocations in harp's relay path: one connection relaying
# SMALL bytes, then one relaying LARGE bytes. If allocations happened per splice or per ring
# operation, the second count would grow with the bytes; it should not.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
mkdir -p "$OUT"
SMALL=${1:-$((64 * 1024 * 1024))}
LARGE=${2:-$((2 * 1024 * 1024 * 1024))}
gcc -O2 -o "$OUT/blast" bench/tools/blast.c
gcc -O2 -shared -fPIC -o "$OUT/malloccount.so" bench/tools/malloccount.c
swift build -c release --product harp >/dev/null
cat > "$OUT/allocs.toml" <<TOML
[harp]
threads = 1
log_level = "warning"
[[tcp.forward]]
listen = "127.0.0.1:19012"
upstream = "127.0.0.1:19011"
TOML
"$OUT/blast" sink 19011 > /dev/null &
SINK=$!
LD_PRELOAD="$PWD/$OUT/malloccount.so" .build/release/harp serve --config "$OUT/allocs.toml" 2> "$OUT/allocs.log" > /dev/null &
HARP=$!
trap 'kill $SINK $HARP 2>/dev/null || true' EXIT
sleep 1
count() { kill -USR2 $HARP; sleep 0.2; tail -n 1 "$OUT/allocs.log" | sed 's/mallocs=//'; }
base=$(count)
"$OUT/blast" send 127.0.0.1 19012 "$SMALL" > /dev/null; sleep 0.3
small=$(count)
"$OUT/blast" send 127.0.0.1 19012 "$LARGE" > /dev/null; sleep 0.3
large=$(count)
echo "connection relaying $SMALL bytes: $((small - base)) allocations"
echo "connection relaying $LARGE bytes: $((large - small)) allocations"
