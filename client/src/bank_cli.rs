//! `billdb bank`: reconcile a bank's statement file against billdb's
//! payments of one business day, list those payments, and list the stored
//! reconciliations. Talks to a node's HTTP API (`/v1/banks/{bank_code}/…`).
//! The statement is checked here first (the node checks it again), so a
//! bad line is named before anything is sent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use billdb_client::client::new_request_id;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{EndpointArg, call_until_done, client};

/// The exit status of `billdb bank reconcile` when the statement and
/// billdb differ (0: they agree; 1: an error, nothing stored).
pub const EXIT_DIFFERENCES: u8 = 3;

#[derive(Subcommand)]
pub enum BankCmd {
    /// Match a bank's statement file (CSV: bank_ref,account_id,amount,time;
    /// a header line is optional) against billdb's payments of that bank on
    /// that business day (UTC, as `billdb report bank-daily`), store the
    /// result in the cluster (who, when, the file's SHA-256) and print it:
    /// matched, missing in billdb (with a `billdb pay` line to post each),
    /// posted on another day, missing in the bank's file, amount and
    /// account mismatches, reversed payments, and the totals both ways.
    /// Exit status: 0 when everything matched, 3 when there are
    /// differences (the result is stored either way), 1 on an error (a bad
    /// line of the file, named by its number; nothing is stored; with
    /// --json the error is also printed as {"error": {code, message,
    /// details}}).
    Reconcile {
        /// The statement file.
        file: PathBuf,
        /// The bank's code (a bank token may reconcile only its own).
        #[arg(long = "bank")]
        bank: String,
        /// The business day, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// Reuse to retry safely (a retry answers the stored result); a new
        /// one is made if absent, so each run is stored as its own record.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// One bank's payments of one business day, as billdb holds them
    /// (reversed ones marked).
    Payments {
        #[arg(long = "bank")]
        bank: String,
        /// YYYY-MM-DD
        #[arg(long)]
        date: String,
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// The stored reconciliations of a bank (of one day with --date): who
    /// reconciled, when, and the outcome.
    Reconciliations {
        #[arg(long = "bank")]
        bank: String,
        /// YYYY-MM-DD
        #[arg(long)]
        date: Option<String>,
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// Index the bank payments that a build without the bank-day index
    /// posted, so their days can be reconciled (ops; once, after upgrading
    /// from such a build). Reads every record, in bounded commands, with
    /// progress on stderr; safe to interrupt and run again (nothing is
    /// indexed twice). Needs cluster op level 4.
    IndexBackfill {
        /// Reuse to resume the same run; a new one is made if absent.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        ep: EndpointArg,
    },
}

pub fn run(cmd: BankCmd) -> Result<ExitCode> {
    match cmd {
        BankCmd::Reconcile {
            file,
            bank,
            date,
            request_id,
            ep,
        } => reconcile(&file, &bank, &date, request_id, &ep),
        BankCmd::IndexBackfill { request_id, ep } => {
            index_backfill(
                &ep,
                &request_id.unwrap_or_else(|| new_request_id("bank-index")),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        BankCmd::Payments { bank, date, ep } => {
            payments(&bank, &date, &ep)?;
            Ok(ExitCode::SUCCESS)
        }
        BankCmd::Reconciliations { bank, date, ep } => {
            let c = client(&ep)?;
            let mut path = format!("/v1/banks/{bank}/reconciliations");
            if let Some(d) = &date {
                path.push_str(&format!("?date={d}"));
            }
            let v = c.get(&path)?;
            if ep.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let list = v["reconciliations"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no reconciliation of bank {bank} stored");
            }
            for r in &list {
                println!(
                    "{}  {}  {}  by {} ({})  {}  file {} lines {}, billdb {} payments {}  [{}]",
                    s(r, "date"),
                    s(r, "recorded_at"),
                    if r["balanced"] == true {
                        "BALANCED".to_string()
                    } else {
                        format!("{} DIFFERENCES", r["differences"])
                    },
                    s(r, "recorded_by"),
                    s(r, "role"),
                    s(r, "file_name"),
                    r["totals"]["file"]["count"],
                    s(&r["totals"]["file"], "amount"),
                    r["totals"]["billdb"]["count"],
                    s(&r["totals"]["billdb"], "amount"),
                    s(r, "reconciliation_id"),
                );
            }
            if v["more"] == true {
                println!("(only the latest {} are shown)", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn reconcile(
    file: &PathBuf,
    bank: &str,
    date: &str,
    request_id: Option<String>,
    ep: &EndpointArg,
) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the statement {}", file.display()))?;
    if let Err(e) = billdb_api::statement::parse_csv(&text) {
        if ep.json {
            println!("{}", json!({"error": e}));
        }
        bail!("{}: {}: {}", file.display(), e.code.as_str(), e.message);
    }
    let c = client(ep)?;
    let request_id = request_id.unwrap_or_else(|| new_request_id("reconcile"));
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let body = json!({
        "request_id": request_id,
        "date": date,
        "csv": text,
        "file_name": file_name,
    });
    let v = match c.post(&format!("/v1/banks/{bank}/reconciliations"), &body) {
        Ok(v) => v,
        Err(e) => {
            if ep.json {
                let details = match &e {
                    billdb_client::admin::AdminError::Api { details, .. } => details.clone(),
                    _ => Value::Null,
                };
                println!(
                    "{}",
                    json!({"error": {"code": e.code().unwrap_or("UNAVAILABLE"),
                        "message": e.to_string(), "details": details}})
                );
            }
            return Err(e.into());
        }
    };
    if ep.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&v);
    }
    Ok(if v["balanced"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENCES)
    })
}

const CLASSES: &[(&str, &str)] = &[
    ("matched", "matched"),
    ("missing_in_billdb", "in the file, not in billdb"),
    ("posted_other_day", "in the file, in billdb on another day"),
    ("missing_in_bank", "in billdb, not in the file"),
    ("amount_mismatch", "amount mismatch"),
    ("account_mismatch", "account mismatch"),
    ("reversed_in_billdb", "in the file, reversed in billdb"),
    (
        "reversed_not_in_file",
        "reversed in billdb, not in the file",
    ),
];

fn print_summary(v: &Value) {
    let bank = s(v, "bank_code");
    println!(
        "bank {bank}, business day {} (UTC): {}",
        s(v, "date"),
        if v["balanced"] == true {
            "BALANCED, every line matched".to_string()
        } else {
            format!("{} DIFFERENCES", v["differences"])
        }
    );
    println!(
        "stored as {} at {} by {} ({}), billdb as of log index {}{}",
        s(v, "reconciliation_id"),
        s(v, "recorded_at"),
        s(v, "recorded_by"),
        s(v, "role"),
        v["as_of_index"],
        if v["replayed"] == true {
            " (this request_id was answered before: the stored result)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "{:<40} {:>7} {:>16} {:>16}",
        "", "count", "file amount", "billdb amount"
    );
    let t = &v["totals"];
    println!(
        "{:<40} {:>7} {:>16} {:>16}",
        "total: bank file",
        t["file"]["count"],
        s(&t["file"], "amount"),
        ""
    );
    println!(
        "{:<40} {:>7} {:>16} {:>16}",
        "total: billdb (payments standing)",
        t["billdb"]["count"],
        "",
        s(&t["billdb"], "amount")
    );
    println!(
        "{:<40} {:>7} {:>16}",
        "difference (file - billdb)",
        "",
        s(t, "difference")
    );
    for (k, label) in CLASSES {
        let c = &v[*k];
        println!(
            "{:<40} {:>7} {:>16} {:>16}",
            label,
            c["count"],
            s(c, "file_amount"),
            s(c, "billdb_amount")
        );
    }
    let items = v["items"].as_array().cloned().unwrap_or_default();
    for (k, label) in CLASSES.iter().skip(1) {
        let of: Vec<&Value> = items.iter().filter(|i| i["class"] == *k).collect();
        if of.is_empty() {
            continue;
        }
        println!();
        println!("{label}:");
        for i in of {
            let file_side = if i["line"].is_null() {
                String::new()
            } else {
                format!(
                    "line {} account {} amount {} at {}",
                    i["line"],
                    s(i, "file_account_id"),
                    s(i, "file_amount"),
                    s(i, "file_time")
                )
            };
            let billdb_side = if i["record_id"].is_null() && i["request_id"].is_null() {
                String::new()
            } else {
                let mut b = format!(
                    "billdb {} account {} amount {}",
                    s(i, "record_id"),
                    s(i, "billdb_account_id"),
                    s(i, "billdb_amount")
                );
                if !i["billdb_date"].is_null() {
                    b = format!(
                        "billdb {} on {} (request {})",
                        s(i, "record_id"),
                        s(i, "billdb_date"),
                        s(i, "request_id")
                    );
                }
                if !i["reversal_record_id"].is_null() {
                    b.push_str(&format!(", reversed by {}", s(i, "reversal_record_id")));
                }
                b
            };
            let sep = if file_side.is_empty() || billdb_side.is_empty() {
                ""
            } else {
                "; "
            };
            println!("  {}  {file_side}{sep}{billdb_side}", s(i, "bank_ref"));
            if let Some(cmd) = i["post_command"].as_str() {
                println!("    {cmd}");
            }
        }
    }
    if v["items_truncated"] == true {
        println!();
        println!(
            "(more differences than the stored list holds: the counts and totals above cover \
             every line; see --json)"
        );
    }
    if v["missing_in_billdb"]["count"].as_u64().unwrap_or(0) > 0 {
        println!();
        println!(
            "To post the payments missing in billdb, run the `billdb pay` lines above (with \
             --grpc/--token or BILLDB_GRPC/BILLDB_TOKEN); each is safe to run twice."
        );
    }
}

fn payments(bank: &str, date: &str, ep: &EndpointArg) -> Result<()> {
    let c = client(ep)?;
    let mut all: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    let last = loop {
        let mut path = format!("/v1/banks/{bank}/payments?date={date}&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let v = c.get(&path)?;
        all.extend(v["payments"].as_array().cloned().unwrap_or_default());
        after = v["next_after"].as_str().map(str::to_string);
        if after.is_none() {
            break v;
        }
    };
    if ep.json {
        let out = json!({
            "bank_code": bank,
            "date": date,
            "payments": all,
            "day_total": last["day_total"],
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for p in &all {
        println!(
            "{:<24} {:<20} {:>14}  {}  {}{}",
            s(p, "bank_ref"),
            s(p, "record_id"),
            s(p, "amount"),
            s(p, "ts"),
            s(p, "account_id"),
            if p["reversed_by"].is_null() {
                String::new()
            } else {
                format!("  REVERSED by {}", s(p, "reversed_by"))
            }
        );
    }
    println!(
        "bank {bank}, {date}: {} payments, {} (as the bank-daily report counts them, reversals apart)",
        last["day_total"]["count"],
        s(&last["day_total"], "amount")
    );
    Ok(())
}

/// Calls the node until every record was looked at; progress on stderr,
/// the totals on stdout (JSON with --json).
fn index_backfill(ep: &EndpointArg, request_id: &str) -> Result<()> {
    let c = client(ep)?;
    let started = std::time::Instant::now();
    let (mut looked, mut indexed, mut already, mut calls) = (0u64, 0u64, 0u64, 0u64);
    call_until_done(&c, "/v1/bank-index/backfill", request_id, true, |v| {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        calls += 1;
        looked += n("records_looked_at");
        indexed += n("indexed");
        already += n("already_indexed");
        let secs = started.elapsed().as_secs_f64().max(0.001);
        format!(
            "bank index backfill: {looked} records looked at, {indexed} payments indexed \
             ({:.0} records/s)",
            looked as f64 / secs
        )
    })?;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if ep.json {
        let v = json!({"request_id": request_id, "records_looked_at": looked,
            "indexed": indexed, "already_indexed": already, "calls": calls, "ms": ms});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "bank index backfill {request_id}: done in {:.1} s: {looked} records looked at, \
             {indexed} payments indexed, {already} indexed already",
            ms as f64 / 1000.0
        );
    }
    Ok(())
}
