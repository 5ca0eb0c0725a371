//! The run report: per-nemesis rows (operations, acknowledged, unknown, lost,
//! duplicated, linearizability, longest write unavailability), the write gap
//! after each leader fault, every checker's findings, and the verdict. Pure
//! computation over the history plus rendering; the caller writes the JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::checker::{self, AccountLin, FinalState, RecordsVerdict};
use crate::history::{NemesisEvent, Op, OpKind, Outcome};
use crate::linear::Verdict;
use crate::run::RunConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub nemesis: String,
    /// How many times it ran.
    pub runs: usize,
    /// Operations invoked during its windows.
    pub operations: usize,
    /// Writes acknowledged during its windows.
    pub acknowledged: usize,
    pub unknown: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// "yes", "NO (n ops)" or "unknown (n accounts)" (total row).
    pub linearizable: String,
    /// Longest time without any write acknowledged inside its windows.
    pub longest_write_unavailability_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GapStats {
    pub count: usize,
    /// Faults after which no write was acknowledged before the run ended.
    pub never_recovered: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub all_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub base_port: u16,
    /// The nodes' `raft.read_policy`.
    pub read_policy: String,
    pub duration_s: u64,
    pub schedule: String,
    pub nemeses: Vec<String>,
    pub started_unix_ms: i64,
    pub elapsed_s: f64,
    pub rows: Vec<Row>,
    pub total: Row,
    /// Time from a leader fault to the first write acknowledged whose last
    /// attempt was sent after it, by kind of fault (kill, pause, isolate, stop).
    pub leader_fault_gaps: BTreeMap<String, GapStats>,
    pub records: RecordsVerdict,
    pub accounts_checked: usize,
    /// Accounts whose verdict is not "ok".
    pub linearizability_problems: Vec<AccountLin>,
    pub money_problems: Vec<String>,
    pub digest_problems: Vec<String>,
    pub other_problems: Vec<String>,
    pub events: Vec<NemesisEvent>,
    pub failures: Vec<String>,
    pub passed: bool,
}

/// Leader faults a healthy quorum masks (at most two nodes out, or the
/// leader's disk stalled with at most one follower's): a timed run holds
/// their write gap's p99 to `RunConfig::gap_target_ms`.
/// `disk-stall-majority` (three of five disks held) is measured, not held:
/// no write can be durable until the stall ends.
pub const GAP_TARGETED: &[&str] = &[
    "disk-stall",
    "isolate",
    "isolate-oneway",
    "kill",
    "pause",
    "stop",
];

