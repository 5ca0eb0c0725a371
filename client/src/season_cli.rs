//! `billdb season`: bill a heating season in one operator action and show
//! its report. Talks to a node's HTTP admin API (`/v1/seasons/{id}/bill`);
//! the node drives the bounded billing commands, this command calls it
//! again from where it stopped until the season is billed, with progress.

use std::time::Instant;

use anyhow::Result;
use billdb_client::admin::AdminClient;
use clap::Subcommand;
use serde_json::Value;

use crate::{EndpointArg, call_until_done, client};

#[derive(Subcommand)]
pub enum SeasonCmd {
    /// Raise the open season's heating charge of every heat account (area
    /// × price per m² of its area tariff, × the suspended share for a
    /// heating stop, rounded half-even to the cent), then print the season
    /// bill report. Safe to run again: the same --request-id resumes an
    /// interrupted run, and no account is ever charged twice for a season;
    /// a new --request-id also bills accounts opened since.
    Bill {
        season_id: String,
        #[command(flatten)]
        ep: EndpointArg,
        /// Default: `season-bill-SEASON_ID`.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// The season bill report: accounts billed, Σ by branch and tariff,
    /// accounts skipped by reason; with --skipped every skipped account
    /// and why.
    Report {
        season_id: String,
        #[command(flatten)]
        ep: EndpointArg,
        #[arg(long)]
        skipped: bool,
    },
}

pub fn run(cmd: SeasonCmd) -> Result<()> {
    match cmd {
        SeasonCmd::Bill {
            season_id,
            ep,
            request_id,
        } => {
            let c = client(&ep)?;
            let request_id = request_id.unwrap_or_else(|| format!("season-bill-{season_id}"));
            bill(&c, &season_id, &request_id, !ep.json)?;
            print_report(&c, &season_id, false, ep.json)
        }
        SeasonCmd::Report {
            season_id,
            ep,
            skipped,
        } => print_report(&client(&ep)?, &season_id, skipped, ep.json),
    }
}

fn count(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Calls the node until the season is billed; progress on stderr.
fn bill(c: &AdminClient, season_id: &str, request_id: &str, show: bool) -> Result<()> {
    let started = Instant::now();
    let (mut looked, mut billed, mut skipped, mut already) = (0u64, 0u64, 0u64, 0u64);
    call_until_done(
        c,
        &format!("/v1/seasons/{season_id}/bill"),
        request_id,
        show,
        |v| {
            looked += count(v, "accounts_looked_at");
            billed += count(v, "billed");
            skipped += count(v, "skipped");
            already += count(v, "already_billed");
            let secs = started.elapsed().as_secs_f64().max(0.001);
            format!(
                "season {season_id}: {looked} accounts looked at, {billed} billed, {skipped} \
                 skipped, {already} billed before ({:.0} accounts/s)",
                looked as f64 / secs
            )
        },
    )?;
    if show {
        eprintln!(
            "season {season_id}: billed in {:.1} s ({looked} accounts looked at; {billed} \
             billed, {skipped} skipped, {already} billed before)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn print_report(c: &AdminClient, season_id: &str, skipped: bool, json: bool) -> Result<()> {
    let mut r = c.get(&format!("/v1/seasons/{season_id}/bill"))?;
    let mut lines = Vec::new();
    if skipped {
        let mut after: Option<String> = None;
        loop {
            let mut q = format!("/v1/seasons/{season_id}/bill/lines?skipped=true&limit=1000");
            if let Some(a) = &after {
                q.push_str(&format!("&after={a}"));
            }
            let page = c.get(&q)?;
            lines.extend(page["lines"].as_array().cloned().unwrap_or_default());
            match page["next_after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => break,
            }
        }
        r["skipped_accounts"] = Value::Array(lines.clone());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!(
        "Season {season_id} bill: {} accounts billed, total {}",
        r["accounts_billed"],
        s(&r["total"])
    );
    println!(
        "{:<16} {:<16} {:>10} {:>16}",
        "branch", "tariff", "accounts", "amount"
    );
    for l in r["by_branch_and_tariff"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<16} {:>10} {:>16}",
            s(&l["branch"]),
            s(&l["tariff_id"]),
            l["accounts"],
            s(&l["amount"])
        );
    }
    println!("Skipped: {} accounts", r["accounts_skipped"]);
    if let Some(m) = r["skipped"].as_object() {
        for (reason, n) in m {
            println!("  {reason:<16} {n}");
        }
    }
    for l in &lines {
        println!(
            "  {:<24} {:<16} {}",
            s(&l["account_id"]),
            s(&l["skipped"]),
            s(&l["reason"])
        );
    }
    println!("Rounding: {}.", s(&r["rounding"]));
    Ok(())
}
