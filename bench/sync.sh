#!/usr/bin/env bash
# bench/sync.sh — many small files between two nodes on loopback: harp's p2p + crdt plugins
# side by side with Syncthing (Debian's package), same files, same machine, alternating rounds.
#
#   bench/sync.sh [ROUNDS] [FILES]      (defaults: 3 rounds, 20,000 files)
#   TOOLS=harp bench/sync.sh 1 2000     (one tool alone, while working on it)
#
# FILES files of 1–16 KiB (random bytes, fixed seed) in FILES/100 directories. Per round and
# tool, on two fresh nodes:
#   connected  the files copied into node A's folder while both run: seconds until B lists the
#              same files as A (then their bytes are compared, once)
#   edit       one small file edited on A, 10 times 1.5 s apart: seconds until B has the bytes
#   move       1,000 files (10 directories' worth) moved into a new directory on A: seconds
#              until B shows the move
#   new node   B's folder and state wiped, B started again: seconds until it lists what A does
# Files/s and the CPU-seconds of both processes are reported for the two bulk cases, and the
# medians of all rounds with harp/Syncthing ratios at the end. Runs itself inside
# `unshare --net` (loopback only): Syncthing's discovery and relays cannot leave the machine.
# Syncthing: watcher delay 1 s, discovery, relays, NAT and usage reporting off. harp:
# stable_after = 1 s (the same wait before a change is taken as settled).
set -euo pipefail
if [ -z "${HARP_SYNC_BENCH_NETNS:-}" ]; then
  exec unshare --net env HARP_SYNC_BENCH_NETNS=1 bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi
ulimit -n 65536 2>/dev/null || true
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-3} FILES=${2:-20000} TOOLS=${TOOLS:-harp syncthing}
OUT=$PWD/bench/out/sync
DATA=$OUT/data-$FILES
RESULTS=$OUT/results.txt
mkdir -p "$OUT"
need syncthing curl python3 bc
HARP=${HARP:-$PWD/.build/release/harp}
[ -x "$HARP" ] || swift build -c release --product harp >/dev/null
: > "$RESULTS"
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; umount "$WORK" 2>/dev/null || true' EXIT

# Each tool's round runs on a fresh ext4 file system (a loop device): ext4 skips recently
# deleted inodes when it allocates, so the mass deletes of earlier rounds slowed file creation
# for minutes — Syncthing's own connected figure went 16.8 → 19.4 → 23.2 → 29.7 s in one run.
WORK=$OUT/mnt
fresh_fs() {
  umount "$WORK" 2>/dev/null || true
  rm -f "$OUT/fs.img"
  truncate -s 4G "$OUT/fs.img"
  mkfs.ext4 -q -F "$OUT/fs.img"
  mkdir -p "$WORK"
  mount -o loop "$OUT/fs.img" "$WORK"
}

# The data set: made once per size, reused by every round and tool.
if [ ! -d "$DATA" ]; then
  python3 - "$DATA" "$FILES" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261207)
