//! docs/INTEGRATION.md's Python examples (docs/examples/, plain `requests`)
//! run as written against a real five-node cluster: a counter session
//! (verify the card, recent records, sale, invoice print) and a bank
//! posting resent after a "lost" answer, which must post once.
//!
//! The Python environment comes from `deploy/setup.sh`; a missing one
//! fails the test.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn example(c: &TestCluster, node: NodeId, identity: &str, script: &str, args: &[&str]) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let out = Command::new(py_tool("python"))
        .current_dir(&dir)
        .arg(script)
        .args(args)
        .env("BILLDB_ENDPOINT", c.c.http_url(node).expect("url"))
        .env("BILLDB_CA", c.c.ca_bundle_path())
        .env("BILLDB_TOKEN", c.c.token(identity).expect("token"))
        .output()
        .expect("run the example");
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("the example prints JSON")
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("decimal: {v}"))
}

#[test]
fn the_python_examples_run_as_written() {
    let c = TestCluster::start(37200, 5);
    let ops = c.http(1);
    ops.put_json(
        "/v1/tariffs/TX",
        &json!({"request_id": "tariff-TX", "kind": "flat", "price": "0.50"}),
    )
    .expect("tariff");
    for (account, card) in [("X1", "CARD-X1"), ("X2", "CARD-X2")] {
        ops.post(
            "/v1/accounts",
            &json!({"request_id": format!("open-{account}"), "account_id": account,
                    "name": "Example", "branch": "B01", "utility": "electricity",
                    "tariff_id": "TX"}),
        )
        .expect("open");
        ops.post(
            "/v1/cards",
            &json!({"request_id": format!("card-{account}"), "account_id": account,
                    "card_no": card}),
        )
        .expect("card");
    }

    // The counter session, through a follower (the client follows the
    // leader hint).
    let follower =
        c.c.node_ids()
            .into_iter()
            .find(|n| *n != c.leader())
            .expect("a follower");
    let s = example(
        &c,
        follower,
        "counter",
        "counter_session.py",
        &["CARD-X1", "1", "0", "100.00"],
    );
    assert_eq!(s["verify"]["account"]["account_id"], "X1", "{s}");
    assert_eq!(s["sale"]["record"]["kind"], "purchase", "{s}");
    assert_eq!(
        dec(&s["sale"]["record"]["amount"]),
        Decimal::new(10000, 2),
        "{s}"
    );
    let invoice = s["sale"]["record"]["invoice_no"]
        .as_str()
        .expect("invoice_no");
    assert!(invoice.starts_with("INV"), "{s}");
    assert_eq!(s["invoice"]["invoice"]["invoice_no"], invoice, "{s}");
    assert_eq!(s["invoice"]["print_count"], 1, "{s}");
    assert_eq!(s["verify"]["verdict"], "OK", "{s}");
    let records = ops
        .get("/v1/accounts/X1/records?segment=all")
        .expect("records");
    let sales: Vec<&Value> = records["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "purchase")
        .collect();
    assert_eq!(sales.len(), 1, "one sale: {records}");

    // The bank posting, resent: one payment.
    let b = example(
        &c,
        follower,
        "bank",
        "bank_posting.py",
        &["X2", "50.00", "ICBC", "STMT-0001"],
    );
    assert_eq!(
        b["first"], b["retry"],
        "a resent request answers the first outcome: {b}"
    );
    let records = ops
        .get("/v1/accounts/X2/records?segment=all")
        .expect("records");
    let payments: Vec<&Value> = records["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "payment")
        .collect();
    assert_eq!(payments.len(), 1, "one payment: {records}");
    assert_eq!(payments[0]["bank_ref"], "STMT-0001");
    assert_eq!(dec(&payments[0]["amount"]), Decimal::new(5000, 2));
    let account = ops.get("/v1/accounts/X2").expect("account");
    assert_eq!(dec(&account["balance"]), Decimal::new(5000, 2), "{account}");
}
