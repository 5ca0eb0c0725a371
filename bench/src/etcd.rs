//! The baseline, measured on the same machine: a fresh five-member
//! etcd cluster (Debian's `etcd-server`, 3.4) on loopback, and closed-loop
//! clients each sending one transaction of two puts per operation (a
//! ~200-byte record and a ~100-byte account summary) to the leader over
//! etcd's gRPC API, the shape the targets were set against. Results use
//! the same statistics, node CPU (`/proc`), RSS and disk figures as the
//! billdb workloads, so the two can be put side by side as ratios on a
//! shared, noisy machine. Touches only the directory it is given (one data
//! directory and log per member), the member processes it starts (stopped
//! at the end), and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::cluster::{CpuSample, cpu_json, machine, usage_json};
use crate::stats::Stats;

/// Members of the cluster, as billdb's.
const MEMBERS: usize = 5;
/// How long the members get to elect a leader.
const START_TIMEOUT_MS: u64 = 20_000;
/// One transaction's deadline.
const TXN_TIMEOUT_MS: u64 = 5_000;
/// Bytes of the record value and of the account summary value.
const RECORD_VALUE_BYTES: usize = 200;
const SUMMARY_VALUE_BYTES: usize = 100;
/// Most clients (each is a task with its own HTTP/2 connection).
const CLIENTS_MAX: usize = 1_024;

#[derive(clap::Args)]
pub struct EtcdArgs {
    /// Directory for the members' data and logs (each run starts fresh:
    /// earlier member directories in it are removed).
    #[arg(long)]
    dir: PathBuf,
    /// Even base port: member i listens for clients on base + 4i + 1 and
    /// for peers on base + 4i + 3 (odd ports, as `up`).
    #[arg(long, default_value_t = 13_000)]
    base_port: u16,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Accounts the keys are spread over.
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// The etcd binary (default: `etcd` on $PATH).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// The subset of etcd's `etcdserverpb` messages this benchmark sends and
/// reads, with etcd's field numbers (wire-compatible with its `KV` service).
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestOp {
        #[prost(oneof = "Request", tags = "2")]
        pub request: Option<Request>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "2")]
        Put(PutRequest),
    }

    /// No compares: the success branch always runs.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnRequest {
        #[prost(message, repeated, tag = "2")]
        pub success: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(bool, tag = "2")]
        pub succeeded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
    }
}

const TXN_PATH: &str = "/etcdserverpb.KV/Txn";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// A unary call of etcd's KV service.
async fn call<Req, Resp>(
    channel: &tonic::transport::Channel,
    path: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_millis(TXN_TIMEOUT_MS));
    grpc.unary(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The running members; stopped (SIGKILL, then reaped) when dropped, so an
/// error part-way never leaves etcd processes behind.
struct Members {
    children: Vec<Child>,
    data_dirs: Vec<PathBuf>,
    client_ports: Vec<u16>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client_port(base: u16, i: usize) -> u16 {
    base + 4 * i as u16 + 1
}

fn peer_port(base: u16, i: usize) -> u16 {
    base + 4 * i as u16 + 3
}

/// The first line of `etcd --version` ("etcd Version: 3.4.23").
fn etcd_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin).arg("--version").output().with_context(|| {
        format!(
            "cannot run {} (install Debian's etcd-server, as deploy/setup.sh does, or pass --etcd-bin)",
            bin.display()
        )
    })?;
    anyhow::ensure!(out.status.success(), "{} --version failed", bin.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The settings every member starts with (recorded in the result).
fn member_flags(a: &EtcdArgs, i: usize, data_dir: &Path, cluster: &str) -> Vec<String> {
    let c = client_port(a.base_port, i);
    let p = peer_port(a.base_port, i);
    vec![
        format!("--name=m{i}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls=http://127.0.0.1:{c}"),
        format!("--advertise-client-urls=http://127.0.0.1:{c}"),
        format!("--listen-peer-urls=http://127.0.0.1:{p}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
        format!("--initial-cluster={cluster}"),
        "--initial-cluster-token=billdb-bench-etcd".into(),
        "--initial-cluster-state=new".into(),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

fn start(a: &EtcdArgs) -> anyhow::Result<Members> {
    anyhow::ensure!(
        a.base_port.is_multiple_of(2) && a.base_port < 60_000,
        "--base-port must be even and below 60000"
    );
    std::fs::create_dir_all(&a.dir)?;
    let cluster = (0..MEMBERS)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_port(a.base_port, i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Members {
        children: Vec::new(),
        data_dirs: Vec::new(),
        client_ports: Vec::new(),
    };
    for i in 0..MEMBERS {
        let data_dir = a.dir.join(format!("etcd-{i}"));
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("removing {}", data_dir.display()))?;
        }
        let log = std::fs::File::create(a.dir.join(format!("etcd-{i}.log")))?;
        let child = Command::new(&a.etcd_bin)
            .args(member_flags(a, i, &data_dir, &cluster))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", a.etcd_bin.display()))?;
        members.children.push(child);
        members.data_dirs.push(data_dir);
        members.client_ports.push(client_port(a.base_port, i));
    }
    Ok(members)
}

/// A metric's value from a member's Prometheus page (`None`: not there).
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// Waits until exactly one member says it leads and all have a leader;
/// the leader's position.
fn wait_leader(members: &mut Members) -> anyhow::Result<usize> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(1_000)))
        .build()
        .new_agent();
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    loop {
        for (i, c) in members.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("etcd member {i} exited at start ({status}); see etcd-{i}.log");
            }
        }
        let mut leaders = Vec::new();
        let mut with_leader = 0;
        for (i, port) in members.client_ports.iter().enumerate() {
            let page = agent
                .get(&format!("http://127.0.0.1:{port}/metrics"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok());
            if let Some(page) = page {
                if metric(&page, "etcd_server_has_leader") == Some(1.0) {
                    with_leader += 1;
                }
                if metric(&page, "etcd_server_is_leader") == Some(1.0) {
                    leaders.push(i);
                }
            }
        }
        if with_leader == MEMBERS && leaders.len() == 1 {
            return Ok(leaders[0]);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no etcd leader within {START_TIMEOUT_MS} ms"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cpu_sample(members: &Members) -> CpuSample {
    CpuSample::of(
        members
            .children
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, c.id())),
    )
}

