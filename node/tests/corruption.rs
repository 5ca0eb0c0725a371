//! Damaged replicas repair themselves from their peers, against real
//! processes and real RocksDB files (issue 22): bytes flipped in a
//! follower's SST file while it is stopped (found by the background scrub
//! after it starts), in the running leader's (found by an on-demand scrub:
//! it hands leadership over first), and in two followers at once (the
//! other three serve throughout). Each time the damaged node must be
//! fenced (its requests answered UNAVAILABLE, never INTERNAL, never with
//! data), rebuild itself from the leader without operator action, keep the
//! damaged files aside, vote again only once caught up, and end with the
//! same digest as the others; nothing acknowledged is lost.
//!
//! A follower whose database will not even open (its MANIFEST damaged)
//! repairs itself the same way instead of exiting at every start.
//!
//! A damaged node is rebuilt only while a quorum without it answers the
//! leader: with two other nodes down it stays fenced and says why, and
//! repairs once they return.
//!
//! A Raft log entry whose bytes changed while RocksDB's own checksums still
//! pass (a bit flipped in memory before the write, a misdirected write)
//! fails its CRC-32: the follower fences itself, restarts, cuts its log at
//! the entry and fetches the rest again, voting only once it holds again
//! every index it held before.
//!
//! An operator can ask for the same rebuild (`POST /v1/node/repair`, the
//! `billdb node repair` command) for a disk no longer trusted: refused with
//! nothing changed for a wrong role, bad input or without a quorum that
//! answers without the node; accepted, the node rebuilds under load and
//! loses nothing.
//!
//! A leader that reads a damaged block while executing a write a follower
//! forwarded fences only itself: the follower passes UNAVAILABLE on and
//! stays healthy (chaos seed 20261205 fenced three healthy followers).
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): bases
//! 9000, 11000, 11500, 12500, 13500, 14500, 18500 and 23500 (below the
//! kernel's ephemeral range, 32768 and up, where an outgoing connection
//! may hold a port first).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billdb_client::local::RaftTimings;
use common::*;

/// How long a damaged node may take from its start (or the damage) to be
/// repaired, ready and caught up.
const REPAIR_WITHIN: Duration = Duration::from_secs(90);
/// The family whose largest SST file is damaged: payment records, written
/// by every payment and read only by record listings, so its data blocks
/// are not in the block cache when the damage happens.
const DAMAGED_FAMILY: &str = "records";
/// An SST smaller than this holds too little to damage meaningfully.
const SST_BYTES_MIN: u64 = 8 << 10;

fn start(base_port: u16, scrub_interval_s: &str) -> Arc<TestCluster> {
    let c = Arc::new(TestCluster::start_with_env(
        base_port,
        5,
        RaftTimings::default(),
        &[("BILLDB_SCRUB_INTERVAL_S", scrub_interval_s)],
    ));
    open_load_accounts(&c);
    c
}

/// How often `largest_sst` tries to open a running node's database.
const READ_ONLY_OPEN_ATTEMPTS: u32 = 20;

/// The largest live SST file of `family` in a node's database, read from
/// the database's own manifest (opened read-only: the node may be running).
/// A compaction the running node finishes while the manifest is read can
/// delete a file it names ("No such file"): the open is tried again.
fn largest_sst(data_dir: &Path, family: &str) -> (PathBuf, u64) {
    let db_dir = data_dir.join("db");
    let opts = rocksdb::Options::default();
    let mut attempt = 1;
    let db = loop {
        let names = rocksdb::DB::list_cf(&opts, &db_dir).expect("list column families");
        match rocksdb::DB::open_cf_for_read_only(&opts, &db_dir, &names, false) {
            Ok(db) => break db,
            Err(e)
                if attempt < READ_ONLY_OPEN_ATTEMPTS && e.to_string().contains("No such file") =>
            {
                eprintln!("open read-only, attempt {attempt}: {e}");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("open read-only {}: {e}", db_dir.display()),
        }
    };
    let files = db.live_files().expect("live files");
    let f = files
        .iter()
        .filter(|f| f.column_family_name == family)
        .max_by_key(|f| f.size)
        .unwrap_or_else(|| panic!("no SST file of {family} in {}", db_dir.display()));
    let path = db_dir.join(f.name.trim_start_matches('/'));
    (path, f.size as u64)
}

/// Flips 3 × 64 bytes at 10 %, 30 % and 50 % of the file (data blocks;
/// the index and footer sit at the end).
fn flip(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the SST");
    let len = f.metadata().expect("metadata").len();
    for pct in [10u64, 30, 50] {
        let at = len * pct / 100;
        let mut buf = [0u8; 64];
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.read_exact(&mut buf).expect("read");
        for b in &mut buf {
            *b ^= 0xFF;
        }
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&buf).expect("write");
    }
    f.sync_all().expect("sync");
}

