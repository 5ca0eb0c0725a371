//! `billdb drill`: failover drills on a running cluster, with evidence.
//!
//! A drill runs a workload of real billing operations on accounts of its
//! own (branch `DRILL`, bank code `DRILL`, tariff `DRILL-FLAT`), does a
//! scenario's faults through an [`Executor`] (`local`: a `billdb local`
//! directory; `compose`: a Docker Compose project (`compose.rs`); `ssh`:
//! servers from an inventory, systemctl and iptables (`ssh.rs`); `kubectl`:
//! the StatefulSet's pods and a NetworkPolicy (`kubectl.rs`); `manual`:
//! an operator told what to do on which server, who confirms on stdin),
//! measures what it observes (write and read gaps,
//! time to every node ready, a per-second timeline), then heals and
//! verifies: every acknowledged write re-read on every node, none
//! duplicated, balances equal to their records, state digests equal. The
//! report (`report.rs`) is signed with the operator's Ed25519 key; its
//! summary is written into the cluster (`POST /v1/drills`).

pub mod compose;
pub mod kubectl;
pub mod rehearsal;
pub mod report;
pub mod ssh;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admin::{AdminClient, AdminError};
use crate::local::{LocalCluster, NodeId};
use crate::tls::ClientTls;

/// The scenarios `billdb drill run` knows.
pub const SCENARIOS: &[&str] = &[
    "leader-kill",
    "two-down",
    "leader-isolated",
    "minority-partition",
    "rolling-restart",
    "full-power-loss",
    "node-replace",
];

/// Branch, bank code and tariff of the drill's accounts and payments:
/// reports grouped by branch keep them apart (`DRILL`).
pub const DRILL_BRANCH: &str = billdb_api::DRILL_BRANCH;
pub const DRILL_BANK: &str = "DRILL";
pub const DRILL_TARIFF: &str = "DRILL-FLAT";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---- the cluster as the drill reaches it -----------------------------------

/// The members' HTTP addresses, the CA and the ops token.
#[derive(Clone)]
pub struct Target {
    pub nodes: BTreeMap<NodeId, String>,
    pub tls: Option<ClientTls>,
    pub token: String,
}

impl Target {
    pub fn client(&self, n: NodeId, timeout: Duration) -> Result<AdminClient> {
        let addr = self
            .nodes
            .get(&n)
            .with_context(|| format!("node {n} is not a member"))?;
        Ok(AdminClient::with_tls(addr, timeout, self.tls.as_ref())
            .with_token(Some(self.token.clone())))
    }

    /// The members of a local cluster as its running nodes know them (a
    /// node the directory still describes may have been removed, e.g. by a
    /// node-replace drill).
    pub fn from_local(c: &LocalCluster) -> Result<Target> {
        let (tls, token) = (c.client_tls()?, c.token("ops")?);
        let mut last = None;
        for n in c.node_ids() {
            match Target::discover(&c.http_addr(n)?, tls.clone(), token.clone()) {
                Ok(t) => return Ok(t),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the local cluster has no nodes")))
            .context("no node of the local cluster answers: is it up (billdb local up)?")
    }

    /// The members as the node at `endpoint` knows them.
    pub fn discover(endpoint: &str, tls: Option<ClientTls>, token: String) -> Result<Target> {
        let c = AdminClient::with_tls(endpoint, Duration::from_secs(5), tls.as_ref())
            .with_token(Some(token.clone()));
        let st = c
            .status()
            .with_context(|| format!("reading the status of {endpoint}"))?;
        let mut nodes = BTreeMap::new();
        if let Some(m) = st.get("nodes").and_then(Value::as_object) {
            for (id, info) in m {
                let id: NodeId = id.parse().context("status: a node id")?;
                let addr = info
                    .get("http_addr")
                    .and_then(Value::as_str)
                    .with_context(|| format!("status: node {id} has no http_addr"))?;
                nodes.insert(id, addr.to_string());
            }
        }
        if nodes.is_empty() {
            bail!("{endpoint} names no members: is the cluster initialised?");
        }
        Ok(Target { nodes, tls, token })
    }

    pub fn status(&self, n: NodeId) -> Option<Value> {
        self.client(n, Duration::from_millis(800))
            .ok()?
            .status()
            .ok()
    }

    /// The leader all answering members agree on.
    pub fn leader(&self) -> Option<NodeId> {
        let mut seen = BTreeSet::new();
        for n in self.nodes.keys() {
            if let Some(s) = self.status(*n)
                && let Some(l) = s.get("leader_id").and_then(Value::as_u64)
            {
                seen.insert(l);
            }
        }
        (seen.len() == 1).then(|| seen.into_iter().next()).flatten()
    }

    pub fn wait_leader(&self, within: Duration) -> Result<NodeId> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ready(&self, n: NodeId) -> bool {
        self.client(n, Duration::from_millis(800))
            .and_then(|c| Ok(c.readyz()?))
            .unwrap_or(false)
    }
}

// ---- executors ----------------------------------------------------------------

/// Who does the faults.
pub trait Executor {
    fn name(&self) -> &'static str;
    /// Abruptly: power off, SIGKILL.
    fn kill(&mut self, n: NodeId) -> Result<()>;
    /// Gracefully: SIGTERM, `systemctl stop`.
    fn stop(&mut self, n: NodeId) -> Result<()>;
    fn start(&mut self, n: NodeId) -> Result<()>;
    /// Called when the executor is about to act; for the manual one, the
    /// time its prompt went out.
    fn take_prompt_time(&mut self) -> Option<Instant> {
        None
    }
    /// A fresh node with id `new` in place of `old`, whose disk is lost:
    /// `old`'s data gone, `new` running (not yet a member). Its addresses.
    fn provision(&mut self, old: NodeId, new: NodeId) -> Result<crate::admin::NodeAddrs> {
        let _ = (old, new);
        bail!(
            "node-replace: the {} executor cannot provision a node",
            self.name()
        )
    }
    /// Cut the network between `isolated` and `rest`, both ways, as a
    /// failed switch port or a pulled cable: the processes keep running.
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        let _ = (isolated, rest);
        bail!(
            "partition scenarios: the {} executor cannot cut a network",
            self.name()
        )
    }
    /// Reconnect everything [`partition`](Self::partition) cut.
    fn heal_network(&mut self) -> Result<()> {
        Ok(())
    }
    /// Before anything is done to the cluster: refuse a scenario this
    /// executor cannot carry out here, and get ready for it.
    fn prepare(&mut self, scenario: &str) -> Result<()> {
        let _ = scenario;
        Ok(())
    }
}

/// Scenarios that cut the network rather than stop processes.
pub fn is_partition(scenario: &str) -> bool {
    matches!(scenario, "leader-isolated" | "minority-partition")
}

/// A `billdb local` directory. Partitions need a cluster whose nodes have
/// their own loopback addresses (`billdb local up --host-prefix`) and root:
/// links are cut with iptables rules in a chain of the drill's own
/// (`BDBDRILL<base port>`), removed when the drill ends.
pub struct LocalExecutor {
    pub cluster: LocalCluster,
    firewall: Option<crate::local::firewall::Firewall>,
}

impl LocalExecutor {
    pub fn new(cluster: LocalCluster) -> Self {
        LocalExecutor {
            cluster,
            firewall: None,
        }
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }
    fn kill(&mut self, n: NodeId) -> Result<()> {
        self.cluster.kill(n)?;
        Ok(())
    }
    fn stop(&mut self, n: NodeId) -> Result<()> {
        self.cluster.stop(n)?;
        Ok(())
    }
    fn start(&mut self, n: NodeId) -> Result<()> {
        self.cluster.start(n)?;
        Ok(())
    }
    fn provision(&mut self, old: NodeId, new: NodeId) -> Result<crate::admin::NodeAddrs> {
        self.cluster.wipe(old)?;
        let spec = self.cluster.add_node(new)?;
        self.cluster.start(new)?;
        self.cluster.wait_healthy(new, Duration::from_secs(60))?;
        Ok(spec.addrs())
    }
    fn prepare(&mut self, scenario: &str) -> Result<()> {
        if is_partition(scenario) {
            self.firewall()?;
        }
        Ok(())
    }
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        self.firewall()?.cut_between(isolated, rest)
    }
    fn heal_network(&mut self) -> Result<()> {
        match &self.firewall {
            Some(fw) => fw.heal(),
            None => Ok(()),
        }
    }
}

