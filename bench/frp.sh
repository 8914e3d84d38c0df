#!/usr/bin/env bash
# bench/frp.sh — 2 GiB each way through a tunnel: harp's frp server with `harp tunnel` (TLS +
# tcpMux, TLS without tcpMux, plaintext without tcpMux), `ssh -L` (Debian's OpenSSH,
# aes128-gcm@openssh.com), harp's own tcp forward (the splice ceiling) and harp's server with
# upstream frpc 0.65 (aarch64 under qemu-user: interop timing only, its figures say nothing
# about frpc's speed; it moves 256 MiB once, after the rounds). Rounds rotate the setups;
# medians of MB/s and of CPU s/GB for all the processes of a setup together (server and client).
#
#   bench/frp.sh [ROUNDS] [BYTES]      (defaults: 3 rounds, 2 GiB)
#   HARP=/path/to/harp bench/frp.sh    (another build, e.g. an older commit's, for an A/B)
#   SETUPS="tls-nomux ssh" SKIP_FRPC=1 bench/frp.sh   (a subset, without the frpc timing)
#   PIN=1 bench/frp.sh   (each side on its own core, as if on two hosts: the entry side, i.e.
#                         the sender, harp's server or ssh's client, on CPU 0; the exit side,
#                         i.e. harp tunnel or sshd and the sink, on CPU 1. ssh's figures spread
#                         less this way: 1.60-1.73 CPU s/GB instead of 1.65-2.06, 12 rounds)
set -euo pipefail
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-3}
BYTES=${2:-$((2 << 30))}
OUT=$PWD/bench/out/frp
mkdir -p "$OUT/logs"
need gcc ssh
command -v sshd >/dev/null || { apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; }
scripts/install-deps >/dev/null
gcc -O2 -o "$OUT/blast" bench/tools/blast.c
if [ -z "${HARP:-}" ]; then
  swift build -c release --product harp >/dev/null
  HARP=$PWD/.build/release/harp
fi
FRPC=/opt/harp-test/frpc-0.65.0/frpc
PIN=${PIN:-0}
ENTRY="" EXIT=""
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then ENTRY="taskset -c 0" EXIT="taskset -c 1"; fi

SINK=19810 SOURCE=19811 SMALL_SOURCE=19812 PLAIN=19801 TLS=19802 SSHD=19803
FRPC_BYTES=$((256 << 20))
$EXIT "$OUT/blast" sink $SINK > "$OUT/sink.log" & PIDS=($!)
$EXIT "$OUT/blast" source $SOURCE "$BYTES" & PIDS+=($!)
$EXIT "$OUT/blast" source $SMALL_SOURCE "$FRPC_BYTES" & PIDS+=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

# Two frp servers (plaintext and TLS) and a tcp forward, in one harp process each.
rm -rf "$OUT/certs"; "$HARP" frp gen-certs --dir "$OUT/certs" >/dev/null
cat > "$OUT/server-plain.toml" <<TOML
$(harp_head)
[frp]
listen = "127.0.0.1:$PLAIN"
tls = "off"
shared_key = "bench"
allow_ports = ["19900-19999"]
max_ports_per_client = 2
TOML
sed -e "s/:$PLAIN\"/:$TLS\"/" -e 's/tls = "off"/tls = "on"/' -e "s#^allow_ports#cert_dir = \"$OUT/certs\"\nallow_ports#" \
  "$OUT/server-plain.toml" > "$OUT/server-tls.toml"
cat > "$OUT/forward.toml" <<TOML
$(harp_head)
[[tcp.forward]]
listen = "127.0.0.1:19820"
upstream = "127.0.0.1:$SINK"
[[tcp.forward]]
listen = "127.0.0.1:19821"
upstream = "127.0.0.1:$SOURCE"
TOML
$ENTRY "$HARP" serve --config "$OUT/server-plain.toml" > "$OUT/logs/server-plain.log" 2>&1 & PLAIN_PID=$!
$ENTRY "$HARP" serve --config "$OUT/server-tls.toml" > "$OUT/logs/server-tls.log" 2>&1 & TLS_PID=$!
$ENTRY "$HARP" serve --config "$OUT/forward.toml" > "$OUT/logs/forward.log" 2>&1 & FORWARD_PID=$!
PIDS+=($PLAIN_PID $TLS_PID $FORWARD_PID)

