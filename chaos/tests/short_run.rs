//! One short run of every nemesis against a real five-node cluster (node N on
//! 127.0.1.N, ports 31001–31305 and 31400): nothing acknowledged lost or
//! doubled, every account linearizable, money balanced, replicas converged.
//! Needs root (iptables) for the partitions: without it the run fails with a
//! clear message rather than skipping them.

mod common;

use billdb_chaos::nemesis::ALL;
use billdb_chaos::report;
use billdb_chaos::run::{RunConfig, run};

#[test]
fn every_nemesis_once_keeps_every_promise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = RunConfig::new(tmp.path().join("run"), 31000, 20_261_121);
    let rep =
        run(&cfg, &mut |line| eprintln!("{line}")).expect("chaos run (needs root for iptables)");
    let table = report::render(&rep);
    eprintln!("{table}");

    for n in ALL {
        let row = rep
            .rows
            .iter()
            .find(|r| r.nemesis == n.name())
            .unwrap_or_else(|| panic!("nemesis {} did not run\n{table}", n.name()));
        assert_eq!(row.runs, 1, "{table}");
    }
    common::assert_every_promise_kept(&rep, cfg.accounts, &table);
    assert!(
        rep.total.acknowledged >= 200,
        "too little load to mean anything\n{table}"
    );
    // Every leader kill was followed by an acknowledged write (liveness).
    let kills = rep
        .leader_fault_gaps
        .get("kill")
        .expect("a leader kill happened");
    assert_eq!(kills.never_recovered, 0, "{table}");
}
