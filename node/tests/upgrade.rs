//! A rolling upgrade under load, against real processes, with the op-level
//! gate (`domain::levels`, `cluster_level`): five nodes start as an older
//! build (`--op-level-max 1` through `BILLDB_OP_LEVEL_MAX`: they report and
//! apply op level 1 only); the cluster runs at level 1 and a level-2
//! operation (an area tariff) is refused FEATURE_NOT_ENABLED with nothing
//! written. Then, under a payment load, one node at a time (followers
//! first, the leader last) is stopped and started as the new build: the
//! level stays 1 while any member is old, the leader reports each member's
//! level, and a few seconds after the last one the leader raises the level
//! to 3 by itself; the area tariff is then accepted, and the leader
//! replicates results (executed entries) from then on, under the load. Every acknowledged
//! payment is on all five, their digests agree, an old build started on the
//! upgraded data refuses to start, naming both levels, and an old build is
//! not let in as a new learner.
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): base 34000.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use billdb_client::admin::AdminError;
use billdb_client::local::RaftTimings;
use common::*;
use serde_json::json;

const LEVEL_ENV: &str = "BILLDB_OP_LEVEL_MAX";

/// The new build's op level (`domain::levels::BUILD_OP_LEVEL`): 4, so the
/// upgrade also turns results replication (level 3, `leader_exec`) on under
/// load.
const NEW_LEVEL: u64 = billdb_node::domain::levels::BUILD_OP_LEVEL as u64;

fn op_level(c: &TestCluster, n: u64) -> serde_json::Value {
    c.status(n)["op_level"].clone()
}

fn define_area_tariff(
    c: &TestCluster,
    n: u64,
    request_id: &str,
) -> Result<serde_json::Value, AdminError> {
    c.http(n).put_json(
        "/v1/tariffs/H1",
        &json!({"request_id": request_id, "kind": "area", "price": "25.00", "suspended_share": "0.3"}),
    )
}

