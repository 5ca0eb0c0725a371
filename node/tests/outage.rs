//! Long outages against real processes: a node that stays down (stopped,
//! two stopped, or unable to start) costs the others next to nothing —
//! their CPU stays within a tenth of a core of what it was with all five
//! up, their logs grow by at most a bounded amount and never carry more
//! than a few warnings a second — writes succeed throughout, and a node that
//! comes back is replicated to again within a second and converges.
//!
//! The outage lasts `BILLDB_OUTAGE_S` seconds (60 by default, to keep the
//! test command short; `BILLDB_OUTAGE_S=300` is the five-minute run of
//! docs/OPERATIONS.md). The same bounds apply at any length: the log bound
//! scales with the outage (1 MB per 5 minutes).
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): bases
//! 31000, 32000 and 30500, below the kernel's ephemeral range.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billdb_client::local::{RaftTimings, usage};
use common::*;

/// A core's worth of CPU more than the baseline the leader may use.
const CPU_CORES_OVER_BASELINE_MAX: f64 = 0.10;
/// Log growth allowed per 5 minutes of outage, per node.
const LOG_BYTES_PER_5_MIN_MAX: u64 = 1 << 20;
/// Warnings and errors one node may log in any one second.
const WARN_LINES_PER_S_MAX: usize = 10;
/// How long each snapshot install is held in the catch-up test.
const INSTALL_DELAY_MS: &str = "4000";
/// A returning peer must be replicated to within this long of its Raft
/// port accepting connections.
const RESUME_MS_MAX: u128 = 1_000;

