#!/usr/bin/env bash
# The embedded default, end to end: its own layout under .demo/ (nothing
# outside it is touched), the sample fragments applied and validated, the
# configuration assembled, and HAProxy run in master-worker mode on
# 127.0.0.1:8080 (HTTP) and 127.0.0.1:8443 (HTTPS) until Ctrl-C.
set -euo pipefail
bin=$(realpath "${1:-bin/haproxy-config}")
cd "$(dirname "$0")/.."
export HAPROXY_CONFIG_ROOT="${HAPROXY_CONFIG_ROOT:-$PWD/.demo}"
export HAPROXY_CONFIG_HTTP_ADDR="${HAPROXY_CONFIG_HTTP_ADDR:-127.0.0.1:8080}"
export HAPROXY_CONFIG_HTTPS_ADDR="${HAPROXY_CONFIG_HTTPS_ADDR:-127.0.0.1:8443}"
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)

for conf in packaging/examples/fragments/*.cfg; do
  name=$(basename "$conf" .cfg)
  "$bin" apply "$name" "$conf" "${conf%.cfg}.map"
done
"$bin" assemble
"$bin" list

live="$HAPROXY_CONFIG_ROOT/var/lib/haproxy-config/live/haproxy.cfg"
run="$HAPROXY_CONFIG_ROOT/run/haproxy-config"
mkdir -p "$run"
port=${HAPROXY_CONFIG_HTTPS_ADDR##*:}
cat <<MSG

HAProxy is starting with $live. In another terminal:
  curl -k --resolve shop.example.com:$port:127.0.0.1 https://shop.example.com:$port/
  curl -k --resolve x.blog.example.org:$port:127.0.0.1 https://x.blog.example.org:$port/
  curl -k --resolve unknown.example.net:$port:127.0.0.1 https://unknown.example.net:$port/
  HAPROXY_CONFIG_ROOT=$HAPROXY_CONFIG_ROOT $bin apply NAME CONF MAP && HAPROXY_CONFIG_ROOT=$HAPROXY_CONFIG_ROOT $bin assemble
  then reload: kill -USR2 \$(cat $run/haproxy.pid)
Ctrl-C stops it.

MSG
exec "$haproxy" -W -db -f "$live" -p "$run/haproxy.pid" -S "$run/master.sock"