fn usage(members: &Members) -> Value {
    usage_json(
        members
            .children
            .iter()
            .zip(&members.data_dirs)
            .enumerate()
            .map(|(i, (c, d))| (i as u64, Some(c.id()), d.clone())),
    )
}

/// A value of exactly `len` bytes: `head`, padded.
fn padded(head: String, len: usize) -> Vec<u8> {
    let mut v = head.into_bytes();
    v.resize(len, b'.');
    v
}

/// One operation's transaction: client `c`'s `i`-th record of `account`
/// and the account's summary.
fn txn(account: u64, c: usize, i: u64) -> pb::TxnRequest {
    let put = |key: String, value: Vec<u8>| pb::RequestOp {
        request: Some(pb::Request::Put(pb::PutRequest {
            key: key.into_bytes(),
            value,
        })),
    };
    let record = padded(
        format!(
            "{{\"account_id\":\"A{account:07}\",\"client\":{c},\"i\":{i},\"kind\":\"purchase\",\"amount\":\"{}.{:02}\",\"units\":\"42.125\",\"note\":\"",
            20 + i % 280,
            i % 100
        ),
        RECORD_VALUE_BYTES,
    );
    let summary = padded(
        format!("{{\"account_id\":\"A{account:07}\",\"last\":\"{c}-{i}\",\"balance\":\""),
        SUMMARY_VALUE_BYTES,
    );
    pb::TxnRequest {
        success: vec![
            put(format!("rec/A{account:07}/{c:04}-{i:012}"), record),
            put(format!("acct/A{account:07}"), summary),
        ],
    }
}

/// Per client: statistics, the last key written and its transaction's
/// revision.
type ClientResult = (Stats, Option<(Vec<u8>, i64)>);

async fn client_loop(
    endpoint: String,
    c: usize,
    accounts: u64,
    deadline: Instant,
) -> anyhow::Result<ClientResult> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .connect_timeout(Duration::from_millis(TXN_TIMEOUT_MS))
        .connect()
        .await?;
    let mut rng = ChaCha8Rng::seed_from_u64(0x657463 ^ (c as u64).wrapping_mul(0x9E37_79B9));
    let mut stats = Stats::default();
    let mut last = None;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let req = txn(rng.random_range(0..accounts.max(1)), c, i);
        let key = match &req.success[0].request {
            Some(pb::Request::Put(p)) => p.key.clone(),
            None => Vec::new(),
        };
        let t = Instant::now();
        match call::<_, pb::TxnResponse>(&channel, TXN_PATH, req).await {
            Ok(r) if r.succeeded => {
                stats.ok("etcd_txn", t.elapsed().as_micros() as u64);
                last = Some((key, r.header.map_or(0, |h| h.revision)));
            }
            Ok(_) => stats.err("etcd_txn", "NOT_SUCCEEDED".into()),
            Err(e) => stats.err("etcd_txn", format!("{:?}", e.code())),
        }
    }
    Ok((stats, last))
}

/// The revision now, and the record `key` as stored (read back through the
/// leader: linearizable).
async fn read_back(endpoint: String, key: Vec<u8>) -> anyhow::Result<(i64, Option<pb::KeyValue>)> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .connect()
        .await?;
    let r: pb::RangeResponse = call(&channel, RANGE_PATH, pb::RangeRequest { key }).await?;
    Ok((r.header.map_or(0, |h| h.revision), r.kvs.into_iter().next()))
}

