//! The replicated core against real processes: five `billdb-node`s on
//! loopback, real RocksDB, real SIGKILLs. Every acknowledged write must
//! survive; replicas must converge to one state digest.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billdb_client::local::{RaftTimings, ReadPolicy};
use common::*;
use rust_decimal::Decimal;
use serde_json::json;

const ACCOUNTS: usize = 10;

fn account(i: usize) -> String {
    format!("ACC-{:03}", i % ACCOUNTS)
}

fn open_accounts(c: &TestCluster) {
    let h = c.http(c.leader());
    for i in 0..ACCOUNTS {
        open_account(&h, &account(i)).expect("open account");
    }
}

/// Write `count` payments of 1.00 from `threads` threads through every
/// listed node; returns the acknowledged request ids.
fn write_load(
    c: &TestCluster,
    nodes: &[NodeId],
    prefix: &str,
    count: usize,
    threads: usize,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let acked = acked.clone();
            s.spawn(move || {
                for i in (t..count).step_by(threads) {
                    let id = format!("{prefix}-{i}");
                    pay_until_ok(c, nodes, &id, &account(i), "1.00", Duration::from_secs(60));
                    acked.lock().unwrap().push(id);
                }
            });
        }
    });
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

fn total_balance(c: &TestCluster, n: NodeId) -> Decimal {
    (0..ACCOUNTS).map(|i| balance(c, n, &account(i))).sum()
}

/// Issue item 2: commit 1,000; SIGKILL the leader and a follower; writes
/// resume within an election; restart both; all five converge and every
/// acknowledged command is present exactly once.
#[test]
fn kill_leader_and_follower_then_catch_up() {
    let c = TestCluster::start(21000, 5);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let mut acked = write_load(&c, &all, "pre", 1000, 4);
    assert_eq!(acked.len(), 1000);

    let leader = c.leader();
    let follower = all.iter().copied().find(|n| *n != leader).unwrap();
    c.c.kill(leader).expect("kill leader");
    c.c.kill(follower).expect("kill follower");
    let killed_at = Instant::now();
    let alive: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|n| *n != leader && *n != follower)
        .collect();

    // The first write after the kills: how long until commits resume?
    pay_until_ok(
        &c,
        &alive,
        "gap-0",
        &account(0),
        "1.00",
        Duration::from_secs(30),
    );
    let gap = killed_at.elapsed();
    acked.push("gap-0".into());
    println!("write gap after killing leader {leader} and follower {follower}: {gap:?}");
    // Election timeout is 500-1000 ms; allow detection + one election (+ slack
    // for a loaded 2-core machine), never an indefinite stall.
    assert!(
        gap < Duration::from_secs(5),
        "commits resumed only after {gap:?}"
    );

    acked.extend(write_load(&c, &alive, "during", 200, 2));
    c.c.start(leader).expect("restart");
    c.c.start(follower).expect("restart");
    c.c.wait_healthy(leader, Duration::from_secs(30)).unwrap();
    c.c.wait_healthy(follower, Duration::from_secs(30)).unwrap();
    acked.extend(write_load(&c, &all, "after", 100, 2));

    let digest = c.wait_converged(&all, Duration::from_secs(60));
    println!("converged digest {digest}");
    for id in &acked {
        let o = outcome(&c, 1 + (id.len() as u64 % 5), id)
            .unwrap_or_else(|| panic!("acknowledged {id} lost"));
        assert_eq!(o["result"], "payment_posted", "{id}: {o}");
    }
    // Each payment is 1.00 and each was acknowledged once: exactly-once
    // means the balances add up to exactly the number acknowledged.
    assert_eq!(total_balance(&c, 2), Decimal::from(acked.len() as u64));
}

