//! Results replication (op level 3, `leader_exec`, `store::apply_results`)
//! against real processes: five nodes with a small entry bound
//! (`raft.batch_bytes_max = 1024`, the least allowed) so that the leader cuts concurrent
//! commands into several entries by the size of their results, every node
//! re-executing every entry and comparing (`raft.verify_results`, on in
//! every test cluster). Under six concurrent payment loads and imports,
//! the leader is killed and later restarted (a new leader's executor
//! starts a new epoch behind its barrier), and one node is restarted
//! replicating commands (`raft.replicate = "commands"`) and made leader, so
//! the log holds both kinds of entry. At the end every acknowledged payment
//! is on all five exactly once, every import applied, the digests agree,
//! followers applied executed entries, no node found a difference, and
//! the leaders did cut entries.
//!
//! Ports (127.0.0.1, node N on base+N, base+100+N, base+200+N): base 8000.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use billdb_node::domain::levels::RESULTS_OP_LEVEL;
use common::*;
use serde_json::{Value, json};

const BASE: u16 = 8000;
const LOADS: usize = 6;

/// An import of `n` legacy accounts with a few records each.
fn import(c: &TestCluster, k: usize, n: usize) -> Value {
    let accounts: Vec<Value> = (0..n)
        .map(|i| {
            json!({"account_id": format!("RI{k}-{i}"), "name": "Imported", "address": "",
                "branch": "B01", "utility": "water", "meter_id": "", "tariff_id": "",
                "area": "0", "status": "active", "balance": format!("{}.{:02}", i, i % 100),
                "opened_ms": 1_000_000_000_000i64, "closed_ms": null, "card_no": null,
                "card_generation": 0})
        })
        .collect();
    let records: Vec<Value> = (0..n as i64 * 2)
        .map(|i| {
            json!({"account_id": format!("RI{k}-{}", i % n as i64), "kind": "charge",
                "amount": format!("{}.{:02}", 1 + i % 50, i % 97), "units": "0",
                "ts_ms": 1_000_000_200_000i64 + i * 1000, "operator_id": "legacy",
                "branch": "B01", "tariff_id": "", "invoice_no": "", "bank_code": "",
                "bank_ref": "", "card_no": "", "card_seq": 0})
        })
        .collect();
    let body = json!({"request_id": format!("ri-{k}"), "accounts": accounts, "records": records});
    wait_for(&format!("import {k}"), Duration::from_secs(20), || {
        c.http(c.leader()).post("/v1/import", &body).ok()
    })
}

