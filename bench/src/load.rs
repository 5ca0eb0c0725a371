//! `load`: the generated dataset into a running cluster through the
//! replicated bulk path (`POST /v1/import`, whole accounts per command,
//! bodies under the node's request size limit), several importer threads
//! spread over the nodes; then the recent-segment boundary at the start of
//! the last month, and a check that the last month's report equals what was
//! generated. Import request ids depend only on the dataset and batching,
//! so a rerun resumes (replays are answered from the stored outcome).
//! Touches the cluster over HTTP only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::cluster::{Target, TargetArgs};
use crate::dataset::{self, MonthTotals, Spec};
use crate::http::{Http, code_of, retryable};
use crate::progress::Progress;

/// Most items (accounts + records) in one import command (the node's limit).
pub const IMPORT_ITEMS_MAX: usize = 1000;
/// Default import body budget: under the node's default 1 MiB import body
/// limit (`limits.import_body_bytes_max`); 1,000 items come first.
pub const BATCH_BYTES_DEFAULT: usize = 1_000_000;
/// Largest body budget accepted (nodes configured for more).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Most importer threads.
pub const LOADERS_MAX: usize = 256;
/// How long one batch is retried (other nodes, new leader) before giving up.
pub const RETRY_WINDOW_MS: u64 = 120_000;

/// Scale and seed of the dataset (shared by `load` and the workloads).
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 600_000)]
    pub accounts: u64,
    #[arg(long, default_value_t = 7)]
    pub years: u32,
    /// Purchases per account and year.
    #[arg(long, default_value_t = 12)]
    pub per_year: u32,
    /// Bank payments per account and year.
    #[arg(long, default_value_t = 1)]
    pub payments_per_year: u32,
    /// Last month with data (YYYY-MM); the dataset does not depend on today.
    #[arg(long, default_value = "2026-10")]
    pub end_month: String,
}

impl DataArgs {
    pub fn spec(&self) -> anyhow::Result<Spec> {
        let s = Spec {
            seed: self.seed,
            accounts: self.accounts,
            years: self.years,
            per_year: self.per_year,
            payments_per_year: self.payments_per_year,
            end_month: self.end_month.clone(),
        };
        s.validate()?;
        Ok(s)
    }
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Concurrent importer threads (spread over the nodes).
    #[arg(long, default_value_t = 8)]
    pub loaders: usize,
    /// Import body budget in bytes (whole accounts per command).
    #[arg(long, default_value_t = BATCH_BYTES_DEFAULT)]
    pub batch_bytes: usize,
    #[arg(long)]
    pub json: bool,
}

struct Batch {
    no: u64,
    body: String,
    records: u64,
}

/// Builds import bodies from the generator; adds the last month's totals.
fn produce(
    spec: &Spec,
    batch_bytes: usize,
    tx: std::sync::mpsc::SyncSender<Batch>,
    abort: &AtomicBool,
) -> anyhow::Result<(MonthTotals, u64)> {
    let mut totals = MonthTotals::new();
    let prefix = format!(
        "imp-s{}-a{}-y{}-p{}-b{}-k{}",
        spec.seed, spec.accounts, spec.years, spec.per_year, spec.payments_per_year, batch_bytes
    );
    let mut accounts: Vec<String> = Vec::new();
    let mut records: Vec<String> = Vec::new();
    let (mut bytes, mut no) = (0usize, 0u64);
    let flush = |accounts: &mut Vec<String>,
                 records: &mut Vec<String>,
                 bytes: &mut usize,
                 no: &mut u64|
     -> anyhow::Result<()> {
        if accounts.is_empty() && records.is_empty() {
            return Ok(());
        }
        let body = format!(
            "{{\"request_id\":\"{prefix}-{no}\",\"accounts\":[{}],\"records\":[{}]}}",
            accounts.join(","),
            records.join(",")
        );
        let b = Batch {
            no: *no,
            body,
            records: records.len() as u64,
        };
        tx.send(b)
            .map_err(|_| anyhow::anyhow!("importers stopped"))?;
        *no += 1;
        accounts.clear();
        records.clear();
        *bytes = 0;
        Ok(())
    };
    for i in 0..spec.accounts {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let d = spec.account(i);
        dataset::add_month_totals(&mut totals, &d, &spec.end_month);
        let a = d.account.to_string();
        let rs: Vec<String> = d.records.iter().map(|r| r.to_string()).collect();
        let size = a.len() + rs.iter().map(|r| r.len() + 1).sum::<usize>() + 1;
        let items = 1 + rs.len();
        anyhow::ensure!(
            size + 200 <= batch_bytes && items <= IMPORT_ITEMS_MAX,
            "one account's data ({size} bytes, {items} items) does not fit one import \
             (--batch-bytes {batch_bytes}, {IMPORT_ITEMS_MAX} items): lower --years/--per-year"
        );
        if bytes + size + 200 > batch_bytes
            || accounts.len() + records.len() + items > IMPORT_ITEMS_MAX
        {
            flush(&mut accounts, &mut records, &mut bytes, &mut no)?;
        }
        accounts.push(a);
        records.extend(rs);
        bytes += size;
    }
    flush(&mut accounts, &mut records, &mut bytes, &mut no)?;
    Ok((totals, no))
}

