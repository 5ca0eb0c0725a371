//! `billdb-bench tls-cost`: what TLS costs billdb, measured side by side on
//! one machine: purchases against two loaded local clusters, one secure
//! (the default: TLS on every port, mutual TLS between nodes) and one
//! created `--insecure` (plaintext everywhere), in alternating rounds per
//! client count, the other cluster paused (SIGSTOP) while one is measured.
//! Medians, the plaintext/TLS throughput ratio and the p50 difference.
//! Every run is this binary as a child process (`run --workload purchase
//! ... --json`). Touches the two cluster directories (pause/resume of
//! their nodes) and loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use billdb_client::local::LocalCluster;
use serde_json::{Value, json};

use crate::compare::{Paused, child, median, purchase_run_args, summary};

const ROUNDS_MAX: usize = 20;
const CLIENT_COUNTS_MAX: usize = 8;
/// Time a cluster gets after SIGCONT before it is measured.
const RESUME_SETTLE_MS: u64 = 2_000;

#[derive(clap::Args)]
pub struct TlsCostArgs {
    /// The secure cluster (`billdb-bench up`), loaded.
    #[arg(long)]
    tls_dir: PathBuf,
    /// The plaintext cluster (`billdb-bench up --insecure`), loaded with
    /// the same dataset.
    #[arg(long)]
    plain_dir: PathBuf,
    #[command(flatten)]
    data: crate::load::DataArgs,
    /// Client counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long)]
    pub json: bool,
}

const FIELDS: [&str; 4] = ["ops_per_s", "p50_ms", "p99_ms", "node_cpu_ms_per_op"];

/// Medians per mode and the comparison: `plain_over_tls` of each field,
/// and `p50_added_ms` (TLS p50 minus plaintext p50).
pub fn medians(runs: &[Value], clients: usize) -> Value {
    let of = |mode: &str| -> serde_json::Map<String, Value> {
        FIELDS
            .iter()
            .map(|f| {
                let xs = runs
                    .iter()
                    .filter(|r| r["mode"] == mode && r["clients"] == clients)
                    .filter_map(|r| r[*f].as_f64())
                    .collect();
                (f.to_string(), json!(median(xs)))
            })
            .collect()
    };
    let (tls, plain) = (of("tls"), of("plaintext"));
    let ratio: serde_json::Map<String, Value> = FIELDS
        .iter()
        .map(|f| {
            let r = match (plain[*f].as_f64(), tls[*f].as_f64()) {
                (Some(p), Some(t)) if t > 0.0 => json!(p / t),
                _ => Value::Null,
            };
            (f.to_string(), r)
        })
        .collect();
    let p50_added = match (tls["p50_ms"].as_f64(), plain["p50_ms"].as_f64()) {
        (Some(t), Some(p)) => json!(t - p),
        _ => Value::Null,
    };
    let tls_fewer = match (tls["ops_per_s"].as_f64(), plain["ops_per_s"].as_f64()) {
        (Some(t), Some(p)) if p > 0.0 => json!(1.0 - t / p),
        _ => Value::Null,
    };
    json!({
        "tls": tls,
        "plaintext": plain,
        "plain_over_tls": ratio,
        "p50_added_ms": p50_added,
        "tls_fewer_ops_fraction": tls_fewer,
    })
}

