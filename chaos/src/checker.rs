//! Checkers over a recorded history and the final (healed, converged) state:
//! exactly-once of acknowledged writes, duplicate request_ids and bank
//! references, per-account linearizability, money balance (records =
//! account balances = report totals) and replica convergence. Pure: the final
//! state is read by the harness and handed in as [`FinalState`].

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::history::{AcctState, Op, OpKind, Outcome};
use crate::linear::{self, LinOp, Verdict};

/// One ledger record as read back after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRecord {
    pub seq: u64,
    pub kind: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_effect: Decimal,
    pub request_id: String,
    #[serde(default)]
    pub bank_code: String,
    #[serde(default)]
    pub bank_ref: String,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalAccount {
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub last_seq: u64,
    pub records: Vec<FinalRecord>,
}

/// One line of a monthly report grouped by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    pub kind: String,
    pub count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// What the harness read after healing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    pub accounts: BTreeMap<String, FinalAccount>,
    /// Month `YYYY-MM` → report lines (group_by=kind).
    pub reports: BTreeMap<String, Vec<ReportLine>>,
    /// Member node → its state digest (None: could not be read).
    pub digests: BTreeMap<u64, Option<String>>,
}

/// Outcome of the exactly-once checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecordsVerdict {
    /// Writes acknowledged (distinct request_ids).
    pub acknowledged: usize,
    /// Writes (distinct request_ids) that never got a definite answer.
    pub unknown: usize,
    /// ... of which the final records show them applied.
    pub unknown_landed: usize,
    /// Writes definitely refused.
    pub refused: usize,
    /// Acknowledged request_ids with no record.
    pub lost: Vec<String>,
    /// request_ids with more than one record, and bank references posted more
    /// than once (`bank_code/bank_ref`).
    pub duplicated: Vec<String>,
    /// request_ids behind `lost` / `duplicated` (for attribution).
    pub lost_request_ids: Vec<String>,
    pub duplicated_request_ids: Vec<String>,
    /// Anything else that must not happen (refused write present, record of a
    /// request nobody sent, acknowledgement naming another record, ...).
    pub anomalies: Vec<String>,
}

impl RecordsVerdict {
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.anomalies.is_empty()
    }
}

fn record_id(account: &str, seq: u64) -> String {
    format!("{account}:{seq}")
}

