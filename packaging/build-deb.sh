#!/usr/bin/env bash
# Builds the Debian package from a staged tree with plain dpkg-deb, no
# debhelper: build-deb.sh OUTDIR prints the path of the .deb it wrote.
# Reproducible: every time stamp is SOURCE_DATE_EPOCH (default: the last
# commit's time), owners are root (--root-owner-group), gzip runs with -n.
# DEB_VERSION overrides the package version (the tests build an upgrade);
# by default it is derived from "git describe --tags --always --dirty".
set -euo pipefail
out=$(realpath -m "${1:?usage: build-deb.sh OUTDIR}")
cd "$(dirname "$0")/.."
umask 022
export LC_ALL=C TZ=UTC
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
describe=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
commit=$(git rev-parse --short HEAD)

# Debian versions must start with a digit and sort by age: a tag vX.Y.Z
# gives X.Y.Z, commits after it X.Y.Z+N.gHASH, no tag 0.0~gitDATE.HASH.
debian_version() {
	local d=${describe%-dirty} suffix=""
	[ "$d" != "$describe" ] && suffix="+dirty"
	if [[ $d =~ ^v?([0-9]+(\.[0-9A-Za-z~+]+)+)-([0-9]+)-g([0-9a-f]+)$ ]]; then
		echo "${BASH_REMATCH[1]}+${BASH_REMATCH[3]}.g${BASH_REMATCH[4]}${suffix}-1"
	elif [[ $d =~ ^v?([0-9]+(\.[0-9A-Za-z~+]+)+)$ ]]; then
		echo "${BASH_REMATCH[1]}${suffix}-1"
	else
		echo "0.0~git$(date -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).${commit}${suffix}-1"
	fi
}
version="${DEB_VERSION:-$(debian_version)}"
arch=$(dpkg --print-architecture)
case $arch in
amd64 | arm64 | riscv64 | ppc64el | s390x) goarch=${arch/ppc64el/ppc64le} ;;
i386) goarch=386 ;;
armhf) goarch=arm ;;
*) echo "build-deb: no Go architecture known for $arch" >&2; exit 1 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
pkg=packaging/debian

install -d "$root/usr/sbin" "$root/DEBIAN"
# Static (no cgo) and stripped; -trimpath keeps build paths out.
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -trimpath \
	-ldflags "-s -w -X main.version=$describe" -o "$root/usr/sbin/haproxy-config" ./cmd/haproxy-config
bin=$root/usr/sbin/haproxy-config
[ "$goarch" = "$(go env GOHOSTARCH)" ] || { echo "build-deb: cross builds cannot generate the man page" >&2; exit 1; }

install -D -m 0644 "$pkg/haproxy-config.service" "$root/lib/systemd/system/haproxy-config.service"
install -D -m 0644 "$pkg/haproxy.service.conf" "$root/lib/systemd/system/haproxy.service.d/haproxy-config.conf"
install -D -m 0644 "$pkg/tmpfiles.conf" "$root/usr/lib/tmpfiles.d/haproxy-config.conf"
install -D -m 0644 "$pkg/default" "$root/etc/default/haproxy-config"
# The embedded default base, with HAProxy's workers running as Debian's
# haproxy user (the master stays root to re-execute itself on reloads).
install -d "$root/etc/haproxy-config"
awk '{ print } /^    master-worker$/ {
	print "    # workers drop to the haproxy user of Debian'"'"'s haproxy package"
	print "    user haproxy"
	print "    group haproxy"
}' assemble/default-base.cfg >"$root/etc/haproxy-config/base.cfg"
grep -q '^    user haproxy$' "$root/etc/haproxy-config/base.cfg" || { echo "build-deb: master-worker line not found in the default base" >&2; exit 1; }
install -d "$root/usr/share/man/man8" "$root/usr/share/bash-completion/completions" "$root/usr/share/doc/haproxy-config"
"$bin" manpage | gzip -9n >"$root/usr/share/man/man8/haproxy-config.8.gz"
"$bin" bash-completion >"$root/usr/share/bash-completion/completions/haproxy-config"
install -D -m 0644 "$pkg/lintian-overrides" "$root/usr/share/lintian/overrides/haproxy-config"
install -m 0644 "$pkg/copyright" "$root/usr/share/doc/haproxy-config/copyright"
gzip -9n <README.md >"$root/usr/share/doc/haproxy-config/README.md.gz"
{
	echo "haproxy-config ($version) unstable; urgency=medium"
	echo
	echo "  * Built from git $describe (commit $commit)."
	echo
	echo " -- $(sed -n 's/^Maintainer: //p' "$pkg/control.in")  $(date -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$root/usr/share/doc/haproxy-config/changelog.Debian.gz"

install -m 0755 "$pkg/postinst" "$pkg/prerm" "$pkg/postrm" "$root/DEBIAN/"
printf '%s\n' /etc/default/haproxy-config /etc/haproxy-config/base.cfg >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
find "$root" -path "$root/DEBIAN" -prune -o -type f -printf '%P\0' | sort -z |
	(cd "$root" && xargs -0 md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$pkg/control.in" >"$root/DEBIAN/control"
chmod -R u=rwX,go=rX "$root"
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm" "$bin"
find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/haproxy-config_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