pub fn run(a: TlsCostArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=ROUNDS_MAX).contains(&a.rounds),
        "--rounds: 1..={ROUNDS_MAX}"
    );
    anyhow::ensure!(
        (1..=CLIENT_COUNTS_MAX).contains(&a.clients.len()),
        "--clients: 1..={CLIENT_COUNTS_MAX} counts"
    );
    let open = |d: &Path| {
        LocalCluster::open(d).with_context(|| format!("opening the cluster in {}", d.display()))
    };
    let (tls, plain) = (open(&a.tls_dir)?, open(&a.plain_dir)?);
    anyhow::ensure!(tls.is_tls(), "{} is not a TLS cluster", a.tls_dir.display());
    anyhow::ensure!(
        !plain.is_tls(),
        "{} is a TLS cluster (make it with `billdb-bench up --insecure`)",
        a.plain_dir.display()
    );
    let mut runs = Vec::new();
    for round in 1..=a.rounds {
        for &clients in &a.clients {
            // Alternate which mode goes first, so neither always runs on
            // the warmer machine.
            let order: [(&str, &LocalCluster, &Path, &LocalCluster); 2] = [
                ("tls", &tls, &a.tls_dir, &plain),
                ("plaintext", &plain, &a.plain_dir, &tls),
            ];
            let order = if round % 2 == 0 {
                [order[1], order[0]]
            } else {
                order
            };
            for (mode, _, dir, other) in order {
                if !a.json {
                    eprintln!(
                        "tls-cost: round {round}/{}, {clients} clients: {mode}",
                        a.rounds
                    );
                }
                let v = {
                    let _paused = Paused::pause(other)?;
                    std::thread::sleep(Duration::from_millis(RESUME_SETTLE_MS));
                    child(&purchase_run_args(dir, &a.data, clients, a.duration_s))?
                };
                let mut s = summary(&v, "purchase")?;
                if let Some(o) = s.as_object_mut() {
                    o.insert("mode".into(), json!(mode));
                    o.insert("round".into(), json!(round));
                    o.insert("clients".into(), json!(clients));
                }
                runs.push(s);
            }
        }
    }
    let by_clients: serde_json::Map<String, Value> = a
        .clients
        .iter()
        .map(|&c| (c.to_string(), medians(&runs, c)))
        .collect();
    Ok(json!({
        "workload": "tls-cost",
        "rounds": a.rounds,
        "duration_s": a.duration_s,
        "clients": a.clients,
        "operation": "one durable purchase (POST /v1/purchases) to the leader, HTTPS with mutual TLS between nodes vs plaintext everywhere",
        "medians": by_clients,
        "runs": runs,
        "machine": crate::cluster::machine(&a.tls_dir),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "tls-cost: {} rounds x {} s; medians over the rounds (every round in --json)",
        v["rounds"], v["duration_s"]
    );
    println!(
        "{:>7}  {:<10} {:>10} {:>9} {:>9} {:>13}",
        "clients", "mode", "ops/s", "p50 ms", "p99 ms", "CPU ms/op"
    );
    let Some(m) = v["medians"].as_object() else {
        return;
    };
    let f = |x: &Value, d: usize| x.as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
    for (clients, row) in m {
        for mode in ["plaintext", "tls"] {
            let s = &row[mode];
            println!(
                "{clients:>7}  {mode:<10} {:>10} {:>9} {:>9} {:>13}",
                f(&s["ops_per_s"], 1),
                f(&s["p50_ms"], 2),
                f(&s["p99_ms"], 2),
                f(&s["node_cpu_ms_per_op"], 3)
            );
        }
        println!(
            "{:>7}  TLS: {} fewer ops/s ({}x plaintext/TLS), p50 +{} ms",
            "",
            row["tls_fewer_ops_fraction"]
                .as_f64()
                .map_or("-".into(), |x| format!("{:.1} %", x * 100.0)),
            f(&row["plain_over_tls"]["ops_per_s"], 3),
            f(&row["p50_added_ms"], 3)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_compare_the_modes_per_client_count() {
        let runs = vec![
            json!({"mode": "tls", "clients": 1, "ops_per_s": 90.0, "p50_ms": 1.2, "p99_ms": 3.0, "node_cpu_ms_per_op": 1.1}),
            json!({"mode": "tls", "clients": 1, "ops_per_s": 95.0, "p50_ms": 1.1, "p99_ms": 3.0, "node_cpu_ms_per_op": 1.0}),
            json!({"mode": "plaintext", "clients": 1, "ops_per_s": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "node_cpu_ms_per_op": 1.0}),
            json!({"mode": "tls", "clients": 64, "ops_per_s": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "node_cpu_ms_per_op": 1.0}),
        ];
        let m = medians(&runs, 1);
        assert_eq!(m["tls"]["ops_per_s"], 90.0);
        assert_eq!(m["plaintext"]["ops_per_s"], 100.0);
        assert!((m["tls_fewer_ops_fraction"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        assert!((m["p50_added_ms"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        // A client count with one mode only: no comparison.
        assert!(medians(&runs, 64)["plain_over_tls"]["ops_per_s"].is_null());
    }
}
