//! The harness: creates a five-node cluster (node N on 127.0.1.N) under a run
//! directory, sets up tariff/accounts/cards, runs the workload while the
//! seeded schedule injects faults, heals, waits for the replicas to converge,
//! reads the final state and runs every checker.
//!
//! May touch: the run directory (cluster files, node data, history.jsonl),
//! the node processes it starts (all SIGKILLed when the harness is dropped,
//! even on panic), its iptables chain (removed on drop), the lossy FUSE
//! mounts under its nodes' data directories in power-loss runs (unmounted
//! on drop), and HTTP to its nodes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use billdb_client::admin::{AdminClient, AdminError};
use billdb_client::local::{self, LocalCluster, NodeState, RaftTimings};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::checker::{self, FinalAccount, FinalRecord, FinalState, ReportLine};
use crate::history::{NemesisEvent, Op, Recorder};
use crate::lossy_fs::{self, LossyMount, PowerLossReport};
use crate::nemesis::{self, Nemesis, Schedule};
use crate::net::{self, Firewall};
use crate::report::{self, RunReport};
use crate::workload::{self, Endpoints, Tokens, Workload, WorkloadConfig};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Run directory (created; must not hold a cluster yet).
    pub dir: PathBuf,
    /// Node N uses ports base+N (HTTP), base+100+N (gRPC), base+200+N (Raft);
    /// base+400 is used by the firewall self-test.
    pub base_port: u16,
    pub seed: u64,
    /// 0: run each nemesis once (in list order); else draw nemeses at random
    /// until this many seconds have passed.
    pub duration_s: u64,
    pub nemeses: Vec<Nemesis>,
    pub node_bin: Option<PathBuf>,
    pub accounts: usize,
    pub counters: usize,
    pub banks: usize,
    pub readers: usize,
    /// Quiet time after each recovery before the next fault.
    pub settle_ms: u64,
    /// Budget of the linearizability search per account.
    pub lin_steps_max: u64,
    /// Nodes run with `raft.read_policy = "lease"`.
    pub lease_reads: bool,
    /// A timed run fails when the write gap's p99 after a leader fault that
    /// a healthy quorum can mask (see `report::GAP_TARGETED`) exceeds this.
    pub gap_target_ms: f64,
    /// The nodes' `raft.snapshot_logs_since_last` and
    /// `raft.logs_to_keep_after_snapshot`.
    pub snapshot_logs_since_last: u64,
    pub logs_to_keep_after_snapshot: u64,
    /// Every fault held for a duration drawn from this range (ms), instead
    /// of each nemesis's own.
    pub fault_ms: Option<(u64, u64)>,
}

impl RunConfig {
    pub fn new(dir: PathBuf, base_port: u16, seed: u64) -> Self {
        RunConfig {
            dir,
            base_port,
            seed,
            duration_s: 0,
            nemeses: nemesis::ALL.to_vec(),
            node_bin: None,
            accounts: 24,
            counters: 3,
            banks: 2,
            readers: 2,
            settle_ms: 1_500,
            lin_steps_max: 5_000_000,
            lease_reads: false,
            gap_target_ms: 1_000.0,
            fault_ms: None,
            snapshot_logs_since_last: SNAPSHOT_LOGS_SINCE_LAST,
            logs_to_keep_after_snapshot: LOGS_TO_KEEP_AFTER_SNAPSHOT,
        }
    }
}

const NODES: u64 = 5;
const TARIFF: &str = "T1";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A live chaos cluster and what the nemeses need to act on it.
pub struct Harness {
    pub cluster: LocalCluster,
    pub rec: Recorder,
    pub endpoints: Arc<Endpoints>,
    members: Vec<u64>,
    next_id: u64,
    firewall: Option<Firewall>,
    /// Retired node ids (wiped, removed and replaced), oldest first.
    retired: Vec<u64>,
    /// Data directories moved onto a tmpfs of their own (`disk-full`);
    /// declared after `cluster`, so they are unmounted after its nodes are
    /// killed.
    pub small_disks: crate::small_disk::SmallDisks,
    /// Each node's data directory on a lossy filesystem (runs with a
    /// power-loss nemesis), over `node<N>/disk`. Declared after `cluster`:
    /// dropped after its nodes are killed.
    lossy: std::collections::BTreeMap<u64, LossyMount>,
}