# frpc TOML publishing the sink and the source on ports BASE and BASE+1.
client_config() {  # $1 server port, $2 tls, $3 tcpMux, $4 base port, $5 source port
  cat <<TOML
serverAddr = "127.0.0.1"
serverPort = $1
metadatas.token = "bench"
transport.tls.enable = $2
transport.tcpMux = $3
[[proxies]]
name = "sink-$4"
type = "tcp"
localPort = $SINK
remotePort = $4
[[proxies]]
name = "source-$4"
type = "tcp"
localPort = ${5:-$SOURCE}
remotePort = $(($4 + 1))
TOML
}
client_config $TLS true true 19910 > "$OUT/tls-mux.toml"
client_config $TLS true false 19920 > "$OUT/tls-nomux.toml"
client_config $PLAIN false false 19930 > "$OUT/plain-nomux.toml"
client_config $TLS true true 19940 $SMALL_SOURCE > "$OUT/frpc.toml"
sleep 1
$EXIT "$HARP" tunnel --config "$OUT/tls-mux.toml" > "$OUT/logs/tls-mux.log" 2>&1 & TLS_MUX_PID=$!
$EXIT "$HARP" tunnel --config "$OUT/tls-nomux.toml" > "$OUT/logs/tls-nomux.log" 2>&1 & TLS_NOMUX_PID=$!
$EXIT "$HARP" tunnel --config "$OUT/plain-nomux.toml" > "$OUT/logs/plain-nomux.log" 2>&1 & PLAIN_NOMUX_PID=$!
$EXIT qemu-aarch64 "$FRPC" -c "$OUT/frpc.toml" > "$OUT/logs/frpc.log" 2>&1 & FRPC_PID=$!
PIDS+=($TLS_MUX_PID $TLS_NOMUX_PID $PLAIN_NOMUX_PID $FRPC_PID)

# sshd on loopback with a throwaway host key and client key.
rm -f "$OUT/ssh_host" "$OUT/ssh_host.pub" "$OUT/ssh_client" "$OUT/ssh_client.pub"
ssh-keygen -q -t ed25519 -N '' -f "$OUT/ssh_host"
ssh-keygen -q -t ed25519 -N '' -f "$OUT/ssh_client"
cp "$OUT/ssh_client.pub" "$OUT/authorized_keys"
mkdir -p /run/sshd
cat > "$OUT/sshd_config" <<CFG
Port $SSHD
ListenAddress 127.0.0.1
HostKey $OUT/ssh_host
AuthorizedKeysFile $OUT/authorized_keys
PermitRootLogin yes
StrictModes no
PasswordAuthentication no
PidFile $OUT/sshd.pid
CFG
$EXIT /usr/sbin/sshd -f "$OUT/sshd_config" -D -e 2> "$OUT/logs/sshd.log" & SSHD_PID=$!
PIDS+=($SSHD_PID)
sleep 1
$ENTRY ssh -q -N -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i "$OUT/ssh_client" -p $SSHD \
  -c aes128-gcm@openssh.com -L 19950:127.0.0.1:$SINK -L 19951:127.0.0.1:$SOURCE root@127.0.0.1 & SSH_PID=$!
PIDS+=($SSH_PID)
sleep 2

# CPU ticks of the processes of a setup (sshd: the listener and its session children).
ticks_of() {
  local total=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] && total=$((total + $(cpu_ticks "$pid")))
  done
  echo $total
}
session_pids() {  # $1 setup
  case $1 in
    tls-mux) echo $TLS_PID $TLS_MUX_PID ;;
    tls-nomux) echo $TLS_PID $TLS_NOMUX_PID ;;
    plain-nomux) echo $PLAIN_PID $PLAIN_NOMUX_PID ;;
    frpc) echo $TLS_PID $FRPC_PID ;;
    tcp-forward) echo $FORWARD_PID ;;
    ssh) echo $SSH_PID $(pgrep -f "sshd: root" || true) $SSHD_PID ;;
  esac
}
base_of() {
  case $1 in tls-mux) echo 19910;; tls-nomux) echo 19920;; plain-nomux) echo 19930;; frpc) echo 19940;; tcp-forward) echo 19820;; ssh) echo 19950;; esac
}

