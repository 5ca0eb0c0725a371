//! Local cluster manager: runs N `billdb-node` processes on this machine.
//!
//! Scope: this module only touches files inside the cluster directory it is given
//! (`cluster.json`, `nodeN/node.toml`, `nodeN/node.log`, `nodeN/pid`, and — for
//! [`LocalCluster::wipe`] only — `nodeN/data`), sends signals only to processes it
//! started itself or whose pid file it wrote and whose command line still carries
//! that node's `--config` path, and talks HTTP only to the nodes' admin addresses
//! on loopback (127.0.0.1, or `{host_prefix}N` per node when the cluster was
//! created with a host prefix). It is used by the `billdb local ...` CLI and by the integration
//! tests, chaos suite and benchmarks of other crates.
//!
//! # Layout of a cluster directory
//! ```text
//! DIR/cluster.json        ports, node binary, raft timings, "initialized" flag
//! DIR/nodeN/node.toml     config passed as `billdb-node --config DIR/nodeN/node.toml`
//! DIR/nodeN/data/         the node's data (RocksDB + raft state)
//! DIR/nodeN/node.log      stdout + stderr of the node (appended across restarts)
//! DIR/nodeN/pid           pid of the running process
//! ```
//! Node N listens on 127.0.0.1: HTTP `B+N`, gRPC `B+100+N`, Raft `B+200+N`, where
//! `B` is the base port (default 7000); node ids are 1..=99.
//!
//! # Blocking API
//! Every method is synchronous and bounded in time (HTTP requests have timeouts,
//! waits take a timeout, stops escalate to SIGKILL). HTTP goes through
//! [`crate::admin::AdminClient`] (ureq), which has no runtime of its own, so the
//! methods may be called from plain test code and from inside a tokio runtime; in
//! async code prefer `tokio::task::spawn_blocking` for the long waits
//! ([`LocalCluster`] is `Clone + Send + Sync`, clones share state).
//!
//! Processes are spawned detached (`setsid`), so they outlive the CLI that started
//! them. Set [`LocalCluster::set_kill_on_drop`] in tests so a panicking test does
//! not leave nodes behind.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::{AdminClient, NodeAddrs};

/// Raft node id.
pub type NodeId = u64;

/// Default base port: node N gets HTTP 7000+N, gRPC 7100+N, Raft 7200+N.
pub const DEFAULT_BASE_PORT: u16 = 7000;
/// Default number of nodes of `billdb local up`.
pub const DEFAULT_NODES: usize = 5;
/// Highest node id (ports of node 100 would collide with node 0's next group).
pub const MAX_NODE_ID: NodeId = 99;
/// Name of the cluster description file inside the cluster directory.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Environment variable naming the `billdb-node` binary.
pub const NODE_BIN_ENV: &str = "BILLDB_NODE_BIN";
/// File name of the node binary.
pub const NODE_BIN_NAME: &str = "billdb-node";
/// How long [`LocalCluster::stop`] waits after SIGTERM before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for a process to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one HTTP request made while polling.
const POLL_HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of one mutating admin request (init).
const ADMIN_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Picks of the SST file to damage before giving up (a running node's
/// compaction can delete the one picked).
const SST_DAMAGE_ATTEMPTS: u32 = 5;
const CLUSTER_FILE_VERSION: u32 = 1;

// ---------------------------------------------------------------------------
// Specs and config files
// ---------------------------------------------------------------------------

/// Raft timing knobs written to the `[raft]` section of every node.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries (node default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Entries kept behind a snapshot (node default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_to_keep_after_snapshot: Option<u64>,
    /// How linearizable reads confirm leadership (node default, ReadIndex,
    /// when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<ReadPolicy>,
}

/// `raft.read_policy` of node.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    ReadIndex,
    Lease,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_logs_since_last: None,
            logs_to_keep_after_snapshot: None,
            read_policy: None,
        }
    }
}

/// One node of the local cluster and its listen addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub http_addr: String,
    pub grpc_addr: String,
    pub raft_addr: String,
}

impl NodeSpec {
    /// Addresses in the shape of the admin API's init/learner bodies.
    pub fn addrs(&self) -> NodeAddrs {
        NodeAddrs {
            id: self.id,
            raft_addr: self.raft_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
        }
    }
}

/// Contents of `DIR/cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub version: u32,
    /// Absolute path of the `billdb-node` binary used by `start`.
    pub node_bin: PathBuf,
    pub base_port: u16,
    /// Set once `POST /v1/cluster/init` succeeded (or answered ALREADY_INITIALIZED).
    #[serde(default)]
    pub initialized: bool,
    #[serde(default)]
    pub raft: RaftTimings,
    /// When set (e.g. `"127.0.1."`), node N listens on `{prefix}N` instead of
    /// 127.0.0.1 — one loopback address per node, so traffic between two nodes
    /// can be told apart (the chaos suite cuts links with firewall rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_prefix: Option<String>,
    /// TLS on every listener, mutual between nodes (the default); `None`:
    /// a cluster explicitly created plaintext (`billdb local up --insecure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Sorted by id.
    pub nodes: Vec<NodeSpec>,
}

/// The TLS settings of a local cluster; the material is in `DIR/tls/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTls {
    pub cluster_id: String,
}

/// The cluster id local clusters' certificates name.
pub const LOCAL_CLUSTER_ID: &str = "local";

impl ClusterSpec {
    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// Ports `(http, grpc, raft)` of node `id` for base port `base`.
pub fn node_ports(base: u16, id: NodeId) -> Result<(u16, u16, u16)> {
    ensure!(
        (1..=MAX_NODE_ID).contains(&id),
        "node id {id} out of range 1..={MAX_NODE_ID}"
    );
    let port = |off: u64| -> Result<u16> {
        let p = u64::from(base) + off + id;
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("base port {base} too high: node {id} would need port {p}"))
    };
    Ok((port(0)?, port(100)?, port(200)?))
}

/// The spec of node `id` on 127.0.0.1 for base port `base`.
pub fn node_spec(base: u16, id: NodeId) -> Result<NodeSpec> {
    node_spec_on(base, id, None)
}

/// The spec of node `id` for base port `base`, on host `{prefix}{id}` when a
/// host prefix is given (e.g. `127.0.1.` → `127.0.1.3` for node 3), else on
/// 127.0.0.1.
pub fn node_spec_on(base: u16, id: NodeId, host_prefix: Option<&str>) -> Result<NodeSpec> {
    let (http, grpc, raft) = node_ports(base, id)?;
    let host = match host_prefix {
        Some(p) => {
            let host = format!("{p}{id}");
            ensure!(
                host.parse::<std::net::IpAddr>().is_ok(),
                "host prefix {p:?} gives {host:?} for node {id}, which is not an IP address"
            );
            host
        }
        None => "127.0.0.1".to_string(),
    };
    Ok(NodeSpec {
        id,
        http_addr: format!("{host}:{http}"),
        grpc_addr: format!("{host}:{grpc}"),
        raft_addr: format!("{host}:{raft}"),
    })
}