for n in range(count):
    directory = os.path.join(root, "d%03d" % (n // 100))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "f%05d" % n), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
PY
fi

# Waits until `$@` succeeds (checked every $POLL s — 0.2, or 0.02 for one file — at most 30
# minutes); prints the seconds taken since $START.
POLL=0.2
wait_until() {
  local deadline=$((SECONDS + 1800))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out: $*" >&2; return 1; }
    sleep $POLL
  done
  echo "$(date +%s.%N) - $START" | bc
}
# Whether folder $2 lists the same files as $1 (names, hidden ones aside): a sync is done when
# every file is in its place, not merely when enough files exist somewhere.
file_list() { (cd "$1" && find . -mindepth 1 -name '.*' -prune -o -type f -print 2>/dev/null | sort); }
same_files() { [ "$(file_list "$1")" = "$(file_list "$2")" ]; }
# CPU ticks of the processes named and their children (Syncthing runs its work in a child of
# its monitor process).
cpu_of() {
  local total=0 pid child
  for pid in "$@"; do
    total=$((total + $(cpu_ticks "$pid")))
    for child in $(ps -o pid= --ppid "$pid"); do total=$((total + $(cpu_ticks "$child" 2>/dev/null || echo 0))); done
  done
  echo $total
}
cpu_seconds() { echo "scale=1; ($(cpu_of "${NODES[@]}") - $1) / $ticks" | bc; }

# --- harp --------------------------------------------------------------------------------
harp_setup() {
  rm -rf "$WORK/harp" && mkdir -p "$WORK/harp"
  for n in a b; do "$HARP" storage init --dir "$WORK/harp/$n" > "$WORK/harp/$n.id"; mkdir -p "$WORK/harp/$n/folder"; done
  for n in a b; do
    local other=b port=19601 other_port=19602
    [ $n = b ] && other=a port=19602 other_port=19601
    printf '[harp]\nplugins = ["p2p", "crdt"]\nlog_level = "%s"\n[storage]\ndir = "%s"\nfolder = "%s"\nlisten = "127.0.0.1:%s"\npeers = ["%s@127.0.0.1:%s"]\n[crdt]\nstable_after = "1s"\n' \
      "${HARP_LOG_LEVEL:-warning}" "$WORK/harp/$n" "$WORK/harp/$n/folder" $port "$(cat "$WORK/harp/$other.id")" $other_port > "$WORK/harp/$n.toml"
  done
}
harp_start() { "$HARP" serve --config "$WORK/harp/$1.toml" >> "$WORK/harp/$1.log" 2>&1 & echo $!; }
harp_connected() { "$HARP" storage status --config "$WORK/harp/a.toml" --json 2>/dev/null | grep -q '"connected" *: *true'; }
harp_wipe_b() { rm -rf "$WORK/harp/b/folder" "$WORK/harp/b/"*.sqlite* && mkdir "$WORK/harp/b/folder"; }

# --- Syncthing -----------------------------------------------------------------------------
st_setup() {
  rm -rf "$WORK/st" && mkdir -p "$WORK/st"
  for n in a b; do
    syncthing generate --home="$WORK/st/$n" --no-default-folder >/dev/null 2>&1
    syncthing --home="$WORK/st/$n" --device-id > "$WORK/st/$n.id" 2>/dev/null
    mkdir -p "$WORK/st/$n/folder/.stfolder"
  done
  for n in a b; do
    local port=19611 gui=19621
    [ $n = b ] && port=19612 gui=19622
    python3 - "$WORK/st/$n/config.xml" "$WORK/st/$n/folder" $port $gui "$(cat "$WORK/st/a.id")" "$(cat "$WORK/st/b.id")" <<'PY'
import sys, xml.etree.ElementTree as ET
path, folder, port, gui, a, b = sys.argv[1:]
tree = ET.parse(path); root = tree.getroot()
for element in root.findall("folder") + root.findall("device"):
    root.remove(element)
options = root.find("options")
def option(name, value):
    for old in options.findall(name): options.remove(old)
    ET.SubElement(options, name).text = value
option("listenAddress", "tcp://127.0.0.1:" + port)
for name in ("globalAnnounceEnabled", "localAnnounceEnabled", "relaysEnabled", "natEnabled", "crashReportingEnabled", "startBrowser"):
    option(name, "false")
option("urAccepted", "-1"); option("autoUpgradeIntervalH", "0")
g = root.find("gui"); g.set("enabled", "true"); g.set("tls", "false")
g.find("address").text = "127.0.0.1:" + gui
(g.find("apikey") if g.find("apikey") is not None else ET.SubElement(g, "apikey")).text = "bench"
for name, device, address in (("a", a, "19611"), ("b", b, "19612")):
    d = ET.SubElement(root, "device", id=device, name=name, compression="metadata", introducer="false")
    ET.SubElement(d, "address").text = "tcp://127.0.0.1:" + address
f = ET.Element("folder", id="bench", label="bench", path=folder, type="sendreceive", rescanIntervalS="3600",
               fsWatcherEnabled="true", fsWatcherDelayS="1", ignorePerms="false", autoNormalize="true")
for device in (a, b): ET.SubElement(f, "device", id=device)
root.insert(0, f)
tree.write(path)
PY
  done
}
st_start() { STNODEFAULTFOLDER=1 syncthing serve --home="$WORK/st/$1" --no-browser --no-restart >> "$WORK/st/$1.log" 2>&1 & echo $!; }
st_connected() { curl -sf -H 'X-API-Key: bench' http://127.0.0.1:19621/rest/system/connections | grep -q '"connected": *true'; }
st_wipe_b() {
  rm -rf "$WORK/st/b/folder" "$WORK/st/b/index-"* && mkdir -p "$WORK/st/b/folder/.stfolder"
}

# --- one round of one tool ---------------------------------------------------------------
# round TOOL ROUND: the four cases; each result line is "CASE TOOL VALUE [CPU]".
round() {
  [[ " $TOOLS " == *" $1 "* ]] || return 0
  local tool=$1 prefix=${1/syncthing/st} a b
  fresh_fs
  "${prefix}_setup"
  local A=$WORK/$prefix/a/folder B=$WORK/$prefix/b/folder
  a=$("${prefix}_start" a); b=$("${prefix}_start" b)
  NODES=($a $b); PIDS=($a $b)
  START=$(date +%s.%N); wait_until "${prefix}_connected" >/dev/null

  # connected: copy everything into A while both run.
  local cpu; cpu=$(cpu_of "${NODES[@]}")
  START=$(date +%s.%N)
  cp -r "$DATA/." "$A/"
  local took; took=$(wait_until same_files "$A" "$B")
  echo "connected $tool $took $(cpu_seconds "$cpu")" | tee -a "$RESULTS"
  sleep 2  # let both settle (the last files' records, Syncthing's index exchange)

  # edit: one small file, 10 times.
  for i in $(seq 1 10); do
    printf 'edit %s of round %s\n' "$i" "$2" > "$A/d000/f00000"
    START=$(date +%s.%N)
    took=$(POLL=0.02 wait_until cmp -s "$A/d000/f00000" "$B/d000/f00000")
    echo "edit $tool $took" | tee -a "$RESULTS"
    sleep 1.5
  done

  # move: 1,000 files into a new directory.
  START=$(date +%s.%N)
  mkdir "$A/moved" && for d in $(seq -f 'd%03g' 0 9); do mv "$A/$d/"* "$A/moved/"; done
  took=$(wait_until same_files "$A" "$B")
  echo "move $tool $took" | tee -a "$RESULTS"
  sleep 3

  # new node: B wiped and started again.
  kill "$b"; wait "$b" 2>/dev/null || true
  "${prefix}_wipe_b"
  cpu=$(cpu_of "$a")
  START=$(date +%s.%N)
  b=$("${prefix}_start" b); NODES=($a $b); PIDS=($a $b)
  took=$(wait_until same_files "$A" "$B")
  echo "newnode $tool $took $(cpu_seconds "$cpu")" | tee -a "$RESULTS"
  diff -r -q -x '.*' "$A" "$B" > "$OUT/$prefix-diff-$2" || echo "$tool round $2: the folders' bytes differ ($OUT/$prefix-diff-$2)" | tee -a "$RESULTS"
  kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
  PIDS=()
}

for r in $(seq 1 "$ROUNDS"); do
  # Alternate which tool goes first.
  if [ $((r % 2)) = 1 ]; then round harp "$r"; round syncthing "$r"; else round syncthing "$r"; round harp "$r"; fi
done

median_of() { grep "^$1 $2 " "$RESULTS" | awk -v c="$3" '{ print $c }' | median; }
max_of() { grep "^$1 $2 " "$RESULTS" | awk '{ print $3 }' | sort -n | tail -1; }
echo
echo "medians of $ROUNDS rounds, $FILES files (harp / Syncthing):"
for c in connected newnode; do
  for t in harp syncthing; do
    s=$(median_of $c $t 3); cpu=$(median_of $c $t 4)
    printf '  %-9s %-9s %7.1f s  %7.0f files/s  %6.1f CPU-s\n' $c $t "$s" "$(echo "$FILES / $s" | bc -l)" "$cpu"
  done
  printf '  %-9s files/s ratio %.2f, CPU ratio %.2f\n' $c \
    "$(echo "$(median_of $c syncthing 3) / $(median_of $c harp 3)" | bc -l)" "$(echo "$(median_of $c harp 4) / $(median_of $c syncthing 4)" | bc -l)"
done
for t in harp syncthing; do
  printf '  edit      %-9s median %.2f s, max %.2f s\n' $t "$(median_of edit $t 3)" "$(max_of edit $t)"
  printf '  move      %-9s median %.2f s\n' $t "$(median_of move $t 3)"
done