# One direction: prints "MB/s cpu_s_per_GB".
run() {  # $1 setup, $2 up|down, $3 bytes
  local bytes=${3:-$BYTES}
  local pids; pids=$(session_pids "$1")
  local base; base=$(base_of "$1")
  local before; before=$(ticks_of $pids)
  local line
  if [ "$2" = up ]; then
    local lines; lines=$(wc -l < "$OUT/sink.log")
    $ENTRY "$OUT/blast" send 127.0.0.1 "$base" "$bytes" > /dev/null
    while [ "$(wc -l < "$OUT/sink.log")" -le "$lines" ]; do sleep 0.01; done
    line=$(tail -n 1 "$OUT/sink.log")
  else
    line=$($ENTRY "$OUT/blast" recv 127.0.0.1 $((base + 1)))
  fi
  local after; after=$(ticks_of $(session_pids "$1"))
  awk -v l="$line" -v t="$ticks" -v c=$((after - before)) -v want="$bytes" 'BEGIN {
    split(l, f, " "); if (f[1] != want) { print "short", f[1]; exit }
    printf "%.0f %.3f\n", f[1] / 1e6 / f[2], (c / t) / (f[1] / 1e9) }'
}

read -r -a SETUPS <<< "${SETUPS:-tcp-forward plain-nomux tls-mux tls-nomux ssh}"  # SETUPS="ssh tls-nomux": a subset
RESULTS="$OUT/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  order=("${SETUPS[@]}")
  for ((i = 0; i < round % ${#SETUPS[@]}; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for setup in "${order[@]}"; do
    up=$(run "$setup" up); down=$(run "$setup" down)
    echo "$setup $up $down" >> "$RESULTS"
    echo "round $round $setup: up [MB/s CPU s/GB] $up, down $down"
  done
done
echo
printf "%-12s %10s %12s %10s %12s\n" setup "up MB/s" "up CPU s/GB" "down MB/s" "down CPU s/GB"
for setup in "${SETUPS[@]}"; do
  printf "%-12s %10s %12s %10s %12s\n" "$setup" "$(column_median "$setup" 2)" "$(column_median "$setup" 3)" \
    "$(column_median "$setup" 4)" "$(column_median "$setup" 5)"
done
echo
has() { [[ " ${SETUPS[*]} " == *" $1 "* ]]; }
for setup in tls-mux tls-nomux; do
  has $setup && has ssh || continue
  awk -v a="$(column_median $setup 2)" -v b="$(column_median ssh 2)" -v c="$(column_median $setup 3)" -v d="$(column_median ssh 3)" \
      -v e="$(column_median $setup 4)" -v f="$(column_median ssh 4)" -v g="$(column_median $setup 5)" -v h="$(column_median ssh 5)" -v s=$setup 'BEGIN {
    printf "%s/ssh: up %.2fx MB/s at %.2fx CPU/GB; down %.2fx MB/s at %.2fx CPU/GB\n", s, a / b, c / d, e / f, g / h }'
done
has plain-nomux && has tcp-forward && awk -v a="$(column_median plain-nomux 2)" -v b="$(column_median tcp-forward 2)" -v e="$(column_median plain-nomux 4)" -v f="$(column_median tcp-forward 4)" 'BEGIN {
  printf "plain-nomux/tcp-forward: up %.2fx, down %.2fx MB/s\n", a / b, e / f }'
[ -n "${SKIP_FRPC:-}" ] || echo "frpc (qemu-user emulation, 256 MiB once; interop timing only): up $(run frpc up $FRPC_BYTES), down $(run frpc down $FRPC_BYTES)"
