//! Workload clients: counters (verify card, read the recent segment, purchase,
//! reissue), bank front-ends (payments, some delivered twice under the same
//! request_id, some re-sent under a new request_id with the same bank
//! reference) and readers (linearizable account reads, reports). Each is a
//! thread talking HTTP to the nodes' client API; every operation is recorded.
//!
//! May touch: HTTP to the member nodes' addresses it is given, the recorder.
//! A write whose answer is not definite is retried with the SAME request_id on
//! other nodes until it gets one or its retry budget is spent (then it is
//! recorded as unknown); a definite refusal is recorded as a failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use billdb_client::admin::{AdminClient, AdminError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::history::{AcctState, Op, OpKind, Outcome, Recorder};

/// Node id → client HTTP address of the current members (changes when a
/// nemesis replaces a node).
#[derive(Default)]
pub struct Endpoints {
    nodes: RwLock<Vec<(u64, String)>>,
}

impl Endpoints {
    pub fn set(&self, nodes: Vec<(u64, String)>) {
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }
    pub fn get(&self) -> Vec<(u64, String)> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Bearer tokens of the demo identities the workers act as.
#[derive(Clone)]
pub struct Tokens {
    pub counter: String,
    pub bank: String,
    pub auditor: String,
}

/// Shape and pacing of the workload.
#[derive(Clone)]
pub struct WorkloadConfig {
    /// Account ids; account X has card `CARD-X`.
    pub accounts: Vec<String>,
    pub counters: usize,
    pub banks: usize,
    pub readers: usize,
    /// Bound on one HTTP request.
    pub request_timeout_ms: u64,
    /// How long a write keeps retrying (same request_id) before it is unknown.
    pub retry_budget_ms: u64,
    /// Pause between two operations of a writer / a reader.
    pub writer_think_ms: u64,
    pub reader_think_ms: u64,
    pub seed: u64,
    /// The cluster's CA (`None`: a plaintext cluster).
    pub tls: Option<billdb_client::tls::ClientTls>,
}

/// Bank code of the demo bank token.
pub const BANK_CODE: &str = "ICBC";

/// Card number of an account's card.
pub fn card_of(account: &str) -> String {
    format!("CARD-{account}")
}

enum Attempt {
    Ok(Value),
    Refused(String),
    Indeterminate(String),
}

/// Codes after which a write may or may not have been applied.
fn indeterminate_code(code: &str) -> bool {
    matches!(
        code,
        "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "NO_QUORUM" | "INTERNAL" | "NOT_INITIALIZED"
    ) || code.starts_with("HTTP_5")
}

fn classify(r: Result<Value, AdminError>) -> Attempt {
    match r {
        Ok(v) => Attempt::Ok(v),
        Err(AdminError::Api { code, .. }) if !indeterminate_code(&code) => Attempt::Refused(code),
        Err(e) => Attempt::Indeterminate(e.to_string()),
    }
}

fn dec(v: &Value) -> Option<Decimal> {
    v.as_str()?.parse().ok()
}

/// The account state in a write's answer (`balance` and the record's seq).
fn post_state(v: &Value) -> Option<AcctState> {
    let balance = dec(&v["balance"])?;
    let seq = v["seq"].as_u64().or_else(|| v["record"]["seq"].as_u64())?;
    Some(AcctState {
        balance,
        last_seq: seq,
    })
}

/// The state in an account read.
fn read_state(v: &Value) -> Option<AcctState> {
    Some(AcctState {
        balance: dec(&v["balance"])?,
        last_seq: v["last_seq"].as_u64()?,
    })
}

struct Worker {
    process: u32,
    rng: StdRng,
    rec: Recorder,
    endpoints: Arc<Endpoints>,
    token: String,
    cfg: WorkloadConfig,
    clients: HashMap<String, AdminClient>,
    /// Rotates the first node tried.
    home: usize,
}

enum Method {
    Get,
    Post,
}

impl Worker {
    fn client(&mut self, addr: &str) -> AdminClient {
        let timeout = Duration::from_millis(self.cfg.request_timeout_ms);
        let token = self.token.clone();
        self.clients
            .entry(addr.to_string())
            .or_insert_with(|| {
                AdminClient::with_tls(addr, timeout, self.cfg.tls.as_ref()).with_token(Some(token))
            })
            .clone()
    }

    fn pick_node(&mut self, attempt: usize) -> Option<(u64, String)> {
        let nodes = self.endpoints.get();
        if nodes.is_empty() {
            return None;
        }
        let i = (self.home + attempt) % nodes.len();
        Some(nodes[i].clone())
    }

    fn account(&mut self) -> String {
        let i = self.rng.random_range(0..self.cfg.accounts.len());
        self.cfg.accounts[i].clone()
    }

