//! Bank statement reconciliation against five real nodes (issue 27), over
//! HTTP: payments of bank ICBC on one business day (imported, so their
//! times are fixed, two of them on the day's first and last millisecond),
//! decoys on the days before and after and of another bank on the same
//! day, two reversals; a statement file with seeded payments missing in
//! billdb, missing in the file, amount and account mismatches, a payment
//! billdb holds on another day and a reversed one. The result must find
//! exactly those, with totals to the cent both ways; it is stored through
//! Raft (who, when), readable by an auditor on another node, and every
//! replica's state digest is equal. Bad files and bad callers are refused
//! with their codes and store nothing; a retry answers the stored result.
//!
//! Payments posted by a build without the bank-day index (their index
//! entries removed from every replica's RocksDB while the nodes are
//! stopped) make their day refused with INVALID_STATE; the backfill
//! (`POST /v1/bank-index/backfill`) indexes them exactly as the posting
//! apply would have, reversal marks included; the day then reconciles, a
//! second run indexes nothing, and the digests stay equal.
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): bases
//! 35000, 35500 and 26500.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};

use common::*;

const DAY: &str = "2026-03-07";
/// 2026-03-07T00:00:00Z.
const DAY_MS: i64 = 1_772_841_600_000;
const H: i64 = 3_600_000;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn dv(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}

fn account(id: &str) -> Value {
    json!({"account_id": id, "name": "Customer", "address": "", "branch": "B01",
        "utility": "electricity", "meter_id": "", "tariff_id": "T1", "area": "0",
        "status": "active", "balance": "0.00", "opened_ms": DAY_MS - 400 * 24 * H,
        "closed_ms": null, "card_no": null, "card_generation": 0})
}

fn payment(account_id: &str, bank: &str, bank_ref: &str, amount: &str, ts_ms: i64) -> Value {
    json!({"account_id": account_id, "kind": "payment", "amount": amount, "units": "0",
        "ts_ms": ts_ms, "operator_id": "legacy", "branch": "B01", "tariff_id": "",
        "invoice_no": "", "bank_code": bank, "bank_ref": bank_ref, "card_no": "", "card_seq": 0})
}

/// (class, bank_ref) of every item of a result.
fn classes(v: &Value) -> BTreeSet<(String, String)> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["class"].as_str().unwrap_or_default().to_string(),
                i["bank_ref"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn item<'a>(v: &'a Value, bank_ref: &str) -> &'a Value {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["bank_ref"] == bank_ref)
        .unwrap_or_else(|| panic!("no item {bank_ref} in {v}"))
}

fn sum(v: &Value, class: &str) -> (u64, Decimal, Decimal) {
    let s = &v[class];
    (
        s["count"].as_u64().expect("count"),
        dv(&s["file_amount"]),
        dv(&s["billdb_amount"]),
    )
}

const STATEMENT: &str = "bank_ref,account_id,amount,time\n\
    R01,A-01,100.00,00:00:00\n\
    R02,A-02,250.50,2026-03-07T09:30:00Z\n\
    R03,A-03,75.00,10:00\n\
    \n\
    R06,A-09,19.99,11:00\n\
    R07,A-07,60.00,12:00\n\
    X01,A-04,33.33,13:00\n\
    X02,A-05,1000.00,14:00\n\
    R20,A-08,5.00,23:59:59\n";