/// SIGTERM to the leader (a rolling restart, `systemctl stop`): it hands
/// leadership to the most caught-up voter before it stops, names it in its
/// log, and that node leads; nothing acknowledged is lost.
#[test]
fn a_leader_stopped_with_sigterm_hands_over_first() {
    let c = TestCluster::start(18800, 5);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let mut acked = write_load(&c, &all, "pre", 100, 2);
    let leader = c.leader();
    let log_from = log_len(&c, leader);
    c.c.stop(leader).expect("SIGTERM the leader");
    let log = log_since(&c, leader, log_from);
    let to: NodeId = log
        .lines()
        .find_map(|l| {
            let rest = l.split("leadership handed to node ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("node {leader} did not hand over before stopping:\n{log}"));
    assert_ne!(to, leader);
    let others: Vec<NodeId> = all.iter().copied().filter(|n| *n != leader).collect();
    let st = c.status(to);
    assert_eq!(st["leader_id"], to, "{st:#}");
    acked.extend(write_load(&c, &others, "after", 50, 2));
    c.c.start(leader).expect("restart");
    c.c.wait_healthy(leader, Duration::from_secs(30)).unwrap();
    c.wait_converged(&all, Duration::from_secs(60));
    for id in &acked {
        let o = outcome(&c, leader, id).unwrap_or_else(|| panic!("acknowledged {id} lost"));
        assert_eq!(o["result"], "payment_posted", "{id}: {o}");
    }
    assert_eq!(total_balance(&c, leader), Decimal::from(acked.len() as u64));
}

/// Issue item 3: three of five down → writes and linearizable reads are
/// refused with UNAVAILABLE within a bounded time; after restart they work
/// and nothing acknowledged is lost.
#[test]
fn no_quorum_is_unavailable_not_a_hang() {
    let c = TestCluster::start(22000, 5);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let acked = write_load(&c, &all, "pre", 100, 2);

    let leader = c.leader();
    let mut down: Vec<NodeId> = vec![leader];
    down.extend(all.iter().copied().filter(|n| *n != leader).take(2));
    for n in &down {
        c.c.kill(*n).unwrap();
    }
    let alive: Vec<NodeId> = all.iter().copied().filter(|n| !down.contains(n)).collect();
    for n in &alive {
        let h = c.http(*n);
        let t = Instant::now();
        let err = pay(&h, &format!("noquorum-{n}"), &account(0), "1.00")
            .expect_err("write without quorum");
        let took = t.elapsed();
        assert_eq!(err.code(), Some("UNAVAILABLE"), "write: {err}");
        assert_eq!(err.status(), Some(503));
        assert!(took < Duration::from_secs(6), "write refusal took {took:?}");

        let t = Instant::now();
        let err = h
            .get(&format!("/v1/accounts/{}", account(0)))
            .expect_err("read without quorum");
        let took = t.elapsed();
        assert_eq!(err.code(), Some("UNAVAILABLE"), "read: {err}");
        assert!(took < Duration::from_secs(6), "read refusal took {took:?}");
    }

    for n in &down {
        c.c.start(*n).unwrap();
    }
    for n in &down {
        c.c.wait_healthy(*n, Duration::from_secs(30)).unwrap();
    }
    // The refused writes may or may not have been logged; retried with the
    // same request id they take effect exactly once.
    let mut all_acked = acked.clone();
    for n in &alive {
        let id = format!("noquorum-{n}");
        pay_until_ok(&c, &all, &id, &account(0), "1.00", Duration::from_secs(30));
        all_acked.push(id);
    }
    c.wait_converged(&all, Duration::from_secs(60));
    for id in &all_acked {
        assert!(outcome(&c, 3, id).is_some(), "acknowledged {id} lost");
    }
    assert_eq!(total_balance(&c, 1), Decimal::from(all_acked.len() as u64));
}

/// Issue item 4: all five SIGKILLed together mid-load (power loss); every
/// acknowledged command survives the restart. A SIGKILL keeps what the
/// processes wrote in the OS page cache, so this proves the restart path
/// (log replay, `applied`, no lost acknowledgement from process state),
/// not the fsync ordering itself: that is
/// `writes_are_acknowledged_only_after_a_majority_fsynced`.
#[test]
fn power_loss_of_all_five_keeps_acknowledged_writes() {
    let c = TestCluster::start(23000, 5);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (acked, issued, stop, c) = (acked.clone(), issued.clone(), stop.clone(), &c);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let id = format!("pl-{t}-{i}");
                    issued.lock().unwrap().push(id.clone());
                    if pay(&c.http(1 + (i % 5) as u64), &id, &account(i), "1.00").is_ok() {
                        acked.lock().unwrap().push(id);
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        for n in 1..=5 {
            c.c.kill(n).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let acked = acked.lock().unwrap().clone();
    let issued = issued.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few writes before the power loss: {}",
        acked.len()
    );

    c.c.start_all().unwrap();
    c.c.wait_all_healthy(Duration::from_secs(30)).unwrap();
    c.leader();
    c.wait_converged(&all, Duration::from_secs(60));
    for id in &acked {
        assert!(
            outcome(&c, 2, id).is_some(),
            "acknowledged {id} lost in power loss"
        );
    }
    // Unacknowledged ones may or may not have committed; whatever committed
    // counts exactly once in the balances.
    let committed = issued
        .iter()
        .filter(|id| outcome(&c, 4, id).is_some())
        .count();
    println!(
        "power loss: {} acknowledged, {} issued, {} committed",
        acked.len(),
        issued.len(),
        committed
    );
    assert_eq!(total_balance(&c, 5), Decimal::from(committed as u64));
}

/// Issue item 5: a node whose data is wiped is replaced through membership
/// change (as a new node id) and catches up by snapshot, because the leader
/// has already purged the log it would need.
#[test]
fn wiped_node_is_replaced_and_catches_up_by_snapshot() {
    let raft = RaftTimings {
        snapshot_logs_since_last: Some(200),
        logs_to_keep_after_snapshot: Some(50),
        ..RaftTimings::default()
    };
    let c = TestCluster::start_with(24000, 5, raft);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let mut acked = write_load(&c, &all, "pre", 600, 4);
    let leader = c.leader();
    let victim = all.iter().copied().find(|n| *n != leader).unwrap();

    // An operator asks a follower for a snapshot now: it is a checkpoint
    // under snapshots/ covering what was applied; no snapshot file is
    // written until a peer needs one (a follower sends none).
    let follower = all
        .iter()
        .copied()
        .find(|n| *n != leader && *n != victim)
        .unwrap();
    let applied = c.status(follower)["applied_index"].as_u64().unwrap();
    let snap = c.http(follower).snapshot().expect("snapshot on demand");
    assert!(
        snap["snapshot_index"].as_u64().unwrap() >= applied,
        "{snap}"
    );
    let names: Vec<String> = std::fs::read_dir(c.c.data_dir(follower).join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("ckpt-snap-")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.ends_with(".meta")), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".snap")), "{names:?}");
    let refused = c
        .http_as(follower, "counter")
        .post("/v1/cluster/snapshot", &serde_json::json!({}))
        .expect_err("counter staff may not snapshot");
    assert_eq!(refused.code(), Some("PERMISSION_DENIED"), "{refused:?}");
    c.c.kill(victim).unwrap();
    c.c.wipe(victim).unwrap();
    let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != victim).collect();
    acked.extend(write_load(&c, &rest, "mid", 400, 4));

    // The leader has snapshotted and purged beyond what a new node would need.
    let st = c.status(c.leader());
    let purged = st["purged_index"].as_u64().unwrap_or(0);
    assert!(purged > 100, "leader has not purged its log: {st}");

    let h = c.http(c.leader());
    h.remove(victim).expect("remove wiped node");
    let spec = c.c.add_node(6).expect("add node 6");
    c.c.start(6).unwrap();
    c.c.wait_healthy(6, Duration::from_secs(30)).unwrap();
    h.add_learner(&spec.addrs()).expect("add learner");
    let mut voters: Vec<NodeId> = rest.clone();
    voters.push(6);
    // Wait for the learner to catch up, then promote it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s6 = c.status(6);
        let committed = c.status(c.leader())["committed_index"]
            .as_u64()
            .unwrap_or(0);
        if s6["applied_index"].as_u64().unwrap_or(0) + 5 >= committed {
            assert!(
                s6["snapshot_index"].as_u64().unwrap_or(0) > 0,
                "node 6 caught up without a snapshot: {s6}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "node 6 did not catch up: {s6}");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.http(3)
        .change_membership(&voters)
        .expect("promote node 6");
    let st = c.status(c.leader());
    let mut got: Vec<u64> = st["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    got.sort();
    assert_eq!(got, voters);
    let metrics = c.http(6).get("/healthz").unwrap();
    assert_eq!(metrics["node_id"], 6);

    acked.extend(write_load(&c, &voters, "post", 50, 2));
    c.wait_converged(&voters, Duration::from_secs(60));
    for id in &acked {
        assert!(
            outcome(&c, 6, id).is_some(),
            "acknowledged {id} missing on the new node"
        );
    }
}

/// Issue item 6: bad administrative input gets a clear code and changes
/// nothing (membership and state digest unchanged).
#[test]
fn bad_admin_input_is_refused_and_changes_nothing() {
    let c = TestCluster::start(25000, 5);
    open_accounts(&c);
    let leader = c.leader();
    let h = c.http(if leader == 1 { 2 } else { 1 });
    let before = c.status(leader);
    let digest_before = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));

    let code = |r: Result<serde_json::Value, billdb_client::admin::AdminError>| {
        r.expect_err("must be refused")
            .code()
            .unwrap_or("NONE")
            .to_string()
    };
    let n1 = c.c.node(1).unwrap().addrs();
    assert_eq!(code(h.add_learner(&n1)), "DUPLICATE_NODE");
    let mut same_addr = n1.clone();
    same_addr.id = 9;
    assert_eq!(code(h.add_learner(&same_addr)), "DUPLICATE_NODE");
    let mut bad_addr = n1.clone();
    bad_addr.id = 9;
    bad_addr.raft_addr = "not-an-address".into();
    assert_eq!(code(h.add_learner(&bad_addr)), "INVALID_ARGUMENT");
    assert_eq!(code(h.change_membership(&[1, 2, 3, 9])), "UNKNOWN_NODE");
    assert_eq!(code(h.change_membership(&[])), "NO_QUORUM");
    assert_eq!(code(h.remove(42)), "UNKNOWN_NODE");
    assert_eq!(code(h.transfer_leader(42)), "UNKNOWN_NODE");
    assert_eq!(
        code(h.init(std::slice::from_ref(&n1))),
        "ALREADY_INITIALIZED"
    );
    assert_eq!(
        code(h.post("/v1/cluster/membership", &json!({"voters": "1,2"}))),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(h.post("/v1/cluster/remove", &json!({"id": 1, "force": true}))),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        code(h.post("/v1/cluster/remove", &json!({"id": -1}))),
        "INVALID_ARGUMENT"
    );
    let big = "x".repeat(200_000);
    assert_eq!(
        code(h.post("/v1/cluster/remove", &json!({"id": 1, "pad": big}))),
        "PAYLOAD_TOO_LARGE"
    );
    // Far past the limit: the node still reads the body, so the client gets
    // the code rather than a reset connection (this once failed in CI).
    for _ in 0..5 {
        let huge = "x".repeat(3_000_000);
        assert_eq!(
            code(h.post("/v1/cluster/remove", &json!({"id": 1, "pad": huge}))),
            "PAYLOAD_TOO_LARGE"
        );
    }
    // A client waiting for `100 Continue` is refused before it sends.
    assert_eq!(
        expect_continue_status(
            &c.c.http_addr(1).unwrap(),
            "/v1/cluster/remove",
            3_000_000,
            &c.c.token("ops").unwrap(),
        ),
        413
    );
    // Malformed JSON straight on the wire.
    let (status, body) = raw_request(
        &c.c.http_addr(1).unwrap(),
        "POST",
        "/v1/cluster/membership",
        "{\"voters\": [1,",
        &c.c.token("ops").unwrap(),
    );
    assert_eq!(status, 400);
    assert_eq!(body["code"], "MALFORMED_REQUEST", "{body}");

    // The same refusals over gRPC, with the code in the status metadata.
    let grpc_node: u64 = 2;
    let ops = c.c.token("ops").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use billdb_api::error::{ApiError, ErrorCode};
        use billdb_api::pb;
        let mut g = pb::cluster_client::ClusterClient::new(c.grpc_channel(grpc_node).await);
        let e = g
            .add_learner(authed(pb::AddLearnerRequest { node: None }, &ops))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = g
            .change_membership(authed(
                pb::ChangeMembershipRequest {
                    voters: vec![1, 2, 9],
                },
                &ops,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            ApiError::from_status(&e).code,
            ErrorCode::UnknownNode,
            "{e:?}"
        );
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = g
            .remove_node(authed(pb::RemoveNodeRequest { id: 42 }, &ops))
            .await
            .unwrap_err();
        assert_eq!(ApiError::from_status(&e).code, ErrorCode::UnknownNode);
        let e = g
            .initialize(authed(pb::InitializeRequest { nodes: vec![] }, &ops))
            .await
            .unwrap_err();
        assert_eq!(ApiError::from_status(&e).code, ErrorCode::InvalidArgument);
        let e = g
            .transfer_leader(authed(pb::TransferLeaderRequest { to: 0 }, &ops))
            .await
            .unwrap_err();
        assert_eq!(ApiError::from_status(&e).code, ErrorCode::UnknownNode);
        let st = g
            .status(authed(pb::StatusRequest {}, &ops))
            .await
            .expect("status")
            .into_inner();
        assert_eq!(st.voters.len(), 5);
    });

    // A change that would leave no quorum: with two voters down, removing a
    // live voter leaves 2 live of 4.
    let down: Vec<NodeId> = (1..=5).filter(|n| *n != leader).take(2).collect();
    for n in &down {
        c.c.kill(*n).unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500));
    let live_other = (1..=5).find(|n| *n != leader && !down.contains(n)).unwrap();
    let hl = c.http(leader);
    assert_eq!(code(hl.remove(live_other)), "NO_QUORUM");
    let mut to: Vec<u64> = down.clone();
    to.push(leader);
    assert_eq!(code(hl.change_membership(&to)), "NO_QUORUM");
    for n in &down {
        c.c.start(*n).unwrap();
        c.c.wait_healthy(*n, Duration::from_secs(30)).unwrap();
    }
    // The restarted nodes catch up first: a transfer to a node still
    // behind waits for it, and may outlast the request's deadline.
    c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));

    // Transfer leadership to a chosen follower (through another node).
    let old_leader = c.leader();
    let target = (1..=5).find(|n| *n != old_leader).unwrap();
    let via = (1..=5).find(|n| *n != old_leader && *n != target).unwrap();
    c.http(via)
        .transfer_leader(target)
        .expect("transfer leader");
    assert_eq!(
        c.leader(),
        target,
        "leadership did not move to node {target}"
    );

    let after = c.status(c.leader());
    assert_eq!(before["voters"], after["voters"]);
    assert_eq!(before["learners"], after["learners"]);
    assert_eq!(before["nodes"], after["nodes"]);
    let digest_after = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
    assert_eq!(
        digest_before, digest_after,
        "bad admin input changed the state"
    );
}

