#!/usr/bin/env bash
# bench/https.sh — HTTPS termination in front of an nginx origin: harp vs nginx
# (ssl_session_cache, 1 worker) vs HAProxy (nbthread 1), alternating rounds, medians, ratios.
#
#   bench/https.sh [ROUNDS] [SECONDS]      (defaults: 5 rounds, 5 s per wrk run)
#   TLS=1.2 bench/https.sh ...             all three limited to TLS 1.2 (default: 1.2 and 1.3
#                                          offered, so clients settle on 1.3)
#
# Measures: new-handshake rate (wrk -H "Connection: close"), keep-alive 1 KiB req/s (wrk -c50),
# 2 GiB download and upload GB/s (curl) and the proxy's CPU seconds per GB. ECDSA P-256 certificate.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
SECS=${2:-5}
OUT=$PWD/bench/out/https
mkdir -p "$OUT/html" "$OUT/logs"
need haproxy wrk nginx openssl
swift build -c release --product harp >/dev/null
HARP=$PWD/.build/release/harp

[ -f "$OUT/html/1k" ] || head -c 1024 /dev/urandom > "$OUT/html/1k"
[ -f "$OUT/html/2g" ] || head -c $((2 << 30)) /dev/urandom > "$OUT/html/2g"
if [ ! -f "$OUT/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
  cat "$OUT/cert.pem" "$OUT/key.pem" > "$OUT/combined.pem"
fi

case ${TLS:-1.3} in
  1.2) NGINX_PROTOCOLS="TLSv1.2" HAPROXY_MAX="ssl-max-ver TLSv1.2" HARP_PROTOCOLS='["TLSv1.2"]' ;;
  1.3) NGINX_PROTOCOLS="TLSv1.2 TLSv1.3" HAPROXY_MAX="" HARP_PROTOCOLS='["TLSv1.2", "TLSv1.3"]' ;;
  *) echo "TLS must be 1.2 or 1.3" >&2; exit 2 ;;
esac

ORIGIN=19401 HARP_PORT=19402 NGINX_PORT=19403 HAPROXY_PORT=19404
nginx_origin_conf $ORIGIN > "$OUT/origin.conf"
{ nginx_head proxy; cat <<CONF
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $OUT/proxy-body;
  proxy_temp_path $OUT/proxy-temp;
  ssl_session_cache shared:SSL:10m;
  # nginx before 1.23.4 defaults to TLS 1.0-1.2: without this line it would be measured on
  # TLS 1.2 (resumption without any key exchange) against TLS 1.3 for harp and HAProxy.
  ssl_protocols $NGINX_PROTOCOLS;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl backlog=4096;
    ssl_certificate $OUT/cert.pem;
    ssl_certificate_key $OUT/key.pem;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
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
    http-reuse always
frontend web
    bind 127.0.0.1:$HAPROXY_PORT ssl crt $OUT/combined.pem alpn http/1.1 $HAPROXY_MAX
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN
CFG
cat > "$OUT/harp.toml" <<TOML
$(harp_head)
[http]
listen = []
access_log = false
upstream_keepalive = 64
[[http.listen_tls]]
listen = "127.0.0.1:$HARP_PORT"
cert = "$OUT/cert.pem"
key = "$OUT/key.pem"
protocols = $HARP_PROTOCOLS
[[http.routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$ORIGIN"
TOML

nginx -p "$OUT" -c "$OUT/origin.conf" & ORIGIN_PID=$!
nginx -p "$OUT" -c "$OUT/proxy.conf" & NGINX_PID=$!
haproxy -f "$OUT/haproxy.cfg" -db > "$OUT/logs/haproxy.log" 2>&1 & HAPROXY_PID=$!
$HARP serve --config "$OUT/harp.toml" > "$OUT/logs/harp.log" 2>&1 & HARP_PID=$!
trap 'kill $ORIGIN_PID $NGINX_PID $HAPROXY_PID $HARP_PID 2>/dev/null || true; rm -rf "${UPLOADS:?}"' EXIT
sleep 1

port_of() { case $1 in harp) echo $HARP_PORT;; nginx) echo $NGINX_PORT;; haproxy) echo $HAPROXY_PORT;; esac; }
pid_of() { case $1 in harp) echo $HARP_PID;; nginx) echo $NGINX_PID;; haproxy) echo $HAPROXY_PID;; esac; }

rate() {  # wrk req/s: $1 proxy, $2 connections, extra wrk args after
  local who=$1 conns=$2; shift 2
  wrk -t1 -c"$conns" -d"${SECS}s" "$@" "https://127.0.0.1:$(port_of "$who")/1k" | awk '/Requests\/sec/ { printf "%.0f\n", $2 }'
}
bulk() {  # "GB/s cpu_s_per_GB" for 2 GiB: $1 proxy, $2 down or up (the origin stores uploads in tmpfs)
  local who=$1 pid; pid=$(pid_of "$who")
  local url="https://127.0.0.1:$(port_of "$who")"
  local args=(-w '%{speed_download} %{size_download}' "$url/2g")
  [ "$2" = up ] && args=(-T "$OUT/html/2g" -w '%{speed_upload} %{size_upload}' "$url/upload/2g")
  local before; before=$(cpu_ticks "$pid")
  local speed; speed=$(curl -sk -o /dev/null "${args[@]}")
  local after; after=$(cpu_ticks "$pid")
  rm -rf "${UPLOADS:?}/upload"
  echo "$speed" | awk -v t="$ticks" -v c=$((after - before)) '{ gb = $2 / 1e9; printf "%.3f %.4f\n", $1 / 1e9, (c / t) / gb }'
}

# Each proxy must have settled on the version this run is about (nginx 1.22 silently used 1.2).
for who in harp nginx haproxy; do
  got=$(openssl s_client -connect 127.0.0.1:$(port_of $who) </dev/null 2>/dev/null | awk '/^New, /{ sub(",", "", $2); print $2 }')
  echo "$who speaks $got"
  [ "$got" = "TLSv${TLS:-1.3}" ] || { echo "$who negotiated '$got', expected TLSv${TLS:-1.3}" >&2; exit 1; }
done

RESULTS="$OUT/results-tls${TLS:-1.3}.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=(harp nginx haproxy)
  for ((i = 0; i < round % 3; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for who in "${order[@]}"; do
    handshakes=$(rate "$who" 50 -H "Connection: close")
    keepalive=$(rate "$who" 50)
    download=$(bulk "$who" down)
    upload=$(bulk "$who" up)
    echo "$who $handshakes $keepalive $download $upload" >> "$RESULTS"
    echo "round $round $who: handshakes/s=$handshakes keep-alive req/s=$keepalive 2GiB down[GB/s CPU/GB]=$download up=$upload"
  done
done
echo
columns=("handshakes/s" "keep-alive req/s" "down GB/s" "down CPU s/GB" "up GB/s" "up CPU s/GB")
printf "%-8s" proxy; printf " %16s" "${columns[@]}"; echo
for who in harp nginx haproxy; do
  printf "%-8s" $who
  for c in 2 3 4 5 6 7; do printf " %16s" "$(column_median $who $c)"; done
  echo
done
echo
for other in nginx haproxy; do
  printf "harp/%s:" $other
  for c in 2 3 4 5 6 7; do
    printf " %s %.2fx," "${columns[$((c - 2))]}" "$(awk -v a="$(column_median harp $c)" -v b="$(column_median $other $c)" 'BEGIN { print a / b }')"
  done
  echo
done