/// Exactly-once: every acknowledged write present exactly once, no
/// request_id or (bank_code, bank_ref) with two records, refused writes absent.
pub fn check_records(ops: &[Op], fin: &FinalState) -> RecordsVerdict {
    let mut v = RecordsVerdict::default();
    // request_id → records (account, seq).
    let mut by_request: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
    let mut by_bank_ref: BTreeMap<(&str, &str), Vec<(String, &str)>> = BTreeMap::new();
    for (account, a) in &fin.accounts {
        for r in &a.records {
            by_request
                .entry(r.request_id.as_str())
                .or_default()
                .push((account.clone(), r.seq));
            if r.kind == "payment" && !r.bank_ref.is_empty() {
                by_bank_ref
                    .entry((r.bank_code.as_str(), r.bank_ref.as_str()))
                    .or_default()
                    .push((record_id(account, r.seq), r.request_id.as_str()));
            }
        }
    }
    for (rid, recs) in &by_request {
        if recs.len() > 1 {
            v.duplicated_request_ids.push(rid.to_string());
            v.duplicated.push(format!(
                "request_id {rid} has {} records: {}",
                recs.len(),
                recs.iter()
                    .map(|(a, s)| record_id(a, *s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for ((code, bref), recs) in &by_bank_ref {
        if recs.len() > 1 {
            v.duplicated_request_ids
                .extend(recs.iter().map(|(_, rid)| rid.to_string()));
            v.duplicated.push(format!(
                "bank reference {code}/{bref} posted {} times: {}",
                recs.len(),
                recs.iter()
                    .map(|(r, _)| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    // Per request_id: how its operations ended.
    #[derive(Default)]
    struct Req<'a> {
        ok: Vec<&'a Op>,
        fail: Vec<&'a Op>,
        unknown: Vec<&'a Op>,
    }
    let mut reqs: BTreeMap<&str, Req<'_>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind.is_write()) {
        let Some(rid) = op.request_id.as_deref() else {
            continue;
        };
        let r = reqs.entry(rid).or_default();
        match op.outcome {
            Outcome::Ok => r.ok.push(op),
            Outcome::Fail => r.fail.push(op),
            Outcome::Unknown => r.unknown.push(op),
        }
    }
    for (rid, r) in &reqs {
        let found = by_request.get(rid).map_or(0, Vec::len);
        if !r.ok.is_empty() {
            v.acknowledged += 1;
            if found == 0 {
                v.lost_request_ids.push(rid.to_string());
                v.lost.push(format!(
                    "request_id {rid} ({:?}) acknowledged as {} but has no record",
                    r.ok[0].kind,
                    r.ok[0].record_id.as_deref().unwrap_or("?")
                ));
            }
            if let Some((a, s)) = by_request.get(rid).and_then(|x| x.first()) {
                let actual = record_id(a, *s);
                for op in &r.ok {
                    if let Some(acked) = &op.record_id
                        && *acked != actual
                    {
                        v.anomalies.push(format!(
                            "op {} ({:?} {rid}) was answered with record {acked}, but the request's record is {actual}",
                            op.id, op.kind
                        ));
                    }
                }
            }
            for op in &r.fail {
                v.anomalies.push(format!(
                    "op {} ({:?} {rid}) was refused ({}) though the same request_id was acknowledged",
                    op.id,
                    op.kind,
                    op.error.as_deref().unwrap_or("?")
                ));
            }
        } else if !r.unknown.is_empty() {
            v.unknown += 1;
            if found > 0 {
                v.unknown_landed += 1;
            }
            if !r.fail.is_empty() && found > 0 {
                v.anomalies.push(format!(
                    "request_id {rid} was refused ({}) yet has a record",
                    r.fail[0].error.as_deref().unwrap_or("?")
                ));
            }
        } else if !r.fail.is_empty() {
            v.refused += 1;
            if found > 0 {
                v.anomalies.push(format!(
                    "request_id {rid} was refused ({}) yet has a record",
                    r.fail[0].error.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    for rid in by_request.keys() {
        if !reqs.contains_key(rid) {
            v.anomalies
                .push(format!("record with request_id {rid} that no client sent"));
        }
    }
    v
}

/// Linearizability verdict of one account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountLin {
    pub account: String,
    pub ops: usize,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Builds each account's register history from `ops` (reads and record-adding
/// writes; refused writes are left out) and checks it. An unanswered write is
/// required to take effect when the final records hold its request_id, left
/// out when the final state is known and does not, and optional otherwise.
pub fn check_linearizable(ops: &[Op], fin: &FinalState, steps_max: u64) -> Vec<AccountLin> {
    let landed: BTreeSet<&str> = fin
        .accounts
        .values()
        .flat_map(|a| a.records.iter().map(|r| r.request_id.as_str()))
        .collect();
    let mut per_account: BTreeMap<&str, Vec<LinOp>> = BTreeMap::new();
    for op in ops {
        let lin = match (op.kind, op.outcome) {
            (OpKind::ReadAccount, Outcome::Ok) => {
                let Some(obs) = op.observed else { continue };
                LinOp {
                    id: op.id,
                    invoke_ns: op.invoke_ns,
                    complete_ns: op.complete_ns,
                    balance_delta: Decimal::ZERO,
                    seq_delta: 0,
                    observed: Some(obs),
                    optional: false,
                }
            }
            (k, Outcome::Ok) if k.adds_record() => LinOp {
                id: op.id,
                invoke_ns: op.invoke_ns,
                complete_ns: op.complete_ns,
                balance_delta: op.balance_delta,
                seq_delta: 1,
                observed: op.observed,
                optional: false,
            },
            (k, Outcome::Unknown) if k.adds_record() => {
                let rid = op.request_id.as_deref().unwrap_or_default();
                let known_final = fin.accounts.contains_key(&op.account);
                let did_land = landed.contains(rid);
                if known_final && !did_land {
                    continue;
                }
                LinOp {
                    id: op.id,
                    invoke_ns: op.invoke_ns,
                    complete_ns: None,
                    balance_delta: op.balance_delta,
                    seq_delta: 1,
                    observed: None,
                    optional: !did_land,
                }
            }
            _ => continue,
        };
        per_account
            .entry(op.account.as_str())
            .or_default()
            .push(lin);
    }
    let init = AcctState {
        balance: Decimal::ZERO,
        last_seq: 0,
    };
    per_account
        .into_iter()
        .map(|(account, lops)| AccountLin {
            account: account.to_string(),
            ops: lops.len(),
            verdict: linear::check(&lops, init, steps_max),
        })
        .collect()
}

/// Sign with which a record kind moves the receivable balance in the report
/// reconciliation (`None`: this checker cannot reconcile that kind).
fn balance_sign(kind: &str) -> Option<Decimal> {
    match kind {
        "payment" | "adjustment" => Some(Decimal::ONE),
        "charge" => Some(Decimal::NEGATIVE_ONE),
        "purchase" | "reissue" => Some(Decimal::ZERO),
        _ => None,
    }
}

/// `YYYY-MM` (UTC) of a Unix time in milliseconds.
pub fn month_of(ts_ms: i64) -> String {
    let days = ts_ms.div_euclid(86_400_000);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}")
}

/// Money: per account, records sum to the balance and number `last_seq`; per
/// month and kind, the report equals the records; the sum of balances equals
/// the balance-moving report totals. Returns the problems found.
pub fn check_money(fin: &FinalState) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_month_kind: BTreeMap<(String, String), (u64, Decimal)> = BTreeMap::new();
    let mut total_balance = Decimal::ZERO;
    for (account, a) in &fin.accounts {
        let sum: Decimal = a.records.iter().map(|r| r.balance_effect).sum();
        if sum != a.balance {
            problems.push(format!(
                "account {account}: records sum to {sum} but the balance is {}",
                a.balance
            ));
        }
        let seqs: Vec<u64> = a.records.iter().map(|r| r.seq).collect();
        let expected: Vec<u64> = (1..=a.last_seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        if sorted != expected {
            problems.push(format!(
                "account {account}: last_seq {} but records carry seqs {:?}",
                a.last_seq,
                if sorted.len() > 20 {
                    format!("{} seqs", sorted.len())
                } else {
                    format!("{sorted:?}")
                }
            ));
        }
        total_balance += a.balance;
        for r in &a.records {
            let e = by_month_kind
                .entry((month_of(r.ts_ms), r.kind.clone()))
                .or_insert((0, Decimal::ZERO));
            e.0 += 1;
            e.1 += r.amount;
        }
    }
    let mut report_total = Decimal::ZERO;
    let months: BTreeSet<&String> = by_month_kind.keys().map(|(m, _)| m).collect();
    for m in &months {
        if !fin.reports.contains_key(*m) {
            problems.push(format!("no report read for month {m} which has records"));
        }
    }
    for (month, lines) in &fin.reports {
        let mut seen = BTreeSet::new();
        for l in lines {
            seen.insert(l.kind.clone());
            let (count, amount) = by_month_kind
                .get(&(month.clone(), l.kind.clone()))
                .copied()
                .unwrap_or((0, Decimal::ZERO));
            if count != l.count || amount != l.amount {
                problems.push(format!(
                    "report {month} kind {}: report says {} records / {}, records say {count} / {amount}",
                    l.kind, l.count, l.amount
                ));
            }
            match balance_sign(&l.kind) {
                Some(s) => report_total += s * l.amount,
                None => problems.push(format!(
                    "report {month} has kind {} which this checker cannot reconcile",
                    l.kind
                )),
            }
        }
        for ((m, k), (count, amount)) in &by_month_kind {
            if m == month && !seen.contains(k) {
                problems.push(format!(
                    "report {month} lacks kind {k} ({count} records, {amount})"
                ));
            }
        }
    }
    if total_balance != report_total {
        problems.push(format!(
            "sum of account balances {total_balance} != balance-moving report totals {report_total}"
        ));
    }
    problems
}

/// All members' digests present and equal.
pub fn check_digests(fin: &FinalState) -> Vec<String> {
    let mut problems = Vec::new();
    let distinct: BTreeSet<&String> = fin.digests.values().flatten().collect();
    for (n, d) in &fin.digests {
        if d.is_none() {
            problems.push(format!("node {n}: digest could not be read"));
        }
    }
    if distinct.len() > 1 {
        problems.push(format!(
            "replicas diverge: {}",
            fin.digests
                .iter()
                .map(|(n, d)| format!("node {n}={}", d.as_deref().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if fin.digests.is_empty() {
        problems.push("no digests read".into());
    }
    problems
}

#[cfg(test)]
mod tests;
