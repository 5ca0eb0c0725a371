//! Nemeses and the seeded schedule. Every fault is really done: SIGKILL,
//! SIGSTOP/SIGCONT and SIGTERM to node processes, iptables DROP rules between
//! node addresses, deleting a data directory, membership changes through the
//! admin API. May touch what [`crate::run::Harness`] owns (the cluster's
//! processes and directories, its firewall chain).
//!
//! The schedule is a function of the seed only: which nemesis, how long the
//! fault lasts, and which nodes (as positions among "the leader" and "the
//! followers in id order") are drawn from a `StdRng` seeded with it, so a
//! failing run can be replayed with the same seed.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use billdb_client::local::usage;

use crate::history::{LeaderFault, NemesisEvent};
use crate::run::Harness;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL the leader and one other node; restart both later.
    Kill2,
    /// SIGSTOP the leader longer than the election timeout, then SIGCONT.
    Pause,
    /// Symmetric partition into 2 | 3 at random.
    PartitionHalves,
    /// The leader cut off from everyone, both directions.
    PartitionLeader,
    /// Asymmetric: the leader's packets to the others dropped, theirs arrive.
    PartitionOneway,
    /// The leader and one follower (minority) | the other three (majority).
    PartitionMinority,
    /// Two sides of two nodes that cannot talk, and a bridge node seeing both.
    PartitionBridge,
    /// Kill a follower, wipe its data, remove it, add a fresh node id as
    /// learner, promote it.
    Wipe,
    /// Restart all members one at a time (SIGTERM, start, wait healthy).
    RollingRestart,
    /// Transfer leadership, remove a voter under load, add it back.
    Membership,
    /// Hold WAL fsyncs (the nodes' fault point) on the leader and one or
    /// two followers, as a hung disk would: with one, three nodes can still
    /// sync and writes go on; with two, no write commits until the hold
    /// ends, and none may be acknowledged meanwhile.
    DiskStall,
    /// Damage one node's largest SST file (the leader's one time in three)
    /// as a failing disk would, then ask it to scrub: it must find the
    /// damage, hand leadership over if it leads, and rebuild itself from
    /// its peers.
    Corruption,
    /// Make one node's next WAL fsync return EIO (the leader's one time in
    /// three): it must stop, never retry the fsync, restart itself and
    /// catch up.
    FsyncEio,
    /// Fill one node's filesystem (a follower's; the leader's one time in
    /// three once its data sits on a small disk already): its writes fail
    /// with ENOSPC, it must fence itself (`disk_full`, UNAVAILABLE to
    /// clients), the others go on, and once the ballast goes it must
    /// restart itself and catch up, losing nothing. A node's data moves
    /// onto a tmpfs of its own the first time (`small_disk`).
    DiskFull,
    /// Stop one follower, or the leader and a follower, for minutes (as a
    /// server waiting for a disk): the nodes still up must stay cheap (CPU
    /// near what it was with all up, bounded log growth, few warnings a
    /// second) while writes go on; the stopped ones catch up on return.
    LongOutage,
    /// One follower loses power: SIGKILL, every write it had not fsynced
    /// dropped by the lossy filesystem under its data directory, restart.
    /// Only in runs whose nodes sit on lossy mounts (not in `ALL`).
    PowerLossFollower,
    /// The leader loses power (as `PowerLossFollower`).
    PowerLossLeader,
    /// All five lose power at once (as `PowerLossFollower`): only what
    /// each node fsynced is left anywhere.
    PowerLossAll,
}

pub const ALL: &[Nemesis] = &[
    Nemesis::Kill2,
    Nemesis::Pause,
    Nemesis::PartitionHalves,
    Nemesis::PartitionLeader,
    Nemesis::PartitionOneway,
    Nemesis::PartitionMinority,
    Nemesis::PartitionBridge,
    Nemesis::Wipe,
    Nemesis::RollingRestart,
    Nemesis::Membership,
    Nemesis::DiskStall,
    Nemesis::Corruption,
    Nemesis::FsyncEio,
    Nemesis::DiskFull,
    Nemesis::LongOutage,
];

