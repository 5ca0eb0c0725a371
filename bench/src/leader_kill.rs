//! `leader-kill`: purchases from `clients` closed loops (a failed request
//! is retried with the same request id on the next node until it is
//! acknowledged), SIGKILL of the leader mid-run through the local cluster
//! manager, then the node restarted. Measures the write gap: the longest
//! time without any acknowledged write, and the time from the kill to the
//! first acknowledgement after it. Touches the cluster over HTTP and its
//! node processes through `LocalCluster` (kill, start).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::cluster::{Target, TargetArgs};
use crate::load::DataArgs;
use crate::workloads::{self, Method, purchase_body};

/// How long one purchase is retried before it counts as lost to the client.
pub const PURCHASE_RETRY_MS: u64 = 30_000;
/// Wait for the killed node to answer again after its restart.
pub const RESTART_HEALTHY_MS: u64 = 60_000;
/// Answers the leader sent before SIGKILL took effect still reach clients
/// for a moment after the kill; a gap that starts this soon after the kill
/// is the kill's.
pub const KILL_DRAIN_MS: u64 = 100;

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Seconds into the run when the leader is killed (default: half).
    #[arg(long)]
    pub kill_after_s: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

/// (longest gap between consecutive acks, where it ended) in µs.
pub fn longest_gap(acks: &[u64]) -> (u64, u64) {
    acks.windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .max()
        .unwrap_or((0, 0))
}

/// The write gap the kill caused, in µs: the longest gap between
/// consecutive acks that ends after the kill and starts no later than
/// `drain_us` after it (an ack a moment after the kill is an answer the
/// dying leader had already sent, not writes resumed). With the start of
/// that gap, or `None` when no ack came after the kill.
pub fn gap_after_kill(acks: &[u64], kill_us: u64, drain_us: u64) -> Option<(u64, u64)> {
    // `acks` is sorted: from the last ack at or before the kill (if any),
    // each pair of neighbours is a gap that ends after the kill.
    let first_after = acks.partition_point(|&t| t <= kill_us);
    let mut best: Option<(u64, u64)> = None;
    for w in acks[first_after.saturating_sub(1)..].windows(2) {
        let (start, end) = (w[0], w[1]);
        if start > kill_us + drain_us {
            break;
        }
        if best.is_none_or(|(g, _)| end - start > g) {
            best = Some((end - start, start));
        }
    }
    best
}

