//! `billdb bank reconcile` end to end: the real `billdb` binary against a
//! real five-node local cluster (`billdb local up`). Legacy payments of
//! bank ICBC on one business day are imported (`billdb ops import`); a
//! statement with one payment missing in billdb, one missing in the file
//! and one amount mismatch gives exactly those in the summary, with the
//! totals both ways and exit status 3; the printed `billdb pay` line posts
//! the missing payment; a clean statement exits 0; a bad line exits 1,
//! names the line and stores nothing; `billdb bank index-backfill` looks
//! at every record and finds nothing to index. Ports 36001–36205.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

const BASE_PORT: u16 = 36000;
const DAY: &str = "2026-03-07";
/// 2026-03-07T00:00:00Z.
const DAY_MS: i64 = 1_772_841_600_000;

fn billdb() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb"))
}

struct Env {
    dir: String,
    ca: String,
}

/// Run the CLI with `token`; returns (exit code, stdout, stderr).
fn run(env: &Env, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(billdb());
    c.args(args)
        .env_remove("BILLDB_TOKEN")
        .env("BILLDB_CA", &env.ca)
        .env("BILLDB_ENDPOINT", format!("127.0.0.1:{}", BASE_PORT + 2))
        .env(
            "BILLDB_GRPC",
            (1..=5)
                .map(|n| format!("127.0.0.1:{}", BASE_PORT + 100 + n))
                .collect::<Vec<_>>()
                .join(","),
        );
    if let Some(t) = token {
        c.env("BILLDB_TOKEN", t);
    }
    let out = c.output().expect("billdb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(billdb())
            .args(["local", "down", "--dir", &self.0])
            .output();
    }
}

fn payment(account: &str, bank_ref: &str, amount: &str, ts_ms: i64) -> Value {
    json!({"account_id": account, "kind": "payment", "amount": amount, "units": "0",
        "ts_ms": ts_ms, "operator_id": "legacy", "branch": "B01", "tariff_id": "",
        "invoice_no": "", "bank_code": "ICBC", "bank_ref": bank_ref, "card_no": "", "card_seq": 0})
}

