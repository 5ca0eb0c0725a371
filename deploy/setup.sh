#!/usr/bin/env bash
# Install what billdb needs to build and test on Debian/Ubuntu:
# clang + libclang (RocksDB's bindgen), a C++ toolchain, the network
# tools the chaos suite uses, etcd (the benchmark's baseline,
# `billdb-bench etcd`; its test runs it) and PostgreSQL (the benchmark's
# other reference, `billdb-bench postgres`; its test runs it) and
# Prometheus (`prometheus` and `promtool`: the monitoring tests check
# /metrics and deploy/monitoring's rules, and scrape a cluster). protoc
# comes vendored through cargo. The deployment tests need systemd
# (`systemd-analyze verify` of the package's unit), adduser (the package's
# postinst), docker.io and docker-compose (the image and the compose
# cluster; the Docker daemon is started below when it is not running),
# debootstrap (a Debian 12 server image with systemd as PID 1, where the
# package's unit runs for real) and python3-yaml (the Kubernetes manifests
# are parsed offline). The chaos
# suite's power-loss test mounts a lossy FUSE filesystem: it needs
# /dev/fuse (the fuse kernel module, loaded below when missing) and, when
# not root, fusermount3 (fuse3). The drill test (client/tests/drill.rs)
# opens each node's status page in headless Chromium (chromium).
# Idempotent; installs only what is missing. Needs root or sudo.
set -euo pipefail

need=()
for pkg in clang libclang-dev build-essential pkg-config iproute2 iptables procps curl ca-certificates etcd-server postgresql prometheus \
  systemd adduser binutils debootstrap docker.io docker-compose python3-yaml python3-venv fuse3 chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian starts etcd-server's, postgresql's and prometheus's system
  # services on install (where systemd runs, or through their init
  # scripts). The benchmark and the tests start their own servers on their
  # own ports, so each is stopped and disabled again: installing leaves no
  # daemon.
  for pkg_service in etcd-server:etcd postgresql:postgresql prometheus:prometheus; do
    pkg=${pkg_service%%:*}
    service=${pkg_service#*:}
    [[ " ${need[*]} " == *" $pkg "* ]] || continue
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$service" ]; then
      $SUDO "/etc/init.d/$service" stop >/dev/null 2>&1 || true
      $SUDO update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
  done
fi

# FUSE, for the lossy filesystem of chaos/tests/power_loss.rs.
if [ ! -e /dev/fuse ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO modprobe fuse >/dev/null 2>&1 || true
  [ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse kernel module): the power-loss test needs FUSE" >&2; exit 1; }
fi

# The tests start clusters on fixed loopback ports, some of them (32000-
# 39999) inside the kernel's ephemeral range (32768-60999 by default): an
# outgoing connection of anything on this machine could hold one for a
# moment and a cluster would fail to start with "address ... is not free".
# Reserving the range keeps the kernel from handing those ports out as
# ephemeral ones; listening on them is unaffected.
TEST_PORTS="32000-39999"
reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports 2>/dev/null || echo "?")
if [ "$reserved" != "?" ] && [[ ",$reserved," != *",$TEST_PORTS,"* ]]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  want="$TEST_PORTS"
  [ -z "$reserved" ] || want="$reserved,$TEST_PORTS"
  if ! $SUDO sysctl -q -w "net.ipv4.ip_local_reserved_ports=$want" >/dev/null 2>&1; then
    echo "setup: warning: could not reserve ports $TEST_PORTS (net.ipv4.ip_local_reserved_ports);" \
      "a test cluster may then find a port held by an outgoing connection" >&2
  fi
fi

# The Docker daemon, for the container tests: started when it does not
# answer (where systemd runs, its service; else dockerd in the background).
if ! docker info >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl start docker.service
  else
    echo "setup: starting dockerd (log: /var/log/dockerd.log)"
    $SUDO sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 30); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "setup: the Docker daemon did not start (see /var/log/dockerd.log)" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# The Python environment of the API tests: rebuilt when the pinned
# requirements change (their hash is kept beside it).
PYENV="${BILLDB_PYENV:-/var/tmp/billdb-pyenv}"
REQS="$(dirname "$0")/python-requirements.txt"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$PYENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "setup: making the Python environment $PYENV"
  rm -rf "$PYENV"
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  echo "$want" > "$PYENV/.requirements.sha256"
fi

echo "setup: prerequisites present"
