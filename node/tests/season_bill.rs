//! Season billing against five real nodes (issue 27): 24,000 accounts
//! (22,000 heat with a mix of areas, heating stops, closed accounts,
//! exempt areas and a flat tariff; 2,000 electricity) imported, a season
//! opened and billed through `POST /v1/seasons/{id}/bill`. The node
//! driving the run and the leader are killed (SIGKILL) half-way; the run
//! is resumed from the start through another node, then run again under a
//! new request_id. Every heat account must end with exactly the charge the
//! test computes itself (area × price, × the share for a heating stop,
//! rounded half-even): the report, the skipped lines, the business
//! fingerprints (Σ charges, Σ balances, record counts per branch) and the
//! digests all agree; nothing is charged twice, nothing is missed.
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): base 21000.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use common::*;

const ACCOUNTS: usize = 24_000;
/// Every twelfth account is an electricity account.
fn is_heat(i: usize) -> bool {
    i % 12 != 11
}
const PRICE: &str = "3.65";
const SHARE: &str = "0.30";
const SEASON: &str = "2026-27";
const IMPORT_BATCH: usize = 1000;

struct Expect {
    /// account → charge (billed) or skip reason code.
    per_account: BTreeMap<String, Result<Decimal, &'static str>>,
    /// branch → (accounts billed, Σ charges).
    per_branch: BTreeMap<String, (u64, Decimal)>,
    total: Decimal,
    billed: u64,
    skipped: BTreeMap<String, u64>,
}

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// A decimal from JSON, a string or a number.
fn dv(v: &Value) -> Decimal {
    match v {
        Value::String(s) => d(s),
        Value::Number(n) => d(&n.to_string()),
        other => panic!("not a decimal: {other}"),
    }
}

/// The accounts to import, and what billing them must give.
fn dataset() -> (Vec<Value>, Expect) {
    let mut accounts = Vec::with_capacity(ACCOUNTS);
    let mut e = Expect {
        per_account: BTreeMap::new(),
        per_branch: BTreeMap::new(),
        total: Decimal::ZERO,
        billed: 0,
        skipped: BTreeMap::new(),
    };
    for i in 0..ACCOUNTS {
        let id = format!("SB-{i:06}");
        let branch = if i % 2 == 0 { "B01" } else { "B02" };
        let heat = is_heat(i);
        let closed = heat && i % 50 == 7;
        let suspended = heat && !closed && i % 10 == 3;
        let area = if heat && i % 40 == 5 {
            "0".to_string()
        } else {
            format!("{}.{:02}", 20 + i % 180, i % 100)
        };
        let tariff = if !heat || i % 97 == 1 { "ELEC" } else { "HEAT" };
        accounts.push(json!({
            "account_id": id, "name": format!("Customer {i}"), "address": "street",
            "branch": branch, "utility": if heat { "heat" } else { "electricity" },
            "meter_id": "", "tariff_id": tariff, "area": if heat { area.as_str() } else { "0" },
            "status": if closed { "closed" } else if suspended { "suspended" } else { "active" },
            "balance": "0.00", "opened_ms": 1_700_000_000_000i64,
            "closed_ms": if closed { Some(1_700_000_100_000i64) } else { None },
            "card_no": null, "card_generation": 0,
        }));
        if !heat {
            continue;
        }
        let outcome = if closed {
            Err("closed")
        } else if area == "0" {
            Err("no_area")
        } else if tariff != "HEAT" {
            Err("not_area_tariff")
        } else {
            let mut c = d(&area) * d(PRICE);
            if suspended {
                c *= d(SHARE);
            }
            Ok(c.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven))
        };
        match outcome {
            Ok(c) => {
                let b = e.per_branch.entry(branch.to_string()).or_default();
                b.0 += 1;
                b.1 += c;
                e.total += c;
                e.billed += 1;
            }
            Err(r) => *e.skipped.entry(r.to_string()).or_default() += 1,
        }
        e.per_account.insert(id, outcome);
    }
    (accounts, e)
}