/// Nodes build a snapshot every this many entries (every ~8 s under the
/// workload), so faults land on snapshot builds, and wiped, re-added and
/// long-stopped nodes catch up by snapshot transfer, not only by log replay
/// (the defaults, 200,000 entries, never snapshot in a run).
/// What `Harness::converge` saw last: each member's digest and applied
/// index, the leader's commit index, and whether they all agree.
#[derive(Debug, Clone)]
pub struct Convergence {
    pub digests: std::collections::BTreeMap<u64, Option<String>>,
    pub applied: std::collections::BTreeMap<u64, Option<u64>>,
    pub committed: Option<u64>,
    pub converged: bool,
}

impl Convergence {
    /// One line: the commit index and each member's applied index and
    /// digest prefix.
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .applied
            .iter()
            .map(|(n, a)| {
                let d = self.digests.get(n).cloned().flatten().unwrap_or_default();
                format!(
                    "node {n} applied {} digest {}",
                    a.map_or("?".to_string(), |a| a.to_string()),
                    d.get(..12).unwrap_or(&d)
                )
            })
            .collect();
        format!(
            "leader committed {}; {}",
            self.committed.map_or("?".to_string(), |c| c.to_string()),
            nodes.join("; ")
        )
    }
}

/// Lines of a lagging node's log put in the report when the replicas do
/// not converge.
const LAGGING_LOG_LINES: usize = 40;

