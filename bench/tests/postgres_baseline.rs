//! The PostgreSQL reference (`billdb-bench postgres`) against real
//! PostgreSQL processes: a primary and four streaming standbys start, the
//! primary's commits wait for any two of them, pgbench runs purchases for
//! a second and card reads for a second, everything stops; the same with
//! the full (PL/pgSQL) purchase. Needs Debian's
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

/// Runs `billdb-bench postgres` with `args` (small and short) until it
/// starts, at most [`START_ATTEMPTS`] times; its JSON result. `salt` keeps
/// two tests of this binary on different ports.
fn run_postgres(salt: u32, args: &[&str]) -> Value {
    let mut failures = Vec::new();
    for attempt in 0..START_ATTEMPTS {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Run as root, the servers run as `postgres`, which must reach
        // the directory (a temporary directory is private to its owner).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let dir = tmp.path().join("pg");
        let base = BASE_PORT_MIN
            + ((std::process::id() * 7_919 + (attempt + salt * START_ATTEMPTS) * 2_713)
                % BASE_PORT_SPAN)
                / 2
                * 2;
        let out = Command::new(env!("CARGO_BIN_EXE_billdb-bench"))
            .arg("postgres")
            .args(args)
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
        return serde_json::from_slice(&out.stdout).expect("JSON");
    }
    panic!("billdb-bench postgres failed {START_ATTEMPTS} times:\n{failures:#?}");
}

/// The purchases pgbench counted, each acknowledged without an error and
/// stored on the primary and on all four standbys.
fn purchases_stored_everywhere(v: &Value) -> u64 {
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
    count
}

#[test]
fn postgres_with_four_sync_standbys_takes_purchases_and_replicates_them() {
    let v = run_postgres(
        0,
        &[
            "--clients",
            "4",
            "--duration-s",
            "1",
            "--reads-s",
            "1",
            "--accounts",
            "500",
            "--json",
        ],
    );
    let count = purchases_stored_everywhere(&v);
    assert_eq!(v["settings"]["purchase"].as_str(), Some("minimal"), "{v}");
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
}

/// The PL/pgSQL purchase runs on real PostgreSQL: every purchase posts
/// (no function error: cards known, ladders priced), and the run's own
/// check held (one outcome and one gapless invoice number per purchase,
/// every report dimension equal to the records to the cent), or the
/// command would have failed.
#[test]
fn the_full_purchase_function_posts_every_purchase_with_gapless_invoices() {
    let v = run_postgres(
        1,
        &[
            "--clients",
            "8",
            "--duration-s",
            "1",
            "--accounts",
            "200",
            "--purchase",
            "full",
            "--json",
        ],
    );
    let count = purchases_stored_everywhere(&v);
    assert_eq!(v["settings"]["purchase"].as_str(), Some("full"), "{v}");
    assert!(
        v["settings"]["purchase_function"]
            .as_str()
            .unwrap_or("")
            .contains("CREATE FUNCTION purchase"),
        "{v}"
    );
    common::five_measured_then_stopped(&v, count, "postgres");
}