/// Tokens and roles: missing or unknown tokens are UNAUTHENTICATED, wrong
/// roles PERMISSION_DENIED, on HTTP and gRPC alike; refusals change nothing.
#[test]
fn tokens_and_roles_are_enforced() {
    let c = TestCluster::start(26000, 5);
    open_accounts(&c);
    let digest_before = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
    let code = |r: Result<serde_json::Value, billdb_client::admin::AdminError>| {
        let e = r.expect_err("must be refused");
        (
            e.status().unwrap_or(0),
            e.code().unwrap_or("NONE").to_string(),
        )
    };
    let pay_body = |bank: &str| json!({"request_id": format!("auth-{bank}"), "account_id": account(0), "amount": "5.00", "bank_code": bank, "bank_ref": format!("auth-{bank}")});
    // Liveness needs no token.
    c.http_as(3, "none")
        .get("/healthz")
        .expect("healthz without a token");
    assert_eq!(
        code(c.http_as(3, "none").post("/v1/payments", &pay_body("ICBC"))),
        (401, "UNAUTHENTICATED".into())
    );
    assert_eq!(
        code(c.http_as(3, "none").status()),
        (401, "UNAUTHENTICATED".into())
    );
    let forged =
        c.c.http_client(3, Duration::from_secs(5))
            .unwrap()
            .with_token(Some("forged".into()));
    assert_eq!(code(forged.status()), (401, "UNAUTHENTICATED".into()));
    assert_eq!(
        code(c.http_as(3, "counter").change_membership(&[1, 2, 3])),
        (403, "PERMISSION_DENIED".into())
    );
    assert_eq!(
        code(
            c.http_as(3, "counter")
                .post("/v1/payments", &pay_body("ICBC"))
        ),
        (403, "PERMISSION_DENIED".into())
    );
    assert_eq!(
        code(
            c.http_as(3, "auditor")
                .post("/v1/payments", &pay_body("ICBC"))
        ),
        (403, "PERMISSION_DENIED".into())
    );
    assert_eq!(
        code(c.http_as(3, "bank").post("/v1/payments", &pay_body("ABC"))),
        (403, "PERMISSION_DENIED".into())
    );
    assert_eq!(
        code(c.http_as(3, "bank").remove(5)),
        (403, "PERMISSION_DENIED".into())
    );
    // Reads are open to every role; the auditor sees cluster status.
    c.http_as(3, "auditor")
        .status()
        .expect("auditor reads status");
    c.http_as(3, "counter")
        .get(&format!("/v1/accounts/{}", account(0)))
        .expect("counter reads an account");

    let grpc_node: u64 = 4;
    let counter = c.c.token("counter").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use billdb_api::pb;
        let mut g = pb::cluster_client::ClusterClient::new(c.grpc_channel(grpc_node).await);
        let e = g.status(pb::StatusRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut r = tonic::Request::new(pb::RemoveNodeRequest { id: 5 });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {counter}").parse().unwrap(),
        );
        assert_eq!(
            g.remove_node(r).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let mut b = pb::billing_client::BillingClient::new(c.grpc_channel(grpc_node).await);
        let mut r = tonic::Request::new(pb::PaymentRequest {
            request_id: "auth-grpc".into(),
            account_id: account(0),
            amount: "5.00".into(),
            bank_code: "ICBC".into(),
            bank_ref: "auth-grpc".into(),
        });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {counter}").parse().unwrap(),
        );
        assert_eq!(
            b.post_payment(r).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    });
    let digest_after = c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
    assert_eq!(
        digest_before, digest_after,
        "a refused request changed the state"
    );

    // The right bank posts its own payment; the operator comes from the token.
    let v = c
        .http_as(3, "bank")
        .post("/v1/payments", &pay_body("ICBC"))
        .expect("bank pays");
    assert_eq!(v["result"], "payment_posted");
}

