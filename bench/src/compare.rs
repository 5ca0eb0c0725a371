//! `billdb-bench compare`: billdb's single purchases against the etcd
//! baseline (`etcd.rs`) and, with `--postgres-dir`, the PostgreSQL
//! reference (`postgres.rs`) on the same machine, in alternating rounds,
//! as medians and ratios. On a shared machine whose speed drifts, runs of
//! the systems taken minutes apart in turn compare better than a figure
//! measured elsewhere. Each round runs, per client count, etcd (then
//! PostgreSQL) with the billdb nodes paused (SIGSTOP: they would share the
//! cores), then billdb. Every run is this binary as a child process (`etcd
//! ... --json`, `postgres ... --json`, `run --workload purchase ...
//! --json`). Touches the billdb cluster directory (pause/resume of its
//! nodes), the etcd and PostgreSQL directories and loopback ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use billdb_client::local::LocalCluster;
use serde_json::{Value, json};

/// Most rounds and client counts (each run lasts `--duration-s`).
const ROUNDS_MAX: usize = 20;
const CLIENT_COUNTS_MAX: usize = 8;
/// Time the billdb nodes get after SIGCONT before they are measured.
const RESUME_SETTLE_MS: u64 = 2_000;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The billdb local cluster directory (`billdb-bench up`), loaded.
    #[arg(long)]
    dir: PathBuf,
    /// The dataset loaded there (purchases draw its accounts; the etcd
    /// keys spread over as many accounts).
    #[command(flatten)]
    data: crate::load::DataArgs,
    /// Directory for the etcd members (each run starts them fresh).
    #[arg(long)]
    etcd_dir: PathBuf,
    #[arg(long, default_value_t = 13_000)]
    etcd_base_port: u16,
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Directory for the PostgreSQL instances (each run starts them
    /// fresh); without it PostgreSQL is not run.
    #[arg(long)]
    postgres_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 13_500)]
    postgres_base_port: u16,
    /// Which PostgreSQL purchases, comma separated: `minimal` (one
    /// statement: `postgres`) and/or `full` (the PL/pgSQL purchase a
    /// utility would write: `postgres_full`).
    #[arg(long, value_delimiter = ',', default_value = "minimal,full")]
    postgres_purchase: Vec<String>,
    /// PostgreSQL's connections, comma separated: `tls` (clients and
    /// replication over TLS with certificates checked both ways, as
    /// billdb's: `postgres_tls`, `postgres_full_tls`) and/or `plaintext`
    /// (`postgres`, `postgres_full`).
    #[arg(long, value_delimiter = ',', default_value = "tls,plaintext")]
    postgres_transport: Vec<String>,
    /// Client counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// What billdb's log entries carry (`raft.replicate`), comma separated:
    /// `results` (the nodes' default) and/or `commands`. With both, each
    /// round restarts the nodes in each mode in turn (and warms them up
    /// for `WARM_UP_S` seconds) before measuring it: `billdb` and
    /// `billdb_commands` in the results.
    #[arg(long, value_delimiter = ',', default_value = "results")]
    billdb_replicate: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

/// Seconds of purchases, not measured, after the nodes restart in another
/// replication mode.
const WARM_UP_S: u64 = 5;
/// How long restarted nodes may take to serve again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// The system name of billdb in replication mode `mode`.
fn billdb_system(mode: &str) -> String {
    match mode {
        "results" => "billdb".into(),
        other => format!("billdb_{other}"),
    }
}

/// Restarts every node with `raft.replicate = mode` and waits until they
/// serve with a leader.
fn restart_in_mode(cluster: &LocalCluster, mode: &str) -> anyhow::Result<()> {
    cluster.set_node_env("BILLDB_REPLICATE", mode);
    cluster.down().context("stopping the billdb nodes")?;
    cluster.start_all().context("starting the billdb nodes")?;
    cluster.wait_all_healthy(RESTART_TIMEOUT)?;
    cluster.wait_leader(RESTART_TIMEOUT)?;
    Ok(())
}