    fn base_op(&self, kind: OpKind, account: &str, invoke_ns: u64) -> Op {
        Op {
            id: 0,
            process: self.process,
            kind,
            account: account.to_string(),
            request_id: None,
            bank_ref: None,
            balance_delta: Decimal::ZERO,
            invoke_ns,
            last_attempt_ns: invoke_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
            attempts: 0,
            node: 0,
            error: None,
            record_id: None,
            observed: None,
        }
    }

    /// Sends a write until it gets a definite answer or the budget is spent;
    /// fills in and records `op`. Returns the answer when acknowledged.
    fn write(&mut self, mut op: Op, path: &str, body: &Value) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.retry_budget_ms);
        let mut attempt = 0usize;
        loop {
            let Some((node, addr)) = self.pick_node(attempt) else {
                op.error = Some("no nodes".into());
                break;
            };
            attempt += 1;
            op.attempts += 1;
            op.node = node;
            op.last_attempt_ns = self.rec.now_ns();
            let client = self.client(&addr);
            match classify(client.post(path, body)) {
                Attempt::Ok(v) => {
                    op.complete_ns = Some(self.rec.now_ns());
                    op.outcome = Outcome::Ok;
                    op.error = None;
                    op.record_id = v["record_id"].as_str().map(str::to_string);
                    if op.kind.adds_record() {
                        op.observed = post_state(&v);
                    }
                    self.rec.push(op);
                    return Some(v);
                }
                Attempt::Refused(code) => {
                    op.complete_ns = Some(self.rec.now_ns());
                    op.outcome = Outcome::Fail;
                    op.error = Some(code);
                    self.rec.push(op);
                    return None;
                }
                Attempt::Indeterminate(e) => {
                    op.error = Some(e);
                    if Instant::now() >= deadline {
                        break;
                    }
                    let backoff = self.rng.random_range(50..150);
                    std::thread::sleep(Duration::from_millis(backoff));
                }
            }
        }
        op.outcome = Outcome::Unknown;
        self.rec.push(op);
        None
    }

    /// One read attempt (reads are not retried: a failed read observes nothing).
    fn read(&mut self, mut op: Op, method: Method, path: &str, body: &Value) -> Option<Value> {
        let (node, addr) = self.pick_node(0)?;
        self.home = self.home.wrapping_add(1);
        op.node = node;
        op.attempts = 1;
        let client = self.client(&addr);
        let r = match method {
            Method::Get => client.get(path),
            Method::Post => client.post(path, body),
        };
        op.complete_ns = Some(self.rec.now_ns());
        let out = match classify(r) {
            Attempt::Ok(v) => {
                op.outcome = Outcome::Ok;
                Some(v)
            }
            Attempt::Refused(code) => {
                op.outcome = Outcome::Fail;
                op.error = Some(code);
                None
            }
            Attempt::Indeterminate(e) => {
                op.outcome = Outcome::Fail;
                op.error = Some(e);
                None
            }
        };
        if op.kind == OpKind::ReadAccount {
            op.observed = out.as_ref().and_then(read_state);
        }
        self.rec.push(op);
        out
    }

    fn amount(&mut self) -> Decimal {
        let cents: i64 = self.rng.random_range(100..2000);
        Decimal::new(cents, 2)
    }

    fn think(&mut self, ms: u64) {
        if ms > 0 {
            let jitter = self.rng.random_range(0..=ms);
            std::thread::sleep(Duration::from_millis(ms / 2 + jitter / 2));
        }
    }
}

fn counter_loop(mut w: Worker, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    // Latest acknowledged purchase per account (what a counter would reissue).
    let mut last_purchase: HashMap<String, String> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let account = w.account();
        let roll = w.rng.random_range(0..100);
        let now = w.rec.now_ns();
        if roll < 40 {
            let amount = w.amount();
            let rid = format!("buy-c{}-{n}", w.process);
            let mut op = w.base_op(OpKind::Purchase, &account, now);
            op.request_id = Some(rid.clone());
            let body = if w.rng.random_bool(0.5) {
                json!({"request_id": rid, "card_no": card_of(&account), "amount": amount.to_string(), "confirm_duplicate": true})
            } else {
                json!({"request_id": rid, "account_id": account, "amount": amount.to_string(), "confirm_duplicate": true})
            };
            if let Some(v) = w.write(op, "/v1/purchases", &body)
                && let Some(r) = v["record_id"].as_str()
            {
                last_purchase.insert(account, r.to_string());
            }
        } else if roll < 50 {
            let Some(record) = last_purchase.get(&account).cloned() else {
                continue;
            };
            let rid = format!("reissue-c{}-{n}", w.process);
            let mut op = w.base_op(OpKind::Reissue, &account, now);
            op.request_id = Some(rid.clone());
            w.write(
                op,
                &format!("/v1/purchases/{record}/reissue"),
                &json!({"request_id": rid}),
            );
        } else if roll < 75 {
            let op = w.base_op(OpKind::VerifyCard, &account, now);
            w.read(
                op,
                Method::Post,
                "/v1/cards/verify",
                &json!({"card_no": card_of(&account), "generation": 1, "seq_on_card": 0}),
            );
        } else {
            let op = w.base_op(OpKind::ReadRecent, &account, now);
            w.read(
                op,
                Method::Get,
                &format!("/v1/accounts/{account}/records?segment=recent&limit=20&order=desc"),
                &Value::Null,
            );
        }
        let t = w.cfg.writer_think_ms;
        w.think(t);
    }
}

