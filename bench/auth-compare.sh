#!/usr/bin/env bash
# auth-compare.sh - ../shared/bench/proxy-compare.sh with one request header added to every
# wrk request, to measure authenticated routes (NGINX and HAProxy get the header too and
# ignore it, so they stay the same baseline).
#
# Usage: bench/auth-compare.sh TEMPLATE 'Header: value' [proxy-compare options...]
#   e.g. bench/auth-compare.sh bench/gw-apikey.yaml.tmpl "$(sed -n 1p bench/auth-headers.txt)" -o /tmp/apikey.json
# The compare script is copied to a temp dir whose wrk-report.lua also sets the header
# (at load time, so wrk keeps its pre-built-request fast path), as does its readiness probe.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tmpl=$1; header=$2; shift 2
src=${PROXY_COMPARE_DIR:-$here/../shared/bench}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp -r "$src"/. "$dir"/
name=${header%%:*}; value=${header#*: }
case "$name$value" in *'"'*|*\\*) echo "header must not contain quotes or backslashes" >&2; exit 2;; esac
{
  printf 'wrk.headers["%s"] = "%s"\n' "$name" "$value"
  cat "$src/wrk-report.lua"
} > "$dir/wrk-report.lua"
# The readiness probe (one GET /) carries the header too.
sed -i "s|Connection: close\\\\r\\\\n\\\\r\\\\n|Connection: close\\\\r\\\\n$name: $value\\\\r\\\\n\\\\r\\\\n|" "$dir/proxy-compare.sh"
grep -q "$name: " "$dir/proxy-compare.sh" || { echo "could not add the header to the readiness probe" >&2; exit 1; }
cd "$here"
CANDIDATE_CMD=${CANDIDATE_CMD:-'./target/release/portcullis run -c {CONFIG}'} \
CANDIDATE_CONFIG=$tmpl CANDIDATE_NAME=${CANDIDATE_NAME:-portcullis} \
  "$dir/proxy-compare.sh" "$@"
