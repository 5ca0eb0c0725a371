//! Secure by default, against real processes: the Raft port serves only
//! members of its cluster (mutual TLS + membership check on every RPC), the
//! client ports are TLS only, client certificates map to roles, the tokens
//! file and every certificate rotate without a restart, and no secret
//! reaches a log, a status answer or the metrics.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use billdb_api::identity::node_dns_name;
use billdb_api::raftpb::raft_internal_client::RaftInternalClient;
use billdb_api::raftpb::{RaftMsg, SnapshotChunk};
use billdb_client::certs;
use billdb_client::local::LocalCluster;
use billdb_client::tls::ClientTls;
use billdb_node::app::{AdminOp, Forward};
use billdb_node::domain::Op;
use billdb_node::raft_net::encode;
use billdb_node::types::{TypeConfig, Vote};
use common::*;
use rust_decimal::Decimal;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The CA that signs a local cluster's certificates.
fn signing_ca(c: &LocalCluster) -> certs::Ca {
    certs::read_ca(&c.tls_dir().join("signing")).expect("signing CA")
}

/// A Raft-port client of node `target` at `addr`, trusting `ca_pem`,
/// presenting `identity` (certificate, key) when given.
async fn raft_client(
    addr: &str,
    cluster_id: &str,
    target: u64,
    ca_pem: &str,
    identity: Option<&certs::Leaf>,
) -> Result<RaftInternalClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(node_dns_name(cluster_id, target));
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(RaftInternalClient::new(ch))
}

/// Every Raft RPC a stranger would use, each with a real message; returns
/// the status code of each.
async fn attack(client: &mut RaftInternalClient<Channel>) -> Vec<(&'static str, tonic::Code)> {
    let msg = |data: Vec<u8>| RaftMsg { data };
    let code = |r: Result<tonic::Response<RaftMsg>, tonic::Status>| match r {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    let remove = encode(&Forward::Admin(AdminOp::Remove { id: 5 })).unwrap();
    let forged_payment = encode(&Forward::Write {
        request_id: "forged-payment".into(),
        operator: "bank:ICBC".into(),
        branch: String::new(),
        channel: "bank".into(),
        op: Op::Payment {
            account_id: "SEC-1".into(),
            amount: Decimal::new(1_000_000, 2),
            bank_code: "ICBC".into(),
            bank_ref: "forged".into(),
        },
    })
    .unwrap();
    let vote = encode(&openraft::raft::VoteRequest::<TypeConfig>::new(
        Vote::new(1_000, 9),
        None,
    ))
    .unwrap();
    let append = encode(&openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1_000, 9),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    })
    .unwrap();
    let mut out = vec![
        ("forward_admin", code(client.forward(msg(remove)).await)),
        (
            "forward_write",
            code(client.forward(msg(forged_payment)).await),
        ),
        ("vote", code(client.vote(msg(vote.clone())).await)),
        ("pre_vote", code(client.pre_vote(msg(vote)).await)),
        (
            "append_entries",
            code(client.append_entries(msg(append.clone())).await),
        ),
        (
            "transfer_leader",
            code(client.transfer_leader(msg(vec![1, 2, 3])).await),
        ),
    ];
    let chunk = SnapshotChunk {
        meta: vec![0; 16],
        data: vec![0; 64],
        offset: 0,
    };
    let snap = client
        .install_snapshot(tokio_stream::iter(vec![chunk]))
        .await;
    out.push(("install_snapshot", code(snap)));
    let stream = client
        .stream_append(tokio_stream::iter(vec![msg(append)]))
        .await;
    let stream_code = match stream {
        Err(s) => s.code(),
        Ok(resp) => {
            use futures::StreamExt;
            match resp.into_inner().next().await {
                Some(Err(s)) => s.code(),
                _ => tonic::Code::Ok,
            }
        }
    };
    out.push(("stream_append", stream_code));
    out
}