impl LocalExecutor {
    /// The drill's iptables chain, made (and self-tested) on first use.
    fn firewall(&mut self) -> Result<&crate::local::firewall::Firewall> {
        use crate::local::firewall::Firewall;
        if self.firewall.is_none() {
            let spec = self.cluster.spec();
            let prefix = spec.host_prefix.clone().context(
                "a partition needs nodes on their own loopback addresses: this cluster's \
                 nodes share 127.0.0.1; make one with `billdb local up --host-prefix \
                 127.0.2.` (and run the drill as root: links are cut with iptables)",
            )?;
            let fw = Firewall::new(&format!("BDBDRILL{}", spec.base_port), &prefix)?;
            fw.self_test(spec.base_port.saturating_add(400))
                .context("iptables self-test: a DROP rule must stop loopback TCP")?;
            self.firewall = Some(fw);
        }
        self.firewall.as_ref().context("firewall")
    }
}

/// The operator does it: told exactly what, on which server, confirms on
/// stdin (`done`; anything else stops the drill).
pub struct ManualExecutor {
    pub servers: BTreeMap<NodeId, String>,
    pub input: Box<dyn BufRead + Send>,
    pub prompted_at: Option<Instant>,
}

impl ManualExecutor {
    fn ask(&mut self, what: String) -> Result<()> {
        use std::io::Write;
        self.prompted_at = Some(Instant::now());
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACTION: {what}")?;
        writeln!(
            out,
            "ACTION: type `done` and Enter once it is done (anything else aborts the drill)"
        )?;
        out.flush()?;
        drop(out);
        let mut line = String::new();
        let n = self.input.read_line(&mut line)?;
        if n == 0 {
            bail!("no confirmation: standard input closed");
        }
        if line.trim() != "done" {
            bail!("drill aborted by the operator ({:?})", line.trim());
        }
        Ok(())
    }
    fn server(&self, n: NodeId) -> String {
        match self.servers.get(&n) {
            Some(a) => format!("server {n} (billdb-node {n}, HTTP {a})"),
            None => format!("server {n}"),
        }
    }
}

impl Executor for ManualExecutor {
    fn name(&self) -> &'static str {
        "manual"
    }
    fn kill(&mut self, n: NodeId) -> Result<()> {
        let s = self.server(n);
        self.ask(format!(
            "power off {s} now: pull its power, or `systemctl kill -s KILL billdb-node` on it"
        ))
    }
    fn stop(&mut self, n: NodeId) -> Result<()> {
        let s = self.server(n);
        self.ask(format!(
            "stop billdb-node on {s} now, gracefully: `systemctl stop billdb-node`"
        ))
    }
    fn start(&mut self, n: NodeId) -> Result<()> {
        let s = self.server(n);
        self.ask(format!(
            "power on {s} and start billdb-node on it now: `systemctl start billdb-node`"
        ))
    }
    fn take_prompt_time(&mut self) -> Option<Instant> {
        self.prompted_at.take()
    }
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        let names = |ns: &[NodeId]| {
            ns.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (i, r) = (names(isolated), names(rest));
        self.ask(format!(
            "cut server(s) {i} off from server(s) {r} now, both ways, leaving every process \
             running: unplug their cluster network cable or shut their switch port, or on each \
             of {i} drop the traffic from and to {r} with a firewall rule (e.g. `iptables -I \
             INPUT -s <address of each of {r}> -j DROP` and the same in OUTPUT with -d)"
        ))
    }
    fn heal_network(&mut self) -> Result<()> {
        self.ask(
            "reconnect every server cut off for this drill now: plug the cable back in, open \
             the switch port, or delete the firewall rules added for it"
                .to_string(),
        )
    }
}

// ---- what the drill observes --------------------------------------------------

/// One write the workload sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRecord {
    pub request_id: String,
    pub kind: String,
    pub account_id: String,
    /// `acknowledged`, `refused` (a definite refusal: nothing written) or
    /// `unknown` (no answer before the write deadline).
    pub state: String,
    pub invoked_ms: u64,
    pub answered_ms: Option<u64>,
    /// Start of the attempt that was acknowledged (ms since drill start).
    pub acked_attempt_ms: Option<u64>,
    pub attempts: u32,
    /// The balance change the acknowledgement reported.
    pub balance_effect: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Second {
    pub writes_ok: u64,
    pub reads_ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Each node's role/term/commit/applied at this second, or `down`.
    pub nodes: BTreeMap<NodeId, Value>,
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    writes: Mutex<Vec<WriteRecord>>,
    reads: Mutex<Vec<(u64, u64, bool)>>, // (attempt start ms, end ms, ok)
    seconds: Mutex<BTreeMap<u64, Second>>,
    error_times: Mutex<Vec<u64>>,
    ops_total: AtomicU64,
    phase: Mutex<String>,
    /// The terminal's progress line (hidden when stderr is not a terminal:
    /// phase changes are then plain lines on stderr).
    bar: Option<indicatif::ProgressBar>,
}

