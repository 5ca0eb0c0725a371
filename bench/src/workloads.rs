//! Timed workloads against a loaded cluster: `clients` tasks on one thread,
//! each a closed loop (next request after the answer) for `duration_s`, spread
//! over the nodes: counter sessions (verify card → recent segment →
//! purchase), single purchases, bank payments (some delivered twice),
//! history queries over all years, and monthly reports. Accounts are drawn
//! from the generated dataset (`--accounts`, `--seed`). Touches the cluster
//! over HTTP only.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::ahttp::AsyncHttp;
use crate::cluster::{CpuSample, Target, TargetArgs, cpu_json};
use crate::dataset::Spec;
use crate::http::code_of;
use crate::load::DataArgs;
use crate::stats::Stats;

/// Most clients one run may start.
pub const CLIENTS_MAX: usize = 1024;
/// Longest run.
pub const DURATION_S_MAX: u64 = 3600;
/// Share of bank payments delivered a second time (per mille).
pub const REDELIVERY_PER_MILLE: u32 = 100;
/// Pages one history query may follow.
pub const HISTORY_PAGES_MAX: usize = 100;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Verify card → recent segment → purchase, per session.
    Counter,
    /// Single durable purchases by card.
    Purchase,
    /// Bank payments; some delivered twice (same request id).
    Payment,
    /// One account's whole history (all years), every page.
    History,
    /// A month's report over all accounts (group by operator/branch/tariff/kind).
    Report,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Counter => "counter",
            Workload::Purchase => "purchase",
            Workload::Payment => "payment",
            Workload::History => "history",
            Workload::Report => "report",
        }
    }

    fn identity(self) -> &'static str {
        match self {
            Workload::Counter | Workload::Purchase | Workload::History => "counter",
            Workload::Payment => "bank",
            Workload::Report => "auditor",
        }
    }

    /// What node CPU is counted per, and how many of it succeeded: a
    /// session, a purchase, a first delivery of a payment, a whole history,
    /// a report.
    pub fn per_op(self, stats: &Stats) -> (&'static str, u64) {
        match self {
            Workload::Counter => ("session", stats.count("session")),
            Workload::Purchase => ("purchase", stats.count("purchase")),
            Workload::Payment => ("payment", stats.count("payment")),
            Workload::History => ("history", stats.count("history_query")),
            Workload::Report => (
                "report",
                stats
                    .ops
                    .iter()
                    .filter(|(k, _)| k.starts_with("report_"))
                    .map(|(_, s)| s.hist.len())
                    .sum(),
            ),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum)]
    pub workload: Workload,
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Send every request to this node only (1-based index in the node
    /// list), e.g. the leader; default: clients spread over all nodes.
    #[arg(long)]
    pub node: Option<usize>,
    /// Accounts the workload draws from: the first N of the dataset
    /// (default: all).
    #[arg(long)]
    pub hot_accounts: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=CLIENTS_MAX).contains(&self.clients),
            "clients must be 1..={CLIENTS_MAX}"
        );
        anyhow::ensure!(
            (1..=DURATION_S_MAX).contains(&self.duration_s),
            "duration-s must be 1..={DURATION_S_MAX}"
        );
        Ok(())
    }
}

/// One client's state.
pub struct Ctx {
    pub client: usize,
    pub rng: ChaCha8Rng,
    pub nodes: Vec<AsyncHttp>,
    pub first: usize,
    /// Send the next request to the node the last answer named as leader
    /// (as the Rust client does); off when the run is pinned to one node.
    pub follow_leader: bool,
    pub stats: Stats,
    pub counters: BTreeMap<String, u64>,
    pub run: String,
    pub i: u64,
    /// When the run started (shared by all clients).
    pub started: Instant,
    /// Microseconds since `started` of each acknowledged write (leader-kill).
    pub acks: Vec<u64>,
    /// Whether the last failed call may be retried with the same request
    /// id (no answer, or between leaders): a refusal may not, exactly-once
    /// answers it the same way every time.
    pub last_retryable: bool,
}

