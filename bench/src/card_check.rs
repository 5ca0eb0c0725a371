//! `card-check`: card verify + recent segment latency for an account with
//! `years` × 12 purchases against one with a single month, optionally under
//! a purchase load from `load_clients` other clients; as a counter does it
//! (HTTP, linearizable). Creates its own accounts through the bulk import
//! (a fresh run id each time). Touches the cluster over HTTP only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Target, TargetArgs};
use crate::http::Http;
use crate::stats::Stats;
use crate::workloads;

/// Accounts the background purchase load spreads over.
pub const LOAD_ACCOUNTS: usize = 200;
/// Highest paced purchase rate card-check accepts (purchases/s).
pub const LOAD_RATE_MAX: u64 = 1_000_000;

#[derive(clap::Args, Debug)]
pub struct CardCheckArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value_t = 1000)]
    pub iterations: u64,
    #[arg(long, default_value_t = 7)]
    pub years: u64,
    /// Concurrent purchase clients while measuring (0: none).
    #[arg(long, default_value_t = 0)]
    pub load_clients: usize,
    /// Paced load: purchases per second over all load clients (each
    /// client waits for its next slot; one that falls behind does not
    /// burst). 0: each client sends its next purchase as soon as the last
    /// one is answered, which saturates the cluster.
    #[arg(long, default_value_t = 0)]
    pub load_rate: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CardCheckArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=1_000_000).contains(&a.iterations),
        "iterations must be 1..=1000000"
    );
    anyhow::ensure!((1..=10).contains(&a.years), "years must be 1..=10");
    anyhow::ensure!(
        a.load_clients <= workloads::CLIENTS_MAX,
        "load-clients must be 0..={}",
        workloads::CLIENTS_MAX
    );
    anyhow::ensure!(
        a.load_rate <= LOAD_RATE_MAX,
        "load-rate must be 0..={LOAD_RATE_MAX}"
    );
    anyhow::ensure!(
        a.load_rate == 0 || a.load_clients > 0,
        "load-rate needs load-clients"
    );
    // One client's gap between purchases when the load is paced.
    let pace = (a.load_rate > 0)
        .then(|| Duration::from_secs_f64(a.load_clients as f64 / a.load_rate as f64));
    let target = Target::resolve(&a.target)?;
    let ops = target.clients("ops", 0)?;
    let h = &ops[0];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let day_ms = 86_400_000i64;
    let run = workloads::run_id();
    let tariff = format!("BT{run}");
    h.send(
        true,
        &format!("/v1/tariffs/{tariff}"),
        &json!({"request_id": format!("bench-tariff-{run}"), "tariff_id": tariff, "kind": "flat",
                "price": "0.50", "effective_from": "2010-01-01T00:00:00Z"})
        .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("defining tariff: {e}"))?;
    let account = |id: &str, card: &str| {
        json!({"account_id": id, "name": "Bench", "address": "", "branch": "B01", "utility": "electricity",
               "meter_id": "", "tariff_id": tariff, "area": "0", "status": "active", "balance": "0.00",
               "opened_ms": now_ms - (a.years as i64 * 366 + 30) * day_ms, "closed_ms": null,
               "card_no": card, "card_generation": 1})
    };
    let record = |id: &str, card: &str, seq: u64, ts_ms: i64| {
        json!({"account_id": id, "kind": "purchase", "amount": "10.00", "units": "20.00", "ts_ms": ts_ms,
               "operator_id": "C-0101", "branch": "B01", "tariff_id": tariff, "invoice_no": "",
               "bank_code": "", "bank_ref": "", "card_no": card, "card_seq": seq})
    };
    let (long_id, long_card) = (format!("H{run}"), format!("CH{run}"));
    let (short_id, short_card) = (format!("R{run}"), format!("CR{run}"));
    let mut records = Vec::new();
    let history = a.years * 12;
    for i in 0..history {
        // Monthly purchases, oldest first, the last one a few days ago.
        let ts = now_ms - ((history - i) as i64 * 30 - 27) * day_ms;
        records.push(record(&long_id, &long_card, i + 1, ts));
    }
    records.push(record(&short_id, &short_card, 1, now_ms - 3 * day_ms));
    let load_cards: Vec<String> = (0..LOAD_ACCOUNTS).map(|k| format!("CL{run}-{k}")).collect();
    let mut accounts = vec![
        account(&long_id, &long_card),
        account(&short_id, &short_card),
    ];
    for (k, card) in load_cards
        .iter()
        .enumerate()
        .take(a.load_clients.min(LOAD_ACCOUNTS))
    {
        accounts.push(account(&format!("L{run}-{k}"), card));
    }
    h.post(
        "/v1/import",
        &json!({"request_id": format!("bench-import-{run}"), "accounts": accounts, "records": records})
            .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("importing: {e}"))?;
    h.send(
        true,
        "/v1/segments/boundary",
        &json!({"request_id": format!("bench-boundary-{run}"), "boundary_ms": now_ms - 30 * day_ms})
            .to_string(),
    )
    .map_err(|e| anyhow::anyhow!("setting the segment boundary: {e}"))?;

    // The counter sends its checks to the leader, as the Rust client does
    // (it follows the `billdb-leader` hint of every answer); a follower
    // would forward the read index and wait for its own apply.
    let leader = target.leader(Duration::from_secs(10))?;
    let first = target
        .nodes
        .iter()
        .position(|(id, _)| *id == leader)
        .unwrap_or(0);
    let counter = target.clients("counter", first)?;
    // Background purchase load until the measurement ends: one task per
    // load client, all on one thread (as the timed workloads run).
    let stop = Arc::new(AtomicBool::new(false));
    // Load purchases count in the results only while the checks are timed
    // (not during the warm-up second), so `load_purchase` ops/s is the rate
    // the checks ran under.
    let measuring = Arc::new(AtomicBool::new(false));
    let load_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load_accounts = a.load_clients.min(LOAD_ACCOUNTS);
    let mut load = Vec::new();
    for c in 0..a.load_clients {
        let nodes = target.async_clients("counter", c)?;
        load.push((nodes, load_cards[c % load_accounts.max(1)].clone()));
    }
    let loader = {
        let (stop, run) = (stop.clone(), run.clone());
        let (measuring, load_total) = (measuring.clone(), load_total.clone());
        std::thread::spawn(move || -> anyhow::Result<Stats> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                let n_clients = load.len().max(1);
                for (c, (mut nodes, card)) in load.into_iter().enumerate() {
                    let (stop, run) = (stop.clone(), run.clone());
                    let (measuring, load_total) = (measuring.clone(), load_total.clone());
                    tasks.spawn(async move {
                        let mut s = Stats::default();
                        let mut i = 0u64;
                        let mut first = 0usize;
                        // Clients spread over one gap: no bursts in step.
                        let mut slot = tokio::time::Instant::now()
                            + pace.map_or(Duration::ZERO, |g| g.mul_f64(c as f64 / n_clients as f64));
                        while !stop.load(Ordering::Relaxed) {
                            if let Some(gap) = pace {
                                tokio::time::sleep_until(slot).await;
                                slot = (slot + gap).max(tokio::time::Instant::now());
                            }
                            i += 1;
                            let body = json!({"request_id": format!("cl-{run}-{c}-{i}"), "card_no": card,
                                              "amount": format!("{}.{:02}", 10 + i % 200, i % 100), "confirm_duplicate": true})
                            .to_string();
                            let t = Instant::now();
                            let n = nodes.len();
                            let r = nodes[first % n].call("/v1/purchases", Some(&body)).await;
                            load_total.fetch_add(1, Ordering::Relaxed);
                            let timed = measuring.load(Ordering::Relaxed);
                            match r {
                                Ok(_) if timed => s.ok("load_purchase", t.elapsed().as_micros() as u64),
                                Ok(_) => {}
                                Err(e) => {
                                    first += 1;
                                    s.err("load_purchase", crate::http::code_of(&e));
                                }
                            }
                        }
                        s
                    });
                }
                let mut stats = Stats::default();
                while let Some(r) = tasks.join_next().await {
                    stats.merge(r.map_err(|e| anyhow::anyhow!("a load task failed: {e}"))?);
                }
                Ok(stats)
            })
        })
    };
    if a.load_clients > 0 {
        // Let the load reach a steady state first.
        std::thread::sleep(Duration::from_secs(1));
    }
    let c = &counter[0];
    let mut stats = Stats::default();
    let mut recent_long = 0usize;
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = target.cpu_sample();
    let started = Instant::now();
    let mut failure = None;
    'outer: for i in 0..a.iterations {
        for (label, id, card, seq) in [
            ("long_history", &long_id, &long_card, history),
            ("one_month", &short_id, &short_card, 1),
        ] {
            match check(c, id, card, seq) {
                Ok((verify_us, both_us, n)) => {
                    stats.ok(label, verify_us);
                    stats.ok(&format!("{label}_2calls"), both_us);
                    if label == "long_history" && i == 0 {
                        recent_long = n;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break 'outer;
                }
            }
        }
        if i % 1000 == 0 && !a.json {
            eprintln!("card-check: {i}/{}", a.iterations);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(target.cpu_sample());
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    match loader.join() {
        Ok(Ok(s)) => stats.merge(s),
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("the load thread panicked"),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let p = |k: &str, q: f64| stats.ops.get(k).map(|s| s.ms(q)).unwrap_or(0.0);
    let extra = json!({
        "long_history_records": history,
        "long_recent_records": recent_long,
        "load_clients": a.load_clients,
        "load_rate_target": a.load_rate,
        "load_purchases_total": load_total.load(Ordering::Relaxed),
        "ratio_p50": p("long_history", 0.5) / p("one_month", 0.5).max(0.001),
        "ratio_p99": p("long_history", 0.99) / p("one_month", 0.99).max(0.001),
    });
    let data = crate::load::DataArgs {
        seed: 0,
        accounts: 0,
        years: a.years as u32,
        per_year: 12,
        payments_per_year: 0,
        end_month: String::new(),
    };
    Ok(workloads::result_json(
        "card-check",
        1,
        secs,
        &stats,
        extra,
        &target,
        &data,
        // Per check (verify, then the segment as its own request), with
        // the background purchases' CPU in it.
        cpu.map(|(b, e)| {
            let checks = stats.count("long_history_2calls") + stats.count("one_month_2calls");
            crate::cluster::cpu_json(&b, &e, "check", checks)
        }),
    ))
}

/// A card check as a counter makes it: `POST /v1/cards/verify`, whose
/// answer carries the verdict and the recent segment (timed alone), then
/// the same segment again as its own `GET` (both timed together, for the
/// counter session's separate step). Returns (verify µs, verify + GET µs,
/// records in the recent segment); the two segments must agree.
fn check(h: &Http, id: &str, card: &str, seq: u64) -> anyhow::Result<(u64, u64, usize)> {
    let t = Instant::now();
    let verdict = h
        .post(
            "/v1/cards/verify",
            &json!({"card_no": card, "generation": 1, "seq_on_card": seq}).to_string(),
        )
        .map_err(|e| anyhow::anyhow!("verify: {e}"))?;
    let verify_us = t.elapsed().as_micros() as u64;
    let page = h
        .get(&format!(
            "/v1/accounts/{id}/records?segment=recent&limit=50"
        ))
        .map_err(|e| anyhow::anyhow!("recent segment: {e}"))?;
    let both_us = t.elapsed().as_micros() as u64;
    let n = page["records"].as_array().map(|r| r.len()).unwrap_or(0);
    let in_verify = verdict["recent"].as_array().map(|r| r.len());
    anyhow::ensure!(
        verdict["verdict"] == "OK" && in_verify.is_some(),
        "verify answered {verdict}"
    );
    Ok((verify_us, both_us, n))
}
