#!/usr/bin/env bash
# Build the billdb image from deploy/container/Dockerfile:
#   deploy/container/build.sh [--bin-dir DIR] [--tag TAG]
# DIR defaults to $CARGO_TARGET_DIR/release (or target/release), TAG to
# billdb:latest. The build context is made here: rootfs/ with the stripped
# binaries, the shared libraries ldd names (at the same paths), the dynamic
# loader, and /etc/passwd, /etc/group for the billdb user (uid 10001).
# Nothing is pulled: the Dockerfile starts FROM scratch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
tag="billdb:latest"
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
fs="$ctx/rootfs"
install -d "$fs/usr/bin" "$fs/etc/billdb/tls" "$fs/tmp" "$ctx/rootfs-data"
chmod 1777 "$fs/tmp"
for b in billdb-node billdb; do
  [ -x "$bin_dir/$b" ] || { echo "build.sh: $bin_dir/$b missing: cargo build --release --workspace --locked" >&2; exit 1; }
  strip --strip-debug -o "$fs/usr/bin/$b" "$bin_dir/$b"
  chmod 0755 "$fs/usr/bin/$b"
done
# Every library the binaries link, and the loader, at their own paths.
for lib in $(for b in billdb-node billdb; do ldd "$fs/usr/bin/$b"; done |
  awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
  install -D -m 0755 "$(readlink -f "$lib")" "$fs$lib"
done
cat >"$fs/etc/passwd" <<P
root:x:0:0:root:/root:/sbin/nologin
billdb:x:10001:10001:billdb node:/var/lib/billdb:/sbin/nologin
P
cat >"$fs/etc/group" <<G
root:x:0:
billdb:x:10001:
G
printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
cp "$here/Dockerfile" "$here/node.toml" "$ctx/"
docker build --network none -t "$tag" "$ctx" >&2
echo "$tag"
