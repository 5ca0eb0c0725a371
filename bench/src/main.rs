//! `billdb-bench`: load generator for a running billdb cluster.
//!
//! `writes`: replicated durable writes (bank payments) from N concurrent
//! clients for a fixed time, spread over the given gRPC endpoints; reports
//! throughput and latency percentiles (hdrhistogram) as a table or JSON.

use std::time::{Duration, Instant};

use anyhow::Context;
use billdb_api::pb::billing_client::BillingClient;
use billdb_api::pb::{OpenAccountRequest, PaymentRequest};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "billdb-bench", about = "billdb benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Card verify + recent segment latency: long history vs one month.
    CardCheck(CardCheckArgs),
    /// Durable replicated writes: bank payments.
    Writes {
        /// Client gRPC endpoints (host:port), comma separated.
        #[arg(
            long,
            default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105"
        )]
        endpoints: String,
        /// Concurrent clients (each waits for its answer before the next request).
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Accounts the payments spread over.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Send every request to the first endpoint only (the leader, say).
        #[arg(long)]
        single_endpoint: bool,
        #[arg(long)]
        json: bool,
        /// Bearer token (ops), e.g. from `billdb local token ops`.
        #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Card check cost against history length: one account with `years` × 12
/// purchases, one with a month; each iteration verifies the card and reads
/// the recent segment through HTTP (linearizable), as a counter does.
#[derive(clap::Args)]
struct CardCheckArgs {
    /// Any node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    http: String,
    /// Ops token (`billdb local token ops`).
    #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, default_value_t = 1000)]
    iterations: u64,
    #[arg(long, default_value_t = 7)]
    years: u64,
    #[arg(long)]
    json: bool,
}

/// Most clients one run may start.
const CLIENTS_MAX: usize = 1024;

type Client = BillingClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token to every request.
#[derive(Clone)]
struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

async fn connect(addr: &str, token: &Option<String>) -> anyhow::Result<Client> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting {addr}"))?;
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("token is not ASCII")?,
        ),
        None => None,
    };
    Ok(BillingClient::with_interceptor(ch, Auth(header)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CardCheck(a) => card_check(a)?,
        Cmd::Writes {
            endpoints,
            clients,
            duration_s,
            accounts,
            single_endpoint,
            json,
            token,
        } => {
            anyhow::ensure!(
                (1..=CLIENTS_MAX).contains(&clients),
                "clients must be 1..={CLIENTS_MAX}"
            );
            anyhow::ensure!(accounts >= 1, "accounts must be >= 1");
            let eps: Vec<String> = endpoints
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            anyhow::ensure!(!eps.is_empty(), "no endpoints");
            let run = std::process::id();
            let mut setup = connect(&eps[0], &token).await?;
            eprintln!("bench: opening {accounts} accounts");
            for a in 0..accounts {
                let id = format!("BENCH-{run}-{a}");
                setup
                    .open_account(OpenAccountRequest {
                        request_id: format!("bench-open-{run}-{a}"),
                        account_id: id,
                        name: "Bench".into(),
                        branch: "B01".into(),
                        utility: "heat".into(),
                        ..Default::default()
                    })
                    .await
                    .context("opening accounts")?;
            }
            eprintln!("bench: {clients} clients for {duration_s}s");
            let deadline = Instant::now() + Duration::from_secs(duration_s);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let ep = if single_endpoint {
                    eps[0].clone()
                } else {
                    eps[c % eps.len()].clone()
                };
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let mut client = connect(&ep, &token).await?;
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let mut errors = 0u64;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let a = (c + i as usize * 7919) % accounts;
                        let t = Instant::now();
                        let r = client
                            .post_payment(PaymentRequest {
                                request_id: format!("bench-{run}-{c}-{i}"),
                                account_id: format!("BENCH-{run}-{a}"),
                                amount: "10.00".into(),
                                bank_code: "BENCH".into(),
                                bank_ref: format!("{run}-{c}-{i}"),
                            })
                            .await;
                        match r {
                            Ok(_) => hist.record(t.elapsed().as_micros().max(1) as u64)?,
                            Err(_) => errors += 1,
                        }
                        i += 1;
                    }
                    Ok::<_, anyhow::Error>((hist, errors))
                }));
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0;
            for t in tasks {
                let (h, e) = t.await??;
                hist.add(h)?;
                errors += e;
            }
            let secs = started.elapsed().as_secs_f64();
            let ops = hist.len();
            let report = serde_json::json!({
                "workload": "payment_writes",
                "clients": clients,
                "duration_s": secs,
                "ok": ops,
                "errors": errors,
                "ops_per_s": ops as f64 / secs,
                "latency_ms": {
                    "p50": hist.value_at_quantile(0.50) as f64 / 1000.0,
                    "p90": hist.value_at_quantile(0.90) as f64 / 1000.0,
                    "p99": hist.value_at_quantile(0.99) as f64 / 1000.0,
                    "max": hist.max() as f64 / 1000.0,
                },
                "endpoints": if single_endpoint { vec![eps[0].clone()] } else { eps.clone() },
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "payment writes  clients={clients}  ok={ops}  errors={errors}  {:.0} ops/s  p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
                    ops as f64 / secs,
                    hist.value_at_quantile(0.50) as f64 / 1000.0,
                    hist.value_at_quantile(0.90) as f64 / 1000.0,
                    hist.value_at_quantile(0.99) as f64 / 1000.0,
                    hist.max() as f64 / 1000.0
                );
            }
        }
    }
    Ok(())
}