pub fn run(a: EtcdArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=CLIENTS_MAX).contains(&a.clients),
        "--clients: 1..={CLIENTS_MAX}"
    );
    anyhow::ensure!(a.duration_s >= 1, "--duration-s: at least 1");
    let version = etcd_version(&a.etcd_bin)?;
    let mut members = start(&a)?;
    let leader = wait_leader(&mut members)?;
    let endpoint = format!("http://127.0.0.1:{}", members.client_ports[leader]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The revision before: a fresh cluster starts at 1.
    let (revision_before, _) = rt.block_on(read_back(endpoint.clone(), b"none".to_vec()))?;
    if !a.json {
        eprintln!(
            "etcd: {version}, {MEMBERS} members, leader m{leader}; {} clients for {} s",
            a.clients, a.duration_s
        );
    }
    let cpu_before = cpu_sample(&members);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.duration_s);
    let results = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..a.clients {
            tasks.spawn(client_loop(endpoint.clone(), c, a.accounts, deadline));
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r);
        }
        out
    });
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(&members);
    let mut stats = Stats::default();
    let mut last = None;
    for r in results {
        let (s, l) = r.map_err(|e| anyhow::anyhow!("a client task failed: {e}"))??;
        stats.merge(s);
        if last.is_none() {
            last = l;
        }
    }
    let acked = stats.count("etcd_txn");
    anyhow::ensure!(acked > 0, "no etcd transaction succeeded");
    // Every acknowledged transaction advanced the revision by one, and the
    // last record a client wrote reads back as written.
    let (key, key_revision) = last.context("no client recorded a write")?;
    let (revision_after, kv) = rt.block_on(read_back(endpoint, key.clone()))?;
    let kv = kv.context("a written record is missing")?;
    anyhow::ensure!(
        kv.key == key && kv.value.len() == RECORD_VALUE_BYTES && kv.mod_revision == key_revision,
        "the record read back differs from the one written"
    );
    let advanced = u64::try_from(revision_after - revision_before).unwrap_or(0);
    anyhow::ensure!(
        advanced >= acked,
        "the revision advanced {advanced}, fewer than the {acked} acknowledged transactions"
    );
    let node_cpu = cpu_json(&cpu_before, &cpu_after, "txn", acked);
    let settings = json!({
        "version": version,
        "members": MEMBERS,
        "leader_member": leader,
        "flags": member_flags(&a, 0, &members.data_dirs[0], "..."),
        "operation": format!(
            "Txn of two puts: a {RECORD_VALUE_BYTES}-byte record (new key) and a {SUMMARY_VALUE_BYTES}-byte account summary (one of {} accounts), sent to the leader over gRPC",
            a.accounts
        ),
    });
    let v = json!({
        "workload": "etcd",
        "clients": a.clients,
        "duration_s": secs,
        "ops": stats.to_json(secs),
        "table": stats.table(secs),
        "extra": {"revision_advanced": advanced, "acknowledged": acked},
        "node_cpu": node_cpu,
        "usage": usage(&members),
        "settings": settings,
        "machine": machine(&a.dir),
    });
    drop(members);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_sizes_the_targets_name() {
        let t = txn(12_345, 63, 987_654);
        let sizes: Vec<(usize, usize)> = t
            .success
            .iter()
            .map(|op| match &op.request {
                Some(pb::Request::Put(p)) => (p.key.len(), p.value.len()),
                None => (0, 0),
            })
            .collect();
        assert_eq!(sizes.len(), 2);
        assert_eq!(sizes[0].1, RECORD_VALUE_BYTES);
        assert_eq!(sizes[1].1, SUMMARY_VALUE_BYTES);
        // Each operation writes a new record key; the summary key repeats.
        assert_ne!(txn(1, 0, 1).success[0], txn(1, 0, 2).success[0]);
        assert_eq!(
            match &txn(1, 0, 1).success[1].request {
                Some(pb::Request::Put(p)) => p.key.clone(),
                None => Vec::new(),
            },
            b"acct/A0000001".to_vec()
        );
    }

    #[test]
    fn a_metric_is_read_by_its_exact_name() {
        let page = "# HELP etcd_server_is_leader x\netcd_server_is_leader 1\netcd_server_is_leader_total 7\n";
        assert_eq!(metric(page, "etcd_server_is_leader"), Some(1.0));
        assert_eq!(metric(page, "etcd_server_has_leader"), None);
    }

    /// The messages encode with etcd's field numbers: a put inside a
    /// request op is field 2, key 1, value 2.
    #[test]
    fn txn_encodes_with_etcds_field_numbers() {
        use prost::Message;
        let op = pb::RequestOp {
            request: Some(pb::Request::Put(pb::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })),
        };
        // field 2, wire type 2 (0x12), length 6: field 1 "k", field 2 "v".
        assert_eq!(
            op.encode_to_vec(),
            vec![0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
    }
}