/// Resumes the paused nodes when dropped, so an error in the etcd run
/// never leaves the billdb cluster stopped.
pub struct Paused<'a> {
    cluster: &'a LocalCluster,
}

impl<'a> Paused<'a> {
    pub fn pause(cluster: &'a LocalCluster) -> anyhow::Result<Paused<'a>> {
        let paused = Paused { cluster };
        for n in cluster.node_ids() {
            cluster.pause(n)?;
        }
        Ok(paused)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        for n in self.cluster.node_ids() {
            let _ = self.cluster.resume(n);
        }
    }
}

/// This binary with `args`; its JSON answer.
pub fn child(args: &[String]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("this binary's path")?;
    let out = Command::new(exe)
        .args(args)
        .output()
        .context("running billdb-bench")?;
    anyhow::ensure!(
        out.status.success(),
        "billdb-bench {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("the run's JSON")
}

/// One run's figures: the operation `op` of a workload result.
pub fn summary(v: &Value, op: &str) -> anyhow::Result<Value> {
    let o = &v["ops"][op];
    let count = o["count"]
        .as_u64()
        .with_context(|| format!("no {op} figures in the result"))?;
    anyhow::ensure!(count > 0, "no {op} succeeded");
    Ok(json!({
        "count": count,
        "ops_per_s": o["ops_per_s"],
        "p50_ms": o["p50_ms"],
        "p90_ms": o["p90_ms"],
        "p99_ms": o["p99_ms"],
        "max_ms": o["max_ms"],
        "errors": o["errors"],
        "node_cpu_ms_per_op": v["node_cpu"]["ms_per_op"],
        "loadavg": v["machine"]["loadavg"],
    }))
}

/// The median (the lower middle one of an even count).
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    (!xs.is_empty()).then(|| xs[(xs.len() - 1) / 2])
}

const FIELDS: [&str; 4] = ["ops_per_s", "p50_ms", "p99_ms", "node_cpu_ms_per_op"];

/// The systems billdb is compared with, as named in the runs (billdb
/// replicating commands, as before op level 3, among them).
const BASELINES: [&str; 6] = [
    "etcd",
    "postgres_tls",
    "postgres",
    "postgres_full_tls",
    "postgres_full",
    "billdb_commands",
];

/// Medians of each field over `runs` per system, and each field's ratio
/// of billdb to each baseline (`billdb_over_etcd`, `billdb_over_postgres`;
/// null figures for a system with no runs).
pub fn medians(runs: &[Value], clients: usize) -> Value {
    let of = |system: &str| -> serde_json::Map<String, Value> {
        FIELDS
            .iter()
            .map(|f| {
                let xs = runs
                    .iter()
                    .filter(|r| r["system"] == system && r["clients"] == clients)
                    .filter_map(|r| r[*f].as_f64())
                    .collect();
                (f.to_string(), json!(median(xs)))
            })
            .collect()
    };
    let billdb = of("billdb");
    let mut out = serde_json::Map::new();
    for base in BASELINES {
        let theirs = of(base);
        let ratio: serde_json::Map<String, Value> = FIELDS
            .iter()
            .map(|f| {
                let r = match (billdb[*f].as_f64(), theirs[*f].as_f64()) {
                    (Some(b), Some(e)) if e > 0.0 => json!(b / e),
                    _ => Value::Null,
                };
                (f.to_string(), r)
            })
            .collect();
        out.insert(base.into(), Value::Object(theirs));
        out.insert(format!("billdb_over_{base}"), Value::Object(ratio));
    }
    out.insert("billdb".into(), Value::Object(billdb));
    Value::Object(out)
}

/// A baseline's run (`etcd` or `postgres`): its directory and ports, the
/// dataset's account count, the clients and length.
fn baseline_args(
    a: &CompareArgs,
    cmd: &str,
    dir: &Path,
    base_port: u16,
    clients: usize,
) -> Vec<String> {
    vec![
        cmd.into(),
        "--dir".into(),
        dir.display().to_string(),
        "--base-port".into(),
        base_port.to_string(),
        "--accounts".into(),
        a.data.accounts.to_string(),
        "--clients".into(),
        clients.to_string(),
        "--duration-s".into(),
        a.duration_s.to_string(),
        "--json".into(),
    ]
}

fn etcd_args(a: &CompareArgs, clients: usize) -> Vec<String> {
    let mut v = baseline_args(a, "etcd", &a.etcd_dir, a.etcd_base_port, clients);
    v.extend(["--etcd-bin".into(), a.etcd_bin.display().to_string()]);
    v
}

fn postgres_args(
    a: &CompareArgs,
    dir: &Path,
    clients: usize,
    purchase: &str,
    transport: &str,
) -> Vec<String> {
    let mut v = baseline_args(a, "postgres", dir, a.postgres_base_port, clients);
    v.extend(["--purchase".into(), purchase.into()]);
    if transport == "tls" {
        v.push("--tls".into());
    }
    v
}

/// The system name of PostgreSQL running `purchase` over `transport`.
fn postgres_system(purchase: &str, transport: &str) -> String {
    let mut name = match purchase {
        "minimal" => "postgres".to_string(),
        other => format!("postgres_{other}"),
    };
    if transport == "tls" {
        name.push_str("_tls");
    }
    name
}

fn billdb_args(a: &CompareArgs, dir: &Path, clients: usize) -> Vec<String> {
    purchase_run_args(dir, &a.data, clients, a.duration_s)
}

/// A billdb purchase run (`run --workload purchase ... --json`) against the
/// cluster in `dir` loaded with `data`.
pub fn purchase_run_args(
    dir: &Path,
    data: &crate::load::DataArgs,
    clients: usize,
    duration_s: u64,
) -> Vec<String> {
    vec![
        "run".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--seed".into(),
        data.seed.to_string(),
        "--accounts".into(),
        data.accounts.to_string(),
        "--years".into(),
        data.years.to_string(),
        "--per-year".into(),
        data.per_year.to_string(),
        "--payments-per-year".into(),
        data.payments_per_year.to_string(),
        "--end-month".into(),
        data.end_month.clone(),
        "--workload".into(),
        "purchase".into(),
        "--clients".into(),
        clients.to_string(),
        "--duration-s".into(),
        duration_s.to_string(),
        "--json".into(),
    ]
}

/// A flag's comma-separated values: one or both of `allowed`.
fn check_choice(values: &[String], allowed: &[&str; 2], flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !values.is_empty()
            && values.len() <= allowed.len()
            && values.iter().all(|v| allowed.contains(&v.as_str())),
        "{flag}: {} and/or {}",
        allowed[0],
        allowed[1]
    );
    Ok(())
}

