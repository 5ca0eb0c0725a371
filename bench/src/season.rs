//! `season`: season billing at scale. Imports `accounts` heat accounts
//! (areas, heating stops and a few closed ones, over eight branches) under a
//! fresh area tariff, opens a fresh season and bills it through
//! `POST /v1/seasons/{id}/bill` as `billdb season bill` does, timing the
//! billing alone; then checks the season bill report against its own
//! arithmetic (accounts billed, Σ to the cent). Touches the cluster over
//! HTTP only. Opening a season is global: run it on a benchmark cluster.

use std::time::Instant;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use crate::cluster::{Target, TargetArgs};
use crate::progress::Progress;
use crate::workloads;

/// Accounts per import request (the import's item limit).
const IMPORT_BATCH: usize = 1000;
const PRICE: &str = "3.65";
const SHARE: &str = "0.30";

#[derive(clap::Args, Debug)]
pub struct SeasonArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value_t = 600_000)]
    pub accounts: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SeasonArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=2_000_000).contains(&a.accounts),
        "accounts must be 1..=2000000"
    );
    let target = Target::resolve(&a.target)?;
    let leader = target.leader(std::time::Duration::from_secs(10))?;
    let first = target
        .nodes
        .iter()
        .position(|(id, _)| *id == leader)
        .unwrap_or(0);
    let ops = target.clients("ops", first)?;
    let h = &ops[0];
    let run = workloads::run_id();
    let tariff = format!("AH{run}");
    let season = format!("S{run}");
    h.send(
        true,
        &format!("/v1/tariffs/{tariff}"),
        &json!({"request_id": format!("bench-area-{run}"), "kind": "area", "price": PRICE,
                "suspended_share": SHARE, "effective_from": "2000-01-01T00:00:00Z"})
        .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("defining the area tariff: {e}"))?;

    let price: Decimal = PRICE.parse()?;
    let share: Decimal = SHARE.parse()?;
    let (mut expect_billed, mut expect_total) = (0u64, Decimal::ZERO);
    let import_started = Instant::now();
    let progress = Progress::start("import", a.accounts as u64, a.json);
    for (b, start) in (0..a.accounts).step_by(IMPORT_BATCH).enumerate() {
        let end = (start + IMPORT_BATCH).min(a.accounts);
        let mut accounts = Vec::with_capacity(end - start);
        for i in start..end {
            let closed = i % 101 == 7;
            let suspended = !closed && i % 13 == 3;
            let area: Decimal = format!("{}.{:02}", 30 + i % 150, i % 100).parse()?;
            accounts.push(json!({
                "account_id": format!("SB{run}-{i}"), "name": "Bench", "address": "",
                "branch": format!("B{:02}", i % 8), "utility": "heat", "meter_id": "",
                "tariff_id": tariff, "area": area.to_string(),
                "status": if closed { "closed" } else if suspended { "suspended" } else { "active" },
                "balance": "0.00", "opened_ms": 1_700_000_000_000i64,
                "closed_ms": if closed { Some(1_700_000_100_000i64) } else { None },
                "card_no": null, "card_generation": 0,
            }));
            if !closed {
                let mut c = area * price;
                if suspended {
                    c *= share;
                }
                expect_total += c.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
                expect_billed += 1;
            }
        }
        h.post(
            "/v1/import",
            &json!({"request_id": format!("bench-sb-{run}-{b}"), "accounts": accounts, "records": []})
                .to_string(),
        )
        .map_err(|e| anyhow::anyhow!("importing: {e}"))?;
        progress
            .done
            .store(end as u64, std::sync::atomic::Ordering::Relaxed);
    }
    progress.finish();
    let import_s = import_started.elapsed().as_secs_f64();
    h.post(
        "/v1/seasons",
        &json!({"request_id": format!("bench-season-{run}"), "season_id": season}).to_string(),
    )
    .map_err(|e| anyhow::anyhow!("opening the season: {e}"))?;

    // The billing, timed: every call of the loop `billdb season bill` makes.
    let started = Instant::now();
    let progress = Progress::start("season bill", a.accounts as u64, a.json);
    let (mut calls, mut looked, mut billed) = (0u64, 0u64, 0u64);
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"request_id": format!("bench-bill-{run}")});
        if let Some(x) = &after {
            body["after"] = json!(x);
        }
        let v = h
            .post(&format!("/v1/seasons/{season}/bill"), &body.to_string())
            .map_err(|e| anyhow::anyhow!("billing: {e}"))?;
        calls += 1;
        looked += v["accounts_looked_at"].as_u64().unwrap_or(0);
        billed += v["billed"].as_u64().unwrap_or(0);
        progress.done.store(
            looked.min(a.accounts as u64),
            std::sync::atomic::Ordering::Relaxed,
        );
        if v["done"] == true {
            break;
        }
        after = v["next_after"].as_str().map(str::to_string);
        anyhow::ensure!(after.is_some(), "not done and no next_after: {v}");
    }
    progress.finish();
    let bill_s = started.elapsed().as_secs_f64();
    let r = h
        .get(&format!("/v1/seasons/{season}/bill"))
        .map_err(|e| anyhow::anyhow!("the report: {e}"))?;
    let total: Decimal = r["total"].as_str().unwrap_or("0").parse()?;
    let report_billed = r["accounts_billed"].as_u64().unwrap_or(0);
    // Heat accounts of earlier runs on the same cluster are billed too;
    // this run's own must all be there.
    let verified = report_billed >= expect_billed && total >= expect_total;
    anyhow::ensure!(
        verified,
        "the report does not hold this run's accounts: {report_billed} billed, total {total}; \
         expected at least {expect_billed}, {expect_total}"
    );
    Ok(json!({
        "workload": "season_bill",
        "accounts": a.accounts,
        "import_s": import_s,
        "bill_s": bill_s,
        "accounts_per_s": a.accounts as f64 / bill_s.max(1e-9),
        "calls": calls,
        "accounts_looked_at": looked,
        "billed_by_this_run": billed,
        "expected_billed": expect_billed,
        "expected_total": expect_total.to_string(),
        "report_accounts_billed": report_billed,
        "report_total": total.to_string(),
        "report_equals_expected": report_billed == expect_billed && total == expect_total,
        "settings": target.settings(),
        "usage": target.usage(),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "season bill: {} accounts billed in {:.1} s ({:.0} accounts/s, {} calls); import {:.1} s",
        v["report_accounts_billed"],
        v["bill_s"].as_f64().unwrap_or(0.0),
        v["accounts_per_s"].as_f64().unwrap_or(0.0),
        v["calls"],
        v["import_s"].as_f64().unwrap_or(0.0),
    );
    println!(
        "report total {} (this run's own arithmetic: {} over {} accounts; equal: {})",
        v["report_total"], v["expected_total"], v["expected_billed"], v["report_equals_expected"]
    );
}