/// The node.toml file, as read by `billdb-node --config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub raft_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub raft: RaftTimings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NodeAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NodeTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<NodeInsecure>,
}

/// `[tls]` of node.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTls {
    pub cluster_id: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[insecure]` of node.toml: listeners explicitly left plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInsecure {
    pub raft: bool,
    pub grpc: bool,
    pub http: bool,
}

/// `[auth]` of node.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAuth {
    pub tokens_file: PathBuf,
}

/// Demo identities every local cluster gets a token for.
pub const DEMO_IDENTITIES: &[(&str, &str)] = &[
    ("ops", "role = \"ops\"\noperator_id = \"ops-1\""),
    ("auditor", "role = \"auditor\"\noperator_id = \"audit-1\""),
    (
        "counter",
        "role = \"counter\"\noperator_id = \"C-0101\"\nbranch = \"B01\"",
    ),
    ("bank", "role = \"bank\"\nbank_code = \"ICBC\""),
];

/// A fresh random token (128 bits from the OS, hex).
pub fn random_token() -> Result<String> {
    let mut buf = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// Hex SHA-256 of a token, as the node's tokens file stores it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl NodeConfig {
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serializing node config to TOML")
    }
}

// ---------------------------------------------------------------------------
// Node binary discovery
// ---------------------------------------------------------------------------

fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    fs::canonicalize(p).with_context(|| format!("resolving path {}", p.display()))
}

/// Finds `billdb-node`: `explicit` (the `--node-bin` flag), else env
/// `BILLDB_NODE_BIN`, else next to the current executable or in its parent
/// directory (cargo test binaries live in `target/<profile>/deps`), else `PATH`.
pub fn find_node_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    let env = std::env::var_os(NODE_BIN_ENV);
    let exe = std::env::current_exe().ok();
    let path = std::env::var_os("PATH");
    resolve_node_bin(explicit, env.as_deref(), exe.as_deref(), path.as_deref())
}

/// The pure part of [`find_node_bin`] (all inputs explicit, for tests).
pub fn resolve_node_bin(
    explicit: Option<&Path>,
    env_value: Option<&OsStr>,
    current_exe: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        ensure!(
            is_executable_file(p),
            "--node-bin {} is not an executable file",
            p.display()
        );
        return absolute(p);
    }
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        let p = Path::new(v);
        ensure!(
            is_executable_file(p),
            "{NODE_BIN_ENV}={} is not an executable file",
            p.display()
        );
        return absolute(p);
    }
    let mut searched = Vec::new();
    if let Some(exe_dir) = current_exe.and_then(Path::parent) {
        let mut dirs = vec![exe_dir.to_path_buf()];
        if let Some(parent) = exe_dir.parent() {
            dirs.push(parent.to_path_buf());
        }
        for d in dirs {
            let cand = d.join(NODE_BIN_NAME);
            if is_executable_file(&cand) {
                return absolute(&cand);
            }
            searched.push(d.display().to_string());
        }
    }
    if let Some(path_var) = path_var {
        for d in std::env::split_paths(path_var) {
            let cand = d.join(NODE_BIN_NAME);
            if is_executable_file(&cand) {
                return absolute(&cand);
            }
        }
        searched.push("$PATH".to_string());
    }
    bail!(
        "cannot find the {NODE_BIN_NAME} binary (searched {}); build it with \
         `cargo build --release -p billdb-node`, or pass --node-bin / set {NODE_BIN_ENV}",
        searched.join(", ")
    )
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// State of a process as seen in `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Alive and scheduled (R, S, D, I, ...).
    Running,
    /// Stopped by SIGSTOP (T) or tracing stop (t).
    Stopped,
    /// Exited, not yet reaped by its parent.
    Zombie,
    /// No such process.
    Gone,
}

/// Reads the state of `pid` from `/proc/PID/stat` (falls back to `kill(pid, 0)`
/// where `/proc` is not mounted).
pub fn process_state(pid: u32) -> ProcState {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return ProcState::Gone;
    };
    if pid_t <= 0 {
        return ProcState::Gone;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat_state(&stat).unwrap_or(ProcState::Gone),
        Err(_) if Path::new("/proc/self/stat").exists() => ProcState::Gone,
        Err(_) => {
            // SAFETY: kill with signal 0 only checks for existence/permission.
            let r = unsafe { libc::kill(pid_t, 0) };
            if r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                ProcState::Running
            } else {
                ProcState::Gone
            }
        }
    }
}

/// Parses the state letter of a `/proc/PID/stat` line. The command name is in
/// parentheses and may itself contain spaces and parentheses, so the state is
/// the first field after the last `)`.
pub fn parse_stat_state(stat: &str) -> Option<ProcState> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let c = rest.trim_start().chars().next()?;
    Some(match c {
        'Z' => ProcState::Zombie,
        'X' | 'x' => ProcState::Gone,
        'T' | 't' => ProcState::Stopped,
        _ => ProcState::Running,
    })
}

/// True when `pid` exists and is not a zombie (a stopped process is alive).
pub fn pid_alive(pid: u32) -> bool {
    matches!(process_state(pid), ProcState::Running | ProcState::Stopped)
}

/// Sends `sig` to `pid`. Ok(false) when the process does not exist.
pub fn send_signal(pid: u32, sig: libc::c_int) -> Result<bool> {
    let pid_t = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("invalid pid {pid}"))?;
    // SAFETY: plain syscall on a positive pid (never a process group).
    let r = unsafe { libc::kill(pid_t, sig) };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err).with_context(|| format!("sending signal {sig} to pid {pid}"))
    }
}

/// Whether the command line of `pid` contains the argument `arg`. `None` when the
/// command line cannot be read (no /proc); an empty command line (zombie, kernel
/// thread) yields `Some(false)`.
fn cmdline_contains(pid: u32, arg: &Path) -> Option<bool> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = arg.as_os_str().as_encoded_bytes();
    Some(raw.split(|b| *b == 0).any(|a| a == needle))
}

// ---------------------------------------------------------------------------
// Status interpretation (pure, shared by wait_leader and the status table)
// ---------------------------------------------------------------------------