/// A connection attempt that must be refused at the TLS handshake: either
/// it fails, or every RPC on it fails before any identity check.
async fn assert_refused_at_handshake(
    attempt: Result<RaftInternalClient<Channel>, tonic::transport::Error>,
    who: &str,
) {
    let Ok(mut client) = attempt else {
        return;
    };
    for (rpc, code) in attack(&mut client).await {
        assert_ne!(code, tonic::Code::Ok, "{rpc} served to {who}");
        assert_ne!(
            code,
            tonic::Code::PermissionDenied,
            "{rpc} from {who}: not refused at the handshake"
        );
    }
}

/// Tokens, private keys and key bodies must appear in no node log, status
/// answer or metrics page.
fn assert_no_secrets(c: &TestCluster) {
    let mut secrets: Vec<String> = Vec::new();
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.c.tokens_json_path()).unwrap()).unwrap();
    for (_, t) in tokens.as_object().unwrap() {
        secrets.push(t.as_str().unwrap().to_string());
    }
    let mut key_files = Vec::new();
    for dir in [c.c.tls_dir(), c.c.tls_dir().join("signing")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "key") {
                key_files.push(p);
            }
        }
    }
    assert!(key_files.len() >= 6, "keys found: {key_files:?}");
    for p in &key_files {
        for line in std::fs::read_to_string(p).unwrap().lines() {
            if !line.starts_with("-----") && line.len() >= 16 {
                secrets.push(line.to_string());
            }
        }
    }
    secrets.push("PRIVATE KEY".into());
    let mut texts = Vec::new();
    for n in c.c.node_ids() {
        texts.push((
            format!("node {n} log"),
            std::fs::read_to_string(c.c.log_path(n)).unwrap(),
        ));
        if let Ok(s) = c.http(n).status() {
            texts.push((format!("node {n} status"), s.to_string()));
        }
        texts.push((format!("node {n} metrics"), c.metrics_text(n)));
    }
    assert!(texts.len() >= c.c.node_ids().len() * 3);
    for (what, text) in &texts {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{what} holds a secret ({} chars)",
                s.len()
            );
        }
    }
}

