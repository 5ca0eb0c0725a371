#!/usr/bin/env bash
# Install what billdb needs to build and test on Debian/Ubuntu:
# clang + libclang (RocksDB's bindgen), a C++ toolchain, and the network
# tools the chaos suite uses. protoc comes vendored through cargo.
# Idempotent; installs only what is missing. Needs root or sudo.
set -euo pipefail

need=()
for pkg in clang libclang-dev build-essential pkg-config iproute2 iptables procps curl ca-certificates; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: prerequisites present"
