# Helpers shared by the bench scripts (sourced, not run).

# The median of the numbers on standard input, one per line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Column $2 of the result lines that start with $1, reduced to its median.
column_median() { grep "^$1 " "$RESULTS" | awk -v c="$2" '{ print $c }' | median; }

ticks=$(getconf CLK_TCK)

# `wrk --latency` output on stdin -> "req/s p99_ms requests".
wrk_summary() {
  awk '/Requests\/sec/ { rps = $2 }
       /^ +99%/ { v = $2; if (v ~ /us$/) ms = v / 1000; else if (v ~ /ms$/) ms = v + 0; else ms = v * 1000 }
       /requests in/ { n = $1 }
       END { printf "%.0f %.3f %d\n", rps, ms, n }'
}

# The [harp] section every benchmark runs harp with: one loop, quiet logs.
harp_head() { printf '[harp]\nthreads = 1\nlog_level = "error"\n'; }

# Installs the Debian packages named (each provides the command of its name) if one is missing.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; return; }
  done
}

# The top of an nginx config for a single-process, single-worker instance named $1 under $OUT.
nginx_head() {
  cat <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/$1.pid;
error_log $OUT/logs/$1-error.log;
events { worker_connections 4096; }
CONF
}

# Where the origin stores uploads: tmpfs, so disk speed never enters a proxy's figure.
UPLOADS=/dev/shm/harp-bench-uploads

# A whole nginx config serving $OUT/html on 127.0.0.1:$1 (the benchmarks' origin).
nginx_origin_conf() {
  mkdir -p "$UPLOADS/tmp"
  : > "$UPLOADS/empty"
  nginx_head origin
  cat <<CONF
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $OUT/origin-body;
  server {
    listen 127.0.0.1:$1 backlog=4096;
    root $OUT/html;
    client_max_body_size 0;
    # Uploads are stored (WebDAV PUT to tmpfs): the origin reads every byte before it
    # answers, so a proxy must really forward the body (with an early answer nginx as proxy
    # would just drop the rest).
    location /upload {
      root $UPLOADS;
      dav_methods PUT;
      create_full_put_path on;
      client_body_temp_path $UPLOADS/tmp;
    }
    # The same files as a chunked response (what an application streaming its output sends):
    # appending an empty file drops Content-Length.
    location /chunked/ {
      alias $OUT/html/;
      addition_types *;
      add_after_body /empty;
    }
    location = /empty { alias $UPLOADS/empty; }
  }
}
CONF
}
