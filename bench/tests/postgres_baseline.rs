//! The PostgreSQL reference (`billdb-bench postgres`) against real
//! PostgreSQL processes: a primary and four streaming standbys start, the
//! primary's commits wait for any two of them, pgbench runs purchases for
//! a second and card reads for a second, everything stops. Needs Debian's
//! postgresql (`deploy/setup.sh` installs it): a missing PostgreSQL fails
//! this test, it never skips. Asserts work done, the purchases stored on
//! the primary and replayed on every standby, and the servers gone; no
//! latency.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

mod common;

use serde_json::Value;

/// Even base ports tried lie in 19900–19999 (a run uses base+1..base+9);
/// the etcd test uses 19300–19679, the billdb smoke run 18000–19879. A
/// failed start tries another.
const BASE_PORT_MIN: u32 = 19_900;
const BASE_PORT_SPAN: u32 = 90;
const START_ATTEMPTS: u32 = 3;

#[test]
fn postgres_with_four_sync_standbys_takes_purchases_and_replicates_them() {
    let mut failures = Vec::new();
    for attempt in 0..START_ATTEMPTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Run as root, the servers run as `postgres`, which must reach
        // the directory (a temporary directory is private to its owner).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let dir = tmp.path().join("pg");
        let base = BASE_PORT_MIN
            + ((std::process::id() * 7_919 + attempt * 2_713) % BASE_PORT_SPAN) / 2 * 2;
        let out = Command::new(env!("CARGO_BIN_EXE_billdb-bench"))
            .args(["postgres", "--clients", "4", "--duration-s", "1"])
            .args(["--reads-s", "1", "--accounts", "500", "--json"])
            .arg("--base-port")
            .arg(base.to_string())
            .arg("--dir")
            .arg(&dir)
            .output()
            .expect("run billdb-bench postgres");
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).to_string());
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let purchase = &v["ops"]["pg_purchase"];
        let count = purchase["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "{v}");
        assert_eq!(
            purchase["errors"].as_object().map(|m| m.len()),
            Some(0),
            "{v}"
        );
        assert!(purchase["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        // pgbench's count, the records on the primary and on each of the
        // four standbys after they replayed the primary's WAL all agree.
        assert_eq!(v["extra"]["acknowledged"].as_u64(), Some(count), "{v}");
        assert_eq!(v["extra"]["records"].as_u64(), Some(count), "{v}");
        assert_eq!(v["extra"]["standbys_checked"].as_u64(), Some(4), "{v}");
        assert_eq!(
            v["settings"]["synchronous_standby_names"].as_str(),
            Some("ANY 2 (s1, s2, s3, s4)"),
            "{v}"
        );
        assert!(
            v["settings"]["version"]
                .as_str()
                .unwrap_or("")
                .contains("PostgreSQL"),
            "{v}"
        );
        let reads = &v["extra"]["card_reads"]["ops"]["pg_card_read"];
        assert!(reads["count"].as_u64().unwrap_or(0) > 0, "{v}");
        // Five instances measured (each postmaster's RSS), and stopped.
        common::five_measured_then_stopped(&v, count, "postgres");
        return;
    }
    panic!("billdb-bench postgres failed {START_ATTEMPTS} times:\n{failures:#?}");
}
