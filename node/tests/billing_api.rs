//! The billing API against real five-node clusters: every operation over
//! HTTP (happy path and its refusal codes), bad input over HTTP and gRPC
//! (refused, state digest unchanged), exactly-once purchases across a
//! leader SIGKILL, and monthly reports equal to the records they sum.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use billdb_client::admin::AdminClient;
use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// GET `path` and return (status, the response's header lines, lowercased).
fn raw_headers(addr: &str, path: &str, token: &str) -> (u16, Vec<String>) {
    use std::io::Read;
    let mut s = send_raw(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let head = out.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = status_code(lines.next().unwrap_or_default());
    (status, lines.map(|l| l.to_ascii_lowercase()).collect())
}

fn code<T: std::fmt::Debug>(r: Result<T, billdb_client::admin::AdminError>) -> String {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code().unwrap_or("NO_CODE").to_string(),
    }
}

struct Api<'a> {
    c: &'a TestCluster,
    addr: String,
}

impl Api<'_> {
    fn token(&self, who: &str) -> String {
        self.c.c.token(who).expect("token")
    }
    fn put(&self, who: &str, path: &str, body: Value) -> (u16, Value) {
        raw_request(&self.addr, "PUT", path, &body.to_string(), &self.token(who))
    }
    fn patch(&self, who: &str, path: &str, body: Value) -> (u16, Value) {
        raw_request(
            &self.addr,
            "PATCH",
            path,
            &body.to_string(),
            &self.token(who),
        )
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .expect("decimal string")
        .parse()
        .expect("decimal")
}

fn setup_tariff(api: &Api<'_>, id: &str, price: &str) {
    let (st, v) = api.put(
        "ops",
        &format!("/v1/tariffs/{id}"),
        json!({"request_id": format!("tariff-{id}"), "kind": "flat", "price": price,
               "effective_from": "2000-01-01T00:00:00Z"}),
    );
    assert_eq!(st, 200, "{v}");
}

fn open(h: &AdminClient, account: &str, tariff: &str) -> Value {
    h.post(
        "/v1/accounts",
        &json!({"request_id": format!("open-{account}"), "account_id": account, "name": "Test",
                "branch": "B01", "utility": "electricity", "tariff_id": tariff}),
    )
    .expect("open account")
}

fn issue(h: &AdminClient, account: &str, card: &str) {
    h.post(
        "/v1/cards",
        &json!({"request_id": format!("card-{card}"), "account_id": account, "card_no": card}),
    )
    .expect("issue card");
}

