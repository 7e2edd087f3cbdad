#!/usr/bin/env bash
# protocols.sh - HTTP/2 and TLS figures for Portcullis on this machine.
#
#  1. h2load over h2c: straight to an NGINX upstream (HTTP/2, "ok" from memory), then through
#     Portcullis with `protocol: h2` and (to NGINX's HTTP/1.1 port) `protocol: http1`.
#  2. TLS: full handshakes per second (openssl s_time -new, no resumption) against
#     Portcullis and against NGINX with the same certificate, and the server's CPU time
#     per handshake; then h2load over TLS (h2 by ALPN) through Portcullis.
#
# Portcullis runs with one worker pinned to core 0; the upstream and the load generators
# share core 1 (a 2-core machine). Needs: nginx, h2load (nghttp2-client), openssl, a release
# build (cargo build --release). Usage: bench/protocols.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-300000}
PATH=$PATH:/usr/sbin:/sbin
BIN=./target/release/portcullis
TMP=$(mktemp -d)
PIDS=()
cleanup() { [ -n "${KEEP:-}" ] && { echo "kept $TMP"; return; }; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
UP=25080 GW=25081 GWTLS=25082 UP1=25083 NGTLS=25084 NGPROXY=25085

# A throwaway CA and server certificate for 127.0.0.1 / bench.test.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench.test \
  -keyout "$TMP/srv.key" -out "$TMP/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:bench.test,IP:127.0.0.1\n' > "$TMP/ext"
openssl x509 -req -in "$TMP/srv.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial -days 2 \
  -extfile "$TMP/ext" -out "$TMP/srv.pem" 2>/dev/null

mkdir -p "$TMP/ng"
cat > "$TMP/nginx.conf" <<NG
worker_processes 1;
pid $TMP/ng/nginx.pid;
error_log $TMP/ng/error.log warn;
events { worker_connections 8192; }
http {
  access_log off; server_tokens off; keepalive_requests 10000000; keepalive_timeout 300s;
  http2_max_concurrent_streams 256;
  client_body_temp_path $TMP/ng/b; proxy_temp_path $TMP/ng/p; fastcgi_temp_path $TMP/ng/f;
  uwsgi_temp_path $TMP/ng/u; scgi_temp_path $TMP/ng/s;
  server { listen 127.0.0.1:$UP http2 backlog=4096; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$UP1 backlog=4096; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$NGTLS ssl http2; ssl_certificate $TMP/srv.pem; ssl_certificate_key $TMP/srv.key;
           ssl_session_cache off; ssl_session_tickets off; location / { return 200 "ok"; } }
}
NG
taskset -c 1 nginx -c "$TMP/nginx.conf" -g 'daemon off;' & PIDS+=($!)
# NGINX as the proxy to compare with: one worker on Portcullis's core, h2c in, HTTP/1.1 out.
mkdir -p "$TMP/np"
cat > "$TMP/proxy.conf" <<NG
worker_processes 1;
pid $TMP/np/nginx.pid;
error_log $TMP/np/error.log warn;
events { worker_connections 8192; }
http {
  access_log off; server_tokens off; keepalive_requests 10000000; keepalive_timeout 300s;
  http2_max_concurrent_streams 128;
  client_body_temp_path $TMP/np/b; proxy_temp_path $TMP/np/p; fastcgi_temp_path $TMP/np/f;
  uwsgi_temp_path $TMP/np/u; scgi_temp_path $TMP/np/s;
  upstream up { server 127.0.0.1:$UP1; keepalive 256; }
  server { listen 127.0.0.1:$NGPROXY http2 backlog=4096;
           location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NG
taskset -c 0 nginx -c "$TMP/proxy.conf" -g 'daemon off;' & PIDS+=($!)

cat > "$TMP/gw.yaml" <<YAML
version: 1
node: { name: bench, workers: 1 }
listeners:
  - { name: h2c, bind: "127.0.0.1:$GW", limits: { max_connections_per_ip: 100000 } }
  - name: tls
    bind: "127.0.0.1:$GWTLS"
    limits: { max_connections_per_ip: 100000 }
    tls: { certificates: [{ cert: "$TMP/srv.pem", key: "$TMP/srv.key" }] }
upstreams:
  - { name: h2, protocol: h2, targets: [{ url: "http://127.0.0.1:$UP" }] }
  - { name: h1, targets: [{ url: "http://127.0.0.1:$UP1" }] }
routes:
  - { name: via-h1, match: { prefix: /h1 }, upstream: h1, public: true }
  - { name: all, match: { prefix: / }, upstream: h2, public: true }
YAML
taskset -c 0 "$BIN" run -c "$TMP/gw.yaml" > "$TMP/gw.log" 2>&1 & GWPID=$!; PIDS+=($GWPID)
sleep 1; kill -0 $GWPID 2>/dev/null || { cat "$TMP/gw.log"; exit 1; }
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$GWTLS) 2>/dev/null && break; sleep 0.1; done
sleep 0.5

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
h2() { # label url
  local out; out=$(taskset -c 1 h2load -n "$N" -c 64 -m 10 -t 1 "$2" 2>&1)
  local rps; rps=$(grep -oP 'finished in .*?, \K[0-9.]+(?= req/s)' <<<"$out")
  local ok; ok=$(grep -oP '\d+(?= succeeded)' <<<"$out")
  local lat; lat=$(grep -P '^time for request:' <<<"$out" | awk '{print "mean " $5 ", sd " $6}')
  printf '%-34s %10s req/s  (%s ok of %s)  request time %s\n' "$1" "$rps" "$ok" "$N" "$lat"
}
echo "== h2load, 64 connections x 10 streams, $N requests"
h2 "direct to NGINX (h2c)" "http://127.0.0.1:$UP/"
t0=$(cpu_ticks $GWPID)
h2 "Portcullis h2c -> h2 upstream" "http://127.0.0.1:$GW/"
t1=$(cpu_ticks $GWPID)
h2 "Portcullis h2c -> http1 upstream" "http://127.0.0.1:$GW/h1/"
t2=$(cpu_ticks $GWPID)
h2 "Portcullis TLS h2 -> h2 upstream" "https://127.0.0.1:$GWTLS/"
t3=$(cpu_ticks $GWPID)
NPW=$(pgrep -P "$(cat "$TMP/np/nginx.pid")" | head -1)
n0=$(cpu_ticks "$NPW")
h2 "NGINX h2c -> http1 upstream" "http://127.0.0.1:$NGPROXY/"
n1=$(cpu_ticks "$NPW")
HZ=$(getconf CLK_TCK)
awk -v a=$t0 -v b=$t1 -v c=$t2 -v d=$t3 -v e=$n0 -v f=$n1 -v n=$N -v hz=$HZ 'BEGIN {
  printf "Portcullis CPU per request: h2->h2 %.1f us, h2->http1 %.1f us, TLS h2->h2 %.1f us\n",
    (b-a)/hz/n*1e6, (c-b)/hz/n*1e6, (d-c)/hz/n*1e6
  printf "NGINX CPU per request:      h2->http1 %.1f us\n", (f-e)/hz/n*1e6 }'

echo "== TLS full handshakes (openssl s_time -new, 2 clients x 8 s, no resumption)"
hs() { # label port pid
  local before; before=$(cpu_ticks "$3")
  local f1="$TMP/st1" f2="$TMP/st2"
  taskset -c 1 openssl s_time -connect "127.0.0.1:$2" -new -time 8 > "$f1" 2>&1 &
  local p1=$!
  taskset -c 1 openssl s_time -connect "127.0.0.1:$2" -new -time 8 > "$f2" 2>&1 &
  local p2=$!
  wait $p1 $p2 || true
  local n; n=$(cat "$f1" "$f2" | grep -oP '^\d+(?= connections in [0-9.]+ real)' | paste -sd+ | bc)
  local after; after=$(cpu_ticks "$3")
  awk -v n="$n" -v t=8 -v c=$((after-before)) -v hz=$HZ -v l="$1" 'BEGIN {
    printf "%-22s %8.0f handshakes/s   server CPU %.0f us per handshake\n", l, n/t, (n>0 ? c/hz/n*1e6 : 0) }'
}
NGPID=$(cat "$TMP/ng/nginx.pid"); NGW=$(pgrep -P "$NGPID" | head -1)
hs "Portcullis" $GWTLS $GWPID
hs "NGINX (same cert)" $NGTLS "$NGW"
