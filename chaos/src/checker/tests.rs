//! Synthetic histories: each checker passes a good history and flags the
//! fault it exists for (a checker that cannot fail is no checker).

use super::*;
use crate::history::{AcctState, Op, OpKind, Outcome};

const MS: u64 = 1_000_000;
/// 2026-11-21T12:00:00Z
const TS: i64 = 1_795_262_400_000;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn st(balance: &str, last_seq: u64) -> AcctState {
    AcctState {
        balance: d(balance),
        last_seq,
    }
}

#[allow(clippy::too_many_arguments)]
fn op(
    kind: OpKind,
    account: &str,
    rid: Option<&str>,
    delta: &str,
    t0: u64,
    t1: Option<u64>,
    outcome: Outcome,
    record: Option<&str>,
    observed: Option<AcctState>,
) -> Op {
    Op {
        id: 0,
        process: 1,
        kind,
        account: account.into(),
        request_id: rid.map(str::to_string),
        bank_ref: None,
        balance_delta: d(delta),
        invoke_ns: t0 * MS,
        last_attempt_ns: t0 * MS,
        complete_ns: t1.map(|t| t * MS),
        outcome,
        attempts: 1,
        node: 1,
        error: (outcome == Outcome::Fail).then(|| "DUPLICATE_PAYMENT".to_string()),
        record_id: record.map(str::to_string),
        observed,
    }
}

fn numbered(mut ops: Vec<Op>) -> Vec<Op> {
    for (i, o) in ops.iter_mut().enumerate() {
        o.id = i;
    }
    ops
}

fn rec(seq: u64, kind: &str, amount: &str, effect: &str, rid: &str, bank_ref: &str) -> FinalRecord {
    FinalRecord {
        seq,
        kind: kind.into(),
        amount: d(amount),
        balance_effect: d(effect),
        request_id: rid.into(),
        bank_code: if bank_ref.is_empty() { "" } else { "ICBC" }.into(),
        bank_ref: bank_ref.into(),
        ts_ms: TS + seq as i64,
    }
}

/// A good run on account A: pay 10 (acked), buy 4 (acked), a read, an
/// unknown payment that landed, a same-id replay, a new-id redelivery refused.
fn good() -> (Vec<Op>, FinalState) {
    let ops = numbered(vec![
        op(
            OpKind::Payment,
            "A",
            Some("p1"),
            "10.00",
            0,
            Some(10),
            Outcome::Ok,
            Some("A:1"),
            Some(st("10.00", 1)),
        ),
        op(
            OpKind::Purchase,
            "A",
            Some("b1"),
            "0",
            20,
            Some(30),
            Outcome::Ok,
            Some("A:2"),
            Some(st("10.00", 2)),
        ),
        op(
            OpKind::ReadAccount,
            "A",
            None,
            "0",
            40,
            Some(50),
            Outcome::Ok,
            None,
            Some(st("10.00", 2)),
        ),
        op(
            OpKind::Payment,
            "A",
            Some("p2"),
            "5.00",
            60,
            None,
            Outcome::Unknown,
            None,
            None,
        ),
        op(
            OpKind::PaymentReplay,
            "A",
            Some("p1"),
            "0",
            70,
            Some(80),
            Outcome::Ok,
            Some("A:1"),
            None,
        ),
        op(
            OpKind::PaymentNewId,
            "A",
            Some("p1-dup"),
            "10.00",
            90,
            Some(95),
            Outcome::Fail,
            None,
            None,
        ),
        op(
            OpKind::ReadAccount,
            "A",
            None,
            "0",
            200,
            Some(210),
            Outcome::Ok,
            None,
            Some(st("15.00", 3)),
        ),
    ]);
    let mut fin = FinalState::default();
    fin.accounts.insert(
        "A".into(),
        FinalAccount {
            balance: d("15.00"),
            last_seq: 3,
            records: vec![
                rec(1, "payment", "10.00", "10.00", "p1", "R1"),
                rec(2, "purchase", "4.00", "0", "b1", ""),
                rec(3, "payment", "5.00", "5.00", "p2", "R2"),
            ],
        },
    );
    fin.reports.insert(
        "2026-11".into(),
        vec![
            ReportLine {
                kind: "payment".into(),
                count: 2,
                amount: d("15.00"),
            },
            ReportLine {
                kind: "purchase".into(),
                count: 1,
                amount: d("4.00"),
            },
        ],
    );
    fin.digests.insert(1, Some("abc".into()));
    fin.digests.insert(2, Some("abc".into()));
    (ops, fin)
}

#[test]
fn month_of_utc() {
    assert_eq!(month_of(TS), "2026-11");
    assert_eq!(month_of(0), "1970-01");
    assert_eq!(month_of(951_782_400_000), "2000-02"); // 2000-02-29
    assert_eq!(month_of(-1), "1969-12");
}

#[test]
fn good_history_passes_every_checker() {
    let (ops, fin) = good();
    let r = check_records(&ops, &fin);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.acknowledged, 2);
    assert_eq!((r.unknown, r.unknown_landed), (1, 1));
    assert_eq!(r.refused, 1);
    let lin = check_linearizable(&ops, &fin, 100_000);
    assert_eq!(lin.len(), 1);
    assert!(lin[0].verdict.is_ok(), "{lin:?}");
    assert_eq!(check_money(&fin), Vec::<String>::new());
    assert_eq!(check_digests(&fin), Vec::<String>::new());
}