/// Sends `body` (POST, or PUT with `put`) to the nodes in turn until it
/// is acknowledged, refused for good, or the retry window ends. Returns the
/// answer.
pub fn send_retrying(
    nodes: &[Http],
    first: &mut usize,
    put: bool,
    path: &str,
    body: &str,
    window: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + window;
    loop {
        let h = &nodes[*first % nodes.len()];
        match h.send(put, path, body) {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                *first += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => anyhow::bail!("{path} at {}: {e} ({})", h.endpoint(), code_of(&e)),
        }
    }
}

fn importer(
    nodes: Vec<Http>,
    rx: Arc<Mutex<Receiver<Batch>>>,
    done: Arc<AtomicU64>,
    commands: Arc<AtomicU64>,
    abort: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut first = 0usize;
    loop {
        let next = rx.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.recv();
        let Ok(b) = next else { return Ok(()) };
        if abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let r = send_retrying(
            &nodes,
            &mut first,
            false,
            "/v1/import",
            &b.body,
            Duration::from_millis(RETRY_WINDOW_MS),
        );
        match r {
            Ok(v) if v["result"] == "imported" => {
                done.fetch_add(b.records, Ordering::Relaxed);
                commands.fetch_add(1, Ordering::Relaxed);
            }
            Ok(v) => {
                abort.store(true, Ordering::Relaxed);
                anyhow::bail!("import batch {}: unexpected answer {v}", b.no);
            }
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                return Err(e.context(format!("import batch {}", b.no)));
            }
        }
    }
}

/// Defines the dataset's tariffs (idempotent).
pub fn define_tariffs(ops: &Http) -> anyhow::Result<()> {
    for t in dataset::tariffs() {
        let mut body = (t.body)();
        body["request_id"] = json!(format!("bench-tariff-{}", t.id));
        body["effective_from"] = json!("2000-01-01T00:00:00Z");
        ops.send(true, &format!("/v1/tariffs/{}", t.id), &body.to_string())
            .map_err(|e| anyhow::anyhow!("defining tariff {}: {e}", t.id))?;
    }
    Ok(())
}

/// The month's report over the dataset's own tariffs, by kind: kind →
/// (count, amount). Other benchmark runs on the same cluster (the card
/// check imports history under a tariff of its own; workloads buy on the
/// day they run) do not change it.
pub fn report_by_kind(h: &Http, month: &str) -> anyhow::Result<BTreeMap<String, (u64, Decimal)>> {
    let v = h
        .get(&format!(
            "/v1/reports/monthly?month={month}&group_by=tariff"
        ))
        .map_err(|e| anyhow::anyhow!("monthly report: {e}"))?;
    anyhow::ensure!(
        v["truncated"] != true,
        "the month's report by tariff was truncated"
    );
    let ours: Vec<&str> = dataset::tariffs().iter().map(|t| t.id).collect();
    let mut out = BTreeMap::new();
    for l in v["lines"].as_array().cloned().unwrap_or_default() {
        if !ours.contains(&l["value"].as_str().unwrap_or("")) {
            continue;
        }
        let kind = l["kind"].as_str().unwrap_or("").to_string();
        let amount: Decimal = l["amount"].as_str().unwrap_or("0").parse()?;
        let e = out.entry(kind).or_insert((0u64, Decimal::ZERO));
        e.0 += l["count"].as_u64().unwrap_or(0);
        e.1 += amount;
    }
    Ok(out)
}

