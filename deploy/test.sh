#!/usr/bin/env bash
# The one test command: prerequisites, build (release, once), all tests.
# Honours CARGO_TARGET_DIR so CI can reuse a target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cargo build --release --workspace --all-targets --locked
cargo test --release --workspace --locked -- --test-threads=2