/// Calls `POST …/bill` through `node` until done; the number of calls, or
/// the first error.
fn drive(c: &TestCluster, node: NodeId, request_id: &str) -> Result<(u64, Value), String> {
    let mut after: Option<String> = None;
    let mut totals = json!({"billed": 0, "already_billed": 0, "skipped": 0});
    for calls in 1..=10_000u64 {
        let mut body = json!({"request_id": request_id});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let v = c
            .http(node)
            .post(&format!("/v1/seasons/{SEASON}/bill"), &body)
            .map_err(|e| e.to_string())?;
        for k in ["billed", "already_billed", "skipped"] {
            totals[k] = json!(totals[k].as_u64().unwrap_or(0) + v[k].as_u64().unwrap_or(0));
        }
        if v["done"] == true {
            return Ok((calls, totals));
        }
        after = v["next_after"].as_str().map(str::to_string);
        assert!(after.is_some(), "not done and no next_after: {v}");
    }
    Err("not done after 10,000 calls".into())
}

fn report(c: &TestCluster, n: NodeId) -> Value {
    c.http_as(n, "auditor")
        .get(&format!("/v1/seasons/{SEASON}/bill"))
        .expect("season bill report")
}

#[test]
fn a_season_is_billed_exactly_once_through_kills_and_reruns() {
    let c = std::sync::Arc::new(TestCluster::start(21000, 5));
    let leader = c.leader();
    let ops = c.http(leader);
    for (id, body) in [
        (
            "HEAT",
            json!({"request_id": "t-heat", "kind": "area", "price": PRICE,
                   "suspended_share": SHARE, "effective_from": "2000-01-01T00:00:00Z"}),
        ),
        (
            "ELEC",
            json!({"request_id": "t-elec", "kind": "flat", "price": "0.52",
                   "effective_from": "2000-01-01T00:00:00Z"}),
        ),
    ] {
        ops.put_json(&format!("/v1/tariffs/{id}"), &body)
            .expect("define tariff");
    }
    // Bad tariffs and bad calls are refused and change nothing.
    let e = ops
        .put_json(
            "/v1/tariffs/BAD",
            &json!({"request_id": "t-bad", "kind": "area", "price": PRICE}),
        )
        .expect_err("an area tariff needs its share");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    let e = ops
        .post(
            &format!("/v1/seasons/{SEASON}/bill"),
            &json!({"request_id": "early"}),
        )
        .expect_err("no season is open");
    assert_eq!(e.code(), Some("INVALID_STATE"), "{e}");

    let (accounts, expect) = dataset();
    for (i, chunk) in accounts.chunks(IMPORT_BATCH).enumerate() {
        ops.post(
            "/v1/import",
            &json!({"request_id": format!("imp-{i}"), "accounts": chunk, "records": []}),
        )
        .expect("import");
    }
    ops.post(
        "/v1/seasons",
        &json!({"request_id": "season", "season_id": SEASON}),
    )
    .expect("open season");
    let e = c
        .http_as(leader, "counter")
        .post(
            &format!("/v1/seasons/{SEASON}/bill"),
            &json!({"request_id": "x"}),
        )
        .expect_err("a counter may not bill");
    assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{e}");
    let e = ops
        .post(
            &format!("/v1/seasons/{SEASON}/bill"),
            &json!({"request_id": "x", "force": true}),
        )
        .expect_err("unknown field");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    assert_eq!(report(&c, leader)["accounts_billed"], 0);

    // Run 1 through a follower; it and the leader are killed half-way.
    let followers: Vec<NodeId> =
        c.c.node_ids()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
    let (driver, watcher) = (followers[0], followers[1]);
    let run1 = {
        let c = c.clone();
        std::thread::spawn(move || drive(&c, driver, "run-1"))
    };
    let billed_at_kill = wait_for("the first batches billed", Duration::from_secs(60), || {
        let n = report(&c, watcher)["accounts_billed"].as_u64()?;
        (n > 0).then_some(n)
    });
    c.c.kill(driver).expect("kill the driving node");
    c.c.kill(leader).expect("kill the leader");
    assert!(
        billed_at_kill < expect.billed,
        "killed half-way: {billed_at_kill} of {} billed",
        expect.billed
    );
    let interrupted = run1.join().expect("driver thread");
    assert!(interrupted.is_err(), "the run was cut: {interrupted:?}");
    for n in [driver, leader] {
        c.c.start(n).expect("restart");
    }
    c.c.wait_all_healthy(Duration::from_secs(60))
        .expect("all back");

    // Resumed from the start under the same request_id, through another node.
    let started = Instant::now();
    let (calls, totals) = drive(&c, watcher, "run-1").expect("run 1 resumed");
    eprintln!(
        "run 1 resumed: {calls} calls, {totals}, {:?}",
        started.elapsed()
    );
    // Run again under a new request_id: nothing more is charged.
    let (_, totals2) = drive(&c, driver, "run-2").expect("run 2");
    assert_eq!(totals2["billed"], 0, "{totals2}");
    assert_eq!(totals2["already_billed"], expect.billed, "{totals2}");

    // The report: every account billed once, skips with their reasons.
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    let r = report(&c, driver);
    assert_eq!(r["accounts_billed"], expect.billed, "{r:#}");
    assert_eq!(
        d(r["total"].as_str().expect("total")),
        expect.total,
        "{r:#}"
    );
    let skipped: BTreeMap<String, u64> =
        serde_json::from_value(r["skipped"].clone()).expect("skipped");
    assert_eq!(skipped, expect.skipped, "{r:#}");
    let mut per_branch: BTreeMap<String, (u64, Decimal)> = BTreeMap::new();
    for l in r["by_branch_and_tariff"].as_array().expect("lines") {
        assert_eq!(l["tariff_id"], "HEAT", "{l}");
        let b = per_branch
            .entry(l["branch"].as_str().expect("branch").to_string())
            .or_default();
        b.0 += l["accounts"].as_u64().expect("accounts");
        b.1 += d(l["amount"].as_str().expect("amount"));
    }
    assert_eq!(per_branch, expect.per_branch);
    assert!(
        r["rounding"]
            .as_str()
            .is_some_and(|t| t.contains("half-even")),
        "{r:#}"
    );

    // Every skipped account is listed with its reason, and no other.
    let mut listed = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/seasons/{SEASON}/bill/lines?skipped=true&limit=1000&after={a}"),
            None => format!("/v1/seasons/{SEASON}/bill/lines?skipped=true&limit=1000"),
        };
        let page = c.http_as(watcher, "auditor").get(&q).expect("lines");
        for l in page["lines"].as_array().expect("lines") {
            let id = l["account_id"].as_str().expect("id").to_string();
            let why = l["skipped"].as_str().expect("a skip reason").to_string();
            assert!(l["reason"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
            listed.insert(id, why);
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    let want: BTreeMap<String, String> = expect
        .per_account
        .iter()
        .filter_map(|(id, o)| o.as_ref().err().map(|r| (id.clone(), r.to_string())))
        .collect();
    assert_eq!(listed, want);

    // The ledger itself: Σ charges, Σ balances and record counts per branch
    // equal the test's own arithmetic, on every node (no double charge, no
    // miss); and a sample of accounts, one by one.
    for n in &all {
        let f = c
            .http_as(*n, "auditor")
            .get("/v1/cluster/fingerprints")
            .expect("fingerprints");
        for (branch, (count, sum)) in &expect.per_branch {
            let fp = &f["fingerprints"][format!("{branch}/heat")];
            assert_eq!(fp["records"], *count, "node {n} {branch}: {fp}");
            assert_eq!(
                dv(&fp["amounts_by_kind"]["charge"]),
                *sum,
                "node {n} {branch}: {fp}"
            );
            assert_eq!(dv(&fp["balances"]), -*sum, "node {n} {branch}: {fp}");
        }
    }
    let h = c.http_as(watcher, "auditor");
    for (id, o) in expect.per_account.iter().step_by(97) {
        let a = h.get(&format!("/v1/accounts/{id}")).expect("account");
        let want = match o {
            Ok(c) => -*c,
            Err(_) => Decimal::ZERO,
        };
        assert_eq!(dv(&a["balance"]), want, "{id}: {a}");
    }
}