#[test]
fn a_statement_with_seeded_differences_finds_exactly_them() {
    let c = TestCluster::start(35000, 5);
    let leader = c.leader();
    let ops = c.http(leader);

    let accounts: Vec<Value> = (1..=9).map(|i| account(&format!("A-{i:02}"))).collect();
    let records = vec![
        payment("A-01", "ICBC", "R01", "100.00", DAY_MS), // first ms of the day
        payment("A-02", "ICBC", "R02", "250.50", DAY_MS + 9 * H),
        payment("A-03", "ICBC", "R03", "57.00", DAY_MS + 10 * H),
        payment("A-04", "ICBC", "R04", "42.42", DAY_MS + 11 * H),
        payment("A-05", "ICBC", "R05", "0.01", DAY_MS + 12 * H),
        payment("A-06", "ICBC", "R06", "19.99", DAY_MS + 13 * H),
        payment("A-07", "ICBC", "R07", "60.00", DAY_MS + 14 * H),
        payment("A-08", "ICBC", "R08", "80.00", DAY_MS + 24 * H - 1), // last ms
        // Decoys: the days around, another bank with a clashing reference.
        payment("A-08", "ICBC", "R20", "5.00", DAY_MS - 1),
        payment("A-08", "ICBC", "R21", "6.00", DAY_MS + 24 * H),
        payment("A-09", "BOC", "R03", "75.00", DAY_MS + 10 * H),
    ];
    let imp = ops
        .post(
            "/v1/import",
            &json!({"request_id": "imp-1", "accounts": accounts, "records": records}),
        )
        .expect("import");
    assert_eq!(imp["records"], 11, "{imp}");
    // A live payment (today, through the bank's own token): not on DAY.
    c.http_as(leader, "bank")
        .post(
            "/v1/payments",
            &json!({"request_id": "live-1", "account_id": "A-01", "amount": "1.00",
                "bank_code": "ICBC", "bank_ref": "LIVE1"}),
        )
        .expect("live payment");

    // The day's payments, read by an auditor, in pages.
    let auditor = c.http_as(leader, "auditor");
    let all = auditor
        .get(&format!("/v1/banks/ICBC/payments?date={DAY}"))
        .expect("payments");
    let refs: Vec<&str> = all["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| p["bank_ref"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        refs,
        ["R01", "R02", "R03", "R04", "R05", "R06", "R07", "R08"],
        "{all}"
    );
    assert_eq!(all["day_total"]["count"], 8, "{all}");
    assert_eq!(dv(&all["day_total"]["amount"]), d("609.92"), "{all}");
    assert_eq!(all["next_after"], Value::Null);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = format!("/v1/banks/ICBC/payments?date={DAY}&limit=3");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let p = auditor.get(&q).expect("page");
        paged.extend(p["payments"].as_array().cloned().unwrap_or_default());
        after = p["next_after"].as_str().map(str::to_string);
        if after.is_none() {
            break;
        }
    }
    assert_eq!(Value::Array(paged), all["payments"]);
    let boc = auditor
        .get(&format!("/v1/banks/BOC/payments?date={DAY}"))
        .expect("boc");
    assert_eq!(boc["payments"].as_array().map(Vec::len), Some(1), "{boc}");

    // Two reversals: R07 (in the file) and R08 (not in it).
    for r in ["R07", "R08"] {
        let p = all["payments"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["bank_ref"] == r))
            .expect("payment");
        let rid = p["record_id"].as_str().expect("record_id");
        ops.post(
            &format!("/v1/records/{rid}/reverse"),
            &json!({"request_id": format!("rev-{r}"), "reason": "posted in error"}),
        )
        .expect("reverse");
    }
    let after_rev = auditor
        .get(&format!("/v1/banks/ICBC/payments?date={DAY}"))
        .expect("payments");
    let reversed: Vec<&str> = after_rev["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .filter(|p| !p["reversed_by"].is_null())
        .map(|p| p["bank_ref"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reversed, ["R07", "R08"], "{after_rev}");

    // Refusals first: nothing may be stored by any of them.
    let body = |rid: &str, csv: &str| json!({"request_id": rid, "date": DAY, "csv": csv});
    let bad = "bank_ref,account_id,amount,time\nR01,A-01,100.00,08:00\nR02,A-02,12.345,09:00\n";
    let e = ops
        .post("/v1/banks/ICBC/reconciliations", &body("bad-1", bad))
        .expect_err("a bad amount");
    assert_eq!(e.code(), Some("TOO_MANY_DECIMALS"), "{e}");
    let details = match &e {
        billdb_client::admin::AdminError::Api {
            details, message, ..
        } => {
            assert!(message.starts_with("line 3: amount: "), "{message}");
            details.clone()
        }
        other => panic!("{other}"),
    };
    assert_eq!(details["line"], 3);
    for (rid, csv, code, line) in [
        ("bad-2", "R01,A-01,100.00\n", "INVALID_ARGUMENT", 1),
        (
            "bad-3",
            "R01,A-01,1.00,08:00\n\nR01,A-02,2.00,09:00\n",
            "INVALID_ARGUMENT",
            3,
        ),
        ("bad-4", "R01,A 01,1.00,08:00\n", "INVALID_ARGUMENT", 1),
        ("bad-5", "R01,A-01,1.00,noon\n", "INVALID_ARGUMENT", 1),
        ("bad-6", "R01,A-01,-1.00,08:00\n", "AMOUNT_TOO_SMALL", 1),
    ] {
        let e = ops
            .post("/v1/banks/ICBC/reconciliations", &body(rid, csv))
            .expect_err(csv);
        assert_eq!(e.code(), Some(code), "{csv:?}: {e}");
        assert!(e.to_string().contains(&format!("line {line}")), "{e}");
    }
    let big: String = (0..=20_000)
        .map(|i| format!("Z{i},A-01,1.00,08:00\n"))
        .collect();
    let e = ops
        .post("/v1/banks/ICBC/reconciliations", &body("bad-7", &big))
        .expect_err("too many lines");
    assert_eq!(e.code(), Some("PAYLOAD_TOO_LARGE"), "{e}");
    assert!(e.to_string().contains("20000"), "{e}");
    let e = ops
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "bad-8", "date": "2026-02-30", "csv": STATEMENT}),
        )
        .expect_err("no such day");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    let e = ops
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "bad-9", "date": DAY, "csv": STATEMENT, "force": true}),
        )
        .expect_err("unknown field");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    for (who, bank, rid) in [
        ("counter", "ICBC", "bad-10"),
        ("auditor", "ICBC", "bad-11"),
        ("bank", "BOC", "bad-12"),
    ] {
        let e = c
            .http_as(leader, who)
            .post(
                &format!("/v1/banks/{bank}/reconciliations"),
                &body(rid, STATEMENT),
            )
            .expect_err(who);
        assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{who}: {e}");
    }
    let e = c
        .http_as(leader, "bank")
        .get(&format!("/v1/banks/BOC/payments?date={DAY}"))
        .expect_err("another bank's payments");
    assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{e}");
    for i in 1..=12 {
        assert_eq!(
            outcome(&c, leader, &format!("bad-{i}")),
            None,
            "bad-{i} stored"
        );
    }
    let none = auditor.get("/v1/banks/ICBC/reconciliations").expect("list");
    assert_eq!(none["reconciliations"], json!([]), "{none}");

    // The reconciliation, through a follower.
    let follower =
        c.c.node_ids()
            .into_iter()
            .find(|n| *n != leader)
            .expect("follower");
    let v = c
        .http(follower)
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "rec-1", "date": DAY, "csv": STATEMENT,
                "file_name": "icbc-20260307.csv"}),
        )
        .expect("reconcile");
    let want: BTreeSet<(String, String)> = [
        ("missing_in_billdb", "X01"),
        ("missing_in_billdb", "X02"),
        ("posted_other_day", "R20"),
        ("missing_in_bank", "R04"),
        ("missing_in_bank", "R05"),
        ("amount_mismatch", "R03"),
        ("account_mismatch", "R06"),
        ("reversed_in_billdb", "R07"),
        ("reversed_not_in_file", "R08"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(classes(&v), want, "{v:#}");
    assert_eq!(v["balanced"], false);
    assert_eq!(v["differences"], 8, "{v:#}");
    assert_eq!(sum(&v, "matched"), (2, d("350.50"), d("350.50")));
    assert_eq!(sum(&v, "missing_in_billdb"), (2, d("1033.33"), d("0")));
    assert_eq!(sum(&v, "posted_other_day"), (1, d("5.00"), d("0")));
    assert_eq!(sum(&v, "missing_in_bank"), (2, d("0"), d("42.43")));
    assert_eq!(sum(&v, "amount_mismatch"), (1, d("75.00"), d("57.00")));
    assert_eq!(sum(&v, "account_mismatch"), (1, d("19.99"), d("19.99")));
    assert_eq!(sum(&v, "reversed_in_billdb"), (1, d("60.00"), d("60.00")));
    assert_eq!(sum(&v, "reversed_not_in_file"), (1, d("0"), d("80.00")));
    // Totals both ways, to the cent: the file's 8 lines; billdb's 6
    // payments of the day that stand (R07, R08 reversed).
    assert_eq!(v["totals"]["file"]["count"], 8, "{v:#}");
    assert_eq!(v["totals"]["file"]["amount"], "1543.82");
    assert_eq!(v["totals"]["billdb"]["count"], 6);
    assert_eq!(v["totals"]["billdb"]["amount"], "469.92");
    assert_eq!(v["totals"]["difference"], "1073.90");
    let x01 = item(&v, "X01");
    assert_eq!(x01["line"], 8);
    assert_eq!(
        x01["post_command"],
        "billdb pay A-04 33.33 --bank-code ICBC --bank-ref X01 --request-id pay-ICBC-X01"
    );
    let r03 = item(&v, "R03");
    assert_eq!(
        (r03["file_amount"].as_str(), r03["billdb_amount"].as_str()),
        (Some("75.00"), Some("57.00"))
    );
    assert_eq!(item(&v, "R06")["billdb_account_id"], "A-06");
    let r20 = item(&v, "R20");
    assert_eq!(r20["billdb_date"], "2026-03-06", "{r20}");
    assert_eq!(r20["request_id"], "imp-1", "{r20}");
    assert_eq!(r20["record_id"], "A-08:2", "{r20}");
    assert!(item(&v, "R07")["reversal_record_id"].is_string());
    assert_eq!(v["recorded_by"], "ops-1");
    assert_eq!(v["role"], "ops");
    assert_eq!(v["file_name"], "icbc-20260307.csv");
    assert_eq!(v["file_sha256"].as_str().map(str::len), Some(64));

    // Stored and replicated: an auditor reads it on every node.
    for n in c.c.node_ids() {
        let got = c
            .http_as(n, "auditor")
            .get("/v1/banks/ICBC/reconciliations/rec-1")
            .expect("stored reconciliation");
        assert_eq!(classes(&got), want, "node {n}");
        assert_eq!(got["totals"], v["totals"], "node {n}");
        assert_eq!(got["recorded_ms"], v["recorded_ms"], "node {n}");
        assert_eq!(got["recorded_by"], "ops-1");
    }
    let listed = c
        .http_as(follower, "auditor")
        .get(&format!("/v1/banks/ICBC/reconciliations?date={DAY}"))
        .expect("list");
    assert_eq!(
        listed["reconciliations"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["reconciliations"][0]["reconciliation_id"], "rec-1");
    assert_eq!(listed["reconciliations"][0]["differences"], 8);
    let e = auditor
        .get("/v1/banks/BOC/reconciliations/rec-1")
        .expect_err("another bank's id");
    assert_eq!(e.code(), Some("NOT_FOUND"), "{e}");

    // A retry answers the stored result; the same id with another file is a conflict.
    let again = ops
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "rec-1", "date": DAY, "csv": STATEMENT,
                "file_name": "icbc-20260307.csv"}),
        )
        .expect("retry");
    assert_eq!(again["replayed"], true);
    assert_eq!(again["recorded_ms"], v["recorded_ms"]);
    let e = ops
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "rec-1", "date": DAY, "csv": "R01,A-01,100.00,08:00\n"}),
        )
        .expect_err("another file under the same id");
    assert_eq!(e.code(), Some("IDEMPOTENCY_CONFLICT"), "{e}");
    // A payment of the day arrives late (a legacy import); a retry of
    // rec-1 still answers what was stored, not a new match.
    ops.post(
        "/v1/import",
        &json!({"request_id": "imp-2", "accounts": [],
            "records": [payment("A-09", "ICBC", "R09", "9.00", DAY_MS + 15 * H)]}),
    )
    .expect("late import");
    let again = c
        .http_as(follower, "ops")
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "rec-1", "date": DAY, "csv": STATEMENT,
                "file_name": "icbc-20260307.csv"}),
        )
        .expect("retry after the day changed");
    assert_eq!(again["replayed"], true);
    assert_eq!(classes(&again), want);
    assert_eq!(again["totals"], v["totals"]);

    // The bank itself reconciles a clean file of its day: balanced.
    let clean = "R01,A-01,100.00,00:00\nR02,A-02,250.50,09:30\nR03,A-03,57.00,10:00\n\
                 R04,A-04,42.42,11:00\nR05,A-05,0.01,12:00\nR06,A-06,19.99,13:00\n\
                 R09,A-09,9.00,15:00\n";
    let ok = c
        .http_as(leader, "bank")
        .post(
            "/v1/banks/ICBC/reconciliations",
            &json!({"request_id": "rec-2", "date": DAY, "csv": clean}),
        )
        .expect("clean reconciliation");
    assert_eq!(ok["balanced"], true, "{ok:#}");
    assert_eq!(ok["differences"], 0);
    assert_eq!(ok["totals"]["difference"], "0.00");
    assert_eq!(ok["recorded_by"], "bank:ICBC");
    assert_eq!(
        classes(&ok),
        [
            ("reversed_not_in_file".to_string(), "R07".to_string()),
            ("reversed_not_in_file".to_string(), "R08".to_string())
        ]
        .into_iter()
        .collect()
    );
    let listed = auditor
        .get(&format!("/v1/banks/ICBC/reconciliations?date={DAY}"))
        .expect("list");
    let ids: Vec<&str> = listed["reconciliations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["reconciliation_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["rec-1", "rec-2"], "{listed}");

    // Every replica holds the same state (index and stored results included).
    c.wait_converged(&c.c.node_ids(), Duration::from_secs(30));
}