#[test]
fn every_operation_happy_path_and_refusals() {
    let c = TestCluster::start(27000, 5);
    let api = Api {
        c: &c,
        addr: c.c.http_addr(2).unwrap(),
    };
    let counter = c.http_as(2, "counter");
    let ops = c.http_as(3, "ops");
    let bank = c.http_as(4, "bank");
    let auditor = c.http_as(5, "auditor");

    setup_tariff(&api, "T1", "0.50");
    // Every HTTP answer, refusals too, names the leader and its HTTP
    // address, so clients can skip the forwarding hop.
    let leader = c.leader();
    let want = format!("billdb-leader: {leader} {}", c.c.http_addr(leader).unwrap());
    let token = c.c.token("ops").unwrap();
    for n in 1..=5 {
        let addr = c.c.http_addr(n).unwrap();
        for (path, status) in [("/v1/accounts/NOPE", 404), ("/v1/tariffs/T1", 405)] {
            let (got, headers) = raw_headers(&addr, path, &token);
            assert_eq!(got, status, "{path} on node {n}");
            assert!(
                headers.contains(&want),
                "node {n} {path}: {headers:?} lacks {want:?}"
            );
        }
    }
    let v = open(&counter, "A1", "T1");
    assert_eq!(v["result"], "account_opened");
    // Replayed open: the original outcome at its original log index; open
    // again under a new id: exists.
    assert!(v["log_index"].as_u64().is_some_and(|i| i > 0), "{v}");
    assert_eq!(open(&counter, "A1", "T1"), v);
    assert_eq!(
        code(counter.post(
            "/v1/accounts",
            &json!({"request_id": "open-A1-again", "account_id": "A1", "name": "X", "branch": "B01", "utility": "electricity"})
        )),
        "ACCOUNT_EXISTS"
    );
    // A counter opens only in its own branch.
    assert_eq!(
        code(counter.post(
            "/v1/accounts",
            &json!({"request_id": "open-A9", "account_id": "A9", "name": "X", "branch": "B77", "utility": "electricity"})
        )),
        "PERMISSION_DENIED"
    );

    // Contact data.
    let (st, v) = api.patch(
        "counter",
        "/v1/accounts/A1",
        json!({"request_id": "contact-1", "phone": "555-0101", "address": "1 Main St"}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["account"]["phone"], "555-0101");

    // Cards.
    issue(&counter, "A1", "CARD-1");
    assert_eq!(
        code(counter.post(
            "/v1/cards",
            &json!({"request_id": "card-again", "account_id": "A1", "card_no": "CARD-2"})
        )),
        "CARD_ALREADY_ISSUED"
    );

    // Purchases: by card, the operator and branch come from the token.
    let p1 = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-1", "card_no": "CARD-1", "amount": "10.00"}),
        )
        .expect("purchase");
    assert_eq!(p1["result"], "record_posted");
    assert_eq!(p1["record"]["operator_id"], "C-0101");
    assert_eq!(p1["record"]["branch"], "B01");
    assert_eq!(p1["record"]["channel"], "counter");
    assert!(p1["record"]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(dec(&p1["record"]["units"]), Decimal::from(20));
    let rid1 = p1["record_id"].as_str().unwrap().to_string();
    // Same card, same amount within 30 s: held unless confirmed.
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-2", "card_no": "CARD-1", "amount": "10.00"})
        )),
        "POSSIBLE_DUPLICATE"
    );
    let p2 = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-2b", "card_no": "CARD-1", "amount": "10.00", "confirm_duplicate": true}),
        )
        .expect("confirmed duplicate");
    assert_eq!(p2["result"], "record_posted");
    // The previous sale was not loaded: a warning, not a refusal.
    assert_eq!(p2["warnings"], json!(["CREDIT_NOT_LOADED"]));
    let rid2 = p2["record_id"].as_str().unwrap().to_string();
    // Replay: the original outcome, not a new sale.
    let replay = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-2b", "card_no": "CARD-1", "amount": "10.00", "confirm_duplicate": true}),
        )
        .expect("replay");
    assert_eq!(replay["record_id"], p2["record_id"]);
    // Same request_id, other payload.
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-2b", "card_no": "CARD-1", "amount": "11.00"})
        )),
        "IDEMPOTENCY_CONFLICT"
    );
    // By account and by units.
    let p3 = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-3", "account_id": "A1", "units": "4.5"}),
        )
        .expect("by units");
    assert_eq!(
        dec(&p3["record"]["amount"]),
        "2.25".parse::<Decimal>().unwrap()
    );
    let rid3 = p3["record_id"].as_str().unwrap().to_string();
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-x", "card_no": "NOPE", "amount": "1.00"})
        )),
        "CARD_UNKNOWN"
    );
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-y", "account_id": "NOPE", "amount": "1.00"})
        )),
        "ACCOUNT_NOT_FOUND"
    );

    // Reissue: only the latest unloaded purchase, once.
    assert_eq!(
        code(counter.post(
            &format!("/v1/purchases/{rid1}/reissue"),
            &json!({"request_id": "reissue-old"})
        )),
        "NOTHING_TO_REISSUE"
    );
    let r = counter
        .post(
            &format!("/v1/purchases/{rid3}/reissue"),
            &json!({"request_id": "reissue-3"}),
        )
        .expect("reissue");
    assert_eq!(r["record"]["kind"], "reissue");
    assert_eq!(
        code(counter.post(
            &format!("/v1/purchases/{rid3}/reissue"),
            &json!({"request_id": "reissue-3-again"})
        )),
        "NOTHING_TO_REISSUE"
    );
    let l = counter
        .post(
            &format!("/v1/purchases/{rid3}/loaded"),
            &json!({"request_id": "loaded-3"}),
        )
        .expect("loaded");
    assert_eq!(l["result"], "credit_loaded");

    // Verify a card.
    let chk = counter
        .post(
            "/v1/cards/verify",
            &json!({"card_no": "CARD-1", "generation": 1, "seq_on_card": 3}),
        )
        .expect("verify");
    assert_eq!(chk["verdict"], "OK", "{chk}");

    // Replace the card: the old one is refused from then on.
    let rep = counter
        .post(
            "/v1/cards/CARD-1/replace",
            &json!({"request_id": "replace-1", "new_card_no": "CARD-1B", "reason": "lost"}),
        )
        .expect("replace");
    assert_eq!(rep["result"], "card_replaced");
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-old-card", "card_no": "CARD-1", "amount": "3.00"})
        )),
        "CARD_REPLACED"
    );
    let chk = counter
        .post(
            "/v1/cards/verify",
            &json!({"card_no": "CARD-1", "generation": 1, "seq_on_card": 3}),
        )
        .expect("verify old");
    assert_eq!(chk["verdict"], "CARD_REPLACED");
    assert_eq!(chk["current_card"], "CARD-1B");

    // Payments: own bank only, unique per bank_ref.
    let pay = bank
        .post(
            "/v1/payments",
            &json!({"request_id": "pay-1", "account_id": "A1", "amount": "50.00", "bank_code": "ICBC", "bank_ref": "R1"}),
        )
        .expect("pay");
    assert_eq!(pay["result"], "payment_posted");
    let pay_rid = pay["record_id"].as_str().unwrap().to_string();
    assert_eq!(
        code(bank.post(
            "/v1/payments",
            &json!({"request_id": "pay-2", "account_id": "A1", "amount": "50.00", "bank_code": "ICBC", "bank_ref": "R1"})
        )),
        "DUPLICATE_PAYMENT"
    );
    assert_eq!(
        code(bank.post(
            "/v1/payments",
            &json!({"request_id": "pay-3", "account_id": "A1", "amount": "5.00", "bank_code": "ABC", "bank_ref": "R9"})
        )),
        "PERMISSION_DENIED"
    );

    // Reversal (ops), once.
    assert_eq!(
        code(counter.post(
            &format!("/v1/records/{pay_rid}/reverse"),
            &json!({"request_id": "rev-c", "reason": "x"})
        )),
        "PERMISSION_DENIED"
    );
    let rv = ops
        .post(
            &format!("/v1/records/{pay_rid}/reverse"),
            &json!({"request_id": "rev-1", "reason": "bank recall"}),
        )
        .expect("reverse");
    assert_eq!(rv["record"]["kind"], "reversal");
    assert_eq!(
        code(ops.post(
            &format!("/v1/records/{pay_rid}/reverse"),
            &json!({"request_id": "rev-2", "reason": "again"})
        )),
        "ALREADY_REVERSED"
    );
    assert_eq!(
        code(ops.post(
            "/v1/records/A1:999/reverse",
            &json!({"request_id": "rev-3", "reason": "none"})
        )),
        "RECORD_NOT_FOUND"
    );

    // Adjustment and charge (ops).
    let adj = ops
        .post(
            "/v1/adjustments",
            &json!({"request_id": "adj-1", "account_id": "A1", "amount": "-1.25", "reason": "rounding"}),
        )
        .expect("adjust");
    assert_eq!(adj["record"]["kind"], "adjustment");
    let ch = ops
        .post(
            "/v1/charges",
            &json!({"request_id": "charge-1", "account_id": "A1", "amount": "7.00", "period": "2026-01"}),
        )
        .expect("charge");
    assert_eq!(ch["record"]["kind"], "charge");

    // Invoices: print, reprint.
    let inv = p1["record"]["invoice_no"].as_str().unwrap().to_string();
    let pr = counter
        .post(
            &format!("/v1/invoices/{inv}/print"),
            &json!({"request_id": "print-1"}),
        )
        .expect("print");
    assert_eq!(pr["reprint"], false);
    let pr = counter
        .post(
            &format!("/v1/invoices/{inv}/print"),
            &json!({"request_id": "print-2"}),
        )
        .expect("reprint");
    assert_eq!(pr["reprint"], true);
    assert_eq!(
        code(counter.post(
            "/v1/invoices/INV-NOPE/print",
            &json!({"request_id": "print-3"})
        )),
        "INVOICE_NOT_FOUND"
    );

    // Reads: account, records (paged), request outcome; auditor reads all.
    let acct = auditor.get("/v1/accounts/A1").expect("account");
    assert_eq!(acct["status"], "active");
    let page = auditor
        .get("/v1/accounts/A1/records?limit=2&order=asc")
        .expect("records");
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    let tok = page["next_page_token"].as_str().expect("more").to_string();
    let page2 = auditor
        .get(&format!(
            "/v1/accounts/A1/records?limit=500&page_token={tok}"
        ))
        .expect("page 2");
    let total = 2 + page2["records"].as_array().unwrap().len();
    assert_eq!(total as u64, acct["last_seq"].as_u64().unwrap());
    assert_eq!(page["records"][0]["record_id"], rid1);
    assert_eq!(page["records"][1]["record_id"], rid2);
    let out = auditor.get("/v1/requests/buy-1").expect("request");
    assert_eq!(out["outcome"]["record_id"], rid1);
    assert_eq!(code(auditor.get("/v1/requests/never")), "NOT_FOUND");
    assert_eq!(
        code(auditor.post(
            "/v1/purchases",
            &json!({"request_id": "aud", "account_id": "A1", "amount": "1.00"})
        )),
        "PERMISSION_DENIED"
    );

    // Boundary, season (ops only).
    let (st, v) = api.put(
        "ops",
        "/v1/segments/boundary",
        json!({"request_id": "boundary-1", "boundary": "2001-01-01T00:00:00Z"}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = api.put(
        "counter",
        "/v1/segments/boundary",
        json!({"request_id": "boundary-2", "boundary": "2001-01-01T00:00:00Z"}),
    );
    assert_eq!((st, v["code"].as_str()), (403, Some("PERMISSION_DENIED")));
    let s = ops
        .post(
            "/v1/seasons",
            &json!({"request_id": "season-1", "season_id": "2026-27"}),
        )
        .expect("season");
    assert_eq!(s["result"], "season_opened");
    assert_eq!(
        code(ops.post(
            "/v1/seasons",
            &json!({"request_id": "season-2", "season_id": "2026-27"})
        )),
        "SEASON_EXISTS"
    );

    // Reports.
    let month = page["records"][0]["ts"].as_str().unwrap()[..7].to_string();
    let rep = auditor
        .get(&format!(
            "/v1/reports/monthly?month={month}&group_by=operator"
        ))
        .expect("monthly");
    assert!(!rep["lines"].as_array().unwrap().is_empty());
    let stale = auditor
        .get(&format!(
            "/v1/reports/monthly?month={month}&group_by=kind&consistency=stale"
        ))
        .expect("stale report");
    assert_eq!(stale["read"]["consistency"], "stale");
    assert!(stale["read"]["applied_index"].is_u64());

    // The same operations over gRPC, same answers.
    let grpc_node: u64 = 4;
    let ct = c.c.token("counter").unwrap();
    let at = c.c.token("auditor").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use billdb_api::pb;
        let mut b = pb::billing_client::BillingClient::new(c.grpc_channel(grpc_node).await);
        let r = b
            .purchase(authed(
                pb::PurchaseRequest {
                    request_id: "grpc-buy-1".into(),
                    account_id: Some("A1".into()),
                    amount: Some("6.00".into()),
                    ..Default::default()
                },
                &ct,
            ))
            .await
            .expect("gRPC purchase");
        let v: Value = serde_json::from_str(&r.get_ref().json).unwrap();
        assert_eq!(v["result"], "record_posted");
        assert_eq!(v["record"]["operator_id"], "C-0101");
        let e = b
            .purchase(authed(
                pb::PurchaseRequest {
                    request_id: "grpc-buy-2".into(),
                    card_no: Some("CARD-1".into()),
                    amount: Some("6.00".into()),
                    ..Default::default()
                },
                &ct,
            ))
            .await
            .expect_err("old card");
        assert_eq!(
            billdb_api::error::ApiError::from_status(&e).code.as_str(),
            "CARD_REPLACED"
        );
        let chk = b
            .verify_card(authed(
                pb::VerifyCardRequest {
                    card_no: "CARD-1B".into(),
                    generation: 2,
                    seq_on_card: 0,
                },
                &ct,
            ))
            .await
            .expect("verify");
        assert!(chk.get_ref().json.contains("verdict"));
        let e = b
            .reverse(authed(
                pb::RecordRequest {
                    request_id: "grpc-rev".into(),
                    record_id: rid1.clone(),
                    reason: "x".into(),
                },
                &ct,
            ))
            .await
            .expect_err("counter may not reverse");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let rep = b
            .monthly_report(authed(
                pb::MonthlyReportRequest {
                    month: month.clone(),
                    group_by: Some("kind".into()),
                    consistency: None,
                    drills: None,
                },
                &at,
            ))
            .await
            .expect("report");
        assert!(rep.get_ref().json.contains("\"purchase\""));
    });

    // Bulk import (ops): a legacy account with one record.
    let imp = ops
        .post(
            "/v1/import",
            &json!({"request_id": "import-1",
                "accounts": [{"account_id": "LEG-1", "name": "Legacy", "address": "", "branch": "B01",
                    "utility": "electricity", "meter_id": "", "tariff_id": "T1", "area": "0",
                    "status": "active", "balance": "12.50", "opened_ms": 1_000_000_000_000i64,
                    "closed_ms": null, "card_no": null, "card_generation": 0}],
                "records": [{"account_id": "LEG-1", "kind": "payment", "amount": "12.50", "units": "0",
                    "ts_ms": 1_000_000_100_000i64, "operator_id": "legacy", "branch": "B01", "tariff_id": "",
                    "invoice_no": "", "bank_code": "OLD", "bank_ref": "L1", "card_no": "", "card_seq": 0}]}),
        )
        .expect("import");
    assert_eq!(imp["result"], "imported", "{imp}");
    let legacy = auditor
        .get("/v1/accounts/LEG-1/records?segment=all")
        .expect("legacy records");
    assert_eq!(legacy["records"][0]["channel"], "import");
    assert_eq!(
        code(counter.post("/v1/import", &json!({"request_id": "import-2"}))),
        "PERMISSION_DENIED"
    );
    // An empty import is a bad argument, not a too-large one.
    assert_eq!(
        code(ops.post(
            "/v1/import",
            &json!({"request_id": "import-0", "accounts": [], "records": []})
        )),
        "INVALID_ARGUMENT"
    );
    // A migration-sized import: 600 records, a body well over the 64 KiB
    // limit of other requests (imports may carry up to 1 MiB).
    let records: Vec<Value> = (0..600i64)
        .map(|i| {
            json!({"account_id": "LEG-2", "kind": "charge", "amount": "1.00", "units": "0",
                "ts_ms": 1_000_000_200_000i64 + i * 1000, "operator_id": "legacy", "branch": "B01",
                "tariff_id": "", "invoice_no": "", "bank_code": "", "bank_ref": "", "card_no": "",
                "card_seq": 0})
        })
        .collect();
    let body = json!({"request_id": "import-3",
        "accounts": [{"account_id": "LEG-2", "name": "Legacy", "address": "", "branch": "B01",
            "utility": "electricity", "meter_id": "", "tariff_id": "T1", "area": "0",
            "status": "active", "balance": "0", "opened_ms": 1_000_000_000_000i64,
            "closed_ms": null, "card_no": null, "card_generation": 0}],
        "records": records});
    assert!(body.to_string().len() > 100_000);
    let imp = ops.post("/v1/import", &body).expect("large import");
    assert_eq!(imp["records"], 600, "{imp}");

    // Lifecycle (ops): suspend, resume, close.
    ops.post(
        "/v1/accounts/A1/suspend",
        &json!({"request_id": "susp-1", "reason": "audit"}),
    )
    .expect("suspend");
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-susp", "account_id": "A1", "amount": "3.00"})
        )),
        "ACCOUNT_SUSPENDED"
    );
    ops.post("/v1/accounts/A1/resume", &json!({"request_id": "res-1"}))
        .expect("resume");
    assert_eq!(
        code(ops.post("/v1/accounts/A1/resume", &json!({"request_id": "res-2"}))),
        "INVALID_STATE"
    );
    ops.post(
        "/v1/accounts/A1/close",
        &json!({"request_id": "close-1", "reason": "moved"}),
    )
    .expect("close");
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-closed", "account_id": "A1", "amount": "3.00"})
        )),
        "ACCOUNT_CLOSED"
    );
    assert_eq!(
        code(bank.post(
            "/v1/payments",
            &json!({"request_id": "pay-closed", "account_id": "A1", "amount": "5.00", "bank_code": "ICBC", "bank_ref": "R5"})
        )),
        "ACCOUNT_CLOSED"
    );
    // A sale on the closed account's card: ACCOUNT_CLOSED, not CARD_UNKNOWN.
    assert_eq!(
        code(counter.post(
            "/v1/purchases",
            &json!({"request_id": "buy-closed-card", "card_no": "CARD-1B", "amount": "3.00"})
        )),
        "ACCOUNT_CLOSED"
    );
    // A tariff defined without an effective time is in force at once.
    let (st, v) = api.put(
        "ops",
        "/v1/tariffs/T-NOW",
        json!({"request_id": "tariff-now", "kind": "flat", "price": "0.52"}),
    );
    assert_eq!((st, &v["result"]), (200, &json!("tariff_defined")), "{v}");
    let opened = open(&counter, "A-NOW", "T-NOW");
    assert!(opened.get("warnings").is_none(), "{opened}");
    // An account on a tariff nobody defined is opened, but said loudly.
    let opened = open(&counter, "A-NOTARIFF", "T-MISSING");
    assert!(
        opened["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("TARIFF_NOT_FOUND") && w.contains("T-MISSING")),
        "{opened}"
    );
    let sale = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-now", "account_id": "A-NOW", "amount": "5.20"}),
        )
        .expect("a sale under a tariff effective now");
    assert_eq!(sale["record"]["tariff_id"], "T-NOW", "{sale}");
    // The customer's statement: opening 0, the sale, closing = the balance.
    let st = auditor
        .get("/v1/accounts/A-NOW/statement?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z")
        .expect("statement");
    assert_eq!(dec(&st["opening_balance"]), Decimal::ZERO, "{st}");
    assert_eq!(st["lines"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["lines"][0]["kind"], "purchase", "{st}");
    let acct = auditor.get("/v1/accounts/A-NOW").expect("account");
    assert_eq!(dec(&st["closing_balance"]), dec(&acct["balance"]), "{st}");
    assert_eq!(
        code(
            auditor.get(
                "/v1/accounts/A-NOW/statement?from=2001-01-01T00:00:00Z&to=2000-01-01T00:00:00Z"
            )
        ),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(
            bank.get(
                "/v1/accounts/A-NOW/statement?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z"
            )
        ),
        "PERMISSION_DENIED"
    );
    // Closed accounts stay readable.
    assert_eq!(
        auditor.get("/v1/accounts/A1").expect("closed account")["status"],
        "closed"
    );
    c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = TestCluster::start(28000, 5);
    let api = Api {
        c: &c,
        addr: c.c.http_addr(1).unwrap(),
    };
    setup_tariff(&api, "T1", "0.50");
    let counter = c.http_as(1, "counter");
    open(&counter, "B1", "T1");
    issue(&counter, "B1", "CARD-B1");
    counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "good-1", "card_no": "CARD-B1", "amount": "10.00"}),
        )
        .expect("purchase");
    let before = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));

    let addr = c.c.http_addr(3).unwrap();
    let ct = c.c.token("counter").unwrap();
    let bt = c.c.token("bank").unwrap();
    let ot = c.c.token("ops").unwrap();
    let wide_accounts: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"account_id": format!("WIDE-{i}"), "name": "N".repeat(200), "address": "A".repeat(200),
                "branch": "B01", "utility": "electricity", "meter_id": "", "tariff_id": "T1", "area": "0",
                "status": "active", "balance": "0", "opened_ms": 1_000_000_000_000i64,
                "closed_ms": null, "card_no": null, "card_generation": 0})
        })
        .collect();
    let wide_import =
        json!({"request_id": "bad-20", "accounts": wide_accounts, "records": []}).to_string();
    assert!(wide_import.len() < 1 << 20, "{}", wide_import.len());
    let post = |path: &str, body: &str, tok: &str| raw_request(&addr, "POST", path, body, tok);
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("/v1/purchases", "{\"request_id\":".into(), &ct, 400, "MALFORMED_REQUEST"),
        ("/v1/purchases", "not json".into(), &ct, 400, "MALFORMED_REQUEST"),
        ("/v1/purchases", "[1,2]".into(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", " \"bad-0\"".into(), &ct, 400, "INVALID_ARGUMENT"),
        // A field given twice is refused, not silently the last one.
        ("/v1/purchases", "{\"request_id\":\"bad-0\",\"card_no\":\"CARD-B1\",\"amount\":\"1.00\",\"amount\":\"900.00\"}".into(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "bad-1", "card_no": "CARD-B1", "amount": 10}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "bad-2", "card_no": "CARD-B1", "amount": "10.00", "discount": "1"}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "bad-3", "card_no": "CARD-B1", "amount": "-5.00"}).to_string(), &ct, 400, "AMOUNT_TOO_SMALL"),
        ("/v1/purchases", json!({"request_id": "bad-4", "card_no": "CARD-B1", "amount": "0"}).to_string(), &ct, 400, "AMOUNT_TOO_SMALL"),
        ("/v1/purchases", json!({"request_id": "bad-5", "card_no": "CARD-B1", "amount": "1000000.01"}).to_string(), &ct, 400, "AMOUNT_OVER_LIMIT"),
        ("/v1/purchases", json!({"request_id": "bad-6", "card_no": "CARD-B1", "amount": "1.001"}).to_string(), &ct, 400, "TOO_MANY_DECIMALS"),
        ("/v1/purchases", json!({"request_id": "bad-7", "card_no": "CARD-B1", "units": "1.0001"}).to_string(), &ct, 400, "TOO_MANY_DECIMALS"),
        ("/v1/purchases", json!({"request_id": "bad-8", "card_no": "CARD-B1", "amount": "1.00", "units": "1"}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "", "card_no": "CARD-B1", "amount": "1.00"}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "x".repeat(65), "card_no": "CARD-B1", "amount": "1.00"}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        ("/v1/purchases", json!({"request_id": "bad-9", "card_no": "CARD-B1", "amount": "1.00", "pad": "x".repeat(70_000)}).to_string(), &ct, 413, "PAYLOAD_TOO_LARGE"),
        ("/v1/payments", json!({"request_id": "bad-10", "account_id": "B1", "amount": "1.00", "bank_code": "ICBC", "bank_ref": "Z"}).to_string(), &ct, 403, "PERMISSION_DENIED"),
        ("/v1/payments", json!({"request_id": "bad-11", "account_id": "B1", "amount": "1.00", "bank_code": "ABC", "bank_ref": "Z"}).to_string(), &bt, 403, "PERMISSION_DENIED"),
        ("/v1/purchases", json!({"request_id": "bad-12", "card_no": "CARD-B1", "amount": "1.00"}).to_string(), "wrong-token", 401, "UNAUTHENTICATED"),
        ("/v1/adjustments", json!({"request_id": "bad-13", "account_id": "B1", "amount": "1.00", "reason": "x"}).to_string(), &ct, 403, "PERMISSION_DENIED"),
        // Unknown account or card: refused by the leader before proposing,
        // so not even a request entry is written.
        ("/v1/purchases", json!({"request_id": "bad-14", "card_no": "NO-SUCH-CARD", "amount": "1.00"}).to_string(), &ct, 404, "CARD_UNKNOWN"),
        ("/v1/purchases", json!({"request_id": "bad-15", "account_id": "NO-SUCH-ACCT", "amount": "1.00"}).to_string(), &ct, 404, "ACCOUNT_NOT_FOUND"),
        ("/v1/payments", json!({"request_id": "bad-16", "account_id": "NO-SUCH-ACCT", "amount": "1.00", "bank_code": "ICBC", "bank_ref": "Z16"}).to_string(), &bt, 404, "ACCOUNT_NOT_FOUND"),
        ("/v1/cards", json!({"request_id": "bad-17", "account_id": "NO-SUCH-ACCT", "card_no": "NEW-CARD-17"}).to_string(), &ct, 404, "ACCOUNT_NOT_FOUND"),
        // A path parameter that is not UTF-8 once decoded: the JSON error body.
        ("/v1/purchases/B1%FF-1/reissue", json!({"request_id": "bad-18"}).to_string(), &ct, 400, "INVALID_ARGUMENT"),
        // Imports: over the 1 MiB body limit; and within it, but encoding
        // to more than one log entry holds (256 KiB): refused before Raft.
        ("/v1/import", json!({"request_id": "bad-19", "accounts": [], "records": [], "pad": "x".repeat(1_100_000)}).to_string(), &ot, 413, "PAYLOAD_TOO_LARGE"),
        ("/v1/import", wide_import.clone(), &ot, 413, "PAYLOAD_TOO_LARGE"),
    ];
    for (path, body, tok, status, want) in &cases {
        let (st, v) = post(path, body, tok);
        assert_eq!(
            (st, v["code"].as_str().unwrap_or("")),
            (*status, *want),
            "{path} {}: {v}",
            &body[..body.len().min(120)]
        );
    }
    // Bad reads.
    let auditor = c.http_as(4, "auditor");
    assert_eq!(
        code(auditor.get("/v1/accounts/B1/records?limit=501")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(auditor.get("/v1/accounts/B1/records?limit=abc")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(auditor.get("/v1/accounts/B1/records?order=sideways")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(auditor.get("/v1/accounts/B1/records?bogus=1")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(auditor.get("/v1/accounts/B1/records?page_token=zz")),
        "INVALID_PAGE_TOKEN"
    );
    assert_eq!(
        code(auditor.get("/v1/accounts/NOPE/records")),
        "ACCOUNT_NOT_FOUND"
    );
    assert_eq!(
        code(auditor.get("/v1/reports/monthly?month=2026-13")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(auditor.get("/v1/reports/monthly?month=2026-01&group_by=color")),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(
            c.http_as(4, "bank")
                .get("/v1/reports/monthly?month=2026-01")
        ),
        "PERMISSION_DENIED"
    );

    // The same over gRPC.
    let grpc_node: u64 = 5;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use billdb_api::pb;
        let mut b = pb::billing_client::BillingClient::new(c.grpc_channel(grpc_node).await);
        let buy = |rid: &str, amount: Option<&str>, units: Option<&str>| pb::PurchaseRequest {
            request_id: rid.into(),
            card_no: Some("CARD-B1".into()),
            account_id: None,
            amount: amount.map(String::from),
            units: units.map(String::from),
            confirm_duplicate: false,
        };
        let big = "x".repeat(70_000);
        let cases: Vec<(pb::PurchaseRequest, &str, &str)> = vec![
            (buy("g-1", Some("-1.00"), None), &ct, "AMOUNT_TOO_SMALL"),
            (buy("g-2", Some("0"), None), &ct, "AMOUNT_TOO_SMALL"),
            (buy("g-3", Some("1.234"), None), &ct, "TOO_MANY_DECIMALS"),
            (
                buy("g-4", Some("1000000.01"), None),
                &ct,
                "AMOUNT_OVER_LIMIT",
            ),
            (buy("g-5", Some("ten"), None), &ct, "INVALID_AMOUNT"),
            (buy("g-6", Some("1.00"), Some("1")), &ct, "INVALID_ARGUMENT"),
            (buy("g-7", None, Some("0.0001")), &ct, "TOO_MANY_DECIMALS"),
            (buy("", Some("1.00"), None), &ct, "INVALID_ARGUMENT"),
            (buy(&big, Some("1.00"), None), &ct, "PAYLOAD_TOO_LARGE"),
            (buy("g-8", Some("1.00"), None), &bt, "PERMISSION_DENIED"),
            (
                buy("g-9", Some("1.00"), None),
                "wrong-token",
                "UNAUTHENTICATED",
            ),
        ];
        for (msg, tok, want) in cases {
            let e = b.purchase(authed(msg, tok)).await.expect_err("refused");
            assert_eq!(
                billdb_api::error::ApiError::from_status(&e).code.as_str(),
                want,
                "gRPC: {e:?}"
            );
        }
        // Malformed / unknown fields in the one JSON-carrying RPC (import).
        let ot = c.c.token("ops").unwrap();
        for (args, want) in [
            ("{\"request_id\":", "MALFORMED_REQUEST"),
            (
                "{\"request_id\": \"g-imp\", \"extra\": 1}",
                "INVALID_ARGUMENT",
            ),
            ("{\"request_id\": 7}", "INVALID_ARGUMENT"),
        ] {
            let e = b
                .import(authed(
                    pb::JsonRequest {
                        args_json: args.into(),
                    },
                    &ot,
                ))
                .await
                .expect_err("refused");
            assert_eq!(
                billdb_api::error::ApiError::from_status(&e).code.as_str(),
                want
            );
        }
        let e = b
            .list_records(authed(
                pb::ListRecordsRequest {
                    account_id: "B1".into(),
                    limit: Some(501),
                    ..Default::default()
                },
                &ct,
            ))
            .await
            .expect_err("page too large");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = b
            .monthly_report(authed(
                pb::MonthlyReportRequest {
                    month: "2026-1".into(),
                    ..Default::default()
                },
                &ot,
            ))
            .await
            .expect_err("bad month");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // A good gRPC read for contrast.
        let ok = b
            .get_request(authed(
                pb::GetRequestRequest {
                    request_id: "good-1".into(),
                },
                &ct,
            ))
            .await
            .expect("read");
        assert!(ok.get_ref().json.contains("record_posted"));
        let page = b
            .list_records(authed(
                pb::ListRecordsRequest {
                    account_id: "B1".into(),
                    limit: Some(10),
                    ..Default::default()
                },
                &ct,
            ))
            .await
            .expect("list");
        let v: Value = serde_json::from_str(&page.get_ref().json).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 1);
    });

    // A replayed request returns the stored outcome and changes nothing.
    let replay = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "good-1", "card_no": "CARD-B1", "amount": "10.00"}),
        )
        .expect("replay");
    assert_eq!(replay["record"]["seq"], 1);
    let after = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
    assert_eq!(
        before, after,
        "a refused or replayed request changed the state"
    );
}

