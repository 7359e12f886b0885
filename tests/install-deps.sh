#!/usr/bin/env bash
# Installs what the test suite and the demo need on Debian 12: haproxy (the
# real one every integration test runs), curl and openssl; lintian,
# mmdebstrap and systemd (systemd-analyze) for the package tests; ansible-core
# for the Ansible tests; exabgp, bird2, iproute2, python3 and keepalived for
# the route announcement and health tests; Knot (knotd, and kdig/knsupdate
# from knot-dnsutils), the authoritative DNS server of the DNS-01 tests;
# etcd-server (/usr/bin/etcd), the etcd of the fleet storage tests, all
# from Debian; and Pebble v2.10.1 with
# pebble-challtestsrv (Let's Encrypt's test CA, newer than Debian's 2.4.0:
# ARI and profiles) from the Go module proxy into /usr/local/bin.
# Idempotent, and quick when all are present.
set -euo pipefail

pebble_version=v2.10.1
for bin in pebble pebble-challtestsrv; do
  if ! go version -m "/usr/local/bin/$bin" 2>/dev/null | grep -q "mod.*github.com/letsencrypt/pebble/v2.*$pebble_version"; then
    echo "install-deps: installing $bin $pebble_version" >&2
    GOBIN=/usr/local/bin go install "github.com/letsencrypt/pebble/v2/cmd/$bin@$pebble_version"
  fi
done
missing=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# the Debian package tests (tests/deb_test.go) and the Ansible tests
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v ansible-playbook >/dev/null 2>&1 || missing+=(ansible-core)
# the route announcement tests (tests/e2e_announce_test.go): ExaBGP runs
# "haproxy-config announce", bird2 is the router, in a network namespace
# (iproute2); python3 serves a monitor URI the test controls
command -v exabgp >/dev/null 2>&1 || [ -x /usr/sbin/exabgp ] || missing+=(exabgp)
command -v bird >/dev/null 2>&1 || [ -x /usr/sbin/bird ] || missing+=(bird2)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# keepalived -t checks the README's vrrp_script configuration
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || missing+=(keepalived)
# the DNS-01 tests (tests/e2e_dns_test.go); the package's service is never
# started here (the tests run their own knotd on a loopback port)
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || missing+=(knot)
command -v kdig >/dev/null 2>&1 || missing+=(knot-dnsutils)
# the fleet storage tests (certs/etcdstorage) run their own 3-member etcd
# on loopback ports; the package's etcd.service is disabled below
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
# policy-rc.d style guard: never start Debian's haproxy.service from here
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# etcd-server's postinst enables (and, under systemd, starts) a system etcd
# on 2379/2380: the tests do not want it
if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable etcd.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then $sudo systemctl stop etcd.service || true; fi
fi