fn outage() -> Duration {
    let s = std::env::var("BILLDB_OUTAGE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    Duration::from_secs(s.max(10))
}

fn log_bytes_max(d: Duration) -> u64 {
    // At least a quarter of the 5-minute bound, so a short run is not held
    // to a bound smaller than the cluster's normal info lines.
    (LOG_BYTES_PER_5_MIN_MAX * d.as_secs() / 300).max(LOG_BYTES_PER_5_MIN_MAX / 4)
}

fn ticks(pid: u32) -> u64 {
    usage::cpu_ticks(pid).expect("node process alive")
}

fn log_len(c: &TestCluster, n: NodeId) -> u64 {
    usage::file_len(&c.c.log_path(n))
}

/// CPU (in cores) and log growth of each listed node over `d`.
struct Usage {
    cores: BTreeMap<NodeId, f64>,
    log_bytes: BTreeMap<NodeId, u64>,
}

fn measure(c: &TestCluster, nodes: &[NodeId], d: Duration) -> Usage {
    let tck = usage::clock_ticks_per_s();
    let pids: BTreeMap<NodeId, u32> = nodes
        .iter()
        .map(|n| (*n, c.c.pid(*n).expect("node running")))
        .collect();
    let t0: BTreeMap<NodeId, (u64, u64)> = pids
        .iter()
        .map(|(n, p)| (*n, (ticks(*p), log_len(c, *n))))
        .collect();
    let start = Instant::now();
    std::thread::sleep(d);
    let secs = start.elapsed().as_secs_f64();
    let mut u = Usage {
        cores: BTreeMap::new(),
        log_bytes: BTreeMap::new(),
    };
    for (n, p) in &pids {
        let (ticks0, log0) = t0[n];
        u.cores
            .insert(*n, ticks(*p).saturating_sub(ticks0) as f64 / tck / secs);
        u.log_bytes.insert(*n, log_len(c, *n).saturating_sub(log0));
    }
    u
}

fn assert_warn_rate(c: &TestCluster, nodes: &[NodeId], from: &BTreeMap<NodeId, u64>) {
    for n in nodes {
        let (most, when) = usage::max_warn_lines_per_s(&c.c.log_path(*n), from[n]);
        assert!(
            most <= WARN_LINES_PER_S_MAX,
            "node {n} logged {most} warnings in the second {when} (bound {WARN_LINES_PER_S_MAX})"
        );
    }
}

fn matched(c: &TestCluster, leader: NodeId, peer: NodeId) -> Option<u64> {
    c.status(leader)["replication"][peer.to_string()]["matched_index"].as_u64()
}

/// Restart `n` and return how long after its Raft port accepted a
/// connection the leader's matched index for it moved past `before`.
fn restart_and_time_resume(c: &TestCluster, n: NodeId, before: Option<u64>) -> Duration {
    let raft = c.c.raft_addr(n).unwrap();
    c.c.start(n).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(&raft).is_err() {
        assert!(Instant::now() < deadline, "node {n} never opened {raft}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let open = Instant::now();
    loop {
        let leader = c.leader();
        if matched(c, leader, n) > before {
            return open.elapsed();
        }
        assert!(
            open.elapsed() < Duration::from_secs(30),
            "leader {leader} never replicated to node {n} again: {}",
            c.status(leader)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check_bounds(
    what: &str,
    u: &Usage,
    baseline_leader_cores: f64,
    leader: NodeId,
    d: Duration,
    log_from: &BTreeMap<NodeId, u64>,
    c: &TestCluster,
) {
    eprintln!(
        "{what}: cores {:?}, log bytes {:?} (baseline leader {baseline_leader_cores:.3} cores)",
        u.cores, u.log_bytes
    );
    let cores = u.cores[&leader];
    assert!(
        cores <= baseline_leader_cores + CPU_CORES_OVER_BASELINE_MAX,
        "{what}: leader {leader} used {cores:.3} cores against {baseline_leader_cores:.3} with all up"
    );
    let max = log_bytes_max(d);
    for (n, b) in &u.log_bytes {
        assert!(
            *b <= max,
            "{what}: node {n}'s log grew {b} bytes (bound {max})"
        );
    }
    let nodes: Vec<NodeId> = u.cores.keys().copied().collect();
    assert_warn_rate(c, &nodes, log_from);
}

/// Start fresh node `n` with fault-point file `fault` holding `value`,
/// and add it to the cluster as a learner.
fn add_learner_with_fault(c: &TestCluster, n: NodeId, fault: &str, value: &str) {
    let spec = c.c.add_node(n).expect("add node");
    std::fs::create_dir_all(c.c.data_dir(n)).unwrap();
    std::fs::write(c.c.data_dir(n).join(fault), value).unwrap();
    c.c.start(n).unwrap();
    c.c.wait_healthy(n, Duration::from_secs(30)).unwrap();
    c.http(c.leader())
        .add_learner(&spec.addrs())
        .expect("add learner");
}

/// Issue 20 items 1–4: one follower down (with and without load), two down
/// (one the old leader), a node that cannot start; bounded cost, writes
/// throughout, replication resumed within a second, convergence.
#[test]
fn nodes_that_stay_down_cost_the_others_nothing_and_catch_up_on_return() {
    let c = Arc::new(TestCluster::start(31000, 5));
    open_load_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let d = outage();
    let live = Arc::new(Mutex::new(all.clone()));

    // Baselines with all five up: idle, then under the light load.
    let leader = c.leader();
    let idle = measure(&c, &all, Duration::from_secs(10));
    let load = Load::start(&c, live.clone(), "base");
    let loaded = measure(&c, &all, Duration::from_secs(15));
    let (acked, failed, _) = load.finish();
    assert!(acked > 50 && failed.is_empty(), "{acked} {failed:?}");
    let base_idle = idle.cores[&leader];
    let base_loaded = loaded.cores[&leader];
    eprintln!("baseline: leader {leader} idle {base_idle:.3} cores, loaded {base_loaded:.3} cores");

    // 1. One follower stopped: first half without load, second half with.
    let f = *all.iter().find(|n| **n != leader).unwrap();
    let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != f).collect();
    let before = matched(&c, leader, f);
    c.c.stop(f).unwrap();
    live.lock().unwrap().retain(|n| *n != f);
    let from: BTreeMap<NodeId, u64> = rest.iter().map(|n| (*n, log_len(&c, *n))).collect();
    let u = measure(&c, &rest, d / 2);
    assert_eq!(
        c.leader(),
        leader,
        "a follower's stop must not move the leader"
    );
    check_bounds(
        "one follower down, idle",
        &u,
        base_idle,
        leader,
        d / 2,
        &from,
        &c,
    );
    let load = Load::start(&c, live.clone(), "one-down");
    let u = measure(&c, &rest, d / 2);
    check_bounds(
        "one follower down, loaded",
        &u,
        base_loaded,
        leader,
        d / 2,
        &from,
        &c,
    );
    let resume = restart_and_time_resume(&c, f, before);
    live.lock().unwrap().push(f);
    let (acked, failed, slowest) = load.finish();
    eprintln!(
        "one down: {acked} writes acknowledged, slowest {slowest} ms; replication resumed {resume:?} after the port opened"
    );
    assert!(
        failed.is_empty(),
        "writes failed with one follower down: {failed:?}"
    );
    assert!(
        resume.as_millis() <= RESUME_MS_MAX,
        "replication resumed after {resume:?}"
    );
    let status = c.status(leader);
    let peer = &status["peers"][f.to_string()];
    assert_eq!(peer["reachable"], true, "{status}");
    assert!(peer["failures_total"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(
        c.metric(
            leader,
            &format!("billdb_raft_peer_errors_total{{peer=\"{f}\",kind=\"unreachable\"}}")
        ) > 0.0,
        "no replication errors counted for node {f}"
    );
    c.wait_converged(&all, Duration::from_secs(60));

    // 2. Two down, one of them the leader: bounds on the other three.
    let old_leader = c.leader();
    let f2 = *all.iter().find(|n| **n != old_leader).unwrap();
    let three: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|n| *n != old_leader && *n != f2)
        .collect();
    let load = Load::start(&c, live.clone(), "two-down");
    std::thread::sleep(Duration::from_secs(2));
    c.c.stop(old_leader).unwrap();
    c.c.stop(f2).unwrap();
    live.lock().unwrap().retain(|n| three.contains(n));
    let new_leader = c.leader();
    assert!(three.contains(&new_leader));
    let from: BTreeMap<NodeId, u64> = three.iter().map(|n| (*n, log_len(&c, *n))).collect();
    let u = measure(&c, &three, d);
    // The baseline is the leader of five; this one sends to two followers.
    check_bounds(
        "leader and a follower down",
        &u,
        base_loaded,
        new_leader,
        d,
        &from,
        &c,
    );
    let status = c.status(new_leader);
    for gone in [old_leader, f2] {
        assert_eq!(
            status["peers"][gone.to_string()]["reachable"],
            false,
            "{status}"
        );
    }
    let before_old = matched(&c, new_leader, old_leader);
    let before_f2 = matched(&c, new_leader, f2);
    let r1 = restart_and_time_resume(&c, old_leader, before_old);
    let r2 = restart_and_time_resume(&c, f2, before_f2);
    live.lock().unwrap().extend([old_leader, f2]);
    let (acked, failed, slowest) = load.finish();
    eprintln!(
        "two down: {acked} writes acknowledged, slowest {slowest} ms; resumed {r1:?} and {r2:?}"
    );
    assert!(failed.is_empty(), "writes failed with two down: {failed:?}");
    assert!(
        r1.as_millis() <= RESUME_MS_MAX && r2.as_millis() <= RESUME_MS_MAX,
        "{r1:?} {r2:?}"
    );
    c.wait_converged(&all, Duration::from_secs(60));

    // 3. A node whose data directory is damaged cannot start; the others
    // must not pay for it while it stays down. (Damaged *contents* are
    // repaired from the peers: `corruption.rs`. Here the database's
    // directory itself is gone, replaced by a file: an I/O error at open,
    // and the node exits.)
    let leader = c.leader();
    let bad = *all.iter().find(|n| **n != leader).unwrap();
    let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != bad).collect();
    c.c.stop(bad).unwrap();
    live.lock().unwrap().retain(|n| *n != bad);
    let db = c.c.data_dir(bad).join("db");
    std::fs::rename(&db, db.with_extension("moved")).unwrap();
    std::fs::write(&db, b"not a database directory\n").unwrap();
    c.c.start(bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.c.is_running(bad) {
        assert!(
            Instant::now() < deadline,
            "node {bad} started on a damaged directory"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let load = Load::start(&c, live.clone(), "cannot-start");
    let from: BTreeMap<NodeId, u64> = rest.iter().map(|n| (*n, log_len(&c, *n))).collect();
    let u = measure(&c, &rest, d / 2);
    check_bounds(
        "a node that cannot start",
        &u,
        base_loaded,
        leader,
        d / 2,
        &from,
        &c,
    );
    let (acked, failed, _) = load.finish();
    assert!(
        failed.is_empty(),
        "writes failed with a node unable to start: {failed:?}"
    );
    assert!(acked > 0);
    c.wait_converged(&rest, Duration::from_secs(60));
}

/// Issue 20 item 7: a wiped node replaced by a fresh one, and a voter
/// removed and added back, catch up under load within 60 s with at most
/// two snapshot transfers each — with snapshots as frequent as the chaos
/// suite's (every 500 entries, 100 kept) and each install slowed to 4 s,
/// so the leader builds and purges past a snapshot while it is in flight.
#[test]
fn replaced_and_readded_nodes_catch_up_under_load_with_at_most_two_snapshots() {
    let raft = RaftTimings {
        snapshot_logs_since_last: Some(500),
        logs_to_keep_after_snapshot: Some(100),
        ..RaftTimings::default()
    };
    let c = Arc::new(TestCluster::start_with_env(
        32000,
        5,
        raft,
        &[("BILLDB_FAILPOINTS", "1")],
    ));
    open_load_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let live = Arc::new(Mutex::new(all.clone()));
    // Four writers as fast as they go: hundreds of entries a second, more
    // than a snapshot period (500) during one slowed install.
    let loads: Vec<Load> = (0..4)
        .map(|t| Load::start_paced(&c, live.clone(), &format!("w{t}"), Duration::ZERO))
        .collect();
    let index = |c: &TestCluster| c.status(c.leader())["last_log_index"].as_u64().unwrap_or(0);
    let (i0, t0) = (index(&c), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let entries_per_s = (index(&c) - i0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("load: {entries_per_s:.0} log entries/s");
    // Faster than a snapshot period per slowed install, or the test shows nothing.
    assert!(
        entries_per_s * 4.0 > 600.0,
        "the load makes only {entries_per_s:.0} entries/s"
    );

    let catch_up = |n: NodeId, installs_before: f64| -> (Duration, f64) {
        let t = Instant::now();
        loop {
            let leader = c.leader();
            let committed = c.status(leader)["committed_index"].as_u64().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(500));
            let applied = c.status(n)["applied_index"].as_u64().unwrap_or(0);
            if applied >= committed {
                let installs = c.metric(n, "billdb_snapshot_installs_total") - installs_before;
                return (t.elapsed(), installs);
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "node {n} did not catch up in 60 s: applied {applied}, committed {committed}; {} snapshot installs; leader {}",
                c.metric(n, "billdb_snapshot_installs_total") - installs_before,
                c.status(leader)
            );
        }
    };

    // Wipe-and-replace: the follower's data is lost; node 6 takes its place.
    let leader = c.leader();
    let victim = *all.iter().find(|n| **n != leader).unwrap();
    c.c.kill(victim).unwrap();
    c.c.wipe(victim).unwrap();
    live.lock().unwrap().retain(|n| *n != victim);
    std::thread::sleep(Duration::from_secs(3));
    c.http(leader).remove(victim).expect("remove wiped node");
    add_learner_with_fault(
        &c,
        6,
        billdb_api::failpoints::SNAPSHOT_INSTALL_DELAY_FILE,
        INSTALL_DELAY_MS,
    );
    let (took, installs) = catch_up(6, 0.0);
    eprintln!("replacement node 6 caught up in {took:?} with {installs} snapshot installs");
    assert!(installs >= 1.0, "node 6 caught up without a snapshot");
    assert!(
        installs <= 2.0,
        "node 6 needed {installs} snapshot installs"
    );
    let mut voters: Vec<NodeId> = all.iter().copied().filter(|n| *n != victim).collect();
    voters.push(6);
    c.http(c.leader())
        .change_membership(&voters)
        .expect("promote node 6");
    live.lock().unwrap().push(6);

    // Remove a voter (still running), let the log move past it, add it back.
    let leader = c.leader();
    let back = *voters.iter().find(|n| **n != leader && **n != 6).unwrap();
    live.lock().unwrap().retain(|n| *n != back);
    c.http(leader).remove(back).expect("remove voter");
    std::fs::write(
        c.c.data_dir(back)
            .join(billdb_api::failpoints::SNAPSHOT_INSTALL_DELAY_FILE),
        INSTALL_DELAY_MS,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let installs_before = c.metric(back, "billdb_snapshot_installs_total");
    let st = c.status(c.leader());
    let back_applied = c.status(back)["applied_index"].as_u64().unwrap_or(0);
    eprintln!(
        "re-adding node {back} at applied {back_applied}; leader snapshot {} purged {}",
        st["snapshot_index"], st["purged_index"]
    );
    // The log it needs is gone: it must come back by a snapshot.
    assert!(
        st["purged_index"].as_u64().unwrap_or(0) > back_applied,
        "{st}"
    );
    c.http(c.leader())
        .add_learner(&c.c.node(back).unwrap().addrs())
        .expect("add the removed voter back as a learner");
    let (took, installs) = catch_up(back, installs_before);
    eprintln!("re-added node {back} caught up in {took:?} with {installs} snapshot installs");
    assert!(
        installs <= 2.0,
        "node {back} needed {installs} snapshot installs"
    );
    c.http(c.leader())
        .change_membership(&voters)
        .expect("promote it again");
    live.lock().unwrap().push(back);

    let mut total = 0;
    for l in loads {
        let (acked, failed, _) = l.finish();
        assert!(failed.is_empty(), "writes failed: {failed:?}");
        total += acked;
    }
    assert!(total > 100, "only {total} writes under the load");
    c.wait_converged(&voters, Duration::from_secs(60));
}

/// Issue 20: a snapshot transfer that breaks off resumes where it stopped
/// rather than from zero. The leader's snapshot is built on demand (no
/// automatic one in between, so the same snapshot is sent again); the new
/// node's first transfer is broken off by a fault point after its first
/// chunk; the second carries only the rest, and the node installs once.
#[test]
fn interrupted_snapshot_transfer_resumes_where_it_stopped() {
    let raft = RaftTimings {
        logs_to_keep_after_snapshot: Some(50),
        ..RaftTimings::default()
    };
    let c = Arc::new(TestCluster::start_with_env(
        30500,
        5,
        raft,
        &[("BILLDB_FAILPOINTS", "1")],
    ));
    open_load_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let live = Arc::new(Mutex::new(all.clone()));
    let loads: Vec<Load> = (0..2)
        .map(|t| Load::start_paced(&c, live.clone(), &format!("r{t}"), Duration::ZERO))
        .collect();
    // Enough state for a snapshot file of more than one 1 MiB chunk.
    std::thread::sleep(Duration::from_secs(20));
    for l in loads {
        let (acked, failed, _) = l.finish();
        assert!(acked > 100 && failed.is_empty(), "{acked} {failed:?}");
    }
    let leader = c.leader();
    let victim = *all.iter().find(|n| **n != leader).unwrap();
    c.c.kill(victim).unwrap();
    c.c.wipe(victim).unwrap();
    c.http(leader).snapshot().expect("snapshot on the leader");
    // The purge follows the snapshot: the new node cannot catch up by log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status(leader)["purged_index"].as_u64().unwrap_or(0) < 100 {
        assert!(
            Instant::now() < deadline,
            "leader did not purge: {}",
            c.status(leader)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.http(leader).remove(victim).expect("remove wiped node");
    add_learner_with_fault(
        &c,
        6,
        billdb_api::failpoints::SNAPSHOT_RECEIVE_BREAK_FILE,
        "1",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = c.status(leader)["committed_index"].as_u64().unwrap_or(0);
        if c.status(6)["applied_index"].as_u64().unwrap_or(0) >= committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 6 did not catch up: {}",
            c.status(6)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let snap_bytes: u64 = std::fs::read_dir(c.c.data_dir(leader).join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .max()
        .expect("the leader wrote the snapshot file it sent");
    let resumed = c.metric(6, "billdb_snapshot_resumed_bytes_total");
    let received = c.metric(6, "billdb_snapshot_received_bytes_total");
    let installs = c.metric(6, "billdb_snapshot_installs_total");
    eprintln!(
        "snapshot {snap_bytes} B: received {received} B, resumed at {resumed} B, {installs} installs"
    );
    assert!(
        !c.c.data_dir(6)
            .join(billdb_api::failpoints::SNAPSHOT_RECEIVE_BREAK_FILE)
            .exists(),
        "the transfer was never broken off"
    );
    assert!(resumed > 0.0, "the second transfer started from zero");
    assert_eq!(received as u64, snap_bytes, "bytes were sent twice");
    assert_eq!(installs, 1.0);
    let mut voters: Vec<NodeId> = all.iter().copied().filter(|n| *n != victim).collect();
    voters.push(6);
    c.wait_converged(&voters, Duration::from_secs(60));
}