#[test]
fn purchases_are_exactly_once_across_leader_kill() {
    let c = TestCluster::start(29000, 5);
    let leader = c.leader();
    let follower = (1..=5).find(|n| *n != leader).unwrap();
    let api = Api {
        c: &c,
        addr: c.c.http_addr(follower).unwrap(),
    };
    setup_tariff(&api, "T1", "0.50");
    let h = c.http_as(follower, "counter");
    open(&h, "F1", "T1");

    const N: usize = 400;
    let ids: Vec<String> = (0..N).map(|i| format!("fo-{i}")).collect();
    let body = |rid: &str| json!({"request_id": rid, "account_id": "F1", "amount": format!("{}.00", 1 + rid[3..].parse::<u32>().unwrap()), "confirm_duplicate": true});
    let token = c.c.token("counter").unwrap();
    let (c2, fnode) = (c.c.clone(), follower);
    let ids2 = ids.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let loop_thread = std::thread::spawn(move || {
        let mut acked = Vec::new();
        // A short client timeout: requests in flight across the failover
        // are abandoned with an unknown outcome, as a real till would.
        let h = c2
            .http_client(fnode, Duration::from_millis(150))
            .expect("client")
            .with_token(Some(token));
        for rid in &ids2 {
            let b = json!({"request_id": rid, "account_id": "F1", "amount": format!("{}.00", 1 + rid[3..].parse::<u32>().unwrap()), "confirm_duplicate": true});
            sent2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if h.post("/v1/purchases", &b).is_ok() {
                acked.push(rid.clone());
            }
        }
        acked
    });
    // Kill the leader mid-loop, with requests in flight.
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        std::thread::sleep(Duration::from_millis(1));
    }
    c.c.kill(leader).expect("kill leader");
    let acked = loop_thread.join().unwrap();
    println!("{} of {N} acknowledged through the kill", acked.len());
    if acked.len() == N {
        println!("note: the failover was fast enough that no request timed out");
    }

    // Retry every unacknowledged one with the SAME request_id via another node.
    let other = (1..=5).find(|n| *n != leader && *n != follower).unwrap();
    let h2 = c.http_as(other, "counter");
    for rid in ids.iter().filter(|r| !acked.contains(r)) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match h2.post("/v1/purchases", &body(rid)) {
                Ok(v) => {
                    assert_eq!(v["result"], "record_posted");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{rid}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Every request_id produced exactly one record, one seq, one invoice.
    let aud = c.http_as(other, "auditor");
    let page = aud
        .get("/v1/accounts/F1/records?limit=500")
        .expect("records");
    assert!(page["next_page_token"].is_null());
    let recs = page["records"].as_array().unwrap();
    assert_eq!(recs.len(), N, "one record per request_id");
    let mut by_rid: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in recs {
        by_rid
            .entry(r["request_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    let mut invoices = std::collections::BTreeSet::new();
    for rid in &ids {
        let rs = &by_rid[rid];
        assert_eq!(rs.len(), 1, "{rid} produced {} records", rs.len());
        let out = aud.get(&format!("/v1/requests/{rid}")).expect("outcome");
        assert_eq!(out["outcome"]["record"]["seq"], rs[0]["seq"]);
        assert!(invoices.insert(rs[0]["invoice_no"].as_str().unwrap().to_string()));
    }
    let acct = aud.get("/v1/accounts/F1").expect("account");
    assert_eq!(acct["last_seq"].as_u64(), Some(N as u64));
}

/// Concurrent writes to the leader travel together (group commit: several
/// commands in one log entry) and each keeps its own outcome: every purchase
/// posts once with its own seq, invoice numbers stay unique and gapless, and
/// of many deliveries of one bank payment racing in the same entries exactly
/// one posts.
#[test]
fn concurrent_writes_share_entries_and_keep_their_own_outcomes() {
    let c = TestCluster::start(29500, 5);
    let leader = c.leader();
    let api = Api {
        c: &c,
        addr: c.c.http_addr(leader).unwrap(),
    };
    setup_tariff(&api, "T1", "0.50");
    let h = c.http_as(leader, "counter");
    const ACCOUNTS: usize = 4;
    for a in 0..ACCOUNTS {
        open(&h, &format!("G{a}"), "T1");
    }
    const PURCHASES: usize = 48;
    const DELIVERIES: usize = 8;
    let addr = c.c.http_addr(leader).unwrap();
    let counter = c.c.token("counter").unwrap();
    let bank = c.c.token("bank").unwrap();
    let start = std::sync::Arc::new(std::sync::Barrier::new(PURCHASES + DELIVERIES));
    let mut threads = Vec::new();
    for i in 0..PURCHASES + DELIVERIES {
        let (addr, start) = (addr.clone(), start.clone());
        let (path, token, body) = if i < PURCHASES {
            (
                "/v1/purchases",
                counter.clone(),
                json!({"request_id": format!("gc-{i}"), "account_id": format!("G{}", i % ACCOUNTS),
                       "amount": format!("{}.00", 1 + i), "confirm_duplicate": true}),
            )
        } else {
            let account = "G0";
            (
                "/v1/payments",
                bank.clone(),
                json!({"request_id": format!("gp-{i}"), "account_id": account, "amount": "5.00",
                       "bank_code": "ICBC", "bank_ref": "ONE-REF"}),
            )
        };
        threads.push(std::thread::spawn(move || {
            // Connected (TLS handshake done) before the start, so the
            // requests arrive together on a busy machine too.
            let conn = connect_raw(&addr);
            start.wait();
            raw_request_on(conn, &addr, "POST", path, &body.to_string(), &token)
        }));
    }
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut entries = std::collections::BTreeSet::new();
    let mut invoices = std::collections::BTreeSet::new();
    for (i, (st, v)) in answers[..PURCHASES].iter().enumerate() {
        assert_eq!(
            (*st, v["result"].as_str()),
            (200, Some("record_posted")),
            "gc-{i}: {v}"
        );
        entries.insert(v["log_index"].as_u64().unwrap());
        assert!(invoices.insert(v["record"]["invoice_no"].as_str().unwrap().to_string()));
    }
    let posted: Vec<&Value> = answers[PURCHASES..]
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        posted.len(),
        1,
        "one delivery of the payment posts: {answers:?}"
    );
    for (st, v) in &answers[PURCHASES..] {
        assert!(*st == 200 || v["code"] == "DUPLICATE_PAYMENT", "{st} {v}");
    }
    invoices.insert(posted[0]["invoice_no"].as_str().unwrap().to_string());
    assert!(
        entries.len() < PURCHASES,
        "{PURCHASES} concurrent purchases should share entries, took {} distinct ones",
        entries.len()
    );
    // Gapless: the numbers issued are one contiguous run.
    let nos: Vec<u64> = invoices
        .iter()
        .map(|n| n.trim_start_matches("INV").parse().unwrap())
        .collect();
    assert_eq!(nos.len(), PURCHASES + 1);
    assert_eq!(nos[nos.len() - 1] - nos[0], PURCHASES as u64, "{nos:?}");
    // Each account's records have seqs 1..=n, one per purchase.
    let aud = c.http_as(leader, "auditor");
    for a in 0..ACCOUNTS {
        let page = aud
            .get(&format!("/v1/accounts/G{a}/records?limit=500"))
            .expect("records");
        let mut seqs: Vec<u64> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        seqs.sort_unstable();
        let want = PURCHASES / ACCOUNTS + usize::from(a == 0);
        assert_eq!(seqs, (1..=want as u64).collect::<Vec<_>>(), "G{a}");
    }
    // Every replica applied the same state.
    c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(20));
}

#[test]
fn monthly_report_equals_the_records() {
    let c = TestCluster::start(30000, 5);
    let api = Api {
        c: &c,
        addr: c.c.http_addr(1).unwrap(),
    };
    setup_tariff(&api, "T1", "0.40");
    let counter = c.http_as(2, "counter");
    let bank = c.http_as(3, "bank");
    let ops = c.http_as(4, "ops");
    let accounts = ["R1", "R2", "R3"];
    for a in accounts {
        open(&counter, a, "T1");
    }
    let mut reissue_done = false;
    for (i, a) in accounts.iter().enumerate() {
        for k in 0..4 {
            let p = counter
                .post(
                    "/v1/purchases",
                    &json!({"request_id": format!("rp-{a}-{k}"), "account_id": a, "amount": format!("{}.{}0", 3 + k, i), "confirm_duplicate": true}),
                )
                .expect("purchase");
            let rid = p["record_id"].as_str().unwrap().to_string();
            if k == 1 {
                ops.post(
                    &format!("/v1/records/{rid}/reverse"),
                    &json!({"request_id": format!("rr-{a}"), "reason": "error"}),
                )
                .expect("reverse");
            }
            if k == 3 && !reissue_done {
                counter
                    .post(
                        &format!("/v1/purchases/{rid}/reissue"),
                        &json!({"request_id": format!("ri-{a}")}),
                    )
                    .expect("reissue");
                reissue_done = true;
            }
        }
        let pay = bank
            .post(
                "/v1/payments",
                &json!({"request_id": format!("rpay-{a}"), "account_id": a, "amount": "20.00", "bank_code": "ICBC", "bank_ref": format!("ref-{a}")}),
            )
            .expect("payment");
        if i == 0 {
            let prid = pay["record_id"].as_str().unwrap();
            ops.post(
                &format!("/v1/records/{prid}/reverse"),
                &json!({"request_id": "rpay-rev", "reason": "recall"}),
            )
            .expect("reverse payment");
        }
    }
    let aud = c.http_as(5, "auditor");
    // Sum the listed records by (month, kind).
    let mut want: BTreeMap<(String, String), (u64, Decimal, Decimal)> = BTreeMap::new();
    for a in accounts {
        let page = aud
            .get(&format!("/v1/accounts/{a}/records?limit=500"))
            .expect("records");
        for r in page["records"].as_array().unwrap() {
            let month = r["ts"].as_str().unwrap()[..7].to_string();
            let e = want
                .entry((month, r["kind"].as_str().unwrap().to_string()))
                .or_default();
            e.0 += 1;
            e.1 += r["amount"].as_str().unwrap().parse::<Decimal>().unwrap();
            e.2 += r["units"].as_str().unwrap().parse::<Decimal>().unwrap();
        }
    }
    let months: std::collections::BTreeSet<String> = want.keys().map(|k| k.0.clone()).collect();
    let mut got: BTreeMap<(String, String), (u64, Decimal, Decimal)> = BTreeMap::new();
    for m in &months {
        let rep = aud
            .get(&format!("/v1/reports/monthly?month={m}&group_by=kind"))
            .expect("report");
        for l in rep["lines"].as_array().unwrap() {
            let e = got
                .entry((m.clone(), l["kind"].as_str().unwrap().to_string()))
                .or_default();
            e.0 += l["count"].as_u64().unwrap();
            e.1 += l["amount"].as_str().unwrap().parse::<Decimal>().unwrap();
            e.2 += l["units"].as_str().unwrap().parse::<Decimal>().unwrap();
        }
        // Grouped by operator, the totals are the same.
        let by_op = aud
            .get(&format!("/v1/reports/monthly?month={m}&group_by=operator"))
            .expect("report");
        let by_kind = aud
            .get(&format!("/v1/reports/monthly?month={m}&group_by=kind"))
            .expect("report");
        assert_eq!(by_op["total"], by_kind["total"]);
        assert_eq!(by_op["totals_by_kind"], by_kind["totals_by_kind"]);
        // Sales are the purchases alone: reissues, payments and charges
        // have their own totals.
        match &by_kind["totals_by_kind"]["purchase"] {
            Value::Null => assert_eq!(by_op["sales"]["count"], 0),
            purchases => assert_eq!(&by_op["sales"], purchases),
        }
    }
    let norm = |m: BTreeMap<(String, String), (u64, Decimal, Decimal)>| {
        m.into_iter()
            .map(|(k, (n, a, u))| (k, (n, a.normalize(), u.normalize())))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(norm(got), norm(want), "report rows = sums over records");
    // The bank's own daily report.
    let day = aud.get("/v1/requests/rpay-R1").unwrap()["outcome"]["record_id"].clone();
    assert!(day.is_string());
    let today = {
        let page = aud.get("/v1/accounts/R1/records?limit=500").unwrap();
        page["records"][0]["ts"].as_str().unwrap()[..10].to_string()
    };
    let bd = bank
        .get(&format!("/v1/reports/bank-daily?date={today}"))
        .expect("bank daily");
    assert!(!bd["lines"].as_array().unwrap().is_empty(), "{bd}");
    assert_eq!(
        code(bank.get(&format!(
            "/v1/reports/bank-daily?date={today}&bank_code=ABC"
        ))),
        "PERMISSION_DENIED"
    );
}

/// A redelivery of an applied request_id is answered by the node it reaches
/// from its own state: the original outcome, no new log entry, no hop to
/// the leader; a different payload under that id is IDEMPOTENCY_CONFLICT,
/// also without an entry. State is unchanged on every replica.
#[test]
fn redeliveries_are_answered_from_applied_state_without_a_log_entry() {
    let c = TestCluster::start(27500, 5);
    let leader = c.leader();
    let api = Api {
        c: &c,
        addr: c.c.http_addr(leader).unwrap(),
    };
    setup_tariff(&api, "T1", "0.50");
    open(&c.http(leader), "R1", "T1");
    let first = pay(&c.http(leader), "redeliver-1", "R1", "12.34").expect("first delivery");
    let index = first["log_index"].as_u64().expect("log_index");
    let digest = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(20));
    let last_before = c.status(leader)["last_log_index"].as_u64().expect("last");
    assert!(last_before >= index);
    let local = "billdb_write_replays_answered_locally_total";
    let before: Vec<f64> = (1..=5).map(|n| c.metric(n, local)).collect();

    const ROUNDS: usize = 4;
    for _ in 0..ROUNDS {
        for n in 1..=5 {
            let again = pay(&c.http(n), "redeliver-1", "R1", "12.34").expect("redelivery");
            assert_eq!(again, first, "node {n} answered a redelivery differently");
            let refused = code(pay(&c.http(n), "redeliver-1", "R1", "99.00"));
            assert_eq!(refused, "IDEMPOTENCY_CONFLICT", "node {n}");
        }
    }
    for n in 1..=5 {
        let answered = c.metric(n, local) - before[(n - 1) as usize];
        assert_eq!(
            answered,
            (2 * ROUNDS) as f64,
            "node {n} answered its redeliveries itself"
        );
    }
    assert_eq!(
        c.status(leader)["last_log_index"].as_u64(),
        Some(last_before),
        "redeliveries added log entries"
    );
    assert_eq!(balance(&c, leader, "R1"), "12.34".parse().unwrap());
    assert_eq!(
        c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(20)),
        digest
    );

    // A request_id never applied still goes through the log.
    let second = pay(&c.http(leader), "redeliver-2", "R1", "1.00").expect("new request");
    assert!(second["log_index"].as_u64().unwrap() > last_before);
    assert_eq!(balance(&c, leader, "R1"), "13.34".parse().unwrap());
}
