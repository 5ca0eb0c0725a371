//! Power losses against a real five-node cluster (node N on 127.0.1.N,
//! ports 5001–5205) whose data directories sit on lossy FUSE mounts
//! (`billdb_chaos::lossy_fs`): a power loss SIGKILLs the node, drops every
//! byte it had written but not fsynced, remounts its disk and starts it
//! again. One follower, the leader, and all five at once, five rounds of
//! each, under the purchase/payment load: every acknowledged write must be
//! present exactly once, every account linearizable, money balanced, and
//! all five digests equal. Needs FUSE (`/dev/fuse`, root or fusermount3):
//! without it the test fails with a clear message, it never skips.

mod common;

use billdb_chaos::nemesis::Nemesis;
use billdb_chaos::report;
use billdb_chaos::run::{RunConfig, run};

const ROUNDS: usize = 5;

#[test]
fn power_losses_lose_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = RunConfig::new(tmp.path().join("run"), 5000, 20_261_206);
    // duration 0: each listed step once, in order.
    cfg.duration_s = 0;
    cfg.nemeses = (0..ROUNDS)
        .flat_map(|_| {
            [
                Nemesis::PowerLossFollower,
                Nemesis::PowerLossLeader,
                Nemesis::PowerLossAll,
            ]
        })
        .collect();
    // Snapshots and log purges every few seconds, so power is also lost
    // around them (a snapshot the log was purged behind must be durable).
    cfg.snapshot_logs_since_last = 300;
    cfg.logs_to_keep_after_snapshot = 100;
    cfg.settle_ms = 1_000;
    let started = std::time::Instant::now();
    let rep = match run(&cfg, &mut |line| eprintln!("{line}")) {
        Ok(rep) => rep,
        Err(e) => {
            let kept = tmp.keep();
            panic!(
                "power-loss run failed (it needs FUSE: /dev/fuse and root, or fusermount3; \
                 see deploy/setup.sh): {e:#}\nrun directory kept: {}",
                kept.display()
            );
        }
    };
    let table = report::render(&rep);
    eprintln!("{table}");
    if !rep.passed {
        let kept = tmp.keep();
        eprintln!(
            "run directory kept (node<N>/disk holds each node's data): {}",
            kept.display()
        );
    }

    for n in [
        Nemesis::PowerLossFollower,
        Nemesis::PowerLossLeader,
        Nemesis::PowerLossAll,
    ] {
        let row = rep
            .rows
            .iter()
            .find(|r| r.nemesis == n.name())
            .unwrap_or_else(|| panic!("{} did not run\n{table}", n.name()));
        assert_eq!(row.runs, ROUNDS, "{table}");
        assert!(
            row.acknowledged > 0,
            "no write acknowledged around {}: not under load\n{table}",
            n.name()
        );
    }
    common::assert_every_promise_kept(&rep, cfg.accounts, &table);
    assert!(
        rep.total.acknowledged >= 200,
        "too little load to mean anything\n{table}"
    );
    // The filesystem really held and dropped unsynced data (a mount that
    // persisted everything would prove nothing).
    let dropped: u64 = rep.events.iter().map(|e| e.dropped_unsynced_bytes).sum();
    assert!(
        dropped > 0,
        "no power loss dropped any unsynced byte\n{table}"
    );
    // ... and power went while a write was appended to a WAL but not yet
    // synced: the window an fsync discipline must cover.
    let wal: u64 = rep.events.iter().map(|e| e.dropped_wal_bytes).sum();
    assert!(
        wal > 0,
        "no power loss caught a WAL write not yet synced\n{table}"
    );
    let all_five: Vec<_> = rep
        .events
        .iter()
        .filter(|e| e.nemesis == Nemesis::PowerLossAll.name())
        .collect();
    assert!(
        all_five.iter().all(|e| e.dropped_unsynced_bytes > 0),
        "a power loss of all five found nothing unsynced: {all_five:?}"
    );
    eprintln!(
        "power losses: {} node-level ({} events); unsynced bytes dropped: {dropped} \
         (of which WAL: {wal}); acknowledged writes checked: {}; wall time {:.1} s",
        rep.events
            .iter()
            .map(|e| if e.nemesis == Nemesis::PowerLossAll.name() {
                5
            } else {
                1
            })
            .sum::<usize>(),
        rep.events.len(),
        rep.records.acknowledged,
        started.elapsed().as_secs_f64()
    );
}
