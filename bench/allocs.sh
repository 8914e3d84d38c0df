#!/usr/bin/env bash
# bench/allocs.sh — counts heap allocations in harp's hot paths:
# 1. the relay: one connection relaying SMALL bytes, then one relaying LARGE bytes. If
#    allocations happened per splice or per ring operation, the second count would grow with
#    the bytes; it should not.
# 2. the http plugin: allocations per proxied 1 KiB keep-alive request, plain and over TLS
#    (nginx origin, wrk client).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$PWD/bench/out/allocs
mkdir -p "$OUT/logs" "$OUT/html"
source bench/lib.sh
SMALL=${1:-$((64 * 1024 * 1024))}
LARGE=${2:-$((2 * 1024 * 1024 * 1024))}
gcc -O2 -o "$OUT/blast" bench/tools/blast.c
gcc -O2 -shared -fPIC -o "$OUT/malloccount.so" bench/tools/malloccount.c
swift build -c release --product harp >/dev/null
cat > "$OUT/allocs.toml" <<TOML
$(harp_head)
[[tcp.forward]]
listen = "127.0.0.1:19012"
upstream = "127.0.0.1:19011"
TOML
"$OUT/blast" sink 19011 > /dev/null &
SINK=$!
LD_PRELOAD="$OUT/malloccount.so" .build/release/harp serve --config "$OUT/allocs.toml" 2> "$OUT/allocs.log" > /dev/null &
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
kill $HARP $SINK 2>/dev/null || true
wait $HARP 2>/dev/null || true

# 2. Per request through the http plugin.
need wrk nginx openssl
head -c 1024 /dev/urandom > "$OUT/html/1k"
[ -f "$OUT/cert.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
nginx_origin_conf 19013 > "$OUT/origin.conf"
cat > "$OUT/http.toml" <<TOML
$(harp_head)
[http]
listen = ["127.0.0.1:19014"]
access_log = false
[[http.listen_tls]]
listen = "127.0.0.1:19015"
cert = "$OUT/cert.pem"
key = "$OUT/key.pem"
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:19013"
TOML
nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN=$!
LD_PRELOAD="$OUT/malloccount.so" .build/release/harp serve --config "$OUT/http.toml" 2> "$OUT/allocs.log" > /dev/null &
HARP=$!
trap 'kill $ORIGIN $HARP 2>/dev/null || true' EXIT
sleep 1
for url in http://127.0.0.1:19014/1k https://127.0.0.1:19015/1k; do
  wrk -t1 -c10 -d1s "$url" > /dev/null  # connections open, pools warm
  before=$(count)
  requests=$(wrk -t1 -c10 -d3s "$url" | awk '/requests in/ { print $1 }')
  after=$(count)
  awk -v n="$requests" -v a=$((after - before)) -v u="$url" 'BEGIN { printf "%s: %.1f allocations per request (%d requests)\n", u, a / n, n }'
done
