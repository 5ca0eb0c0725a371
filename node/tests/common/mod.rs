//! Shared helpers for tests that run real `billdb-node` processes through
//! the local cluster manager. Each test picks its own base port so tests
//! can run in parallel.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billdb_client::admin::{AdminClient, AdminError};
use billdb_client::local::{LocalCluster, RaftTimings};
use serde_json::{Value, json};

pub type NodeId = u64;

pub fn node_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb-node"))
}

/// A running, initialised five-node cluster in a temp dir (killed on drop).
pub struct TestCluster {
    pub c: LocalCluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn start(base_port: u16, n: usize) -> TestCluster {
        Self::start_with(base_port, n, RaftTimings::default())
    }

    pub fn start_with(base_port: u16, n: usize, raft: RaftTimings) -> TestCluster {
        Self::start_with_env(base_port, n, raft, &[])
    }

    /// As `start_with`, with extra environment for the node processes.
    pub fn start_with_env(
        base_port: u16,
        n: usize,
        raft: RaftTimings,
        env: &[(&str, &str)],
    ) -> TestCluster {
        Self::start_configured(base_port, n, raft, env, "", &|_| {})
    }

    /// As `start_with_env`, with `extra_toml` appended to every node.toml
    /// (sections the local cluster manager does not write, e.g. `[backup]`)
    /// and `before_start` run on the created cluster before its nodes start.
    pub fn start_configured(
        base_port: u16,
        n: usize,
        raft: RaftTimings,
        env: &[(&str, &str)],
        extra_toml: &str,
        before_start: &dyn Fn(&LocalCluster),
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = LocalCluster::create_with(dir.path(), node_bin(), base_port, n, raft)
            .expect("create cluster");
        c.set_kill_on_drop(true);
        if !extra_toml.is_empty() {
            for id in c.node_ids() {
                let p = c.config_path(id);
                let mut text = std::fs::read_to_string(&p).expect("node.toml");
                text.push('\n');
                text.push_str(extra_toml);
                std::fs::write(&p, text).expect("node.toml");
            }
        }
        // Every follower re-executes every entry that carries the leader's
        // results and stops at a difference: the suites check results
        // replication on every write they make (a test may override it).
        c.set_node_env("BILLDB_VERIFY_RESULTS", "true");
        for (k, v) in env {
            c.set_node_env(k, v);
        }
        before_start(&c);
        c.start_all().expect("start nodes");
        c.wait_all_healthy(Duration::from_secs(30))
            .expect("nodes healthy");
        c.init().expect("init");
        c.wait_leader(Duration::from_secs(30))
            .expect("leader elected");
        register_raw_tls(&c);
        TestCluster { c, _dir: dir }
    }

    /// A gRPC channel to node `n`'s client port (TLS with the cluster CA).
    pub async fn grpc_channel(&self, n: NodeId) -> tonic::transport::Channel {
        let url = self.c.grpc_url(n).expect("grpc url");
        let mut e = tonic::transport::Endpoint::from_shared(url).expect("url");
        if let Some(tls) = self.c.client_tls().expect("client tls") {
            e = e.tls_config(tls.tonic_config()).expect("tls config");
        }
        e.connect().await.expect("grpc connect")
    }

    /// HTTP client of node `n` with the ops token.
    pub fn http(&self, n: NodeId) -> AdminClient {
        self.http_as(n, "ops")
    }

    /// HTTP client of node `n` as a demo identity (ops, auditor, counter,
    /// bank), or without a token for "none".
    pub fn http_as(&self, n: NodeId, identity: &str) -> AdminClient {
        let token = if identity == "none" {
            None
        } else {
            Some(self.c.token(identity).expect("token"))
        };
        self.c
            .http_client(n, Duration::from_secs(10))
            .expect("http client")
            .with_token(token)
    }

    pub fn leader(&self) -> NodeId {
        self.c.wait_leader(Duration::from_secs(30)).expect("leader")
    }

