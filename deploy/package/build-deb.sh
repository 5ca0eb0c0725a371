#!/usr/bin/env bash
# Build the billdb Debian package from release binaries:
#   deploy/package/build-deb.sh [--bin-dir DIR] [--out DIR]
# DIR defaults to $CARGO_TARGET_DIR/release (or target/release); build them
# first with `cargo build --release --workspace --locked`. Prints the path
# of the .deb. Needs dpkg-deb, strip and ldd (Debian's dpkg, binutils,
# libc-bin).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
out="$root/target/deb"
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done
for b in billdb-node billdb; do
  [ -x "$bin_dir/$b" ] || { echo "build-deb: $bin_dir/$b missing: cargo build --release --workspace --locked" >&2; exit 1; }
done
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml [workspace.package]" >&2; exit 1; }
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/billdb"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/billdb" \
  "$pkg/usr/share/doc/billdb/examples"
for b in billdb-node billdb; do
  strip --strip-debug -o "$pkg/usr/bin/$b" "$bin_dir/$b"
  chmod 0755 "$pkg/usr/bin/$b"
done
install -m 0644 "$here/billdb-node.service" "$pkg/lib/systemd/system/billdb-node.service"
install -m 0644 "$here/node.toml" "$pkg/etc/billdb/node.toml.example"
install -m 0644 "$here/billdb-node.env" "$pkg/etc/billdb/billdb-node.env.example"
install -m 0644 "$here/node.toml" "$pkg/usr/share/doc/billdb/examples/node.toml"
install -m 0644 "$root/docs/OPERATIONS.md" "$pkg/usr/share/doc/billdb/OPERATIONS.md"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/billdb/README.md"
for s in postinst prerm postrm; do
  install -m 0755 "$here/$s" "$pkg/DEBIAN/$s"
done
printf '/etc/billdb/node.toml.example\n/etc/billdb/billdb-node.env.example\n' >"$pkg/DEBIAN/conffiles"

# The shared libraries the binaries link, as Debian packages.
depends="$(
  for b in billdb-node billdb; do ldd "$pkg/usr/bin/$b"; done |
    awk '$3 ~ /^\// {print $3}' | sort -u |
    while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true; done |
    cut -d: -f1 | sort -u |
    while read -r p; do
      v="$(dpkg-query -W -f='${Version}' "$p" | sed 's/-[^-]*$//')"
      printf '%s (>= %s)\n' "$p" "${v#*:}"
    done | paste -sd, - | sed 's/,/, /g'
)"
[ -n "$depends" ] || { echo "build-deb: could not work out the libraries' packages" >&2; exit 1; }
size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: billdb
Version: $version
Architecture: $arch
Maintainer: billdb maintainers <billdb@localhost>
Section: database
Priority: optional
Depends: adduser, $depends
Installed-Size: $size
Description: replicated database for utility billing (five-node Raft)
 billdb-node is one node of a five-node Raft cluster on RocksDB serving
 prepaid and postpaid utility billing over gRPC and HTTP/JSON; billdb is
 its command line (administration, counter, bank and report commands,
 certificates and tokens). Installing starts nothing: configure
 /etc/billdb/node.toml, then enable billdb-node.service.
CONTROL
mkdir -p "$out"
deb="$out/billdb_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$pkg" "$deb" >/dev/null
echo "$deb"