pub fn run(a: CompareArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=ROUNDS_MAX).contains(&a.rounds),
        "--rounds: 1..={ROUNDS_MAX}"
    );
    anyhow::ensure!(
        (1..=CLIENT_COUNTS_MAX).contains(&a.clients.len()),
        "--clients: 1..={CLIENT_COUNTS_MAX} counts"
    );
    check_choice(
        &a.billdb_replicate,
        &["results", "commands"],
        "--billdb-replicate",
    )?;
    check_choice(
        &a.postgres_purchase,
        &["minimal", "full"],
        "--postgres-purchase",
    )?;
    check_choice(
        &a.postgres_transport,
        &["tls", "plaintext"],
        "--postgres-transport",
    )?;
    let cluster = LocalCluster::open(&a.dir)
        .with_context(|| format!("opening the billdb cluster in {}", a.dir.display()))?;
    let mut runs = Vec::new();
    for round in 1..=a.rounds {
        for &clients in &a.clients {
            if !a.json {
                eprintln!(
                    "compare: round {round}/{}, {clients} clients: etcd",
                    a.rounds
                );
            }
            let (etcd, postgres) = {
                let _paused = Paused::pause(&cluster)?;
                let etcd = child(&etcd_args(&a, clients))?;
                let mut postgres = Vec::new();
                if let Some(d) = &a.postgres_dir {
                    for purchase in &a.postgres_purchase {
                        for transport in &a.postgres_transport {
                            let system = postgres_system(purchase, transport);
                            if !a.json {
                                eprintln!(
                                    "compare: round {round}/{}, {clients} clients: {system}",
                                    a.rounds
                                );
                            }
                            let args = postgres_args(&a, d, clients, purchase, transport);
                            postgres.push((system, child(&args)?));
                        }
                    }
                }
                (etcd, postgres)
            };
            std::thread::sleep(Duration::from_millis(RESUME_SETTLE_MS));
            let mut measured = vec![("etcd".to_string(), etcd, "etcd_txn")];
            for (system, p) in postgres {
                measured.push((system, p, "pg_purchase"));
            }
            for mode in &a.billdb_replicate {
                if a.billdb_replicate.len() > 1 {
                    if !a.json {
                        eprintln!("compare: billdb nodes restarting with raft.replicate = {mode}");
                    }
                    restart_in_mode(&cluster, mode)?;
                    child(&purchase_run_args(&a.dir, &a.data, 16, WARM_UP_S))?;
                }
                if !a.json {
                    eprintln!(
                        "compare: round {round}/{}, {clients} clients: billdb ({mode})",
                        a.rounds
                    );
                }
                let billdb = child(&billdb_args(&a, &a.dir, clients))?;
                measured.push((billdb_system(mode), billdb, "purchase"));
            }
            for (system, v, op) in measured {
                let mut s = summary(&v, op)?;
                if let Some(o) = s.as_object_mut() {
                    o.insert("system".into(), json!(system));
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
        "workload": "compare",
        "rounds": a.rounds,
        "duration_s": a.duration_s,
        "billdb_replicate": a.billdb_replicate,
        "clients": a.clients,
        "operations": {
            "billdb": "one durable purchase (POST /v1/purchases) to the leader; log entries carry the leader's results (raft.replicate = results)",
            "billdb_commands": "the same, with raft.replicate = commands: every replica executes every purchase",
            "etcd": "one Txn of two puts (200-byte record, 100-byte account summary) to the leader",
            "postgres": "one statement per purchase (update the account, insert a 200-byte record) on a primary whose commits wait for any 2 of 4 standbys",
            "postgres_full": "billdb's purchase as a PL/pgSQL function in one transaction (idempotency key, card and account checks, ladder price, gapless invoice number, the record, four report-row upserts), the same primary and standbys",
            "postgres_tls": "postgres with every connection over TLS, clients' and the standbys' WAL streams, certificates checked both ways (billdb's nodes speak TLS the same way)",
            "postgres_full_tls": "postgres_full over TLS, as postgres_tls",
        },
        "medians": by_clients,
        "runs": runs,
        "machine": crate::cluster::machine(&a.dir),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "compare: {} rounds x {} s; medians over the rounds (every round in --json)",
        v["rounds"], v["duration_s"]
    );
    println!(
        "{:>7}  {:<18} {:>10} {:>9} {:>9} {:>13}",
        "clients", "system", "ops/s", "p50 ms", "p99 ms", "CPU ms/op"
    );
    let Some(m) = v["medians"].as_object() else {
        return;
    };
    let f = |x: &Value, d: usize| x.as_f64().map_or("-".into(), |x| format!("{x:.d$}"));
    for (clients, row) in m {
        let present = |system: &str| row[system]["ops_per_s"].as_f64().is_some();
        for system in BASELINES.iter().copied().chain(["billdb"]) {
            if !present(system) {
                continue;
            }
            let s = &row[system];
            println!(
                "{clients:>7}  {system:<18} {:>10} {:>9} {:>9} {:>13}",
                f(&s["ops_per_s"], 1),
                f(&s["p50_ms"], 2),
                f(&s["p99_ms"], 2),
                f(&s["node_cpu_ms_per_op"], 3)
            );
        }
        for base in BASELINES {
            if !present(base) {
                continue;
            }
            let r = &row[format!("billdb_over_{base}")];
            println!(
                "{:>7}  billdb/{base}: {}x ops/s, p50 {}x, p99 {}x, CPU per op {}x",
                "",
                f(&r["ops_per_s"], 2),
                f(&r["p50_ms"], 2),
                f(&r["p99_ms"], 2),
                f(&r["node_cpu_ms_per_op"], 2)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_flag_takes_one_or_both_of_its_values() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let allowed = &["tls", "plaintext"];
        assert!(check_choice(&v(&["tls"]), allowed, "--t").is_ok());
        assert!(check_choice(&v(&["plaintext", "tls"]), allowed, "--t").is_ok());
        for bad in [&[][..], &["tls", "tls", "tls"], &["ssl"]] {
            let e = check_choice(&v(bad), allowed, "--t").unwrap_err();
            assert_eq!(e.to_string(), "--t: tls and/or plaintext", "{bad:?}");
        }
    }

    #[test]
    fn every_postgres_run_is_named_as_a_baseline() {
        let mut names = Vec::new();
        for purchase in ["minimal", "full"] {
            for transport in ["tls", "plaintext"] {
                names.push(postgres_system(purchase, transport));
            }
        }
        assert_eq!(
            names,
            [
                "postgres_tls",
                "postgres",
                "postgres_full_tls",
                "postgres_full"
            ]
        );
        for n in &names {
            assert!(BASELINES.contains(&n.as_str()), "{n}");
        }
    }

    #[test]
    fn median_takes_the_middle_and_skips_missing_figures() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn medians_pair_the_systems_per_client_count() {
        let run = |system: &str, clients: usize, ops: f64, p99: f64| {
            json!({"system": system, "clients": clients, "ops_per_s": ops,
                   "p50_ms": 1.0, "p99_ms": p99, "node_cpu_ms_per_op": 2.0})
        };
        let runs = vec![
            run("etcd", 64, 1000.0, 100.0),
            run("etcd", 64, 1400.0, 90.0),
            run("etcd", 64, 1200.0, 80.0),
            run("billdb", 64, 1800.0, 60.0),
            run("billdb", 64, 2400.0, 50.0),
            run("billdb", 64, 2000.0, 70.0),
            // Another client count does not mix in.
            run("billdb", 1, 1.0, 1.0),
        ];
        let m = medians(&runs, 64);
        assert_eq!(m["etcd"]["ops_per_s"], json!(1200.0));
        assert_eq!(m["billdb"]["ops_per_s"], json!(2000.0));
        assert_eq!(m["billdb"]["p99_ms"], json!(60.0));
        let r = m["billdb_over_etcd"]["ops_per_s"].as_f64().unwrap();
        assert!((r - 2000.0 / 1200.0).abs() < 1e-9, "{r}");
        assert!((m["billdb_over_etcd"]["p99_ms"].as_f64().unwrap() - 60.0 / 90.0).abs() < 1e-9);
        // PostgreSQL was not run: its figures and ratios are null.
        assert_eq!(m["postgres"]["ops_per_s"], Value::Null);
        assert_eq!(m["billdb_over_postgres"]["ops_per_s"], Value::Null);
        let mut with_pg = runs.clone();
        with_pg.push(run("postgres", 64, 4000.0, 30.0));
        let m = medians(&with_pg, 64);
        assert!((m["billdb_over_postgres"]["ops_per_s"].as_f64().unwrap() - 0.5).abs() < 1e-9);
        assert!(
            (m["billdb_over_etcd"]["ops_per_s"].as_f64().unwrap() - 2000.0 / 1200.0).abs() < 1e-9
        );
        // No runs of a system: null figures and ratios, not a panic.
        let none = medians(&runs, 8);
        assert_eq!(none["etcd"]["ops_per_s"], Value::Null);
        assert_eq!(none["billdb_over_etcd"]["ops_per_s"], Value::Null);
    }
}