#[test]
fn executed_entries_survive_leader_changes_and_mixed_modes_with_every_replica_checking() {
    let c = Arc::new(TestCluster::start_configured(
        BASE,
        5,
        billdb_client::local::RaftTimings::default(),
        &[],
        "",
        &|lc| {
            for id in lc.node_ids() {
                let p = lc.config_path(id);
                let text = std::fs::read_to_string(&p).expect("node.toml");
                assert!(text.contains("[raft]\n"), "{text}");
                let text = text.replacen("[raft]\n", "[raft]\nbatch_bytes_max = 1024\n", 1);
                std::fs::write(&p, text).expect("node.toml");
            }
        },
    ));
    let all = c.c.node_ids();
    for n in &all {
        wait_for(
            &format!("node {n} at op level 3 or later"),
            Duration::from_secs(20),
            || {
                (c.status(*n)["op_level"]["cluster"].as_u64()? >= u64::from(RESULTS_OP_LEVEL))
                    .then_some(())
            },
        );
    }
    open_load_accounts(&c);
    let live = Arc::new(Mutex::new(all.clone()));
    let loads: Vec<(String, Load)> = (0..LOADS)
        .map(|k| {
            let prefix = format!("rr{k}");
            let l = Load::start_paced(&c, live.clone(), &prefix, Duration::ZERO);
            (prefix, l)
        })
        .collect();
    let mut imported = 0;
    let mut import_once = |k: usize| {
        let v = import(&c, k, 4);
        assert_eq!(v["accounts"], 4, "{v}");
        assert_eq!(v["records"], 8, "{v}");
        imported += 1;
    };
    std::thread::sleep(Duration::from_secs(2));
    import_once(0);

    // The leader dies: a new one executes from a new epoch.
    let first = c.leader();
    live.lock().unwrap().retain(|n| *n != first);
    c.c.kill(first).expect("kill the leader");
    let second = wait_for("a new leader", Duration::from_secs(20), || {
        let l = c.c.wait_leader(Duration::from_secs(1)).ok()?;
        (l != first).then_some(l)
    });
    std::thread::sleep(Duration::from_secs(2));
    import_once(1);
    c.c.start(first).expect("restart the old leader");
    c.c.wait_healthy(first, Duration::from_secs(30))
        .expect("old leader back");
    live.lock().unwrap().push(first);

    // One node replicates commands; it leads for a while, then hands back.
    let cmd_node = all
        .iter()
        .copied()
        .find(|n| *n != second)
        .expect("another node");
    live.lock().unwrap().retain(|n| *n != cmd_node);
    c.c.stop(cmd_node).expect("stop");
    c.c.set_node_env("BILLDB_REPLICATE", "commands");
    c.c.start(cmd_node).expect("start replicating commands");
    c.c.remove_node_env("BILLDB_REPLICATE");
    c.c.wait_healthy(cmd_node, Duration::from_secs(30))
        .expect("node back");
    live.lock().unwrap().push(cmd_node);
    wait_for("the node catches up", Duration::from_secs(30), || {
        let (applied, _) = c.digest(cmd_node);
        let (leader_applied, _) = c.digest(c.leader());
        (applied >= leader_applied.map(|a| a.saturating_sub(50))).then_some(())
    });
    c.http(c.leader())
        .transfer_leader(cmd_node)
        .expect("transfer to the commands node");
    wait_for("the commands node leads", Duration::from_secs(20), || {
        (c.leader() == cmd_node).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    import_once(2);
    c.http(cmd_node)
        .transfer_leader(second)
        .expect("transfer back");
    wait_for("results again", Duration::from_secs(20), || {
        (c.leader() == second).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    import_once(3);

    let mut per = vec![0u64; 8];
    for (prefix, load) in loads {
        let (acked, failed, slowest_ms) = load.finish();
        assert!(failed.is_empty(), "{prefix}: writes failed: {failed:?}");
        assert!(acked > 20, "{prefix}: only {acked} payments acknowledged");
        eprintln!("{prefix}: {acked} payments acknowledged; slowest {slowest_ms} ms");
        for (i, n) in acked_per_account(&c, &prefix, acked)
            .into_iter()
            .enumerate()
        {
            per[i] += n;
        }
    }
    c.wait_converged(&all, Duration::from_secs(60));
    assert_balances(&c, &all, &per);
    assert_eq!(imported, 4);
    for k in 0..imported {
        let on_leader = c
            .http(c.leader())
            .get(&format!("/v1/accounts/RI{k}-3"))
            .expect("imported account");
        for n in &all {
            let v = c
                .http(*n)
                .get(&format!("/v1/accounts/RI{k}-3"))
                .expect("imported account");
            assert_eq!(v, on_leader, "node {n}");
        }
    }
    let sum = |name: &str| -> f64 { all.iter().map(|n| c.metric(*n, name)).sum() };
    for n in &all {
        assert!(
            c.metric(*n, "billdb_applied_results_entries_total") > 0.0,
            "node {n} applied executed entries"
        );
        assert_eq!(
            c.metric(*n, "billdb_exec_divergences_total"),
            0.0,
            "node {n} found no difference"
        );
    }
    let entries = sum("billdb_exec_batches_total");
    let epochs = sum("billdb_exec_epochs_total");
    eprintln!("executed entries {entries}, epochs {epochs}");
    assert!(epochs >= 2.0, "a new leader started a new epoch ({epochs})");
    let commands_node_entries = c.metric(cmd_node, "billdb_exec_batches_total");
    assert_eq!(
        commands_node_entries, 0.0,
        "the node set to replicate commands executed nothing"
    );
    let cut = sum("billdb_exec_cut_entries_total");
    assert!(
        cut > 0.0,
        "with a 1 KiB entry bound and six loads, some batches were cut by size"
    );
}