#[test]
fn lost_acknowledged_write_is_flagged() {
    let (ops, mut fin) = good();
    // The acknowledged purchase b1 is gone from the final records.
    let a = fin.accounts.get_mut("A").unwrap();
    a.records.retain(|r| r.request_id != "b1");
    let r = check_records(&ops, &fin);
    assert_eq!(r.lost.len(), 1, "{r:?}");
    assert!(r.lost[0].contains("b1"), "{r:?}");
    assert!(!r.is_ok());
    // The money checker sees the gap in the sequence too.
    assert!(!check_money(&fin).is_empty());
}

#[test]
fn duplicate_request_and_bank_ref_are_flagged() {
    let (ops, mut fin) = good();
    let a = fin.accounts.get_mut("A").unwrap();
    a.records
        .push(rec(4, "payment", "10.00", "10.00", "p1", "R1"));
    a.last_seq = 4;
    a.balance = d("25.00");
    let r = check_records(&ops, &fin);
    assert!(!r.is_ok());
    assert!(
        r.duplicated.iter().any(|s| s.contains("request_id p1")),
        "{r:?}"
    );
    assert!(r.duplicated.iter().any(|s| s.contains("ICBC/R1")), "{r:?}");

    // A redelivery under a new request_id that was accepted: same bank_ref twice.
    let (mut ops, mut fin) = good();
    ops[5].outcome = Outcome::Ok;
    ops[5].error = None;
    let a = fin.accounts.get_mut("A").unwrap();
    a.records
        .push(rec(4, "payment", "10.00", "10.00", "p1-dup", "R1"));
    a.last_seq = 4;
    a.balance = d("25.00");
    let r = check_records(&ops, &fin);
    assert_eq!(r.duplicated.len(), 1, "{r:?}");
    assert!(r.duplicated[0].contains("ICBC/R1"), "{r:?}");
}

#[test]
fn refused_write_present_and_phantom_records_are_anomalies() {
    let (ops, mut fin) = good();
    let a = fin.accounts.get_mut("A").unwrap();
    a.records
        .push(rec(4, "payment", "10.00", "10.00", "p1-dup", "R1b"));
    a.records
        .push(rec(5, "payment", "1.00", "1.00", "ghost", "R9"));
    let r = check_records(&ops, &fin);
    assert!(
        r.anomalies
            .iter()
            .any(|s| s.contains("p1-dup") && s.contains("refused")),
        "{r:?}"
    );
    assert!(r.anomalies.iter().any(|s| s.contains("ghost")), "{r:?}");
}

#[test]
fn stale_read_is_flagged() {
    let (mut ops, fin) = good();
    // The read at 40..50 (after the acked purchase) claims the state before it.
    ops[2].observed = Some(st("10.00", 1));
    let lin = check_linearizable(&ops, &fin, 100_000);
    assert!(lin[0].verdict.is_violation(), "{lin:?}");
    // And a read that misses a landed unknown payment forever is fine only
    // before the end: the final read at 200 shows it, so that stays ok.
    let (mut ops, fin) = good();
    ops[6].observed = Some(st("10.00", 2));
    // Required (landed) p2 can still come after that read: not a violation.
    assert!(check_linearizable(&ops, &fin, 100_000)[0].verdict.is_ok());
}

#[test]
fn acknowledged_answer_naming_another_record_is_flagged() {
    let (mut ops, fin) = good();
    ops[4].record_id = Some("A:3".into());
    let r = check_records(&ops, &fin);
    assert!(r.anomalies.iter().any(|s| s.contains("A:3")), "{r:?}");
}

#[test]
fn money_mismatch_is_flagged() {
    // Balance differs from the records.
    let (_, mut fin) = good();
    fin.accounts.get_mut("A").unwrap().balance = d("15.01");
    let p = check_money(&fin);
    assert!(
        p.iter().any(|s| s.contains("records sum to 15.00")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|s| s.contains("sum of account balances")),
        "{p:?}"
    );
    // Report differs from the records.
    let (_, mut fin) = good();
    fin.reports.get_mut("2026-11").unwrap()[0].amount = d("14.00");
    let p = check_money(&fin);
    assert!(
        p.iter().any(|s| s.contains("report 2026-11 kind payment")),
        "{p:?}"
    );
    // A month with records but no report read.
    let (_, mut fin) = good();
    fin.reports.clear();
    assert!(check_money(&fin).iter().any(|s| s.contains("no report")));
    // A kind missing from the report.
    let (_, mut fin) = good();
    fin.reports.get_mut("2026-11").unwrap().pop();
    assert!(
        check_money(&fin)
            .iter()
            .any(|s| s.contains("lacks kind purchase"))
    );
}

#[test]
fn diverging_or_missing_digests_are_flagged() {
    let (_, mut fin) = good();
    fin.digests.insert(3, Some("xyz".into()));
    assert!(check_digests(&fin).iter().any(|s| s.contains("diverge")));
    let (_, mut fin) = good();
    fin.digests.insert(3, None);
    assert!(!check_digests(&fin).is_empty());
}
