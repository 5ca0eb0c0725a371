//! Repeated disk stalls against a real five-node cluster (node N on
//! 127.0.1.N, ports 32001–32305): WAL fsyncs held on the leader and one or
//! two followers, again and again for 45 s, through the nodes' fault point.
//! Nothing acknowledged may be lost or doubled, every account stays
//! linearizable, and every replica converges. Before the replication-stream
//! guard in `raft_net.rs`, a follower whose appends stalled was caught up by
//! snapshot while its stream stayed on purged entries, and it never
//! converged (2 of 2 such runs).

mod common;

use billdb_chaos::nemesis::Nemesis;
use billdb_chaos::report;
use billdb_chaos::run::{RunConfig, run};

#[test]
fn repeated_disk_stalls_keep_every_promise_and_replicas_converge() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = RunConfig::new(tmp.path().join("run"), 32000, 20_261_205);
    cfg.duration_s = 45;
    cfg.nemeses = vec![Nemesis::DiskStall];
    let rep = run(&cfg, &mut |line| eprintln!("{line}")).expect("chaos run");
    let table = report::render(&rep);
    eprintln!("{table}");

    let row = rep
        .rows
        .iter()
        .find(|r| r.nemesis == "disk-stall")
        .unwrap_or_else(|| panic!("no disk stall ran\n{table}"));
    assert!(row.runs >= 5, "too few stalls\n{table}");
    common::assert_every_promise_kept(&rep, cfg.accounts, &table);
    let stalls = rep
        .leader_fault_gaps
        .get("disk-stall")
        .expect("leader stalls recorded");
    assert_eq!(stalls.never_recovered, 0, "{table}");
}