/// The write-gap failures of a timed run: a targeted leader fault after
/// which writes never resumed, or whose p99 gap is over `target_ms`.
pub fn gap_failures(gaps: &BTreeMap<String, GapStats>, target_ms: f64) -> Vec<String> {
    let mut out = Vec::new();
    for (how, g) in gaps {
        if !GAP_TARGETED.contains(&how.as_str()) {
            continue;
        }
        if g.never_recovered > 0 {
            out.push(format!(
                "writes never resumed after {} leader {how} faults",
                g.never_recovered
            ));
        } else if g.p99_ms > target_ms {
            out.push(format!(
                "write gap after leader {how}: p99 {:.0} ms over the {:.0} ms target",
                g.p99_ms, target_ms
            ));
        }
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn gap_stats(mut gaps: Vec<Option<f64>>) -> GapStats {
    let never = gaps.iter().filter(|g| g.is_none()).count();
    let mut all: Vec<f64> = gaps.drain(..).flatten().collect();
    all.sort_by(f64::total_cmp);
    GapStats {
        count: all.len() + never,
        never_recovered: never,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(0.0),
        all_ms: all,
    }
}

/// Longest interval in `[start, end]` without an element of sorted `acks`.
pub fn longest_gap_ns(acks: &[u64], start: u64, end: u64) -> u64 {
    let mut prev = start;
    let mut best = 0;
    let from = acks.partition_point(|&a| a <= start);
    for &a in acks[from..].iter().take_while(|&&a| a <= end) {
        best = best.max(a - prev);
        prev = a;
    }
    best.max(end.saturating_sub(prev))
}

/// Time from `at` to the first acknowledged write whose last attempt was sent
/// at or after `at` (None: none before the run ended).
pub fn gap_after(ops: &[Op], at: u64) -> Option<u64> {
    ops.iter()
        .filter(|o| o.kind.adds_record() && o.outcome == Outcome::Ok && o.last_attempt_ns >= at)
        .filter_map(|o| o.complete_ns)
        .min()
        .map(|c| c.saturating_sub(at))
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

pub fn build(
    cfg: &RunConfig,
    started_unix_ms: i64,
    elapsed_s: f64,
    ops: &[Op],
    events: &[NemesisEvent],
    fin: &FinalState,
    other_problems: Vec<String>,
) -> RunReport {
    let records = checker::check_records(ops, fin);
    let lin = checker::check_linearizable(ops, fin, cfg.lin_steps_max);
    let money_problems = checker::check_money(fin);
    let digest_problems = checker::check_digests(fin);

    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| o.kind.adds_record() && o.outcome == Outcome::Ok)
        .filter_map(|o| o.complete_ns)
        .collect();
    acks.sort_unstable();
    let lost: BTreeSet<&str> = records
        .lost_request_ids
        .iter()
        .map(String::as_str)
        .collect();
    let dup: BTreeSet<&str> = records
        .duplicated_request_ids
        .iter()
        .map(String::as_str)
        .collect();
    let violations: Vec<u64> = lin
        .iter()
        .filter_map(|a| match &a.verdict {
            Verdict::Violation { at_ns, .. } => Some(*at_ns),
            _ => None,
        })
        .collect();

    let window_of = |t: u64| {
        events
            .iter()
            .find(|e| e.start_ns <= t && t <= e.end_ns)
            .map(|e| e.nemesis.clone())
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for e in events {
        let r = rows.entry(e.nemesis.clone()).or_default();
        r.nemesis = e.nemesis.clone();
        r.runs += 1;
        r.longest_write_unavailability_ms = r
            .longest_write_unavailability_ms
            .max(ms(longest_gap_ns(&acks, e.start_ns, e.end_ns)));
    }
    let fill = |r: &mut Row, o: &Op| {
        r.operations += 1;
        if o.kind.adds_record() && o.outcome == Outcome::Ok {
            r.acknowledged += 1;
        }
        if o.kind.is_write() && o.outcome == Outcome::Unknown {
            r.unknown += 1;
        }
        if let Some(rid) = o.request_id.as_deref()
            && o.outcome == Outcome::Ok
            && o.kind != OpKind::PaymentReplay
        {
            if lost.contains(rid) {
                r.lost += 1;
            }
            if dup.contains(rid) {
                r.duplicated += 1;
            }
        }
    };
    let mut total = Row {
        nemesis: "TOTAL".into(),
        runs: events.len(),
        ..Row::default()
    };
    let mut quiet = Row {
        nemesis: "(between faults)".into(),
        ..Row::default()
    };
    for o in ops {
        fill(&mut total, o);
        match window_of(o.invoke_ns).and_then(|n| rows.get_mut(&n)) {
            Some(r) => fill(r, o),
            None => fill(&mut quiet, o),
        }
    }
    let mut row_viol: BTreeMap<String, usize> = BTreeMap::new();
    for t in &violations {
        let name = window_of(*t).unwrap_or_else(|| quiet.nemesis.clone());
        *row_viol.entry(name).or_default() += 1;
    }
    let lin_text = |n: usize| {
        if n == 0 {
            "yes".to_string()
        } else {
            format!("NO ({n})")
        }
    };
    for r in rows.values_mut() {
        r.linearizable = lin_text(row_viol.get(&r.nemesis).copied().unwrap_or(0));
    }
    quiet.linearizable = lin_text(row_viol.get(&quiet.nemesis).copied().unwrap_or(0));
    if let (Some(first), Some(last)) = (acks.first(), acks.last()) {
        quiet.longest_write_unavailability_ms = 0.0;
        total.longest_write_unavailability_ms = ms(longest_gap_ns(&acks, *first, *last));
    }
    let unknown_accounts = lin
        .iter()
        .filter(|a| matches!(a.verdict, Verdict::Unknown { .. }))
        .count();
    total.linearizable = if !violations.is_empty() {
        format!("NO ({} accounts)", violations.len())
    } else if unknown_accounts > 0 {
        format!("unknown ({unknown_accounts} accounts)")
    } else {
        "yes".into()
    };

    let mut by_how: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for e in events {
        for f in &e.leader_faults {
            by_how
                .entry(f.how.clone())
                .or_default()
                .push(gap_after(ops, f.at_ns).map(ms));
        }
    }
    let leader_fault_gaps: BTreeMap<String, GapStats> =
        by_how.into_iter().map(|(k, v)| (k, gap_stats(v))).collect();

    let mut failures = Vec::new();
    if !records.lost.is_empty() {
        failures.push(format!("{} acknowledged writes lost", records.lost.len()));
    }
    if !records.duplicated.is_empty() {
        failures.push(format!("{} duplicates", records.duplicated.len()));
    }
    if !records.anomalies.is_empty() {
        failures.push(format!(
            "{} exactly-once anomalies",
            records.anomalies.len()
        ));
    }
    if !violations.is_empty() {
        failures.push(format!("{} accounts not linearizable", violations.len()));
    }
    if unknown_accounts > 0 {
        failures.push(format!(
            "{unknown_accounts} accounts: linearizability undecided (search budget)"
        ));
    }
    if !money_problems.is_empty() {
        failures.push(format!("{} money problems", money_problems.len()));
    }
    if !digest_problems.is_empty() {
        failures.push(format!("{} digest problems", digest_problems.len()));
    }
    if !other_problems.is_empty() {
        failures.push(format!("{} other problems", other_problems.len()));
    }
    if cfg.duration_s > 0 {
        failures.extend(gap_failures(&leader_fault_gaps, cfg.gap_target_ms));
    }
    let nemesis_errors = events.iter().filter(|e| e.error.is_some()).count();
    if nemesis_errors > 0 {
        failures.push(format!(
            "{nemesis_errors} faults could not be done or undone"
        ));
    }
    if total.acknowledged == 0 {
        failures.push("no write was acknowledged".into());
    }
    let mut row_list: Vec<Row> = rows.into_values().collect();
    row_list.push(quiet);
    RunReport {
        seed: cfg.seed,
        base_port: cfg.base_port,
        read_policy: if cfg.lease_reads {
            "lease"
        } else {
            "read_index"
        }
        .into(),
        duration_s: cfg.duration_s,
        schedule: if cfg.duration_s == 0 {
            "once"
        } else {
            "random"
        }
        .into(),
        nemeses: cfg.nemeses.iter().map(|n| n.name().to_string()).collect(),
        started_unix_ms,
        elapsed_s,
        rows: row_list,
        total,
        leader_fault_gaps,
        accounts_checked: lin.len(),
        linearizability_problems: lin.into_iter().filter(|a| !a.verdict.is_ok()).collect(),
        records,
        money_problems,
        digest_problems,
        other_problems,
        events: events.to_vec(),
        passed: failures.is_empty(),
        failures,
    }
}

/// The human summary.
pub fn render(r: &RunReport) -> String {
    let header = [
        "NEMESIS",
        "RUNS",
        "OPS",
        "ACKED",
        "UNKNOWN",
        "LOST",
        "DUPLICATED",
        "LINEARIZABLE",
        "MAX_WRITE_GAP_MS",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        table.push(vec![
            row.nemesis.clone(),
            row.runs.to_string(),
            row.operations.to_string(),
            row.acknowledged.to_string(),
            row.unknown.to_string(),
            row.lost.to_string(),
            row.duplicated.to_string(),
            row.linearizable.clone(),
            format!("{:.0}", row.longest_write_unavailability_ms),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "\nseed {}  schedule {}  reads {}  elapsed {:.0} s  accounts {}  unknown writes {} (landed {})\n",
        r.seed,
        r.schedule,
        r.read_policy,
        r.elapsed_s,
        r.accounts_checked,
        r.records.unknown,
        r.records.unknown_landed
    ));
    for (how, g) in &r.leader_fault_gaps {
        out.push_str(&format!(
            "write gap after leader {how}: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms{}\n",
            g.count,
            g.p50_ms,
            g.p99_ms,
            g.max_ms,
            if g.never_recovered > 0 {
                format!(" ({} never recovered)", g.never_recovered)
            } else {
                String::new()
            }
        ));
    }
    let mut details: Vec<String> = Vec::new();
    details.extend(r.records.lost.iter().cloned());
    details.extend(r.records.duplicated.iter().cloned());
    details.extend(r.records.anomalies.iter().cloned());
    for a in &r.linearizability_problems {
        details.push(format!("account {}: {:?}", a.account, a.verdict));
    }
    details.extend(r.money_problems.iter().cloned());
    details.extend(r.digest_problems.iter().cloned());
    details.extend(r.other_problems.iter().cloned());
    for e in r.events.iter().filter(|e| e.error.is_some()) {
        details.push(format!(
            "nemesis {} ({}): {}",
            e.nemesis,
            e.detail,
            e.error.as_deref().unwrap_or_default()
        ));
    }
    for d in details.iter().take(50) {
        out.push_str(&format!("  ! {d}\n"));
    }
    if details.len() > 50 {
        out.push_str(&format!(
            "  ... {} more (see the JSON)\n",
            details.len() - 50
        ));
    }
    out.push_str(&if r.passed {
        "RESULT: PASS\n".to_string()
    } else {
        format!("RESULT: FAIL ({})\n", r.failures.join("; "))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_covers_edges() {
        let acks = [10, 20, 50, 55, 100];
        assert_eq!(longest_gap_ns(&acks, 0, 120), 45);
        assert_eq!(longest_gap_ns(&acks, 60, 90), 30);
        assert_eq!(longest_gap_ns(&acks, 0, 5), 5);
        assert_eq!(longest_gap_ns(&[], 0, 7), 7);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        let g = gap_stats(vec![Some(5.0), None, Some(1.0)]);
        assert_eq!((g.count, g.never_recovered, g.max_ms), (3, 1, 5.0));
    }

    #[test]
    fn gap_target_holds_masked_faults_only() {
        let mut gaps = BTreeMap::new();
        gaps.insert(
            "kill".to_string(),
            gap_stats(vec![Some(700.0), Some(1_200.0)]),
        );
        gaps.insert(
            "pause".to_string(),
            gap_stats(vec![Some(700.0), Some(900.0)]),
        );
        gaps.insert("isolate".to_string(), gap_stats(vec![Some(600.0), None]));
        gaps.insert(
            "disk-stall-majority".to_string(),
            gap_stats(vec![Some(3_700.0)]),
        );
        let f = gap_failures(&gaps, 1_000.0);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f.iter()
                .any(|m| m.contains("isolate") && m.contains("never resumed"))
        );
        assert!(f.iter().any(|m| m.contains("kill: p99 1200 ms")));
        assert!(
            gap_failures(&gaps, 2_000.0)
                .iter()
                .all(|m| !m.contains("kill"))
        );
    }
}
