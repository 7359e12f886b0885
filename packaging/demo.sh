#!/usr/bin/env bash
# The embedded default, end to end: its own layout under .demo/ (nothing
# outside it is touched), the sample fragments copied into the store, and
# the watcher daemon running its own HAProxy (managed, master-worker) on
# 127.0.0.1:8080 (HTTP) and 127.0.0.1:8443 (HTTPS) until Ctrl-C.
set -euo pipefail
bin=$(realpath "${1:-bin/haproxy-config}")
cd "$(dirname "$0")/.."
export HAPROXY_CONFIG_ROOT="${HAPROXY_CONFIG_ROOT:-$PWD/.demo}"
export HAPROXY_CONFIG_HTTP_ADDR="${HAPROXY_CONFIG_HTTP_ADDR:-127.0.0.1:8080}"
export HAPROXY_CONFIG_HTTPS_ADDR="${HAPROXY_CONFIG_HTTPS_ADDR:-127.0.0.1:8443}"
export HAPROXY_CONFIG_STATUS_ADDR="${HAPROXY_CONFIG_STATUS_ADDR:-127.0.0.1:8404}"

store="$HAPROXY_CONFIG_ROOT/etc/haproxy-config/fragments"
mkdir -p "$store"
cp packaging/examples/fragments/*.cfg packaging/examples/fragments/*.map "$store/"
port=${HAPROXY_CONFIG_HTTPS_ADDR##*:}
env="HAPROXY_CONFIG_ROOT=$HAPROXY_CONFIG_ROOT"
cat <<MSG

The daemon starts HAProxy with the sample fragments. In another terminal:
  curl -k --resolve shop.example.com:$port:127.0.0.1 https://shop.example.com:$port/
  curl -k --resolve x.blog.example.org:$port:127.0.0.1 https://x.blog.example.org:$port/
  curl -k --resolve unknown.example.net:$port:127.0.0.1 https://unknown.example.net:$port/
  $env $bin apply --wait NAME CONF MAP     (or copy NAME.cfg + NAME.map into $store)
  $env $bin status
Ctrl-C stops the daemon and its HAProxy.

MSG
exec "$bin" watch