/// Nemeses that need every node's data directory on a lossy filesystem
/// (`crate::lossy_fs`): a run listing one mounts them. Not in `ALL`.
pub const POWER_LOSS: &[Nemesis] = &[
    Nemesis::PowerLossFollower,
    Nemesis::PowerLossLeader,
    Nemesis::PowerLossAll,
];

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill2 => "kill2",
            Nemesis::Pause => "pause",
            Nemesis::PartitionHalves => "partition-halves",
            Nemesis::PartitionLeader => "partition-leader",
            Nemesis::PartitionOneway => "partition-oneway",
            Nemesis::PartitionMinority => "partition-minority",
            Nemesis::PartitionBridge => "partition-bridge",
            Nemesis::Wipe => "wipe",
            Nemesis::RollingRestart => "rolling-restart",
            Nemesis::Membership => "membership",
            Nemesis::DiskStall => "disk-stall",
            Nemesis::Corruption => "corruption",
            Nemesis::FsyncEio => "fsync-eio",
            Nemesis::DiskFull => "disk-full",
            Nemesis::LongOutage => "long-outage",
            Nemesis::PowerLossFollower => "power-loss-follower",
            Nemesis::PowerLossLeader => "power-loss-leader",
            Nemesis::PowerLossAll => "power-loss-all",
        }
    }

    pub fn is_power_loss(self) -> bool {
        POWER_LOSS.contains(&self)
    }

    pub fn is_partition(self) -> bool {
        self.name().starts_with("partition")
    }

    /// Range of fault durations (ms) drawn by the schedule; `once` (each
    /// nemesis once, the short run) keeps the long outage to half a minute.
    fn fault_ms(self, once: bool) -> (u64, u64) {
        match self {
            Nemesis::LongOutage if once => (20_000, 30_000),
            Nemesis::LongOutage => (LONG_OUTAGE_MS_MIN, LONG_OUTAGE_MS_MAX),
            // Longer than the election timeout (1 s max) so a new leader is elected.
            Nemesis::Pause => (1_500, 4_000),
            Nemesis::Kill2 => (1_000, 5_000),
            Nemesis::Wipe | Nemesis::RollingRestart => (0, 1),
            // The fault is done at once; the step lasts until the node has
            // repaired or restarted itself.
            Nemesis::Corruption | Nemesis::FsyncEio => (0, 1),
            Nemesis::Membership => (1_000, 3_000),
            Nemesis::DiskStall => (1_000, 4_000),
            // How long the disk stays full once the node has fenced itself.
            Nemesis::DiskFull => (2_000, 6_000),
            // How long the machines stay dark before they are started again.
            Nemesis::PowerLossFollower | Nemesis::PowerLossLeader | Nemesis::PowerLossAll => {
                (200, 2_000)
            }
            _ => (2_000, 6_000),
        }
    }
}