fn totals_json(t: &BTreeMap<String, (u64, Decimal)>) -> Value {
    t.iter()
        .map(|(k, (c, a))| (k.clone(), json!({"count": c, "amount": a.to_string()})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub fn run(a: LoadArgs) -> anyhow::Result<Value> {
    let spec = a.data.spec()?;
    anyhow::ensure!(
        (1..=LOADERS_MAX).contains(&a.loaders),
        "loaders must be 1..={LOADERS_MAX}"
    );
    anyhow::ensure!(
        (4096..=BATCH_BYTES_MAX).contains(&a.batch_bytes),
        "batch-bytes must be 4096..={BATCH_BYTES_MAX}"
    );
    let target = Target::resolve(&a.target)?;
    let ops = target.clients("ops", 0)?;
    define_tariffs(&ops[0])?;
    let total = spec.total_records();
    eprintln!(
        "load: {} accounts x {} years x ({} purchases + {} payments) = {total} records, {} importers",
        spec.accounts, spec.years, spec.per_year, spec.payments_per_year, a.loaders
    );
    let (tx, rx) = sync_channel::<Batch>(a.loaders * 4);
    let rx = Arc::new(Mutex::new(rx));
    let abort = Arc::new(AtomicBool::new(false));
    let commands = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("load records", total, a.json);
    let cpu_before = target.cpu_sample();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.loaders {
        let nodes = target.clients("ops", w)?;
        let (rx, done, commands, abort) = (
            rx.clone(),
            progress.done.clone(),
            commands.clone(),
            abort.clone(),
        );
        workers.push(std::thread::spawn(move || {
            importer(nodes, rx, done, commands, abort)
        }));
    }
    let produced = produce(&spec, a.batch_bytes, tx, &abort);
    let mut first_err = None;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("importer panicked"))),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(target.cpu_sample());
    let imported = progress.done.load(Ordering::Relaxed);
    progress.finish();
    if let Some(e) = first_err {
        return Err(e);
    }
    let (expected, batches) = produced?;
    anyhow::ensure!(
        imported == total,
        "imported {imported} records, expected {total}"
    );
    // Recent segment = the last month of data (and everything after).
    let boundary = spec.last_month_start_ms();
    let mut first = 0;
    send_retrying(
        &ops,
        &mut first,
        true,
        "/v1/segments/boundary",
        &json!({"request_id": format!("bench-boundary-{boundary}"), "boundary_ms": boundary})
            .to_string(),
        Duration::from_millis(RETRY_WINDOW_MS),
    )?;
    let got = report_by_kind(&ops[0], &spec.end_month)?;
    let report_matches = got == expected;
    Ok(json!({
        "workload": "load",
        "dataset": {"seed": spec.seed, "accounts": spec.accounts, "years": spec.years,
                    "per_year": spec.per_year, "payments_per_year": spec.payments_per_year,
                    "end_month": spec.end_month},
        "loaders": a.loaders,
        "batch_bytes": a.batch_bytes,
        "import_commands": batches,
        "records_expected": total,
        "records_imported": imported,
        "accounts_imported": spec.accounts,
        "seconds": secs,
        "records_per_s": imported as f64 / secs,
        "items_per_s": (imported + spec.accounts) as f64 / secs,
        "segment_boundary_ms": boundary,
        "node_cpu": cpu.map(|(b, e)| crate::cluster::cpu_json(&b, &e, "record", imported)),
        "report_check": {"month": spec.end_month, "expected": totals_json(&expected),
                         "got": totals_json(&got), "matches": report_matches},
        "usage": target.usage(),
        "settings": target.settings(),
        "machine": crate::cluster::machine(&target.cluster.as_ref().map(|c| c.dir().to_path_buf()).unwrap_or_default()),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "load: {} records ({} accounts) in {:.1} s = {:.0} records/s over {} import commands; last-month report {}",
        v["records_imported"],
        v["accounts_imported"],
        v["seconds"].as_f64().unwrap_or(0.0),
        v["records_per_s"].as_f64().unwrap_or(0.0),
        v["import_commands"],
        if v["report_check"]["matches"] == true {
            "matches the generated data"
        } else {
            "DOES NOT match the generated data"
        }
    );
    crate::print_usage(v);
}
