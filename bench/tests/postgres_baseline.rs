//! The PostgreSQL reference (`billdb-bench postgres`) against real
//! PostgreSQL processes: a primary and four streaming standbys start, the
//! primary's commits wait for any two of them, pgbench runs purchases for
//! a second and card reads for a second, everything stops; the same with
//! the full (PL/pgSQL) purchase, and with every connection over TLS
//! (clients' and replication's, certificates checked both ways, plaintext
//! refused). Needs Debian's
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

/// Runs `billdb-bench postgres` with `args` and checks what every run
/// must show: the purchases pgbench counted, each acknowledged without an
/// error, stored on the primary and replayed on all four standbys; the
/// quorum of any two; the transport `--tls` asked for (the standbys' WAL
/// streams and a client's connection as the primary saw them); five
/// instances measured, then stopped. The result and the purchase count.
fn run_checked(salt: u32, args: &[&str]) -> (Value, u64) {
    let v = run_postgres(salt, args);
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
    let tls = args.contains(&"--tls");
    let transport = &v["settings"]["transport"];
    assert_eq!(transport["tls"].as_bool(), Some(tls), "{v}");
    assert_eq!(
        transport["standby_streams_tls"].as_u64(),
        Some(if tls { 4 } else { 0 }),
        "{v}"
    );
    let client = transport["client_connection"].as_str().unwrap_or("");
    if tls {
        assert!(client.starts_with("TLSv1."), "{v}");
        assert!(
            v["settings"]["primary_flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "ssl=on")),
            "{v}"
        );
    } else {
        assert_eq!(client, "plaintext", "{v}");
        assert_eq!(transport["plaintext_refused"], Value::Null, "{v}");
    }
    assert!(
        v["settings"]["version"]
            .as_str()
            .unwrap_or("")
            .contains("PostgreSQL"),
        "{v}"
    );
    // Five instances measured (each postmaster's RSS), and stopped.
    common::five_measured_then_stopped(&v, count, "postgres");
    (v, count)
}

#[test]
fn postgres_with_four_sync_standbys_takes_purchases_and_replicates_them() {
    let (v, _) = run_checked(
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
    assert_eq!(v["settings"]["purchase"].as_str(), Some("minimal"), "{v}");
    let reads = &v["extra"]["card_reads"]["ops"]["pg_card_read"];
    assert!(reads["count"].as_u64().unwrap_or(0) > 0, "{v}");
}

/// The PL/pgSQL purchase runs on real PostgreSQL: every purchase posts
/// (no function error: cards known, ladders priced), and the run's own
/// check held (one outcome and one gapless invoice number per purchase,
/// every report dimension equal to the records to the cent), or the
/// command would have failed.
#[test]
fn the_full_purchase_function_posts_every_purchase_with_gapless_invoices() {
    let (v, _) = run_checked(
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
    assert_eq!(v["settings"]["purchase"].as_str(), Some("full"), "{v}");
    assert!(
        v["settings"]["purchase_function"]
            .as_str()
            .unwrap_or("")
            .contains("CREATE FUNCTION purchase"),
        "{v}"
    );
}

/// With `--tls` every connection is TLS: pgbench's purchases and the
/// standbys' WAL streams (all four, seen in the primary's `pg_stat_ssl`)
/// carry the purchases to every standby, and a plaintext connection finds
/// no `pg_hba.conf` line and is refused.
#[test]
fn with_tls_clients_and_replication_run_over_tls_and_plaintext_is_refused() {
    let (v, _) = run_checked(
        2,
        &[
            "--clients",
            "4",
            "--duration-s",
            "1",
            "--accounts",
            "200",
            "--tls",
            "--json",
        ],
    );
    let refused = v["settings"]["transport"]["plaintext_refused"]
        .as_str()
        .unwrap_or("");
    assert!(refused.contains("no pg_hba.conf entry"), "{v}");
    assert!(refused.contains("no encryption"), "{v}");
}