fn card_check(a: CardCheckArgs) -> anyhow::Result<()> {
    use billdb_client::admin::AdminClient;
    use serde_json::json;
    anyhow::ensure!(
        (1..=1_000_000).contains(&a.iterations),
        "iterations must be 1..=1000000"
    );
    anyhow::ensure!((1..=10).contains(&a.years), "years must be 1..=10");
    let h = AdminClient::with_timeout(&a.http, Duration::from_secs(10))
        .with_token(Some(a.token.clone()));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let day_ms = 86_400_000i64;
    let run = std::process::id();
    let tariff = format!("BT{run}");
    h.put_json(
        &format!("/v1/tariffs/{tariff}"),
        &json!({"request_id": format!("bench-tariff-{run}"), "tariff_id": tariff, "kind": "flat",
                "price": "0.50", "effective_from": "2010-01-01T00:00:00Z"}),
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
    h.post(
        "/v1/import",
        &json!({"request_id": format!("bench-import-{run}"),
                "accounts": [account(&long_id, &long_card), account(&short_id, &short_card)],
                "records": records}),
    )
    .map_err(|e| anyhow::anyhow!("importing: {e}"))?;
    h.put_json(
        "/v1/segments/boundary",
        &json!({"request_id": format!("bench-boundary-{run}"), "boundary_ms": now_ms - 30 * day_ms}),
    )
    .map_err(|e| anyhow::anyhow!("setting the segment boundary: {e}"))?;
    let mut hist_long = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut hist_short = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut recent_long = 0usize;
    for i in 0..a.iterations {
        for (id, card, seq, hist) in [
            (&long_id, &long_card, history, &mut hist_long),
            (&short_id, &short_card, 1, &mut hist_short),
        ] {
            let t = Instant::now();
            h.post(
                "/v1/cards/verify",
                &json!({"card_no": card, "generation": 1, "seq_on_card": seq}),
            )
            .map_err(|e| anyhow::anyhow!("verify: {e}"))?;
            let page = h
                .get(&format!(
                    "/v1/accounts/{id}/records?segment=recent&limit=50"
                ))
                .map_err(|e| anyhow::anyhow!("recent segment: {e}"))?;
            hist.record(t.elapsed().as_micros().max(1) as u64)?;
            if i == 0 && *id == long_id {
                recent_long = page["records"].as_array().map(|r| r.len()).unwrap_or(0);
            }
        }
        if i % 200 == 0 {
            eprintln!("bench: card check {i}/{}", a.iterations);
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "workload": "card_verify_plus_recent_segment",
        "iterations": a.iterations,
        "long_history_records": history,
        "long_recent_records": recent_long,
        "long_ms": {"p50": ms(&hist_long, 0.5), "p90": ms(&hist_long, 0.9), "p99": ms(&hist_long, 0.99)},
        "one_month_ms": {"p50": ms(&hist_short, 0.5), "p90": ms(&hist_short, 0.9), "p99": ms(&hist_short, 0.99)},
        "ratio_p50": ms(&hist_long, 0.5) / ms(&hist_short, 0.5),
        "ratio_p99": ms(&hist_long, 0.99) / ms(&hist_short, 0.99),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "card verify + recent segment: {} years x 12 records p50 {:.3} ms p99 {:.3} ms | one month p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.3} p99 {:.3}",
            a.years,
            ms(&hist_long, 0.5),
            ms(&hist_long, 0.99),
            ms(&hist_short, 0.5),
            ms(&hist_short, 0.99),
            report["ratio_p50"].as_f64().unwrap_or(0.0),
            report["ratio_p99"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
