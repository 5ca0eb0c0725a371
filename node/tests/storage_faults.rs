//! Storage that fails under a running node, against real processes: a
//! follower whose WAL fsync returns an error (through the node's fault
//! point), a follower whose data directory sits on a small filesystem
//! (a tmpfs this test mounts) that fills up under load, and a leader whose
//! fsyncs hang. Each time the node
//! must stop trusting its storage (Raft core stopped, never an fsync
//! retried), be fenced (not ready, requests refused with UNAVAILABLE and the
//! reason), leave the other four serving, restart itself once its disk is
//! usable, catch up, and lose nothing acknowledged.
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): bases
//! 15000, 15500 and 13000. The disk-full test mounts a tmpfs, so it runs as root
//! (as the test command does).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billdb_client::local::RaftTimings;
use common::*;

/// Size of the filesystem the disk-full test puts a follower's data on.
const SMALL_FS_BYTES: u64 = 512 << 20;
/// How long a node may take to notice its storage failed.
const FENCE_WITHIN: Duration = Duration::from_secs(60);
/// How long a node may take to restart itself once its disk is usable.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

/// A five-node cluster whose nodes have their fault points on.
fn start_with_failpoints(base_port: u16) -> Arc<TestCluster> {
    Arc::new(TestCluster::start_with_env(
        base_port,
        5,
        RaftTimings::default(),
        &[(billdb_api::failpoints::ENV, "1")],
    ))
}

/// The node is back: storage ok, ready, and it has applied what the
/// leader committed.
fn wait_recovered(c: &TestCluster, n: NodeId) {
    wait_for("node recovered and ready", RECOVER_WITHIN, || {
        let s = try_status(c, n)?;
        (s["storage"]["state"] == "ok" && c.http(n).get("/readyz").is_ok()).then_some(())
    });
}

/// Issue 22: an fsync that fails is never retried; the node stops, restarts
/// itself from what is on disk, catches up, and nothing acknowledged is lost.
#[test]
fn a_follower_whose_fsync_fails_stops_and_restarts_itself_losing_nothing() {
    let c = start_with_failpoints(15000);
    open_load_accounts(&c);
    let (_, victim, others) = pick_follower(&c);
    let live = Arc::new(Mutex::new(others.clone()));
    let load = Load::start_paced(&c, live, "eio", Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));

    let pid = c.c.pid(victim).expect("victim running");
    let log_from = log_len(&c, victim);
    let fault =
        c.c.data_dir(victim)
            .join(billdb_api::failpoints::FSYNC_ERROR_FILE);
    std::fs::write(&fault, b"").expect("arm the fsync fault point");

    // The node fails on its next fsync, is fenced, and restarts itself:
    // its log tells each step, in order.
    let log = wait_for(
        "fsync failure, fence and restart logged",
        FENCE_WITHIN,
        || {
            let log = log_since(&c, victim, log_from);
            let restarted = log
                .find("restarting this node to recover")
                .and_then(|at| log[at..].find("billdb-node serving"));
            restarted.map(|_| log)
        },
    );
    assert!(!fault.exists(), "the fault point fired once");
    let fsync_at = log.find("WAL fsync failed").expect("fsync failure logged");
    let fenced_at = log.find("storage failed").expect("fence logged");
    assert!(fsync_at < fenced_at, "{log}");
    assert!(log[fenced_at..].contains("io_error"), "{log}");
    assert_eq!(
        c.c.pid(victim),
        Some(pid),
        "restarted in place (same process id)"
    );
    wait_recovered(&c, victim);

    let (acked, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(acked > 20, "too few writes: {acked}");
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    let per = acked_per_account(&c, "eio", acked);
    assert_balances(&c, &all, &per);
}

/// `umount -l` on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = std::process::Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

