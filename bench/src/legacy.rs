//! The legacy migration path at scale: the generated dataset written as a
//! legacy system's CSV files (accounts, cards, records, mapping; each
//! account's legacy balance what its records imply), then `billdb import`
//! run on them as an operator runs it, timed as a whole process, and its
//! reconciliation read back (totals must agree, no difference expected).
//! Touches: the files directory it is given, the `billdb` binary beside
//! this one, and the cluster through it.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use billdb_client::migrate::legacy::{ACCOUNT_COLUMNS, CARD_COLUMNS, RECORD_COLUMNS};

use crate::cluster::{Target, TargetArgs};
use crate::dataset::{Spec, tariffs};
use crate::load::DataArgs;

#[derive(clap::Args, Debug)]
pub struct LegacyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where the CSV files and the import's output go.
    #[arg(long)]
    pub files: PathBuf,
    /// Batches in flight (`billdb import --loaders`).
    #[arg(long, default_value_t = 8)]
    pub loaders: usize,
    #[arg(long)]
    pub json: bool,
}

fn ts(ms: i64) -> String {
    let (y, m, d) = billdb_node::domain::calendar::civil(ms);
    let s = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Writes the four files; returns the number of records.
fn write_files(spec: &Spec, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let open = |name: &str| -> anyhow::Result<csv::Writer<BufWriter<std::fs::File>>> {
        let f = std::fs::File::create(dir.join(name))
            .with_context(|| format!("creating {}", dir.join(name).display()))?;
        Ok(csv::Writer::from_writer(BufWriter::with_capacity(
            1 << 20,
            f,
        )))
    };
    let mut accounts = open("accounts.csv")?;
    let mut cards = open("cards.csv")?;
    let mut records = open("records.csv")?;
    accounts.write_record(ACCOUNT_COLUMNS)?;
    cards.write_record(CARD_COLUMNS)?;
    records.write_record(RECORD_COLUMNS)?;
    let mut n = 0u64;
    for i in 0..spec.accounts {
        let a = spec.account(i);
        let acc = &a.account;
        // The legacy balance: what the records imply (payments).
        let balance: Decimal = a
            .sums
            .iter()
            .filter(|(_, k, _)| *k == "payment")
            .map(|(_, _, v)| *v)
            .sum();
        let opened = acc["opened_ms"].as_i64().unwrap_or(0);
        accounts.write_record([
            s(&acc["account_id"]),
            s(&acc["name"]),
            s(&acc["address"]),
            s(&acc["branch"]),
            s(&acc["utility"]),
            s(&acc["meter_id"]),
            s(&acc["tariff_id"]),
            s(&acc["area"]),
            s(&acc["status"]),
            format!("{balance:.2}"),
            ts(opened),
            String::new(),
        ])?;
        cards.write_record([
            s(&acc["card_no"]),
            s(&acc["account_id"]),
            s(&acc["card_generation"]),
            "active".into(),
        ])?;
        for r in &a.records {
            let card_seq = r["card_seq"].as_u64().unwrap_or(0);
            records.write_record([
                s(&r["account_id"]),
                s(&r["kind"]),
                s(&r["amount"]),
                s(&r["units"]),
                ts(r["ts_ms"].as_i64().unwrap_or(0)),
                s(&r["operator_id"]),
                s(&r["branch"]),
                s(&r["tariff_id"]),
                s(&r["invoice_no"]),
                s(&r["bank_code"]),
                s(&r["bank_ref"]),
                s(&r["card_no"]),
                if card_seq == 0 {
                    String::new()
                } else {
                    card_seq.to_string()
                },
            ])?;
            n += 1;
        }
        if i % 50_000 == 0 && i > 0 {
            eprintln!("legacy files: {i} of {} accounts written", spec.accounts);
        }
    }
    for w in [&mut accounts, &mut cards, &mut records] {
        w.flush()?;
    }
    let mut m = BufWriter::new(std::fs::File::create(dir.join("mapping.csv"))?);
    writeln!(m, "category,legacy,billdb")?;
    for t in tariffs() {
        writeln!(m, "tariff,{},{}", t.id, t.id)?;
    }
    m.flush()?;
    Ok(n)
}

pub fn run(a: LegacyArgs) -> anyhow::Result<Value> {
    let spec = a.data.spec()?;
    let target = Target::resolve(&a.target)?;
    let cluster = target
        .cluster
        .as_ref()
        .context("the legacy bench needs --dir (a local cluster)")?;
    let files = a.files.join("in");
    let t0 = Instant::now();
    let records = write_files(&spec, &files)?;
    let write_s = t0.elapsed().as_secs_f64();
    let out = a.files.join(format!("out-{}", std::process::id()));
    let billdb = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join("billdb");
    let grpc: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .map(|n| cluster.grpc_addr(n))
        .collect::<anyhow::Result<_>>()?;
    let token = target.token("ops")?.context("an ops token")?;
    let mut cmd = Command::new(&billdb);
    cmd.arg("import");
    for (flag, f) in [
        ("--accounts", "accounts.csv"),
        ("--cards", "cards.csv"),
        ("--records", "records.csv"),
        ("--mapping", "mapping.csv"),
    ] {
        cmd.arg(flag).arg(files.join(f));
    }
    cmd.arg("--out")
        .arg(&out)
        .arg("--loaders")
        .arg(a.loaders.to_string())
        .arg("--json")
        .env("BILLDB_GRPC", grpc.join(","))
        .env("BILLDB_TOKEN", token)
        .env_remove("BILLDB_CA");
    if let Some(dir) = &a.target.dir {
        let ca = dir.join("tls/ca.pem");
        if ca.exists() {
            cmd.env("BILLDB_CA", ca);
        }
    }
    let t1 = Instant::now();
    let res = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", billdb.display()))?;
    let import_s = t1.elapsed().as_secs_f64();
    let summary: Value = serde_json::from_slice(&res.stdout).with_context(|| {
        format!(
            "billdb import printed no summary (exit {:?})",
            res.status.code()
        )
    })?;
    ensure!(
        res.status.success(),
        "billdb import exited {:?}",
        res.status.code()
    );
    let imported = summary["rows"]["records.csv"]["imported"]
        .as_u64()
        .unwrap_or(0);
    Ok(json!({
        "bench": "legacy-import",
        "dataset": {"seed": spec.seed, "accounts": spec.accounts, "years": spec.years,
                     "per_year": spec.per_year, "payments_per_year": spec.payments_per_year,
                     "records": records},
        "loaders": a.loaders,
        "files_written_s": write_s,
        "import_process_s": import_s,
        "records_imported": imported,
        "records_per_s_whole_process": imported as f64 / import_s.max(0.001),
        "import_reported_records_per_s": summary["records_per_s"],
        "rejected": summary["rows"]["records.csv"]["rejected"],
        "differences": summary["differences"].as_array().map_or(0, Vec::len),
        "totals_agree": summary["totals"]["agree"],
        "machine": crate::cluster::machine(&a.files),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "legacy import: {} records in {:.1} s = {:.0} records/s (whole `billdb import` process, {} loaders); files written in {:.1} s; {} rejected, {} differences, totals agree: {}",
        v["records_imported"],
        v["import_process_s"].as_f64().unwrap_or(0.0),
        v["records_per_s_whole_process"].as_f64().unwrap_or(0.0),
        v["loaders"],
        v["files_written_s"].as_f64().unwrap_or(0.0),
        v["rejected"],
        v["differences"],
        v["totals_agree"],
    );
}