fn bank_loop(mut w: Worker, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let account = w.account();
        let amount = w.amount();
        let rid = format!("pay-b{}-{n}", w.process);
        let bank_ref = format!("REF-{}-{n}", w.process);
        let body = json!({"request_id": rid, "account_id": account, "amount": amount.to_string(),
                          "bank_code": BANK_CODE, "bank_ref": bank_ref});
        let mut op = w.base_op(OpKind::Payment, &account, w.rec.now_ns());
        op.request_id = Some(rid.clone());
        op.bank_ref = Some(bank_ref.clone());
        op.balance_delta = amount;
        let acked = w.write(op, "/v1/payments", &body).is_some();
        if acked && w.rng.random_bool(0.2) {
            // The bank's front-end delivers the same message again.
            let mut op = w.base_op(OpKind::PaymentReplay, &account, w.rec.now_ns());
            op.request_id = Some(rid.clone());
            op.bank_ref = Some(bank_ref.clone());
            w.write(op, "/v1/payments", &body);
        }
        if acked && w.rng.random_bool(0.1) {
            // Re-sent as a new message (new request_id), same bank reference:
            // must be refused as a duplicate payment.
            let rid2 = format!("{rid}-again");
            let body2 = json!({"request_id": rid2, "account_id": account, "amount": amount.to_string(),
                               "bank_code": BANK_CODE, "bank_ref": bank_ref});
            let mut op = w.base_op(OpKind::PaymentNewId, &account, w.rec.now_ns());
            op.request_id = Some(rid2);
            op.bank_ref = Some(bank_ref.clone());
            op.balance_delta = amount;
            w.write(op, "/v1/payments", &body2);
        }
        let t = w.cfg.writer_think_ms;
        w.think(t);
    }
}

fn reader_loop(mut w: Worker, stop: Arc<AtomicBool>, month: String) {
    while !stop.load(Ordering::Relaxed) {
        let account = w.account();
        let now = w.rec.now_ns();
        if w.rng.random_bool(0.03) {
            let op = w.base_op(OpKind::Report, &account, now);
            w.read(
                op,
                Method::Get,
                &format!("/v1/reports/monthly?month={month}&group_by=kind"),
                &Value::Null,
            );
        } else {
            let op = w.base_op(OpKind::ReadAccount, &account, now);
            w.read(
                op,
                Method::Get,
                &format!("/v1/accounts/{account}"),
                &Value::Null,
            );
        }
        let t = w.cfg.reader_think_ms;
        w.think(t);
    }
}

/// Running workload threads.
pub struct Workload {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts the workers. `month` (`YYYY-MM`) is what report readers ask for.
    pub fn start(
        cfg: WorkloadConfig,
        endpoints: Arc<Endpoints>,
        rec: Recorder,
        tokens: Tokens,
        month: String,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut process = 0u32;
        let mut spawn = |token: &str, kind: u8, handles: &mut Vec<JoinHandle<()>>| {
            process += 1;
            let w = Worker {
                process,
                rng: StdRng::seed_from_u64(
                    cfg.seed.wrapping_mul(1000).wrapping_add(u64::from(process)),
                ),
                rec: rec.clone(),
                endpoints: endpoints.clone(),
                token: token.to_string(),
                cfg: cfg.clone(),
                clients: HashMap::new(),
                home: process as usize,
            };
            let stop = stop.clone();
            let month = month.clone();
            handles.push(std::thread::spawn(move || match kind {
                0 => counter_loop(w, stop),
                1 => bank_loop(w, stop),
                _ => reader_loop(w, stop, month),
            }));
        };
        for _ in 0..cfg.counters {
            spawn(&tokens.counter, 0, &mut handles);
        }
        for _ in 0..cfg.banks {
            spawn(&tokens.bank, 1, &mut handles);
        }
        for _ in 0..cfg.readers {
            spawn(&tokens.auditor, 2, &mut handles);
        }
        Workload { stop, handles }
    }

    /// Asks every worker to stop after its current operation (a write in
    /// retry finishes its retries) and waits for them.
    pub fn stop_and_join(self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
    }
}