/// Lines of the leader's log searched for ones naming a lagging node.
const LEADER_LOG_SCAN_LINES: usize = 2_000;

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 1_000;
/// Entries kept behind a snapshot: ~20 s of the workload's log, so a
/// follower that a fault of a few seconds left behind catches up from the
/// log, as it would with the default 10,000 under a production load. With
/// 100 kept (under a second), such a follower needed a snapshot, and when
/// the next fault made it part of the only quorum, the write gap grew by the
/// transfer (2.1–2.8 s, seed 9001).
pub const LOGS_TO_KEEP_AFTER_SNAPSHOT: u64 = 3_000;

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Harness {
    /// Creates and starts the cluster, initialises it.
    pub fn start(cfg: &RunConfig, firewall: Option<Firewall>) -> Result<Self> {
        let bin = local::find_node_bin(cfg.node_bin.as_deref())?;
        let cluster = LocalCluster::create_on_hosts(
            &cfg.dir.join("cluster"),
            &bin,
            cfg.base_port,
            NODES as usize,
            RaftTimings {
                read_policy: cfg.lease_reads.then_some(local::ReadPolicy::Lease),
                snapshot_logs_since_last: Some(cfg.snapshot_logs_since_last),
                logs_to_keep_after_snapshot: Some(cfg.logs_to_keep_after_snapshot),
                ..RaftTimings::default()
            },
            Some(net::HOST_PREFIX),
        )?;
        cluster.set_kill_on_drop(true);
        // Every follower re-executes the leader's results and stops at a
        // difference (`raft.verify_results`): a divergence shows as a
        // replica that stops applying, which the checker reports.
        cluster.set_node_env("BILLDB_VERIFY_RESULTS", "true");
        let mut lossy = std::collections::BTreeMap::new();
        if cfg.nemeses.iter().any(|n| n.is_power_loss()) {
            ensure!(
                !cfg.nemeses.contains(&Nemesis::Wipe),
                "the wipe nemesis replaces nodes by fresh ones off the lossy mounts: \
                 not in a run with power losses"
            );
            ensure!(
                !cfg.nemeses.contains(&Nemesis::DiskFull),
                "the disk-full nemesis moves a node's data onto a tmpfs, off its lossy mount: \
                 not in a run with power losses"
            );
            for n in cluster.node_ids() {
                let m = LossyMount::mount(
                    &cluster.node_dir(n).join("disk"),
                    &cluster.data_dir(n),
                    lossy_fs::Limits::default(),
                )
                .with_context(|| format!("node {n}: lossy filesystem for its data directory"))?;
                lossy.insert(n, m);
            }
        }
        // The WAL-fsync fault point (`disk-stall`): off unless a pause file
        // appears in a node's data directory.
        cluster.enable_failpoints();
        cluster.start_all()?;
        cluster.wait_all_healthy(Duration::from_secs(60))?;
        cluster.init()?;
        cluster.wait_leader(Duration::from_secs(60))?;
        let mut h = Harness {
            cluster,
            rec: Recorder::new(),
            endpoints: Arc::new(Endpoints::default()),
            members: (1..=NODES).collect(),
            next_id: NODES + 1,
            firewall,
            retired: Vec::new(),
            small_disks: Default::default(),
            lossy,
        };
        h.publish_members()?;
        Ok(h)
    }

    /// Node `n`'s machine loses power (its process must be dead): its
    /// lossy filesystem drops what it had not fsynced and is mounted again.
    pub fn power_loss(&mut self, n: u64) -> Result<PowerLossReport> {
        let m = self
            .lossy
            .get_mut(&n)
            .with_context(|| format!("node {n}'s data directory is not on a lossy filesystem"))?;
        m.power_loss()
            .with_context(|| format!("power loss on node {n}"))
    }

    pub fn members(&self) -> Vec<u64> {
        self.members.clone()
    }

    fn publish_members(&mut self) -> Result<()> {
        let list = self
            .members
            .iter()
            .map(|&n| Ok((n, self.cluster.http_addr(n)?)))
            .collect::<Result<Vec<_>>>()?;
        self.endpoints.set(list);
        Ok(())
    }

    pub fn firewall(&self) -> Result<&Firewall> {
        self.firewall
            .as_ref()
            .context("partition nemesis without a firewall (needs root and iptables)")
    }

    /// The leader a majority agrees on.
    pub fn leader(&self, timeout: Duration) -> Result<u64> {
        self.cluster.wait_leader(timeout)
    }

    pub(crate) fn admin(&self, n: u64) -> Result<AdminClient> {
        self.admin_with_timeout(n, HTTP_TIMEOUT)
    }

    /// An ops client of node `n` whose calls may take up to `timeout`.
    pub(crate) fn admin_with_timeout(&self, n: u64, timeout: Duration) -> Result<AdminClient> {
        Ok(self
            .cluster
            .http_client(n, timeout)?
            .with_token(Some(self.cluster.token("ops")?)))
    }

    /// Runs an admin call through the running members until one answers
    /// definitely (a refusal other than unavailability ends it too).
    pub fn admin_retry(
        &self,
        f: impl Fn(&AdminClient) -> Result<Value, AdminError>,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no member reachable");
        loop {
            for n in self.members.clone() {
                if self.cluster.node_state(n) != NodeState::Running {
                    continue;
                }
                match f(&self.admin(n)?) {
                    Ok(v) => return Ok(v),
                    Err(e @ AdminError::Api { .. })
                        if !matches!(e.code(), Some("UNAVAILABLE" | "NO_QUORUM" | "INTERNAL"))
                            && !e.code().is_some_and(|c| c.starts_with("HTTP_5")) =>
                    {
                        return Err(anyhow::Error::new(e));
                    }
                    Err(e) => last = format!("node {n}: {e}"),
                }
            }
            ensure!(
                Instant::now() < deadline,
                "admin call failed for {timeout:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Removes all partitions, releases held fsyncs, resumes paused
    /// members, starts stopped ones.
    pub fn heal_all(&self) -> Result<()> {
        if let Some(fw) = &self.firewall {
            fw.heal()?;
        }
        for &n in &self.members {
            self.cluster.release_fsyncs(n)?;
            match self.cluster.node_state(n) {
                NodeState::Paused => self.cluster.resume(n)?,
                NodeState::Stopped => {
                    self.cluster.start(n)?;
                }
                NodeState::Running => {}
            }
        }
        Ok(())
    }

    /// Every member healthy and a leader agreed by a majority.
    pub fn wait_recovered(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for &n in &self.members {
            let left = deadline.saturating_duration_since(Instant::now());
            self.cluster
                .wait_healthy(n, left.max(Duration::from_secs(1)))?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.leader(left.max(Duration::from_secs(1)))?;
        Ok(())
    }

    fn wait_caught_up(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.leader(Duration::from_secs(30))?;
            let committed = self.cluster.status(leader)?["committed_index"]
                .as_u64()
                .unwrap_or(0);
            let applied = self
                .cluster
                .status(n)
                .ok()
                .and_then(|s| s["applied_index"].as_u64())
                .unwrap_or(0);
            if applied + 5 >= committed {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "node {n} did not catch up in {timeout:?} (applied {applied}, committed {committed})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn remove_member(&mut self, n: u64) -> Result<()> {
        match self.admin_retry(|a| a.remove(n), Duration::from_secs(60)) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("UNKNOWN_NODE") => {}
            Err(e) => return Err(e.context(format!("removing node {n}"))),
        }
        self.members.retain(|m| *m != n);
        self.publish_members()
    }

    fn add_member(&mut self, n: u64) -> Result<()> {
        let spec = self.cluster.node(n)?;
        match self.admin_retry(|a| a.add_learner(&spec.addrs()), Duration::from_secs(60)) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("DUPLICATE_NODE") => {}
            Err(e) => return Err(e.context(format!("adding node {n} as learner"))),
        }
        self.wait_caught_up(n, Duration::from_secs(120))?;
        let mut voters = self.members.clone();
        voters.push(n);
        voters.sort_unstable();
        self.admin_retry(|a| a.change_membership(&voters), Duration::from_secs(60))
            .with_context(|| format!("promoting node {n}: voters {voters:?}"))?;
        self.members = voters;
        self.publish_members()
    }

    /// Kills `victim`, wipes its data, removes it from the membership, adds a
    /// fresh node id (as learner, then voter). Returns the fresh id.
    pub fn replace_node(&mut self, victim: u64) -> Result<u64> {
        self.cluster.kill(victim)?;
        self.small_disks.release(victim)?;
        self.cluster.wipe(victim)?;
        self.remove_member(victim)?;
        self.retired.push(victim);
        let fresh = if self.next_id <= local::MAX_NODE_ID {
            let id = self.next_id;
            self.next_id += 1;
            self.cluster.add_node(id)?;
            id
        } else {
            // Long runs: reuse the oldest retired id (removed from the
            // membership long ago, its data deleted) as a fresh node.
            let id = self.retired.remove(0);
            self.cluster.wipe(id)?;
            id
        };
        self.cluster.start(fresh)?;
        self.cluster.wait_healthy(fresh, Duration::from_secs(60))?;
        self.add_member(fresh)?;
        Ok(fresh)
    }

    /// Removes voter `victim` (it keeps running), waits `hold`, adds it back.
    pub fn remove_and_readd(&mut self, victim: u64, hold: Duration) -> Result<()> {
        self.remove_member(victim)?;
        std::thread::sleep(hold);
        self.add_member(victim)
    }

    /// Retries a setup write (same request_id) until acknowledged.
    fn setup_write(&self, path: &str, body: &Value, put: bool) -> Result<Value> {
        let f = |a: &AdminClient| {
            if put {
                a.put_json(path, body)
            } else {
                a.post(path, body)
            }
        };
        self.admin_retry(f, Duration::from_secs(60))
            .with_context(|| format!("setup {path}"))
    }

    /// Tariff, accounts and their cards.
    pub fn setup_data(&self, accounts: &[String]) -> Result<()> {
        self.setup_write(
            &format!("/v1/tariffs/{TARIFF}"),
            &json!({"request_id": "chaos-tariff", "kind": "flat", "price": "0.50",
                    "effective_from": "2000-01-01T00:00:00Z"}),
            true,
        )?;
        for a in accounts {
            self.setup_write(
                "/v1/accounts",
                &json!({"request_id": format!("open-{a}"), "account_id": a, "name": format!("Chaos {a}"),
                        "branch": "B01", "utility": "electricity", "tariff_id": TARIFF}),
                false,
            )?;
            self.setup_write(
                "/v1/cards",
                &json!({"request_id": format!("card-{a}"), "account_id": a, "card_no": workload::card_of(a)}),
                false,
            )?;
        }
        Ok(())
    }

    /// Waits until every member has applied the leader's commit index and all
    /// digests agree; returns the digests (as last read, converged or not).
    pub fn converge(&self, timeout: Duration) -> Convergence {
        let deadline = Instant::now() + timeout;
        loop {
            let committed = self
                .leader(Duration::from_secs(10))
                .ok()
                .and_then(|l| self.cluster.status(l).ok())
                .and_then(|s| s["committed_index"].as_u64());
            let mut digests = std::collections::BTreeMap::new();
            let mut applied_by = std::collections::BTreeMap::new();
            let mut applied_ok = committed.is_some();
            for &n in &self.members {
                let v = self
                    .admin(n)
                    .ok()
                    .and_then(|a| a.get("/v1/cluster/digest").ok());
                let applied = v.as_ref().and_then(|v| v["applied_index"].as_u64());
                if applied < committed {
                    applied_ok = false;
                }
                applied_by.insert(n, applied);
                digests.insert(n, v.and_then(|v| v["digest"].as_str().map(str::to_string)));
            }
            let distinct: BTreeSet<&Option<String>> = digests.values().collect();
            let converged = applied_ok && distinct.len() == 1 && !distinct.contains(&None);
            if converged || Instant::now() >= deadline {
                return Convergence {
                    digests,
                    applied: applied_by,
                    committed,
                    converged,
                };
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What the leader knows of node `n`: its replication progress and
    /// reachability from the leader's status, and the leader's last log
    /// lines that name `n` as a target (for a report on a node that did
    /// not catch up).
    pub fn leader_view_of(&self, n: u64) -> String {
        let Ok(l) = self.leader(Duration::from_secs(10)) else {
            return format!("no leader to ask about node {n}");
        };
        let status = self.cluster.status(l).ok();
        let key = n.to_string();
        let field = |name: &str| {
            status
                .as_ref()
                .map(|s| s[name][&key].to_string())
                .unwrap_or_else(|| "?".to_string())
        };
        let tail = self.cluster.log_tail(l, LEADER_LOG_SCAN_LINES);
        let names_n = |line: &str| {
            let plain = strip_ansi(line);
            [format!("target_node={n}"), format!("target={n}")]
                .iter()
                .any(|p| plain.contains(p.as_str()))
        };
        let lines: Vec<&str> = tail.lines().filter(|l| names_n(l)).collect();
        format!(
            "leader {l} on node {n}: replication {} peer {}; its last log lines naming node {n}:\n{}",
            field("replication"),
            field("peers"),
            lines[lines.len().saturating_sub(LAGGING_LOG_LINES)..].join("\n")
        )
    }

    fn read_retry(&self, path: &str) -> Result<Value> {
        self.admin_retry(|a| a.get(path), Duration::from_secs(60))
            .with_context(|| format!("reading {path}"))
    }

    /// Reads every account with all its records, and the monthly reports of
    /// every month the records fall in.
    pub fn read_final(&self, accounts: &[String]) -> Result<FinalState> {
        let mut fin = FinalState::default();
        let mut months = BTreeSet::new();
        for a in accounts {
            let acct = self.read_retry(&format!("/v1/accounts/{a}"))?;
            let balance: Decimal = acct["balance"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("account {a}: no balance in {acct}"))?;
            let last_seq = acct["last_seq"]
                .as_u64()
                .with_context(|| format!("account {a}: no last_seq"))?;
            let mut records = Vec::new();
            let mut token: Option<String> = None;
            for _page in 0..10_000 {
                let mut path = format!("/v1/accounts/{a}/records?segment=all&limit=500&order=asc");
                if let Some(t) = &token {
                    path.push_str(&format!("&page_token={t}"));
                }
                let page = self.read_retry(&path)?;
                for r in page["records"].as_array().into_iter().flatten() {
                    let rec: FinalRecord = serde_json::from_value(r.clone())
                        .with_context(|| format!("account {a}: record {r}"))?;
                    months.insert(checker::month_of(rec.ts_ms));
                    records.push(rec);
                }
                token = page["next_page_token"].as_str().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            fin.accounts.insert(
                a.clone(),
                FinalAccount {
                    balance,
                    last_seq,
                    records,
                },
            );
        }
        for m in months {
            let rep = self.read_retry(&format!("/v1/reports/monthly?month={m}&group_by=kind"))?;
            let lines = rep["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    Ok(ReportLine {
                        kind: l["kind"].as_str().context("report line kind")?.to_string(),
                        count: l["count"].as_u64().context("report line count")?,
                        amount: l["amount"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .context("report line amount")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            fin.reports.insert(m, lines);
        }
        Ok(fin)
    }

    /// Lines of any node log that show a panic.
    pub fn node_panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.cluster.node_ids() {
            if let Ok(text) = std::fs::read_to_string(self.cluster.log_path(n)) {
                for line in text.lines().filter(|l| l.contains("panicked at")) {
                    out.push(format!(
                        "node {n}: {}",
                        line.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        out
    }
}

/// Writes the history as JSON lines (one op per line) to `path`.
pub fn write_history(path: &Path, ops: &[Op], events: &[NemesisEvent]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for e in events {
        serde_json::to_writer(&mut f, &json!({"nemesis": e}))?;
        f.write_all(b"\n")?;
    }
    for op in ops {
        serde_json::to_writer(&mut f, op)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

/// Runs a whole chaos run and returns its report (checkers included). Errors
/// only when the harness itself cannot work (no binary, ports taken, no
/// root for partitions, setup failed); faults the cluster mishandles show up
/// as failures in the report.
/// Set (by the binary's SIGINT/SIGTERM handler) to end a run early: no new
/// fault starts, and the run heals, stops its workload, checks what it
/// recorded and cleans up (nodes stopped, iptables chain removed) as at the
/// end of a full run.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

pub fn run(cfg: &RunConfig, progress: &mut dyn FnMut(&str)) -> Result<RunReport> {
    ensure!(cfg.accounts > 0, "need at least one account");
    ensure!(
        u32::from(cfg.base_port) + 400 <= u32::from(u16::MAX),
        "base port too high"
    );
    let firewall = if cfg.nemeses.iter().any(|n| n.is_partition()) {
        let fw = net::new_firewall(cfg.base_port)?;
        fw.self_test(cfg.base_port + 400)
            .context("iptables self-test (DROP must stop loopback TCP between 127.0.1.x)")?;
        progress(&format!(
            "firewall: chain {} ready; self-test passed (DROP stops loopback TCP)",
            fw.chain()
        ));
        Some(fw)
    } else {
        None
    };
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let started_unix_ms = now_unix_ms();
    let mut h = Harness::start(cfg, firewall)?;
    progress(&format!(
        "cluster up under {} (nodes on {}1..5, base port {})",
        cfg.dir.display(),
        net::HOST_PREFIX,
        cfg.base_port
    ));
    let accounts: Vec<String> = (1..=cfg.accounts).map(|i| format!("CH{i:02}")).collect();
    h.setup_data(&accounts)?;
    let tokens = Tokens {
        counter: h.cluster.token("counter")?,
        bank: h.cluster.token("bank")?,
        auditor: h.cluster.token("auditor")?,
    };
    let wcfg = WorkloadConfig {
        accounts: accounts.clone(),
        counters: cfg.counters,
        banks: cfg.banks,
        readers: cfg.readers,
        request_timeout_ms: 5_000,
        retry_budget_ms: 20_000,
        writer_think_ms: 10,
        reader_think_ms: 20,
        seed: cfg.seed,
        tls: h.cluster.client_tls()?,
    };
    let month = checker::month_of(now_unix_ms());
    let run_start = Instant::now();
    let workload = Workload::start(wcfg, h.endpoints.clone(), h.rec.clone(), tokens, month);
    std::thread::sleep(Duration::from_secs(2));

    let once = cfg.duration_s == 0;
    let deadline = run_start + Duration::from_secs(cfg.duration_s);
    let mut events = Vec::new();
    for step in Schedule::new(cfg.seed, cfg.nemeses.clone(), once).with_fault_ms(cfg.fault_ms) {
        if !once && Instant::now() >= deadline {
            break;
        }
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            progress(&format!(
                "[{:>6.1}s] interrupted: healing, stopping the workload, checking what was recorded",
                run_start.elapsed().as_secs_f64()
            ));
            break;
        }
        let ev = nemesis::execute(&mut h, &step);
        progress(&format!(
            "[{:>6.1}s] {:<18} {}{}",
            ev.start_ns as f64 / 1e9,
            ev.nemesis,
            ev.detail,
            ev.error
                .as_deref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        ));
        let failed = ev.error.is_some();
        events.push(ev);
        if failed {
            // Make sure the cluster is whole before going on.
            h.heal_all()?;
            h.wait_recovered(Duration::from_secs(120))?;
        }
        std::thread::sleep(Duration::from_millis(cfg.settle_ms));
    }
    std::thread::sleep(Duration::from_secs(1));
    workload.stop_and_join();
    h.heal_all()?;
    h.wait_recovered(Duration::from_secs(120))?;
    let conv = h.converge(Duration::from_secs(120));
    let converged = conv.converged;
    progress(&format!(
        "workload stopped; replicas {}",
        if converged {
            "converged"
        } else {
            "did NOT converge"
        }
    ));
    let mut fin = h.read_final(&accounts)?;
    fin.digests = conv.digests.clone();
    let ops = h.rec.ops();
    write_history(&cfg.dir.join("history.jsonl"), &ops, &events)?;
    let mut extra = Vec::new();
    if !converged {
        extra.push(format!(
            "replicas did not converge within 120 s after healing: {}",
            conv.describe()
        ));
        // What each lagging node was doing, for the report.
        for (n, applied) in &conv.applied {
            if *applied < conv.committed {
                extra.push(format!(
                    "node {n} (applied {applied:?}), last log lines:\n{}",
                    h.cluster.log_tail(*n, LAGGING_LOG_LINES)
                ));
                extra.push(h.leader_view_of(*n));
            }
        }
    }
    extra.extend(h.node_panics());
    let elapsed_s = run_start.elapsed().as_secs_f64();
    let rep = report::build(cfg, started_unix_ms, elapsed_s, &ops, &events, &fin, extra);
    Ok(rep)
}