impl Shared {
    fn ms(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    fn ms_of(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.t0).as_millis()).unwrap_or(u64::MAX)
    }
    fn count_ok(&self, write: bool) {
        let s = self.ms() / 1000;
        let mut m = lock(&self.seconds);
        let e = m.entry(s).or_default();
        if write {
            e.writes_ok += 1;
        } else {
            e.reads_ok += 1;
        }
        self.ops_total.fetch_add(1, Ordering::Relaxed);
    }
    fn count_err(&self, code: &str) {
        let now = self.ms();
        lock(&self.error_times).push(now);
        *lock(&self.seconds)
            .entry(now / 1000)
            .or_default()
            .errors
            .entry(code.to_string())
            .or_default() += 1;
    }
    fn set_phase(&self, p: &str) {
        *lock(&self.phase) = p.to_string();
        let line = format!("[{:>6.1}s] phase: {p}", self.t0.elapsed().as_secs_f64());
        match &self.bar {
            Some(b) if !b.is_finished() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

fn error_code(e: &AdminError) -> String {
    match e {
        AdminError::Api { code, .. } => code.clone(),
        AdminError::Transport { .. } => "UNREACHABLE".into(),
        AdminError::Decode { .. } => "BAD_ANSWER".into(),
    }
}

/// A refusal that is an answer (nothing written, retrying cannot help).
fn definite(e: &AdminError) -> bool {
    match e.code() {
        None => false,
        // Transient: the node could not decide now (no leader or quorum
        // yet, still starting, a storage fault it repairs); any other code
        // is the cluster's answer.
        Some(c) => {
            !matches!(
                c,
                "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "NO_QUORUM" | "NOT_INITIALIZED" | "INTERNAL"
            ) && !c.starts_with("HTTP_")
        }
    }
}

// ---- options and the run ----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct RunOpts {
    pub scenario: String,
    pub operator: String,
    pub out_dir: PathBuf,
    pub private_key: PathBuf,
    /// Load before the first fault.
    pub warmup: Duration,
    /// How long a killed node stays down after writes recovered (at least).
    pub down: Duration,
    /// Longest wait for writes to recover after a fault.
    pub recovery_max: Duration,
    /// Load after every node is ready again.
    pub after: Duration,
    /// Longest a write is retried (same request_id) before it is `unknown`.
    pub write_deadline: Duration,
    pub writers: usize,
    pub rto: Duration,
    pub rpo_writes: u64,
    /// Write the summary into the cluster.
    pub record: bool,
    pub show_progress: bool,
}

/// One fault or heal action, as done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Action {
    pub t_ms: u64,
    pub action: String,
    pub node: NodeId,
    /// A fault whose write gap is measured from `t_ms`.
    pub fault: bool,
    /// `partition`: the nodes cut off (`node` is the first of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated: Vec<NodeId>,
}

