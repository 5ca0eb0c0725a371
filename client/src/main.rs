//! `billdb` command line: the local cluster manager (`billdb local ...`), thin
//! wrappers over a node's HTTP admin API (`billdb cluster ...`), and the
//! counter, bank, report and ops commands over gRPC (`billing_cli.rs`).
//!
//! Scope: `local` commands touch only the cluster directory given with `--dir`
//! (default `./.billdb/local`) and the node processes started from it; `cluster`
//! commands only send HTTP requests to `--endpoint`. Exit status is 0 on
//! success, 1 on any failure (2 for usage errors, from clap; `billdb bank
//! reconcile` exits 3 when the statement and billdb differ).

mod bank_cli;
mod billing_cli;
mod import_cli;
mod season_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use billdb_client::admin::{AdminClient, NodeAddrs};
use billdb_client::local::{
    self, DEFAULT_BASE_PORT, DEFAULT_NODES, LocalCluster, NodeId, StopOutcome, find_node_bin,
    render_status_table,
};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "billdb",
    version,
    about = "billdb command line: run a local cluster, administer a cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage a local cluster of billdb-node processes on this machine.
    #[command(subcommand)]
    Local(LocalCmd),
    /// Call a node's HTTP admin API.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// One node: rebuild it from its peers.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Accounts: open, show, contact, close/suspend/resume, records.
    #[command(subcommand)]
    Account(billing_cli::AccountCmd),
    /// Cards: issue, replace, verify (the counter's card check).
    #[command(subcommand)]
    Card(billing_cli::CardCmd),
    /// Sell credit at the counter (by card or account, money or units).
    Purchase(billing_cli::PurchaseArgs),
    /// Act on a record: reissue lost credit, confirm loaded, reverse.
    #[command(subcommand)]
    Record(billing_cli::RecordCmd),
    /// Invoices: reprint.
    #[command(subcommand)]
    Invoice(billing_cli::InvoiceCmd),
    /// Post a bank payment (retries keep the request_id).
    Pay(billing_cli::PayArgs),
    /// Reports: monthly (operator/branch/tariff/kind), bank daily.
    #[command(subcommand)]
    Report(billing_cli::ReportCmd),
    /// Operations: tariffs, charges, adjustments, seasons, boundary, import, request lookup.
    #[command(subcommand)]
    Ops(billing_cli::OpsCmd),
    /// Heating seasons: bill every heat account in one action, the report.
    #[command(subcommand)]
    Season(season_cli::SeasonCmd),
    /// Migrate a legacy system's CSV files (accounts, cards, records, a
    /// mapping of legacy codes) in resumable batches: a rejects file with
    /// every row not imported and why, and a reconciliation report (per
    /// account differences with likely causes; totals per branch against
    /// billdb's, exit 3 when they differ). docs/MIGRATION.md.
    Import(import_cli::ImportArgs),
    /// Banks: reconcile a statement file against a business day's
    /// payments (exit 3 when they differ), list the day's payments, the
    /// stored reconciliations.
    #[command(subcommand)]
    Bank(bank_cli::BankCmd),
    /// Make a cluster CA and node/client certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Make bearer tokens for a cluster's tokens file.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Backups: keygen, create (online, incremental, signed), verify, list.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Make a NEW cluster's data directories from a verified backup.
    Restore(RestoreArgs),
    /// Failover drills: run a scenario with evidence, verify a report.
    #[command(subcommand)]
    Drill(DrillCmd),
}

#[derive(Args)]
struct DrillRunArgs {
    scenario: String,
    /// Who does the faults: `local` (a `billdb local` directory, --dir),
    /// `compose` (a Docker Compose project, --compose-project), `ssh`
    /// (servers listed in --inventory: systemctl, iptables), `kubectl`
    /// (the StatefulSet's pods, a NetworkPolicy) or `manual` (the
    /// operator, told what to do, confirms on stdin).
    #[arg(long, default_value = "local")]
    executor: String,
    /// The local cluster's directory (executor local).
    #[arg(long, default_value = ".billdb/local")]
    dir: PathBuf,
    /// The compose project whose containers are the nodes (executor compose).
    #[arg(long)]
    compose_project: Option<String>,
    /// Node N is the container of service PREFIX+N (executor compose).
    #[arg(long, default_value = "billdb-")]
    compose_service_prefix: String,
    /// The cluster id its certificates name (executor compose,
    /// node-replace: a new node's certificate is issued from the
    /// deployment's CA; deploy/container/compose.yml uses `billdb`).
    #[arg(long, default_value = "billdb")]
    compose_cluster_id: String,
    /// The servers (executor ssh): a TOML file of `[[host]] id, host,
    /// address` and how to reach them (`remote`, `sudo`, `service`).
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// The namespace of the StatefulSet (executor kubectl).
    #[arg(long, default_value = "billdb")]
    k8s_namespace: String,
    /// Node N is its pod of ordinal N (executor kubectl).
    #[arg(long, default_value = "billdb")]
    k8s_statefulset: String,
    /// Any node's HTTP endpoint (executors compose and manual; the members
    /// are read from it).
    #[arg(long, env = "BILLDB_ENDPOINT")]
    endpoint: Option<String>,
    #[command(flatten)]
    tls: TlsArg,
    /// An ops token (executors compose and manual; local reads the directory's).
    #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Who runs the drill (written into the report). Default: $USER.
    #[arg(long)]
    operator: Option<String>,
    /// The operator's Ed25519 private key (`billdb backup keygen`).
    #[arg(long)]
    private_key: PathBuf,
    /// Where the report files go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Recovery time objective: the longest write gap that passes (ms)
    /// [default: 5000; restore-rehearsal: 600000, start to the restored
    /// cluster's first write].
    #[arg(long)]
    rto_ms: Option<u64>,
    /// Recovery point objective: acknowledged writes that may be lost.
    #[arg(long, default_value_t = 0)]
    rpo_writes: u64,
    /// Load before the first fault (s).
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// How long killed nodes stay down once writes recovered (s).
    #[arg(long, default_value_t = 5)]
    down_s: u64,
    /// Load after every node is ready again (s).
    #[arg(long, default_value_t = 5)]
    after_s: u64,
    /// Longest wait for writes to recover after a fault (s).
    #[arg(long, default_value_t = 60)]
    recovery_max_s: u64,
    /// Concurrent writers (each on its own drill account), 1..=64.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Do not write the summary into the cluster.
    #[arg(long)]
    no_record: bool,
    #[command(flatten)]
    rehearsal: RehearsalArgs,
    #[arg(long)]
    json: bool,
}

/// restore-rehearsal: the backup restored into a scratch cluster here.
#[derive(Args)]
struct RehearsalArgs {
    /// The backup destination (restore-rehearsal).
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// Default: the newest backup there.
    #[arg(long)]
    backup_id: Option<String>,
    /// The backups' public key (`billdb backup keygen`'s .pub).
    #[arg(long)]
    backup_public_key: Option<PathBuf>,
    /// A new or empty directory for the scratch cluster [default: a new
    /// directory under the system's temporary directory]; removed after
    /// the rehearsal unless --keep-scratch.
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// The scratch cluster's base port (HTTP B+N, gRPC B+100+N, Raft B+200+N).
    #[arg(long, default_value_t = 17400)]
    scratch_base_port: u16,
    #[arg(long, default_value_t = 3)]
    scratch_nodes: usize,
    #[arg(long)]
    keep_scratch: bool,
    /// Recovery point objective of a restore: the oldest the backup may be (s).
    #[arg(long, default_value_t = 93_600)]
    max_backup_age_s: u64,
    #[command(flatten)]
    bin: NodeBinArg,
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Run SCENARIO (leader-kill, two-down, leader-isolated,
    /// minority-partition, rolling-restart, full-power-loss; node-replace
    /// with the local executor) under a
    /// workload of billing operations on drill accounts (branch DRILL);
    /// measure, heal, verify; write a signed report (JSON, Markdown, HTML)
    /// and record the summary in the cluster.
    /// Exit 0 when the drill passed, 1 when it FAILED.
    Run(Box<DrillRunArgs>),
    /// Check a report (its .json, or the .html that embeds it): the data's
    /// SHA-256 and the signature with the operator's public key.
    Verify {
        report: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// A new random token: its SHA-256 and role appended to TOKENS_FILE (the
    /// file the nodes load, created if missing), the token itself written to
    /// --out (mode 0600) or printed.
    Add {
        /// The nodes' tokens file (`[auth] tokens_file`).
        #[arg(long)]
        tokens_file: PathBuf,
        /// ops | auditor | counter | bank.
        #[arg(long)]
        role: String,
        /// Who the records name (counter: required).
        #[arg(long)]
        operator_id: Option<String>,
        /// The counter's branch (counter: required).
        #[arg(long)]
        branch: Option<String>,
        /// The bank's code (bank: required).
        #[arg(long)]
        bank_code: Option<String>,
        /// Write the token here (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn run_token(cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Add {
            tokens_file,
            role,
            operator_id,
            branch,
            bank_code,
            out,
        } => {
            let token = add_token(
                &tokens_file,
                &role,
                operator_id.as_deref(),
                branch.as_deref(),
                bank_code.as_deref(),
            )?;
            match out {
                Some(out) => {
                    write_secret(&out, token.as_bytes())?;
                    eprintln!(
                        "{role} token added to {} and written to {}",
                        tokens_file.display(),
                        out.display()
                    );
                }
                None => println!("{token}"),
            }
            Ok(())
        }
    }
}

/// A new random token of `role`: its SHA-256 appended to `tokens_file`
/// (created if missing; written beside and renamed over, so a node reloading
/// it never sees half a file). Returns the token.
fn add_token(
    tokens_file: &Path,
    role: &str,
    operator_id: Option<&str>,
    branch: Option<&str>,
    bank_code: Option<&str>,
) -> Result<String> {
    let quoted = |what: &str, v: &str| -> Result<String> {
        anyhow::ensure!(
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "--{what} {v:?}: use letters, digits, '-', '_' or '.'"
        );
        Ok(format!("{} = \"{v}\"\n", what.replace('-', "_")))
    };
    match role {
        "ops" | "auditor" => {}
        "counter" => anyhow::ensure!(
            operator_id.is_some() && branch.is_some(),
            "a counter token needs --operator-id and --branch"
        ),
        "bank" => anyhow::ensure!(bank_code.is_some(), "a bank token needs --bank-code"),
        other => bail!("--role {other:?}: expected ops, auditor, counter or bank"),
    }
    let token = local::random_token()?;
    let mut entry = String::from("\n[[token]]\n");
    entry.push_str(&format!("sha256 = \"{}\"\n", local::token_sha256(&token)));
    entry.push_str(&quoted("role", role)?);
    for (what, v) in [
        ("operator-id", operator_id),
        ("branch", branch),
        ("bank-code", bank_code),
    ] {
        if let Some(v) = v {
            entry.push_str(&quoted(what, v)?);
        }
    }
    let mut text = match std::fs::read_to_string(tokens_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            String::from("# billdb tokens: SHA-256 of each bearer token and its role\n")
        }
        Err(e) => bail!("reading {}: {e}", tokens_file.display()),
    };
    text.push_str(&entry);
    let tmp = tokens_file.with_extension("tmp");
    std::fs::write(&tmp, text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, tokens_file)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(token)
}