/// A large bank's day: 20,000 payments of one bank on one day (1,000
/// accounts × 20, imported) against a 20,000-line statement (the most one
/// statement may hold) with three seeded differences of each kind; the
/// time of the reconciliation call is printed.
#[test]
fn a_day_of_twenty_thousand_payments_is_reconciled_exactly() {
    const N: usize = 20_000;
    let c = TestCluster::start(35500, 5);
    let leader = c.leader();
    let ops = c.http(leader);
    let amount = |i: usize| format!("{}.{:02}", 1 + i % 997, i % 100);
    let accounts: Vec<Value> = (0..1000).map(|a| account(&format!("BG-{a:04}"))).collect();
    ops.post(
        "/v1/import",
        &json!({"request_id": "big-accounts", "accounts": accounts, "records": []}),
    )
    .expect("import accounts");
    let started = std::time::Instant::now();
    for chunk in 0..(N / 1000) {
        let records: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                payment(
                    &format!("BG-{:04}", i % 1000),
                    "BIG",
                    &format!("BIG-{i:05}"),
                    &amount(i),
                    DAY_MS + (i as i64) * 4_000,
                )
            })
            .collect();
        ops.post(
            "/v1/import",
            &json!({"request_id": format!("big-imp-{chunk}"), "accounts": [],
                "records": records}),
        )
        .expect("import");
    }
    eprintln!("imported {N} payments in {:?}", started.elapsed());
    // The file: every payment except 3 (missing in the file), 3 with
    // another amount, plus 3 the bank has and billdb does not.
    let mut csv = String::from("bank_ref,account_id,amount,time\n");
    let mut file_total = Decimal::ZERO;
    let mut billdb_total = Decimal::ZERO;
    let mut lines = 0;
    for i in 0..N {
        billdb_total += d(&amount(i));
        if [17, 9_999, 19_998].contains(&i) {
            continue;
        }
        let a = if [5, 12_345, 19_999].contains(&i) {
            format!("{}.00", 2000 + i % 7)
        } else {
            amount(i)
        };
        file_total += d(&a);
        lines += 1;
        csv.push_str(&format!("BIG-{i:05},BG-{:04},{a},10:00:00\n", i % 1000));
    }
    for j in 0..3 {
        file_total += d("10.00");
        lines += 1;
        csv.push_str(&format!("NEW-{j},BG-0001,10.00,11:00:00\n"));
    }
    assert_eq!(lines, N, "the statement is at its line limit");
    let started = std::time::Instant::now();
    let v = ops
        .post(
            "/v1/banks/BIG/reconciliations",
            &json!({"request_id": "big-rec", "date": DAY, "csv": csv}),
        )
        .expect("reconcile");
    let took = started.elapsed();
    eprintln!(
        "reconciled {N} statement lines against {N} payments in {took:?} (body {} bytes)",
        csv.len()
    );
    let want: BTreeSet<(String, String)> = [
        ("missing_in_bank", "BIG-00017"),
        ("missing_in_bank", "BIG-09999"),
        ("missing_in_bank", "BIG-19998"),
        ("amount_mismatch", "BIG-00005"),
        ("amount_mismatch", "BIG-12345"),
        ("amount_mismatch", "BIG-19999"),
        ("missing_in_billdb", "NEW-0"),
        ("missing_in_billdb", "NEW-1"),
        ("missing_in_billdb", "NEW-2"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(classes(&v), want);
    assert_eq!(v["matched"]["count"], N - 6);
    assert_eq!(v["totals"]["file"]["count"], N);
    assert_eq!(v["totals"]["billdb"]["count"], N);
    assert_eq!(dv(&v["totals"]["file"]["amount"]), file_total);
    assert_eq!(dv(&v["totals"]["billdb"]["amount"]), billdb_total);
    assert_eq!(
        dv(&v["totals"]["difference"]),
        file_total - billdb_total,
        "{}",
        v["totals"]
    );
}

/// Removes every bank-day index entry (`P` keys of the `reports` family)
/// from a stopped node's database: what a build before the index left.
fn remove_bank_index(data_dir: &std::path::Path) -> usize {
    let db_dir = data_dir.join("db");
    let opts = rocksdb::Options::default();
    let names = rocksdb::DB::list_cf(&opts, &db_dir).expect("list column families");
    let db = rocksdb::DB::open_cf(&opts, &db_dir, &names).expect("open the stopped node's db");
    let cf = db.cf_handle("reports").expect("the reports family");
    let keys: Vec<Box<[u8]>> = db
        .prefix_iterator_cf(cf, b"P")
        .map(|kv| kv.expect("read").0)
        .take_while(|k| k.first() == Some(&b'P'))
        .collect();
    for k in &keys {
        db.delete_cf(cf, k).expect("delete");
    }
    db.flush_cf(cf).expect("flush");
    keys.len()
}

#[test]
fn payments_posted_before_the_index_are_backfilled_and_their_day_reconciles() {
    let c = TestCluster::start(26500, 5);
    let ops = c.http(c.leader());
    let accounts: Vec<Value> = (1..=4).map(|a| account(&format!("OB-{a}"))).collect();
    let mut records: Vec<Value> = (1..=5)
        .map(|i| {
            payment(
                &format!("OB-{}", 1 + i % 4),
                "OLDB",
                &format!("OB{i:02}"),
                &format!("{i}0.50"),
                DAY_MS + i as i64 * H,
            )
        })
        .collect();
    records.push(payment("OB-1", "OLDB", "OB00", "7.00", DAY_MS - H)); // the day before
    ops.post(
        "/v1/import",
        &json!({"request_id": "old-imp", "accounts": accounts, "records": records}),
    )
    .expect("import");
    let day_payments = |n: u64| {
        c.http_as(n, "auditor")
            .get(&format!("/v1/banks/OLDB/payments?date={DAY}"))
            .expect("payments")
    };
    let indexed = day_payments(c.leader());
    let rid = indexed["payments"][2]["record_id"]
        .as_str()
        .expect("record_id")
        .to_string();
    ops.post(
        &format!("/v1/records/{rid}/reverse"),
        &json!({"request_id": "old-rev", "reason": "posted in error"}),
    )
    .expect("reverse");
    let indexed = day_payments(c.leader());
    assert_eq!(
        indexed["payments"].as_array().map(Vec::len),
        Some(5),
        "{indexed}"
    );
    assert!(
        !indexed["payments"][2]["reversed_by"].is_null(),
        "{indexed}"
    );
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(30));

    // As a build without the index left it, on every replica.
    for n in &all {
        c.c.stop(*n).expect("stop");
    }
    for n in &all {
        assert_eq!(remove_bank_index(&c.c.data_dir(*n)), 6, "node {n}");
    }
    for n in &all {
        c.c.start(*n).expect("start");
    }
    let leader = c.leader();
    let ops = c.http(leader);
    let before = day_payments(leader);
    assert_eq!(before["payments"], json!([]), "{before}");
    assert_eq!(before["day_total"]["count"], 5, "{before}");
    let mut csv = String::from("bank_ref,account_id,amount,time\n");
    for i in 1..=5 {
        csv.push_str(&format!("OB{i:02},OB-{},{i}0.50,0{i}:00:00\n", 1 + i % 4));
    }
    let body = |rid: &str| json!({"request_id": rid, "date": DAY, "csv": csv});
    let e = ops
        .post("/v1/banks/OLDB/reconciliations", &body("old-recon-1"))
        .expect_err("a day the index does not cover");
    assert_eq!(e.code(), Some("INVALID_STATE"), "{e}");

    // Refused, nothing done: another role, a cursor that is not one.
    let e = c
        .http_as(leader, "auditor")
        .post("/v1/bank-index/backfill", &json!({"request_id": "bf-x"}))
        .expect_err("auditor");
    assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{e}");
    let e = ops
        .post(
            "/v1/bank-index/backfill",
            &json!({"request_id": "bf-x", "after": "not-hex"}),
        )
        .expect_err("bad cursor");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");

    // The backfill, through a follower, call after call until done.
    let follower = *all.iter().find(|n| **n != leader).expect("a follower");
    let backfill = |rid: &str| {
        let (mut indexed, mut calls, mut after) = (0u64, 0, None::<String>);
        loop {
            let mut b = json!({"request_id": rid});
            if let Some(a) = &after {
                b["after"] = json!(a);
            }
            let v = c
                .http(follower)
                .post("/v1/bank-index/backfill", &b)
                .expect("backfill");
            indexed += v["indexed"].as_u64().expect("indexed");
            calls += 1;
            assert!(calls < 100, "{v}");
            if v["done"] == true {
                assert!(v["next_after"].is_null(), "{v}");
                return indexed;
            }
            after = v["next_after"].as_str().map(str::to_string);
            assert!(after.is_some(), "{v}");
        }
    };
    assert_eq!(backfill("bf-1"), 6);
    c.wait_converged(&all, Duration::from_secs(30));
    for n in &all {
        assert_eq!(
            day_payments(*n),
            indexed,
            "node {n}: the index as it was written"
        );
    }
    let v = ops
        .post("/v1/banks/OLDB/reconciliations", &body("old-recon-2"))
        .expect("the day reconciles");
    assert_eq!(v["totals"]["file"]["count"], 5, "{v}");
    // Run again: nothing is indexed twice.
    assert_eq!(backfill("bf-2"), 0);
    c.wait_converged(&all, Duration::from_secs(30));
}