/// `raft.read_policy = "lease"`: linearizable reads confirm leadership from
/// the leader's lease instead of a quorum round. A leader paused (SIGSTOP)
/// past its lease, replaced, and woken while the others took more writes
/// must never answer a read from its old state: every read it answers shows
/// the new writes (or it refuses with UNAVAILABLE).
#[test]
fn lease_reads_stay_linearizable_across_a_paused_leader() {
    let raft = RaftTimings {
        read_policy: Some(ReadPolicy::Lease),
        ..RaftTimings::default()
    };
    let c = TestCluster::start_with(20000, 5, raft);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    write_load(&c, &all, "pre", 40, 2);
    let old = c.leader();
    // The leader times each follower's append round trips.
    for f in all.iter().filter(|n| **n != old) {
        let sample = format!(r#"billdb_raft_append_seconds_count{{peer="{f}",kind="entries"}}"#);
        assert!(c.metric(old, &sample) > 0.0, "no {sample} on the leader");
    }
    // Every node shows what its memtables hold, per family: the writes
    // above added records that no flush has taken yet.
    for n in &all {
        let records = r#"billdb_rocksdb_family_memtable_entries{family="records"}"#;
        assert!(c.metric(*n, records) > 0.0, "no {records} on node {n}");
    }
    // The status document names the effective settings.
    let st = c.status(old);
    assert_eq!(st["raft"]["read_policy"], "lease");
    assert_eq!(st["raft"]["batch_commands_max"], 256);
    // A steady leader answers from its applied state, with no Raft round
    // (`read_fence`); a follower's read still asks the leader for an index.
    let lease_reads = r#"billdb_reads_total{path="leader_lease"}"#;
    let index_reads = r#"billdb_reads_total{path="read_index"}"#;
    let (fast0, slow0) = (c.metric(old, lease_reads), c.metric(old, index_reads));
    for _ in 0..10 {
        balance(&c, old, &account(0));
    }
    assert!(
        c.metric(old, lease_reads) >= fast0 + 10.0,
        "leader reads did not take the lease path"
    );
    assert_eq!(
        c.metric(old, index_reads),
        slow0,
        "a leader read took a Raft round"
    );
    // Heartbeats alone keep the lease: an idle leader still reads locally.
    std::thread::sleep(Duration::from_millis(1500));
    let fast1 = c.metric(old, lease_reads);
    balance(&c, old, &account(0));
    assert_eq!(
        c.metric(old, lease_reads),
        fast1 + 1.0,
        "an idle leader lost its lease"
    );
    let follower = *all.iter().find(|n| **n != old).unwrap();
    let f0 = c.metric(follower, index_reads);
    // A follower's read of a write it just forwarded sees it.
    pay_until_ok(
        &c,
        &[follower],
        "via-follower",
        &account(0),
        "1.00",
        Duration::from_secs(30),
    );
    let b1 = balance(&c, follower, &account(0));
    assert_eq!(balance(&c, old, &account(0)), b1);
    assert!(c.metric(follower, index_reads) > f0);
    let before = balance(&c, old, &account(0));
    c.c.pause(old).unwrap();
    let others: Vec<NodeId> = all.iter().copied().filter(|n| *n != old).collect();
    // The others elect a leader and take 20 more payments to account 0.
    for i in 0..20 {
        pay_until_ok(
            &c,
            &others,
            &format!("post-{i}"),
            &account(0),
            "1.00",
            Duration::from_secs(30),
        );
    }
    let expected = before + Decimal::from(20);
    assert_eq!(balance(&c, others[0], &account(0)), expected);
    c.c.resume(old).unwrap();
    let h =
        c.c.http_client(old, Duration::from_secs(5))
            .unwrap()
            .with_token(Some(c.c.token("ops").unwrap()));
    let (mut answered, mut refused) = (0, 0);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match h.get(&format!("/v1/accounts/{}", account(0))) {
            Ok(v) => {
                let seen: Decimal = v["balance"].as_str().unwrap().parse().unwrap();
                assert_eq!(seen, expected, "the woken old leader answered a stale read");
                answered += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Some("UNAVAILABLE"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        answered > 0,
        "no read answered after the pause ({refused} refused)"
    );
    assert_ne!(c.leader(), 0);
}

/// A whole-cluster restart: the old leader does not resume its term (a new
/// election, a new blank entry), and under `read_policy = "lease"` the new
/// leader serves reads from its lease again. Before, a restarted leader
/// resumed its term and its reads took the Raft path until the next
/// election.
#[test]
fn restarted_cluster_elects_anew_and_serves_lease_reads() {
    let raft = RaftTimings {
        read_policy: Some(ReadPolicy::Lease),
        ..RaftTimings::default()
    };
    let c = TestCluster::start_with(27700, 5, raft);
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    write_load(&c, &all, "before", 20, 2);
    let old = c.leader();
    let term_before = c.status(old)["term"].as_u64().unwrap();
    let expected = balance(&c, old, &account(0));
    c.c.down().unwrap();
    c.c.start_all().unwrap();
    c.c.wait_all_healthy(Duration::from_secs(30)).unwrap();
    let leader = c.leader();
    let st = c.status(leader);
    assert!(
        st["term"].as_u64().unwrap() > term_before,
        "the restarted leader resumed term {term_before}: {st}"
    );
    // The lease needs a heartbeat round acknowledged; it comes within
    // a few heartbeats.
    let t = Instant::now();
    while c.status(leader)["lease_read"] != "ok" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no lease after the restart: {}",
            c.status(leader)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lease_reads = r#"billdb_reads_total{path="leader_lease"}"#;
    let before = c.metric(leader, lease_reads);
    assert_eq!(balance(&c, leader, &account(0)), expected);
    assert!(
        c.metric(leader, lease_reads) > before,
        "a read on the restarted cluster's leader took the Raft path"
    );
    let follower = *all.iter().find(|n| **n != leader).unwrap();
    assert_eq!(c.status(follower)["lease_read"], "not_leader");
}

/// Durable before acknowledged, in real processes: a write is acknowledged
/// only once a majority of the five nodes has fsynced it. The nodes run
/// with the WAL-fsync fault point on (`BILLDB_FAILPOINTS=1`): while a
/// node's pause file exists its fsyncs wait. With two followers held a
/// write is acknowledged (three copies can still be synced); with the
/// leader held as well it is not, within its deadline; once the fsyncs
/// resume, the held write commits and its retry gets it exactly once.
#[test]
fn writes_are_acknowledged_only_after_a_majority_fsynced() {
    let c = TestCluster::start_with_env(
        27900,
        5,
        RaftTimings::default(),
        &[(billdb_api::failpoints::ENV, "1")],
    );
    open_accounts(&c);
    let all: Vec<NodeId> = (1..=5).collect();
    let leader = c.leader();
    let followers: Vec<NodeId> = all.iter().copied().filter(|n| *n != leader).collect();
    let hold = |n: NodeId| c.c.hold_fsyncs(n).expect("hold fsyncs");
    let h = c.http(leader);

    hold(followers[0]);
    hold(followers[1]);
    pay(&h, "fp-two-held", &account(0), "1.00").expect("three nodes can still fsync");

    hold(leader);
    let t = Instant::now();
    let err = pay(&h, "fp-three-held", &account(1), "1.00")
        .expect_err("acknowledged with only two nodes able to fsync");
    assert_eq!(err.code(), Some("UNAVAILABLE"), "{err}");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "refused before its deadline: {:?}",
        t.elapsed()
    );
    assert_eq!(
        c.leader(),
        leader,
        "leadership moved while fsyncs were held"
    );

    for n in &all {
        c.c.release_fsyncs(*n).expect("release fsyncs");
    }
    pay_until_ok(
        &c,
        &all,
        "fp-three-held",
        &account(1),
        "1.00",
        Duration::from_secs(30),
    );
    c.wait_converged(&all, Duration::from_secs(60));
    assert_eq!(balance(&c, 2, &account(0)), Decimal::from(1));
    assert_eq!(balance(&c, 3, &account(1)), Decimal::from(1));
    assert_eq!(total_balance(&c, 4), Decimal::from(2));
}