/// Fills the cluster through a fast load for `secs`, then builds a
/// snapshot on `nodes` (a checkpoint: every memtable flushed to SSTs).
fn fill_and_flush(c: &Arc<TestCluster>, nodes: &[NodeId], secs: u64) -> Load {
    let live = Arc::new(Mutex::new(c.c.node_ids()));
    let load = Load::start_paced(c, live, "fill", Duration::ZERO);
    std::thread::sleep(Duration::from_secs(secs));
    for n in nodes {
        c.http(*n)
            .post("/v1/cluster/snapshot", &serde_json::json!({}))
            .expect("snapshot");
    }
    load
}

/// Reads from `node` until stopped; every error code seen.
struct Reader {
    stop: Arc<AtomicBool>,
    codes: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(c: &Arc<TestCluster>, node: NodeId) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let codes = Arc::new(Mutex::new(Vec::new()));
        let (c, s, k) = (c.clone(), stop.clone(), codes.clone());
        let handle = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let a = format!("OUT-{}", i % LOAD_ACCOUNTS);
                for path in [
                    format!("/v1/accounts/{a}"),
                    format!("/v1/accounts/{a}/records?limit=50"),
                ] {
                    if let Err(e) = c.http(node).get(&path) {
                        k.lock()
                            .unwrap()
                            .push(e.code().unwrap_or("(no answer)").to_string());
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Reader {
            stop,
            codes,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("reader thread");
        }
        self.codes.lock().unwrap().clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The node repaired itself: its log tells detection, the leader's grant
/// and the new database; it is ready with storage ok and no vote fence; the
/// damaged database is kept aside with the reason.
fn assert_repaired(c: &TestCluster, n: NodeId, log_from: u64, damaged_file: &str) {
    assert_rebuilt(
        c,
        n,
        log_from,
        "storage corruption",
        damaged_file,
        "Corruption",
    );
}

/// [`assert_repaired`] for any cause: `started` is logged first, followed
/// by `named`; the kept reason contains `reason`.
fn assert_rebuilt(
    c: &TestCluster,
    n: NodeId,
    log_from: u64,
    started: &str,
    named: &str,
    reason: &str,
) {
    wait_for("repair done (vote fence lifted)", REPAIR_WITHIN, || {
        log_since(c, n, log_from)
            .contains("this node votes again")
            .then_some(())
    });
    wait_for(
        "repaired node ready, storage ok, voting",
        REPAIR_WITHIN,
        || {
            let s = try_status(c, n)?;
            (s["storage"]["state"] == "ok"
                && s["storage"]["vote_fence_index"].is_null()
                && c.http(n).get("/readyz").is_ok())
            .then_some(())
        },
    );
    let log = log_since(c, n, log_from);
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("node {n}: {what:?} not logged:\n{log}"))
    };
    let found = at(started);
    let granted = at("repair granted");
    let aside = at("the damaged database was moved aside");
    let voting = at("this node votes again");
    assert!(
        found < granted && granted < aside && aside < voting,
        "{log}"
    );
    assert!(log[found..].contains(named), "{named:?} is named: {log}");
    let damaged = c.c.data_dir(n).join("damaged");
    let kept: Vec<PathBuf> = std::fs::read_dir(&damaged)
        .expect("damaged databases kept")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("db").is_dir(), "the damaged database is kept");
    let kept_reason = std::fs::read_to_string(kept[0].join("reason.txt")).expect("reason");
    assert!(kept_reason.contains(reason), "{kept_reason}");
}

