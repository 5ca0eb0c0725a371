#!/usr/bin/env bash
# Install what billdb needs to build and test on Debian/Ubuntu:
# clang + libclang (RocksDB's bindgen), a C++ toolchain, the network
# tools the chaos suite uses, etcd (the benchmark's baseline,
# `billdb-bench etcd`; its test runs it) and PostgreSQL (the benchmark's
# other reference, `billdb-bench postgres`; its test runs it). protoc
# comes vendored through cargo.
# Idempotent; installs only what is missing. Needs root or sudo.
set -euo pipefail

need=()
for pkg in clang libclang-dev build-essential pkg-config iproute2 iptables procps curl ca-certificates etcd-server postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian starts etcd-server's system service on install (where systemd
  # runs). The benchmark starts its own members on its own ports, so the
  # service is stopped and disabled again: installing leaves no daemon.
  if [[ " ${need[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
  # The same for PostgreSQL's cluster service.
  if [[ " ${need[*]} " == *" postgresql "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now postgresql.service >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: prerequisites present"