pub enum Method<'a> {
    Get,
    Post(&'a str),
}

impl Ctx {
    /// One timed request to the current node; a transport failure moves
    /// this client to the next node.
    pub async fn call(&mut self, op: &str, path: &str, m: Method<'_>) -> Option<Value> {
        let n = self.nodes.len();
        let h = &mut self.nodes[self.first % n];
        let t = Instant::now();
        let r = match m {
            Method::Get => h.call(path, None).await,
            Method::Post(body) => h.call(path, Some(body)).await,
        };
        let elapsed_us = t.elapsed().as_micros() as u64;
        let hint = if self.follow_leader {
            h.leader_hint().map(str::to_string)
        } else {
            None
        };
        if let Some(leader) = hint
            && let Some(i) = self.nodes.iter().position(|n| n.endpoint() == leader)
        {
            self.first = i;
        }
        match r {
            Ok(v) => {
                self.stats.ok(op, elapsed_us);
                Some(v)
            }
            Err(e) => {
                self.last_retryable = crate::http::retryable(&e);
                let code = code_of(&e);
                if code == "TRANSPORT" || code == "UNAVAILABLE" {
                    self.first += 1;
                }
                self.stats.err(op, code);
                None
            }
        }
    }

    pub fn count(&mut self, what: &str, n: u64) {
        *self.counters.entry(what.to_string()).or_insert(0) += n;
    }

    /// A fresh request id for this run.
    pub fn rid(&mut self, op: &str) -> String {
        self.i += 1;
        format!("{op}-{}-{}-{}", self.run, self.client, self.i)
    }
}

/// A run id unlikely to repeat (time and pid).
pub fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{:x}{:x}", t, std::process::id())
}

/// What a run measured: merged statistics, counters, sorted ack times (µs
/// since the start) and the measured seconds.
pub struct Measured {
    pub stats: Stats,
    pub counters: BTreeMap<String, u64>,
    pub acks: Vec<u64>,
    pub secs: f64,
    pub started: Instant,
    /// Node CPU at the start and the end (local clusters only).
    pub cpu: Option<(CpuSample, CpuSample)>,
}

