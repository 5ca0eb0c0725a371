//! `writes`: replicated durable writes (bank payments) from N concurrent
//! clients over gRPC for a fixed time, spread over the given endpoints;
//! throughput and latency percentiles. Touches the cluster over gRPC only.

use std::time::{Duration, Instant};

use anyhow::Context;
use billdb_api::pb2::billing_client::BillingClient;
use billdb_api::pb2::{OpenAccountRequest, PaymentRequest};
use hdrhistogram::Histogram;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(clap::Args, Debug)]
pub struct WritesArgs {
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
    /// CA certificate of the cluster (TLS endpoints), e.g. DIR/tls/ca.pem.
    #[arg(long, env = "BILLDB_CA")]
    ca: Option<std::path::PathBuf>,
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

async fn connect(
    addr: &str,
    token: &Option<String>,
    tls: Option<&billdb_client::tls::ClientTls>,
) -> anyhow::Result<Client> {
    let url = billdb_client::admin::normalize_endpoint_for(addr, tls.is_some());
    let mut endpoint = Endpoint::from_shared(url)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.tonic_config())?;
    }
    let ch = endpoint
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

pub async fn run(a: WritesArgs) -> anyhow::Result<()> {
    let WritesArgs {
        endpoints,
        clients,
        duration_s,
        accounts,
        single_endpoint,
        json,
        token,
        ca,
    } = a;
    let tls = ca
        .as_deref()
        .map(|p| billdb_client::tls::ClientTls::from_files(p, None))
        .transpose()?;

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
    let mut setup = connect(&eps[0], &token, tls.as_ref()).await?;
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
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&ep, &token, tls.as_ref()).await?;
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
    Ok(())
}
