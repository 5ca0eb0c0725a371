//! `billdb import`: a legacy system's CSV files into billdb with a rejects
//! file and a reconciliation report (`billdb_client::migrate`; the columns
//! are in docs/MIGRATION.md). Prints a summary; exit 3 when billdb's totals
//! after the import differ from the imported rows'.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use std::io::IsTerminal;

use billdb_client::migrate::{self, BATCH_BYTES_DEFAULT, Opts, Summary, legacy};

use crate::billing_cli::ConnArg;

/// The exit status when billdb's totals differ from the files'.
pub const EXIT_TOTALS_DIFFER: u8 = 3;

#[derive(Args)]
pub struct ImportArgs {
    /// accounts.csv: account_id,name,address,branch,utility,meter_id,
    /// tariff_code,area_m2,status,balance,opened,closed
    #[arg(long)]
    accounts: PathBuf,
    /// cards.csv: card_no,account_id,generation,status
    #[arg(long)]
    cards: Option<PathBuf>,
    /// records.csv: account_id,kind,amount,units,time,operator,branch,
    /// tariff_code,invoice_no,bank_code,bank_ref,card_no,card_seq (in time
    /// order per account)
    #[arg(long)]
    records: Option<PathBuf>,
    /// mapping.csv: category,legacy,billdb (categories tariff, branch,
    /// utility, status, kind)
    #[arg(long)]
    mapping: PathBuf,
    /// Directory for rejects.csv, progress.jsonl (resume: run the same
    /// command again), reconciliation.json and differences.csv.
    #[arg(long)]
    out: PathBuf,
    /// Offset of legacy times without one.
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
    utc_offset: String,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    loaders: usize,
    /// Most rows per batch (the node's limit is 1000).
    #[arg(long, default_value_t = 1000)]
    batch_items: usize,
    /// Most bytes per batch body (under the node's limits.import_body_bytes_max).
    #[arg(long, default_value_t = BATCH_BYTES_DEFAULT)]
    batch_bytes: usize,
    /// Bound on retrying one batch across nodes (a leader election, a
    /// restarted node).
    #[arg(long, default_value_t = 60)]
    retry_secs: u64,
    #[command(flatten)]
    conn: ConnArg,
}

pub fn run(a: ImportArgs) -> ExitCode {
    let json = a.conn.json;
    match run_inner(a) {
        Ok(s) => {
            if json {
                match serde_json::to_string_pretty(&s) {
                    Ok(t) => println!("{t}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", render(&s));
            }
            if s.totals.as_ref().is_some_and(|t| t.agree) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_TOTALS_DIFFER)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(a: ImportArgs) -> Result<Summary> {
    let offset_s = legacy::parse_offset(&a.utc_offset).map_err(|e| anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let client = a
        .conn
        .client()?
        .with_deadline(Duration::from_secs(a.retry_secs.max(1)));
    let opts = Opts {
        accounts: a.accounts,
        cards: a.cards,
        records: a.records,
        mapping: a.mapping,
        out: a.out,
        zone: legacy::Zone { offset_s },
        loaders: a.loaders,
        batch_items: a.batch_items,
        batch_bytes: a.batch_bytes,
        progress_bar: std::io::stderr().is_terminal(),
    };
    rt.block_on(migrate::run(client, opts))
}

/// The summary a migration engineer reads first.
fn render(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "import {}: {} batches ({} done by an earlier run) in {:.1} s, {:.0} records/s\n",
        s.fingerprint, s.batches, s.batches_skipped_as_done, s.seconds, s.records_per_s
    ));
    for (file, r) in &s.rows {
        out.push_str(&format!(
            "  {file:<13} {:>10} read {:>10} imported {:>8} rejected\n",
            r.read, r.imported, r.rejected
        ));
    }
    if s.cards_not_active > 0 {
        out.push_str(&format!(
            "  {} replaced or revoked legacy cards: billdb keeps each account's active card and its generation\n",
            s.cards_not_active
        ));
    }
    out.push_str(&format!(
        "  rejected rows, each with its line and reason: {}\n",
        s.rejects_file
    ));
    out.push_str(&format!(
        "reconciliation: {} accounts whose legacy balance differs from their records, Σ {}\n",
        s.differences.len(),
        s.differences_total
    ));
    for (cause, t) in &s.differences_by_cause {
        out.push_str(&format!(
            "  {cause:<22} {:>8} accounts  Σ {}\n",
            t.accounts, t.amount
        ));
    }
    if let Some(t) = &s.totals {
        out.push_str("totals (imported rows vs billdb after the import):\n");
        for b in t.by_branch.iter().chain(std::iter::once(&t.overall)) {
            let name = if b.branch.is_empty() {
                "ALL"
            } else {
                b.branch.as_str()
            };
            let recs = |x: &migrate::reconcile::BranchTotals| {
                x.records
                    .iter()
                    .map(|(k, v)| format!("{k} {}/{}", v.count, v.amount))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "  {name:<10} {} | legacy: {} accounts, balance {}, {} | billdb: {} accounts, balance {}, {}\n",
                if b.agree { "agree " } else { "DIFFER" },
                b.legacy.accounts,
                b.legacy.balance,
                recs(&b.legacy),
                b.billdb.accounts,
                b.billdb.balance,
                recs(&b.billdb),
            ));
        }
        out.push_str(if t.agree {
            "totals agree to the cent\n"
        } else {
            "TOTALS DIFFER: billdb holds other data, or rows were lost (exit 3)\n"
        });
    }
    out
}