/// One step of a closed loop (one session, one purchase, ...).
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs `step` in `clients` closed loops for `duration`: one task per
/// client, all on one thread.
pub fn run_clients<F>(
    target: &Target,
    identity: &str,
    clients: usize,
    node: Option<usize>,
    duration: Duration,
    step: F,
) -> anyhow::Result<Measured>
where
    F: for<'a> Fn(&'a mut Ctx) -> StepFuture<'a> + Send + Sync + 'static,
{
    let run = run_id();
    let run_seed = run.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let step = Arc::new(step);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(n) = node {
        anyhow::ensure!(
            (1..=target.nodes.len()).contains(&n),
            "--node is a position in the node list, 1..={} (here: {}), not a node id",
            target.nodes.len(),
            target
                .nodes
                .iter()
                .enumerate()
                .map(|(i, (id, _))| format!("{} = node {id}", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cpu_before = target.cpu_sample();
    let started = Instant::now();
    let deadline = started + duration;
    for c in 0..clients {
        // Pinned: every client on node `n`; else client `c` starts on node `c`.
        let nodes = target.async_clients(identity, node.map_or(c, |n| n - 1))?;
        let mut ctx = Ctx {
            client: c,
            // Per run and client: two runs within the duplicate-sale window
            // must not repeat each other's (card, amount) pairs.
            rng: ChaCha8Rng::seed_from_u64(
                run_seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            nodes,
            first: 0,
            follow_leader: node.is_none(),
            stats: Stats::default(),
            counters: BTreeMap::new(),
            run: run.clone(),
            i: 0,
            started,
            acks: Vec::new(),
            last_retryable: true,
        };
        let step = step.clone();
        tasks.spawn_on(
            async move {
                while Instant::now() < deadline {
                    step(&mut ctx).await;
                }
                (ctx.stats, ctx.counters, ctx.acks)
            },
            rt.handle(),
        );
    }
    let results = rt.block_on(async {
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r);
        }
        out
    });
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(target.cpu_sample());
    let mut stats = Stats::default();
    let mut counters = BTreeMap::new();
    let mut acks = Vec::new();
    for r in results {
        let (s, c, a) = r.map_err(|e| anyhow::anyhow!("a client task failed: {e}"))?;
        stats.merge(s);
        for (k, v) in c {
            *counters.entry(k).or_insert(0) += v;
        }
        acks.extend(a);
    }
    acks.sort_unstable();
    Ok(Measured {
        stats,
        counters,
        acks,
        secs,
        started,
        cpu,
    })
}

/// A random amount 20.00..=300.99.
pub fn amount(rng: &mut ChaCha8Rng) -> String {
    format!(
        "{}.{:02}",
        rng.random_range(20..=300),
        rng.random_range(0..100)
    )
}

/// A purchase by card of account `i`.
pub fn purchase_body(ctx: &mut Ctx, i: u64) -> String {
    let rid = ctx.rid("pur");
    let amount = amount(&mut ctx.rng);
    json!({"request_id": rid, "card_no": Spec::card_no(i), "amount": amount}).to_string()
}

async fn counter_session(ctx: &mut Ctx, accounts: u64) {
    let i = ctx.rng.random_range(0..accounts);
    let t = Instant::now();
    let verify = json!({"card_no": Spec::card_no(i), "generation": 1}).to_string();
    if ctx
        .call("verify", "/v1/cards/verify", Method::Post(&verify))
        .await
        .is_none()
    {
        return;
    }
    let path = format!(
        "/v1/accounts/{}/records?segment=recent&limit=50",
        Spec::account_id(i)
    );
    let Some(page) = ctx.call("recent", &path, Method::Get).await else {
        return;
    };
    let n = page["records"].as_array().map(|r| r.len()).unwrap_or(0) as u64;
    ctx.count("recent_records_returned", n);
    let body = purchase_body(ctx, i);
    if ctx
        .call("purchase", "/v1/purchases", Method::Post(&body))
        .await
        .is_some()
    {
        ctx.stats.ok("session", t.elapsed().as_micros() as u64);
    }
}

async fn payment(ctx: &mut Ctx, accounts: u64, bank: &str) {
    let i = ctx.rng.random_range(0..accounts);
    let rid = ctx.rid("pay");
    let body = json!({"request_id": rid, "account_id": Spec::account_id(i),
        "amount": format!("{}.00", ctx.rng.random_range(50..=500)), "bank_code": bank, "bank_ref": rid})
    .to_string();
    let Some(first) = ctx
        .call("payment", "/v1/payments", Method::Post(&body))
        .await
    else {
        return;
    };
    if ctx.rng.random_range(0..1000) < REDELIVERY_PER_MILLE
        && let Some(again) = ctx
            .call("payment_redelivery", "/v1/payments", Method::Post(&body))
            .await
    {
        // A redelivery must get the original outcome, never a second posting.
        let same =
            again["record_id"] == first["record_id"] && again["invoice_no"] == first["invoice_no"];
        ctx.count(
            if same {
                "redeliveries_same_outcome"
            } else {
                "redeliveries_different_outcome"
            },
            1,
        );
    }
}

async fn history(ctx: &mut Ctx, accounts: u64) {
    let i = ctx.rng.random_range(0..accounts);
    let t = Instant::now();
    let base = format!(
        "/v1/accounts/{}/records?segment=all&limit=500",
        Spec::account_id(i)
    );
    let mut path = base.clone();
    let mut total = 0u64;
    for _ in 0..HISTORY_PAGES_MAX {
        let Some(page) = ctx.call("history_page", &path, Method::Get).await else {
            return;
        };
        total += page["records"].as_array().map(|r| r.len()).unwrap_or(0) as u64;
        match page["next_page_token"].as_str() {
            Some(tok) if !tok.is_empty() => path = format!("{base}&page_token={tok}"),
            _ => break,
        }
    }
    ctx.stats
        .ok("history_query", t.elapsed().as_micros() as u64);
    ctx.count("history_records_returned", total);
}

async fn report(ctx: &mut Ctx, months: &[String]) {
    const GROUPS: [&str; 4] = ["operator", "branch", "tariff", "kind"];
    let month = &months[ctx.rng.random_range(0..months.len())];
    let g = GROUPS[ctx.i as usize % GROUPS.len()];
    ctx.i += 1;
    let path = format!("/v1/reports/monthly?month={month}&group_by={g}");
    if let Some(v) = ctx.call(&format!("report_{g}"), &path, Method::Get).await {
        ctx.count(
            "report_lines",
            v["lines"].as_array().map(|l| l.len()).unwrap_or(0) as u64,
        );
        ctx.count(
            "report_records_covered",
            v["total"]["count"].as_u64().unwrap_or(0),
        );
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<Value> {
    a.check()?;
    let spec = a.data.spec()?;
    let target = Target::resolve(&a.target)?;
    let accounts = a
        .hot_accounts
        .unwrap_or(spec.accounts)
        .clamp(1, spec.accounts);
    let months = Arc::new(spec.months());
    // The local cluster's bank token is bound to this bank code.
    let bank = "ICBC";
    eprintln!(
        "run: {} with {} clients for {} s",
        a.workload.name(),
        a.clients,
        a.duration_s
    );
    let w = a.workload;
    let m = run_clients(
        &target,
        w.identity(),
        a.clients,
        a.node,
        Duration::from_secs(a.duration_s),
        move |ctx: &mut Ctx| -> StepFuture<'_> {
            let months = months.clone();
            Box::pin(async move {
                match w {
                    Workload::Counter => counter_session(ctx, accounts).await,
                    Workload::Purchase => {
                        let i = ctx.rng.random_range(0..accounts);
                        let body = purchase_body(ctx, i);
                        ctx.call("purchase", "/v1/purchases", Method::Post(&body))
                            .await;
                    }
                    Workload::Payment => payment(ctx, accounts, bank).await,
                    Workload::History => history(ctx, accounts).await,
                    Workload::Report => report(ctx, &months).await,
                }
            })
        },
    )?;
    let per_op = a.workload.per_op(&m.stats);
    Ok(result_json(
        a.workload.name(),
        a.clients,
        m.secs,
        &m.stats,
        json!(m.counters),
        &target,
        &a.data,
        m.cpu
            .as_ref()
            .map(|(b, e)| cpu_json(b, e, per_op.0, per_op.1)),
    ))
}

/// The common result document of a timed workload.
#[allow(clippy::too_many_arguments)]
pub fn result_json(
    name: &str,
    clients: usize,
    secs: f64,
    stats: &Stats,
    extra: Value,
    target: &Target,
    data: &DataArgs,
    node_cpu: Option<Value>,
) -> Value {
    json!({
        "workload": name,
        "clients": clients,
        "duration_s": secs,
        "ops": stats.to_json(secs),
        "table": stats.table(secs),
        "extra": extra,
        "dataset": {"seed": data.seed, "accounts": data.accounts, "years": data.years,
                    "per_year": data.per_year, "payments_per_year": data.payments_per_year,
                    "end_month": data.end_month},
        "node_cpu": node_cpu,
        "usage": target.usage(),
        "settings": target.settings(),
        "machine": crate::cluster::machine(&target.cluster.as_ref().map(|c| c.dir().to_path_buf()).unwrap_or_default()),
    })
}

pub fn print_table(v: &Value) {
    println!(
        "{} clients={} duration={:.1}s",
        v["workload"].as_str().unwrap_or(""),
        v["clients"],
        v["duration_s"].as_f64().unwrap_or(0.0)
    );
    print!("{}", v["table"].as_str().unwrap_or(""));
    if let Some(m) = v["extra"].as_object()
        && !m.is_empty()
    {
        println!("extra: {}", v["extra"]);
    }
    crate::print_usage(v);
}