#[test]
fn reconcile_prints_the_differences_and_exits_by_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lc");
    let env = Env {
        dir: dir.to_string_lossy().into_owned(),
        ca: dir.join("tls/ca.pem").to_string_lossy().into_owned(),
    };
    let (code, out, err) = run(
        &env,
        &[
            "local",
            "up",
            "--dir",
            &env.dir,
            "--base-port",
            &BASE_PORT.to_string(),
        ],
        None,
    );
    let _down = Down(env.dir.clone());
    assert_eq!(code, 0, "local up failed:\n{out}\n{err}");
    let token = |who: &str| {
        let (code, out, err) = run(&env, &["local", "token", who, "--dir", &env.dir], None);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let (ops, bank, auditor) = (token("ops"), token("bank"), token("auditor"));

    // Four payments of the day, one of the day before.
    let accounts: Vec<Value> = ["K-1", "K-2", "K-3", "K-4"]
        .iter()
        .map(|a| {
            json!({"account_id": a, "name": "Customer", "address": "", "branch": "B01",
                "utility": "water", "meter_id": "", "tariff_id": "W1", "area": "0",
                "status": "active", "balance": "0.00", "opened_ms": DAY_MS - 86_400_000 * 30,
                "closed_ms": null, "card_no": null, "card_generation": 0})
        })
        .collect();
    let import = json!({"request_id": "cli-imp-1", "accounts": accounts, "records": [
        payment("K-1", "T1", "12.34", DAY_MS + 1000),
        payment("K-2", "T2", "56.78", DAY_MS + 3_600_000),
        payment("K-3", "T3", "90.00", DAY_MS + 7_200_000),
        payment("K-4", "T4", "0.10", DAY_MS + 86_399_999),
        payment("K-4", "T0", "7.00", DAY_MS - 1),
    ]});
    let import_file = tmp.path().join("import.json");
    std::fs::write(&import_file, import.to_string()).expect("write import");
    let (code, out, err) = run(
        &env,
        &[
            "ops",
            "import",
            import_file.to_str().expect("path"),
            "--json",
        ],
        Some(&ops),
    );
    assert_eq!(code, 0, "import:\n{out}\n{err}");

    let (code, out, err) = run(
        &env,
        &["bank", "payments", "--bank", "ICBC", "--date", DAY],
        Some(&auditor),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for r in ["T1", "T2", "T3", "T4"] {
        assert!(out.contains(r), "{r} listed:\n{out}");
    }
    assert!(!out.contains("T0 "), "the day before is not listed:\n{out}");
    assert!(out.contains("4 payments, 159.22"), "{out}");

    // The statement: T1 matched, T2 missing, T3 with another amount, T4
    // matched, N1 not in billdb.
    let statement = tmp.path().join("icbc-20260307.csv");
    std::fs::write(
        &statement,
        "bank_ref,account_id,amount,time\r\n\
         T1,K-1,12.34,00:00:01\r\n\
         T3,K-3,99.00,02:00:00\r\n\
         T4,K-4,0.10,23:59:59\r\n\
         N1,K-2,45.00,12:00:00\r\n",
    )
    .expect("write statement");
    let st = statement.to_str().expect("path");
    let (code, out, err) = run(
        &env,
        &["bank", "reconcile", "--bank", "ICBC", "--date", DAY, st],
        Some(&ops),
    );
    assert_eq!(code, 3, "differences exit 3:\n{out}\n{err}");
    eprintln!("billdb bank reconcile printed:\n{out}");
    assert!(
        out.contains("bank ICBC, business day 2026-03-07 (UTC): 3 DIFFERENCES"),
        "{out}"
    );
    let row = |label: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?}:\n{out}"));
        line[label.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("total: bank file"), ["4", "156.44"], "{out}");
    assert_eq!(
        row("total: billdb (payments standing)"),
        ["4", "159.22"],
        "{out}"
    );
    assert_eq!(row("difference (file - billdb)"), ["-2.78"], "{out}");
    assert_eq!(row("matched"), ["2", "12.44", "12.44"], "{out}");
    assert_eq!(
        row("in the file, not in billdb"),
        ["1", "45.00", "0.00"],
        "{out}"
    );
    assert_eq!(
        row("in billdb, not in the file"),
        ["1", "0.00", "56.78"],
        "{out}"
    );
    assert_eq!(row("amount mismatch"), ["1", "99.00", "90.00"], "{out}");
    assert_eq!(row("account mismatch"), ["0", "0.00", "0.00"], "{out}");
    let pay_line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("billdb pay "))
        .unwrap_or_else(|| panic!("no post command:\n{out}"))
        .to_string();
    assert_eq!(
        pay_line,
        "billdb pay K-2 45.00 --bank-code ICBC --bank-ref N1 --request-id pay-ICBC-N1"
    );
    assert!(out.contains("  T2  billdb K-2:1"), "{out}");
    assert!(out.contains("by ops-1 (ops)"), "{out}");

    // --json: the same, machine-readable.
    let (code, out, err) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            st,
            "--json",
        ],
        Some(&ops),
    );
    assert_eq!(code, 3, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["totals"]["difference"], "-2.78", "{v}");
    assert_eq!(v["file_name"], "icbc-20260307.csv");
    let classes: Vec<(String, String)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (s(&i["class"]), s(&i["bank_ref"])))
        .collect();
    assert_eq!(
        classes,
        [
            ("missing_in_billdb".to_string(), "N1".to_string()),
            ("missing_in_bank".to_string(), "T2".to_string()),
            ("amount_mismatch".to_string(), "T3".to_string()),
        ]
    );

    // The printed line posts the missing payment (twice: once).
    let args: Vec<&str> = pay_line.split_whitespace().skip(1).collect();
    for _ in 0..2 {
        let (code, out, err) = run(&env, &args, Some(&bank));
        assert_eq!(code, 0, "{pay_line}:\n{out}\n{err}");
    }

    // A bad line: exit 1, the line named, nothing sent or stored.
    let before = stored(&env, &auditor);
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "T1,K-1,12.34,00:00:01\nT3,K-3,9.999,02:00:00\n").expect("write");
    let (code, out, err) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            bad.to_str().expect("path"),
        ],
        Some(&ops),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("TOO_MANY_DECIMALS") && err.contains("line 2"),
        "{err}"
    );
    let (code, out, _) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            bad.to_str().expect("path"),
            "--json",
        ],
        Some(&ops),
    );
    assert_eq!(code, 1);
    let e: Value = serde_json::from_str(&out).expect("error json");
    assert_eq!(e["error"]["code"], "TOO_MANY_DECIMALS", "{e}");
    assert_eq!(e["error"]["details"]["line"], 2, "{e}");
    // Refused by the node (an auditor may not reconcile): exit 1, JSON error.
    let (code, out, _) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            st,
            "--json",
        ],
        Some(&auditor),
    );
    assert_eq!(code, 1);
    let e: Value = serde_json::from_str(&out).expect("error json");
    assert_eq!(e["error"]["code"], "PERMISSION_DENIED", "{e}");
    assert_eq!(stored(&env, &auditor), before);

    // A clean statement of the day (the bank's own token): exit 0.
    let clean = tmp.path().join("clean.csv");
    std::fs::write(
        &clean,
        "T1,K-1,12.34,00:00:01\nT2,K-2,56.78,01:00\nT3,K-3,90.00,02:00\nT4,K-4,0.10,23:59:59\n",
    )
    .expect("write");
    let (code, out, err) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            clean.to_str().expect("path"),
        ],
        Some(&bank),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("BALANCED"), "{out}");
    assert!(out.contains("by bank:ICBC (bank)"), "{out}");
    assert_eq!(stored(&env, &auditor), before + 1);

    // N1, now posted (today), is "posted on another day" for DAY.
    let (code, out, err) = run(
        &env,
        &[
            "bank",
            "reconcile",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            st,
            "--json",
        ],
        Some(&ops),
    );
    assert_eq!(code, 3, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["missing_in_billdb"]["count"], 0, "{v}");
    assert_eq!(v["posted_other_day"]["count"], 1, "{v}");

    // The auditor's listing names who reconciled.
    let (code, out, err) = run(
        &env,
        &["bank", "reconciliations", "--bank", "ICBC", "--date", DAY],
        Some(&auditor),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("by ops-1 (ops)")).count(),
        3,
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("BALANCED")).count(),
        1,
        "{out}"
    );

    // The index backfill: every record looked at, nothing to index (this
    // build indexed every payment as it posted it); an auditor is refused.
    let (code, out, err) = run(&env, &["bank", "index-backfill", "--json"], Some(&ops));
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["indexed"], 0, "{v}");
    assert!(v["records_looked_at"].as_u64() >= Some(6), "{v}");
    let (code, out, err) = run(&env, &["bank", "index-backfill"], Some(&ops));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 payments indexed"), "{out}");
    let (code, _, err) = run(&env, &["bank", "index-backfill"], Some(&auditor));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// How many reconciliations of ICBC on DAY are stored.
fn stored(env: &Env, auditor: &str) -> usize {
    let (code, out, err) = run(
        env,
        &[
            "bank",
            "reconciliations",
            "--bank",
            "ICBC",
            "--date",
            DAY,
            "--json",
        ],
        Some(auditor),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    v["reconciliations"].as_array().map_or(0, Vec::len)
}