fn field_u64(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn field_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn id_list(v: &Value, key: &str) -> Vec<NodeId> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// The leader that a majority agrees on, given `(node, status)` pairs: a node
/// whose status says `role == "leader"`, such that a majority of the voters (the
/// leader's `voters` list, or all given nodes when it has none) report it as
/// `leader_id`. Among several such candidates the one with the highest term wins.
pub fn agreed_leader(statuses: &[(NodeId, Option<Value>)]) -> Option<NodeId> {
    let mut best: Option<(u64, NodeId)> = None;
    for (n, st) in statuses {
        let Some(st) = st else { continue };
        if field_str(st, "role") != Some("leader") {
            continue;
        }
        let leader = field_u64(st, "node_id").unwrap_or(*n);
        let term = field_u64(st, "term").unwrap_or(0);
        let mut voters = id_list(st, "voters");
        if voters.is_empty() {
            voters = statuses.iter().map(|(id, _)| *id).collect();
        }
        let agree = statuses
            .iter()
            .filter(|(id, _)| voters.contains(id))
            .filter(|(id, s)| {
                s.as_ref().is_some_and(|s| {
                    field_u64(s, "leader_id") == Some(leader)
                        || (*id == leader && field_str(s, "role") == Some("leader"))
                })
            })
            .count();
        if agree > voters.len() / 2 && best.is_none_or(|(t, _)| term > t) {
            best = Some((term, leader));
        }
    }
    best.map(|(_, l)| l)
}

/// Whether any status shows a node that already belongs to an initialised cluster.
pub fn any_initialized(statuses: &[(NodeId, Option<Value>)]) -> bool {
    statuses.iter().any(|(_, s)| {
        s.as_ref().is_some_and(|s| {
            !id_list(s, "voters").is_empty() || field_u64(s, "leader_id").is_some()
        })
    })
}

/// Run state of a local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Running,
    Paused,
    Stopped,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Running => "running",
            NodeState::Paused => "paused",
            NodeState::Stopped => "stopped",
        }
    }
}

/// One row of `billdb local status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub pid: Option<u32>,
    pub state: NodeState,
    pub http_addr: String,
    pub grpc_addr: String,
    pub raft_addr: String,
    /// `GET /v1/cluster/status` of the node, when it answered.
    pub status: Option<Value>,
}

/// Replication lag of `id` as reported by the leader's status (`lag`, or
/// `last_log_index - matched_index`).
fn lag_of(leader_status: &Value, id: NodeId) -> Option<u64> {
    let rep = leader_status.get("replication")?.get(id.to_string())?;
    field_u64(rep, "lag").or_else(|| {
        let matched = field_u64(rep, "matched_index").unwrap_or(0);
        Some(field_u64(leader_status, "last_log_index")?.saturating_sub(matched))
    })
}

