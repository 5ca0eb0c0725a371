//! `billdb-bench`: dataset generator, bulk loader and workloads for a
//! running billdb cluster; results as a table or JSON (`--json`) with the
//! cluster's settings, node RSS and disk use. One module per concern:
//! `dataset` (deterministic generator), `load` (bulk import), `workloads`
//! (counter, purchase, payment, history, report), `leader_kill`,
//! `card_check`, `grpc_writes`, `etcd` (the etcd baseline), `postgres`
//! (the PostgreSQL reference), `compare` (billdb against both, in rounds),
//! `backup` (backups, verify, point-in-time replay and restore on a loaded
//! cluster), `stats`, `cluster` (target, RSS, disk), `http`, `progress`,
//! `up` (a local cluster for benchmarking). Touches clusters over HTTP/gRPC and, for local
//! clusters, their directory, `/proc` and (leader-kill) node processes.

mod ahttp;
mod backup;
mod card_check;
mod cluster;
mod compare;
mod dataset;
mod etcd;
mod grpc_writes;
mod http;
mod leader_kill;
mod legacy;
mod load;
mod postgres;
mod progress;
mod season;
mod stats;
mod tls_cost;
mod up;
mod workloads;

use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "billdb-bench", about = "billdb benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local five-node cluster for benchmarking (odd ports).
    Up(up::UpArgs),
    /// Load the generated dataset through the bulk import path.
    Load(load::LoadArgs),
    /// Run one workload for a fixed time at a given client count.
    Run(workloads::RunArgs),
    /// Purchases while the leader is SIGKILLed: the write gap.
    LeaderKill(leader_kill::KillArgs),
    /// Card verify + recent segment latency: long history vs one month.
    CardCheck(card_check::CardCheckArgs),
    /// Durable replicated writes over gRPC: bank payments.
    Writes(grpc_writes::WritesArgs),
    /// The baseline on this machine: a fresh five-member etcd cluster, one
    /// transaction of two puts per operation (needs Debian's etcd-server).
    Etcd(etcd::EtcdArgs),
    /// The other reference system on this machine: PostgreSQL with four
    /// streaming standbys (commit on any two), one statement per purchase
    /// driven by pgbench (needs Debian's postgresql).
    Postgres(postgres::PostgresArgs),
    /// billdb purchases, the etcd baseline and (with --postgres-dir) the
    /// PostgreSQL reference in alternating rounds on this machine: medians
    /// and billdb/etcd, billdb/postgres ratios.
    Compare(compare::CompareArgs),
    /// What TLS costs: purchases against a secure and a plaintext cluster
    /// in alternating rounds, medians and ratios.
    TlsCost(tls_cost::TlsCostArgs),
    /// Season billing at scale: N heat accounts imported, a season opened
    /// and billed as `billdb season bill` does; the billing timed and its
    /// report checked to the cent.
    Season(season::SeasonArgs),
    /// Backups on a loaded cluster: purchase p99 without and during a full
    /// backup, full and incremental backup (time, bytes), verify, a
    /// point-in-time replay and a restore to serving.
    Backup(backup::BackupArgs),
    /// The legacy migration path: the dataset written as legacy CSV files
    /// and `billdb import` run on them, timed as a whole process; its
    /// reconciliation must find the totals equal and no difference.
    Legacy(legacy::LegacyArgs),
}

/// Prints node RSS, disk use and CPU of a result, if it has them.
pub fn print_usage(v: &Value) {
    if let Some(line) = cluster::cpu_line(&v["node_cpu"]) {
        println!("{line}");
    }
    let Some(nodes) = v["usage"]["nodes"].as_array() else {
        return;
    };
    let mib = |b: &Value| b.as_u64().map(|b| b as f64 / (1 << 20) as f64);
    let parts: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "node {}: rss {} MiB (peak {}), disk {} MiB",
                n["node"],
                mib(&n["rss_bytes"]).map_or("-".into(), |m| format!("{m:.0}")),
                mib(&n["rss_peak_bytes"]).map_or("-".into(), |m| format!("{m:.0}")),
                mib(&n["disk_bytes"]).map_or("-".into(), |m| format!("{m:.0}"))
            )
        })
        .collect();
    println!("{}", parts.join(" | "));
}

fn output(v: &Value, json: bool, table: fn(&Value)) -> anyhow::Result<()> {
    if json {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("table");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        table(v);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Up(a) => println!("{}", serde_json::to_string_pretty(&up::run(a)?)?),
        Cmd::Load(a) => {
            let json = a.json;
            let v = load::run(a)?;
            output(&v, json, load::print_table)?;
            anyhow::ensure!(
                v["report_check"]["matches"] == true,
                "the last month's report differs from the generated data"
            );
        }
        Cmd::Run(a) => {
            let json = a.json;
            output(&workloads::run(a)?, json, workloads::print_table)?;
        }
        Cmd::LeaderKill(a) => {
            let json = a.json;
            output(&leader_kill::run(a)?, json, workloads::print_table)?;
        }
        Cmd::Backup(a) => {
            let json = a.json;
            output(&backup::run(a)?, json, backup::print_table)?;
        }
        Cmd::Season(a) => {
            let json = a.json;
            output(&season::run(a)?, json, season::print_table)?;
        }
        Cmd::Legacy(a) => {
            let json = a.json;
            let v = legacy::run(a)?;
            output(&v, json, legacy::print_table)?;
            anyhow::ensure!(
                v["totals_agree"] == true && v["differences"] == 0 && v["rejected"] == 0,
                "the legacy import did not reconcile"
            );
        }
        Cmd::CardCheck(a) => {
            let json = a.json;
            output(&card_check::run(a)?, json, workloads::print_table)?;
        }
        Cmd::Etcd(a) => {
            let json = a.json;
            output(&etcd::run(a)?, json, workloads::print_table)?;
        }
        Cmd::Postgres(a) => {
            let json = a.json;
            output(&postgres::run(a)?, json, workloads::print_table)?;
        }
        Cmd::Compare(a) => {
            let json = a.json;
            output(&compare::run(a)?, json, compare::print_table)?;
        }
        Cmd::TlsCost(a) => {
            let json = a.json;
            output(&tls_cost::run(a)?, json, tls_cost::print_table)?;
        }
        Cmd::Writes(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(grpc_writes::run(a))?;
        }
    }
    Ok(())
}