/// Finish the load and check every replica: no write failed, digests
/// equal, balances = acknowledged payments.
fn assert_nothing_lost(c: &TestCluster, load: Load) {
    let (acked, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(acked > 100, "too few writes: {acked}");
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    let per = acked_per_account(c, "fill", acked);
    assert_balances(c, &all, &per);
}

/// Reads from the damaged node got data or UNAVAILABLE: never INTERNAL.
fn assert_no_internal(codes: &[String]) {
    assert!(
        !codes.iter().any(|c| c == "INTERNAL"),
        "a client got INTERNAL from the damaged node: {codes:?}"
    );
}

#[test]
fn a_follower_with_a_damaged_sst_is_fenced_and_repairs_itself_from_its_peers() {
    let c = start(11000, "3");
    let (_, victim, _) = pick_follower(&c);
    let load = fill_and_flush(&c, &[victim], 8);

    c.c.stop(victim).expect("stop the follower");
    let (sst, size) = largest_sst(&c.c.data_dir(victim), DAMAGED_FAMILY);
    assert!(
        size >= SST_BYTES_MIN,
        "{} is only {size} bytes",
        sst.display()
    );
    flip(&sst);
    let log_from = log_len(&c, victim);
    let started = Instant::now();
    c.c.start(victim).expect("start the damaged follower");
    let reader = Reader::start(&c, victim);

    // Found by the scrub (or the first read) and fenced within 10 s.
    wait_for("corruption found", Duration::from_secs(10), || {
        log_since(&c, victim, log_from)
            .contains("storage corruption")
            .then_some(())
    });
    assert_repaired(&c, victim, log_from, ".sst");
    eprintln!("repaired in {:?}", started.elapsed());
    assert_no_internal(&reader.finish());
    assert_nothing_lost(&c, load);
}

#[test]
fn a_leader_with_a_damaged_sst_hands_over_and_repairs_itself() {
    // No background scrub: the damage is found by the on-demand scrub,
    // while the node leads.
    let c = start(11500, "0");
    let leader = c.leader();
    let load = fill_and_flush(&c, &[leader], 8);
    let (sst, size) = largest_sst(&c.c.data_dir(leader), DAMAGED_FAMILY);
    assert!(
        size >= SST_BYTES_MIN,
        "{} is only {size} bytes",
        sst.display()
    );
    let log_from = log_len(&c, leader);
    flip(&sst);
    let reader = Reader::start(&c, leader);

    let e = c
        .http(leader)
        .post("/v1/cluster/scrub", &serde_json::json!({}))
        .expect_err("the scrub finds the damage");
    assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");
    assert!(e.to_string().contains("corruption"), "{e}");

    // Another node leads within a second or two: the damaged one handed over.
    let others: Vec<NodeId> =
        c.c.node_ids()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
    let new_leader = wait_for("another leader", Duration::from_secs(5), || {
        others.iter().find_map(|n| {
            let s = try_status(&c, *n)?;
            let l = s["leader_id"].as_u64()?;
            (l != leader).then_some(l)
        })
    });
    assert_ne!(new_leader, leader);
    assert_repaired(&c, leader, log_from, ".sst");
    let log = log_since(&c, leader, log_from);
    let found = log.find("storage corruption").expect("corruption logged");
    let handed = log
        .find("handing leadership")
        .expect("leadership handed over");
    assert!(found < handed, "{log}");
    assert_no_internal(&reader.finish());
    assert_nothing_lost(&c, load);
}

#[test]
fn two_damaged_followers_repair_while_the_other_three_serve() {
    let c = start(12500, "3");
    let leader = c.leader();
    let victims: Vec<NodeId> =
        c.c.node_ids()
            .into_iter()
            .filter(|n| *n != leader)
            .take(2)
            .collect();
    let load = fill_and_flush(&c, &victims, 8);
    let mut from = Vec::new();
    for v in &victims {
        c.c.stop(*v).expect("stop");
        let (sst, size) = largest_sst(&c.c.data_dir(*v), DAMAGED_FAMILY);
        assert!(
            size >= SST_BYTES_MIN,
            "{} is only {size} bytes",
            sst.display()
        );
        flip(&sst);
        from.push(log_len(&c, *v));
    }
    for v in &victims {
        c.c.start(*v).expect("start");
    }
    for (v, f) in victims.iter().zip(&from) {
        assert_repaired(&c, *v, *f, ".sst");
    }
    assert_nothing_lost(&c, load);
}

/// The MANIFEST the database's CURRENT file names.
fn current_manifest(data_dir: &Path) -> PathBuf {
    let db = data_dir.join("db");
    let name = std::fs::read_to_string(db.join("CURRENT")).expect("CURRENT");
    db.join(name.trim())
}

#[test]
fn a_follower_whose_database_will_not_open_repairs_itself() {
    let c = start(13500, "3");
    let (_, victim, _) = pick_follower(&c);
    let load = fill_and_flush(&c, &[victim], 4);
    c.c.stop(victim).expect("stop the follower");
    flip(&current_manifest(&c.c.data_dir(victim)));
    let log_from = log_len(&c, victim);
    c.c.start(victim).expect("start the damaged follower");
    wait_for(
        "open refused as corruption",
        Duration::from_secs(10),
        || {
            log_since(&c, victim, log_from)
                .contains("fails its checksums at open")
                .then_some(())
        },
    );
    assert_repaired(&c, victim, log_from, "MANIFEST");
    assert_nothing_lost(&c, load);
}

#[test]
fn a_damaged_node_waits_for_a_quorum_without_it_before_it_is_rebuilt() {
    let c = start(9000, "3");
    let leader = c.leader();
    let followers: Vec<NodeId> =
        c.c.node_ids()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
    let (victim, down) = (followers[0], [followers[1], followers[2]]);
    let load = fill_and_flush(&c, &[victim], 4);
    let (acked_before, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    for n in down {
        c.c.stop(n).expect("stop");
    }
    c.c.stop(victim).expect("stop the victim");
    let (sst, _) = largest_sst(&c.c.data_dir(victim), DAMAGED_FAMILY);
    flip(&sst);
    let log_from = log_len(&c, victim);
    c.c.start(victim).expect("start the damaged node");

    // Fenced, and waiting: rebuilding it now could lose data (the leader
    // and one follower are all that answer without it).
    let st = wait_for("fenced and waiting", Duration::from_secs(20), || {
        let s = try_status(&c, victim)?;
        let repair = s["storage"]["repair"].as_str()?.to_string();
        (s["storage"]["kind"] == "corruption" && repair.starts_with("waiting")).then_some(s)
    });
    std::thread::sleep(Duration::from_secs(6));
    let st2 = try_status(&c, victim).expect("status");
    assert_eq!(st2["storage"]["state"], "failed", "{st2:#}");
    assert!(
        st2["storage"]["repair"]
            .as_str()
            .is_some_and(|r| r.starts_with("waiting")),
        "{st:#}\n{st2:#}"
    );
    let e = c.http(victim).get("/readyz").expect_err("not ready");
    assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");
    assert!(!log_since(&c, victim, log_from).contains("repair granted"));

    // The two return: a quorum without the victim answers, and it is rebuilt.
    for n in down {
        c.c.start(n).expect("restart");
    }
    assert_repaired(&c, victim, log_from, ".sst");
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));
    let per = acked_per_account(&c, "fill", acked_before);
    assert_balances(&c, &all, &per);
}