pub fn run(mut target: Target, exec: &mut dyn Executor, o: &RunOpts) -> Result<report::Report> {
    if !SCENARIOS.contains(&o.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}: one of {}",
            o.scenario,
            SCENARIOS.join(", ")
        );
    }
    if o.scenario == "node-replace" && !matches!(exec.name(), "local" | "compose") {
        bail!("node-replace needs the local or compose executor (a fresh node is provisioned)");
    }
    exec.prepare(&o.scenario)
        .with_context(|| format!("{} with the {} executor", o.scenario, exec.name()))?;
    let started_ms = unix_ms();
    let drill_id = format!("D{started_ms}");
    let sh = Arc::new(Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        writes: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
        seconds: Mutex::new(BTreeMap::new()),
        error_times: Mutex::new(Vec::new()),
        ops_total: AtomicU64::new(0),
        phase: Mutex::new(String::new()),
        bar: o.show_progress.then(indicatif::ProgressBar::new_spinner),
    });
    sh.set_phase("setup");
    let leader0 = target.wait_leader(Duration::from_secs(30))?;
    let st0 = target
        .status(leader0)
        .context("the leader's status before the drill")?;
    let members: Vec<Value> = target
        .nodes
        .iter()
        .map(|(id, a)| json!({"id": id, "http_addr": a, "role_before": if *id == leader0 {"leader"} else {"follower"}}))
        .collect();
    for n in target.nodes.keys() {
        if !target.ready(*n) {
            bail!("node {n} is not ready: a drill starts from a healthy cluster");
        }
    }
    let accounts = setup(&target, &drill_id, o.writers)?;

    // Workload, sampler, progress.
    let mut handles = Vec::new();
    for (k, (account, card)) in accounts.iter().enumerate() {
        let (t, s, a, c, d) = (
            target.clone(),
            sh.clone(),
            account.clone(),
            card.clone(),
            drill_id.clone(),
        );
        let deadline = o.write_deadline;
        handles.push(std::thread::spawn(move || {
            writer(&t, &s, &d, k, &a, &c, deadline)
        }));
    }
    {
        let (t, s, acc) = (target.clone(), sh.clone(), accounts.clone());
        handles.push(std::thread::spawn(move || reader(&t, &s, &acc)));
    }
    {
        let (t, s) = (target.clone(), sh.clone());
        handles.push(std::thread::spawn(move || sampler(&t, &s)));
    }
    let progress = {
        let s = sh.clone();
        std::thread::spawn(move || progress_loop(&s))
    };

    sh.set_phase("warmup");
    std::thread::sleep(o.warmup);
    let mut actions: Vec<Action> = Vec::new();
    let mut replaced = Value::Null;
    let faults = scenario(&mut target, exec, o, &sh, &mut actions, &mut replaced);
    let heal = heal_all(exec, &sh, &mut actions);
    let first_fault_ms = actions.iter().find(|a| a.fault).map(|a| a.t_ms);
    // Every node ready: the time from the first fault.
    let health_at = wait_all_ready(&target, Duration::from_secs(120));
    let health_ms = match (first_fault_ms, health_at) {
        (Some(f), Some(t)) => Some(sh.ms_of(t).saturating_sub(f)),
        _ => None,
    };
    sh.set_phase("after");
    std::thread::sleep(o.after);
    sh.stop.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }
    let _ = progress.join();

    sh.set_phase("verify");
    let writes = lock(&sh.writes).clone();
    let reads = lock(&sh.reads).clone();
    let verification = verify(&target, &writes, &accounts);
    let seconds = lock(&sh.seconds).clone();

    // Measures.
    let gaps: Vec<Value> = actions
        .iter()
        .filter(|a| a.fault)
        .map(|a| {
            let w = gap_after(a.t_ms, writes.iter().filter_map(|w| Some((w.acked_attempt_ms?, w.answered_ms?))));
            let r = gap_after(a.t_ms, reads.iter().filter(|r| r.2).map(|r| (r.0, r.1)));
            json!({"t_ms": a.t_ms, "action": a.action, "node": a.node, "write_gap_ms": w, "read_gap_ms": r})
        })
        .collect();
    let max_of = |k: &str| -> Option<u64> {
        let mut m = Some(0u64);
        for g in &gaps {
            m = match (m, g[k].as_u64()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        if gaps.is_empty() { None } else { m }
    };
    let write_gap = max_of("write_gap_ms");
    let read_gap = max_of("read_gap_ms");
    let count = |s: &str| writes.iter().filter(|w| w.state == s).count() as u64;
    let acknowledged = count("acknowledged");

    let mut failures = Vec::new();
    if let Err(e) = &faults {
        failures.push(format!("scenario: {e:#}"));
    }
    if let Err(e) = &heal {
        failures.push(format!("heal: {e:#}"));
    }
    // Unknown when the verification could not finish (its error is listed).
    let lost = verification["lost"].as_u64();
    let duplicated = verification["duplicated"].as_u64();
    let digests_equal = verification["digests_equal"].as_bool().unwrap_or(false);
    if let Some(lost) = lost.filter(|l| *l > o.rpo_writes) {
        failures.push(format!(
            "RPO: {lost} acknowledged writes lost (objective: at most {})",
            o.rpo_writes
        ));
    }
    if let Some(list) = verification["lost_requests"].as_array() {
        for l in list.iter().take(20) {
            failures.push(format!(
                "lost: acknowledged request {} missing on nodes {}",
                l["request_id"].as_str().unwrap_or("?"),
                l["missing_on"]
            ));
        }
    }
    if let Some(d) = duplicated.filter(|d| *d > 0) {
        failures.push(format!("{d} writes recorded more than once"));
    }
    if !digests_equal {
        failures.push("state digests differ between replicas".into());
    }
    if verification["balances_ok"].as_bool() != Some(true) {
        failures.push("an account balance differs from its records or acknowledged writes".into());
    }
    if let Some(e) = verification["error"].as_str() {
        failures.push(format!("verification: {e}"));
    }
    let rto_ms = u64::try_from(o.rto.as_millis()).unwrap_or(u64::MAX);
    match write_gap {
        Some(g) if g <= rto_ms => {}
        Some(g) => failures.push(format!(
            "RTO: write gap {g} ms over the objective {rto_ms} ms"
        )),
        None => failures.push("RTO: writes did not recover after a fault".into()),
    }
    if health_ms.is_none() {
        failures.push("not every node was ready again within 120 s".into());
    }
    if count("unknown") > 0 {
        failures.push(format!(
            "{} writes got no answer within the write deadline",
            count("unknown")
        ));
    }
    if acknowledged == 0 {
        failures.push("no write was acknowledged".into());
    }
    let result = if failures.is_empty() {
        "PASS"
    } else {
        "FAILED"
    };
    let finished_ms = unix_ms();
    // Every second of the drill, those without any answer too.
    let last_s = seconds.keys().next_back().copied().unwrap_or(0);
    let empty = Second::default();
    let timeline: Vec<Value> = (0..=last_s)
        .map(|s| {
            let x = seconds.get(&s).unwrap_or(&empty);
            json!({"t_s": s, "writes_ok": x.writes_ok, "reads_ok": x.reads_ok, "errors": x.errors, "nodes": x.nodes})
        })
        .collect();
    let data = json!({
        "format": report::FORMAT,
        "drill_id": drill_id,
        "scenario": o.scenario,
        "executor": exec.name(),
        "operator": o.operator,
        "started_ms": started_ms,
        "finished_ms": finished_ms,
        "started_utc": report::utc(started_ms),
        "finished_utc": report::utc(finished_ms),
        "tool_version": env!("CARGO_PKG_VERSION"),
        "cluster": {
            "version": st0.get("version").cloned().unwrap_or(Value::Null),
            "leader_before": leader0,
            "term_before": st0.get("term").cloned().unwrap_or(Value::Null),
            "members": members,
            "members_after": target.nodes.iter().map(|(id, a)| json!({"id": id, "http_addr": a})).collect::<Vec<_>>(),
            "replaced": replaced,
        },
        "objectives": {"rto_write_gap_ms": rto_ms, "rpo_lost_writes": o.rpo_writes},
        "actions": actions,
        "measured": {
            "write_gap_ms": write_gap,
            "read_gap_ms": read_gap,
            "health_ms": health_ms,
            "per_fault": gaps,
            "rto_pass": write_gap.is_some_and(|g| g <= rto_ms),
            "rpo_pass": lost.is_some_and(|l| l <= o.rpo_writes),
        },
        "workload": {
            "accounts": accounts.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(),
            "branch": DRILL_BRANCH,
            "bank_code": DRILL_BANK,
            "writes": writes.len(),
            "acknowledged": acknowledged,
            "refused": count("refused"),
            "unknown": count("unknown"),
            "reads_ok": reads.iter().filter(|r| r.2).count(),
            "reads_failed": reads.iter().filter(|r| !r.2).count(),
        },
        "verification": verification,
        "timeline": timeline,
        "result": result,
        "failures": failures,
    });
    let rep = report::Report::sign(data, &o.private_key)?;
    if o.record {
        record_summary(&target, &rep).context("writing the drill's summary into the cluster")?;
    }
    Ok(rep)
}

/// Time from `t` to the first success among attempts that started at or
/// after `t`: `(attempt start, answered)`.
fn gap_after(t: u64, items: impl Iterator<Item = (u64, u64)>) -> Option<u64> {
    items
        .filter(|(start, _)| *start >= t)
        .map(|(_, end)| end.saturating_sub(t))
        .min()
}

/// A write sent until answered: the next node after a failure, the same
/// request_id every time.
fn send_write(
    t: &Target,
    sh: &Shared,
    path: &str,
    body: &Value,
    deadline: Duration,
    start_node: usize,
) -> (std::result::Result<Value, AdminError>, u32, u64) {
    let ids: Vec<NodeId> = t.nodes.keys().copied().collect();
    let until = Instant::now() + deadline;
    let mut k = start_node;
    let mut attempts = 0u32;
    loop {
        let n = ids[k % ids.len()];
        attempts += 1;
        let attempt_ms = sh.ms();
        let r = t
            .client(n, Duration::from_secs(2))
            .map_err(|e| AdminError::Transport {
                url: String::new(),
                message: e.to_string(),
            })
            .and_then(|c| c.post(path, body));
        match r {
            Ok(v) => return (Ok(v), attempts, attempt_ms),
            Err(e) if definite(&e) => return (Err(e), attempts, attempt_ms),
            Err(e) => {
                sh.count_err(&error_code(&e));
                if Instant::now() >= until || sh.stop.load(Ordering::Relaxed) && attempts > 50 {
                    return (Err(e), attempts, attempt_ms);
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn setup(t: &Target, drill_id: &str, writers: usize) -> Result<Vec<(String, String)>> {
    let leader = t.wait_leader(Duration::from_secs(30))?;
    let c = t.client(leader, Duration::from_secs(10))?;
    let put = |path: &str, body: Value| -> Result<Value> {
        let url = path.to_string();
        c.put_json(&url, &body)
            .with_context(|| format!("setting up the drill: PUT {path}"))
    };
    let post = |path: &str, body: Value| -> Result<Value> {
        c.post(path, &body)
            .with_context(|| format!("setting up the drill: POST {path}"))
    };
    put(
        &format!("/v1/tariffs/{DRILL_TARIFF}"),
        json!({"request_id": format!("{drill_id}-tariff"), "kind": "flat", "price": "1.00",
               "effective_from": "2020-01-01T00:00:00Z"}),
    )?;
    let mut out = Vec::new();
    for k in 0..writers.max(1) {
        let account = format!("{drill_id}-A{k}");
        let card = format!("{drill_id}-C{k}");
        post(
            "/v1/accounts",
            json!({"request_id": format!("{account}-open"), "account_id": account,
                   "name": "failover drill", "branch": DRILL_BRANCH, "utility": "electricity",
                   "tariff_id": DRILL_TARIFF}),
        )?;
        post(
            "/v1/cards",
            json!({"request_id": format!("{card}-issue"), "account_id": account, "card_no": card}),
        )?;
        out.push((account, card));
    }
    Ok(out)
}

fn writer(
    t: &Target,
    sh: &Shared,
    drill_id: &str,
    k: usize,
    account: &str,
    card: &str,
    deadline: Duration,
) {
    let mut i = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let rid = format!("{drill_id}-w{k}-{i}");
        let (kind, path, body) = if i.is_multiple_of(2) {
            (
                "payment",
                "/v1/payments",
                json!({"request_id": rid, "account_id": account, "amount": "1.00",
                       "bank_code": DRILL_BANK, "bank_ref": rid}),
            )
        } else {
            (
                "purchase",
                "/v1/purchases",
                json!({"request_id": rid, "card_no": card, "amount": "2.00", "confirm_duplicate": true}),
            )
        };
        let invoked = sh.ms();
        let (r, attempts, attempt_ms) = send_write(t, sh, path, &body, deadline, i as usize + k);
        let answered = sh.ms();
        let mut w = WriteRecord {
            request_id: rid,
            kind: kind.into(),
            account_id: account.into(),
            state: String::new(),
            invoked_ms: invoked,
            answered_ms: None,
            acked_attempt_ms: None,
            attempts,
            balance_effect: None,
            last_error: None,
        };
        match r {
            Ok(v) => {
                sh.count_ok(true);
                w.state = "acknowledged".into();
                w.answered_ms = Some(answered);
                w.acked_attempt_ms = Some(attempt_ms);
                w.balance_effect = match kind {
                    "payment" => v.get("amount").and_then(Value::as_str).map(str::to_string),
                    _ => v
                        .pointer("/record/balance_effect")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                };
            }
            Err(e) if definite(&e) => {
                sh.count_err(&error_code(&e));
                w.state = "refused".into();
                w.answered_ms = Some(answered);
                w.last_error = Some(e.to_string());
            }
            Err(e) => {
                w.state = "unknown".into();
                w.last_error = Some(e.to_string());
            }
        }
        lock(&sh.writes).push(w);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Account reads and card checks, round robin over the nodes.
fn reader(t: &Target, sh: &Shared, accounts: &[(String, String)]) {
    let ids: Vec<NodeId> = t.nodes.keys().copied().collect();
    let mut i = 0usize;
    while !sh.stop.load(Ordering::Relaxed) {
        let n = ids[i % ids.len()];
        let (account, card) = &accounts[i % accounts.len()];
        let start = sh.ms();
        let r = t.client(n, Duration::from_secs(2)).map(|c| {
            if i.is_multiple_of(2) {
                c.get(&format!("/v1/accounts/{account}"))
            } else {
                c.post(
                    "/v1/cards/verify",
                    &json!({"card_no": card, "generation": 1, "seq_on_card": 0}),
                )
            }
        });
        let end = sh.ms();
        let ok = matches!(r, Ok(Ok(_)));
        match r {
            Ok(Ok(_)) => sh.count_ok(false),
            Ok(Err(e)) => sh.count_err(&error_code(&e)),
            Err(_) => sh.count_err("CLIENT"),
        }
        lock(&sh.reads).push((start, end, ok));
        i += 1;
        std::thread::sleep(Duration::from_millis(if ok { 30 } else { 50 }));
    }
}

/// Once a second: each node's role, term, commit and applied index.
fn sampler(t: &Target, sh: &Shared) {
    while !sh.stop.load(Ordering::Relaxed) {
        let sec = sh.ms() / 1000;
        // All nodes at once: a down node's timeout does not delay the others.
        let nodes: BTreeMap<NodeId, Value> = std::thread::scope(|scope| {
            let asks: Vec<_> = t
                .nodes
                .keys()
                .map(|n| (*n, scope.spawn(move || t.status(*n))))
                .collect();
            asks.into_iter()
                .map(|(n, h)| {
                    let v = match h.join().ok().flatten() {
                        Some(s) => json!({
                            "role": s.get("role"), "term": s.get("term"),
                            "commit": s.get("committed_index"), "applied": s.get("applied_index"),
                        }),
                        None => json!("down"),
                    };
                    (n, v)
                })
                .collect()
        });
        lock(&sh.seconds).entry(sec).or_default().nodes = nodes;
        let next = (sec + 1) * 1000;
        let now = sh.ms();
        if next > now {
            std::thread::sleep(Duration::from_millis(next - now));
        }
    }
}

fn progress_loop(sh: &Shared) {
    let Some(bar) = &sh.bar else {
        return;
    };
    let mut last = (Instant::now(), 0u64);
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        let total = sh.ops_total.load(Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = (total - last.1) as f64 / dt;
        last = (Instant::now(), total);
        bar.set_message(format!(
            "phase {} | elapsed {:.0}s | {:.0} ops/s | {} ops",
            lock(&sh.phase),
            sh.t0.elapsed().as_secs_f64(),
            rate,
            total
        ));
        bar.tick();
    }
    bar.finish_and_clear();
}

fn act(
    exec: &mut dyn Executor,
    sh: &Shared,
    actions: &mut Vec<Action>,
    what: &str,
    n: NodeId,
    fault: bool,
) -> Result<()> {
    sh.set_phase(&format!("{what} node {n}"));
    let before = Instant::now();
    match what {
        "kill" => exec.kill(n)?,
        "stop" => exec.stop(n)?,
        _ => exec.start(n)?,
    }
    record(exec, sh, actions, what, n, Vec::new(), fault, before);
    Ok(())
}

/// Cut `isolated` off from the other members (`Some`), or reconnect every
/// link cut (`None`).
fn act_network(
    exec: &mut dyn Executor,
    sh: &Shared,
    actions: &mut Vec<Action>,
    cut: Option<(&[NodeId], &[NodeId])>,
) -> Result<()> {
    let before = Instant::now();
    match cut {
        Some((isolated, rest)) => {
            sh.set_phase(&format!("cut nodes {isolated:?} off from nodes {rest:?}"));
            exec.partition(isolated, rest)?;
            let first = isolated.first().copied().unwrap_or(0);
            record(
                exec,
                sh,
                actions,
                "partition",
                first,
                isolated.to_vec(),
                true,
                before,
            );
        }
        None => {
            sh.set_phase("reconnect the network");
            exec.heal_network()?;
            record(
                exec,
                sh,
                actions,
                "heal-network",
                0,
                Vec::new(),
                false,
                before,
            );
        }
    }
    Ok(())
}

/// The action as done at the drill's time `t` (for a manual one, the first
/// failure seen after its prompt when that is earlier).
#[allow(clippy::too_many_arguments)]
fn record(
    exec: &mut dyn Executor,
    sh: &Shared,
    actions: &mut Vec<Action>,
    what: &str,
    n: NodeId,
    isolated: Vec<NodeId>,
    fault: bool,
    before: Instant,
) {
    // A manual action happened between the prompt and the confirmation:
    // the first failed operation after the prompt, when earlier, is when
    // the fault was seen.
    let mut t = sh.ms();
    if let Some(p) = exec.take_prompt_time()
        && fault
    {
        let p = sh.ms_of(p.max(before));
        if let Some(first) = lock(&sh.error_times).iter().copied().find(|e| *e >= p) {
            t = t.min(first);
        }
    }
    actions.push(Action {
        t_ms: t,
        action: what.into(),
        node: n,
        fault,
        isolated,
    });
}

/// Wait until a write attempt started after `t_ms` was acknowledged.
fn wait_writes_after(sh: &Shared, t_ms: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if lock(&sh.writes)
            .iter()
            .any(|w| w.acked_attempt_ms.is_some_and(|a| a >= t_ms))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn scenario(
    t: &mut Target,
    exec: &mut dyn Executor,
    o: &RunOpts,
    sh: &Shared,
    actions: &mut Vec<Action>,
    replaced: &mut Value,
) -> Result<()> {
    let leader = t.wait_leader(Duration::from_secs(30))?;
    let followers: Vec<NodeId> = t.nodes.keys().copied().filter(|n| *n != leader).collect();
    match o.scenario.as_str() {
        "leader-kill" | "two-down" | "full-power-loss" => {
            let victims: Vec<NodeId> = match o.scenario.as_str() {
                "leader-kill" => vec![leader],
                "two-down" => vec![leader, followers[0]],
                _ => {
                    let mut v = followers.clone();
                    v.insert(0, leader);
                    v
                }
            };
            for v in &victims {
                act(exec, sh, actions, "kill", *v, v == &leader)?;
            }
            let fault_ms = actions.iter().find(|a| a.fault).map_or(0, |a| a.t_ms);
            sh.set_phase("recovery");
            if o.scenario == "full-power-loss" {
                // Nothing can answer until power returns.
                std::thread::sleep(o.down);
                for v in &victims {
                    act(exec, sh, actions, "start", *v, false)?;
                }
                wait_writes_after(sh, fault_ms, o.recovery_max);
            } else {
                wait_writes_after(sh, fault_ms, o.recovery_max);
                std::thread::sleep(o.down);
                for v in &victims {
                    act(exec, sh, actions, "start", *v, false)?;
                }
            }
            Ok(())
        }
        "leader-isolated" | "minority-partition" => {
            // The leader (and, for a minority, one follower with it) cut
            // off from the others while every process keeps running: the
            // majority elects a leader and goes on; the cut-off side
            // cannot commit, so nothing it accepted may be acknowledged.
            let isolated: Vec<NodeId> = if o.scenario == "leader-isolated" {
                vec![leader]
            } else {
                vec![leader, followers[0]]
            };
            let rest: Vec<NodeId> = followers
                .iter()
                .copied()
                .filter(|n| !isolated.contains(n))
                .collect();
            act_network(exec, sh, actions, Some((&isolated, &rest)))?;
            let fault_ms = actions.last().map_or(0, |a| a.t_ms);
            sh.set_phase("recovery");
            wait_writes_after(sh, fault_ms, o.recovery_max);
            std::thread::sleep(o.down);
            act_network(exec, sh, actions, None)?;
            Ok(())
        }
        "rolling-restart" => {
            // Followers first, the leader last; leadership moved off a node
            // before it stops, as an upgrade would.
            let mut order = followers.clone();
            order.push(leader);
            for n in order {
                if let Some(l) = t.leader()
                    && l == n
                {
                    sh.set_phase(&format!("moving leadership off node {n}"));
                    step_down(t, n)?;
                }
                act(exec, sh, actions, "stop", n, true)?;
                let at = actions.last().map_or(0, |a| a.t_ms);
                wait_writes_after(sh, at, o.recovery_max);
                act(exec, sh, actions, "start", n, false)?;
                sh.set_phase(&format!("waiting for node {n} to be ready"));
                let deadline = Instant::now() + Duration::from_secs(60);
                while !t.ready(n) {
                    if Instant::now() >= deadline {
                        bail!("node {n} not ready within 60 s of its start");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Ok(())
        }
        "node-replace" => {
            // A follower's disk is lost: it goes, a fresh node with a new
            // id joins as a learner, catches up (by snapshot when the
            // leader's log no longer holds the start), and becomes a voter.
            let old = followers[0];
            let new = t.nodes.keys().max().copied().unwrap_or(0) + 1;
            act(exec, sh, actions, "kill", old, true)?;
            sh.set_phase(&format!("removing node {old} from the membership"));
            admin_retry(t, |c| match c.remove(old) {
                Err(e) if e.code() == Some("UNKNOWN_NODE") => Ok(Value::Null),
                r => r,
            })
            .with_context(|| format!("removing node {old}"))?;
            actions.push(Action {
                t_ms: sh.ms(),
                action: "remove".into(),
                node: old,
                fault: false,
                isolated: Vec::new(),
            });
            sh.set_phase(&format!("provisioning node {new}"));
            let addrs = exec.provision(old, new)?;
            actions.push(Action {
                t_ms: sh.ms(),
                action: "provision".into(),
                node: new,
                fault: false,
                isolated: Vec::new(),
            });
            t.nodes.remove(&old);
            let leader_snapshot = t
                .leader()
                .and_then(|l| t.client(l, Duration::from_secs(30)).ok())
                .and_then(|c| c.snapshot().ok());
            admin_retry(t, |c| match c.add_learner(&addrs) {
                Err(e) if e.code() == Some("DUPLICATE_NODE") => Ok(Value::Null),
                r => r,
            })
            .with_context(|| format!("adding node {new} as a learner"))?;
            t.nodes.insert(new, addrs.http_addr.clone());
            sh.set_phase(&format!("node {new} catching up"));
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let committed = t
                    .leader()
                    .and_then(|l| t.status(l))
                    .and_then(|s| s["committed_index"].as_u64())
                    .unwrap_or(u64::MAX);
                let applied = t
                    .status(new)
                    .and_then(|s| s["applied_index"].as_u64())
                    .unwrap_or(0);
                if applied + 5 >= committed {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "node {new} did not catch up in 120 s (applied {applied}, committed {committed})"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let st = t.status(new).unwrap_or(Value::Null);
            let voters: Vec<NodeId> = t.nodes.keys().copied().collect();
            admin_retry(t, |c| c.change_membership(&voters))
                .with_context(|| format!("promoting node {new}: voters {voters:?}"))?;
            actions.push(Action {
                t_ms: sh.ms(),
                action: "promote".into(),
                node: new,
                fault: false,
                isolated: Vec::new(),
            });
            *replaced = json!({"removed": old, "added": new,
                "leader_snapshot": leader_snapshot,
                "new_node_snapshot_index_after_catch_up": st["snapshot_index"],
                "new_node_applied_after_catch_up": st["applied_index"]});
            Ok(())
        }
        other => bail!("unknown scenario {other:?}"),
    }
}

/// An admin call to the leader, retried (leadership may move) for 60 s.
fn admin_retry(
    t: &Target,
    f: impl Fn(&AdminClient) -> std::result::Result<Value, AdminError>,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = t
            .leader()
            .context("no leader")
            .and_then(|l| t.client(l, Duration::from_secs(30)))
            .and_then(|c| Ok(f(&c)?));
        match r {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Hand leadership from `n` to the reachable voter furthest along (as
/// `billdb cluster step-down`), and wait until another node leads.
pub fn step_down(t: &Target, n: NodeId) -> Result<()> {
    let c = t.client(n, Duration::from_secs(5))?;
    let v = c.status()?;
    if v.get("role").and_then(Value::as_str) != Some("leader") {
        return Ok(());
    }
    let to = crate::admin::successor_from_status(&v, n)
        .with_context(|| format!("node {n} leads and no other voter is reachable"))?;
    c.transfer_leader(to)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = t
            .status(n)
            .and_then(|s| s.get("leader_id").and_then(Value::as_u64))
            && l != n
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node {n} still leads after asking node {to} to take over");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reconnect and start whatever the scenario left cut or down (nothing,
/// normally: a scenario that failed half-way).
fn heal_all(exec: &mut dyn Executor, sh: &Shared, actions: &mut Vec<Action>) -> Result<()> {
    sh.set_phase("heal");
    let mut started: BTreeSet<NodeId> = BTreeSet::new();
    let mut down: BTreeMap<NodeId, bool> = BTreeMap::new();
    let mut cut = false;
    for a in actions.iter() {
        match a.action.as_str() {
            "kill" | "stop" => {
                down.insert(a.node, true);
            }
            // Gone from the membership (node-replace): nothing to start.
            "remove" => {
                down.remove(&a.node);
            }
            "partition" => cut = true,
            "heal-network" => cut = false,
            "start" => {
                down.insert(a.node, false);
            }
            _ => {}
        }
    }
    if cut {
        act_network(exec, sh, actions, None)?;
    }
    for (n, is_down) in down {
        if is_down && started.insert(n) {
            act(exec, sh, actions, "start", n, false)?;
        }
    }
    Ok(())
}

fn wait_all_ready(t: &Target, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if t.nodes.keys().all(|n| t.ready(*n)) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- verification -------------------------------------------------------------

fn retry<T>(
    mut f: impl FnMut() -> std::result::Result<T, AdminError>,
) -> std::result::Result<T, AdminError> {
    let mut last = None;
    for _ in 0..20 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if definite(&e) => return Err(e),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last.unwrap_or(AdminError::Decode {
        url: String::new(),
        message: "no attempt".into(),
    }))
}

/// Converged digests, then every acknowledged write re-read on every node,
/// records per account on every node (no duplicate, none from a request
/// nobody sent), balances equal to their records and to what was
/// acknowledged.
fn verify(t: &Target, writes: &[WriteRecord], accounts: &[(String, String)]) -> Value {
    match verify_inner(t, writes, accounts) {
        Ok(v) => v,
        Err(e) => json!({"error": format!("{e:#}"), "lost": Value::Null, "duplicated": Value::Null,
                         "digests_equal": false, "balances_ok": false}),
    }
}

fn verify_inner(
    t: &Target,
    writes: &[WriteRecord],
    accounts: &[(String, String)],
) -> Result<Value> {
    // 1. Converge: every member applied the leader's commit, digests equal.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (digests, applied) = loop {
        let leader = t.wait_leader(Duration::from_secs(30))?;
        let committed = t
            .status(leader)
            .and_then(|s| s.get("committed_index").and_then(Value::as_u64))
            .unwrap_or(u64::MAX);
        let mut d = BTreeMap::new();
        let mut all = true;
        for n in t.nodes.keys() {
            match t
                .client(*n, Duration::from_secs(5))
                .ok()
                .and_then(|c| c.get("/v1/cluster/digest").ok())
            {
                Some(v) => {
                    let a = v["applied_index"].as_u64().unwrap_or(0);
                    all &= a >= committed;
                    d.insert(*n, json!({"applied_index": a, "digest": v["digest"]}));
                }
                None => all = false,
            }
        }
        let first = d.values().next().map(|v| v["digest"].clone());
        let equal =
            d.len() == t.nodes.len() && d.values().all(|v| Some(&v["digest"]) == first.as_ref());
        if (all && equal) || Instant::now() >= deadline {
            break (d, committed);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let first = digests.values().next().map(|v| v["digest"].clone());
    let digests_equal = digests.len() == t.nodes.len()
        && digests
            .values()
            .all(|v| Some(&v["digest"]) == first.as_ref());

    // 2. Every acknowledged write's outcome on every node.
    let mut lost = Vec::new();
    let acked: Vec<&WriteRecord> = writes
        .iter()
        .filter(|w| w.state == "acknowledged")
        .collect();
    for n in t.nodes.keys() {
        let c = t.client(*n, Duration::from_secs(5))?;
        for w in &acked {
            match retry(|| c.get(&format!("/v1/requests/{}", w.request_id))) {
                Ok(_) => {}
                Err(e) if e.code() == Some("NOT_FOUND") => lost.push((w.request_id.clone(), *n)),
                Err(e) => bail!("reading request {} on node {n}: {e}", w.request_id),
            }
        }
    }
    let mut lost_by: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    for (r, n) in lost {
        lost_by.entry(r).or_default().push(n);
    }

    // 3. Records and balances per account, on every node.
    let sent: BTreeMap<&str, &WriteRecord> =
        writes.iter().map(|w| (w.request_id.as_str(), w)).collect();
    let mut duplicated = BTreeSet::new();
    let mut phantom = BTreeSet::new();
    let mut mismatches = Vec::new();
    let mut records_total = 0u64;
    for n in t.nodes.keys() {
        let c = t.client(*n, Duration::from_secs(10))?;
        for (account, _) in accounts {
            let mut per_request: BTreeMap<String, u32> = BTreeMap::new();
            let mut sum = Decimal::ZERO;
            let mut token: Option<String> = None;
            loop {
                let mut path =
                    format!("/v1/accounts/{account}/records?segment=all&limit=500&order=asc");
                if let Some(tk) = &token {
                    path.push_str(&format!("&page_token={tk}"));
                }
                let page = retry(|| c.get(&path))
                    .with_context(|| format!("records of {account} on node {n}"))?;
                for r in page["records"].as_array().cloned().unwrap_or_default() {
                    let rid = r["request_id"].as_str().unwrap_or_default().to_string();
                    let eff: Decimal = r["balance_effect"]
                        .as_str()
                        .unwrap_or("0")
                        .parse()
                        .context("a record's balance_effect")?;
                    sum += eff;
                    *per_request.entry(rid).or_default() += 1;
                    if *n == *t.nodes.keys().next().unwrap_or(n) {
                        records_total += 1;
                    }
                }
                token = page["next_page_token"].as_str().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            // Expected: every acknowledged write's effect, plus any
            // unanswered one that landed.
            let mut expected = Decimal::ZERO;
            for w in writes.iter().filter(|w| &w.account_id == account) {
                let landed = per_request.contains_key(&w.request_id);
                let counts = w.state == "acknowledged" || (w.state == "unknown" && landed);
                if counts {
                    let eff = match (&w.balance_effect, landed) {
                        (Some(e), _) => e.parse().unwrap_or(Decimal::ZERO),
                        (None, true) => Decimal::ZERO,
                        (None, false) => Decimal::ZERO,
                    };
                    expected += eff;
                }
            }
            for (rid, k) in &per_request {
                if *k > 1 {
                    duplicated.insert(rid.clone());
                }
                if !sent.contains_key(rid.as_str()) {
                    phantom.insert(rid.clone());
                }
                if let Some(w) = sent.get(rid.as_str())
                    && w.state == "refused"
                {
                    phantom.insert(rid.clone());
                }
            }
            for w in acked.iter().filter(|w| &w.account_id == account) {
                if !per_request.contains_key(&w.request_id) {
                    lost_by.entry(w.request_id.clone()).or_default().push(*n);
                }
            }
            let bal: Decimal = retry(|| c.get(&format!("/v1/accounts/{account}")))?["balance"]
                .as_str()
                .unwrap_or("x")
                .parse()
                .with_context(|| format!("balance of {account} on node {n}"))?;
            if bal != sum || bal != expected {
                mismatches.push(json!({"node": n, "account": account, "balance": bal.to_string(),
                    "sum_of_records": sum.to_string(), "sum_of_acknowledged": expected.to_string()}));
            }
        }
    }
    for v in lost_by.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    let lost_requests: Vec<Value> = lost_by
        .iter()
        .map(|(r, n)| json!({"request_id": r, "missing_on": n}))
        .collect();
    Ok(json!({
        "digests": digests,
        "digests_equal": digests_equal,
        "leader_commit_index": applied,
        "acknowledged_checked": acked.len(),
        "reads_per_write": t.nodes.len(),
        "lost": lost_by.len(),
        "lost_requests": lost_requests,
        "duplicated": duplicated.len(),
        "duplicated_requests": duplicated,
        "phantom": phantom.len(),
        "phantom_requests": phantom,
        "records": records_total,
        "balances_ok": mismatches.is_empty() && phantom.is_empty(),
        "balance_mismatches": mismatches,
    }))
}

/// `POST /v1/drills` with the report's summary (retried with one request_id).
fn record_summary(t: &Target, rep: &report::Report) -> Result<()> {
    let d = &rep.data;
    let m = &d["measured"];
    let body = json!({
        "request_id": format!("{}-summary", d["drill_id"].as_str().unwrap_or("drill")),
        "scenario": d["scenario"],
        "result": d["result"],
        "started_ms": d["started_ms"],
        "write_gap_ms": m["write_gap_ms"].as_u64().unwrap_or(0).min(86_400_000),
        "read_gap_ms": m["read_gap_ms"].as_u64().unwrap_or(0).min(86_400_000),
        "health_ms": m["health_ms"].as_u64().unwrap_or(0).min(86_400_000),
        "acknowledged": d["workload"]["acknowledged"],
        "lost": d["verification"]["lost"].as_u64().unwrap_or(u64::MAX),
        "duplicated": d["verification"]["duplicated"].as_u64().unwrap_or(u64::MAX),
        "digests_equal": d["verification"]["digests_equal"].as_bool().unwrap_or(false),
        "report_sha256": rep.sha256,
        "run_by": d["operator"],
    });
    let ids: Vec<NodeId> = t.nodes.keys().copied().collect();
    let mut last = None;
    for k in 0..40 {
        let n = ids[k % ids.len()];
        match t
            .client(n, Duration::from_secs(5))?
            .post("/v1/drills", &body)
        {
            Ok(_) => return Ok(()),
            Err(e) if definite(&e) => return Err(e.into()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no node answered"), Into::into))
}