impl FromStr for Nemesis {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL.iter()
            .chain(POWER_LOSS)
            .copied()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                anyhow!(
                    "unknown nemesis {s:?}; known: all, {}",
                    ALL.iter()
                        .chain(POWER_LOSS)
                        .map(|n| n.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Parses `all` or a comma-separated list of nemesis names.
pub fn parse_list(s: &str) -> Result<Vec<Nemesis>> {
    if s.trim() == "all" {
        return Ok(ALL.to_vec());
    }
    let list = s
        .split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(Nemesis::from_str)
        .collect::<Result<Vec<_>>>()?;
    if list.is_empty() {
        bail!("no nemesis given");
    }
    Ok(list)
}

/// A long outage drawn in a timed run is kept one time in this many.
const LONG_OUTAGE_KEEP_ONE_IN: u32 = 4;
/// A long outage in a timed run lasts from 1 to 3 minutes.
pub const LONG_OUTAGE_MS_MIN: u64 = 60_000;
pub const LONG_OUTAGE_MS_MAX: u64 = 180_000;
/// While others are down, a node still up costs too much when it uses more
/// than `OUTAGE_EXTRA_CORES_MAX` cores over its all-up usage *and* more
/// than `OUTAGE_CPU_PER_WRITE_RATIO_MAX` times (plus the slack) its all-up
/// CPU per acknowledged write. The workload is not paced, so either figure
/// alone moves with the writes served; a failure loop (a whole core, several
/// ms per write) exceeds both.
pub const OUTAGE_EXTRA_CORES_MAX: f64 = 0.35;
pub const OUTAGE_CPU_PER_WRITE_RATIO_MAX: f64 = 1.5;
pub const OUTAGE_CPU_PER_WRITE_MS_SLACK: f64 = 0.5;
/// Log growth allowed per node per 5 minutes of outage (at least a quarter
/// of it however short the outage).
pub const OUTAGE_LOG_BYTES_PER_5_MIN_MAX: u64 = 1 << 20;
/// Warnings or errors a node still up may log in any one second.
pub const OUTAGE_WARN_LINES_PER_S_MAX: usize = 10;
/// How long the usage with all up is measured before the outage.
const OUTAGE_BASELINE_MS: u64 = 10_000;

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub nemesis: Nemesis,
    pub fault_ms: u64,
    /// Seed of this step's own target choices.
    pub pick_seed: u64,
}

/// The seeded schedule: `Once` runs each listed nemesis once in list order;
/// `Random` draws nemeses from the list for as long as the run lasts.
pub struct Schedule {
    rng: StdRng,
    list: Vec<Nemesis>,
    once: bool,
    next: usize,
    fault_ms: Option<(u64, u64)>,
}

impl Schedule {
    pub fn new(seed: u64, list: Vec<Nemesis>, once: bool) -> Self {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            list,
            once,
            next: 0,
            fault_ms: None,
        }
    }

    /// Every fault held for a duration drawn from `range` (ms) instead of
    /// its nemesis's own range.
    pub fn with_fault_ms(mut self, range: Option<(u64, u64)>) -> Self {
        self.fault_ms = range;
        self
    }
}

impl Iterator for Schedule {
    type Item = Step;
    fn next(&mut self) -> Option<Step> {
        if self.list.is_empty() || (self.once && self.next >= self.list.len()) {
            return None;
        }
        let nemesis = if self.once {
            self.list[self.next]
        } else {
            // A long outage lasts minutes where other faults last seconds:
            // drawn as often, it would fill most of a run. It is kept on one
            // draw in LONG_OUTAGE_KEEP_ONE_IN (about a fifth of a 30-minute
            // run), unless it is the only nemesis listed.
            loop {
                let n = self.list[self.rng.random_range(0..self.list.len())];
                if n != Nemesis::LongOutage
                    || self.list.len() == 1
                    || self.rng.random_range(0..LONG_OUTAGE_KEEP_ONE_IN) == 0
                {
                    break n;
                }
            }
        };
        self.next += 1;
        let (lo, hi) = self.fault_ms.unwrap_or_else(|| nemesis.fault_ms(self.once));
        Some(Step {
            nemesis,
            fault_ms: self.rng.random_range(lo..hi.max(lo + 1)),
            pick_seed: self.rng.random(),
        })
    }
}

/// Picks `k` distinct elements of `from` with `rng` (order of `from` kept stable).
fn pick(rng: &mut StdRng, from: &[u64], k: usize) -> Vec<u64> {
    let mut pool = from.to_vec();
    let mut out = Vec::new();
    while out.len() < k && !pool.is_empty() {
        let i = rng.random_range(0..pool.len());
        out.push(pool.remove(i));
    }
    out
}

fn without(from: &[u64], drop: &[u64]) -> Vec<u64> {
    from.iter().copied().filter(|n| !drop.contains(n)).collect()
}

/// Runs one step against the harness: injects the fault, holds it, heals,
/// and waits until the cluster is whole again. Errors of the nemesis itself
/// are recorded in the event (and the run carries on after a full recovery).
pub fn execute(h: &mut Harness, step: &Step) -> NemesisEvent {
    let mut rng = StdRng::seed_from_u64(step.pick_seed);
    let mut ev = NemesisEvent {
        nemesis: step.nemesis.name().to_string(),
        detail: String::new(),
        start_ns: h.rec.now_ns(),
        heal_ns: 0,
        end_ns: 0,
        leader_faults: Vec::new(),
        dropped_unsynced_bytes: 0,
        dropped_wal_bytes: 0,
        error: None,
    };
    let result = inject(h, step, &mut rng, &mut ev);
    ev.heal_ns = h.rec.now_ns();
    let healed = h.heal_all();
    let recovered = h.wait_recovered(Duration::from_secs(90));
    ev.end_ns = h.rec.now_ns();
    let errors: Vec<String> = [result, healed, recovered]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !errors.is_empty() {
        ev.error = Some(errors.join("; "));
    }
    ev
}

/// What the listed nodes cost over `d`: per node (node, cores used, log
/// bytes written), and the writes acknowledged in that time (any client).
struct Usage {
    nodes: Vec<(u64, f64, u64)>,
    writes_per_s: f64,
}

fn node_usage(h: &Harness, nodes: &[u64], d: Duration) -> Result<Usage> {
    let start: Vec<(u64, u32, u64, u64)> = nodes
        .iter()
        .map(|&n| {
            let pid = h
                .cluster
                .pid(n)
                .with_context(|| format!("node {n} is not running"))?;
            let ticks =
                usage::cpu_ticks(pid).with_context(|| format!("node {n}: no /proc stat"))?;
            Ok((n, pid, ticks, usage::file_len(&h.cluster.log_path(n))))
        })
        .collect::<Result<_>>()?;
    let (t0, from_ns) = (std::time::Instant::now(), h.rec.now_ns());
    std::thread::sleep(d);
    let secs = t0.elapsed().as_secs_f64().max(0.001);
    let to_ns = h.rec.now_ns();
    let tck = usage::clock_ticks_per_s();
    let nodes = start
        .into_iter()
        .map(|(n, pid, ticks0, log0)| {
            let ticks = usage::cpu_ticks(pid)
                .with_context(|| format!("node {n} exited while others were down"))?;
            let log = usage::file_len(&h.cluster.log_path(n)).saturating_sub(log0);
            Ok((n, ticks.saturating_sub(ticks0) as f64 / tck / secs, log))
        })
        .collect::<Result<_>>()?;
    let writes = h
        .rec
        .ops()
        .iter()
        .filter(|o| o.kind.is_write() && o.outcome == crate::history::Outcome::Ok)
        .filter(|o| o.complete_ns.is_some_and(|t| t >= from_ns && t < to_ns))
        .count();
    Ok(Usage {
        nodes,
        writes_per_s: writes as f64 / secs,
    })
}

/// CPU ms per acknowledged write, when there were writes.
fn ms_per_write(cores: f64, writes_per_s: f64) -> Option<f64> {
    (writes_per_s >= 1.0).then(|| cores * 1000.0 / writes_per_s)
}

/// The leader one time in three, else a follower drawn at random.
fn leader_one_time_in_three(rng: &mut StdRng, leader: u64, followers: &[u64]) -> Result<u64> {
    if rng.random_bool(1.0 / 3.0) {
        return Ok(leader);
    }
    pick(rng, followers, 1)
        .first()
        .copied()
        .context("no follower")
}

/// What a node logs when it restarts itself after a storage failure.
const RESTART_LINE: &str = "restarting this node to recover";
/// How long an on-demand scrub of one node may take.
const SCRUB_WAIT_S: u64 = 120;
/// How long a damaged or failed node may take to be back.
const REPAIR_WAIT_S: u64 = 120;

/// Waits until node `n` reports its storage ok, no vote fence, and ready;
/// how long that took.
fn wait_repaired(h: &Harness, n: u64, within: Duration) -> Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        let back = h.admin(n).ok().is_some_and(|a| {
            let ok = a.status().ok().is_some_and(|s| {
                s["storage"]["state"] == "ok" && s["storage"]["vote_fence_index"].is_null()
            });
            ok && a.get("/readyz").is_ok()
        });
        if back {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "node {n} was not back (storage ok, ready) within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fault_at(h: &Harness, ev: &mut NemesisEvent, how: &str, node: u64) {
    ev.leader_faults.push(LeaderFault {
        how: how.to_string(),
        node,
        at_ns: h.rec.now_ns(),
    });
}

fn inject(h: &mut Harness, step: &Step, rng: &mut StdRng, ev: &mut NemesisEvent) -> Result<()> {
    let hold = Duration::from_millis(step.fault_ms);
    let leader = h.leader(Duration::from_secs(30))?;
    let members = h.members();
    let followers = without(&members, &[leader]);
    match step.nemesis {
        Nemesis::Kill2 => {
            let other = pick(rng, &followers, 1);
            ev.detail = format!("SIGKILL leader {leader} and node {other:?}, down {hold:?}");
            fault_at(h, ev, "kill", leader);
            h.cluster.kill(leader)?;
            for &o in &other {
                h.cluster.kill(o)?;
            }
            std::thread::sleep(hold);
            // Restarted by heal_all.
        }
        Nemesis::DiskStall => {
            let mut stalled = vec![leader];
            let held_followers = rng.random_range(1..=2);
            stalled.extend(pick(rng, &followers, held_followers));
            ev.detail = format!("WAL fsyncs held on {stalled:?} (leader {leader}) for {hold:?}");
            for &n in &stalled {
                h.cluster.hold_fsyncs(n)?;
            }
            // Three of five held: no quorum can make a write durable until
            // the stall ends, so that gap is the stall's length, beyond the
            // two faults the cluster masks; kept apart in the report.
            let how = if stalled.len() * 2 > members.len() {
                "disk-stall-majority"
            } else {
                "disk-stall"
            };
            fault_at(h, ev, how, leader);
            std::thread::sleep(hold);
            // Released by heal_all.
        }
        Nemesis::Corruption => {
            let victim = leader_one_time_in_three(rng, leader, &followers)?;
            // A snapshot flushes every memtable: SST files to damage.
            h.admin_with_timeout(victim, Duration::from_secs(SCRUB_WAIT_S))?
                .post("/v1/cluster/snapshot", &serde_json::json!({}))
                .map_err(|e| anyhow!("snapshot on node {victim}: {e}"))?;
            let (sst, len) = h.cluster.damage_largest_sst(victim)?;
            if victim == leader {
                fault_at(h, ev, "corruption", leader);
            }
            let file = sst
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let scrub = h.admin_with_timeout(victim, Duration::from_secs(SCRUB_WAIT_S))?;
            let found = match scrub.post("/v1/cluster/scrub", &serde_json::json!({})) {
                // Compaction can replace the file between the damage and
                // the scrub: nothing damaged is left to find.
                Ok(_) => false,
                Err(e) if e.to_string().contains("corruption") => true,
                Err(e) => bail!("scrub on node {victim}: {e}"),
            };
            ev.detail = format!(
                "node {victim} (leader {leader}): {file} ({len} B) damaged; {}",
                if found {
                    "found by its scrub"
                } else {
                    "compacted away before its scrub"
                }
            );
            if found {
                let took = wait_repaired(h, victim, Duration::from_secs(REPAIR_WAIT_S))?;
                ev.detail = format!("{}; repaired from its peers in {took:?}", ev.detail);
            }
        }
        Nemesis::FsyncEio => {
            let victim = leader_one_time_in_three(rng, leader, &followers)?;
            if victim == leader {
                fault_at(h, ev, "fsync-eio", leader);
            }
            let log = h.cluster.log_path(victim);
            let log_from = usage::file_len(&log);
            h.cluster.arm_fsync_error(victim)?;
            let started = std::time::Instant::now();
            // The node logs its restart once its guard saw the failure.
            loop {
                let text = std::fs::read(&log).unwrap_or_default();
                let from = usize::try_from(log_from)
                    .unwrap_or(usize::MAX)
                    .min(text.len());
                if String::from_utf8_lossy(&text[from..]).contains(RESTART_LINE) {
                    break;
                }
                ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "node {victim} did not fail and restart within 30 s of its fsync error \
                     (fired: {})",
                    h.cluster.fsync_error_fired(victim)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let took = wait_repaired(h, victim, Duration::from_secs(REPAIR_WAIT_S))?;
            ev.detail = format!(
                "node {victim} (leader {leader}): a WAL fsync returned EIO; back in {took:?}"
            );
        }
        Nemesis::DiskFull => {
            let mut victim = leader_one_time_in_three(rng, leader, &followers)?;
            if victim == leader && !h.small_disks.is_small(leader) {
                victim = pick(rng, &followers, 1)
                    .first()
                    .copied()
                    .context("no follower")?;
            }
            let data = h.cluster.data_dir(victim);
            let mut moved = String::new();
            if !h.small_disks.is_small(victim) {
                h.cluster.stop(victim)?;
                let bytes = h.small_disks.move_onto_tmpfs(victim, &data)?;
                h.cluster.start(victim)?;
                let took = wait_repaired(h, victim, Duration::from_secs(REPAIR_WAIT_S))?;
                moved = format!("moved onto a tmpfs of its own ({bytes} B, back in {took:?}); ");
            }
            if victim == leader {
                fault_at(h, ev, "disk-full", leader);
            }
            let path = crate::small_disk::fill(&data)?;
            let ballast = crate::small_disk::Ballast(path);
            // Its next write fails: it must fence itself as disk_full.
            let started = std::time::Instant::now();
            loop {
                let kind = h
                    .admin(victim)
                    .ok()
                    .and_then(|a| a.status().ok())
                    .map(|s| s["storage"]["kind"].clone());
                if kind.as_ref().is_some_and(|k| k == "disk_full") {
                    break;
                }
                ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "node {victim} did not fence itself within 30 s of its disk filling \
                     (storage kind {kind:?})"
                );
                crate::small_disk::fill(&data)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            let fenced_in = started.elapsed();
            // Clients are refused with UNAVAILABLE, never INTERNAL or data.
            match h.admin(victim)?.get("/v1/accounts/chaos-disk-full-probe") {
                Err(e) if e.code() == Some("UNAVAILABLE") => {}
                other => bail!("node {victim} with a full disk answered a read with {other:?}"),
            }
            // Held full (RocksDB deletes files meanwhile: topped up).
            let until = std::time::Instant::now() + hold;
            while std::time::Instant::now() < until {
                crate::small_disk::fill(&data)?;
                std::thread::sleep(Duration::from_millis(200));
            }
            drop(ballast);
            let took = wait_repaired(h, victim, Duration::from_secs(REPAIR_WAIT_S))?;
            ev.detail = format!(
                "node {victim} (leader {leader}): {moved}filesystem filled, fenced in \
                 {fenced_in:?}, full for {hold:?}, back by itself in {took:?} after space returned"
            );
        }
        Nemesis::PowerLossFollower | Nemesis::PowerLossLeader | Nemesis::PowerLossAll => {
            let victims = match step.nemesis {
                Nemesis::PowerLossFollower => pick(rng, &followers, 1),
                Nemesis::PowerLossLeader => vec![leader],
                _ => members.clone(),
            };
            ensure!(!victims.is_empty(), "no node to cut the power of");
            if victims.contains(&leader) {
                fault_at(h, ev, "power-loss", leader);
            }
            // All victims die before any disk forgets: the same instant
            // for every machine on the same power.
            for &n in &victims {
                h.cluster.kill(n)?;
            }
            let mut lost = Vec::new();
            for &n in &victims {
                let rep = h.power_loss(n)?;
                ev.dropped_unsynced_bytes += rep.dropped_bytes;
                ev.dropped_wal_bytes += rep
                    .dropped
                    .iter()
                    .filter(|(f, _)| f.starts_with("db/") && f.ends_with(".log"))
                    .map(|(_, b)| b)
                    .sum::<u64>();
                let top: Vec<String> = rep
                    .dropped
                    .iter()
                    .take(3)
                    .map(|(f, b)| format!("{f} {b} B"))
                    .collect();
                lost.push(format!(
                    "node {n}: {} B in {} files ({})",
                    rep.dropped_bytes,
                    rep.files,
                    top.join(", ")
                ));
            }
            ev.detail = format!(
                "power lost on {victims:?} (leader {leader}), dark {hold:?}; unsynced data dropped: {}",
                lost.join("; ")
            );
            std::thread::sleep(hold);
            // Restarted by heal_all.
        }
        Nemesis::Pause => {
            ev.detail = format!("SIGSTOP leader {leader} for {hold:?}");
            fault_at(h, ev, "pause", leader);
            h.cluster.pause(leader)?;
            std::thread::sleep(hold);
            h.cluster.resume(leader)?;
        }
        Nemesis::PartitionHalves => {
            let small = pick(rng, &members, 2);
            let big = without(&members, &small);
            ev.detail = format!("partition {small:?} | {big:?} for {hold:?}");
            h.firewall()?.cut_between(&small, &big)?;
            if small.contains(&leader) {
                fault_at(h, ev, "isolate", leader);
            }
            std::thread::sleep(hold);
        }
        Nemesis::PartitionLeader => {
            ev.detail = format!("leader {leader} isolated from {followers:?} for {hold:?}");
            h.firewall()?.cut_between(&[leader], &followers)?;
            fault_at(h, ev, "isolate", leader);
            std::thread::sleep(hold);
        }
        Nemesis::PartitionOneway => {
            ev.detail =
                format!("packets leader {leader} -> {followers:?} dropped (one way) for {hold:?}");
            let links: Vec<(u64, u64)> = followers.iter().map(|&f| (leader, f)).collect();
            h.firewall()?.cut_links(&links)?;
            fault_at(h, ev, "isolate-oneway", leader);
            std::thread::sleep(hold);
        }
        Nemesis::PartitionMinority => {
            let mut minority = vec![leader];
            minority.extend(pick(rng, &followers, 1));
            let majority = without(&members, &minority);
            ev.detail = format!(
                "minority {minority:?} (with the leader) | majority {majority:?} for {hold:?}"
            );
            h.firewall()?.cut_between(&minority, &majority)?;
            fault_at(h, ev, "isolate", leader);
            std::thread::sleep(hold);
        }
        Nemesis::PartitionBridge => {
            let order = pick(rng, &members, members.len());
            let (a, rest) = order.split_at(order.len().min(2));
            let bridge = rest
                .first()
                .copied()
                .context("too few members for a bridge")?;
            let b = &rest[1..];
            ev.detail =
                format!("bridge {bridge} between {a:?} and {b:?} (which cannot talk) for {hold:?}");
            h.firewall()?.cut_between(a, b)?;
            std::thread::sleep(hold);
        }
        Nemesis::Wipe => {
            let victim = pick(rng, &followers, 1)
                .first()
                .copied()
                .context("no follower to wipe")?;
            let fresh = h.replace_node(victim)?;
            ev.detail = format!(
                "node {victim} killed, wiped, removed; fresh node {fresh} added and promoted"
            );
        }
        Nemesis::RollingRestart => {
            ev.detail = format!("rolling restart of {members:?}");
            for n in members {
                let current = h.leader(Duration::from_secs(30)).ok();
                if current == Some(n) {
                    fault_at(h, ev, "stop", n);
                }
                h.cluster.stop(n)?;
                h.cluster.start(n)?;
                h.cluster.wait_healthy(n, Duration::from_secs(60))?;
                h.leader(Duration::from_secs(60))?;
            }
        }
        Nemesis::LongOutage => {
            let mut down = Vec::new();
            let with_leader = rng.random_bool(0.5);
            if with_leader {
                down.push(leader);
            }
            down.extend(pick(rng, &followers, 1));
            let up = without(&members, &down);
            let base = node_usage(h, &up, Duration::from_millis(OUTAGE_BASELINE_MS))?;
            ev.detail = format!("nodes {down:?} stopped for {hold:?} (leader {leader})");
            if with_leader {
                fault_at(h, ev, "stop", leader);
            }
            for &n in &down {
                h.cluster.stop(n)?;
            }
            let logs_from: Vec<(u64, u64)> = up
                .iter()
                .map(|&n| (n, usage::file_len(&h.cluster.log_path(n))))
                .collect();
            let during = node_usage(h, &up, hold)?;
            let log_max = (OUTAGE_LOG_BYTES_PER_5_MIN_MAX * hold.as_secs() / 300)
                .max(OUTAGE_LOG_BYTES_PER_5_MIN_MAX / 4);
            let mut over = Vec::new();
            for (&(n, cores0, _), &(_, cores, log_bytes)) in base.nodes.iter().zip(&during.nodes) {
                // The workload is not paced: with nodes down the others may
                // serve more writes (more CPU, no more per write), or fewer
                // (clients waiting on the dead nodes: more CPU per write,
                // no more in all). A failure loop shows in both figures.
                let per = (
                    ms_per_write(cores0, base.writes_per_s),
                    ms_per_write(cores, during.writes_per_s),
                );
                let cores_over = cores > cores0 + OUTAGE_EXTRA_CORES_MAX;
                let too_much = match per {
                    (Some(ms0), Some(ms)) => {
                        cores_over
                            && ms
                                > ms0 * OUTAGE_CPU_PER_WRITE_RATIO_MAX
                                    + OUTAGE_CPU_PER_WRITE_MS_SLACK
                    }
                    _ => cores_over,
                };
                if too_much {
                    over.push(format!(
                        "node {n} used {cores:.2} cores at {:.0} writes/s (all up: {cores0:.2} at {:.0}/s)",
                        during.writes_per_s, base.writes_per_s
                    ));
                }
                if log_bytes > log_max {
                    over.push(format!(
                        "node {n}'s log grew {log_bytes} bytes (bound {log_max})"
                    ));
                }
            }
            for (n, from) in logs_from {
                let (most, second) = usage::max_warn_lines_per_s(&h.cluster.log_path(n), from);
                if most > OUTAGE_WARN_LINES_PER_S_MAX {
                    over.push(format!("node {n} logged {most} warnings in {second}"));
                }
            }
            let summary: Vec<String> = during
                .nodes
                .iter()
                .zip(&base.nodes)
                .map(|((n, cores, log), (_, cores0, _))| {
                    format!("{n}: {cores:.2} cores (all up {cores0:.2}), log +{log} B")
                })
                .collect();
            ev.detail = format!(
                "{}; {:.0} writes/s (all up {:.0}); up: {}",
                ev.detail,
                during.writes_per_s,
                base.writes_per_s,
                summary.join(", ")
            );
            if !over.is_empty() {
                bail!(
                    "nodes up during the outage cost too much: {}",
                    over.join("; ")
                );
            }
            // Restarted by heal_all; wait_recovered waits for their catch-up.
        }
        Nemesis::Membership => {
            let to = pick(rng, &followers, 1)
                .first()
                .copied()
                .context("no follower to transfer to")?;
            h.admin_retry(|a| a.transfer_leader(to), Duration::from_secs(30))
                .with_context(|| format!("transfer leader {leader} -> {to}"))?;
            let victim = pick(rng, &without(&members, &[to]), 1)
                .first()
                .copied()
                .context("no voter to remove")?;
            ev.detail = format!(
                "leadership {leader} -> {to}; voter {victim} removed for {hold:?} and added back"
            );
            h.remove_and_readd(victim, hold)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let a: Vec<Step> = Schedule::new(42, ALL.to_vec(), false).take(300).collect();
        let b: Vec<Step> = Schedule::new(42, ALL.to_vec(), false).take(300).collect();
        let c: Vec<Step> = Schedule::new(43, ALL.to_vec(), false).take(300).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Every nemesis shows up in a long random schedule.
        for n in ALL {
            assert!(a.iter().any(|s| s.nemesis == *n), "{n:?} never drawn");
        }
        // Long outages are drawn less often than the others.
        let many: Vec<Step> = Schedule::new(9001, ALL.to_vec(), false)
            .take(2_000)
            .collect();
        let long = many
            .iter()
            .filter(|s| s.nemesis == Nemesis::LongOutage)
            .count();
        let kills = many.iter().filter(|s| s.nemesis == Nemesis::Kill2).count();
        assert!(
            long * 2 < kills,
            "{long} long outages against {kills} kill2"
        );
        assert!(long > 0);
        // Alone in the list, it is always drawn.
        assert!(
            Schedule::new(1, vec![Nemesis::LongOutage], false)
                .take(5)
                .all(|s| s.nemesis == Nemesis::LongOutage && s.fault_ms >= LONG_OUTAGE_MS_MIN)
        );
    }

    #[test]
    fn once_runs_each_listed_nemesis_in_order() {
        let s: Vec<Nemesis> = Schedule::new(1, ALL.to_vec(), true)
            .map(|s| s.nemesis)
            .collect();
        assert_eq!(s, ALL.to_vec());
        // Pauses outlast the election timeout.
        assert!(
            Schedule::new(7, vec![Nemesis::Pause], false)
                .take(100)
                .all(|s| s.fault_ms >= 1_500)
        );
    }

    /// `--fault-ms` holds every fault for a duration from its range.
    #[test]
    fn fault_ms_override() {
        let steps: Vec<Step> = Schedule::new(3, vec![Nemesis::DiskStall], false)
            .with_fault_ms(Some((5_000, 5_000)))
            .take(30)
            .collect();
        assert!(steps.iter().all(|s| s.fault_ms == 5_000), "{steps:?}");
        let steps: Vec<Step> = Schedule::new(3, ALL.to_vec(), false)
            .with_fault_ms(Some((4_000, 6_000)))
            .take(100)
            .collect();
        assert!(
            steps.iter().all(|s| (4_000..=6_000).contains(&s.fault_ms)),
            "{steps:?}"
        );
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_list("all").unwrap(), ALL.to_vec());
        assert_eq!(
            parse_list("kill2, pause").unwrap(),
            vec![Nemesis::Kill2, Nemesis::Pause]
        );
        assert!(parse_list("kill3").is_err());
        assert!(parse_list("").is_err());
        for n in ALL {
            assert_eq!(n.name().parse::<Nemesis>().unwrap(), *n);
            assert!(!n.is_power_loss(), "{n:?} in `all` needs lossy mounts");
        }
        for n in POWER_LOSS {
            assert_eq!(n.name().parse::<Nemesis>().unwrap(), *n);
        }
        assert_eq!(
            parse_list("power-loss-leader,kill2").unwrap(),
            vec![Nemesis::PowerLossLeader, Nemesis::Kill2]
        );
    }
}