/// Renders the status table printed by `billdb local status` / `local up`.
pub fn render_status_table(rows: &[NodeReport]) -> String {
    let leader_status = rows
        .iter()
        .filter_map(|r| r.status.as_ref())
        .filter(|s| field_str(s, "role") == Some("leader"))
        .max_by_key(|s| field_u64(s, "term").unwrap_or(0));
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let header = [
        "NODE",
        "PID",
        "STATE",
        "ROLE",
        "TERM",
        "LEADER",
        "LAST_LOG",
        "COMMITTED",
        "APPLIED",
        "LAG",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let s = r.status.as_ref();
        let get = |k: &str| s.and_then(|s| field_u64(s, k));
        let role = match (r.state, s) {
            (NodeState::Running, None) => "unreachable".to_string(),
            (_, None) => "-".to_string(),
            (_, Some(s)) => field_str(s, "role").unwrap_or("?").to_string(),
        };
        let is_leader = s.is_some_and(|s| field_str(s, "role") == Some("leader"));
        let lag = if is_leader {
            "-".to_string()
        } else {
            opt(leader_status.and_then(|l| lag_of(l, r.id)))
        };
        table.push(vec![
            r.id.to_string(),
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            r.state.as_str().to_string(),
            role,
            opt(get("term")),
            opt(get("leader_id")),
            opt(get("last_log_index")),
            opt(get("committed_index")),
            opt(get("applied_index")),
            lag,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// LocalCluster
// ---------------------------------------------------------------------------

/// Result of [`LocalCluster::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The node was not running.
    NotRunning,
    /// Exited after SIGTERM within the timeout.
    Terminated,
    /// Did not exit after SIGTERM in time and was SIGKILLed.
    Killed,
}

/// Handle on a local cluster directory. Cheap to clone; clones share state
/// (including ownership of the spawned child processes).
#[derive(Clone)]
pub struct LocalCluster {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    spec: Mutex<ClusterSpec>,
    /// Processes spawned by this handle (kept so they can be reaped).
    children: Mutex<HashMap<NodeId, Child>>,
    kill_on_drop: AtomicBool,
    /// Extra environment for the node processes this handle starts.
    node_env: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `contents` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LocalCluster {
    /// Creates a new cluster directory with nodes `1..=n` (does not start them).
    /// Fails if `dir/cluster.json` already exists.
    pub fn create(dir: &Path, node_bin: &Path, base_port: u16, n: usize) -> Result<Self> {
        Self::create_with(dir, node_bin, base_port, n, RaftTimings::default())
    }

    /// [`create`](Self::create) with explicit Raft timings.
    pub fn create_with(
        dir: &Path,
        node_bin: &Path,
        base_port: u16,
        n: usize,
        raft: RaftTimings,
    ) -> Result<Self> {
        Self::create_on_hosts(dir, node_bin, base_port, n, raft, None)
    }

    /// [`create_with`](Self::create_with), placing node N on host
    /// `{host_prefix}N` (see [`ClusterSpec::host_prefix`]) when given.
    pub fn create_on_hosts(
        dir: &Path,
        node_bin: &Path,
        base_port: u16,
        n: usize,
        raft: RaftTimings,
        host_prefix: Option<&str>,
    ) -> Result<Self> {
        Self::create_full(dir, node_bin, base_port, n, raft, host_prefix, true)
    }

    /// [`create_on_hosts`](Self::create_on_hosts), with TLS (`tls`, the
    /// default everywhere else) or explicitly plaintext (`!tls`).
    pub fn create_full(
        dir: &Path,
        node_bin: &Path,
        base_port: u16,
        n: usize,
        raft: RaftTimings,
        host_prefix: Option<&str>,
        tls: bool,
    ) -> Result<Self> {
        Self::create_named(
            dir,
            node_bin,
            base_port,
            n,
            raft,
            host_prefix,
            tls.then_some(LOCAL_CLUSTER_ID),
        )
    }

    /// [`create_full`](Self::create_full) with TLS for the cluster id
    /// `cluster_id` (its CA and every certificate name it), or plaintext
    /// for `None`: e.g. a new cluster restored from a backup.
    pub fn create_named(
        dir: &Path,
        node_bin: &Path,
        base_port: u16,
        n: usize,
        raft: RaftTimings,
        host_prefix: Option<&str>,
        cluster_id: Option<&str>,
    ) -> Result<Self> {
        let tls = cluster_id.is_some();
        ensure!(
            (1..=MAX_NODE_ID as usize).contains(&n),
            "node count {n} out of range 1..={MAX_NODE_ID}"
        );
        ensure!(
            raft.election_timeout_min_ms <= raft.election_timeout_max_ms,
            "election_timeout_min_ms > election_timeout_max_ms"
        );
        fs::create_dir_all(dir)
            .with_context(|| format!("creating cluster directory {}", dir.display()))?;
        let dir = absolute(dir)?;
        let file = dir.join(CLUSTER_FILE);
        ensure!(
            !file.exists(),
            "{} already exists (open it instead, or remove the directory)",
            file.display()
        );
        let node_bin = if node_bin.is_absolute() {
            node_bin.to_path_buf()
        } else {
            std::env::current_dir()
                .context("reading current directory")?
                .join(node_bin)
        };
        let nodes = (1..=n as NodeId)
            .map(|id| node_spec_on(base_port, id, host_prefix))
            .collect::<Result<Vec<_>>>()?;
        let spec = ClusterSpec {
            version: CLUSTER_FILE_VERSION,
            node_bin,
            base_port,
            initialized: false,
            raft,
            host_prefix: host_prefix.map(str::to_string),
            tls: cluster_id.map(|id| ClusterTls {
                cluster_id: id.to_string(),
            }),
            nodes,
        };
        let cluster = Self::from_spec(dir, spec);
        cluster.write_tokens()?;
        if tls {
            cluster.write_ca()?;
        }
        for node in cluster.spec().nodes {
            cluster.write_node_config(&node)?;
        }
        cluster.save()?;
        Ok(cluster)
    }

    /// Opens an existing cluster directory (reads `dir/cluster.json`).
    pub fn open(dir: &Path) -> Result<Self> {
        let file = dir.join(CLUSTER_FILE);
        let text = fs::read_to_string(&file).with_context(|| {
            format!(
                "no local cluster at {} (cannot read {}); create one with `billdb local up`",
                dir.display(),
                file.display()
            )
        })?;
        let spec: ClusterSpec =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        ensure!(
            spec.version == CLUSTER_FILE_VERSION,
            "{} has version {}, this billdb understands {CLUSTER_FILE_VERSION}",
            file.display(),
            spec.version
        );
        Ok(Self::from_spec(absolute(dir)?, spec))
    }

    /// Whether `dir` holds a cluster (a `cluster.json`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CLUSTER_FILE).is_file()
    }

    fn from_spec(dir: PathBuf, mut spec: ClusterSpec) -> Self {
        spec.nodes.sort_by_key(|n| n.id);
        LocalCluster {
            inner: Arc::new(Inner {
                dir,
                spec: Mutex::new(spec),
                children: Mutex::new(HashMap::new()),
                kill_on_drop: AtomicBool::new(false),
                node_env: Mutex::new(Vec::new()),
            }),
        }
    }

    fn save(&self) -> Result<()> {
        let spec = self.spec();
        let text = serde_json::to_string_pretty(&spec).context("serializing cluster.json")?;
        write_atomic(&self.inner.dir.join(CLUSTER_FILE), text.as_bytes())
    }

    fn write_node_config(&self, node: &NodeSpec) -> Result<()> {
        let node_dir = self.node_dir(node.id);
        fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let cfg = NodeConfig {
            node_id: node.id,
            data_dir: self.data_dir(node.id),
            raft_addr: node.raft_addr.clone(),
            grpc_addr: node.grpc_addr.clone(),
            http_addr: node.http_addr.clone(),
            raft: self.spec().raft,
            auth: self.tokens_toml_path().exists().then(|| NodeAuth {
                tokens_file: self.tokens_toml_path(),
            }),
            tls: self.spec().tls.map(|t| NodeTls {
                cluster_id: t.cluster_id,
                ca_file: self.ca_bundle_path(),
                cert_file: self.node_cert_path(node.id),
                key_file: self.node_key_path(node.id),
            }),
            insecure: self.spec().tls.is_none().then_some(NodeInsecure {
                raft: true,
                grpc: true,
                http: true,
            }),
        };
        if cfg.tls.is_some() {
            self.issue_node_cert(node)?;
        }
        write_atomic(&self.config_path(node.id), cfg.to_toml()?.as_bytes())
    }

    // --- TLS material -------------------------------------------------------

    /// `DIR/tls/`: the cluster's CA bundle, node certificates and keys.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir().join("tls")
    }

    /// `DIR/tls/ca.pem`: the CA certificates nodes and clients trust (two
    /// during a CA rotation).
    pub fn ca_bundle_path(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    /// `DIR/tls/signing/`: the CA that issues (`ca.pem`, `ca.key`).
    fn signing_dir(&self) -> PathBuf {
        self.tls_dir().join("signing")
    }

    pub fn node_cert_path(&self, n: NodeId) -> PathBuf {
        self.tls_dir().join(format!("node{n}.pem"))
    }

    pub fn node_key_path(&self, n: NodeId) -> PathBuf {
        self.tls_dir().join(format!("node{n}.key"))
    }

    /// Whether the cluster runs TLS.
    pub fn is_tls(&self) -> bool {
        self.spec().tls.is_some()
    }

    /// What a client of this cluster needs for TLS (`None`: plaintext).
    pub fn client_tls(&self) -> Result<Option<crate::tls::ClientTls>> {
        if !self.is_tls() {
            return Ok(None);
        }
        crate::tls::ClientTls::from_files(&self.ca_bundle_path(), None).map(Some)
    }

    /// The URL scheme of the client ports (`https` or `http`).
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    fn cluster_id(&self) -> Result<String> {
        self.spec()
            .tls
            .map(|t| t.cluster_id)
            .context("this cluster was created plaintext (--insecure): it has no TLS material")
    }

    /// A new CA (DIR/tls/signing) trusted alone (DIR/tls/ca.pem).
    fn write_ca(&self) -> Result<()> {
        let ca = crate::certs::new_ca(&self.cluster_id()?)?;
        crate::certs::write_ca(&self.signing_dir(), &ca)?;
        crate::certs::write_file(&self.ca_bundle_path(), ca.cert_pem.as_bytes(), 0o644)
    }

    /// Issue node `node`'s certificate from the signing CA (its key first,
    /// then the certificate: a node watching the files reloads both).
    fn issue_node_cert(&self, node: &NodeSpec) -> Result<()> {
        let ca = crate::certs::read_ca(&self.signing_dir())?;
        let host = node.raft_addr.rsplit_once(':').map(|(h, _)| h.to_string());
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        hosts.extend(host.filter(|h| !hosts.contains(h)));
        let leaf = crate::certs::node_cert(&ca, &self.cluster_id()?, node.id, &hosts)?;
        crate::certs::write_leaf(&self.tls_dir(), &format!("node{}", node.id), &leaf)
    }

    /// Issue a client certificate `name` (`DIR/tls/client-<name>.pem|key`)
    /// from the signing CA; returns (certificate path, key path).
    pub fn issue_client_cert(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let ca = crate::certs::read_ca(&self.signing_dir())?;
        let leaf = crate::certs::client_cert(&ca, &self.cluster_id()?, name)?;
        let stem = format!("client-{name}");
        crate::certs::write_leaf(&self.tls_dir(), &stem, &leaf)?;
        Ok((
            self.tls_dir().join(format!("{stem}.pem")),
            self.tls_dir().join(format!("{stem}.key")),
        ))
    }

    /// Re-issue every node's certificate and key in place; running nodes
    /// pick them up within seconds, without a restart.
    pub fn rotate_node_certs(&self) -> Result<()> {
        for node in self.spec().nodes {
            self.issue_node_cert(&node)?;
        }
        Ok(())
    }

    /// CA rotation, first step: a new signing CA, trusted beside the old
    /// one (`ca.pem` holds both), and every node certificate re-issued from
    /// it. Clients should take the new `ca.pem` now.
    pub fn rotate_ca_begin(&self) -> Result<()> {
        let old_bundle = fs::read_to_string(self.ca_bundle_path())
            .with_context(|| format!("reading {}", self.ca_bundle_path().display()))?;
        let ca = crate::certs::new_ca(&self.cluster_id()?)?;
        let bundle = format!("{}\n{}", old_bundle.trim_end(), ca.cert_pem);
        crate::certs::write_file(&self.ca_bundle_path(), bundle.as_bytes(), 0o644)?;
        crate::certs::write_ca(&self.signing_dir(), &ca)?;
        self.rotate_node_certs()
    }

    /// CA rotation, last step: trust only the signing CA (drop the old).
    pub fn rotate_ca_finish(&self) -> Result<()> {
        let ca = crate::certs::read_ca(&self.signing_dir())?;
        crate::certs::write_file(&self.ca_bundle_path(), ca.cert_pem.as_bytes(), 0o644)
    }

    /// When set, dropping the last clone of this handle SIGKILLs every running
    /// node of the cluster (use in tests).
    pub fn set_kill_on_drop(&self, yes: bool) {
        self.inner.kill_on_drop.store(yes, Ordering::SeqCst);
    }

    /// Set an environment variable for every node this handle starts from
    /// now on (not persisted).
    pub fn set_node_env(&self, key: &str, value: &str) {
        let mut env = lock(&self.inner.node_env);
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }

    /// Stop setting `key` for the nodes this handle starts from now on.
    pub fn remove_node_env(&self, key: &str) {
        lock(&self.inner.node_env).retain(|(k, _)| k != key);
    }

    /// Turn the nodes' test fault points on for every node started from
    /// now on (`billdb_api::failpoints`).
    pub fn enable_failpoints(&self) {
        self.set_node_env(billdb_api::failpoints::ENV, "1");
    }

    /// Hold node `n`'s WAL fsyncs (its fault point must be on) until
    /// [`release_fsyncs`](Self::release_fsyncs).
    pub fn hold_fsyncs(&self, n: NodeId) -> Result<()> {
        let p = self
            .data_dir(n)
            .join(billdb_api::failpoints::FSYNC_PAUSE_FILE);
        fs::write(&p, b"").with_context(|| format!("writing {}", p.display()))
    }

    /// Let node `n`'s WAL fsyncs go on (nothing to do if they were not held).
    pub fn release_fsyncs(&self, n: NodeId) -> Result<()> {
        let p = self
            .data_dir(n)
            .join(billdb_api::failpoints::FSYNC_PAUSE_FILE);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }

    /// Make node `n`'s next WAL fsync fail with an I/O error (its fault
    /// point must be on); the node then stops its Raft core and restarts
    /// itself.
    pub fn arm_fsync_error(&self, n: NodeId) -> Result<()> {
        let p = self
            .data_dir(n)
            .join(billdb_api::failpoints::FSYNC_ERROR_FILE);
        fs::write(&p, b"").with_context(|| format!("writing {}", p.display()))
    }

    /// Whether node `n`'s armed fsync error has fired (its file is gone).
    pub fn fsync_error_fired(&self, n: NodeId) -> bool {
        !self
            .data_dir(n)
            .join(billdb_api::failpoints::FSYNC_ERROR_FILE)
            .exists()
    }

    /// Damage node `n`'s largest SST file as a failing disk would: 3 × 64
    /// bytes inverted at 10 %, 30 % and 50 % of it (data blocks; the index
    /// and footer are at the end). The file and its size. A running node's
    /// compaction may delete the file picked before it is opened: the pick
    /// is made again, at most [`SST_DAMAGE_ATTEMPTS`] times.
    pub fn damage_largest_sst(&self, n: NodeId) -> Result<(PathBuf, u64)> {
        use std::io::{Read, Seek, SeekFrom, Write};
        let db = self.data_dir(n).join("db");
        let mut attempt = 1;
        let (mut f, path, len) = loop {
            let mut largest: Option<(u64, PathBuf)> = None;
            for e in fs::read_dir(&db).with_context(|| format!("listing {}", db.display()))? {
                let e = e?;
                let path = e.path();
                if path.extension().is_some_and(|x| x == "sst") {
                    let len = match e.metadata() {
                        Ok(m) => m.len(),
                        // Deleted since it was listed.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e).with_context(|| path.display().to_string()),
                    };
                    if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                        largest = Some((len, path));
                    }
                }
            }
            let (len, path) =
                largest.with_context(|| format!("no SST file in {}", db.display()))?;
            match fs::OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => break (f, path, len),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && attempt < SST_DAMAGE_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            }
        };
        for pct in [10u64, 30, 50] {
            let at = len * pct / 100;
            let mut buf = [0u8; 64];
            f.seek(SeekFrom::Start(at))?;
            let got = f.read(&mut buf)?;
            for b in &mut buf[..got] {
                *b ^= 0xFF;
            }
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&buf[..got])?;
        }
        f.sync_all()?;
        Ok((path, len))
    }

    // --- accessors --------------------------------------------------------

    /// The (absolute) cluster directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A copy of the cluster description.
    pub fn spec(&self) -> ClusterSpec {
        lock(&self.inner.spec).clone()
    }

    /// Ids of all nodes, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        lock(&self.inner.spec).nodes.iter().map(|n| n.id).collect()
    }

    /// The spec of node `n`.
    pub fn node(&self, n: NodeId) -> Result<NodeSpec> {
        lock(&self.inner.spec)
            .node(n)
            .cloned()
            .ok_or_else(|| anyhow!("no node {n} in cluster {}", self.inner.dir.display()))
    }

    pub fn base_port(&self) -> u16 {
        lock(&self.inner.spec).base_port
    }

    pub fn node_bin(&self) -> PathBuf {
        lock(&self.inner.spec).node_bin.clone()
    }

    /// Changes (and persists) the binary used by later `start`s.
    pub fn set_node_bin(&self, node_bin: &Path) -> Result<()> {
        let p = absolute(node_bin)?;
        lock(&self.inner.spec).node_bin = p;
        self.save()
    }

    /// Keeps the stored binary unless `explicit` or `BILLDB_NODE_BIN` says
    /// otherwise or it no longer exists, in which case it is re-discovered with
    /// [`find_node_bin`] and persisted. Returns the binary in use.
    pub fn ensure_node_bin(&self, explicit: Option<&Path>) -> Result<PathBuf> {
        let env_set = std::env::var_os(NODE_BIN_ENV).is_some_and(|v| !v.is_empty());
        let current = self.node_bin();
        if explicit.is_none() && !env_set && is_executable_file(&current) {
            return Ok(current);
        }
        let found = find_node_bin(explicit)?;
        if found != current {
            self.set_node_bin(&found)?;
        }
        Ok(found)
    }

    pub fn initialized(&self) -> bool {
        lock(&self.inner.spec).initialized
    }

    /// Records (in `cluster.json`) that the Raft cluster has been initialised, so
    /// later `billdb local up` runs never send `init` again.
    pub fn set_initialized(&self) -> Result<()> {
        {
            let mut spec = lock(&self.inner.spec);
            if spec.initialized {
                return Ok(());
            }
            spec.initialized = true;
        }
        self.save()
    }

    pub fn node_dir(&self, n: NodeId) -> PathBuf {
        self.inner.dir.join(format!("node{n}"))
    }
    pub fn data_dir(&self, n: NodeId) -> PathBuf {
        self.node_dir(n).join("data")
    }
    pub fn config_path(&self, n: NodeId) -> PathBuf {
        self.node_dir(n).join("node.toml")
    }
    pub fn log_path(&self, n: NodeId) -> PathBuf {
        self.node_dir(n).join("node.log")
    }
    pub fn pid_path(&self, n: NodeId) -> PathBuf {
        self.node_dir(n).join("pid")
    }

    /// `HOST:PORT` of node `n`'s HTTP admin API (127.0.0.1 unless a host prefix is set).
    pub fn http_addr(&self, n: NodeId) -> Result<String> {
        Ok(self.node(n)?.http_addr)
    }
    /// `127.0.0.1:PORT` of node `n`'s client gRPC API.
    pub fn grpc_addr(&self, n: NodeId) -> Result<String> {
        Ok(self.node(n)?.grpc_addr)
    }
    /// `127.0.0.1:PORT` of node `n`'s Raft listener.
    pub fn raft_addr(&self, n: NodeId) -> Result<String> {
        Ok(self.node(n)?.raft_addr)
    }

    /// Admin client of node `n` with the default timeout.
    pub fn admin(&self, n: NodeId) -> Result<AdminClient> {
        self.admin_with_timeout(n, crate::admin::DEFAULT_TIMEOUT)
    }

    /// HTTP client of node `n` (TLS when the cluster runs it) with no token.
    pub fn http_client(&self, n: NodeId, timeout: Duration) -> Result<AdminClient> {
        Ok(AdminClient::with_tls(
            &self.http_addr(n)?,
            timeout,
            self.client_tls()?.as_ref(),
        ))
    }

    fn admin_with_timeout(&self, n: NodeId, t: Duration) -> Result<AdminClient> {
        Ok(self.http_client(n, t)?.with_token(self.token("ops").ok()))
    }

    /// The client gRPC URL of node `n` (`https://…` under TLS).
    pub fn grpc_url(&self, n: NodeId) -> Result<String> {
        Ok(format!("{}://{}", self.scheme(), self.grpc_addr(n)?))
    }

    /// The HTTP URL of node `n` (`https://…` under TLS).
    pub fn http_url(&self, n: NodeId) -> Result<String> {
        Ok(format!("{}://{}", self.scheme(), self.http_addr(n)?))
    }

    // --- tokens -------------------------------------------------------------

    /// `DIR/tokens.toml`: hashed tokens the nodes load.
    pub fn tokens_toml_path(&self) -> PathBuf {
        self.dir().join("tokens.toml")
    }

    /// `DIR/tokens.json`: the plaintext demo tokens (mode 0600).
    pub fn tokens_json_path(&self) -> PathBuf {
        self.dir().join("tokens.json")
    }

    /// Generate one random token per demo identity.
    fn write_tokens(&self) -> Result<()> {
        let mut plain = serde_json::Map::new();
        let mut toml = String::from("# billdb tokens: SHA-256 of each bearer token and its role\n");
        for (name, body) in DEMO_IDENTITIES {
            let token = random_token()?;
            toml.push_str(&format!(
                "\n[[token]]\nsha256 = \"{}\"\n{body}\n",
                token_sha256(&token)
            ));
            plain.insert((*name).to_string(), Value::String(token));
        }
        write_atomic(&self.tokens_toml_path(), toml.as_bytes())?;
        let json = serde_json::to_vec_pretty(&Value::Object(plain)).context("encoding tokens")?;
        write_atomic(&self.tokens_json_path(), &json)?;
        fs::set_permissions(self.tokens_json_path(), fs::Permissions::from_mode(0o600))
            .context("restricting tokens.json")?;
        Ok(())
    }

    /// The demo token of `identity` (ops, auditor, counter, bank).
    pub fn token(&self, identity: &str) -> Result<String> {
        let raw = fs::read(self.tokens_json_path())
            .with_context(|| format!("reading {}", self.tokens_json_path().display()))?;
        let v: Value = serde_json::from_slice(&raw).context("parsing tokens.json")?;
        v.get(identity)
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .with_context(|| format!("no token for {identity:?}"))
    }

    // --- membership of the local cluster ---------------------------------

    /// Adds node `n` (e.g. 6) to the local cluster description, with ports from
    /// the base port, and writes its node.toml. Does not start it and does not
    /// change the Raft membership (use the admin API for that).
    pub fn add_node(&self, n: NodeId) -> Result<NodeSpec> {
        let spec = {
            let mut s = lock(&self.inner.spec);
            ensure!(s.node(n).is_none(), "node {n} already exists");
            let spec = node_spec_on(s.base_port, n, s.host_prefix.as_deref())?;
            s.nodes.push(spec.clone());
            s.nodes.sort_by_key(|x| x.id);
            spec
        };
        self.write_node_config(&spec)?;
        self.save()?;
        Ok(spec)
    }

    // --- process state ----------------------------------------------------

    /// Reaps our own child for `n` if it has exited.
    fn reap(&self, n: NodeId) {
        let mut children = lock(&self.inner.children);
        if let Some(child) = children.get_mut(&n)
            && !matches!(child.try_wait(), Ok(None))
        {
            children.remove(&n);
        }
    }

    fn read_pid_file(&self, n: NodeId) -> Option<u32> {
        fs::read_to_string(self.pid_path(n))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Pid of node `n` when its process is alive (running or paused).
    pub fn pid(&self, n: NodeId) -> Option<u32> {
        self.reap(n);
        let pid = self.read_pid_file(n)?;
        if !pid_alive(pid) {
            return None;
        }
        // Our own child: alive is enough. (Between fork and exec its
        // cmdline is still this process's, so the check below would call a
        // node that is just starting "not running".)
        if lock(&self.inner.children)
            .get(&n)
            .is_some_and(|c| c.id() == pid)
        {
            return Some(pid);
        }
        // Guard against a stale pid file whose pid was reused by another process.
        match cmdline_contains(pid, &self.config_path(n)) {
            Some(false) => None,
            Some(true) | None => Some(pid),
        }
    }

    /// Whether node `n`'s process is alive (paused counts as alive).
    pub fn is_running(&self, n: NodeId) -> bool {
        self.pid(n).is_some()
    }

    /// Whether node `n` is alive but stopped by [`pause`](Self::pause).
    pub fn is_paused(&self, n: NodeId) -> bool {
        self.pid(n)
            .is_some_and(|p| process_state(p) == ProcState::Stopped)
    }

    pub fn node_state(&self, n: NodeId) -> NodeState {
        match self.pid(n) {
            None => NodeState::Stopped,
            Some(p) if process_state(p) == ProcState::Stopped => NodeState::Paused,
            Some(_) => NodeState::Running,
        }
    }

    fn require_pid(&self, n: NodeId) -> Result<u32> {
        self.node(n)?;
        self.pid(n)
            .ok_or_else(|| anyhow!("node {n} is not running"))
    }

    /// Whether `pid` (node `n`) has exited; reaps it if it is our child.
    fn has_exited(&self, n: NodeId, pid: u32) -> bool {
        {
            let mut children = lock(&self.inner.children);
            if let Some(child) = children.get_mut(&n)
                && child.id() == pid
            {
                return match child.try_wait() {
                    Ok(None) => false,
                    _ => {
                        children.remove(&n);
                        true
                    }
                };
            }
        }
        !pid_alive(pid)
    }

    fn wait_exit(&self, n: NodeId, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_exited(n, pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn clear_pid_file(&self, n: NodeId, pid: u32) {
        if self.read_pid_file(n) == Some(pid) {
            let _ = fs::remove_file(self.pid_path(n));
        }
    }

    fn append_log_marker(&self, n: NodeId, msg: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(n))
        {
            let _ = writeln!(f, "--- [billdb local] {} {msg}", unix_now());
        }
    }

    // --- lifecycle --------------------------------------------------------

    /// Starts node `n` in the background; returns its pid. Fails if it is already
    /// running, if the binary is missing, or if one of its ports is taken.
    pub fn start(&self, n: NodeId) -> Result<u32> {
        let node = self.node(n)?;
        if let Some(pid) = self.pid(n) {
            bail!("node {n} is already running (pid {pid})");
        }
        let bin = self.node_bin();
        ensure!(
            is_executable_file(&bin),
            "node binary {} is missing or not executable; build it with \
             `cargo build --release -p billdb-node`, or pass --node-bin / set {NODE_BIN_ENV}",
            bin.display()
        );
        let config = self.config_path(n);
        if !config.is_file() {
            self.write_node_config(&node)?;
        }
        for addr in [&node.http_addr, &node.grpc_addr, &node.raft_addr] {
            TcpListener::bind(addr.as_str()).with_context(|| {
                format!(
                    "node {n}: address {addr} is not free (another cluster on these ports? \
                     use a different --base-port)"
                )
            })?;
        }
        let log_path = self.log_path(n);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating handle of {}", log_path.display()))?;
        self.append_log_marker(
            n,
            &format!("starting {} --config {}", bin.display(), config.display()),
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&config)
            .current_dir(self.node_dir(n))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        for (k, v) in lock(&self.inner.node_env).iter() {
            cmd.env(k, v);
        }
        // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} for node {n}", bin.display()))?;
        let pid = child.id();
        lock(&self.inner.children).insert(n, child);
        if let Err(e) = write_atomic(&self.pid_path(n), format!("{pid}\n").as_bytes()) {
            // Without a pid file the node would be unmanageable: take it down.
            let _ = send_signal(pid, libc::SIGKILL);
            self.wait_exit(n, pid, KILL_WAIT);
            return Err(e.context(format!("node {n} started as pid {pid} but its pid file")));
        }
        Ok(pid)
    }

    /// Starts every node that is not running; returns the `(node, pid)` pairs of
    /// the ones it started.
    pub fn start_all(&self) -> Result<Vec<(NodeId, u32)>> {
        let mut started = Vec::new();
        for n in self.node_ids() {
            if !self.is_running(n) {
                started.push((n, self.start(n)?));
            }
        }
        Ok(started)
    }

    /// SIGTERM, wait up to [`DEFAULT_STOP_TIMEOUT`], then SIGKILL.
    pub fn stop(&self, n: NodeId) -> Result<StopOutcome> {
        self.stop_with_timeout(n, DEFAULT_STOP_TIMEOUT)
    }

    /// SIGTERM (and SIGCONT, so a paused node can act on it), wait up to
    /// `timeout`, then SIGKILL and wait until the process is gone.
    pub fn stop_with_timeout(&self, n: NodeId, timeout: Duration) -> Result<StopOutcome> {
        self.node(n)?;
        let Some(pid) = self.pid(n) else {
            return Ok(StopOutcome::NotRunning);
        };
        self.append_log_marker(n, &format!("SIGTERM to pid {pid}"));
        send_signal(pid, libc::SIGTERM)?;
        send_signal(pid, libc::SIGCONT)?;
        if self.wait_exit(n, pid, timeout) {
            self.clear_pid_file(n, pid);
            return Ok(StopOutcome::Terminated);
        }
        self.kill_pid(n, pid)?;
        Ok(StopOutcome::Killed)
    }

    fn kill_pid(&self, n: NodeId, pid: u32) -> Result<()> {
        self.append_log_marker(n, &format!("SIGKILL to pid {pid}"));
        send_signal(pid, libc::SIGKILL)?;
        ensure!(
            self.wait_exit(n, pid, KILL_WAIT),
            "node {n} (pid {pid}) still alive {KILL_WAIT:?} after SIGKILL"
        );
        self.clear_pid_file(n, pid);
        Ok(())
    }

    /// SIGKILL and wait until the process is gone. Returns whether it was running.
    pub fn kill(&self, n: NodeId) -> Result<bool> {
        self.node(n)?;
        let Some(pid) = self.pid(n) else {
            return Ok(false);
        };
        self.kill_pid(n, pid)?;
        Ok(true)
    }

    /// SIGSTOP: the node freezes (still "running", but answers nothing).
    pub fn pause(&self, n: NodeId) -> Result<()> {
        let pid = self.require_pid(n)?;
        send_signal(pid, libc::SIGSTOP)?;
        self.wait_state(pid, |s| s != ProcState::Running)
            .with_context(|| format!("node {n} (pid {pid}) did not stop after SIGSTOP"))
    }

    /// SIGCONT: undoes [`pause`](Self::pause).
    pub fn resume(&self, n: NodeId) -> Result<()> {
        let pid = self.require_pid(n)?;
        send_signal(pid, libc::SIGCONT)?;
        self.wait_state(pid, |s| s != ProcState::Stopped)
            .with_context(|| format!("node {n} (pid {pid}) still stopped after SIGCONT"))
    }

    fn wait_state(&self, pid: u32, ok: impl Fn(ProcState) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok(process_state(pid)) {
            ensure!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Deletes node `n`'s data directory (the node must be stopped). Returns
    /// whether there was anything to delete.
    pub fn wipe(&self, n: NodeId) -> Result<bool> {
        self.node(n)?;
        if let Some(pid) = self.pid(n) {
            bail!("node {n} is running (pid {pid}); stop or kill it before wiping");
        }
        let data = self.data_dir(n);
        if !data.exists() {
            return Ok(false);
        }
        fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
        self.append_log_marker(n, "data directory wiped");
        Ok(true)
    }

    /// Stops every running node (in parallel, SIGTERM then SIGKILL after
    /// [`DEFAULT_STOP_TIMEOUT`]).
    pub fn down(&self) -> Result<Vec<(NodeId, StopOutcome)>> {
        let ids = self.node_ids();
        let results: Vec<(NodeId, Result<StopOutcome>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&n| (n, s.spawn(move || self.stop(n))))
                .collect();
            handles
                .into_iter()
                .map(|(n, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow!("stop thread panicked")));
                    (n, r)
                })
                .collect()
        });
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (n, r) in results {
            match r {
                Ok(o) => out.push((n, o)),
                Err(e) => errors.push(format!("node {n}: {e:#}")),
            }
        }
        ensure!(errors.is_empty(), "stopping nodes: {}", errors.join("; "));
        Ok(out)
    }

    // --- HTTP -------------------------------------------------------------

    /// Polls `GET /healthz` of node `n` until it answers 200. Fails early, with
    /// the tail of its log, if the process exits.
    pub fn wait_healthy(&self, n: NodeId, timeout: Duration) -> Result<()> {
        let admin = self.admin_with_timeout(n, POLL_HTTP_TIMEOUT)?;
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(n) {
                bail!(
                    "node {n} is not running (exited?); last lines of {}:\n{}",
                    self.log_path(n).display(),
                    self.log_tail(n, 20)
                );
            }
            let last_err = match admin.healthz() {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "node {n} not healthy after {timeout:?} (last error: {last_err}); see {}",
                    self.log_path(n).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`wait_healthy`](Self::wait_healthy) for every running node, within one
    /// overall `timeout`.
    pub fn wait_all_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for n in self.node_ids() {
            if self.is_running(n) {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_healthy(n, left.max(Duration::from_millis(200)))?;
            }
        }
        Ok(())
    }

    /// `GET /v1/cluster/status` of node `n`.
    pub fn status(&self, n: NodeId) -> Result<Value> {
        self.admin_with_timeout(n, POLL_HTTP_TIMEOUT)?
            .status()
            .with_context(|| format!("status of node {n}"))
    }

    /// Status of every node, queried in parallel with a short timeout; `None`
    /// for nodes that are stopped, paused or did not answer.
    pub fn status_all(&self) -> Vec<(NodeId, Option<Value>)> {
        let ids = self.node_ids();
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&n| {
                    (
                        n,
                        s.spawn(move || match self.node_state(n) {
                            NodeState::Running => self.status(n).ok(),
                            _ => None,
                        }),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(n, h)| (n, h.join().ok().flatten()))
                .collect()
        })
    }

    /// Polls the running nodes until one reports `role == "leader"` and a
    /// majority of the voters agree on it (see [`agreed_leader`]).
    pub fn wait_leader(&self, timeout: Duration) -> Result<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.status_all();
            if let Some(l) = agreed_leader(&statuses) {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = statuses
                    .iter()
                    .map(|(n, s)| match s {
                        None => format!("node {n}: no answer"),
                        Some(s) => format!(
                            "node {n}: role={} term={} leader={}",
                            field_str(s, "role").unwrap_or("?"),
                            field_u64(s, "term").map_or("?".into(), |t| t.to_string()),
                            field_u64(s, "leader_id").map_or("none".into(), |t| t.to_string()),
                        ),
                    })
                    .collect();
                bail!("no agreed leader after {timeout:?}: {}", summary.join("; "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `POST /v1/cluster/init` to the lowest-id node (node 1) with all nodes as
    /// voters. Returns `true` if this call initialised the cluster, `false` if it
    /// was already initialised (409 `ALREADY_INITIALIZED`). Either way the
    /// cluster is then recorded as initialised in `cluster.json`.
    pub fn init(&self) -> Result<bool> {
        let spec = self.spec();
        let first = spec
            .nodes
            .first()
            .ok_or_else(|| anyhow!("cluster has no nodes"))?;
        let nodes: Vec<NodeAddrs> = spec.nodes.iter().map(NodeSpec::addrs).collect();
        let admin = self.admin_with_timeout(first.id, ADMIN_HTTP_TIMEOUT)?;
        match admin.init(&nodes) {
            Ok(_) => {
                self.set_initialized()?;
                Ok(true)
            }
            Err(e) if e.is_already_initialized() => {
                self.set_initialized()?;
                Ok(false)
            }
            Err(e) => {
                Err(anyhow!(e)).with_context(|| format!("initialising via node {}", first.id))
            }
        }
    }

    /// Status rows for the table / JSON output.
    pub fn report(&self) -> Vec<NodeReport> {
        let statuses: BTreeMap<NodeId, Option<Value>> = self.status_all().into_iter().collect();
        self.spec()
            .nodes
            .into_iter()
            .map(|node| NodeReport {
                id: node.id,
                pid: self.pid(node.id),
                state: self.node_state(node.id),
                status: statuses.get(&node.id).cloned().flatten(),
                http_addr: node.http_addr,
                grpc_addr: node.grpc_addr,
                raft_addr: node.raft_addr,
            })
            .collect()
    }

    /// Last `lines` lines of node `n`'s log (reads at most the last 64 KiB).
    pub fn log_tail(&self, n: NodeId, lines: usize) -> String {
        let read = || -> io::Result<String> {
            let mut f = File::open(self.log_path(n))?;
            let len = f.metadata()?.len();
            let start = len.saturating_sub(64 * 1024);
            f.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        match read() {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read log: {e})"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.kill_on_drop.load(Ordering::SeqCst) {
            return;
        }
        let children = std::mem::take(&mut *lock(&self.children));
        let ids: Vec<NodeId> = lock(&self.spec).nodes.iter().map(|n| n.id).collect();
        // Our own children: kill and reap.
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Nodes started by someone else from this directory (identity-checked).
        for n in ids {
            let node_dir = self.dir.join(format!("node{n}"));
            let pid_path = node_dir.join("pid");
            let Some(pid) = fs::read_to_string(&pid_path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            if pid_alive(pid) && cmdline_contains(pid, &node_dir.join("node.toml")) == Some(true) {
                let _ = send_signal(pid, libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while pid_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = fs::remove_file(&pid_path);
        }
    }
}

pub mod firewall;
pub mod usage;

#[cfg(test)]
mod tests;