/// Fills the filesystem holding `dir` with a ballast file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("ballast");
    let chunk = vec![0xA5u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk too, down to the last block.
    let small = vec![0xA5u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

/// Appends to the ballast until the filesystem is full again.
fn top_up(ballast: &Path) {
    use std::io::Write;
    let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(ballast) else {
        return;
    };
    let small = vec![0xA5u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

/// Issue 22: a follower's disk fills under load. The other four keep
/// serving; the full node refuses with UNAVAILABLE and the reason, reports
/// not ready, and stays fenced while its disk is full; once space is freed
/// it restarts itself, catches up, and nothing acknowledged is lost.
#[test]
fn a_follower_whose_disk_fills_fails_safe_and_recovers_when_space_returns() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test mounts a tmpfs and must run as root (the test command does: deploy/test.sh)"
    );
    let c = Arc::new(TestCluster::start(15500, 5));
    open_load_accounts(&c);
    let (_, victim, others) = pick_follower(&c);

    // The victim's data directory moves onto a small filesystem.
    c.c.stop(victim).expect("stop victim");
    let data = c.c.data_dir(victim);
    let old = data.with_extension("old");
    std::fs::rename(&data, &old).expect("move data aside");
    std::fs::create_dir(&data).expect("mount point");
    let size = format!("size={SMALL_FS_BYTES}");
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &size,
            "tmpfs",
            data.to_str().expect("utf-8 path"),
        ],
    );
    let _mount = Mount(data.clone());
    run(
        "cp",
        &[
            "-a",
            &format!("{}/.", old.display()),
            data.to_str().expect("utf-8 path"),
        ],
    );
    c.c.start(victim).expect("start victim");
    c.c.wait_healthy(victim, Duration::from_secs(30))
        .expect("victim healthy");

    let live = Arc::new(Mutex::new(others.clone()));
    let load = Load::start_paced(&c, live, "full", Duration::from_millis(20));
    c.wait_converged(&c.c.node_ids(), Duration::from_secs(60));

    // Fill it. RocksDB may still have room in a preallocated WAL or
    // memtable, so the load alone may take long to need a new block: each
    // round tops the ballast up (space a deleted file freed) and asks the
    // node for a snapshot, whose flush needs new blocks, until it fences.
    let ballast = fill(&data);
    let ops = c.c.token("ops").expect("token");
    let deadline = std::time::Instant::now() + FENCE_WITHIN;
    let st = loop {
        if let Some(st) = try_status(&c, victim).filter(|s| s["storage"]["state"] == "failed") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the full node was not fenced within {FENCE_WITHIN:?}; its log:\n{}",
            log_since(&c, victim, log_len(&c, victim).saturating_sub(8_000))
        );
        top_up(&ballast);
        if let Ok(h) = c.c.http_client(victim, Duration::from_secs(2)) {
            let _ = h
                .with_token(Some(ops.clone()))
                .post("/v1/cluster/snapshot", &serde_json::json!({}));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(st["storage"]["kind"], "disk_full", "{st:#}");

    // Fenced: not ready, writes and reads refused with the reason.
    let e = c.http(victim).get("/readyz").expect_err("not ready");
    assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");
    assert!(e.to_string().contains("disk_full"), "{e}");
    let e = pay(&c.http(victim), "to-the-full-node", "OUT-0", "1.00").expect_err("refused");
    assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");
    assert!(e.to_string().contains("disk_full"), "{e}");
    let e = c
        .http(victim)
        .get("/v1/accounts/OUT-0")
        .expect_err("read refused");
    assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");

    // The other four go on, and the node stays fenced while the disk is full.
    let before = load_acked(&c, "full");
    std::thread::sleep(Duration::from_secs(5));
    let after = load_acked(&c, "full");
    assert!(after > before + 10, "writes stalled: {before} -> {after}");
    let st = try_status(&c, victim).expect("fenced node answers status");
    assert_eq!(st["storage"]["state"], "failed", "{st:#}");
    assert!(st["storage"]["probes"].as_u64().unwrap_or(0) >= 3, "{st:#}");

    // Space returns: it restarts itself and catches up.
    let log_from = log_len(&c, victim);
    std::fs::remove_file(&ballast).expect("free the space");
    wait_recovered(&c, victim);
    assert!(
        log_since(&c, victim, log_from).contains("restarting this node to recover"),
        "restarted by itself"
    );

    let (acked, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    // The refused payment was never written.
    assert!(outcome(&c, c.leader(), "to-the-full-node").is_none());
    let per = acked_per_account(&c, "full", acked);
    assert_balances(&c, &all, &per);
}

/// How many of the load's payments the leader has recorded so far: the
/// highest `prefix-i` with an outcome (the load is sequential).
fn load_acked(c: &TestCluster, prefix: &str) -> u64 {
    let leader = c.leader();
    let (mut lo, mut hi) = (0u64, 1u64);
    while outcome(c, leader, &format!("{prefix}-{hi}")).is_some() {
        lo = hi;
        hi *= 2;
    }
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if outcome(c, leader, &format!("{prefix}-{mid}")).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Issue 22: the leader's WAL fsyncs hang for 5 s under a write load. It
/// sends entries to the followers before its own fsync
/// (`raft.replicate_before_local_fsync`), so four followers still make a
/// quorum and no write waits for the stalled disk: every write of the
/// load (sequential, through every node) is acknowledged within 1 s.
#[test]
fn writes_go_on_while_the_leaders_and_a_followers_fsyncs_hang() {
    let c = start_with_failpoints(13000);
    open_load_accounts(&c);
    let leader = c.leader();
    let live = Arc::new(Mutex::new(c.c.node_ids()));
    std::thread::sleep(Duration::from_secs(1));
    let load = Load::start_paced(&c, live, "stall", Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(1));
    c.c.hold_fsyncs(leader).expect("hold the leader's fsyncs");
    // A follower's disk stalls too (three still sync: writes go on).
    let follower =
        *c.c.node_ids()
            .iter()
            .find(|n| **n != leader)
            .expect("a follower");
    c.c.hold_fsyncs(follower).expect("hold a follower's fsyncs");
    let held_from = load_acked(&c, "stall");
    // Both report themselves degraded (status and metric) while stalled.
    for n in [leader, follower] {
        let st = wait_for("degraded reported", Duration::from_secs(3), || {
            try_status(&c, n).filter(|s| s["storage"]["degraded_fsync_ms"].as_u64() > Some(500))
        });
        assert_eq!(st["storage"]["state"], "ok", "stalled, not failed: {st:#}");
        wait_for("degraded metric", Duration::from_secs(2), || {
            (c.metric(n, "billdb_storage_degraded") == 1.0).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(4));
    let held_to = load_acked(&c, "stall");
    c.c.release_fsyncs(leader).expect("release");
    c.c.release_fsyncs(follower).expect("release");
    for n in [leader, follower] {
        wait_for("degraded cleared", Duration::from_secs(3), || {
            try_status(&c, n).filter(|s| s["storage"]["degraded_fsync_ms"].is_null())
        });
        wait_for("degraded metric cleared", Duration::from_secs(2), || {
            (c.metric(n, "billdb_storage_degraded") == 0.0).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let (acked, failed, slowest_ms) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(
        held_to > held_from + 20,
        "writes stalled with the leader's disk: {held_from} -> {held_to}"
    );
    assert!(
        slowest_ms <= 1_000,
        "a write took {slowest_ms} ms (target: 1 s) while the leader's fsyncs hung"
    );
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    let per = acked_per_account(&c, "stall", acked);
    assert_balances(&c, &all, &per);
}