/// Write `contents` to `path`, mode 0600 from the start.
fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// Gives `dir` and the files directly in it to `uid:gid`.
fn chown_dir(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    Ok(())
}

/// `billdb cert cluster`: everything a new cluster needs, in one directory.
fn provision_cluster(
    cluster_id: &str,
    nodes: &[String],
    out: &Path,
    owner: Option<&str>,
) -> Result<()> {
    use billdb_client::certs;
    let ca_dir = out.join("ca");
    if ca_dir.join("ca.key").exists() {
        println!(
            "{} exists: cluster already provisioned, nothing changed",
            ca_dir.join("ca.key").display()
        );
        return Ok(());
    }
    anyhow::ensure!(
        !nodes.is_empty(),
        "give each node with --node ID=HOST[,HOST...]"
    );
    let owner = owner
        .map(|o| -> Result<(u32, u32)> {
            let (u, g) = o.split_once(':').unwrap_or((o, o));
            Ok((
                u.parse().with_context(|| format!("--owner {o:?}: uid"))?,
                g.parse().with_context(|| format!("--owner {o:?}: gid"))?,
            ))
        })
        .transpose()?;
    let mut specs = Vec::new();
    for n in nodes {
        let (id, hosts) = n
            .split_once('=')
            .with_context(|| format!("--node {n:?}: expected ID=HOST[,HOST...]"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--node {n:?}: bad id"))?;
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        anyhow::ensure!(!hosts.is_empty(), "--node {n:?}: no host");
        specs.push((id, hosts));
    }
    // Duplicate ids would give two nodes one directory.
    let mut seen = std::collections::BTreeSet::new();
    for (id, _) in &specs {
        anyhow::ensure!(seen.insert(*id), "--node {id}: given twice");
    }
    let node_dir = out.join("node");
    let client_dir = out.join("client");
    for d in [&ca_dir, &node_dir, &client_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // One directory per node, holding only that node's key: what the node
    // mounts or is copied to, so that no node can read another's key.
    let per_node: Vec<PathBuf> = specs
        .iter()
        .map(|(id, _)| node_dir.join(id.to_string()))
        .collect();
    let ca = certs::new_ca(cluster_id)?;
    for ((id, hosts), dir) in specs.iter().zip(&per_node) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let leaf = certs::node_cert(&ca, cluster_id, *id, hosts)?;
        certs::write_leaf(dir, &format!("node{id}"), &leaf)?;
    }
    // The cluster's token list (hashes only): `billdb token add` edits this
    // one; every node reads a copy. A run that stopped before the CA key
    // was written left tokens whose plaintext is gone: start afresh.
    let tokens_file = out.join("tokens.toml");
    match std::fs::remove_file(&tokens_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("removing the stale {}: {e}", tokens_file.display()),
    }
    for (role, op, branch, bank) in [
        ("ops", Some("ops-1"), None, None),
        ("auditor", Some("audit-1"), None, None),
        ("counter", Some("C-0101"), Some("B01"), None),
        ("bank", None, None, Some("ICBC")),
    ] {
        let token = add_token(&tokens_file, role, op, branch, bank)?;
        write_secret(&client_dir.join(format!("{role}.token")), token.as_bytes())?;
    }
    // The CA key last: its presence marks a finished provisioning.
    certs::write_ca(&ca_dir, &ca)?;
    for d in per_node.iter().chain([&client_dir]) {
        std::fs::copy(ca_dir.join("ca.pem"), d.join("ca.pem"))
            .with_context(|| format!("copying ca.pem to {}", d.display()))?;
    }
    for d in &per_node {
        std::fs::copy(&tokens_file, d.join("tokens.toml"))
            .with_context(|| format!("copying tokens.toml to {}", d.display()))?;
    }
    if let Some((uid, gid)) = owner {
        for d in per_node.iter().chain([&node_dir, &client_dir]) {
            chown_dir(d, uid, gid)?;
        }
    }
    println!(
        "cluster {cluster_id}: CA in {} (keep it off the nodes), node N's files in {}/N \
         (each holds only its own key), the token list in {}, client CA and tokens in {}",
        ca_dir.display(),
        node_dir.display(),
        tokens_file.display(),
        client_dir.display()
    );
    Ok(())
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Make DIR a backup destination (new or empty; an existing destination
    /// is left as it is): the shared directory scheduled backups write to
    /// must be made once, so that an unmounted share is not taken for one.
    Init { dir: PathBuf },
    /// Write a signing key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Back up the cluster at one applied index, from a follower, while it
    /// serves; copies only the files DIR does not hold yet; signs the manifest.
    Create {
        #[command(flatten)]
        ep: EndpointArg,
        /// Backup destination (made if new; an existing one must be a billdb backup).
        #[arg(long)]
        to: PathBuf,
        /// The Ed25519 private key (`billdb backup keygen`).
        #[arg(long)]
        private_key: PathBuf,
        /// Take it from the leader instead of a follower.
        #[arg(long)]
        from_leader: bool,
    },
    /// Copy the entries the cluster committed since the archive's end into
    /// DIR/archive (signed segments in a hash chain), for `billdb restore
    /// --until`. Starts at a backup's applied index; run it with --follow
    /// beside the backups (like pg_receivewal), or once before a restore.
    Archive {
        #[command(flatten)]
        ep: EndpointArg,
        /// Backup destination (its backups and archive).
        #[arg(long)]
        to: PathBuf,
        /// The Ed25519 private key (`billdb backup keygen`).
        #[arg(long)]
        private_key: PathBuf,
        /// Read the leader's log instead of a follower's.
        #[arg(long)]
        from_leader: bool,
        /// Keep archiving until stopped.
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for new entries (s).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval_s: u64,
        /// With --follow: stop after this long (s).
        #[arg(long)]
        follow_for_s: Option<u64>,
    },
    /// Check the log archive in DIR: every segment's signature, size,
    /// SHA-256 and entries, the hash chain; list what it holds and its gaps.
    ArchiveVerify {
        dir: PathBuf,
        #[arg(long)]
        public_key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a backup: signature, every file's size and SHA-256, then the
    /// database opened read-only: digest and fingerprints against the manifest.
    Verify {
        dir: PathBuf,
        /// Default: the newest.
        #[arg(long)]
        backup: Option<String>,
        #[arg(long)]
        public_key: PathBuf,
        /// Only the signature and the files' hashes (do not open the database).
        #[arg(long)]
        shallow: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the backups in DIR, oldest first (time, source node, applied
    /// index, size; manifests read without checking their signatures).
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete the backups the retention does not keep, then every stored
    /// file no kept backup references (a file a kept backup needs is never
    /// deleted) and the leftovers of interrupted runs. At least one --keep
    /// rule is required.
    Prune {
        dir: PathBuf,
        /// Keep the N newest backups.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest backup of each of the N most recent days (UTC)
        /// that have one.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest backup of each of the M most recent months (UTC)
        /// that have one.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Print what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

impl BackupCmd {
    fn json(&self) -> bool {
        match self {
            BackupCmd::Keygen { .. } | BackupCmd::Init { .. } => false,
            BackupCmd::Create { ep, .. } | BackupCmd::Archive { ep, .. } => ep.json,
            BackupCmd::ArchiveVerify { json, .. }
            | BackupCmd::Verify { json, .. }
            | BackupCmd::List { json, .. }
            | BackupCmd::Prune { json, .. } => *json,
        }
    }
}

#[derive(Args)]
struct RestoreArgs {
    /// Backup destination.
    #[arg(long)]
    from: PathBuf,
    /// Default: the newest.
    #[arg(long)]
    backup: Option<String>,
    #[arg(long)]
    public_key: PathBuf,
    /// The NEW cluster's id (its nodes' tls.cluster_id); not the backup's.
    #[arg(long)]
    to_cluster: String,
    /// Every member of the new cluster:
    /// `id=1,raft=H:P,grpc=H:P,http=H:P` (repeat).
    #[arg(long = "member", value_name = "SPEC", required = true)]
    members: Vec<String>,
    /// A data directory to write on this machine: `ID=PATH` (repeat).
    #[arg(long = "data-dir", value_name = "ID=PATH", required = true)]
    data_dirs: Vec<String>,
    /// Replace what a data directory holds.
    #[arg(long)]
    force: bool,
    /// Point in time: an RFC 3339 time or a log index. The archive
    /// (`billdb backup archive`) is replayed on the newest backup before it,
    /// up to the last entry before that time (through that index).
    #[arg(long)]
    until: Option<String>,
    /// With --until: also itemise, per account, what the archived entries
    /// after the point change (replayed on a scratch copy).
    #[arg(long, requires = "until")]
    diff_after: bool,
    #[arg(long)]
    json: bool,
}

/// TLS of a client command: the cluster CA to trust and, for mutual TLS,
/// a client certificate (`billdb cert client`).
#[derive(Args, Clone, Default)]
pub struct TlsArg {
    /// CA certificate(s) to trust (PEM); endpoints without a scheme are then https.
    #[arg(long, env = "BILLDB_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for a role mapped by certificate.
    #[arg(long, env = "BILLDB_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "BILLDB_KEY")]
    pub key: Option<PathBuf>,
}

impl TlsArg {
    pub fn load(&self) -> Result<Option<billdb_client::tls::ClientTls>> {
        billdb_client::tls::TlsPaths {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
        .load()
    }
}

#[derive(Subcommand)]
enum CertCmd {
    /// A new cluster CA: OUT/ca.pem (certificate) and OUT/ca.key (mode 0600).
    Ca {
        /// The cluster's id (a-z, 0-9, '-'), named by every certificate.
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A node certificate: OUT/node<ID>.pem and OUT/node<ID>.key.
    Node {
        /// Directory of the CA (ca.pem, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        id: u64,
        /// Host names or IP addresses clients and peers reach the node by (repeat).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// A new cluster's files in one go: OUT/ca/ (the CA: keep it off the
    /// nodes), OUT/node/<ID>/ for each node (ca.pem, node<ID>.pem and .key,
    /// tokens.toml: only that node's key), OUT/tokens.toml (the token list
    /// `billdb token add` edits; copy it to the nodes after a change) and
    /// OUT/client/ (ca.pem and an ops, auditor, counter and bank token).
    /// Does nothing when OUT/ca/ca.key exists.
    Cluster {
        #[arg(long)]
        cluster_id: String,
        /// A node and the names and addresses it is reached by:
        /// `ID=HOST[,HOST...]` (repeat).
        #[arg(long = "node", value_name = "ID=HOSTS")]
        nodes: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// Give OUT/node and OUT/client to UID:GID (the node's user).
        #[arg(long, value_name = "UID:GID")]
        owner: Option<String>,
    },
    /// Copies one node's files out of a directory that may hold several
    /// nodes' (as `cert cluster` writes them, or a mounted secret): FROM's
    /// ca.pem, node<ID>.pem, node<ID>.key and tokens.toml into OUT, the key
    /// with mode 0600. For an init step that leaves the running node only
    /// its own key (deploy/kubernetes/statefulset.yaml).
    Install {
        #[arg(long)]
        from: PathBuf,
        /// The node's id (default: $BILLDB_NODE_ID).
        #[arg(long, env = "BILLDB_NODE_ID")]
        id: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// A client certificate: OUT/client-<NAME>.pem and .key; map it to a role
    /// in the tokens file with `client_cert = "<NAME>"`.
    Client {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        cluster_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn run_cert(cmd: CertCmd) -> Result<()> {
    use billdb_client::certs;
    match cmd {
        CertCmd::Ca { cluster_id, out } => {
            anyhow::ensure!(
                !out.join("ca.key").exists(),
                "{} already exists: a CA is never overwritten",
                out.join("ca.key").display()
            );
            certs::write_ca(&out, &certs::new_ca(&cluster_id)?)?;
            println!(
                "CA of cluster {cluster_id}: {} (keep {} secret and off the nodes)",
                out.join("ca.pem").display(),
                out.join("ca.key").display()
            );
        }
        CertCmd::Node {
            ca_dir,
            cluster_id,
            id,
            hosts,
            out,
        } => {
            let ca = certs::read_ca(&ca_dir)?;
            let leaf = certs::node_cert(&ca, &cluster_id, id, &hosts)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            certs::write_leaf(&out, &format!("node{id}"), &leaf)?;
            println!(
                "node {id}: {} and {}",
                out.join(format!("node{id}.pem")).display(),
                out.join(format!("node{id}.key")).display()
            );
        }
        CertCmd::Cluster {
            cluster_id,
            nodes,
            out,
            owner,
        } => provision_cluster(&cluster_id, &nodes, &out, owner.as_deref())?,
        CertCmd::Install { from, id, out } => {
            let key = format!("node{id}.key");
            // All four read before anything is written.
            let mut files = Vec::new();
            for (name, mode) in [
                ("ca.pem".to_string(), 0o644),
                (format!("node{id}.pem"), 0o644),
                (key.clone(), 0o600),
                ("tokens.toml".to_string(), 0o644),
            ] {
                let src = from.join(&name);
                let bytes = std::fs::read(&src)
                    .with_context(|| format!("node {id}: reading {}", src.display()))?;
                files.push((name, bytes, mode));
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (name, bytes, mode) in files {
                certs::write_file(&out.join(name), &bytes, mode)?;
            }
            println!(
                "node {id}: ca.pem, node{id}.pem, {key}, tokens.toml in {}",
                out.display()
            );
        }
        CertCmd::Client {
            ca_dir,
            cluster_id,
            name,
            out,
        } => {
            let ca = certs::read_ca(&ca_dir)?;
            let leaf = certs::client_cert(&ca, &cluster_id, &name)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            certs::write_leaf(&out, &format!("client-{name}"), &leaf)?;
            println!(
                "client {name}: {} and {}",
                out.join(format!("client-{name}.pem")).display(),
                out.join(format!("client-{name}.key")).display()
            );
        }
    }
    Ok(())
}

#[derive(Args, Clone)]
struct DirArg {
    /// Cluster directory (cluster.json, nodeN/{node.toml,data,node.log,pid}).
    #[arg(long, env = "BILLDB_LOCAL_DIR", default_value = "./.billdb/local")]
    dir: PathBuf,
}

#[derive(Args, Clone)]
struct NodeBinArg {
    /// billdb-node binary (default: $BILLDB_NODE_BIN, next to this executable or
    /// its parent directory, then $PATH; an existing cluster keeps its binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Create the cluster (if needed), start all nodes, initialise, wait for a leader.
    Up {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        bin: NodeBinArg,
        /// Number of nodes of a new cluster [default: 5].
        #[arg(long)]
        nodes: Option<usize>,
        /// Node N listens on HTTP B+N, gRPC B+100+N, Raft B+200+N [default: 7000].
        #[arg(long)]
        base_port: Option<u16>,
        /// Overall bound on waiting for health and for a leader.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Create a new cluster without TLS (plaintext on every port: for
        /// debugging only; every node logs a warning at start).
        #[arg(long)]
        insecure: bool,
        /// Place node N of a new cluster on its own loopback address
        /// `{PREFIX}N` (e.g. `127.0.2.`), so a drill's local executor can cut
        /// links between nodes (partition scenarios, as root).
        #[arg(long, value_name = "PREFIX")]
        host_prefix: Option<String>,
    },
    /// Rotate TLS certificates of the running cluster (no restart): every
    /// node's certificate, or with --ca a new CA trusted beside the old one
    /// and node certificates from it; --finish-ca then drops the old CA.
    RotateCerts {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, conflicts_with = "finish_ca")]
        ca: bool,
        #[arg(long)]
        finish_ca: bool,
    },
    /// Print shell exports for this cluster's CA, endpoints and a demo token:
    /// `eval "$(billdb local env)"`.
    Env {
        #[command(flatten)]
        dir: DirArg,
        /// Demo identity whose token to export (ops, auditor, counter, bank).
        #[arg(long, default_value = "ops")]
        identity: String,
    },
    /// Show every node: pid, state, role, term, leader, log indexes, lag.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start node N (and wait until it is healthy).
    Start {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        bin: NodeBinArg,
        /// Do not wait for /healthz.
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Stop node N: SIGTERM, then SIGKILL after the timeout.
    Stop {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// SIGKILL node N.
    Kill {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Freeze node N (SIGSTOP).
    Pause {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Unfreeze node N (SIGCONT).
    Resume {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Delete node N's data directory (node must be stopped).
    Wipe {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop all nodes (data is kept; `up` brings them back).
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print the demo bearer token of an identity (ops, auditor, counter, bank).
    Token {
        identity: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print the last lines of node N's log.
    Logs {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Add node N (e.g. 6) to the local cluster directory and start it; then add
    /// it to Raft with `billdb cluster add-learner` / `change-membership`.
    AddNode {
        node: NodeId,
        #[command(flatten)]
        dir: DirArg,
        /// Only write its config, do not start it.
        #[arg(long)]
        no_start: bool,
    },
}

#[derive(Args, Clone)]
pub(crate) struct EndpointArg {
    /// Admin HTTP endpoint of any node (https:// when --ca is given and no
    /// scheme is).
    #[arg(long, env = "BILLDB_ENDPOINT", default_value = "127.0.0.1:7001")]
    endpoint: String,
    #[command(flatten)]
    tls: TlsArg,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
    /// Bound on the request.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Bearer token (an ops token for administration).
    #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token (instead of --token).
    #[arg(long, env = "BILLDB_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// GET /v1/cluster/status.
    Status {
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// POST /v1/cluster/init (once, on one node).
    Init {
        #[command(flatten)]
        ep: EndpointArg,
        /// A voter: `id=1,raft=127.0.0.1:7201,grpc=127.0.0.1:7101,http=127.0.0.1:7001`
        /// (repeat for each node).
        #[arg(long = "node", value_name = "SPEC")]
        nodes: Vec<String>,
        /// Instead of --node: voters 1..=N with the local port scheme.
        #[arg(long, value_name = "N", conflicts_with = "nodes")]
        local: Option<u64>,
        /// Base port for --local.
        #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
        base_port: u16,
        /// Succeed when the node is already initialised (a one-shot
        /// bootstrap job that may run again).
        #[arg(long)]
        if_needed: bool,
        /// Keep trying for this long while the node cannot be reached (a
        /// bootstrap job started beside the nodes).
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
    },
    /// POST /v1/cluster/learners: add node ID as a learner.
    AddLearner {
        id: NodeId,
        #[command(flatten)]
        ep: EndpointArg,
        /// Default: 127.0.0.1:(base+200+ID).
        #[arg(long)]
        raft_addr: Option<String>,
        /// Default: 127.0.0.1:(base+100+ID).
        #[arg(long)]
        grpc_addr: Option<String>,
        /// Default: 127.0.0.1:(base+ID).
        #[arg(long)]
        http_addr: Option<String>,
        #[arg(long, default_value_t = DEFAULT_BASE_PORT)]
        base_port: u16,
    },
    /// POST /v1/cluster/membership: set the voters, e.g. --voters 1,2,3,4,6.
    ChangeMembership {
        #[command(flatten)]
        ep: EndpointArg,
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        voters: Vec<NodeId>,
    },
    /// POST /v1/cluster/remove: remove node ID from the cluster.
    Remove {
        id: NodeId,
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// POST /v1/cluster/transfer-leader: make node TO the leader.
    TransferLeader {
        to: NodeId,
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// GET /readyz (or /healthz with --live): exit 0 when the node answers
    /// ready, 1 otherwise. For container health checks and scripts.
    Ready {
        #[command(flatten)]
        ep: EndpointArg,
        /// Only ask whether the process serves (`/healthz`).
        #[arg(long)]
        live: bool,
    },
    /// If the node at --endpoint leads, hand leadership to the voter that is
    /// furthest along and wait until it leads; else do nothing. Run it
    /// before stopping a node (systemd ExecStop, Kubernetes preStop).
    StepDown {
        #[command(flatten)]
        ep: EndpointArg,
    },
    /// POST /v1/cluster/snapshot: build a snapshot on the node named by
    /// --endpoint now (a checkpoint: quick at any size), e.g. before a backup.
    Snapshot {
        #[command(flatten)]
        ep: EndpointArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Local(c) => run_local(c),
        Cmd::Cluster(c) => run_cluster(c),
        Cmd::Node(c) => run_node(c),
        Cmd::Account(c) => billing_cli::run_account(c),
        Cmd::Pay(p) => billing_cli::run_pay(p),
        Cmd::Card(c) => billing_cli::run_card(c),
        Cmd::Purchase(p) => billing_cli::run_purchase(p),
        Cmd::Record(c) => billing_cli::run_record(c),
        Cmd::Invoice(c) => billing_cli::run_invoice(c),
        Cmd::Report(c) => billing_cli::run_report(c),
        Cmd::Cert(c) => run_cert(c),
        Cmd::Token(c) => run_token(c),
        Cmd::Ops(c) => billing_cli::run_ops(c),
        Cmd::Season(c) => season_cli::run(c),
        Cmd::Import(a) => return import_cli::run(a),
        Cmd::Bank(c) => match bank_cli::run(c) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Cmd::Backup(c) => {
            let json = c.json();
            json_error(json, run_backup(c))
        }
        Cmd::Restore(a) => {
            let json = a.json;
            json_error(json, run_restore(a))
        }
        Cmd::Drill(c) => run_drill(c),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match billdb_client::backup::code_of(&e) {
                Some(code) => eprintln!("error: {code}: {e:#}"),
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Set when a command already printed its failure as its one `--json`
/// document (a verify report that says FAILED, with its `error`).
static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `--json`, a failure is also a JSON document on stdout:
/// `{"error": {"code", "message"}}` (`code`: one of the backup error codes,
/// or `FAILED`).
fn json_error(json: bool, r: Result<()>) -> Result<()> {
    let printed = JSON_PRINTED.load(std::sync::atomic::Ordering::Relaxed);
    if let (true, false, Err(e)) = (json, printed, &r) {
        let code = billdb_client::backup::code_of(e).unwrap_or("FAILED");
        println!(
            "{}",
            serde_json::json!({"error": {"code": code, "message": format!("{e:#}")}})
        );
    }
    r
}

// ---------------------------------------------------------------------------
// billdb backup, billdb restore
// ---------------------------------------------------------------------------

fn is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn run_backup(cmd: BackupCmd) -> Result<()> {
    use billdb_client::backup;
    match cmd {
        BackupCmd::Init { dir } => {
            billdb_node::backup::store::open_destination(&dir)?;
            println!("{} is a billdb backup destination", dir.display());
            Ok(())
        }
        BackupCmd::Keygen { out } => {
            let (private, public) = backup::keygen(&out)?;
            println!(
                "private key {} (keep it secret, off the nodes), public key {}",
                private.display(),
                public.display()
            );
            Ok(())
        }
        BackupCmd::Create {
            ep,
            to,
            private_key,
            from_leader,
        } => {
            let r = backup::create(&backup::CreateOpts {
                endpoint: ep.endpoint.clone(),
                tls: ep.tls.load()?,
                token: ep.token.clone(),
                to,
                private_key,
                from_leader,
                progress: !ep.json && is_terminal(),
                timeout: secs(ep.timeout_secs),
            })?;
            if ep.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "backup {} of node {}{} at applied index {}: {} files, {} bytes; copied {} files, {} bytes, in {} ms",
                    r.backup_id,
                    r.source_node,
                    if r.source_was_leader {
                        " (the leader: no follower answered)"
                    } else {
                        " (a follower)"
                    },
                    r.applied_index,
                    r.files,
                    r.bytes_total,
                    r.files_copied,
                    r.bytes_copied,
                    r.ms
                );
            }
            Ok(())
        }
        BackupCmd::Archive {
            ep,
            to,
            private_key,
            from_leader,
            follow,
            interval_s,
            follow_for_s,
        } => {
            let r = billdb_client::archive::run(&billdb_client::archive::ArchiveOpts {
                conn: backup::CreateOpts {
                    endpoint: ep.endpoint.clone(),
                    tls: ep.tls.load()?,
                    token: ep.token.clone(),
                    to,
                    private_key,
                    from_leader,
                    progress: !ep.json && is_terminal(),
                    timeout: secs(ep.timeout_secs),
                },
                follow,
                interval: secs(interval_s),
                follow_for: follow_for_s.map(secs),
            })?;
            if ep.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "archive {}: {} segments, {} entries, {} bytes written from node {}; archived through entry {}{}, in {} ms",
                    r.dir.display(),
                    r.segments_written,
                    r.entries_written,
                    r.bytes_written,
                    r.source_node.map_or("-".to_string(), |n| n.to_string()),
                    r.last_index.map_or("-".to_string(), |n| n.to_string()),
                    if r.gaps.is_empty() {
                        String::new()
                    } else {
                        format!(" (GAPS: {:?})", r.gaps)
                    },
                    r.ms
                );
            }
            Ok(())
        }
        BackupCmd::ArchiveVerify {
            dir,
            public_key,
            json,
        } => {
            let c = billdb_client::archive::verify(&dir, &public_key)?;
            let failed = (!c.problems.is_empty()).then(|| {
                billdb_node::backup::store::error(
                    billdb_node::backup::store::E_VERIFY_FAILED,
                    format!("the log archive in {} does not verify", dir.display()),
                )
            });
            if json {
                let mut v = serde_json::to_value(&c)?;
                if let Some(e) = &failed {
                    v["error"] =
                        serde_json::json!({"code": "VERIFY_FAILED", "message": format!("{e:#}")});
                    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", billdb_client::archive::render_check(&c));
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(())
        }
        BackupCmd::Verify {
            dir,
            backup: id,
            public_key,
            shallow,
            json,
        } => {
            let (r, _) = backup::verify(&backup::VerifyOpts {
                dir,
                backup_id: id,
                public_key,
                deep: !shallow,
                progress: !json && is_terminal(),
            })?;
            let failed = (!r.ok).then(|| {
                billdb_node::backup::store::error(
                    billdb_node::backup::store::E_VERIFY_FAILED,
                    format!("backup {} does not verify", r.backup_id),
                )
            });
            if json {
                // One document: the report, with the error when it failed.
                let mut v = serde_json::to_value(&r)?;
                if let Some(e) = &failed {
                    v["error"] =
                        serde_json::json!({"code": "VERIFY_FAILED", "message": format!("{e:#}")});
                    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", backup::render_verify(&r));
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Ok(())
        }
        BackupCmd::List { dir, json } => {
            let mut rows = Vec::new();
            for id in backup::list_ids(&dir)? {
                let m = match billdb_node::backup::store::read_manifest_unverified(&dir, &id) {
                    Ok(m) => m,
                    Err(e) => {
                        rows.push(serde_json::json!({"backup_id": id, "error": format!("{e:#}")}));
                        continue;
                    }
                };
                rows.push(serde_json::json!({
                    "backup_id": id,
                    "created_at": m.created_at,
                    "source_node": m.source_node,
                    "applied_index": m.applied_log_id.index,
                    "files": m.files.len(),
                    "bytes_total": m.bytes_total,
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    if let Some(e) = r["error"].as_str() {
                        println!(
                            "{}  UNREADABLE: {e}",
                            r["backup_id"].as_str().unwrap_or_default()
                        );
                        continue;
                    }
                    println!(
                        "{}  {}  node {}  applied index {}  {} files  {} bytes",
                        r["backup_id"].as_str().unwrap_or_default(),
                        r["created_at"].as_str().unwrap_or_default(),
                        r["source_node"],
                        r["applied_index"],
                        r["files"],
                        r["bytes_total"]
                    );
                }
            }
            Ok(())
        }
        BackupCmd::Prune {
            dir,
            keep_last,
            keep_daily,
            keep_monthly,
            dry_run,
            json,
        } => {
            let r = backup::prune(
                &dir,
                &backup::Retention {
                    keep_last,
                    keep_daily,
                    keep_monthly,
                },
                dry_run,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", backup::render_prune(&r));
            }
            Ok(())
        }
    }
}

fn run_restore(a: RestoreArgs) -> Result<()> {
    use billdb_client::backup;
    let mut members = std::collections::BTreeMap::new();
    for m in &a.members {
        let (id, info) = backup::member_of(&parse_node_spec(m)?);
        anyhow::ensure!(
            members.insert(id, info).is_none(),
            "--member: node {id} twice"
        );
    }
    let mut data_dirs = std::collections::BTreeMap::new();
    for d in &a.data_dirs {
        let (id, path) = d
            .split_once('=')
            .ok_or_else(|| anyhow!("--data-dir {d:?}: expected ID=PATH"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("--data-dir {d:?}: bad node id"))?;
        anyhow::ensure!(
            data_dirs.insert(id, PathBuf::from(path)).is_none(),
            "--data-dir: node {id} twice"
        );
    }
    let until = match a.until.as_deref() {
        None => None,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Some(
            billdb_node::backup::archive::Until::Index(v.parse().map_err(|_| {
                billdb_node::backup::store::error(
                    billdb_node::backup::store::E_INVALID_ARGUMENT,
                    format!("--until {v}: not a log index"),
                )
            })?),
        ),
        Some(v) => Some(billdb_node::backup::archive::Until::Time(
            billdb_node::api::validate::rfc3339("--until", v).map_err(|e| {
                billdb_node::backup::store::error(
                    billdb_node::backup::store::E_INVALID_ARGUMENT,
                    format!("--until {v:?}: give an RFC 3339 time (2026-12-07T08:00:00Z) or a log index ({})", e.message),
                )
            })?,
        )),
    };
    let r = backup::restore(&backup::RestoreOpts {
        from: a.from,
        backup_id: a.backup,
        public_key: a.public_key,
        cluster_id: a.to_cluster,
        members,
        data_dirs,
        force: a.force,
        progress: !a.json && is_terminal(),
        until,
        diff_after: a.diff_after,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", backup::render_restore(&r));
    }
    anyhow::ensure!(
        r.ok,
        "the restored state differs from the backup's manifest"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// billdb local
// ---------------------------------------------------------------------------

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn run_local(cmd: LocalCmd) -> Result<()> {
    match cmd {
        LocalCmd::Up {
            dir,
            bin,
            nodes,
            base_port,
            timeout_secs,
            insecure,
            host_prefix,
        } => local_up(
            &dir.dir,
            bin.node_bin.as_deref(),
            nodes,
            base_port,
            secs(timeout_secs),
            insecure,
            host_prefix.as_deref(),
        ),
        LocalCmd::RotateCerts { dir, ca, finish_ca } => {
            let c = LocalCluster::open(&dir.dir)?;
            if ca {
                c.rotate_ca_begin()?;
                println!(
                    "new CA trusted beside the old one ({}), node certificates re-issued from it; \
                     give clients the new ca.pem, then run `billdb local rotate-certs --finish-ca`",
                    c.ca_bundle_path().display()
                );
            } else if finish_ca {
                c.rotate_ca_finish()?;
                println!(
                    "old CA dropped: {} trusts the new CA only",
                    c.ca_bundle_path().display()
                );
            } else {
                c.rotate_node_certs()?;
                println!("node certificates re-issued; running nodes load them within seconds");
            }
            Ok(())
        }
        LocalCmd::Env { dir, identity } => {
            let c = LocalCluster::open(&dir.dir)?;
            let first = c
                .node_ids()
                .first()
                .copied()
                .context("the cluster has no node")?;
            if c.is_tls() {
                println!(
                    "export BILLDB_CA={}",
                    shell_quote(&c.ca_bundle_path().display().to_string())
                );
            }
            println!("export BILLDB_ENDPOINT={}", c.http_url(first)?);
            let grpc: Vec<String> = c
                .node_ids()
                .into_iter()
                .map(|n| c.grpc_url(n))
                .collect::<Result<_>>()?;
            println!("export BILLDB_GRPC={}", grpc.join(","));
            println!("export BILLDB_TOKEN={}", c.token(&identity)?);
            Ok(())
        }
        LocalCmd::Status { dir, json } => {
            let c = LocalCluster::open(&dir.dir)?;
            let report = c.report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_status_table(&report));
            }
            Ok(())
        }
        LocalCmd::Start {
            node,
            dir,
            bin,
            no_wait,
            timeout_secs,
        } => {
            let c = LocalCluster::open(&dir.dir)?;
            c.node(node)?;
            c.ensure_node_bin(bin.node_bin.as_deref())?;
            let pid = c.start(node)?;
            println!(
                "node {node}: started (pid {pid}), log {}",
                c.log_path(node).display()
            );
            if !no_wait {
                c.wait_healthy(node, secs(timeout_secs))?;
                println!("node {node}: healthy at {}", c.http_url(node)?);
            }
            Ok(())
        }
        LocalCmd::Stop {
            node,
            dir,
            timeout_secs,
        } => {
            let c = LocalCluster::open(&dir.dir)?;
            let pid = c.pid(node);
            let outcome = c.stop_with_timeout(node, secs(timeout_secs))?;
            println!("node {node}: {}", describe_stop(outcome, pid));
            Ok(())
        }
        LocalCmd::Kill { node, dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            let pid = c.pid(node);
            if c.kill(node)? {
                println!("node {node}: killed (pid {})", fmt_pid(pid));
            } else {
                println!("node {node}: was not running");
            }
            Ok(())
        }
        LocalCmd::Pause { node, dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            c.pause(node)?;
            println!("node {node}: paused (SIGSTOP); `billdb local resume {node}` to continue");
            Ok(())
        }
        LocalCmd::Resume { node, dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            c.resume(node)?;
            println!("node {node}: resumed");
            Ok(())
        }
        LocalCmd::Wipe { node, dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            if c.wipe(node)? {
                println!("node {node}: deleted {}", c.data_dir(node).display());
            } else {
                println!("node {node}: no data to delete");
            }
            Ok(())
        }
        LocalCmd::Down { dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            let pids: Vec<(NodeId, Option<u32>)> =
                c.node_ids().into_iter().map(|n| (n, c.pid(n))).collect();
            for (n, outcome) in c.down()? {
                let pid = pids.iter().find(|(id, _)| *id == n).and_then(|(_, p)| *p);
                println!("node {n}: {}", describe_stop(outcome, pid));
            }
            Ok(())
        }
        LocalCmd::Token { identity, dir } => {
            let c = LocalCluster::open(&dir.dir)?;
            println!("{}", c.token(&identity)?);
            Ok(())
        }
        LocalCmd::Logs { node, dir, lines } => {
            let c = LocalCluster::open(&dir.dir)?;
            c.node(node)?;
            println!("{}", c.log_tail(node, lines));
            Ok(())
        }
        LocalCmd::AddNode {
            node,
            dir,
            no_start,
        } => {
            let c = LocalCluster::open(&dir.dir)?;
            let spec = c.add_node(node)?;
            println!(
                "node {node}: added (http {}, grpc {}, raft {})",
                spec.http_addr, spec.grpc_addr, spec.raft_addr
            );
            if !no_start {
                let pid = c.start(node)?;
                c.wait_healthy(node, secs(30))?;
                println!("node {node}: started (pid {pid})");
            }
            println!(
                "next: billdb cluster add-learner {node} --base-port {} --endpoint http://{}",
                c.base_port(),
                c.http_addr(c.node_ids()[0])?
            );
            Ok(())
        }
    }
}

fn fmt_pid(pid: Option<u32>) -> String {
    pid.map_or_else(|| "?".into(), |p| p.to_string())
}

fn describe_stop(o: StopOutcome, pid: Option<u32>) -> String {
    match o {
        StopOutcome::NotRunning => "was not running".into(),
        StopOutcome::Terminated => format!("stopped (pid {})", fmt_pid(pid)),
        StopOutcome::Killed => format!("did not exit after SIGTERM, killed (pid {})", fmt_pid(pid)),
    }
}

fn local_up(
    dir: &Path,
    node_bin: Option<&Path>,
    nodes: Option<usize>,
    base_port: Option<u16>,
    timeout: Duration,
    insecure: bool,
    host_prefix: Option<&str>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let c = if LocalCluster::exists(dir) {
        let c = LocalCluster::open(dir)?;
        let spec = c.spec();
        if let Some(n) = nodes
            && n != spec.nodes.len()
        {
            bail!(
                "cluster at {} already has {} nodes (asked for {n}); `billdb local down` and \
                 delete the directory to recreate it",
                c.dir().display(),
                spec.nodes.len()
            );
        }
        if let Some(b) = base_port
            && b != spec.base_port
        {
            bail!(
                "cluster at {} uses base port {} (asked for {b}); use another --dir for a \
                 second cluster",
                c.dir().display(),
                spec.base_port
            );
        }
        if let Some(p) = host_prefix
            && Some(p) != spec.host_prefix.as_deref()
        {
            bail!(
                "cluster at {} was made with host prefix {:?} (asked for {p:?}); use another \
                 --dir for a second cluster",
                c.dir().display(),
                spec.host_prefix.as_deref().unwrap_or("none: 127.0.0.1")
            );
        }
        c.ensure_node_bin(node_bin)?;
        c
    } else {
        let bin = find_node_bin(node_bin)?;
        let c = LocalCluster::create_full(
            dir,
            &bin,
            base_port.unwrap_or(DEFAULT_BASE_PORT),
            nodes.unwrap_or(DEFAULT_NODES),
            local::RaftTimings::default(),
            host_prefix,
            !insecure,
        )?;
        println!("created cluster in {}", c.dir().display());
        if insecure {
            println!(
                "WARNING: --insecure: every port is plaintext; anyone who can reach it is served"
            );
        } else {
            println!(
                "TLS on every port, mutual TLS between nodes; cluster CA: {}",
                c.ca_bundle_path().display()
            );
        }
        c
    };
    println!("node binary: {}", c.node_bin().display());

    for n in c.node_ids() {
        match c.pid(n) {
            Some(pid) => println!("node {n}: already running (pid {pid})"),
            None => {
                let pid = c.start(n)?;
                println!("node {n}: started (pid {pid})");
            }
        }
    }
    c.wait_all_healthy(left())
        .context("waiting for the nodes to become healthy (stop them with `billdb local down`)")?;
    println!("all nodes healthy");

    if !c.initialized() {
        if local::any_initialized(&c.status_all()) {
            c.set_initialized()?;
            println!("cluster already initialised");
        } else if c.init()? {
            println!("initialised cluster with voters {:?}", c.node_ids());
        } else {
            println!("cluster already initialised");
        }
    }
    let leader = c
        .wait_leader(left().max(Duration::from_secs(1)))
        .context("waiting for a leader")?;
    println!("leader: node {leader}\n");
    print!("{}", render_status_table(&c.report()));
    println!("\nendpoints:");
    for node in c.spec().nodes {
        println!(
            "  node {}  http {}  grpc {}  raft {}  log {}",
            node.id,
            c.http_url(node.id)?,
            c.grpc_url(node.id)?,
            node.raft_addr,
            c.log_path(node.id).display()
        );
    }
    if c.tokens_json_path().exists() {
        println!(
            "\ndemo bearer tokens (ops, auditor, counter C-0101@B01, bank ICBC): {}\n  e.g. billdb local token ops --dir {}",
            c.tokens_json_path().display(),
            c.dir().display()
        );
    }
    println!(
        "\nthis shell, as ops: eval \"$(billdb local env --dir {})\"",
        shell_quote(&c.dir().display().to_string())
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// billdb cluster
// ---------------------------------------------------------------------------

/// Calls `POST path` with `{"request_id"[,"after"]}` until the node
/// answers `done`, giving each answer's `next_after` back as `after`: how
/// the CLI drives a node-side run of bounded commands (season bill, bank
/// index backfill). `progress` takes each answer (to add up its counts)
/// and returns the spinner's message, shown on stderr when `show`.
pub(crate) fn call_until_done(
    c: &AdminClient,
    path: &str,
    request_id: &str,
    show: bool,
    mut progress: impl FnMut(&Value) -> String,
) -> Result<()> {
    let pb = if show {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut after: Option<String> = None;
    loop {
        let mut body = serde_json::json!({"request_id": request_id});
        if let Some(a) = &after {
            body["after"] = serde_json::json!(a);
        }
        let v = c.post(path, &body)?;
        pb.set_message(progress(&v));
        if v["done"] == true {
            break;
        }
        after = match v["next_after"].as_str() {
            Some(a) => Some(a.to_string()),
            None => bail!("the node answered neither done nor where to go on: {v}"),
        };
    }
    pb.finish_and_clear();
    Ok(())
}

pub(crate) fn client(ep: &EndpointArg) -> Result<AdminClient> {
    let tls = ep.tls.load()?;
    let token = match (&ep.token, &ep.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    Ok(AdminClient::with_tls(&ep.endpoint, secs(ep.timeout_secs), tls.as_ref()).with_token(token))
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[derive(Subcommand)]
enum NodeCmd {
    /// POST /v1/node/repair: rebuild the node at --endpoint from its peers,
    /// for a disk no longer trusted. Its database moves aside into
    /// `damaged/` and it rejoins from a snapshot of the leader. Refused,
    /// nothing changed, unless the leader would agree now (a quorum answers
    /// it without this node).
    Repair {
        #[command(flatten)]
        ep: EndpointArg,
        /// Why (kept with the moved-aside database and logged).
        #[arg(long)]
        reason: Option<String>,
        /// Follow the repair until the node is ready and votes again.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
}

fn run_node(cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Repair {
            ep,
            reason,
            wait,
            wait_secs,
        } => {
            let c = client(&ep)?;
            let before = c
                .status()?
                .pointer("/storage/last_repair/granted_unix_ms")
                .and_then(Value::as_u64);
            let mut body = serde_json::json!({});
            if let Some(r) = reason {
                body["reason"] = Value::String(r);
            }
            let v = c.post("/v1/node/repair", &body)?;
            let node = v.get("node_id").and_then(Value::as_u64).unwrap_or(0);
            done(&ep, &v, &format!("node {node} is repairing from its peers"))?;
            if wait {
                wait_repaired(&c, node, before, secs(wait_secs))?;
            }
            Ok(())
        }
    }
}

/// Follows a repair on `c`'s node until it finished a repair newer than
/// `before` and is ready with no vote fence; prints each phase once.
fn wait_repaired(
    c: &AdminClient,
    node: NodeId,
    before: Option<u64>,
    limit: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    let mut said = String::new();
    loop {
        let mut say = |phase: String| {
            if phase != said {
                eprintln!("node {node}: {phase}");
                said = phase;
            }
        };
        match c.status() {
            Err(_) => say("restarting".into()),
            Ok(v) => {
                let repaired = v
                    .pointer("/storage/last_repair/granted_unix_ms")
                    .and_then(Value::as_u64);
                let applied = v.get("applied_index").and_then(Value::as_u64).unwrap_or(0);
                let committed = v
                    .get("committed_index")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let fence = v
                    .pointer("/storage/vote_fence_index")
                    .and_then(Value::as_u64);
                if v.pointer("/storage/state").and_then(Value::as_str) == Some("failed") {
                    let state = v
                        .pointer("/storage/repair")
                        .and_then(Value::as_str)
                        .unwrap_or("starting");
                    say(format!("fenced, repair {state}"));
                } else if repaired.is_none() || repaired == before {
                    say("waiting for the repair to start".into());
                } else if let Some(f) = fence {
                    say(format!(
                        "rejoining: log up to the vote fence {f}, applied {applied} of {committed}"
                    ));
                } else if c.readyz().unwrap_or(false) {
                    println!("ok: node {node} was rebuilt from its peers and is ready");
                    return Ok(());
                } else {
                    say(format!("catching up: applied {applied} of {committed}"));
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "node {node} is not repaired after {} s (last: {said})",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_cluster(cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Status { ep } => {
            let v = client(&ep)?.status()?;
            if ep.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_status(&v));
            }
            Ok(())
        }
        ClusterCmd::Init {
            ep,
            nodes,
            local,
            base_port,
            if_needed,
            wait_secs,
        } => {
            let addrs: Vec<NodeAddrs> = match local {
                Some(n) => (1..=n)
                    .map(|id| local::node_spec(base_port, id).map(|s| s.addrs()))
                    .collect::<Result<_>>()?,
                None => nodes
                    .iter()
                    .map(|s| parse_node_spec(s))
                    .collect::<Result<_>>()?,
            };
            if addrs.is_empty() {
                bail!("no voters given: use --node SPEC (repeatable) or --local N");
            }
            let ids: Vec<NodeId> = addrs.iter().map(|a| a.id).collect();
            let c = client(&ep)?;
            let deadline = std::time::Instant::now() + secs(wait_secs);
            let mut answer = c.init(&addrs);
            while let Err(e) = &answer
                && e.status().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(500));
                answer = c.init(&addrs);
            }
            match answer {
                Ok(v) => done(&ep, &v, &format!("initialised cluster with voters {ids:?}")),
                Err(e) if if_needed && e.is_already_initialized() => {
                    println!("ok: already initialised; nothing to do");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        ClusterCmd::AddLearner {
            id,
            ep,
            raft_addr,
            grpc_addr,
            http_addr,
            base_port,
        } => {
            let needs_default = raft_addr.is_none() || grpc_addr.is_none() || http_addr.is_none();
            let def = if needs_default {
                Some(local::node_spec(base_port, id)?)
            } else {
                None
            };
            let pick = |given: Option<String>, f: fn(&local::NodeSpec) -> &String| {
                given
                    .or_else(|| def.as_ref().map(|d| f(d).clone()))
                    .unwrap_or_default()
            };
            let node = NodeAddrs {
                id,
                raft_addr: pick(raft_addr, |d| &d.raft_addr),
                grpc_addr: pick(grpc_addr, |d| &d.grpc_addr),
                http_addr: pick(http_addr, |d| &d.http_addr),
            };
            let v = client(&ep)?.add_learner(&node)?;
            done(
                &ep,
                &v,
                &format!(
                    "node {id} added as learner (raft {}, grpc {}, http {})",
                    node.raft_addr, node.grpc_addr, node.http_addr
                ),
            )
        }
        ClusterCmd::ChangeMembership { ep, voters } => {
            let v = client(&ep)?.change_membership(&voters)?;
            done(&ep, &v, &format!("voters are now {voters:?}"))
        }
        ClusterCmd::Remove { id, ep } => {
            let v = client(&ep)?.remove(id)?;
            done(&ep, &v, &format!("node {id} removed"))
        }
        ClusterCmd::TransferLeader { to, ep } => {
            let v = client(&ep)?.transfer_leader(to)?;
            done(
                &ep,
                &v,
                &format!("leadership transfer to node {to} requested"),
            )
        }
        ClusterCmd::Snapshot { ep } => {
            let v = client(&ep)?.snapshot()?;
            done(&ep, &v, "snapshot built")
        }
        ClusterCmd::Ready { ep, live } => {
            let c = client(&ep)?;
            if live {
                c.healthz()?;
                println!("live: {}", c.endpoint());
            } else if c.readyz()? {
                println!("ready: {}", c.endpoint());
            } else {
                bail!("not ready: {}", c.endpoint());
            }
            Ok(())
        }
        ClusterCmd::StepDown { ep } => step_down(&ep),
    }
}

/// `billdb drill run restore-rehearsal`'s options, as given.
struct RehearseRun {
    dir: PathBuf,
    endpoint: Option<String>,
    tls: TlsArg,
    token: Option<String>,
    operator: String,
    private_key: PathBuf,
    out: PathBuf,
    rto_ms: u64,
    record: bool,
    rehearsal: RehearsalArgs,
    json: bool,
}

fn rehearse_restore(a: RehearseRun) -> Result<()> {
    use billdb_client::drill;
    let r = a.rehearsal;
    let backup_dir = r
        .backup_dir
        .context("INVALID_ARGUMENT: restore-rehearsal needs --backup-dir")?;
    let backup_public_key = r
        .backup_public_key
        .context("INVALID_ARGUMENT: restore-rehearsal needs --backup-public-key")?;
    // The production cluster, when reachable: its commit index beside the
    // backup's, and where the summary is recorded.
    // `--endpoint` (with an ops token) names it; else a local cluster's
    // directory when one is there; else the rehearsal stands alone.
    let production = match (a.endpoint, a.token) {
        (Some(ep), Some(token)) => Some(drill::Target::discover(&ep, a.tls.load()?, token)?),
        (Some(_), None) => {
            bail!("INVALID_ARGUMENT: --endpoint needs --token (or BILLDB_TOKEN): an ops token")
        }
        (None, _) if LocalCluster::exists(&a.dir) => {
            Some(drill::Target::from_local(&LocalCluster::open(&a.dir)?)?)
        }
        (None, _) => None,
    };
    let scratch_dir = r.scratch_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "billdb-rehearsal-{}-{}",
            std::process::id(),
            drill::unix_ms()
        ))
    });
    let o = drill::RunOpts {
        scenario: drill::rehearsal::SCENARIO.into(),
        operator: a.operator,
        out_dir: a.out.clone(),
        private_key: a.private_key,
        warmup: Duration::ZERO,
        down: Duration::ZERO,
        recovery_max: Duration::ZERO,
        after: Duration::ZERO,
        write_deadline: Duration::from_secs(30),
        writers: 1,
        rto: Duration::from_millis(a.rto_ms),
        rpo_writes: 0,
        record: a.record,
        show_progress: false,
    };
    let ro = drill::rehearsal::RehearsalOpts {
        backup_dir,
        backup_id: r.backup_id,
        backup_public_key,
        scratch_dir,
        scratch_base_port: r.scratch_base_port,
        scratch_nodes: r.scratch_nodes,
        node_bin: find_node_bin(r.bin.node_bin.as_deref())?,
        keep_scratch: r.keep_scratch,
        max_backup_age: secs(r.max_backup_age_s),
    };
    let rep = drill::rehearsal::rehearse(production.as_ref(), &o, &ro)?;
    let files = rep.write(&a.out)?;
    let d = &rep.data;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"result": d["result"], "sha256": rep.sha256,
                "scenario": d["scenario"], "executor": d["executor"],
                "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "measured": d["measured"], "backup": d["backup"], "scratch": d["scratch"],
                "verification": d["verification"], "failures": d["failures"]})
        );
    } else {
        println!(
            "restore rehearsal {}: backup {} ({} s old), restored and serving its first write after {} ms; digests equal {}, fingerprints equal {}",
            d["result"].as_str().unwrap_or("?"),
            d["backup"]["backup_id"],
            d["backup"]["age_s"],
            d["measured"]["write_gap_ms"],
            d["verification"]["digests_equal"],
            d["verification"]["fingerprints_equal"]
        );
        for f in d["failures"].as_array().cloned().unwrap_or_default() {
            println!("  FAILED: {}", f.as_str().unwrap_or("?"));
        }
        for f in &files {
            println!("  report: {}", f.display());
        }
    }
    if rep.passed() {
        Ok(())
    } else {
        bail!("the restore rehearsal FAILED (see the report)")
    }
}

fn run_drill(cmd: DrillCmd) -> Result<()> {
    use billdb_client::drill::{self, Executor, report};
    match cmd {
        DrillCmd::Verify {
            report: path,
            public_key,
        } => {
            let r = report::read(&path)?;
            report::verify(&r, &public_key)?;
            println!(
                "ok: {} is signed by that key and unchanged: {} {} (sha256 {})",
                path.display(),
                r.data["scenario"].as_str().unwrap_or("?"),
                r.data["result"].as_str().unwrap_or("?"),
                r.sha256
            );
            Ok(())
        }
        DrillCmd::Run(args) => {
            let DrillRunArgs {
                scenario,
                executor,
                dir,
                compose_project,
                compose_service_prefix,
                compose_cluster_id,
                inventory,
                k8s_namespace,
                k8s_statefulset,
                endpoint,
                tls,
                token,
                operator,
                private_key,
                out,
                rto_ms,
                rpo_writes,
                warmup_s,
                down_s,
                after_s,
                recovery_max_s,
                writers,
                no_record,
                rehearsal,
                json,
            } = *args;
            let rehearse = scenario == drill::rehearsal::SCENARIO;
            if !(rehearse || drill::SCENARIOS.contains(&scenario.as_str())) {
                bail!(
                    "INVALID_ARGUMENT: unknown scenario {scenario:?}: one of {}, {}",
                    drill::SCENARIOS.join(", "),
                    drill::rehearsal::SCENARIO
                );
            }
            let rto_ms = rto_ms.unwrap_or(if rehearse { 600_000 } else { 5_000 });
            if !(1..=64).contains(&writers) {
                bail!("INVALID_ARGUMENT: --writers {writers}: 1..=64");
            }
            // The key must be readable before anything is done to the cluster.
            billdb_client::backup::read_signing_key(&private_key)?;
            let operator = operator
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            if rehearse {
                return rehearse_restore(RehearseRun {
                    dir,
                    endpoint,
                    tls,
                    token,
                    operator,
                    private_key,
                    out,
                    rto_ms,
                    record: !no_record,
                    rehearsal,
                    json,
                });
            }
            let (target, mut exec): (drill::Target, Box<dyn Executor>) = match executor.as_str() {
                "local" => {
                    let c = LocalCluster::open(&dir)?;
                    let t = drill::Target::from_local(&c)?;
                    (t, Box::new(drill::LocalExecutor::new(c)))
                }
                "manual" => {
                    let ep = endpoint.context("--endpoint: any node of the cluster")?;
                    let token = token.context("--token (or BILLDB_TOKEN): an ops token")?;
                    let t = drill::Target::discover(&ep, tls.load()?, token)?;
                    let servers = t.nodes.clone();
                    (
                        t,
                        Box::new(drill::ManualExecutor {
                            servers,
                            input: Box::new(std::io::BufReader::new(std::io::stdin())),
                            prompted_at: None,
                        }),
                    )
                }
                "compose" => {
                    let project =
                        compose_project.context("--compose-project: the compose project's name")?;
                    let mut exec =
                        drill::compose::ComposeExecutor::new(&project, &compose_service_prefix)?;
                    exec.cluster_id = Some(compose_cluster_id);
                    let ep = endpoint.context("--endpoint: any node of the cluster")?;
                    let token = token.context("--token (or BILLDB_TOKEN): an ops token")?;
                    let t = drill::Target::discover(&ep, tls.load()?, token)?;
                    for n in t.nodes.keys() {
                        exec.container(*n)
                            .with_context(|| format!("member {n} of the cluster"))?;
                    }
                    (t, Box::new(exec))
                }
                "ssh" => {
                    let path = inventory.context("--inventory: the servers' inventory file")?;
                    let exec = drill::ssh::SshExecutor::new(drill::ssh::Inventory::load(&path)?);
                    let ep = endpoint.context("--endpoint: any node of the cluster")?;
                    let token = token.context("--token (or BILLDB_TOKEN): an ops token")?;
                    let t = drill::Target::discover(&ep, tls.load()?, token)?;
                    let members: Vec<_> = t.nodes.keys().copied().collect();
                    exec.check_members(&members)?;
                    (t, Box::new(exec))
                }
                "kubectl" => {
                    let exec =
                        drill::kubectl::KubectlExecutor::new(&k8s_namespace, &k8s_statefulset)?;
                    let ep = endpoint.context("--endpoint: any node of the cluster")?;
                    let token = token.context("--token (or BILLDB_TOKEN): an ops token")?;
                    let t = drill::Target::discover(&ep, tls.load()?, token)?;
                    (t, Box::new(exec))
                }
                other => bail!(
                    "INVALID_ARGUMENT: --executor {other:?}: local, compose, ssh, kubectl or manual"
                ),
            };
            let o = drill::RunOpts {
                scenario,
                operator,
                out_dir: out.clone(),
                private_key,
                warmup: secs(warmup_s),
                down: secs(down_s),
                recovery_max: secs(recovery_max_s),
                after: secs(after_s),
                write_deadline: Duration::from_secs(30),
                writers,
                rto: Duration::from_millis(rto_ms),
                rpo_writes,
                record: !no_record,
                show_progress: is_terminal(),
            };
            let r = drill::run(target, exec.as_mut(), &o)?;
            let files = r.write(&out)?;
            let d = &r.data;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"result": d["result"], "sha256": r.sha256,
                        "scenario": d["scenario"], "executor": d["executor"],
                        "workload": {"acknowledged": d["workload"]["acknowledged"],
                            "writes": d["workload"]["writes"]},
                        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                        "measured": d["measured"], "verification": {
                            "lost": d["verification"]["lost"], "duplicated": d["verification"]["duplicated"],
                            "digests_equal": d["verification"]["digests_equal"],
                            "lost_requests": d["verification"]["lost_requests"]},
                        "failures": d["failures"]})
                );
            } else {
                println!(
                    "drill {} {}: write gap {} ms, read gap {} ms, all ready after {} ms; \
                     {} acknowledged, lost {}, duplicated {}, digests equal {}",
                    d["scenario"].as_str().unwrap_or("?"),
                    d["result"].as_str().unwrap_or("?"),
                    d["measured"]["write_gap_ms"],
                    d["measured"]["read_gap_ms"],
                    d["measured"]["health_ms"],
                    d["workload"]["acknowledged"],
                    d["verification"]["lost"],
                    d["verification"]["duplicated"],
                    d["verification"]["digests_equal"]
                );
                for f in d["failures"].as_array().cloned().unwrap_or_default() {
                    println!("FAILED: {}", f.as_str().unwrap_or("?"));
                }
                for f in &files {
                    println!("report: {}", f.display());
                }
            }
            if r.passed() {
                Ok(())
            } else {
                bail!("the drill FAILED (see the report)")
            }
        }
    }
}

/// `billdb cluster step-down`: move leadership off the node at `ep`.
fn step_down(ep: &EndpointArg) -> Result<()> {
    let c = client(ep)?;
    let v = c.status()?;
    let me = v
        .get("node_id")
        .and_then(Value::as_u64)
        .context("status has no node_id")?;
    if v.get("role").and_then(Value::as_str) != Some("leader") {
        println!("ok: node {me} does not lead; nothing to hand over");
        return Ok(());
    }
    let to = billdb_client::admin::successor_from_status(&v, me)
        .with_context(|| format!("node {me} leads and no other voter is reachable"))?;
    c.transfer_leader(to)?;
    let deadline = std::time::Instant::now() + secs(ep.timeout_secs);
    loop {
        let leader = c
            .status()
            .ok()
            .and_then(|s| s.get("leader_id").and_then(Value::as_u64));
        if leader.is_some_and(|l| l != me) {
            println!(
                "ok: node {me} handed leadership to node {}",
                leader.unwrap_or(to)
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("node {me} still leads after asking node {to} to take over");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn done(ep: &EndpointArg, v: &Value, msg: &str) -> Result<()> {
    if ep.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("ok: {msg}");
        match v {
            Value::Null => {}
            Value::Object(m) if m.is_empty() => {}
            other => println!("{}", serde_json::to_string_pretty(other)?),
        }
    }
    Ok(())
}

/// Parses `id=1,raft=H:P,grpc=H:P,http=H:P`.
fn parse_node_spec(s: &str) -> Result<NodeAddrs> {
    let (mut id, mut raft, mut grpc, mut http) = (None, None, None, None);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--node {s:?}: expected key=value, got {part:?}"))?;
        let v = v.trim().to_string();
        match k.trim() {
            "id" => {
                id = Some(
                    v.parse::<NodeId>()
                        .with_context(|| format!("--node {s:?}: bad id"))?,
                )
            }
            "raft" | "raft_addr" => raft = Some(v),
            "grpc" | "grpc_addr" => grpc = Some(v),
            "http" | "http_addr" => http = Some(v),
            other => bail!("--node {s:?}: unknown key {other:?} (expected id, raft, grpc, http)"),
        }
    }
    let missing = |what: &str| anyhow!("--node {s:?}: missing {what}=");
    Ok(NodeAddrs {
        id: id.ok_or_else(|| missing("id"))?,
        raft_addr: raft.ok_or_else(|| missing("raft"))?,
        grpc_addr: grpc.ok_or_else(|| missing("grpc"))?,
        http_addr: http.ok_or_else(|| missing("http"))?,
    })
}

/// Human-readable rendering of `GET /v1/cluster/status`.
fn format_status(v: &Value) -> String {
    let s = |k: &str| match v.get(k) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(x)) => x.clone(),
        Some(x) => x.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "node {}  role {}  term {}  leader {}\n",
        s("node_id"),
        s("role"),
        s("term"),
        s("leader_id")
    ));
    out.push_str(&format!(
        "log: last {}  committed {}  applied {}  snapshot {}  purged {}\n",
        s("last_log_index"),
        s("committed_index"),
        s("applied_index"),
        s("snapshot_index"),
        s("purged_index")
    ));
    out.push_str(&format!(
        "voters: {}  learners: {}\n",
        s("voters"),
        s("learners")
    ));
    if v.get("read_policy").is_some() {
        // Under lease reads, whether this node may serve them right now.
        let lease = match v.get("lease_read").and_then(Value::as_str) {
            Some(why) => format!("  lease now: {why}"),
            None => String::new(),
        };
        out.push_str(&format!("reads: {}{lease}\n", s("read_policy")));
    }
    if let Some(b) = v.get("db_size_bytes").and_then(Value::as_u64) {
        out.push_str(&format!("db size: {}\n", human_bytes(b)));
    }
    if let Some(rep) = v.get("replication").and_then(Value::as_object)
        && !rep.is_empty()
    {
        out.push_str("replication:\n");
        let mut rows: Vec<_> = rep.iter().collect();
        rows.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
        for (id, r) in rows {
            let f = |k: &str| r.get(k).map_or("-".to_string(), |x| x.to_string());
            out.push_str(&format!(
                "  node {id}: matched {}  lag {}\n",
                f("matched_index"),
                f("lag")
            ));
        }
    }
    if let Some(nodes) = v.get("nodes").and_then(Value::as_object)
        && !nodes.is_empty()
    {
        out.push_str("nodes:\n");
        let mut rows: Vec<_> = nodes.iter().collect();
        rows.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
        for (id, n) in rows {
            let f = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            out.push_str(&format!(
                "  {id}: http {}  grpc {}  raft {}\n",
                f("http_addr"),
                f("grpc_addr"),
                f("raft_addr")
            ));
        }
    }
    out
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_local_and_cluster_commands() {
        let cli = Cli::try_parse_from([
            "billdb",
            "local",
            "up",
            "--base-port",
            "9000",
            "--dir",
            "/x",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Local(LocalCmd::Up {
                base_port,
                dir,
                nodes,
                ..
            }) => {
                assert_eq!(base_port, Some(9000));
                assert_eq!(dir.dir, PathBuf::from("/x"));
                assert_eq!(nodes, None);
            }
            _ => panic!("wrong command"),
        }
        let cli = Cli::try_parse_from([
            "billdb",
            "cluster",
            "change-membership",
            "--voters",
            "1,2,3,4,6",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Cluster(ClusterCmd::ChangeMembership { voters, ep }) => {
                assert_eq!(voters, vec![1, 2, 3, 4, 6]);
                // No scheme: https once a CA is given, http otherwise.
                assert_eq!(ep.endpoint, "127.0.0.1:7001");
            }
            _ => panic!("wrong command"),
        }
        assert!(
            Cli::try_parse_from(["billdb", "local", "kill"]).is_err(),
            "N is required"
        );
        assert!(
            Cli::try_parse_from(["billdb", "cluster", "change-membership"]).is_err(),
            "--voters is required"
        );
    }

    #[test]
    fn node_spec_parsing() {
        let n = parse_node_spec("id=2,raft=127.0.0.1:7202,grpc=127.0.0.1:7102,http=127.0.0.1:7002")
            .unwrap();
        assert_eq!(n.id, 2);
        assert_eq!(n.raft_addr, "127.0.0.1:7202");
        assert_eq!(n.grpc_addr, "127.0.0.1:7102");
        assert_eq!(n.http_addr, "127.0.0.1:7002");
        assert!(
            parse_node_spec("id=2,raft=a,grpc=b")
                .unwrap_err()
                .to_string()
                .contains("http")
        );
        assert!(parse_node_spec("id=x,raft=a,grpc=b,http=c").is_err());
        assert!(
            parse_node_spec("id=1,foo=a")
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
    }

    #[test]
    fn status_formatting() {
        let v = serde_json::json!({
            "node_id": 1, "role": "leader", "term": 3, "leader_id": 1,
            "last_log_index": 1000, "committed_index": 999, "applied_index": 998,
            "snapshot_index": null, "voters": [1,2,3], "learners": [],
            "replication": {"10": {"matched_index": 5, "lag": 995}, "2": {"matched_index": 1000, "lag": 0}},
            "nodes": {"1": {"http_addr": "127.0.0.1:7001", "grpc_addr": "g", "raft_addr": "r"}},
            "db_size_bytes": 12345, "read_policy": "lease", "lease_read": "lease_expired"
        });
        let out = format_status(&v);
        assert!(
            out.contains("node 1  role leader  term 3  leader 1"),
            "{out}"
        );
        assert!(
            out.contains("committed 999  applied 998  snapshot -"),
            "{out}"
        );
        assert!(out.contains("voters: [1,2,3]"), "{out}");
        assert!(
            out.contains("reads: lease  lease now: lease_expired"),
            "{out}"
        );
        assert!(out.contains("db size: 12.1 KiB"), "{out}");
        let n2 = out.find("node 2: matched 1000").unwrap();
        let n10 = out.find("node 10: matched 5  lag 995").unwrap();
        assert!(n2 < n10, "numeric order: {out}");
        assert!(
            out.contains("1: http 127.0.0.1:7001  grpc g  raft r"),
            "{out}"
        );
    }
}