pub fn run(a: KillArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=workloads::CLIENTS_MAX).contains(&a.clients),
        "clients must be 1..={}",
        workloads::CLIENTS_MAX
    );
    anyhow::ensure!(
        (2..=workloads::DURATION_S_MAX).contains(&a.duration_s),
        "duration-s must be 2..={}",
        workloads::DURATION_S_MAX
    );
    let kill_after = a.kill_after_s.unwrap_or(a.duration_s as f64 / 2.0);
    anyhow::ensure!(
        kill_after > 0.0 && kill_after < a.duration_s as f64,
        "kill-after-s must be inside the run"
    );
    let spec = a.data.spec()?;
    let target = Target::resolve(&a.target)?;
    let cluster = target.local()?.clone();
    let accounts = spec.accounts;
    let leader_before = target.leader(Duration::from_secs(30))?;
    eprintln!(
        "leader-kill: {} clients for {} s, leader {leader_before} killed at {kill_after:.1} s",
        a.clients, a.duration_s
    );
    // (kill offset µs, killed node) set by the killer thread.
    let killed: Arc<Mutex<Option<(u64, u64)>>> = Arc::new(Mutex::new(None));
    let run_started = Instant::now();
    let killer = {
        let (killed, cluster) = (killed.clone(), cluster.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_secs_f64(kill_after));
            let leader = cluster.wait_leader(Duration::from_secs(10))?;
            let at = run_started.elapsed().as_micros() as u64;
            cluster.kill(leader)?;
            if let Ok(mut k) = killed.lock() {
                *k = Some((at, leader));
            }
            Ok(())
        })
    };
    let m = workloads::run_clients(
        &target,
        "counter",
        a.clients,
        None,
        Duration::from_secs(a.duration_s),
        move |ctx: &mut workloads::Ctx| -> workloads::StepFuture<'_> {
            Box::pin(async move {
                let i = ctx.rng.random_range(0..accounts);
                let body = purchase_body(ctx, i);
                let t = Instant::now();
                loop {
                    if ctx
                        .call("purchase_attempt", "/v1/purchases", Method::Post(&body))
                        .await
                        .is_some()
                    {
                        ctx.stats
                            .ok("purchase_acked", t.elapsed().as_micros() as u64);
                        let at = ctx.started.elapsed().as_micros() as u64;
                        ctx.acks.push(at);
                        return;
                    }
                    // A refusal (e.g. POSSIBLE_DUPLICATE when two clients
                    // draw the same sale) is an answer: resending it gets
                    // the same refusal until the retry bound.
                    if !ctx.last_retryable {
                        ctx.stats.err("purchase_acked", "REFUSED".into());
                        return;
                    }
                    if t.elapsed() > Duration::from_millis(PURCHASE_RETRY_MS) {
                        ctx.stats.err("purchase_acked", "GAVE_UP".into());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        },
    )?;
    let killer_result = killer
        .join()
        .map_err(|_| anyhow::anyhow!("killer thread panicked"))?;
    let kill = killed.lock().map(|k| *k).unwrap_or(None);
    // Offsets: the killer's clock started just before the clients' clock;
    // the difference is far below the resolution that matters here.
    let skew_us = m.started.duration_since(run_started).as_micros() as u64;
    let mut restarted = Value::Null;
    if let Some((_, node)) = kill {
        let r = restart(&cluster, node);
        restarted = json!({"node": node, "ok": r.is_ok(), "error": r.err().map(|e| e.to_string())});
    }
    killer_result?;
    let (kill_us, killed_node) =
        kill.ok_or_else(|| anyhow::anyhow!("the leader was not killed"))?;
    let kill_us = kill_us.saturating_sub(skew_us);
    let (gap, gap_end) = longest_gap(&m.acks);
    let kill_gap = gap_after_kill(&m.acks, kill_us, KILL_DRAIN_MS * 1000);
    let leader_after = target.leader(Duration::from_secs(30)).ok();
    let ms = |us: u64| us as f64 / 1000.0;
    let extra = json!({
        "killed_node": killed_node,
        "leader_before": leader_before,
        "leader_after": leader_after,
        "kill_at_ms": ms(kill_us),
        "acks": m.acks.len(),
        "longest_gap_ms": ms(gap),
        "longest_gap_ended_at_ms": ms(gap_end),
        // The kill's gap and when writes resumed after it; answers the
        // dying leader had already sent do not count as resumed writes.
        "write_gap_after_kill_ms": kill_gap.map(|(g, _)| ms(g)),
        "write_gap_after_kill_started_at_ms": kill_gap.map(|(_, s)| ms(s)),
        "kill_to_writes_resumed_ms": kill_gap.map(|(g, s)| ms((s + g).saturating_sub(kill_us))),
        "restarted": restarted,
    });
    Ok(workloads::result_json(
        "leader-kill",
        a.clients,
        m.secs,
        &m.stats,
        extra,
        &target,
        &a.data,
        m.cpu.as_ref().map(|(b, e)| {
            crate::cluster::cpu_json(b, e, "purchase", m.stats.count("purchase_acked"))
        }),
    ))
}

/// Starts a killed node again; its ports may be held for a moment (by its
/// own connections' TIME_WAIT or an outgoing connection), so retry.
fn restart(cluster: &billdb_client::local::LocalCluster, node: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(RESTART_HEALTHY_MS);
    loop {
        match cluster.start(node) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("leader-kill: restarting node {node}: {e:#}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
    cluster.wait_healthy(node, deadline.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn longest_gap_finds_the_widest_hole() {
        assert_eq!(super::longest_gap(&[]), (0, 0));
        assert_eq!(super::longest_gap(&[5]), (0, 0));
        assert_eq!(super::longest_gap(&[1, 2, 10, 11, 13]), (8, 10));
    }

    #[test]
    fn the_kill_gap_skips_answers_already_on_their_way() {
        use super::gap_after_kill;
        // Kill at 100; the dying leader's answers land at 101 and 102;
        // writes resume at 900. The gap is 102 → 900, not 100 → 101.
        let acks = [10, 50, 99, 101, 102, 900, 901, 2000];
        assert_eq!(gap_after_kill(&acks, 100, 50), Some((798, 102)));
        // (901 → 2000 is longer, but it starts well after the kill: not
        // the kill's.)
        // No answer lands in the drain window: the gap runs from the last
        // ack before the kill.
        assert_eq!(
            gap_after_kill(&[10, 99, 700, 710], 100, 50),
            Some((601, 99))
        );
        // Nothing after the kill.
        assert_eq!(gap_after_kill(&[10, 99], 100, 50), None);
        // Nothing before it either: the first gap starts at the first ack.
        assert_eq!(gap_after_kill(&[120, 700], 100, 50), Some((580, 120)));
    }
}
