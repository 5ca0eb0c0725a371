//! The etcd baseline (`billdb-bench etcd`) against real etcd processes:
//! five members start, elect a leader, take transactions for a second and
//! stop. Needs Debian's etcd-server (`deploy/setup.sh` installs it): a
//! missing etcd fails this test, it never skips. Asserts work done and the
//! writes read back, no latency.

use std::process::Command;

mod common;

use serde_json::Value;

/// Even base ports tried lie in 19300–19699 (a run uses base+1..base+19);
/// the billdb smoke run uses 18000–19209. A failed start tries another.
const BASE_PORT_MIN: u32 = 19_300;
const BASE_PORT_SPAN: u32 = 380;
const START_ATTEMPTS: u32 = 5;

#[test]
fn etcd_takes_two_put_transactions_and_reads_them_back() {
    let mut failures = Vec::new();
    for attempt in 0..START_ATTEMPTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = BASE_PORT_MIN
            + ((std::process::id() * 7_919 + attempt * 2_713) % BASE_PORT_SPAN) / 2 * 2;
        let out = Command::new(env!("CARGO_BIN_EXE_billdb-bench"))
            .args(["etcd", "--clients", "4", "--duration-s", "1", "--json"])
            .arg("--base-port")
            .arg(base.to_string())
            .arg("--dir")
            .arg(tmp.path())
            .output()
            .expect("run billdb-bench etcd");
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).to_string());
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let txn = &v["ops"]["etcd_txn"];
        let count = txn["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "{v}");
        assert!(txn["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        assert_eq!(v["extra"]["acknowledged"].as_u64(), Some(count), "{v}");
        assert!(
            v["extra"]["revision_advanced"].as_u64().unwrap_or(0) >= count,
            "{v}"
        );
        assert!(
            v["settings"]["version"]
                .as_str()
                .unwrap_or("")
                .contains("3."),
            "{v}"
        );
        // Five members measured, and stopped at the end.
        common::five_measured_then_stopped(&v, count, "etcd");
        return;
    }
    panic!("billdb-bench etcd failed {START_ATTEMPTS} times:\n{failures:#?}");
}