/// Changes one byte of the stored value of a Raft log entry in the middle
/// of the stopped node's log, through RocksDB itself (so every RocksDB
/// checksum is right and only the entry's own CRC can tell); the index.
fn damage_raft_log_entry(data_dir: &Path) -> (u64, Vec<u64>) {
    use billdb_node::store::{CF_RAFT_LOG, open_db};
    let db = open_db(&data_dir.join("db")).expect("open the stopped node's database");
    let log = db.cf_handle(CF_RAFT_LOG).expect("raft_log family");
    let held: Vec<u64> = db
        .iterator_cf(log, rocksdb::IteratorMode::Start)
        .map(|i| u64::from_be_bytes(i.expect("read").0.as_ref().try_into().expect("8 bytes")))
        .collect();
    assert!(
        held.len() >= 20,
        "the log holds only {} entries",
        held.len()
    );
    let index = held[held.len() / 2];
    let mut v = db
        .get_cf(log, index.to_be_bytes())
        .expect("get")
        .expect("held");
    let last = v.len() - 1;
    v[last] ^= 0x01;
    db.put_cf(log, index.to_be_bytes(), v).expect("put");
    db.flush_wal(true).expect("sync");
    (index, held)
}

#[test]
fn a_follower_with_a_damaged_raft_log_entry_cuts_its_log_and_fetches_it_again() {
    let c = start(18500, "2");
    let (_, victim, _) = pick_follower(&c);
    let live = Arc::new(Mutex::new(c.c.node_ids()));
    let load = Load::start_paced(&c, live, "fill", Duration::ZERO);
    std::thread::sleep(Duration::from_secs(6));

    c.c.stop(victim).expect("stop the follower");
    let (damaged, held) = damage_raft_log_entry(&c.c.data_dir(victim));
    let last_before = *held.last().expect("entries");
    let log_from = log_len(&c, victim);
    c.c.start(victim).expect("start the damaged follower");
    let reader = Reader::start(&c, victim);

    // The scrub finds it, the node restarts and cuts its log there.
    let found = format!("Raft log entry {damaged} is damaged");
    wait_for("damaged entry found", Duration::from_secs(10), || {
        log_since(&c, victim, log_from)
            .contains(&found)
            .then_some(())
    });
    let started = Instant::now();
    while !log_since(&c, victim, log_from).contains("this node votes again") {
        assert!(
            started.elapsed() < REPAIR_WITHIN,
            "node {victim}: log not cut and fetched again within {REPAIR_WITHIN:?}:\n{}",
            log_since(&c, victim, log_from)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = wait_for("ready, storage ok, voting", REPAIR_WITHIN, || {
        let s = try_status(&c, victim)?;
        (s["storage"]["state"] == "ok"
            && s["storage"]["vote_fence_index"].is_null()
            && c.http(victim).get("/readyz").is_ok())
        .then_some(s)
    });
    let cut = &s["storage"]["log_truncation"];
    assert_eq!(cut["from_index"], damaged, "{s:#}");
    assert!(
        cut["last_index_before"]
            .as_u64()
            .is_some_and(|l| l >= last_before),
        "{s:#}"
    );
    assert!(
        cut["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CRC-32 does not match")),
        "{s:#}"
    );
    assert!(
        s["last_log_index"]
            .as_u64()
            .is_some_and(|l| l >= last_before),
        "the log holds again every index it held: {s:#}"
    );
    let log = log_since(&c, victim, log_from);
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what:?} not logged:\n{log}"))
    };
    assert!(
        at(&found) < at("the log was cut there")
            && at("the log was cut there") < at("this node votes again"),
        "{log}"
    );
    assert!(
        !log.contains("storage corruption"),
        "an entry's own CRC cuts the log; it does not rebuild the database: {log}"
    );
    assert_no_internal(&reader.finish());
    assert_nothing_lost(&c, load);
}