    /// The value of one Prometheus sample line (`name{labels}`, exactly as
    /// exported) on node `n`; 0 when the node does not export it yet.
    /// Node `n`'s `/metrics` answer (status line, headers and body).
    pub fn metrics_text(&self, n: NodeId) -> String {
        use std::io::Read;
        // The CA bundle as it is now (it changes in a CA rotation).
        register_raw_tls(&self.c);
        let addr = self.c.http_addr(n).expect("addr");
        let mut s = send_raw(
            &addr,
            &format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        assert!(body.starts_with("HTTP/1.1 200"), "/metrics: {body:.200}");
        body
    }

    pub fn metric(&self, n: NodeId, sample: &str) -> f64 {
        self.metrics_text(n)
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    pub fn status(&self, n: NodeId) -> Value {
        self.http(n).status().expect("status")
    }

    pub fn digest(&self, n: NodeId) -> (Option<u64>, String) {
        let v = self.http(n).get("/v1/cluster/digest").expect("digest");
        (
            v["applied_index"].as_u64(),
            v["digest"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Wait until every listed node has applied at least what `leader`
    /// has committed and all report the same digest; returns it.
    pub fn wait_converged(&self, nodes: &[NodeId], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.leader();
            let committed = self.status(leader)["committed_index"].as_u64().unwrap_or(0);
            let digests: BTreeMap<NodeId, (Option<u64>, String)> =
                nodes.iter().map(|n| (*n, self.digest(*n))).collect();
            let all_applied = digests.values().all(|(a, _)| a.unwrap_or(0) >= committed);
            let first = digests
                .values()
                .next()
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
            if all_applied && digests.values().all(|(_, d)| *d == first) {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: committed {committed}, {digests:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn open_account(h: &AdminClient, account: &str) -> Result<Value, AdminError> {
    h.post(
        "/v1/accounts",
        &json!({"request_id": format!("open-{account}"), "account_id": account, "name": "Test", "branch": "B01", "utility": "heat"}),
    )
}

pub fn pay(
    h: &AdminClient,
    request_id: &str,
    account: &str,
    amount: &str,
) -> Result<Value, AdminError> {
    h.post(
        "/v1/payments",
        &json!({"request_id": request_id, "account_id": account, "amount": amount, "bank_code": "TESTBANK", "bank_ref": request_id}),
    )
}

/// Retry a write with the same request_id until it is acknowledged.
pub fn pay_until_ok(
    c: &TestCluster,
    nodes: &[NodeId],
    request_id: &str,
    account: &str,
    amount: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut i = 0usize;
    loop {
        let n = nodes[i % nodes.len()];
        match pay(&c.http(n), request_id, account, amount) {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{request_id} not acknowledged in time: {e}"
            ),
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The outcome stored for a request, read linearizably through node `n`.
pub fn outcome(c: &TestCluster, n: NodeId, request_id: &str) -> Option<Value> {
    match c.http(n).get(&format!("/v1/requests/{request_id}")) {
        Ok(v) => Some(v["outcome"].clone()),
        Err(e) if e.code() == Some("NOT_FOUND") => None,
        Err(e) => panic!("reading request {request_id}: {e}"),
    }
}

pub fn balance(c: &TestCluster, n: NodeId, account: &str) -> rust_decimal::Decimal {
    let v = c
        .http(n)
        .get(&format!("/v1/accounts/{account}"))
        .expect("account");
    v["balance"]
        .as_str()
        .expect("balance")
        .parse()
        .expect("decimal")
}

/// TLS client settings of the HTTP addresses of running test clusters, so
/// the raw-socket helpers below speak TLS to them.
static RAW_TLS: std::sync::Mutex<BTreeMap<String, std::sync::Arc<rustls::ClientConfig>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Register cluster `c`'s CA for [`send_raw`] to its nodes' HTTP ports.
pub fn register_raw_tls(c: &LocalCluster) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(tls) = c.client_tls().expect("client tls") else {
        return;
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(cert.expect("CA pem")).expect("CA");
    }
    #[allow(deprecated)] // ring, as the node.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut m = RAW_TLS.lock().unwrap();
    for n in c.node_ids() {
        m.insert(c.http_addr(n).expect("addr"), config.clone());
    }
}

/// A raw connection: plaintext or TLS.
pub trait RawConn: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> RawConn for T {}

/// Open a socket to `addr`, with the TLS handshake done when `addr`
/// belongs to a TLS test cluster: what is written next reaches the
/// server at once.
pub fn connect_raw(addr: &str) -> Box<dyn RawConn> {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let tls = RAW_TLS.lock().unwrap().get(addr).cloned();
    match tls {
        Some(config) => {
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
            let mut client = rustls::ClientConnection::new(config, name).expect("tls client");
            while client.is_handshaking() {
                client.complete_io(&mut s).expect("tls handshake");
            }
            Box::new(rustls::StreamOwned::new(client, s))
        }
        None => Box::new(s),
    }
}

/// Open a socket to `addr` and send `request`, a whole HTTP/1.1 request
/// written by hand (headers a client library would not send, or bytes that
/// are not JSON); over TLS when `addr` belongs to a TLS test cluster.
pub fn send_raw(addr: &str, request: &str) -> Box<dyn RawConn> {
    let mut conn = connect_raw(addr);
    write_raw(&mut conn, request);
    conn
}

fn write_raw(conn: &mut Box<dyn RawConn>, request: &str) {
    use std::io::Write;
    conn.write_all(request.as_bytes()).expect("write");
    conn.flush().expect("flush");
}

/// The status code of an answer's status line.
pub fn status_code(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .expect("status line")
}

/// Any method, raw body (not necessarily JSON); returns (status, JSON body).
pub fn raw_request(addr: &str, method: &str, path: &str, body: &str, token: &str) -> (u16, Value) {
    raw_request_on(connect_raw(addr), addr, method, path, body, token)
}

/// [`raw_request`] on a connection already open to `addr`
/// ([`connect_raw`]).
pub fn raw_request_on(
    mut conn: Box<dyn RawConn>,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: &str,
) -> (u16, Value) {
    use std::io::Read;
    write_raw(
        &mut conn,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    let status = status_code(&out);
    let json_start = out.find("\r\n\r\n").map(|i| i + 4).unwrap_or(out.len());
    let v = serde_json::from_str(out[json_start..].trim()).unwrap_or(Value::Null);
    (status, v)
}

/// Announce a `declared_bytes` body with `Expect: 100-continue` and send
/// nothing: the status of the first answer (`100` would ask for the body).
pub fn expect_continue_status(addr: &str, path: &str, declared_bytes: usize, token: &str) -> u16 {
    use std::io::{BufRead, BufReader};
    let s = send_raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {declared_bytes}\r\nExpect: 100-continue\r\n\r\n"
        ),
    );
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("status line");
    status_code(&line)
}

/// A gRPC request carrying a bearer token.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("token is ascii"),
    );
    r
}

/// Accounts a [`Load`] pays into.
pub const LOAD_ACCOUNTS: usize = 8;

/// Opens the accounts a [`Load`] pays into.
pub fn open_load_accounts(c: &TestCluster) {
    let h = c.http(c.leader());
    for i in 0..LOAD_ACCOUNTS {
        open_account(&h, &format!("OUT-{i}")).expect("open account");
    }
}

/// A write load through the nodes listed in `live`: one payment, then
/// `pause` (100 ms: a light load; zero: as fast as one client goes); every
/// write must be acknowledged within 10 s. Payments of 1.00 to the accounts
/// `OUT-0` … `OUT-7` (`open_load_accounts`).
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    slowest_ms: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(c: &Arc<TestCluster>, live: Arc<Mutex<Vec<NodeId>>>, prefix: &str) -> Load {
        Self::start_paced(c, live, prefix, Duration::from_millis(100))
    }

    pub fn start_paced(
        c: &Arc<TestCluster>,
        live: Arc<Mutex<Vec<NodeId>>>,
        prefix: &str,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let (c, s, a, f, w, prefix) = (
            c.clone(),
            stop.clone(),
            acked.clone(),
            failed.clone(),
            slowest_ms.clone(),
            prefix.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let id = format!("{prefix}-{i}");
                let account = format!("OUT-{}", i % LOAD_ACCOUNTS);
                let t = Instant::now();
                let deadline = t + Duration::from_secs(10);
                let mut k = i;
                loop {
                    let nodes = live.lock().unwrap().clone();
                    let n = nodes[k % nodes.len()];
                    k += 1;
                    match pay(&c.http(n), &id, &account, "1.00") {
                        Ok(_) => {
                            a.fetch_add(1, Ordering::Relaxed);
                            w.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if Instant::now() >= deadline => {
                            f.lock().unwrap().push(format!("{id}: {e}"));
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                i += 1;
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            acked,
            failed,
            slowest_ms,
            handle: Some(handle),
        }
    }

    /// Stop and return (acknowledged, failed, slowest ms).
    pub fn finish(mut self) -> (u64, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("load thread");
        }
        (
            self.acked.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
            self.slowest_ms.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    /// A failing test still stops its load thread, so the cluster it holds
    /// is dropped and its nodes killed.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---- shared by the storage tests (storage_faults.rs, corruption.rs) ----

/// The leader, one follower, and the other four.
pub fn pick_follower(c: &TestCluster) -> (NodeId, NodeId, Vec<NodeId>) {
    let leader = c.leader();
    let ids = c.c.node_ids();
    let victim = *ids.iter().find(|n| **n != leader).expect("a follower");
    let others = ids.into_iter().filter(|n| *n != victim).collect();
    (leader, victim, others)
}

/// The node's log from byte `from` on.
pub fn log_since(c: &TestCluster, n: NodeId, from: u64) -> String {
    let text = std::fs::read(c.c.log_path(n)).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[from..]).into_owned()
}

pub fn log_len(c: &TestCluster, n: NodeId) -> u64 {
    billdb_client::local::usage::file_len(&c.c.log_path(n))
}

/// Node `n`'s status, or None while it does not answer (restarting).
pub fn try_status(c: &TestCluster, n: NodeId) -> Option<Value> {
    c.http(n).status().ok()
}

pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every payment the load acknowledged is in every replica's balances, and
/// no other: each account's balance is 1.00 × its acknowledged payments.
pub fn assert_balances(c: &TestCluster, nodes: &[NodeId], acked_per_account: &[u64]) {
    for n in nodes {
        for (i, count) in acked_per_account.iter().enumerate() {
            let b = balance(c, *n, &format!("OUT-{i}"));
            assert_eq!(
                b,
                rust_decimal::Decimal::from(*count),
                "node {n}: OUT-{i} balance {b}, {count} payments acknowledged"
            );
        }
    }
}

/// Acknowledged payments per account, read back from the leader's
/// exactly-once table: every request the load sent was retried until
/// acknowledged or reported failed, so the set is known.
pub fn acked_per_account(c: &TestCluster, prefix: &str, acked: u64) -> Vec<u64> {
    let mut per = vec![0u64; LOAD_ACCOUNTS];
    for i in 0..acked {
        let i = usize::try_from(i).expect("count");
        per[i % LOAD_ACCOUNTS] += 1;
    }
    // The load is sequential: request i is acknowledged before i+1 is sent.
    let leader = c.leader();
    assert!(
        outcome(c, leader, &format!("{prefix}-{}", acked - 1)).is_some(),
        "the last acknowledged payment is on the leader"
    );
    per
}

/// `name` (e.g. `python`, `st`) from the Python environment of the API
/// tests that `deploy/setup.sh` makes in `$BILLDB_PYENV` (default
/// /var/tmp/billdb-pyenv); a missing one fails the test.
pub fn py_tool(name: &str) -> std::path::PathBuf {
    let env = std::env::var_os("BILLDB_PYENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/billdb-pyenv"));
    let tool = env.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: run deploy/setup.sh (it makes the Python environment the API tests use)",
        tool.display()
    );
    tool
}