fn voters(c: &TestCluster, n: u64) -> Vec<u64> {
    let s = c.status(n);
    let mut v: Vec<u64> = s["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn only_members_of_the_cluster_get_raft_rpcs_served_and_clients_need_tls() {
    let c = TestCluster::start(17000, 5);
    let leader = c.leader();
    let h = c.http(leader);
    open_account(&h, "SEC-1").expect("open");
    pay(&h, "sec-pay-1", "SEC-1", "10.00").expect("pay");
    let (_, digest_before) = c.digest(leader);
    let raft_addr = c.c.raft_addr(leader).unwrap();
    let ca = signing_ca(&c.c);
    let ca_pem = std::fs::read_to_string(c.c.ca_bundle_path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 1. No certificate: refused at the handshake, nothing served.
        let no_cert = raft_client(&raft_addr, "local", leader, &ca_pem, None).await;
        assert_refused_at_handshake(no_cert, "a caller without a certificate").await;
        // Plaintext to the Raft port: nothing served either.
        let plain = Endpoint::from_shared(format!("http://{raft_addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        for (rpc, code) in attack(&mut RaftInternalClient::new(plain)).await {
            assert_ne!(code, tonic::Code::Ok, "{rpc} served in plaintext");
        }
        // 2. A valid certificate of this cluster's CA naming a non-member,
        // a client certificate, and a node of another cluster id signed by
        // the same CA: every RPC refused with PERMISSION_DENIED.
        let hosts = vec!["127.0.0.1".to_string()];
        for leaf in [
            certs::node_cert(&ca, "local", 9, &hosts).unwrap(),
            certs::client_cert(&ca, "local", "ops").unwrap(),
            certs::node_cert(&ca, "other", 2, &hosts).unwrap(),
        ] {
            let mut client = raft_client(&raft_addr, "local", leader, &ca_pem, Some(&leaf))
                .await
                .expect("a certificate of the cluster CA passes the handshake");
            for (rpc, code) in attack(&mut client).await {
                assert_eq!(code, tonic::Code::PermissionDenied, "{rpc}");
            }
        }
        // 3. Another cluster's CA, naming a member: refused at the handshake.
        let foreign = certs::new_ca("local").unwrap();
        let leaf = certs::node_cert(&foreign, "local", 2, &hosts).unwrap();
        let foreign_ca = raft_client(&raft_addr, "local", leader, &ca_pem, Some(&leaf)).await;
        assert_refused_at_handshake(foreign_ca, "another cluster's CA").await;
        // A member's certificate passes the check (a malformed message is
        // then refused as such, not as a stranger).
        let member = certs::node_cert(&ca, "local", 2, &hosts).unwrap();
        let mut client = raft_client(&raft_addr, "local", leader, &ca_pem, Some(&member))
            .await
            .expect("member handshake");
        let e = client
            .snapshot_staged(RaftMsg { data: vec![0xff] })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        // The server's identity is checked too: node 2's address is not
        // node 3.
        let wrong_name = raft_client(
            &c.c.raft_addr(2).unwrap(),
            "local",
            3,
            &ca_pem,
            Some(&member),
        )
        .await;
        match wrong_name {
            Err(_) => {}
            Ok(mut cl) => assert!(
                cl.snapshot_staged(RaftMsg { data: vec![] }).await.is_err(),
                "a node answered for another node's name"
            ),
        }
    });
    // Nothing changed: all five voters, the same term's leader, the same
    // state, no forged payment.
    for n in 1..=5 {
        assert_eq!(voters(&c, n), vec![1, 2, 3, 4, 5], "node {n}");
    }
    let (_, digest_after) = c.digest(leader);
    assert_eq!(digest_before, digest_after, "the state changed");
    assert!(outcome(&c, leader, "forged-payment").is_none());
    assert_eq!(balance(&c, leader, "SEC-1"), Decimal::new(1_000, 2));
    let refused = c.metric(
        leader,
        "billdb_raft_rpc_refused_total{reason=\"not_a_member\"}",
    );
    assert!(refused >= 8.0, "refusals counted: {refused}");
    assert!(
        c.metric(
            leader,
            "billdb_raft_rpc_refused_total{reason=\"other_cluster\"}"
        ) >= 8.0
    );
    assert!(
        c.metric(
            leader,
            "billdb_raft_rpc_refused_total{reason=\"not_a_node\"}"
        ) >= 8.0
    );
    let log = std::fs::read_to_string(c.c.log_path(leader)).unwrap();
    assert!(log.contains("refused a Raft RPC"), "refusal logged");
    assert!(log.contains("billdb://local/node/9"), "the caller is named");

    // Client ports: plaintext HTTP and gRPC fail; the CA succeeds on both.
    let http_addr = c.c.http_addr(leader).unwrap();
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&http_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!out.starts_with(b"HTTP/"), "plaintext HTTP answered");
    }
    let plain_http = billdb_client::admin::AdminClient::with_timeout(
        &format!("http://{http_addr}"),
        Duration::from_secs(5),
    );
    assert!(plain_http.healthz().is_err());
    let grpc_addr = c.c.grpc_addr(leader).unwrap();
    let _runtime = rt.enter();
    let plain_grpc = billdb_client::client::Client::new(
        &[format!("http://{grpc_addr}")],
        Some(&c.c.token("ops").unwrap()),
    )
    .unwrap()
    .with_deadline(Duration::from_secs(3));
    let tls = c.c.client_tls().unwrap().expect("tls");
    let good_grpc = billdb_client::client::Client::with_tls(
        std::slice::from_ref(&grpc_addr),
        Some(&c.c.token("auditor").unwrap()),
        Some(&tls),
    )
    .unwrap();
    // Another CA than the cluster's: the node's certificate is not trusted.
    let other_ca = certs::new_ca("local").unwrap();
    let wrong_tls = ClientTls::from_pem(other_ca.cert_pem.into_bytes(), None).unwrap();
    let wrong_http = billdb_client::admin::AdminClient::with_tls(
        &http_addr,
        Duration::from_secs(5),
        Some(&wrong_tls),
    );
    assert!(
        wrong_http.healthz().is_err(),
        "a client trusting another CA got through"
    );
    rt.block_on(async {
        let e = plain_grpc.get_account("SEC-1").await;
        assert!(e.is_err(), "plaintext gRPC answered: {e:?}");
        let a = good_grpc.get_account("SEC-1").await.expect("TLS gRPC");
        assert_eq!(a.account_id, "SEC-1");
    });
    c.http(leader).healthz().expect("TLS HTTP");

    // A client certificate mapped to a role (tokens file reloaded live).
    let (cert, key) = c.c.issue_client_cert("counter-9").unwrap();
    let tokens = c.c.tokens_toml_path();
    let text = std::fs::read_to_string(&tokens).unwrap();
    std::fs::write(
        &tokens,
        format!(
            "{text}\n[[token]]\nclient_cert = \"counter-9\"\nrole = \"counter\"\noperator_id = \"C-0909\"\nbranch = \"B09\"\n"
        ),
    )
    .unwrap();
    let with_cert = ClientTls::from_files(&c.c.ca_bundle_path(), Some((&cert, &key))).unwrap();
    let by_cert = billdb_client::admin::AdminClient::with_tls(
        &http_addr,
        Duration::from_secs(5),
        Some(&with_cert),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match by_cert.get("/v1/accounts/SEC-1") {
            Ok(v) => {
                assert_eq!(v["account_id"], "SEC-1");
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some("UNAUTHENTICATED"), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "the client certificate never mapped"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // The same certificate over gRPC, no token.
    rt.block_on(async {
        let g = billdb_client::client::Client::with_tls(
            std::slice::from_ref(&grpc_addr),
            None,
            Some(&with_cert),
        )
        .unwrap();
        assert_eq!(
            g.get_account("SEC-1").await.expect("by cert").account_id,
            "SEC-1"
        );
    });
    // A counter's role, not more: administration is refused.
    assert_eq!(
        by_cert.remove(5).unwrap_err().code(),
        Some("PERMISSION_DENIED")
    );

    // Revoke the bank token: refused within 5 s of the file change.
    let bank = c.http_as(leader, "bank");
    let bank_pay = |rid: &str| {
        bank.post(
            "/v1/payments",
            &serde_json::json!({"request_id": rid, "account_id": "SEC-1", "amount": "1.00", "bank_code": "ICBC", "bank_ref": rid}),
        )
    };
    bank_pay("sec-bank-1").expect("bank pays");
    let bank_hash = billdb_client::local::token_sha256(&c.c.token("bank").unwrap());
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(text.contains(&bank_hash));
    std::fs::write(&tokens, text.replace(&bank_hash, &"0".repeat(64))).unwrap();
    let changed = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        match bank_pay(&format!("sec-bank-r{i}")) {
            Err(e) if e.code() == Some("UNAUTHENTICATED") => break,
            _ => {
                assert!(
                    changed.elapsed() < Duration::from_secs(5),
                    "a revoked token still worked after 5 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "revoked token refused after {} ms",
        changed.elapsed().as_millis()
    );
    assert_no_secrets(&c);
}

/// A purchase load (a counter selling credit through one follower)
/// recording the acknowledged request ids and the longest time without an
/// acknowledgement.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, Duration, usize)>>,
}

impl Load {
    fn start(c: &TestCluster, node: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (cl, stop2) = (c.c.clone(), stop.clone());
        let token = c.c.token("counter").unwrap();
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut last_ok = Instant::now();
            let mut longest = Duration::ZERO;
            let mut failures = 0;
            let mut i = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                i += 1;
                // A fresh client each time reads the CA bundle as it is now
                // (a client given the new bundle during a CA rotation).
                let h = cl
                    .http_client(node, Duration::from_secs(3))
                    .unwrap()
                    .with_token(Some(token.clone()));
                let rid = format!("rot-{i}");
                let buy = serde_json::json!({"request_id": rid, "account_id": "ROT-1",
                    "amount": "1.00", "confirm_duplicate": true});
                match h.post("/v1/purchases", &buy) {
                    Ok(_) => {
                        acked.push(rid);
                        longest = longest.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Err(_) => failures += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            longest = longest.max(last_ok.elapsed());
            (acked, longest, failures)
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, Duration, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Wait until every node runs TLS material that satisfies `ok`.
fn wait_tls(c: &TestCluster, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = c.c.node_ids().into_iter().all(|n| {
            c.http(n)
                .status()
                .map(|s| ok(&s["security"]["tls"]))
                .unwrap_or(false)
        });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "nodes did not load {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn certificates_and_the_ca_rotate_under_load_without_a_restart() {
    let c = TestCluster::start(17500, 5);
    let leader = c.leader();
    let ops = c.http(leader);
    ops.put_json(
        "/v1/tariffs/T-ROT",
        &serde_json::json!({"request_id": "tariff-rot", "kind": "flat", "price": "0.50",
            "effective_from": "2000-01-01T00:00:00Z"}),
    )
    .expect("tariff");
    ops.post(
        "/v1/accounts",
        &serde_json::json!({"request_id": "open-rot", "account_id": "ROT-1", "name": "Rot",
            "branch": "B01", "utility": "electricity", "tariff_id": "T-ROT"}),
    )
    .expect("open");
    let pids: Vec<Option<u32>> = c.c.node_ids().into_iter().map(|n| c.c.pid(n)).collect();
    let old_ca = std::fs::read(c.c.ca_bundle_path()).unwrap();
    let certs_before: BTreeSet<String> =
        c.c.node_ids()
            .into_iter()
            .map(|n| {
                c.status(n)["security"]["tls"]["cert_sha256"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    let follower = (1..=5).find(|n| *n != leader).unwrap();
    let load = Load::start(&c, follower);
    std::thread::sleep(Duration::from_secs(2));

    // Every node's certificate, same CA.
    c.c.rotate_node_certs().unwrap();
    wait_tls(&c, "new node certificates", |t| {
        !certs_before.contains(t["cert_sha256"].as_str().unwrap_or(""))
    });
    std::thread::sleep(Duration::from_secs(2));
    // A new CA trusted beside the old, node certificates from it.
    c.c.rotate_ca_begin().unwrap();
    wait_tls(&c, "the CA overlap", |t| t["ca_count"] == 2);
    std::thread::sleep(Duration::from_secs(2));
    // Only the new CA.
    c.c.rotate_ca_finish().unwrap();
    wait_tls(&c, "the new CA alone", |t| t["ca_count"] == 1);
    std::thread::sleep(Duration::from_secs(2));
    let (acked, longest, failures) = load.finish();
    eprintln!(
        "rotation under load: {} acknowledged, {failures} failed, longest without an ack {} ms",
        acked.len(),
        longest.as_millis()
    );
    assert!(acked.len() > 50, "the load ran: {}", acked.len());
    // No node restarted.
    let after: Vec<Option<u32>> = c.c.node_ids().into_iter().map(|n| c.c.pid(n)).collect();
    assert_eq!(pids, after, "a node restarted");
    // Requests never failed for longer than an election and a retry.
    assert!(longest < Duration::from_secs(2), "no write for {longest:?}");
    // Every acknowledged sale is there, and every replica holds the same
    // state.
    let converged = c.wait_converged(&c.c.node_ids(), Duration::from_secs(30));
    eprintln!("converged: {converged}");
    for rid in &acked {
        assert!(outcome(&c, leader, rid).is_some(), "{rid} lost");
    }
    let balance_before = balance(&c, leader, "ROT-1");
    // A client that kept the old CA alone can no longer connect.
    let stale = ClientTls::from_pem(old_ca, None).unwrap();
    let h = billdb_client::admin::AdminClient::with_tls(
        &c.c.http_addr(leader).unwrap(),
        Duration::from_secs(3),
        Some(&stale),
    );
    assert!(
        h.healthz().is_err(),
        "old CA still accepted by a node's new certificate"
    );
    // New peer connections work under the new CA alone: a restarted node
    // rejoins and catches up.
    c.c.stop(follower).unwrap();
    pay_until_ok(
        &c,
        &[leader],
        "rot-after",
        "ROT-1",
        "1.00",
        Duration::from_secs(20),
    );
    c.c.start(follower).unwrap();
    c.c.wait_healthy(follower, Duration::from_secs(30)).unwrap();
    c.wait_converged(&c.c.node_ids(), Duration::from_secs(60));
    assert_eq!(
        balance(&c, follower, "ROT-1"),
        balance_before + Decimal::ONE
    );
    // A bad new file is refused and the node keeps the good one.
    std::fs::write(c.c.node_key_path(leader), "not a key\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status(leader)["security"]["tls"]["last_reload_error"].is_null() {
        assert!(Instant::now() < deadline, "the bad key was not noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.http(leader)
        .healthz()
        .expect("still serving with the good material");
    assert_no_secrets(&c);
}

#[test]
fn strangers_cannot_exhaust_the_raft_port_and_bad_material_stops_a_node_at_start() {
    let c = TestCluster::start(16500, 3);
    let leader = c.leader();
    open_account(&c.http(leader), "LIM-1").expect("open");
    let raft_addr = c.c.raft_addr(leader).unwrap();
    // Idle TCP connections that never start a handshake: at most 16 per
    // address wait for one, the rest are closed at once; the waiting ones
    // are dropped after the handshake deadline (5 s).
    let idle: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(&raft_addr).ok())
        .collect();
    assert!(idle.len() >= 30, "connections opened: {}", idle.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.metric(
        leader,
        "billdb_listener_refused_total{listener=\"raft\",reason=\"handshakes_per_ip_max\"}",
    ) < 20.0
    {
        assert!(Instant::now() < deadline, "no per-address handshake bound");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.metric(
        leader,
        "billdb_listener_refused_total{listener=\"raft\",reason=\"handshake_timeout\"}",
    ) < 16.0
    {
        assert!(
            Instant::now() < deadline,
            "idle handshakes were not timed out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
    // The cluster went on: a write commits on a quorum.
    pay_until_ok(
        &c,
        &[leader],
        "lim-pay",
        "LIM-1",
        "2.00",
        Duration::from_secs(20),
    );
    assert_eq!(balance(&c, leader, "LIM-1"), Decimal::new(200, 2));

    // A node given another node's certificate refuses to start and says why.
    let victim = (1..=3).find(|n| *n != leader).unwrap();
    c.c.stop(victim).unwrap();
    let config = c.c.config_path(victim);
    let text = std::fs::read_to_string(&config).unwrap();
    let swapped = text.replace(&format!("node{victim}.pem"), &format!("node{leader}.pem"));
    assert_ne!(text, swapped);
    std::fs::write(&config, &swapped).unwrap();
    let out = std::process::Command::new(node_bin())
        .args(["--config", &config.to_string_lossy()])
        .output()
        .expect("run billdb-node");
    assert!(
        !out.status.success(),
        "started with another node's certificate"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "names billdb://local/node/{leader}, not this node"
        )),
        "{err}"
    );
    // A missing key file.
    std::fs::write(
        &config,
        text.replace(&format!("node{victim}.key"), "missing.key"),
    )
    .unwrap();
    let out = std::process::Command::new(node_bin())
        .args(["--config", &config.to_string_lossy()])
        .output()
        .expect("run billdb-node");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
    // Restored, it starts and rejoins.
    std::fs::write(&config, &text).unwrap();
    c.c.start(victim).unwrap();
    c.c.wait_healthy(victim, Duration::from_secs(30)).unwrap();
    c.wait_converged(&[1, 2, 3], Duration::from_secs(30));
}
