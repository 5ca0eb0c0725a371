#!/usr/bin/env bash
# One command: install prerequisites, build, start five local nodes on
# loopback (data under .billdb/local), initialise them, run a small demo,
# and print the cluster's status and endpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cargo build --release --workspace --all-targets --locked
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release"
dir="${BILLDB_DIR:-.billdb/local}"

"$bin/billdb" local up --dir "$dir" --node-bin "$bin/billdb-node"

echo
echo "== demo: open an account and post a bank payment through node 3 (a follower forwards to the leader)"
stamp=$(date +%s)
counter="Authorization: Bearer $("$bin/billdb" local token counter --dir "$dir")"
bank="Authorization: Bearer $("$bin/billdb" local token bank --dir "$dir")"
auditor="Authorization: Bearer $("$bin/billdb" local token auditor --dir "$dir")"
# Secure by default: every port is TLS (mutual TLS between the nodes); the
# cluster's CA certificate is what a client trusts.
ca="$dir/tls/ca.pem"
curl -sS --cacert "$ca" -X POST https://127.0.0.1:7003/v1/accounts -H "$counter" -H 'content-type: application/json' \
  -d "{\"request_id\":\"demo-open-$stamp\",\"account_id\":\"DEMO-$stamp\",\"name\":\"Demo Customer\",\"branch\":\"B01\",\"utility\":\"heat\"}"
echo
curl -sS --cacert "$ca" -X POST https://127.0.0.1:7004/v1/payments -H "$bank" -H 'content-type: application/json' \
  -d "{\"request_id\":\"demo-pay-$stamp\",\"account_id\":\"DEMO-$stamp\",\"amount\":\"120.50\",\"bank_code\":\"ICBC\",\"bank_ref\":\"DEMO-$stamp\"}"
echo
echo "== the same payment delivered again (same request_id): the original outcome, nothing doubled"
curl -sS --cacert "$ca" -X POST https://127.0.0.1:7005/v1/payments -H "$bank" -H 'content-type: application/json' \
  -d "{\"request_id\":\"demo-pay-$stamp\",\"account_id\":\"DEMO-$stamp\",\"amount\":\"120.50\",\"bank_code\":\"ICBC\",\"bank_ref\":\"DEMO-$stamp\"}"
echo
echo "== linearizable read from node 2"
curl -sS --cacert "$ca" -H "$auditor" https://127.0.0.1:7002/v1/accounts/DEMO-$stamp
echo
echo "== without a token: refused"
curl -sS --cacert "$ca" -X POST https://127.0.0.1:7002/v1/payments -d '{}'
echo
echo "== plaintext: refused (TLS only; there is no silent fallback)"
curl -sS -m 3 http://127.0.0.1:7002/healthz || echo "(no answer over plaintext)"
echo
echo
"$bin/billdb" local status --dir "$dir"
echo
echo "Tokens: $bin/billdb local token ops|auditor|counter|bank --dir $dir"
echo "This shell as ops (CA, endpoints, token): eval \"\$($bin/billdb local env --dir $dir)\""
echo "Stop the cluster with: $bin/billdb local down --dir $dir"