#[test]
fn an_operator_rebuilds_a_follower_from_its_peers_only_when_that_is_safe() {
    let c = start(14500, "0");
    let leader = c.leader();
    let followers: Vec<NodeId> =
        c.c.node_ids()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
    let (victim, others) = (followers[0], [followers[1], followers[2]]);
    let repair = |body: serde_json::Value| c.http(victim).post("/v1/node/repair", &body);
    let untouched = |why: &str| {
        let s = try_status(&c, victim).expect("status");
        assert_eq!(s["storage"]["state"], "ok", "{why}: {s:#}");
        assert!(c.http(victim).get("/readyz").is_ok(), "{why}: still ready");
        assert!(!c.c.data_dir(victim).join("damaged").exists(), "{why}");
    };

    // A role other than ops, unknown fields and an overlong reason are
    // refused, and nothing changes.
    let e = c
        .http_as(victim, "auditor")
        .post("/v1/node/repair", &serde_json::json!({}))
        .expect_err("an auditor may not repair");
    assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{e}");
    let e = repair(serde_json::json!({"reason": "x".repeat(201)})).expect_err("too long");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    let e = repair(serde_json::json!({"force": true})).expect_err("unknown field");
    assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{e}");
    untouched("bad requests");

    // With two other followers down, only the leader and one follower
    // answer without the victim: rebuilding it could lose data. Refused.
    let load = fill_and_flush(&c, &[], 3);
    let (acked_before, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    for n in others {
        c.c.stop(n).expect("stop");
    }
    let log_from = log_len(&c, victim);
    let e = wait_for(
        "refused for want of a quorum",
        Duration::from_secs(15),
        || match repair(serde_json::json!({"reason": "drill"})) {
            Err(e) if e.code() == Some("NO_QUORUM") => Some(e),
            _ => None,
        },
    );
    assert!(e.to_string().contains("nothing changed"), "{e}");
    untouched("no quorum without the victim");
    assert!(!log_since(&c, victim, log_from).contains("repair granted"));
    for n in others {
        c.c.start(n).expect("restart");
    }
    c.c.wait_all_healthy(Duration::from_secs(30))
        .expect("the two are back");
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(60));

    // Accepted under load: fenced at once, rebuilt, nothing lost.
    let live = Arc::new(Mutex::new(c.c.node_ids()));
    let load = Load::start_paced(&c, live, "more", Duration::ZERO);
    std::thread::sleep(Duration::from_secs(2));
    let log_from = log_len(&c, victim);
    let reason = "disk controller replaced";
    let v = wait_for("repair accepted", Duration::from_secs(30), || {
        repair(serde_json::json!({"reason": reason})).ok()
    });
    assert_eq!(v["state"], "repairing", "{v}");
    assert_eq!(v["node_id"], victim, "{v}");
    assert_eq!(v["leader_id"], leader, "{v}");
    // Asked again while it repairs: the same answer, nothing new started.
    if let Ok(again) = repair(serde_json::json!({})) {
        assert_eq!(again["state"], "repairing", "{again}");
    }
    assert_rebuilt(
        &c,
        victim,
        log_from,
        "an operator asked for this node's repair",
        reason,
        "repair requested by an operator",
    );
    let s = c.status(victim);
    assert!(
        s["storage"]["last_repair"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(reason)),
        "{s:#}"
    );
    assert_eq!(s["storage"]["last_repair"]["leader_id"], leader, "{s:#}");
    let (acked, failed, _) = load.finish();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    c.wait_converged(&all, Duration::from_secs(60));
    let per: Vec<u64> = acked_per_account(&c, "fill", acked_before)
        .into_iter()
        .zip(acked_per_account(&c, "more", acked))
        .map(|(a, b)| a + b)
        .collect();
    assert_balances(&c, &all, &per);
}

