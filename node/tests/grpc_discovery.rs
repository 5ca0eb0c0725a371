//! The client gRPC port to a client that has no .proto file and to an
//! orchestrator: server reflection (a Python grpcio client that learns the
//! API from it makes a purchase and reads a refusal's billdb code from its
//! `google.rpc.ErrorInfo`), and `grpc.health.v1` (NOT_SERVING on a leader
//! cut off from its quorum, SERVING again once the quorum is back).
//!
//! The Python environment comes from `deploy/setup.sh`
//! (`deploy/python-requirements.txt` in `$BILLDB_PYENV`, default
//! /var/tmp/billdb-pyenv); a missing environment fails the test.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

async fn health(c: &TestCluster, n: NodeId, service: &str) -> Option<ServingStatus> {
    let channel = tokio::time::timeout(Duration::from_secs(5), c.grpc_channel(n))
        .await
        .ok()?;
    let mut h = HealthClient::new(channel);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        h.check(HealthCheckRequest {
            service: service.to_string(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn wait_health(
    c: &TestCluster,
    n: NodeId,
    want: ServingStatus,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = health(c, n, "").await;
        if now == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "node {n}: health {now:?}, wanted {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn reflection_client_without_proto_purchases_and_reads_refusal_codes() {
    let c = TestCluster::start(37000, 5);
    let ops = c.http(1);
    ops.put_json(
        "/v1/tariffs/TR",
        &json!({"request_id": "tariff-TR", "kind": "flat", "price": "0.50"}),
    )
    .expect("tariff");
    ops.post(
        "/v1/accounts",
        &json!({"request_id": "open-R1", "account_id": "R1", "name": "Reflect",
                "branch": "B01", "utility": "electricity", "tariff_id": "TR"}),
    )
    .expect("open");
    ops.post(
        "/v1/cards",
        &json!({"request_id": "card-R1", "account_id": "R1", "card_no": "CARD-R1"}),
    )
    .expect("card");

    let node = 2;
    let out = Command::new(py_tool("python"))
        .arg(script("grpc_reflection_client.py"))
        .args(["--target", &c.c.grpc_addr(node).expect("addr")])
        .arg("--ca")
        .arg(c.c.ca_bundle_path())
        .args(["--token", &c.c.token("counter").expect("token")])
        .args(["--card", "CARD-R1", "--amount", "12.50", "--account", "R1"])
        .args(["--bank-token", &c.c.token("bank").expect("bank token")])
        .output()
        .expect("run the Python reflection client");
    assert!(
        out.status.success(),
        "reflection client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("client prints JSON");
    eprintln!("reflection client: {v}");

    // Reflection lists the client API and health, not the Raft transport.
    let services: Vec<&str> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for s in [
        "billdb.v2.Billing",
        "billdb.v1.Billing",
        "billdb.v1.Cluster",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&s), "{s} not listed: {services:?}");
    }
    assert!(
        !services.iter().any(|s| s.contains("raft")),
        "the Raft transport must not be described on the client port: {services:?}"
    );

    // The card check's verdict is an enum value of the typed reply.
    assert_eq!(v["verdict"], "OK", "{v}");
    // The purchase went through and is durable: the account's records hold
    // it. The reply is typed (billdb.v2): fields, not a JSON string.
    let reply = &v["purchase"];
    let amount = |v: &Value| -> rust_decimal::Decimal {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("decimal: {v}"))
    };
    assert_eq!(reply["record"]["kind"], "purchase", "{reply}");
    assert_eq!(
        amount(&reply["record"]["amount"]),
        rust_decimal::Decimal::new(1250, 2),
        "{reply}"
    );
    // uint64 travels as a string in protobuf's JSON form.
    let seq: u64 = reply["record"]["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("record seq: {reply}"));
    let records = ops
        .get("/v1/accounts/R1/records?segment=all")
        .expect("records");
    let stored = records["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["seq"].as_u64() == Some(seq))
        .unwrap_or_else(|| panic!("the purchase is not in the account's records: {records}"));
    assert_eq!(
        amount(&stored["amount"]),
        rust_decimal::Decimal::new(1250, 2)
    );

    // The rest of the counter session through the same generic client: the
    // sale is the newest recent record, and its invoice printed once.
    let recent = &v["session"]["recent"]["records"];
    assert_eq!(recent[0]["record_id"], reply["record_id"], "{v}");
    let printed = &v["session"]["printed"];
    assert_eq!(
        printed["invoice"]["invoice_no"], reply["record"]["invoice_no"],
        "{v}"
    );
    assert_eq!(printed["print_count"], 1, "{v}");
    // The bank posting sent twice with one request_id: one record.
    let (first, again) = (&v["bank"]["first"], &v["bank"]["again"]);
    assert_eq!(first["result"], "payment_posted", "{v}");
    assert_eq!(first["record_id"], again["record_id"], "{v}");
    let payments = ops
        .get("/v1/accounts/R1/records?segment=all")
        .expect("records")["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == "payment")
        .count();
    assert_eq!(payments, 1, "a retried posting made one payment");

    // The refusal carries the billdb code in google.rpc.ErrorInfo.
    let refusal = &v["refusal"];
    assert_eq!(refusal["reason"], "CARD_UNKNOWN", "{refusal}");
    assert_eq!(refusal["domain"], "billdb", "{refusal}");
    assert_eq!(refusal["grpc_code"], "NOT_FOUND", "{refusal}");

    // Health through the same generic client.
    assert_eq!(v["health"]["(server)"], "SERVING", "{v}");
    assert_eq!(v["health"]["billdb.v2.Billing"], "SERVING", "{v}");
    assert_eq!(v["health"]["billdb.v1.Billing"], "SERVING", "{v}");
}

#[test]
fn health_is_not_serving_on_a_leader_cut_off_from_its_quorum_and_serving_after() {
    let c = TestCluster::start(37500, 5);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let leader = c.leader();
        // Idle for several election timeouts: heartbeats keep an idle
        // leader's quorum fresh, so it stays SERVING.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for n in c.c.node_ids() {
            assert_eq!(
                health(&c, n, "").await,
                Some(ServingStatus::Serving),
                "node {n}"
            );
            assert_eq!(
                health(&c, n, "billdb.v1.Billing").await,
                Some(ServingStatus::Serving),
                "node {n}"
            );
        }
        // Three followers down: the leader keeps one follower, two of five.
        let followers: Vec<NodeId> =
            c.c.node_ids()
                .into_iter()
                .filter(|n| *n != leader)
                .collect();
        let down = &followers[..3];
        for n in down {
            c.c.kill(*n).expect("kill");
        }
        let took = wait_health(
            &c,
            leader,
            ServingStatus::NotServing,
            Duration::from_secs(20),
        )
        .await;
        eprintln!("leader {leader}: NOT_SERVING {took:?} after losing its quorum");
        assert_eq!(
            health(&c, leader, "billdb.v1.Billing").await,
            Some(ServingStatus::NotServing)
        );
        // The cluster service stays up: an operator's status calls work.
        assert_eq!(
            health(&c, leader, "billdb.v1.Cluster").await,
            Some(ServingStatus::Serving)
        );
        let why = c.http(leader).readyz();
        assert!(matches!(why, Ok(false) | Err(_)), "/readyz agrees: {why:?}");

        for n in down {
            c.c.start(*n).expect("restart");
        }
        for n in c.c.node_ids() {
            let took = wait_health(&c, n, ServingStatus::Serving, Duration::from_secs(60)).await;
            eprintln!("node {n}: SERVING again after {took:?}");
        }
    });
}
