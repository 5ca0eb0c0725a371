#!/usr/bin/env bash
# A Docker image that boots like a bare Debian 12 server: systemd as PID 1,
# nothing else installed but what the billdb package needs (adduser) and
# what a server has (systemd, dbus, iptables: a drill cuts the network). It stands in for "one of your five
# servers" where no real ones exist: the package is installed into it with
# `dpkg -i` and runs under a real systemd (node/tests/deploy_systemd.rs).
#
#   deploy/package/systemd-host-image.sh [--tag billdb-host:bookworm-2] [--mirror URL]
#
# No registry is needed: the root filesystem comes from Debian's own
# package mirror (debootstrap, minbase) and is imported with `docker
# import`. An image of that tag that already exists is kept (delete it to
# rebuild). Prints the tag. Run as root; deploy/setup.sh installs
# debootstrap and docker.io.
#
# Run a container of it as a server:
#   docker run -d --name host1 --hostname host1 --cap-add SYS_ADMIN --cap-add NET_ADMIN \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     -v /sys/fs/cgroup:/sys/fs/cgroup:ro --tmpfs /run --tmpfs /run/lock \
#     --stop-signal SIGRTMIN+3 billdb-host:bookworm
set -euo pipefail

tag="billdb-host:bookworm-2"
mirror="http://deb.debian.org/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    *) echo "usage: $0 [--tag TAG] [--mirror URL]" >&2; exit 2 ;;
  esac
done

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "debootstrap is not installed: run deploy/setup.sh" >&2
  exit 1
}
root="$(mktemp -d /var/tmp/billdb-host-root.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "systemd-host-image: debootstrap bookworm from $mirror (about a minute)" >&2
if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,iptables \
    bookworm "$root" "$mirror" > "$root.log" 2>&1; then
  tail -20 "$root.log" >&2
  rm -f "$root.log"
  exit 1
fi
rm -f "$root.log"
# A container has no consoles and no hardware clock to wait for.
rm -f "$root"/etc/systemd/system/getty.target.wants/* \
      "$root"/lib/systemd/system/multi-user.target.wants/getty.target
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' - "$tag" >/dev/null
echo "$tag"
