//! Node configuration: a TOML file, overridden by environment variables
//! (`BILLDB_*`) and then by command-line flags. Reads files only.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RaftTuning {
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "d_elect_min")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "d_elect_max")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    #[serde(default = "d_snap_logs")]
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    #[serde(default = "d_keep")]
    pub logs_to_keep_after_snapshot: u64,
    /// Also build a snapshot once this many log bytes were appended since
    /// the last trigger, so a bulk load of large entries does not keep
    /// gigabytes of log before the entry count is reached.
    #[serde(default = "d_snap_log_bytes")]
    pub snapshot_log_bytes_since_last: u64,
    #[serde(default = "d_install_timeout")]
    pub install_snapshot_timeout_ms: u64,
    /// Entries in one AppendEntries message.
    #[serde(default = "d_payload")]
    pub max_payload_entries: u64,
    /// How a linearizable read confirms leadership: `read_index` (a
    /// heartbeat round to a quorum per read; the default) or `lease` (the
    /// leader's lease, renewed by a quorum within the last
    /// `election_timeout_max_ms`: no round trip, but it assumes clocks on
    /// the nodes advance at about the same rate).
    #[serde(default)]
    pub read_policy: ReadPolicyName,
    /// Send new entries to the followers as soon as the leader has written
    /// them to its log, while its own fsync runs (`true`, the default), or
    /// only after it (`false`, openraft's default: larger batches, but one
    /// fsync more on every commit's path). Commit still needs a quorum of
    /// fsynced copies either way; the leader's own copy counts only once
    /// it is fsynced.
    #[serde(default = "d_true")]
    pub replicate_before_local_fsync: bool,
    /// Group commit: most client commands the leader carries in one log
    /// entry (1 turns batching off).
    #[serde(default = "d_batch_commands")]
    pub batch_commands_max: usize,
    /// Most encoded bytes of commands in one entry (a larger single command,
    /// an import, goes alone).
    #[serde(default = "d_batch_bytes")]
    pub batch_bytes_max: usize,
    /// Most entries the leader has proposed and not yet applied; commands
    /// arriving meanwhile wait and form the next batch. A lone command never
    /// waits.
    #[serde(default = "d_batch_in_flight")]
    pub batch_in_flight_max: usize,
    /// What log entries carry once the cluster runs op level 3: `results`
    /// (the default: the leader executes each batch once and followers
    /// write its write set, `leader_exec`) or `commands` (every replica
    /// executes every command, as before level 3). Per node: it matters on
    /// the leader.
    #[serde(default)]
    pub replicate: Replicate,
    /// Re-execute every entry that carries the leader's results on this
    /// node and compare replies and writes; a difference stops apply here
    /// with an error naming the entry and the keys (for tests, and for an
    /// operator who wants the check; it costs the follower CPU results
    /// replication saves).
    #[serde(default)]
    pub verify_results: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Replicate {
    #[default]
    Results,
    Commands,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicyName {
    #[default]
    ReadIndex,
    Lease,
}

// openraft starts an election only once the leader lease (= the maximum
// election timeout) has run out, and the first round often splits, so the
// write gap after a leader dies is about twice the maximum: 200–400 ms keeps
// it under a second (measured: docs/BENCHMARKS.md, leader kill).
fn d_heartbeat() -> u64 {
    50
}
fn d_elect_min() -> u64 {
    200
}
fn d_elect_max() -> u64 {
    400
}
// A snapshot is a full copy of the state (every node builds its own), so
// under a steady write load its cost is paid every `snapshot_logs_since_last`
// entries: at 50,000 a 1 GB state was rewritten every ~40 s of purchases.
fn d_snap_logs() -> u64 {
    200_000
}
fn d_snap_log_bytes() -> u64 {
    1 << 30
}
fn d_keep() -> u64 {
    10_000
}
fn d_install_timeout() -> u64 {
    60_000
}
fn d_payload() -> u64 {
    32
}
fn d_true() -> bool {
    true
}
fn d_batch_commands() -> usize {
    256
}
// 32 entries per AppendEntries (`max_payload_entries`) × 256 KiB × 4 (an
// entry of one command with the leader's results may be 4× the batch
// bound, `leader_exec::ALONE_ENTRY_FACTOR`) stays under half the 64 MiB
// Raft message bound. 256 KiB: an import of 1,000 records (~100 bytes
// each, encoded) fits one entry; followers receive ~16 entries per append
// under a purchase load, so 32 costs nothing there.
fn d_batch_bytes() -> usize {
    256 << 10
}
fn d_batch_in_flight() -> usize {
    4
}

impl Default for RaftTuning {
    fn default() -> Self {
        toml::from_str("").unwrap_or(RaftTuning {
            heartbeat_interval_ms: d_heartbeat(),
            election_timeout_min_ms: d_elect_min(),
            election_timeout_max_ms: d_elect_max(),
            snapshot_logs_since_last: d_snap_logs(),
            logs_to_keep_after_snapshot: d_keep(),
            snapshot_log_bytes_since_last: d_snap_log_bytes(),
            install_snapshot_timeout_ms: d_install_timeout(),
            max_payload_entries: d_payload(),
            read_policy: ReadPolicyName::ReadIndex,
            replicate_before_local_fsync: true,
            batch_commands_max: d_batch_commands(),
            batch_bytes_max: d_batch_bytes(),
            batch_in_flight_max: d_batch_in_flight(),
            replicate: Replicate::default(),
            verify_results: false,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// A client request gets an answer (or UNAVAILABLE) within this time.
    #[serde(default = "d_request_timeout")]
    pub request_timeout_ms: u64,
    /// Largest HTTP request body accepted.
    #[serde(default = "d_body")]
    pub request_body_bytes_max: usize,
    /// Largest bulk import body (`POST /v1/import`, gRPC `Import`): a
    /// migration sends up to 1,000 items per command, and the per-command
    /// costs (log entry, report rows, account loads) shrink with larger
    /// commands. The encoded command must still fit one log entry
    /// (`raft.batch_bytes_max`).
    #[serde(default = "d_import_body")]
    pub import_body_bytes_max: usize,
}

fn d_request_timeout() -> u64 {
    3000
}
fn d_body() -> usize {
    64 * 1024
}
fn d_import_body() -> usize {
    1 << 20
}
/// Largest client gRPC message (the import body is bounded by it).
pub const CLIENT_MESSAGE_SIZE_BYTES_MAX: usize = 4 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_ms: d_request_timeout(),
            request_body_bytes_max: d_body(),
            import_body_bytes_max: d_import_body(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub raft_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS on every listener and between nodes (mutual on the Raft port).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Listeners explicitly left plaintext. Without `[tls]`, every listener
    /// must be named here or the node refuses to start.
    #[serde(default)]
    pub insecure: Insecure,
    #[serde(default)]
    pub storage: StorageConfig,
    /// Scheduled backups by the cluster itself (`backup::schedule`).
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// `--op-level-max` (command line only): act as a build that applies
    /// at most this op level (`domain::levels`), for upgrade drills.
    #[serde(skip)]
    pub op_level_max: Option<u32>,
}

/// `[backup]`: one backup per `interval_s`, taken by one follower into
/// `dir` (a billdb backup destination every node sees, e.g. a shared
/// mount), then pruned per `[backup.retention]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The backup destination, the same directory on every node.
    pub dir: PathBuf,
    /// One scheduled backup per this many seconds (slots aligned on Unix
    /// time: 86400 is one per UTC day).
    pub interval_s: u64,
    /// The Ed25519 private key the manifests are signed with (hex, as
    /// `billdb backup keygen` writes it; mode 0600). Never logged.
    pub signing_key_file: PathBuf,
    #[serde(default)]
    pub retention: crate::backup::store::Retention,
    /// A claim on a slot not renewed (every second) for this long is
    /// abandoned (its node died) and another follower takes the slot.
    #[serde(default = "d_claim_stale")]
    pub claim_stale_s: u64,
    /// The follower ranked r among the candidates waits r × this before it
    /// takes an open slot (rank 0: the node of the previous backup, so the
    /// next one is incremental).
    #[serde(default = "d_stagger")]
    pub stagger_s: u64,
    /// Attempts one node makes at one slot before leaving it to others.
    #[serde(default = "d_attempts")]
    pub attempts_per_node_max: u32,
    /// Archive committed log entries into the destination's `archive/`
    /// every this many seconds (`backup::archiver`), for point-in-time
    /// restore; absent: off (run `billdb backup archive --follow` instead).
    #[serde(default)]
    pub archive_interval_s: Option<u64>,
}

fn d_claim_stale() -> u64 {
    30
}
fn d_stagger() -> u64 {
    10
}
fn d_attempts() -> u32 {
    2
}

/// `[storage]`: how a node whose storage failed recovers
/// (`storage_guard`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// A node stopped by a full disk (or another storage error) restarts
    /// itself only once its data directory's filesystem has this many
    /// bytes free (and a probe write with fsync succeeds): room for
    /// RocksDB's memtable flushes and a compaction, so it does not fill up
    /// again at once.
    #[serde(default = "d_recover_free")]
    pub recover_free_bytes_min: u64,
    /// The background scrub (`scrub`) reads every block of the database,
    /// verifying its checksum, once per this many seconds, paced over the
    /// period (default: once a day). 0 turns the scrub off.
    #[serde(default = "d_scrub_interval")]
    pub scrub_interval_s: u64,
    /// A WAL fsync that has not returned after this long marks the node
    /// degraded (status `storage.degraded_fsync_ms`,
    /// `billdb_storage_degraded`): its disk stalls.
    #[serde(default = "d_fsync_stall")]
    pub fsync_stall_ms: u64,
}

fn d_fsync_stall() -> u64 {
    500
}

fn d_recover_free() -> u64 {
    256 << 20
}

fn d_scrub_interval() -> u64 {
    86_400
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            recover_free_bytes_min: d_recover_free(),
            scrub_interval_s: d_scrub_interval(),
            fsync_stall_ms: d_fsync_stall(),
        }
    }
}