#[test]
fn a_rolling_upgrade_raises_the_op_level_only_when_every_member_runs_the_new_build() {
    // The old release: every node at op level 1.
    let c = Arc::new(TestCluster::start_with_env(
        34000,
        5,
        RaftTimings::default(),
        &[(LEVEL_ENV, "1")],
    ));
    let all = c.c.node_ids();
    for n in &all {
        let l = op_level(&c, *n);
        assert_eq!(l["cluster"], 1, "node {n}: {l}");
        assert_eq!(l["build"], 1, "node {n}: {l}");
    }
    match define_area_tariff(&c, c.leader(), "area-old") {
        Err(AdminError::Api {
            status,
            code,
            details,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (409, "FEATURE_NOT_ENABLED"));
            assert_eq!(details["needs_level"], 2);
            assert_eq!(details["cluster_level"], 1);
        }
        other => panic!("an area tariff at level 1: {other:?}"),
    }
    assert!(
        c.http(c.leader()).get("/v1/tariffs/H1").is_err(),
        "nothing was written"
    );
    assert!(
        outcome(&c, c.leader(), "area-old").is_none(),
        "a refusal before proposing leaves no request entry"
    );

    open_load_accounts(&c);
    let live = Arc::new(Mutex::new(all.clone()));
    let load = Load::start(&c, live.clone(), "upg");

    // One at a time, the new build without the level cap: three
    // followers, then the leader, then the last follower (so that a new
    // build leads while one member is still old).
    c.c.remove_node_env(LEVEL_ENV);
    let first_leader = c.leader();
    let followers: Vec<u64> = all.iter().copied().filter(|n| *n != first_leader).collect();
    let order = [
        followers[0],
        followers[1],
        followers[2],
        first_leader,
        followers[3],
    ];
    let mut reported = false;
    for (i, n) in order.iter().copied().enumerate() {
        live.lock().unwrap().retain(|x| *x != n);
        c.c.stop(n).expect("stop");
        c.c.start(n).expect("start as the new build");
        wait_for(
            &format!("node {n} back and caught up"),
            Duration::from_secs(60),
            || {
                let s = try_status(&c, n)?;
                let leader = s["leader_id"].as_u64()?;
                let ls = try_status(&c, leader)?;
                (s["applied_index"].as_u64()? + 5 >= ls["committed_index"].as_u64()?).then_some(())
            },
        );
        live.lock().unwrap().push(n);
        assert_eq!(
            op_level(&c, n)["build"],
            NEW_LEVEL,
            "node {n} runs the new build"
        );
        if i + 1 == order.len() {
            break;
        }
        // Some member is still old: the level holds.
        let old: Vec<u64> = order[i + 1..].to_vec();
        let mut leader = c.leader();
        if i == 3 && old.contains(&leader) {
            // Hand leadership to a new build, so that it is the one asking.
            c.http(leader)
                .transfer_leader(first_leader)
                .expect("transfer leader");
            leader = wait_for("a new build leads", Duration::from_secs(20), || {
                let l = c.leader();
                (!old.contains(&l)).then_some(l)
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let l = op_level(&c, leader);
        assert_eq!(l["cluster"], 1, "after {} of 5 upgraded: {l}", i + 1);
        if l["build"] == NEW_LEVEL {
            // A new build leads: it asked every member and holds the level.
            let l = wait_for(
                "the leader's report of every member",
                Duration::from_secs(10),
                || {
                    let l = op_level(&c, leader);
                    (l["members"].as_object()?.len() == all.len()).then_some(l)
                },
            );
            for m in &all {
                let want = if old.contains(m) { 1 } else { NEW_LEVEL };
                assert_eq!(l["members"][m.to_string()], want, "member {m}: {l}");
            }
            reported = true;
        }
        assert!(
            matches!(
                define_area_tariff(&c, leader, &format!("area-mixed-{i}")),
                Err(AdminError::Api { ref code, .. }) if code == "FEATURE_NOT_ENABLED"
            ),
            "a level-2 operation while node(s) {old:?} run the old build"
        );
    }
    assert!(
        reported,
        "a new build led while a member was old, and reported it"
    );

    // All five new: the leader raises the level by itself.
    for n in &all {
        wait_for(
            &format!("node {n} applies cluster op level {NEW_LEVEL}"),
            Duration::from_secs(20),
            || (op_level(&c, *n)["cluster"] == NEW_LEVEL).then_some(()),
        );
    }
    let v =
        define_area_tariff(&c, c.leader(), "area-new").expect("an area tariff at the new level");
    assert_eq!(v["result"], "tariff_defined", "{v}");
    // From level 3 on, every member writes the leader's results instead of
    // executing the commands (the load is still running).
    for n in &all {
        wait_for(
            &format!("node {n} applies executed entries"),
            Duration::from_secs(20),
            || (c.metric(*n, "billdb_applied_results_entries_total") > 0.0).then_some(()),
        );
    }

    let (acked, failed, slowest_ms) = load.finish();
    assert!(
        failed.is_empty(),
        "writes failed during the upgrade: {failed:?}"
    );
    assert!(acked > 20, "only {acked} payments acknowledged");
    eprintln!("{acked} payments acknowledged during the upgrade; slowest {slowest_ms} ms");
    let per = acked_per_account(&c, "upg", acked);
    assert_balances(&c, &all, &per);
    c.wait_converged(&all, Duration::from_secs(30));

    // An old build on the upgraded data refuses to start, naming both levels.
    let victim = *all.iter().find(|n| **n != c.leader()).expect("a follower");
    c.c.stop(victim).expect("stop");
    let log_from = log_len(&c, victim);
    c.c.set_node_env(LEVEL_ENV, "1");
    let _ = c.c.start(victim);
    wait_for("the old build exits", Duration::from_secs(20), || {
        c.c.pid(victim).is_none().then_some(())
    });
    let log = log_since(&c, victim, log_from);
    assert!(
        log.contains(&format!("cluster at op level {NEW_LEVEL}"))
            && log.contains("applies op level 1 at most"),
        "the refusal names both levels:\n{log}"
    );
    // An old build is not let in as a new member either.
    let spec = c.c.add_node(6).expect("add node 6");
    c.c.start(6).expect("start node 6 as the old build");
    c.c.wait_healthy(6, Duration::from_secs(30))
        .expect("node 6 answers");
    match c.http(c.leader()).add_learner(&spec.addrs()) {
        Err(AdminError::Api { code, details, .. }) => {
            assert_eq!(code, "FEATURE_NOT_ENABLED");
            assert_eq!(details["node_level"], 1);
            assert_eq!(details["cluster_level"], NEW_LEVEL);
        }
        other => panic!("an old build added as a learner: {other:?}"),
    }
    assert!(
        !c.status(c.leader())["nodes"]
            .as_object()
            .expect("nodes")
            .contains_key("6"),
        "node 6 is not a member"
    );
    c.c.kill(6).expect("stop node 6");

    c.c.remove_node_env(LEVEL_ENV);
    c.c.start(victim).expect("start the new build again");
    wait_for(
        "the new build answers again",
        Duration::from_secs(30),
        || try_status(&c, victim),
    );
    c.wait_converged(&all, Duration::from_secs(60));
}