/// Accounts imported and never read afterwards, so the blocks that hold
/// them are read from disk (checksums checked) by the first write to them.
const COLD_ACCOUNTS: usize = 4000;

/// Imports `COLD-00000..` (heat accounts with a balance) through the leader.
fn import_cold_accounts(c: &TestCluster) {
    let ops = c.http(c.leader());
    for k in 0..COLD_ACCOUNTS / 1000 {
        let accounts: Vec<serde_json::Value> = (k * 1000..(k + 1) * 1000)
            .map(|i| {
                serde_json::json!({"account_id": format!("COLD-{i:05}"), "name": "Cold",
                    "address": "", "branch": "B01", "utility": "heat", "meter_id": "",
                    "tariff_id": "", "area": "0", "status": "active", "balance": "10.00",
                    "opened_ms": 1_000_000_000_000i64, "closed_ms": null, "card_no": null,
                    "card_generation": 0})
            })
            .collect();
        let imp = ops
            .post(
                "/v1/import",
                &serde_json::json!({"request_id": format!("cold-{k}"), "accounts": accounts, "records": []}),
            )
            .expect("import");
        assert_eq!(imp["accounts"], 1000, "{imp}");
    }
}

/// Chaos seed 20261205: the leader hit a checksum failure and every
/// follower that forwarded a write to it got the leader's INTERNAL answer,
/// with RocksDB's "Corruption: block checksum mismatch" in it, took that for
/// its own storage, and fenced itself: three healthy nodes out, no quorum.
/// Here the leader reads a damaged block of its own while executing
/// payments that a follower forwarded. The leader fences itself (it did
/// not: a checksum failure met serving a forwarded write was answered as
/// INTERNAL, for as long as it led, and no payment to a damaged block
/// went through) and hands over; no client ever gets INTERNAL; the
/// follower and the others stay healthy (no corruption logged, storage
/// ok, voting); only the leader repairs; every payment, retried with its
/// request_id, is applied once.
#[test]
fn a_follower_forwarding_to_a_leader_that_hits_a_damaged_block_stays_healthy() {
    let c = start(23500, "0");
    import_cold_accounts(&c);
    let all = c.c.node_ids();
    c.wait_converged(&all, Duration::from_secs(30));
    // Every node's memtables into SSTs, then a restart of all five: no
    // block cache and no executor read cache holds a cold account.
    for n in &all {
        c.http(*n)
            .post("/v1/cluster/snapshot", &serde_json::json!({}))
            .expect("snapshot");
    }
    for n in &all {
        c.c.stop(*n).expect("stop");
    }
    for n in &all {
        c.c.start(*n).expect("start");
    }
    // A leader every node follows, and still the same a moment later (a
    // restarted node may start an election of its own).
    let agreed = || {
        let l = c.leader();
        all.iter()
            .all(|n| try_status(&c, *n).is_some_and(|s| s["leader_id"] == l))
            .then_some(l)
    };
    let leader = wait_for("an agreed leader", Duration::from_secs(30), || {
        let l = agreed()?;
        std::thread::sleep(Duration::from_secs(2));
        (agreed()? == l).then_some(l)
    });
    let (sst, size) = largest_sst(&c.c.data_dir(leader), "accounts");
    assert!(
        size >= SST_BYTES_MIN,
        "{} is only {size} bytes",
        sst.display()
    );
    flip(&sst);
    let follower = *all.iter().find(|n| **n != leader).expect("a follower");
    let log_from: Vec<(NodeId, u64)> = all.iter().map(|n| (*n, log_len(&c, *n))).collect();
    // A payment to every cold account, through the follower, each retried
    // with its request_id until acknowledged: some land in the damaged
    // blocks of the leader's.
    let deadline = Instant::now() + REPAIR_WITHIN;
    let mut refused = 0usize;
    for i in 0..COLD_ACCOUNTS {
        let (rid, account) = (format!("cold-pay-{i}"), format!("COLD-{i:05}"));
        loop {
            match pay(&c.http(follower), &rid, &account, "1.00") {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{rid} not acknowledged: {e}");
                    assert_ne!(e.code(), Some("INTERNAL"), "{rid}: {e}");
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    eprintln!("{refused} refusals (retried)");

    // The leader found the damage serving a forwarded payment, fenced
    // itself, handed over and repaired itself from its peers.
    let leader_log_from = log_from
        .iter()
        .find(|(n, _)| *n == leader)
        .map_or(0, |(_, f)| *f);
    assert_repaired(&c, leader, leader_log_from, ".sst");
    let new_leader = c.leader();
    assert_ne!(new_leader, leader, "the damaged node still leads");
    // No other node took the leader's damage for its own.
    for (n, from) in log_from.iter().filter(|(n, _)| *n != leader) {
        let log = log_since(&c, *n, *from);
        assert!(
            !log.contains("storage corruption"),
            "node {n} fenced itself over the leader's damage:\n{log}"
        );
        let s = c.status(*n);
        assert_eq!(s["storage"]["state"], "ok", "node {n}: {s}");
        assert!(s["storage"]["vote_fence_index"].is_null(), "node {n}: {s}");
    }
    c.wait_converged(&all, Duration::from_secs(60));
    // Every payment applied exactly once, on every replica: 4,000 records
    // and Σ balances = 4,000 × (10.00 + 1.00).
    for n in &all {
        let f = c
            .http(*n)
            .get("/v1/cluster/fingerprints")
            .expect("fingerprints");
        let heat = &f["fingerprints"]["B01/heat"];
        assert_eq!(heat["records"], COLD_ACCOUNTS as u64, "node {n}: {heat}");
        let balances: rust_decimal::Decimal = heat["balances"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| heat["balances"].to_string())
            .parse()
            .expect("a decimal");
        assert_eq!(
            balances,
            rust_decimal::Decimal::new(1100, 2) * rust_decimal::Decimal::from(COLD_ACCOUNTS as u64),
            "node {n}: {heat}"
        );
    }
}