/// `[insecure]`: plaintext per listener, an explicit opt-out logged as a
/// warning at every start and shown in status.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Insecure {
    #[serde(default)]
    pub raft: bool,
    #[serde(default)]
    pub grpc: bool,
    #[serde(default)]
    pub http: bool,
}

impl Insecure {
    pub fn of(&self, port: crate::listen::Port) -> bool {
        match port {
            crate::listen::Port::Raft => self.raft,
            crate::listen::Port::Grpc => self.grpc,
            crate::listen::Port::Http => self.http,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens (SHA-256 hashes) and their roles. Without it the node
    /// runs with authentication off, for development only.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
}

/// `billdb-node` command line. Every flag can also come from the
/// environment variable named beside it; both override the file.
#[derive(Debug, Parser)]
#[command(name = "billdb-node", version, about = "billdb server node")]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "BILLDB_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "BILLDB_NODE_ID")]
    pub node_id: Option<NodeId>,
    #[arg(long, env = "BILLDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "BILLDB_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    #[arg(long, env = "BILLDB_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    #[arg(long, env = "BILLDB_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// `storage.scrub_interval_s`.
    #[arg(long, env = "BILLDB_SCRUB_INTERVAL_S")]
    pub scrub_interval_s: Option<u64>,
    /// Act as an older build: report and apply at most this op level
    /// (rolling-upgrade drills and tests; see docs/OPERATIONS.md).
    #[arg(long, env = "BILLDB_OP_LEVEL_MAX", hide = true)]
    pub op_level_max: Option<u32>,
    /// `raft.verify_results` (test suites and chaos runs set it for every
    /// node they start).
    #[arg(long, env = "BILLDB_VERIFY_RESULTS")]
    pub verify_results: Option<bool>,
    /// `raft.replicate` (`results` or `commands`).
    #[arg(long, env = "BILLDB_REPLICATE")]
    pub replicate: Option<String>,
}

impl Config {
    /// Merge file and overrides; refuse incomplete or inconsistent settings.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut doc: toml::Table = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("parsing {}: {e}", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut set = |k: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                doc.insert(k.to_string(), v);
            }
        };
        set(
            "node_id",
            args.node_id.map(|v| toml::Value::Integer(v as i64)),
        );
        set(
            "data_dir",
            args.data_dir
                .as_ref()
                .map(|v| toml::Value::String(v.display().to_string())),
        );
        set("raft_addr", args.raft_addr.clone().map(toml::Value::String));
        set("grpc_addr", args.grpc_addr.clone().map(toml::Value::String));
        set("http_addr", args.http_addr.clone().map(toml::Value::String));
        if let Some(v) = args.scrub_interval_s {
            let storage = doc
                .entry("storage")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = storage.as_table_mut() else {
                anyhow::bail!("configuration: [storage] must be a table");
            };
            t.insert(
                "scrub_interval_s".into(),
                toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        let raft_overrides = [
            (
                "verify_results",
                args.verify_results.map(toml::Value::Boolean),
            ),
            ("replicate", args.replicate.clone().map(toml::Value::String)),
        ];
        for (key, value) in raft_overrides {
            let Some(value) = value else { continue };
            let raft = doc
                .entry("raft")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = raft.as_table_mut() else {
                anyhow::bail!("configuration: [raft] must be a table");
            };
            t.insert(key.into(), value);
        }
        let mut cfg: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        cfg.expand_node_id();
        cfg.op_level_max = args.op_level_max;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `{node_id}` in the TLS certificate and key paths becomes this node's
    /// id, so one file serves every node of a container deployment (the
    /// node id coming from `BILLDB_NODE_ID`).
    fn expand_node_id(&mut self) {
        let id = self.node_id.to_string();
        if let Some(tls) = self.tls.as_mut() {
            for p in [&mut tls.cert_file, &mut tls.key_file] {
                if let Some(s) = p.to_str()
                    && s.contains("{node_id}")
                {
                    *p = PathBuf::from(s.replace("{node_id}", &id));
                }
            }
        }
    }

    /// The op level this node reports and applies (`domain::levels`).
    pub fn build_op_level(&self) -> u32 {
        let build = crate::domain::levels::BUILD_OP_LEVEL;
        self.op_level_max.map_or(build, |m| m.clamp(1, build))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.node_id > 0, "node_id must be > 0");
        let r = &self.raft;
        anyhow::ensure!(
            r.heartbeat_interval_ms > 0,
            "raft.heartbeat_interval_ms must be > 0"
        );
        anyhow::ensure!(
            r.heartbeat_interval_ms * 2 < r.election_timeout_min_ms,
            "raft.heartbeat_interval_ms must be under half of election_timeout_min_ms"
        );
        anyhow::ensure!(
            r.election_timeout_min_ms < r.election_timeout_max_ms,
            "raft.election_timeout_min_ms must be < election_timeout_max_ms"
        );
        anyhow::ensure!(
            r.max_payload_entries > 0 && r.max_payload_entries <= 10_000,
            "raft.max_payload_entries in 1..=10000"
        );
        anyhow::ensure!(
            (1..=4096).contains(&r.batch_commands_max),
            "raft.batch_commands_max in 1..=4096"
        );
        anyhow::ensure!(
            (1 << 10..=1 << 20).contains(&r.batch_bytes_max),
            "raft.batch_bytes_max in 1024..=1048576"
        );
        anyhow::ensure!(
            (1..=64).contains(&r.batch_in_flight_max),
            "raft.batch_in_flight_max in 1..=64"
        );
        anyhow::ensure!(
            r.max_payload_entries as usize
                * r.batch_bytes_max
                * crate::leader_exec::ALONE_ENTRY_FACTOR
                <= crate::raft_net::MESSAGE_SIZE_BYTES_MAX / 2,
            "raft.max_payload_entries × raft.batch_bytes_max × {} (an entry with the leader's \
             results) must stay under half the {} MiB Raft message bound",
            crate::leader_exec::ALONE_ENTRY_FACTOR,
            crate::raft_net::MESSAGE_SIZE_BYTES_MAX >> 20
        );
        anyhow::ensure!(
            r.snapshot_log_bytes_since_last >= 1 << 20,
            "raft.snapshot_log_bytes_since_last must be >= 1 MiB"
        );
        anyhow::ensure!(
            self.limits.request_timeout_ms >= 100,
            "limits.request_timeout_ms must be >= 100"
        );
        anyhow::ensure!(
            (self.limits.request_body_bytes_max..=CLIENT_MESSAGE_SIZE_BYTES_MAX)
                .contains(&self.limits.import_body_bytes_max),
            "limits.import_body_bytes_max must be between limits.request_body_bytes_max and {} MiB",
            CLIENT_MESSAGE_SIZE_BYTES_MAX >> 20
        );
        for (name, addr) in [
            ("raft_addr", &self.raft_addr),
            ("grpc_addr", &self.grpc_addr),
            ("http_addr", &self.http_addr),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| anyhow::anyhow!("{name} {addr:?}: {e}"))?;
        }
        if let Some(b) = &self.backup {
            anyhow::ensure!(
                (2..=31 * 86_400).contains(&b.interval_s),
                "backup.interval_s in 2..=2678400 (31 days)"
            );
            anyhow::ensure!(
                (3..=3600).contains(&b.claim_stale_s),
                "backup.claim_stale_s in 3..=3600"
            );
            anyhow::ensure!(
                (1..=3600).contains(&b.stagger_s),
                "backup.stagger_s in 1..=3600"
            );
            anyhow::ensure!(
                (1..=100).contains(&b.attempts_per_node_max),
                "backup.attempts_per_node_max in 1..=100"
            );
            anyhow::ensure!(
                b.archive_interval_s.is_none_or(|s| (1..=3600).contains(&s)),
                "backup.archive_interval_s in 1..=3600"
            );
            anyhow::ensure!(
                !b.dir.as_os_str().is_empty(),
                "backup.dir must name the backup destination"
            );
            b.retention
                .validate()
                .map_err(|e| anyhow::anyhow!("backup.retention: {e}"))?;
        }
        if self.tls.is_none() {
            use crate::listen::Port;
            for port in [Port::Raft, Port::Grpc, Port::Http] {
                anyhow::ensure!(
                    self.insecure.of(port),
                    "the {} listener has no TLS: configure [tls] (cluster_id, ca_file, cert_file, \
                     key_file; `billdb cert` makes them) or opt out explicitly with \
                     `[insecure] {} = true` (plaintext: anyone who can reach the port is served)",
                    port.as_str(),
                    port.as_str()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> Args {
        Args {
            config,
            node_id: None,
            data_dir: None,
            raft_addr: None,
            grpc_addr: None,
            http_addr: None,
            scrub_interval_s: None,
            op_level_max: None,
            verify_results: None,
            replicate: None,
        }
    }

    /// `raft.replicate` and `raft.verify_results` come from the file or
    /// from their flags (environment); an unknown mode is refused.
    #[test]
    fn replication_mode_from_file_or_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            "node_id = 1\ndata_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:7201\"\n\
             grpc_addr = \"127.0.0.1:7101\"\nhttp_addr = \"127.0.0.1:7001\"\n\
             [insecure]\nraft = true\ngrpc = true\nhttp = true\n\
             [raft]\nreplicate = \"commands\"\n",
        )
        .unwrap();
        let c = Config::load(&args(Some(p.clone()))).unwrap();
        assert_eq!(c.raft.replicate, Replicate::Commands);
        assert!(!c.raft.verify_results);
        let mut a = args(Some(p.clone()));
        a.replicate = Some("results".into());
        a.verify_results = Some(true);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.raft.replicate, Replicate::Results);
        assert!(c.raft.verify_results);
        a.replicate = Some("both".into());
        let e = Config::load(&a).unwrap_err().to_string();
        assert!(
            e.contains("replicate") || e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "node_id = 1\ndata_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:7201\"\ngrpc_addr = \"127.0.0.1:7101\"\nhttp_addr = \"127.0.0.1:7001\"\n[insecure]\nraft = true\ngrpc = true\nhttp = true\n[raft]\nheartbeat_interval_ms = 50\n",
        )
        .unwrap();
        let mut a = args(Some(p));
        let c = Config::load(&a).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
        assert_eq!(c.raft.election_timeout_min_ms, 200);
        assert_eq!(c.raft.read_policy, ReadPolicyName::ReadIndex);
        assert_eq!(c.raft.snapshot_log_bytes_since_last, 1 << 30);
        a.node_id = Some(3);
        a.http_addr = Some("127.0.0.1:9003".into());
        let c = Config::load(&a).unwrap();
        assert_eq!((c.node_id, c.http_addr.as_str()), (3, "127.0.0.1:9003"));
    }

    #[test]
    fn node_id_in_tls_paths_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            "data_dir = \"/tmp/x\"\nraft_addr = \"0.0.0.0:7201\"\ngrpc_addr = \"0.0.0.0:7101\"\nhttp_addr = \"0.0.0.0:7001\"\n[tls]\ncluster_id = \"c\"\nca_file = \"/t/ca.pem\"\ncert_file = \"/t/node{node_id}.pem\"\nkey_file = \"/t/node{node_id}.key\"\n",
        )
        .unwrap();
        let mut a = args(Some(p));
        assert!(Config::load(&a).is_err(), "no node_id anywhere");
        a.node_id = Some(4);
        let c = Config::load(&a).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/t/node4.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/t/node4.key"));
        assert_eq!(tls.ca_file, PathBuf::from("/t/ca.pem"));
    }

    #[test]
    fn backup_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let base = "node_id = 1\ndata_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:7201\"\ngrpc_addr = \"127.0.0.1:7101\"\nhttp_addr = \"127.0.0.1:7001\"\n[insecure]\nraft = true\ngrpc = true\nhttp = true\n";
        let backup =
            "[backup]\ndir = \"/mnt/b\"\ninterval_s = 3600\nsigning_key_file = \"/etc/b.key\"\n";
        std::fs::write(&p, base).unwrap();
        assert_eq!(Config::load(&args(Some(p.clone()))).unwrap().backup, None);
        std::fs::write(&p, format!("{base}{backup}")).unwrap();
        let b = Config::load(&args(Some(p.clone())))
            .unwrap()
            .backup
            .unwrap();
        assert_eq!((b.interval_s, b.claim_stale_s, b.stagger_s), (3600, 30, 10));
        assert_eq!(b.retention, crate::backup::store::Retention::default());
        for (bad, why) in [
            ("interval_s = 1\n", "interval too short"),
            ("claim_stale_s = 1\n", "claim stale too short"),
            ("stagger_s = 0\n", "no stagger"),
            ("bogus = 1\n", "unknown key"),
            (
                "[backup.retention]\nkeep_daily = 0\nkeep_monthly = 0\n",
                "keeps nothing",
            ),
        ] {
            let text = if bad.starts_with('[') {
                format!("{base}{backup}{bad}")
            } else {
                format!(
                    "{base}{}{bad}",
                    backup.replace(
                        "interval_s = 3600\n",
                        if bad.starts_with("interval_s") {
                            ""
                        } else {
                            "interval_s = 3600\n"
                        }
                    )
                )
            };
            std::fs::write(&p, text).unwrap();
            assert!(Config::load(&args(Some(p.clone()))).is_err(), "{why}");
        }
        std::fs::write(&p, format!("{base}[backup]\ndir = \"/mnt/b\"\n")).unwrap();
        assert!(
            Config::load(&args(Some(p.clone()))).is_err(),
            "interval and key are required"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let base = "node_id = 1\ndata_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:7201\"\ngrpc_addr = \"127.0.0.1:7101\"\nhttp_addr = \"127.0.0.1:7001\"\n[insecure]\nraft = true\ngrpc = true\nhttp = true\n";
        std::fs::write(&p, format!("{base}[raft]\nheartbeat_interval_ms = 400\n")).unwrap();
        assert!(
            Config::load(&args(Some(p.clone()))).is_err(),
            "heartbeat too close to election timeout"
        );
        std::fs::write(&p, format!("{base}[raft]\nread_policy = \"stale\"\n")).unwrap();
        assert!(
            Config::load(&args(Some(p.clone()))).is_err(),
            "unknown read policy"
        );
        std::fs::write(&p, format!("{base}[raft]\nread_policy = \"lease\"\n")).unwrap();
        assert_eq!(
            Config::load(&args(Some(p.clone())))
                .unwrap()
                .raft
                .read_policy,
            ReadPolicyName::Lease
        );
        std::fs::write(&p, format!("{base}bogus = 1\n")).unwrap();
        assert!(Config::load(&args(Some(p.clone()))).is_err(), "unknown key");
        std::fs::write(&p, base.replace("127.0.0.1:7001", "nowhere")).unwrap();
        assert!(Config::load(&args(Some(p.clone()))).is_err(), "bad address");
        assert!(Config::load(&args(None)).is_err(), "missing everything");
        // Secure by default: no [tls] and a listener not named insecure.
        let no_tls = base.replace("http = true\n", "");
        std::fs::write(&p, &no_tls).unwrap();
        let e = Config::load(&args(Some(p.clone())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http listener has no TLS"), "{e}");
    }
}
