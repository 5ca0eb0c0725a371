//! `up`: create, start and initialise a local five-node cluster for a
//! benchmark, with chosen node ids (default 1, 3, 5, 7, 9 over an even base
//! port, so every listening port is odd: Linux hands out even ephemeral
//! ports to outgoing connections first, and on a busy host those, with
//! their TIME_WAIT, can hold any even port of the ephemeral range). Stop it
//! with `billdb local down --dir ...`. Touches the cluster directory and
//! spawns node processes through `LocalCluster`.

use std::path::PathBuf;
use std::time::Duration;

use billdb_client::local::{LocalCluster, find_node_bin};
use serde_json::{Value, json};

/// Wait for health and a leader.
pub const UP_TIMEOUT_MS: u64 = 60_000;

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// New cluster directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Node N listens on HTTP B+N, gRPC B+100+N, Raft B+200+N.
    #[arg(long)]
    pub base_port: u16,
    /// Node ids, comma separated (five for the benchmark).
    #[arg(long, default_value = "1,3,5,7,9")]
    pub node_ids: String,
    /// `billdb-node` binary (default: beside this binary, or on PATH).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Linearizable reads: read-index (a quorum round per read, the node
    /// default) or lease (the leader's lease, no round trip).
    #[arg(long, value_parser = ["read-index", "lease"])]
    pub read_policy: Option<String>,
    /// Plaintext on every port (only to measure what TLS costs:
    /// `billdb-bench tls-cost`).
    #[arg(long)]
    pub insecure: bool,
}

pub fn run(a: UpArgs) -> anyhow::Result<Value> {
    let ids: Vec<u64> = a
        .node_ids
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("node-ids: {e}"))?;
    anyhow::ensure!(!ids.is_empty(), "node-ids: at least one");
    let bin = find_node_bin(a.node_bin.as_deref())?;
    let timings = billdb_client::local::RaftTimings {
        read_policy: match a.read_policy.as_deref() {
            Some("lease") => Some(billdb_client::local::ReadPolicy::Lease),
            Some(_) => Some(billdb_client::local::ReadPolicy::ReadIndex),
            None => None,
        },
        ..Default::default()
    };
    let c = LocalCluster::create_full(&a.dir, &bin, a.base_port, 1, timings, None, !a.insecure)?;
    // create() made node 1; replace it when the first id is another.
    for n in ids.iter().filter(|n| **n != 1) {
        c.add_node(*n)?;
    }
    anyhow::ensure!(
        ids.contains(&1),
        "node-ids must include 1 (the node a new cluster starts from)"
    );
    c.start_all()?;
    let t = Duration::from_millis(UP_TIMEOUT_MS);
    c.wait_all_healthy(t)?;
    c.init()?;
    let leader = c.wait_leader(t)?;
    let nodes: Vec<Value> = c
        .node_ids()
        .into_iter()
        .map(|n| json!({"node": n, "http": c.http_addr(n).ok(), "pid": c.pid(n)}))
        .collect();
    Ok(json!({"dir": c.dir().display().to_string(), "leader": leader, "nodes": nodes}))
}
