//! Domain unit and property tests on [`MemTxn`]: every operation's happy
//! path and refusals, reports vs records, ladder pricing across the year,
//! determinism, and the cost of the recent segment.

use std::cell::Cell;
use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;

use billdb_api::error::ErrorCode;
use billdb_api::tariff::{self, PurchaseBy};

use super::calendar::days_ms;
use super::txn::SCAN_LIMIT_MAX;
use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

const DAY: i64 = 86_400_000;

fn t0() -> i64 {
    days_ms(2026, 3, 1)
}

fn ladder() -> TariffSpec {
    TariffSpec::Ladder {
        tiers: vec![
            (Some(d("2160")), d("0.4883")),
            (Some(d("4200")), d("0.5383")),
            (None, d("0.7883")),
        ],
    }
}

fn api_ladder() -> billdb_api::tariff::Tariff {
    ladder().to_tariff("RES")
}

struct World {
    t: MemTxn,
    index: u64,
    operator: String,
    branch: String,
}

impl World {
    /// A cluster whose members all run this build (its op level set, as
    /// the leader sets it after init).
    fn new() -> Self {
        let mut w = Self::without_level();
        let level = keys::encode(&levels::BUILD_OP_LEVEL).unwrap();
        w.t.put(Family::Meta, keys::META_CLUSTER_LEVEL.to_vec(), level);
        w
    }

    /// A cluster that never recorded an op level (level 1).
    fn without_level() -> Self {
        World {
            t: MemTxn::default(),
            index: 0,
            operator: "op1".into(),
            branch: String::new(),
        }
    }

    fn run(&mut self, rid: &str, ts: i64, op: Op) -> Outcome {
        self.index += 1;
        let cmd = Command {
            request_id: rid.into(),
            ts_ms: ts,
            operator: self.operator.clone(),
            branch: self.branch.clone(),
            channel: String::new(),
            op,
        };
        apply(&mut self.t, self.index, &cmd).unwrap()
    }

    fn ok(&mut self, rid: &str, ts: i64, op: Op) -> Outcome {
        let o = self.run(rid, ts, op);
        if let Outcome::Refused(e) = &o {
            panic!("{rid} refused: {e:?}");
        }
        o
    }

    /// Runs `op`, expects a refusal, and checks that nothing but the
    /// request entry was written.
    fn refused(&mut self, rid: &str, ts: i64, op: Op) -> billdb_api::error::ApiError {
        let before = self.non_request();
        let o = self.run(rid, ts, op);
        let Outcome::Refused(e) = o else {
            panic!("{rid} not refused: {o:?}")
        };
        assert_eq!(before, self.non_request(), "{rid}: a refusal wrote data");
        assert!(request_outcome(&self.t, rid).unwrap().is_some());
        e
    }

    fn code(&mut self, rid: &str, ts: i64, op: Op) -> ErrorCode {
        self.refused(rid, ts, op).code
    }

    fn non_request(&self) -> Vec<(Family, Vec<u8>, Vec<u8>)> {
        self.t
            .data
            .iter()
            .filter(|((f, _), _)| *f != Family::Requests)
            .map(|((f, k), v)| (*f, k.clone(), v.clone()))
            .collect()
    }

    fn account(&self, id: &str) -> Account {
        get_account(&self.t, id).unwrap().unwrap()
    }

    /// Tariff RES, account A1 (electricity), card C1.
    fn standard() -> Self {
        let mut w = World::new();
        w.ok("t", 0, define_tariff("RES", ladder(), 0));
        w.ok("o1", t0(), open("A1", "electricity", "RES"));
        w.ok("c1", t0() + 1, issue("A1", "C1"));
        w
    }
}

fn open(id: &str, utility: &str, tariff: &str) -> Op {
    Op::OpenAccount {
        account_id: id.into(),
        name: "n".into(),
        address: "a".into(),
        branch: "b1".into(),
        utility: utility.into(),
        meter_id: "m".into(),
        tariff_id: tariff.into(),
    }
}

fn define_tariff(id: &str, spec: TariffSpec, from: i64) -> Op {
    Op::DefineTariff {
        tariff_id: id.into(),
        tariff: spec,
        effective_from_ms: from,
    }
}

fn issue(account: &str, card: &str) -> Op {
    Op::IssueCard {
        account_id: account.into(),
        card_no: card.into(),
    }
}

fn buy_card(card: &str, money: &str) -> Op {
    Op::Purchase {
        card_no: Some(card.into()),
        account_id: None,
        buy: Buy::Money(d(money)),
        confirm_duplicate: false,
    }
}

fn buy_units(account: &str, units: &str) -> Op {
    Op::Purchase {
        card_no: None,
        account_id: Some(account.into()),
        buy: Buy::Units(d(units)),
        confirm_duplicate: false,
    }
}

fn pay(id: &str, amount: &str, bank_ref: &str) -> Op {
    Op::Payment {
        account_id: id.into(),
        amount: d(amount),
        bank_code: "ICBC".into(),
        bank_ref: bank_ref.into(),
    }
}

fn posted(o: &Outcome) -> (&Record, Decimal, &Vec<String>) {
    match o {
        Outcome::RecordPosted {
            record,
            balance,
            warnings,
        } => (record, *balance, warnings),
        other => panic!("not a record: {other:?}"),
    }
}

fn rid_of(o: &Outcome) -> String {
    match o {
        Outcome::PaymentPosted {
            account_id,
            record_seq,
            ..
        } => record_id(account_id, *record_seq),
        o => {
            let (r, _, _) = posted(o);
            record_id(&r.account_id, r.seq)
        }
    }
}

// ---------------------------------------------------------------- accounts

/// Open account `id` under request `rid`.
fn open_cmd(rid: &str, id: &str) -> Command {
    Command {
        request_id: rid.into(),
        ts_ms: t0(),
        operator: "op1".into(),
        branch: String::new(),
        channel: String::new(),
        op: open(id, "heat", ""),
    }
}

#[test]
fn a_replay_answers_with_the_original_outcome_and_log_index() {
    let mut t = MemTxn::default();
    let first = apply_indexed(&mut t, 7, &open_cmd("r1", "A1")).unwrap();
    assert_eq!(first.1, 7);
    // The same request at a later index: the stored outcome, index 7.
    assert_eq!(
        apply_indexed(&mut t, 9, &open_cmd("r1", "A1")).unwrap(),
        first
    );
    // The same id with another payload: refused at the new index.
    let (o, at) = apply_indexed(&mut t, 10, &open_cmd("r1", "A2")).unwrap();
    assert!(matches!(o, Outcome::Refused(ref e) if e.code == ErrorCode::IdempotencyConflict));
    assert_eq!(at, 10);
}

#[test]
fn replayed_answers_what_apply_would_without_writing() {
    let mut t = MemTxn::default();
    assert_eq!(replayed(&t, "r1", &open_cmd("r1", "A1").op).unwrap(), None);
    let (outcome, index) = apply_indexed(&mut t, 7, &open_cmd("r1", "A1")).unwrap();
    let state = t.data.clone();
    assert_eq!(
        replayed(&t, "r1", &open_cmd("r1", "A1").op).unwrap(),
        Some(Replay::Original {
            outcome: outcome.clone(),
            log_index: index
        })
    );
    match replayed(&t, "r1", &open_cmd("r1", "A2").op).unwrap() {
        Some(Replay::Conflict(e)) => assert_eq!(e.code, ErrorCode::IdempotencyConflict),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Answering changed nothing, and apply agrees with both answers.
    assert_eq!(t.data, state);
    assert_eq!(
        apply_indexed(&mut t, 9, &open_cmd("r1", "A1")).unwrap(),
        (outcome, 7)
    );
    assert!(matches!(
        apply_indexed(&mut t, 10, &open_cmd("r1", "A2")).unwrap().0,
        Outcome::Refused(ref e) if e.code == ErrorCode::IdempotencyConflict
    ));
    assert_eq!(replayed(&t, "r2", &open_cmd("r2", "A2").op).unwrap(), None);
}

#[test]
fn open_account_and_its_refusals() {
    let mut w = World::new();
    let o = w.ok("r1", t0(), open("A1", "heat", ""));
    assert_eq!(
        o,
        Outcome::AccountOpened {
            account_id: "A1".into(),
            opened_ms: t0()
        }
    );
    let a = w.account("A1");
    assert_eq!(
        (a.status.as_str(), a.balance, a.last_seq),
        ("active", d("0"), 0)
    );
    assert_eq!(
        w.code("r2", t0(), open("A1", "heat", "")),
        ErrorCode::AccountExists
    );
    assert_eq!(
        w.code("r3", t0(), open("A2", "steam", "")),
        ErrorCode::InvalidArgument
    );
    // Closed ids are never reused.
    w.ok(
        "r4",
        t0(),
        Op::Close {
            account_id: "A1".into(),
            reason: "moved".into(),
        },
    );
    assert_eq!(
        w.code("r5", t0(), open("A1", "heat", "")),
        ErrorCode::AccountExists
    );
}

#[test]
fn idempotency_same_payload_same_outcome_other_payload_conflict() {
    let mut w = World::standard();
    let first = w.ok("p1", t0() + 10, pay("A1", "10.50", "X1"));
    let again = w.run("p1", t0() + 20, pay("A1", "10.50", "X1"));
    assert_eq!(first, again);
    assert_eq!(w.account("A1").balance, d("10.50"));
    assert_eq!(
        w.code("p1", t0() + 30, pay("A1", "99.00", "X1")),
        ErrorCode::IdempotencyConflict
    );
}

#[test]
fn update_contact_and_refusals() {
    let mut w = World::standard();
    let op = |id: &str, area: Option<&str>| Op::UpdateContact {
        account_id: id.into(),
        name: Some("New Name".into()),
        address: None,
        phone: Some("555".into()),
        area: area.map(d),
    };
    let Outcome::AccountUpdated { account } = w.ok("u1", t0() + 5, op("A1", Some("88.50"))) else {
        panic!()
    };
    assert_eq!(
        (
            account.name.as_str(),
            account.address.as_str(),
            account.phone.as_str(),
            account.area
        ),
        ("New Name", "a", "555", d("88.50"))
    );
    assert_eq!(w.account("A1").name, "New Name");
    assert_eq!(
        w.code("u2", t0(), op("NOPE", None)),
        ErrorCode::AccountNotFound
    );
    assert_eq!(
        w.code("u3", t0(), op("A1", Some("-1"))),
        ErrorCode::InvalidArgument
    );
    w.ok(
        "c",
        t0() + 6,
        Op::Close {
            account_id: "A1".into(),
            reason: String::new(),
        },
    );
    assert_eq!(
        w.code("u4", t0() + 7, op("A1", None)),
        ErrorCode::AccountClosed
    );
}

#[test]
fn suspend_resume_close_lifecycle() {
    let mut w = World::standard();
    let susp = || Op::Suspend {
        account_id: "A1".into(),
        reason: "arrears".into(),
    };
    let resume = || Op::Resume {
        account_id: "A1".into(),
    };
    assert_eq!(w.code("r0", t0(), resume()), ErrorCode::InvalidState);
    w.ok("s1", t0() + 10, susp());
    assert_eq!(w.account("A1").status, "suspended");
    assert_eq!(w.code("s2", t0() + 11, susp()), ErrorCode::AccountSuspended);
    // Sales and card changes are refused while suspended; payments are not.
    assert_eq!(
        w.code("b1", t0() + 12, buy_card("C1", "10.00")),
        ErrorCode::AccountSuspended
    );
    w.ok("p1", t0() + 13, pay("A1", "5.00", "R1"));
    w.ok("r1", t0() + 14, resume());
    assert_eq!(w.account("A1").status, "active");
    w.ok(
        "cl",
        t0() + 15,
        Op::Close {
            account_id: "A1".into(),
            reason: "moved".into(),
        },
    );
    let a = w.account("A1");
    assert_eq!(
        (a.status.as_str(), a.closed_ms, a.active_card),
        ("closed", Some(t0() + 15), None)
    );
    assert_eq!(get_card(&w.t, "C1").unwrap().unwrap().status, "revoked");
    // Frozen: every write refused, records kept.
    for (i, op) in [
        pay("A1", "1.00", "R2"),
        buy_units("A1", "1"),
        susp(),
        resume(),
        Op::Close {
            account_id: "A1".into(),
            reason: String::new(),
        },
        Op::Adjust {
            account_id: "A1".into(),
            amount: d("1.00"),
            reason: "x".into(),
        },
        Op::PostCharge {
            account_id: "A1".into(),
            amount: d("1.00"),
            period: String::new(),
            reason: String::new(),
        },
        issue("A1", "C9"),
        // A sale on the closed account's (revoked) card: the cashier hears
        // that the account is closed, not that the card is unknown.
        buy_card("C1", "10.00"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            w.code(&format!("x{i}"), t0() + 20, op),
            ErrorCode::AccountClosed
        );
    }
    let page = list_records(&w.t, &all_query("A1")).unwrap().unwrap();
    assert_eq!(page.records.len(), 1);
}

// ------------------------------------------------------------------- cards

#[test]
fn issue_card_and_refusals() {
    let mut w = World::standard();
    let c = get_card(&w.t, "C1").unwrap().unwrap();
    assert_eq!(
        (c.generation, c.status.as_str(), c.account_id.as_str()),
        (1, "active", "A1")
    );
    assert_eq!(w.account("A1").active_card.as_deref(), Some("C1"));
    assert_eq!(
        w.code("i1", t0(), issue("A1", "C2")),
        ErrorCode::CardAlreadyIssued
    );
    w.ok("o2", t0(), open("A2", "electricity", "RES"));
    assert_eq!(w.code("i2", t0(), issue("A2", "C1")), ErrorCode::CardExists);
    assert_eq!(
        w.code("i3", t0(), issue("NOPE", "C3")),
        ErrorCode::AccountNotFound
    );
    w.ok(
        "s",
        t0(),
        Op::Suspend {
            account_id: "A2".into(),
            reason: String::new(),
        },
    );
    assert_eq!(
        w.code("i4", t0(), issue("A2", "C3")),
        ErrorCode::AccountSuspended
    );
}

#[test]
fn replace_card_refuses_the_old_card_from_then_on() {
    let mut w = World::standard();
    let rep = |old: &str, new: &str| Op::ReplaceCard {
        card_no: old.into(),
        new_card_no: new.into(),
        reason: "lost".into(),
    };
    let Outcome::CardReplaced { old, new } = w.ok("r1", t0() + 100, rep("C1", "C2")) else {
        panic!()
    };
    assert_eq!(
        (old.status.as_str(), old.replaced_by.as_deref()),
        ("replaced", Some("C2"))
    );
    assert_eq!((new.generation, new.status.as_str()), (2, "active"));
    assert_eq!(w.account("A1").active_card.as_deref(), Some("C2"));
    let e = w.refused("b1", t0() + 200, buy_card("C1", "10.00"));
    assert_eq!(e.code, ErrorCode::CardReplaced);
    assert_eq!(e.details["current_card"], "C2");
    assert_eq!(e.details["replaced_ms"], t0() + 100);
    assert_eq!(w.code("r2", t0(), rep("C1", "C3")), ErrorCode::CardReplaced);
    assert_eq!(
        w.code("r3", t0(), rep("NOPE", "C3")),
        ErrorCode::CardUnknown
    );
    assert_eq!(w.code("r4", t0(), rep("C2", "C1")), ErrorCode::CardExists);
    w.ok("b2", t0() + 300, buy_card("C2", "10.00"));
}

#[test]
fn verify_card_verdicts_and_recent_records() {
    let mut w = World::standard();
    let v = verify_card(&w.t, "C1", 1, 0, 10).unwrap();
    assert_eq!(v.verdict, "OK");
    assert_eq!(
        verify_card(&w.t, "ZZ", 1, 0, 10).unwrap().verdict,
        "CARD_UNKNOWN"
    );
    assert_eq!(
        verify_card(&w.t, "C1", 7, 0, 10).unwrap().verdict,
        "CARD_UNKNOWN"
    );
    let o = w.ok("b1", t0() + 10, buy_card("C1", "100.00"));
    let v = verify_card(&w.t, "C1", 1, 0, 10).unwrap();
    assert_eq!(v.verdict, "CREDIT_NOT_LOADED");
    assert_eq!(v.unloaded_record_id, Some(rid_of(&o)));
    assert_eq!(v.expected_seq, 1);
    assert_eq!(v.recent.len(), 1);
    w.ok(
        "l1",
        t0() + 20,
        Op::ConfirmLoaded {
            record_id: rid_of(&o),
        },
    );
    assert_eq!(verify_card(&w.t, "C1", 1, 1, 10).unwrap().verdict, "OK");
    w.ok(
        "r",
        t0() + 30,
        Op::ReplaceCard {
            card_no: "C1".into(),
            new_card_no: "C2".into(),
            reason: String::new(),
        },
    );
    let v = verify_card(&w.t, "C1", 1, 1, 10).unwrap();
    assert_eq!(v.verdict, "CARD_REPLACED");
    assert_eq!(
        (v.replaced_ms, v.current_card.as_deref()),
        (Some(t0() + 30), Some("C2"))
    );
    assert_eq!(verify_card(&w.t, "C2", 2, 1, 10).unwrap().verdict, "OK");
    w.ok(
        "s",
        t0() + 40,
        Op::Suspend {
            account_id: "A1".into(),
            reason: String::new(),
        },
    );
    assert_eq!(
        verify_card(&w.t, "C2", 2, 1, 10).unwrap().verdict,
        "ACCOUNT_SUSPENDED"
    );
    w.ok(
        "c",
        t0() + 50,
        Op::Close {
            account_id: "A1".into(),
            reason: String::new(),
        },
    );
    let v = verify_card(&w.t, "C2", 2, 1, 10).unwrap();
    assert_eq!(v.verdict, "ACCOUNT_CLOSED");
    assert_eq!(v.recent.len(), 1);
}

// --------------------------------------------------------------- purchases

#[test]
fn purchase_by_money_and_by_units_use_the_ladder_and_year_counter() {
    let mut w = World::standard();
    let o = w.ok("b1", t0() + 10, buy_card("C1", "100.00"));
    let (r, _, warnings) = posted(&o);
    assert_eq!(
        (r.kind.as_str(), r.amount, r.units),
        ("purchase", d("100.00"), d("204.79"))
    );
    assert_eq!((r.card_no.as_str(), r.card_seq, r.seq), ("C1", 1, 1));
    assert_eq!(r.invoice_no, "INV000000000001");
    assert!(warnings.is_empty());
    assert_eq!(year_units(&w.t, "A1", 2026).unwrap(), d("204.79"));
    // By units, crossing into tier 2: priced after the 204.79 bought.
    let o = w.ok("b2", t0() + 100_000, buy_units("A1", "2000"));
    let (r, _, warnings) = posted(&o);
    let expect = tariff::price(&api_ladder(), d("204.79"), PurchaseBy::Units(d("2000"))).unwrap();
    assert_eq!(
        (r.amount, r.units, &r.tiers),
        (expect.amount, expect.units, &expect.tiers)
    );
    assert_eq!(r.tiers.len(), 2);
    assert_eq!(warnings, &vec!["CREDIT_NOT_LOADED".to_string()]);
    assert_eq!(year_units(&w.t, "A1", 2026).unwrap(), d("2204.79"));
    let a = w.account("A1");
    assert_eq!(
        (a.last_card_seq, a.last_seq, a.last_purchase_seq()),
        (2, 2, Some(2))
    );
    // Invoice exists.
    let inv = get_invoice(&w.t, &r.invoice_no).unwrap().unwrap();
    assert_eq!((inv.amount, inv.print_count), (r.amount, 0));
}

#[test]
fn purchase_refusals() {
    let mut w = World::standard();
    assert_eq!(
        w.code("b0", t0(), buy_card("ZZ", "10.00")),
        ErrorCode::CardUnknown
    );
    assert_eq!(
        w.code("b1", t0(), buy_card("C1", "0.00")),
        ErrorCode::AmountTooSmall
    );
    assert_eq!(
        w.code("b2", t0(), buy_card("C1", "1.234")),
        ErrorCode::TooManyDecimals
    );
    assert_eq!(
        w.code("b3", t0(), buy_units("A1", "0.001")),
        ErrorCode::AmountTooSmall
    );
    assert_eq!(
        w.code("b4", t0(), buy_units("NOPE", "1")),
        ErrorCode::AccountNotFound
    );
    w.ok("o2", t0(), open("A2", "electricity", ""));
    assert_eq!(
        w.code("b5", t0(), buy_units("A2", "1")),
        ErrorCode::TariffNotFound
    );
    w.ok("o3", t0(), open("A3", "electricity", "LATER"));
    w.ok(
        "t2",
        t0(),
        define_tariff("LATER", TariffSpec::Flat { price: d("1") }, t0() + DAY),
    );
    assert_eq!(
        w.code("b6", t0(), buy_units("A3", "1")),
        ErrorCode::TariffNotFound
    );
    w.ok("b7", t0() + DAY, buy_units("A3", "1"));
    assert_eq!(
        w.code(
            "b8",
            t0(),
            Op::Purchase {
                card_no: None,
                account_id: None,
                buy: Buy::Units(d("1")),
                confirm_duplicate: false
            }
        ),
        ErrorCode::InvalidArgument
    );
    // A card that is not the account's.
    assert_eq!(
        w.code(
            "b9",
            t0(),
            Op::Purchase {
                card_no: Some("C1".into()),
                account_id: Some("A3".into()),
                buy: Buy::Units(d("1")),
                confirm_duplicate: false
            }
        ),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn near_duplicate_sale_is_held_unless_confirmed() {
    let mut w = World::standard();
    let first = w.ok("b1", t0(), buy_card("C1", "50.00"));
    let e = w.refused("b2", t0() + 29_000, buy_card("C1", "50.00"));
    assert_eq!(e.code, ErrorCode::PossibleDuplicate);
    assert_eq!(e.details["previous_record_id"], rid_of(&first));
    assert_eq!(e.details["previous_request_id"], "b1");
    // Another amount is fine; so is a confirmed duplicate.
    w.ok("b3", t0() + 29_500, buy_card("C1", "51.00"));
    w.ok(
        "b4",
        t0() + 29_600,
        Op::Purchase {
            card_no: Some("C1".into()),
            account_id: None,
            buy: Buy::Money(d("51.00")),
            confirm_duplicate: true,
        },
    );
    // And the same amount after the window.
    w.ok("b5", t0() + 29_600 + 30_001, buy_card("C1", "51.00"));
    assert_eq!(w.account("A1").last_card_seq, 4);
}

#[test]
fn reissue_lost_credit_once_for_the_latest_unloaded_purchase() {
    let mut w = World::standard();
    let p1 = w.ok("b1", t0(), buy_card("C1", "20.00"));
    let p2 = w.ok("b2", t0() + 60_000, buy_card("C1", "30.00"));
    assert_eq!(
        w.code(
            "x0",
            t0(),
            Op::Reissue {
                record_id: rid_of(&p1)
            }
        ),
        ErrorCode::NothingToReissue
    );
    assert_eq!(
        w.code(
            "x1",
            t0(),
            Op::Reissue {
                record_id: "A1:99".into()
            }
        ),
        ErrorCode::RecordNotFound
    );
    assert_eq!(
        w.code(
            "x2",
            t0(),
            Op::Reissue {
                record_id: "junk".into()
            }
        ),
        ErrorCode::RecordNotFound
    );
    let o = w.ok(
        "ri",
        t0() + 70_000,
        Op::Reissue {
            record_id: rid_of(&p2),
        },
    );
    let (r, _, _) = posted(&o);
    let (orig, _, _) = posted(&p2);
    assert_eq!(
        (r.kind.as_str(), r.amount, r.units),
        ("reissue", d("0"), orig.units)
    );
    assert_eq!((r.card_seq, r.refers_to), (orig.card_seq, Some(orig.seq)));
    assert_eq!(w.account("A1").last_card_seq, 2, "no new card seq");
    assert!(r.invoice_no.is_empty());
    let e = w.refused(
        "ri2",
        t0() + 80_000,
        Op::Reissue {
            record_id: rid_of(&p2),
        },
    );
    assert_eq!(e.code, ErrorCode::NothingToReissue);
    // Loaded purchases have nothing to reissue.
    let p3 = w.ok("b3", t0() + 200_000, buy_card("C1", "40.00"));
    w.ok(
        "l3",
        t0() + 200_001,
        Op::ConfirmLoaded {
            record_id: rid_of(&p3),
        },
    );
    assert_eq!(
        w.code(
            "ri3",
            t0() + 200_002,
            Op::Reissue {
                record_id: rid_of(&p3)
            }
        ),
        ErrorCode::NothingToReissue
    );
    // Nor is a payment a purchase.
    let pay1 = w.ok("p", t0() + 200_003, pay("A1", "1.00", "Q"));
    assert_eq!(
        w.code(
            "ri4",
            t0(),
            Op::Reissue {
                record_id: rid_of(&pay1)
            }
        ),
        ErrorCode::NothingToReissue
    );
}

#[test]
fn confirm_loaded_and_refusals() {
    let mut w = World::standard();
    let p = w.ok("b1", t0(), buy_card("C1", "20.00"));
    let o = w.ok(
        "l1",
        t0() + 1,
        Op::ConfirmLoaded {
            record_id: rid_of(&p),
        },
    );
    assert_eq!(
        o,
        Outcome::CreditLoaded {
            record_id: rid_of(&p),
            already_loaded: false
        }
    );
    let o = w.ok(
        "l2",
        t0() + 2,
        Op::ConfirmLoaded {
            record_id: rid_of(&p),
        },
    );
    assert_eq!(
        o,
        Outcome::CreditLoaded {
            record_id: rid_of(&p),
            already_loaded: true
        }
    );
    let pay1 = w.ok("p", t0() + 3, pay("A1", "1.00", "Q"));
    assert_eq!(
        w.code(
            "l3",
            t0(),
            Op::ConfirmLoaded {
                record_id: rid_of(&pay1)
            }
        ),
        ErrorCode::InvalidState
    );
    assert_eq!(
        w.code(
            "l4",
            t0(),
            Op::ConfirmLoaded {
                record_id: "A1:77".into()
            }
        ),
        ErrorCode::RecordNotFound
    );
    // No warning on the next sale once loaded.
    let o = w.ok("b2", t0() + 100_000, buy_card("C1", "20.00"));
    assert!(posted(&o).2.is_empty());
}

// -------------------------------------------------- payments, charges, ...

#[test]
fn payment_exactly_once_by_bank_ref_and_refusals() {
    let mut w = World::standard();
    let o = w.ok("p1", t0(), pay("A1", "10.50", "X1"));
    let Outcome::PaymentPosted {
        record_seq,
        balance,
        ref invoice_no,
        ..
    } = o
    else {
        panic!()
    };
    assert_eq!((record_seq, balance), (1, d("10.50")));
    assert!(get_invoice(&w.t, invoice_no).unwrap().is_some());
    let e = w.refused("p2", t0(), pay("A1", "10.50", "X1"));
    assert_eq!(
        (e.code, e.details["original_request_id"].as_str()),
        (ErrorCode::DuplicatePayment, Some("p1"))
    );
    assert_eq!(
        w.code("p3", t0(), pay("NOPE", "1.00", "X2")),
        ErrorCode::AccountNotFound
    );
    assert_eq!(
        w.code("p4", t0(), pay("A1", "-1.00", "X3")),
        ErrorCode::AmountTooSmall
    );
    assert_eq!(
        w.code("p5", t0(), pay("A1", "1000000.01", "X4")),
        ErrorCode::AmountOverLimit
    );
    let a = w.account("A1");
    assert_eq!((a.balance, a.last_seq), (d("10.50"), 1));
}

#[test]
fn charge_and_adjustment() {
    let mut w = World::standard();
    let o = w.ok(
        "ch1",
        t0(),
        Op::PostCharge {
            account_id: "A1".into(),
            amount: d("120.00"),
            period: "2026-27".into(),
            reason: "heating".into(),
        },
    );
    let (r, bal, _) = posted(&o);
    assert_eq!(
        (r.kind.as_str(), r.amount, r.balance_effect, bal),
        ("charge", d("120.00"), d("-120.00"), d("-120.00"))
    );
    assert_eq!(
        w.code(
            "c2",
            t0(),
            Op::PostCharge {
                account_id: "A1".into(),
                amount: d("0"),
                period: String::new(),
                reason: String::new()
            }
        ),
        ErrorCode::AmountTooSmall
    );
    let adj = |amount: &str, reason: &str| Op::Adjust {
        account_id: "A1".into(),
        amount: d(amount),
        reason: reason.into(),
    };
    let o = w.ok("a1", t0() + 1, adj("-0.50", "meter misread"));
    assert_eq!(posted(&o).1, d("-120.50"));
    let o = w.ok("a2", t0() + 2, adj("20", "goodwill"));
    assert_eq!(
        (posted(&o).0.amount.to_string(), posted(&o).1),
        ("20.00".to_string(), d("-100.50"))
    );
    assert_eq!(w.code("a3", t0(), adj("0", "x")), ErrorCode::AmountTooSmall);
    assert_eq!(
        w.code("a4", t0(), adj("1.001", "x")),
        ErrorCode::TooManyDecimals
    );
    assert_eq!(
        w.code("a5", t0(), adj("1.00", " ")),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.code("a6", t0(), adj("-1000000.01", "x")),
        ErrorCode::AmountOverLimit
    );
    assert_eq!(
        w.code(
            "a7",
            t0(),
            Op::Adjust {
                account_id: "NOPE".into(),
                amount: d("1"),
                reason: "x".into()
            }
        ),
        ErrorCode::AccountNotFound
    );
}

#[test]
fn reversal_compensates_once() {
    let mut w = World::standard();
    let p = w.ok("p1", t0(), pay("A1", "10.00", "X1"));
    let rev = |rid: &str| Op::Reverse {
        record_id: rid.into(),
        reason: "bank recall".into(),
    };
    let o = w.ok("r1", t0() + 1, rev(&rid_of(&p)));
    let (r, bal, _) = posted(&o);
    assert_eq!(
        (r.kind.as_str(), r.amount, bal),
        ("reversal", d("-10.00"), d("0.00"))
    );
    assert_eq!((r.bank_code.as_str(), r.refers_to), ("ICBC", Some(1)));
    let e = w.refused("r2", t0() + 2, rev(&rid_of(&p)));
    assert_eq!(
        (e.code, e.details["reversed_by"].as_str()),
        (ErrorCode::AlreadyReversed, Some("A1:2"))
    );
    assert_eq!(
        w.code("r3", t0(), rev(&rid_of(&o))),
        ErrorCode::NotReversible
    );
    assert_eq!(w.code("r4", t0(), rev("A1:9")), ErrorCode::RecordNotFound);
    assert_eq!(
        w.code(
            "r5",
            t0(),
            Op::Reverse {
                record_id: rid_of(&p),
                reason: String::new()
            }
        ),
        ErrorCode::InvalidArgument
    );
    // A purchase reversal gives the ladder counter its units back.
    let b = w.ok("b1", t0() + 10, buy_card("C1", "100.00"));
    assert_eq!(year_units(&w.t, "A1", 2026).unwrap(), d("204.79"));
    let o = w.ok("r6", t0() + 11, rev(&rid_of(&b)));
    assert_eq!(posted(&o).0.units, d("-204.79"));
    assert_eq!(year_units(&w.t, "A1", 2026).unwrap(), d("0.00"));
    // A reversed purchase is not unloaded credit.
    assert_eq!(verify_card(&w.t, "C1", 1, 1, 5).unwrap().verdict, "OK");
}

// -------------------------------------------------- boundary, list records

fn all_query(account: &str) -> RecordQuery {
    RecordQuery {
        account_id: account.into(),
        segment: Segment::All,
        from_ms: None,
        to_ms: None,
        limit: 100,
        page_token: None,
        descending: false,
    }
}

#[test]
fn segment_boundary_and_listing() {
    let mut w = World::standard();
    for i in 0..10 {
        w.ok(
            &format!("p{i}"),
            t0() + i * DAY,
            pay("A1", "1.00", &format!("R{i}")),
        );
    }
    assert_eq!(
        w.code(
            "sb0",
            t0() + 10 * DAY,
            Op::SetSegmentBoundary {
                boundary_ms: t0() + 11 * DAY
            }
        ),
        ErrorCode::InvalidArgument
    );
    // No boundary: all recent.
    let q = |seg, desc, limit, token: Option<String>| RecordQuery {
        segment: seg,
        descending: desc,
        limit,
        page_token: token,
        ..all_query("A1")
    };
    assert_eq!(
        list_records(&w.t, &q(Segment::Recent, false, 100, None))
            .unwrap()
            .unwrap()
            .records
            .len(),
        10
    );
    assert_eq!(
        list_records(&w.t, &q(Segment::History, false, 100, None))
            .unwrap()
            .unwrap()
            .records
            .len(),
        0
    );
    w.ok(
        "sb",
        t0() + 10 * DAY,
        Op::SetSegmentBoundary {
            boundary_ms: t0() + 7 * DAY,
        },
    );
    let recent = list_records(&w.t, &q(Segment::Recent, false, 100, None))
        .unwrap()
        .unwrap();
    assert_eq!(
        recent.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let hist = list_records(&w.t, &q(Segment::History, true, 100, None))
        .unwrap()
        .unwrap();
    assert_eq!(
        hist.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![7, 6, 5, 4, 3, 2, 1]
    );
    // Paging, both directions, covers everything exactly once.
    for desc in [false, true] {
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = list_records(&w.t, &q(Segment::All, desc, 3, token))
                .unwrap()
                .unwrap();
            seen.extend(page.records.iter().map(|r| r.seq));
            token = page.next_page_token;
            if token.is_none() {
                break;
            }
        }
        let mut expect: Vec<u64> = (1..=10).collect();
        if desc {
            expect.reverse();
        }
        assert_eq!(seen, expect);
    }
    // Time range [from, to).
    let ranged = RecordQuery {
        from_ms: Some(t0() + 2 * DAY),
        to_ms: Some(t0() + 4 * DAY),
        ..all_query("A1")
    };
    assert_eq!(
        list_records(&w.t, &ranged)
            .unwrap()
            .unwrap()
            .records
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    // Bad and foreign tokens.
    let bad = q(Segment::All, false, 3, Some("zz".into()));
    assert_eq!(
        list_records(&w.t, &bad).unwrap().unwrap_err().code,
        ErrorCode::InvalidPageToken
    );
    let t = list_records(&w.t, &q(Segment::All, false, 3, None))
        .unwrap()
        .unwrap()
        .next_page_token;
    let foreign = RecordQuery {
        page_token: t,
        ..all_query("A2")
    };
    assert_eq!(
        list_records(&w.t, &foreign).unwrap().unwrap_err().code,
        ErrorCode::InvalidPageToken
    );
    // Limits are bounded.
    let big = RecordQuery {
        limit: 1_000_000,
        ..all_query("A1")
    };
    assert_eq!(list_records(&w.t, &big).unwrap().unwrap().records.len(), 10);
}

/// Counts the items every scan returns.
struct Counting<'a> {
    inner: &'a MemTxn,
    items: Cell<usize>,
}

impl Get for Counting<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        self.inner.get(family, key)
    }
}

impl ReadView for Counting<'_> {
    fn scan(
        &self,
        family: Family,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, std::io::Error> {
        let v = self.inner.scan(family, start, end, reverse, limit)?;
        self.items.set(self.items.get() + v.len());
        Ok(v)
    }
}

#[test]
fn recent_segment_costs_what_the_recent_records_cost() {
    let mut w = World::new();
    w.ok("t", 0, define_tariff("RES", ladder(), 0));
    let start = days_ms(2019, 1, 1);
    let now = days_ms(2026, 1, 1);
    w.ok("oo", start, open("OLD", "electricity", "RES"));
    w.ok("on", now - 30 * DAY, open("NEW", "electricity", "RES"));
    w.ok("co", start, issue("OLD", "CO"));
    w.ok("cn", now - 30 * DAY, issue("NEW", "CN"));
    // 7 years × 12 purchases vs one month of purchases.
    for i in 0..84 {
        w.ok(
            &format!("o{i}"),
            start + i * 30 * DAY,
            buy_card("CO", "10.00"),
        );
    }
    w.ok("n0", now - 20 * DAY, buy_card("CN", "10.00"));
    w.ok("o84", now - 10 * DAY, buy_card("CO", "10.00"));
    w.ok("n1", now - 10 * DAY, buy_card("CN", "10.00"));
    w.ok(
        "sb",
        now,
        Op::SetSegmentBoundary {
            boundary_ms: now - 31 * DAY,
        },
    );
    let count = |card: &str, account: &str| {
        let c = Counting {
            inner: &w.t,
            items: Cell::new(0),
        };
        let v = verify_card(&c, card, 1, 0, 50).unwrap();
        let n_verify = c.items.get();
        c.items.set(0);
        let q = RecordQuery {
            segment: Segment::Recent,
            limit: 500,
            ..all_query(account)
        };
        let page = list_records(&c, &q).unwrap().unwrap();
        (v.recent.len(), n_verify, page.records.len(), c.items.get())
    };
    let old = count("CO", "OLD");
    let new = count("CN", "NEW");
    assert_eq!(
        list_records(
            &w.t,
            &RecordQuery {
                limit: 500,
                ..all_query("OLD")
            }
        )
        .unwrap()
        .unwrap()
        .records
        .len(),
        85
    );
    // 85 records in all, but the card check and the recent listing of OLD
    // scan exactly its one recent record, as NEW's scan its two.
    assert_eq!(old, (1, 1, 1, 1), "old scanned {old:?}");
    assert_eq!(new, (2, 2, 2, 2), "new scanned {new:?}");
}

// ---------------------------------------------------- seasons and import

#[test]
fn heating_season_carry_forward_is_lazy_and_exact() {
    let mut w = World::new();
    w.ok("h1", t0(), open("H1", "heat", ""));
    w.ok("h2", t0(), open("H2", "heat", ""));
    w.ok("e1", t0(), open("E1", "electricity", ""));
    w.ok(
        "c1",
        t0() + 1,
        Op::PostCharge {
            account_id: "H1".into(),
            amount: d("300.00"),
            period: String::new(),
            reason: "2025-26".into(),
        },
    );
    w.ok("p2", t0() + 2, pay("H2", "50.00", "B1"));
    w.ok("x", t0() + 3, open("H3", "heat", ""));
    w.ok(
        "cl",
        t0() + 4,
        Op::Close {
            account_id: "H3".into(),
            reason: String::new(),
        },
    );
    let before = w.t.data.len();
    let o = w.ok(
        "s1",
        t0() + 10,
        Op::OpenHeatingSeason {
            season_id: "2026-27".into(),
        },
    );
    let Outcome::SeasonOpened { season } = o else {
        panic!()
    };
    assert_eq!((season.number, season.season_id.as_str()), (1, "2026-27"));
    // Bounded: one meta key and one request entry, whatever the accounts.
    assert_eq!(w.t.data.len(), before + 2);
    let h1 = w.account("H1");
    assert_eq!(
        h1.season.as_ref().map(|s| (s.number, s.opening_balance)),
        Some((1, d("-300.00")))
    );
    assert_eq!(
        w.account("H2").season.map(|s| s.opening_balance),
        Some(d("50.00"))
    );
    assert_eq!(w.account("E1").season, None);
    assert_eq!(w.account("H3").season, None, "closed accounts are frozen");
    // The next write saves the carry-forward; a later payment does not change it.
    w.ok("p1", t0() + 20, pay("H1", "100.00", "B2"));
    let stored: Account =
        keys::decode(&w.t.data[&(Family::Accounts, keys::account("H1"))]).unwrap();
    assert_eq!(stored.season.map(|s| s.opening_balance), Some(d("-300.00")));
    assert_eq!(w.account("H1").balance, d("-200.00"));
    assert_eq!(
        w.code(
            "s2",
            t0() + 30,
            Op::OpenHeatingSeason {
                season_id: "2026-27".into()
            }
        ),
        ErrorCode::SeasonExists
    );
    w.ok(
        "s3",
        t0() + 40,
        Op::OpenHeatingSeason {
            season_id: "2027-28".into(),
        },
    );
    assert_eq!(
        w.account("H1")
            .season
            .map(|s| (s.number, s.opening_balance)),
        Some((2, d("-200.00")))
    );
    // A heat account opened during a season starts in it.
    w.ok("h4", t0() + 50, open("H4", "heat", ""));
    assert_eq!(w.account("H4").season.map(|s| s.number), Some(2));
}

fn import_account(id: &str, card: Option<&str>) -> ImportAccount {
    ImportAccount {
        account_id: id.into(),
        name: "legacy".into(),
        address: "x".into(),
        branch: "b9".into(),
        utility: "electricity".into(),
        meter_id: "m".into(),
        tariff_id: "RES".into(),
        area: d("0"),
        status: "active".into(),
        balance: d("12.34"),
        opened_ms: days_ms(2015, 5, 5),
        closed_ms: None,
        card_no: card.map(str::to_string),
        card_generation: 3,
    }
}

fn import_record(id: &str, kind: &str, amount: &str, units: &str, ts: i64) -> ImportRecord {
    ImportRecord {
        account_id: id.into(),
        kind: kind.into(),
        amount: d(amount),
        units: d(units),
        ts_ms: ts,
        operator_id: "legacy-op".into(),
        branch: String::new(),
        tariff_id: String::new(),
        invoice_no: String::new(),
        bank_code: if kind == "payment" {
            "BOC".into()
        } else {
            String::new()
        },
        bank_ref: if kind == "payment" {
            format!("L{ts}")
        } else {
            String::new()
        },
        card_no: String::new(),
        card_seq: if kind == "purchase" { 7 } else { 0 },
    }
}

/// An import sums report rows and year counters in memory and saves each
/// account once; the accounts, counters and report rows it leaves are the
/// ones importing the same records one command each leaves.
#[test]
fn one_import_leaves_the_state_record_by_record_imports_leave() {
    let families = [Family::Accounts, Family::YearUnits, Family::Reports];
    let mut records = Vec::new();
    for (i, acct) in ["A1", "A2", "A3"].iter().enumerate() {
        for m in 0..14i64 {
            let ts = days_ms(2019, 11, 3) + m * 31 * 86_400_000 + i as i64;
            records.push(import_record(acct, "purchase", "10.25", "7.125", ts));
            records.push(import_record(acct, "payment", "30.00", "0", ts + 10));
            if m % 5 == 0 {
                records.push(import_record(acct, "adjustment", "-1.10", "0", ts + 20));
                records.push(import_record(acct, "charge", "4.40", "0", ts + 30));
            }
        }
    }
    // Interleave the accounts, as a migration might.
    records.sort_by_key(|r| r.ts_ms);
    let accounts = || {
        vec![
            import_account("A1", Some("C1")),
            import_account("A2", None),
            import_account("A3", Some("C3")),
        ]
    };
    let mut whole = World::new();
    whole.ok("t", 0, define_tariff("RES", ladder(), 0));
    whole.ok(
        "i",
        t0(),
        Op::Import {
            accounts: accounts(),
            records: records.clone(),
        },
    );
    let mut one_by_one = World::new();
    one_by_one.ok("t", 0, define_tariff("RES", ladder(), 0));
    one_by_one.ok(
        "i",
        t0(),
        Op::Import {
            accounts: accounts(),
            records: vec![],
        },
    );
    for (i, r) in records.iter().enumerate() {
        one_by_one.ok(
            &format!("r{i}"),
            t0(),
            Op::Import {
                accounts: vec![],
                records: vec![r.clone()],
            },
        );
    }
    for family in families {
        let a = whole.t.scan(family, b"", b"", false, usize::MAX).unwrap();
        let b = one_by_one
            .t
            .scan(family, b"", b"", false, usize::MAX)
            .unwrap();
        assert!(!a.is_empty(), "{family:?}");
        if family == Family::Accounts {
            // Records name the import command that carried them, and so
            // does the last-purchase summary; all else must be equal.
            let strip = |items: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Account> {
                items
                    .iter()
                    .map(|(_, v)| {
                        let mut acc: Account = keys::decode(v).unwrap();
                        if let Some(l) = acc.last_purchase.as_mut() {
                            l.request_id.clear();
                        }
                        acc
                    })
                    .collect()
            };
            assert_eq!(strip(a), strip(b), "{family:?}");
        } else {
            assert_eq!(a, b, "{family:?}");
        }
    }
    let a = whole.account("A2");
    assert_eq!((a.last_seq, a.last_purchase_seq()), (34, Some(33)));
    let (rec, _) = get_record(&whole.t, "A2", 33).unwrap().unwrap();
    assert_eq!(a.last_purchase, Some(LastPurchase::of(&rec, true)));
}

#[test]
fn bulk_import_keeps_legacy_ids_and_is_all_or_nothing() {
    let mut w = World::new();
    w.ok("t", 0, define_tariff("RES", ladder(), 0));
    let ts = days_ms(2020, 6, 15);
    let o = w.ok(
        "i1",
        t0(),
        Op::Import {
            accounts: vec![
                import_account("0001-77.A:x", Some("LC1")),
                import_account("0002", None),
            ],
            records: vec![
                import_record("0001-77.A:x", "purchase", "50.00", "102.39", ts),
                import_record("0001-77.A:x", "payment", "20.00", "0", ts + 1),
                import_record("0002", "adjustment", "-3.00", "0", ts + 2),
            ],
        },
    );
    assert_eq!(
        o,
        Outcome::Imported {
            accounts: 2,
            records: 3
        }
    );
    let a = w.account("0001-77.A:x");
    assert_eq!(
        (a.balance, a.last_seq, a.last_card_seq, a.card_generation),
        (d("12.34"), 2, 7, 3)
    );
    assert_eq!(a.active_card.as_deref(), Some("LC1"));
    assert_eq!(year_units(&w.t, "0001-77.A:x", 2020).unwrap(), d("102.39"));
    let (rec, meta) = get_record(&w.t, "0001-77.A:x", 1).unwrap().unwrap();
    assert_eq!(
        (rec.channel.as_str(), rec.branch.as_str(), meta.loaded),
        ("import", "b9", true)
    );
    assert_eq!(rec.invoice_no, "INV000000000001");
    assert_eq!(verify_card(&w.t, "LC1", 3, 7, 5).unwrap().verdict, "OK");
    let r = monthly_report(&w.t, "2020-06", GroupBy::Operator).unwrap();
    assert_eq!(r.lines.len(), 3);
    let bank = bank_daily_report(&w.t, "2020-06-15", Some("BOC")).unwrap();
    assert_eq!((bank.lines.len(), bank.lines[0].amount), (1, d("20.00")));
    // All or nothing: a bad item refuses the whole batch, writing nothing.
    let e = w.refused(
        "i2",
        t0(),
        Op::Import {
            accounts: vec![import_account("0003", None)],
            records: vec![
                import_record("0003", "purchase", "1.00", "1", ts),
                import_record("0003", "teleport", "1.00", "0", ts),
            ],
        },
    );
    assert_eq!(
        (e.code, e.details["index"].as_u64()),
        (ErrorCode::InvalidArgument, Some(1))
    );
    assert!(get_account(&w.t, "0003").unwrap().is_none());
    assert_eq!(
        w.code(
            "i3",
            t0(),
            Op::Import {
                accounts: vec![import_account("0002", None)],
                records: vec![]
            }
        ),
        ErrorCode::AccountExists
    );
    assert_eq!(
        w.code(
            "i4",
            t0(),
            Op::Import {
                accounts: vec![],
                records: vec![]
            }
        ),
        ErrorCode::PayloadTooLarge
    );
    let many = (0..=IMPORT_ITEMS_MAX)
        .map(|i| import_account(&format!("M{i}"), None))
        .collect();
    assert_eq!(
        w.code(
            "i5",
            t0(),
            Op::Import {
                accounts: many,
                records: vec![]
            }
        ),
        ErrorCode::PayloadTooLarge
    );
    // Duplicate bank reference inside history.
    let mut dup = import_record("0002", "payment", "5.00", "0", ts + 1);
    dup.bank_ref = format!("L{}", ts + 1);
    assert_eq!(
        w.code(
            "i6",
            t0(),
            Op::Import {
                accounts: vec![],
                records: vec![dup]
            }
        ),
        ErrorCode::DuplicatePayment
    );
}

/// A legacy invoice number is kept, and one already taken is refused. The
/// form of the numbers billdb assigns (`INV` + 12 digits) is refused in an
/// import, with nothing written: that is what lets an assigned number skip
/// the lookup for an earlier holder.
#[test]
fn imported_invoice_numbers_are_kept_unique_and_never_take_the_assigned_form() {
    let mut w = World::new();
    w.ok("t", 0, define_tariff("RES", ladder(), 0));
    let ts = days_ms(2020, 6, 15);
    let legacy = |no: &str| {
        let mut r = import_record("L1", "purchase", "10.00", "5", ts);
        r.invoice_no = no.into();
        r
    };
    w.ok(
        "i1",
        t0(),
        Op::Import {
            accounts: vec![import_account("L1", None)],
            records: vec![
                legacy("OLD-7"),
                import_record("L1", "purchase", "1.00", "1", ts + 1),
            ],
        },
    );
    assert_eq!(get_invoice(&w.t, "OLD-7").unwrap().unwrap().seq, 1);
    assert_eq!(
        get_invoice(&w.t, "INV000000000001").unwrap().unwrap().seq,
        2
    );
    let refuse = |w: &mut World, id: &str, no: &str| {
        w.refused(
            id,
            t0(),
            Op::Import {
                accounts: vec![],
                records: vec![legacy(no)],
            },
        )
    };
    assert_eq!(
        refuse(&mut w, "i2", "OLD-7").code,
        ErrorCode::InvalidArgument
    );
    for (id, no) in [("i3", "INV000000000002"), ("i4", "INV000000000001")] {
        let e = refuse(&mut w, id, no);
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{no}");
        assert!(e.message.contains("reserved"), "{}", e.message);
    }
    assert!(get_invoice(&w.t, "INV000000000002").unwrap().is_none());
    assert_eq!(w.account("L1").last_seq, 2);
    // Near misses of the form are ordinary legacy numbers.
    for (i, no) in [
        "INV00000000000",
        "INV0000000000001",
        "inv000000000003",
        "INV00000000000X",
    ]
    .iter()
    .enumerate()
    {
        w.ok(
            &format!("n{i}"),
            t0(),
            Op::Import {
                accounts: vec![],
                records: vec![legacy(no)],
            },
        );
        assert!(get_invoice(&w.t, no).unwrap().is_some(), "{no}");
    }
    // The counter goes on where it was: the next assigned number is new.
    let o = w.ok(
        "i9",
        t0(),
        Op::Import {
            accounts: vec![],
            records: vec![import_record("L1", "payment", "2.00", "0", ts + 9)],
        },
    );
    assert!(matches!(o, Outcome::Imported { records: 1, .. }));
    assert_eq!(
        get_invoice(&w.t, "INV000000000002").unwrap().unwrap().kind,
        "payment"
    );
}

// -------------------------------------------------------- tariffs, invoices

#[test]
fn a_tariff_without_an_effective_time_takes_effect_at_the_commands_time() {
    let mut w = World::new();
    let now = define_tariff(
        "T",
        TariffSpec::Flat { price: d("0.52") },
        super::EFFECTIVE_FROM_COMMAND_TIME,
    );
    w.ok("t1", t0() + 7, now.clone());
    let v = tariffs::get_tariff(&w.t, "T").unwrap().unwrap();
    assert_eq!(v.versions.len(), 1);
    assert_eq!(v.versions[0].effective_from_ms, t0() + 7);
    // A retry (same request_id, same op) is the original, not a new version.
    w.ok("t1", t0() + 99, now);
    let v = tariffs::get_tariff(&w.t, "T").unwrap().unwrap();
    assert_eq!(v.versions.len(), 1);
    assert_eq!(v.versions[0].effective_from_ms, t0() + 7);
}

#[test]
fn define_tariff_versions_and_refusals() {
    let mut w = World::new();
    let o = w.ok(
        "t1",
        0,
        define_tariff("T", TariffSpec::Flat { price: d("0.50") }, 0),
    );
    assert_eq!(
        o,
        Outcome::TariffDefined {
            tariff_id: "T".into(),
            versions: 1
        }
    );
    let o = w.ok(
        "t2",
        0,
        define_tariff("T", TariffSpec::Flat { price: d("0.60") }, t0()),
    );
    assert_eq!(
        o,
        Outcome::TariffDefined {
            tariff_id: "T".into(),
            versions: 2
        }
    );
    // Same effective time replaces.
    let o = w.ok(
        "t3",
        0,
        define_tariff("T", TariffSpec::Flat { price: d("0.70") }, t0()),
    );
    assert_eq!(
        o,
        Outcome::TariffDefined {
            tariff_id: "T".into(),
            versions: 2
        }
    );
    assert_eq!(
        w.code(
            "t4",
            0,
            define_tariff("T", TariffSpec::Flat { price: d("-1") }, 5)
        ),
        ErrorCode::InvalidTariff
    );
    assert_eq!(
        w.code(
            "t5",
            0,
            define_tariff(
                "T",
                TariffSpec::Ladder {
                    tiers: vec![
                        (Some(d("10")), d("1")),
                        (Some(d("5")), d("2")),
                        (None, d("3"))
                    ]
                },
                5
            )
        ),
        ErrorCode::InvalidTariff
    );
    // Effective dating: a sale before t0 uses 0.50, after it 0.70.
    w.ok("o", 0, open("A", "electricity", "T"));
    let o = w.ok("b1", t0() - 1, buy_units("A", "10"));
    assert_eq!(posted(&o).0.amount, d("5.00"));
    let o = w.ok("b2", t0() + 60_000, buy_units("A", "10"));
    assert_eq!(posted(&o).0.amount, d("7.00"));
    assert_eq!(get_tariff(&w.t, "T").unwrap().unwrap().versions.len(), 2);
}

#[test]
fn print_invoice_first_print_then_reprints_with_count() {
    let mut w = World::standard();
    let o = w.ok("b1", t0(), buy_card("C1", "10.00"));
    let inv = posted(&o).0.invoice_no.clone();
    let print = || Op::PrintInvoice {
        invoice_no: inv.clone(),
    };
    let Outcome::InvoicePrinted { invoice, reprint } = w.ok("pr1", t0() + 1, print()) else {
        panic!()
    };
    assert_eq!(
        (reprint, invoice.print_count, invoice.amount),
        (false, 1, d("10.00"))
    );
    let Outcome::InvoicePrinted { invoice, reprint } = w.ok("pr2", t0() + 2, print()) else {
        panic!()
    };
    assert_eq!(
        (reprint, invoice.print_count, invoice.first_printed_ms),
        (true, 2, Some(t0() + 1))
    );
    // A retried print is the same print.
    let again = w.run("pr2", t0() + 3, print());
    assert_eq!(again.to_json()["print_count"], 2);
    assert_eq!(get_invoice(&w.t, &inv).unwrap().unwrap().print_count, 2);
    assert_eq!(
        w.code(
            "pr3",
            t0(),
            Op::PrintInvoice {
                invoice_no: "NOPE".into()
            }
        ),
        ErrorCode::InvoiceNotFound
    );
    assert_eq!(o.to_json()["record"]["amount"], "10.00");
}

/// Invoice numbers come from one counter: unique and gapless in log order
/// across purchases, payments and imports; a refused command takes none,
/// and a replay answers with the number it took the first time.
#[test]
fn invoice_numbers_are_gapless_and_a_refusal_takes_none() {
    let mut w = World::standard();
    let o = w.ok("b1", t0(), buy_card("C1", "10.00"));
    assert_eq!(posted(&o).0.invoice_no, "INV000000000001");
    w.refused("b2", t0() + 1, buy_card("NO-SUCH-CARD", "10.00"));
    w.refused("p0", t0() + 1, pay("A1", "-1.00", "R0"));
    let Outcome::PaymentPosted { invoice_no, .. } = w.ok("p1", t0() + 2, pay("A1", "5.00", "R1"))
    else {
        panic!("payment not posted")
    };
    assert_eq!(invoice_no, "INV000000000002");
    let again = w.run("b1", t0(), buy_card("C1", "10.00"));
    assert_eq!(posted(&again).0.invoice_no, "INV000000000001");
    w.ok(
        "imp",
        t0() + 3,
        Op::Import {
            accounts: vec![import_account("IA", None)],
            records: vec![
                import_record("IA", "purchase", "1.00", "1", t0() + 3),
                import_record("IA", "payment", "2.00", "0", t0() + 4),
            ],
        },
    );
    let (r1, _) = get_record(&w.t, "IA", 1).unwrap().unwrap();
    let (r2, _) = get_record(&w.t, "IA", 2).unwrap().unwrap();
    assert_eq!(
        (r1.invoice_no.as_str(), r2.invoice_no.as_str()),
        ("INV000000000003", "INV000000000004")
    );
    let o = w.ok("b3", t0() + 5, buy_card("C1", "1.00"));
    assert_eq!(posted(&o).0.invoice_no, "INV000000000005");
}

// ------------------------------------------------------------------ reports

#[test]
fn reports_by_operator_branch_tariff_kind_and_bank_day() {
    let mut w = World::standard();
    w.operator = "clerk7".into();
    w.branch = "hall2".into();
    let b = w.ok("b1", t0(), buy_card("C1", "100.00"));
    w.operator = "bank:ICBC".into();
    w.branch = String::new();
    let p = w.ok("p1", t0() + DAY, pay("A1", "30.00", "R1"));
    w.ok("p2", t0() + DAY + 5, pay("A1", "20.00", "R2"));
    w.operator = "ops".into();
    w.ok(
        "rv",
        t0() + 2 * DAY,
        Op::Reverse {
            record_id: rid_of(&p),
            reason: "recall".into(),
        },
    );
    w.ok(
        "ri",
        t0() + 2 * DAY,
        Op::Reissue {
            record_id: rid_of(&b),
        },
    );
    let by_op = monthly_report(&w.t, "2026-03", GroupBy::Operator).unwrap();
    let line = |r: &Report, v: &str, k: &str| {
        r.lines
            .iter()
            .find(|l| l.value == v && l.kind == k)
            .cloned()
            .unwrap()
    };
    assert_eq!(line(&by_op, "clerk7", "purchase").amount, d("100.00"));
    assert_eq!(line(&by_op, "bank:ICBC", "payment").count, 2);
    assert_eq!(line(&by_op, "bank:ICBC", "payment").amount, d("50.00"));
    assert_eq!(line(&by_op, "ops", "reversal").amount, d("-30.00"));
    let by_branch = monthly_report(&w.t, "2026-03", GroupBy::Branch).unwrap();
    assert_eq!(line(&by_branch, "hall2", "purchase").units, d("204.79"));
    assert_eq!(line(&by_branch, "b1", "payment").amount, d("50.00"));
    let by_kind = monthly_report(&w.t, "2026-03", GroupBy::Kind).unwrap();
    assert_eq!(
        (
            line(&by_kind, "reissue", "reissue").count,
            line(&by_kind, "reissue", "reissue").units
        ),
        (1, d("204.79"))
    );
    assert_eq!(line(&by_kind, "reversal", "reversal").amount, d("-30.00"));
    let by_tariff = monthly_report(&w.t, "2026-03", GroupBy::Tariff).unwrap();
    assert_eq!(line(&by_tariff, "RES", "purchase").amount, d("100.00"));
    let day2 = bank_daily_report(&w.t, "2026-03-02", Some("ICBC")).unwrap();
    assert_eq!(
        (day2.lines.len(), day2.lines[0].amount, day2.lines[0].count),
        (1, d("50.00"), 2)
    );
    let day3 = bank_daily_report(&w.t, "2026-03-03", None).unwrap();
    assert_eq!(
        (
            day3.lines[0].value.as_str(),
            day3.lines[0].kind.as_str(),
            day3.lines[0].amount
        ),
        ("ICBC", "reversal", d("-30.00"))
    );
    assert!(
        monthly_report(&w.t, "2026-04", GroupBy::Operator)
            .unwrap()
            .lines
            .is_empty()
    );
}

// -------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Step {
    Buy {
        acct: u8,
        cents: u32,
        units: bool,
        day: u16,
    },
    Pay {
        acct: u8,
        cents: u32,
        day: u16,
    },
    Charge {
        acct: u8,
        cents: u32,
        day: u16,
    },
    Adjust {
        acct: u8,
        cents: i32,
        day: u16,
    },
    Reverse {
        pick: u16,
        day: u16,
    },
    Reissue {
        acct: u8,
        day: u16,
    },
    Loaded {
        acct: u8,
    },
    Operator {
        op: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u8, 1..50_000u32, any::<bool>(), 0..800u16).prop_map(|(acct, cents, units, day)| {
            Step::Buy {
                acct,
                cents,
                units,
                day,
            }
        }),
        (0..3u8, 1..50_000u32, 0..800u16).prop_map(|(acct, cents, day)| Step::Pay {
            acct,
            cents,
            day
        }),
        (0..3u8, 1..50_000u32, 0..800u16).prop_map(|(acct, cents, day)| Step::Charge {
            acct,
            cents,
            day
        }),
        (0..3u8, -50_000..50_000i32, 0..800u16).prop_map(|(acct, cents, day)| Step::Adjust {
            acct,
            cents,
            day
        }),
        (any::<u16>(), 0..800u16).prop_map(|(pick, day)| Step::Reverse { pick, day }),
        (0..3u8, 0..800u16).prop_map(|(acct, day)| Step::Reissue { acct, day }),
        (0..3u8).prop_map(|acct| Step::Loaded { acct }),
        (0..4u8).prop_map(|op| Step::Operator { op }),
    ]
}

/// Plays `steps` (ts non-decreasing, as the leader stamps them).
fn play(steps: &[Step]) -> (World, Vec<Outcome>) {
    let mut w = World::standard();
    for a in 2..=3 {
        w.ok(
            &format!("oa{a}"),
            t0(),
            open(&format!("A{a}"), "heat", "RES"),
        );
        w.ok(
            &format!("ca{a}"),
            t0(),
            issue(&format!("A{a}"), &format!("C{a}")),
        );
    }
    let mut outs = Vec::new();
    let mut ts = t0();
    let mut posted_ids: Vec<String> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let rid = format!("s{i}");
        let acct = |a: &u8| format!("A{}", a + 1);
        let at = |day: &u16, ts: &mut i64| {
            *ts = (*ts).max(t0() + *day as i64 * DAY / 2) + 1;
            *ts
        };
        let money = |c: u32| Decimal::new(c as i64, 2);
        let o = match s {
            Step::Buy {
                acct: a,
                cents,
                units,
                day,
            } => {
                let buy = if *units {
                    Buy::Units(Decimal::new(*cents as i64, 2))
                } else {
                    Buy::Money(money(*cents))
                };
                let t = at(day, &mut ts);
                w.run(
                    &rid,
                    t,
                    Op::Purchase {
                        card_no: Some(format!("C{}", a + 1)),
                        account_id: None,
                        buy,
                        confirm_duplicate: i % 2 == 0,
                    },
                )
            }
            Step::Pay {
                acct: a,
                cents,
                day,
            } => {
                let t = at(day, &mut ts);
                w.run(
                    &rid,
                    t,
                    Op::Payment {
                        account_id: acct(a),
                        amount: money(*cents),
                        bank_code: format!("BK{}", cents % 3),
                        bank_ref: rid.clone(),
                    },
                )
            }
            Step::Charge {
                acct: a,
                cents,
                day,
            } => {
                let t = at(day, &mut ts);
                w.run(
                    &rid,
                    t,
                    Op::PostCharge {
                        account_id: acct(a),
                        amount: money(*cents),
                        period: String::new(),
                        reason: "heat".into(),
                    },
                )
            }
            Step::Adjust {
                acct: a,
                cents,
                day,
            } => {
                let t = at(day, &mut ts);
                w.run(
                    &rid,
                    t,
                    Op::Adjust {
                        account_id: acct(a),
                        amount: Decimal::new(*cents as i64, 2),
                        reason: "fix".into(),
                    },
                )
            }
            Step::Reverse { pick, day } => {
                let t = at(day, &mut ts);
                let target = if posted_ids.is_empty() {
                    "A1:1".to_string()
                } else {
                    posted_ids[*pick as usize % posted_ids.len()].clone()
                };
                w.run(
                    &rid,
                    t,
                    Op::Reverse {
                        record_id: target,
                        reason: "r".into(),
                    },
                )
            }
            Step::Reissue { acct: a, day } => {
                let t = at(day, &mut ts);
                let last = w.account(&acct(a)).last_purchase_seq().unwrap_or(0);
                w.run(
                    &rid,
                    t,
                    Op::Reissue {
                        record_id: record_id(&acct(a), last),
                    },
                )
            }
            Step::Loaded { acct: a } => {
                let last = w.account(&acct(a)).last_purchase_seq().unwrap_or(0);
                w.run(
                    &rid,
                    ts,
                    Op::ConfirmLoaded {
                        record_id: record_id(&acct(a), last),
                    },
                )
            }
            Step::Operator { op } => {
                w.operator = format!("op{op}");
                w.branch = if op % 2 == 0 {
                    String::new()
                } else {
                    format!("hall{op}")
                };
                continue;
            }
        };
        if matches!(
            o,
            Outcome::RecordPosted { .. } | Outcome::PaymentPosted { .. }
        ) {
            posted_ids.push(rid_of(&o));
        }
        outs.push(o);
    }
    (w, outs)
}

fn all_records(t: &MemTxn) -> Vec<Record> {
    t.data
        .iter()
        .filter(|((f, _), _)| *f == Family::Records)
        .map(|(_, v)| keys::decode::<Record>(v).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every report row equals the sum of the records it covers (reversals
    /// and reissues included), and balances equal the sum of effects.
    #[test]
    fn reports_equal_the_records_they_cover(steps in prop::collection::vec(step(), 1..60)) {
        let (w, _) = play(&steps);
        let records = all_records(&w.t);
        let mut months: Vec<String> = records.iter().map(|r| calendar::month_str(r.ts_ms)).collect();
        months.sort();
        months.dedup();
        for month in &months {
            let in_month: Vec<&Record> = records.iter().filter(|r| &calendar::month_str(r.ts_ms) == month).collect();
            for (g, field) in [(GroupBy::Operator, 0), (GroupBy::Branch, 1), (GroupBy::Tariff, 2), (GroupBy::Kind, 3)] {
                let report = monthly_report(&w.t, month, g).unwrap();
                prop_assert!(!report.truncated);
                let mut total = (0u64, Decimal::ZERO, Decimal::ZERO);
                for line in &report.lines {
                    let covered: Vec<&&Record> = in_month.iter().filter(|r| {
                        let v = match field { 0 => &r.operator_id, 1 => &r.branch, 2 => &r.tariff_id, _ => &r.kind };
                        *v == line.value && r.kind == line.kind
                    }).collect();
                    prop_assert_eq!(line.count, covered.len() as u64);
                    prop_assert_eq!(line.amount, covered.iter().map(|r| r.amount).sum::<Decimal>());
                    prop_assert_eq!(line.units, covered.iter().map(|r| r.units).sum::<Decimal>());
                    total.0 += line.count;
                    total.1 += line.amount;
                    total.2 += line.units;
                }
                prop_assert_eq!(total.0, in_month.len() as u64);
                prop_assert_eq!(total.1, in_month.iter().map(|r| r.amount).sum::<Decimal>());
                prop_assert_eq!(total.2, in_month.iter().map(|r| r.units).sum::<Decimal>());
            }
        }
        // Bank day reports cover every record with a bank code.
        let mut days: Vec<String> = records.iter().filter(|r| !r.bank_code.is_empty()).map(|r| calendar::day_str(r.ts_ms)).collect();
        days.sort();
        days.dedup();
        let mut bank_total = Decimal::ZERO;
        for day in &days {
            for line in bank_daily_report(&w.t, day, None).unwrap().lines {
                bank_total += line.amount;
            }
        }
        prop_assert_eq!(bank_total, records.iter().filter(|r| !r.bank_code.is_empty()).map(|r| r.amount).sum::<Decimal>());
        for a in 1..=3 {
            let id = format!("A{a}");
            let effects: Decimal = records.iter().filter(|r| r.account_id == id).map(|r| r.balance_effect).sum();
            let account = w.account(&id);
            prop_assert_eq!(account.balance, effects);
            // The last-purchase summary equals the newest purchase record and its state.
            let newest = records.iter().filter(|r| r.account_id == id && r.kind == "purchase").map(|r| r.seq).max();
            prop_assert_eq!(account.last_purchase_seq(), newest);
            if let Some(l) = &account.last_purchase {
                let (rec, meta) = get_record(&w.t, &id, l.seq).unwrap().unwrap();
                prop_assert_eq!(
                    l,
                    &LastPurchase {
                        seq: rec.seq,
                        card_no: rec.card_no.clone(),
                        amount: rec.amount,
                        ts_ms: rec.ts_ms,
                        request_id: rec.request_id.clone(),
                        loaded: meta.loaded,
                        reversed: meta.reversed_by.is_some(),
                    }
                );
            }
        }
    }

    /// The same commands on two stores give identical data and outcomes.
    #[test]
    fn apply_is_deterministic(steps in prop::collection::vec(step(), 1..40)) {
        let (a, oa) = play(&steps);
        let (b, ob) = play(&steps);
        prop_assert_eq!(oa, ob);
        prop_assert!(a.t.data == b.t.data);
    }

    /// Ladder purchases over a year (and into the next) price exactly as
    /// `billdb_api::tariff` does with the running year total, including at
    /// the tier boundaries; the year counter is the sum of the year's units.
    #[test]
    fn ladder_purchases_across_the_year_are_exact(
        buys in prop::collection::vec((any::<bool>(), 1..300_000u32, 0..3u8), 1..30)
    ) {
        let mut w = World::standard();
        let year_start = days_ms(2026, 1, 1);
        let mut running = Decimal::ZERO;
        let mut next_year = Decimal::ZERO;
        let n = buys.len() as i64;
        for (i, (by_units, cents, snap)) in buys.iter().enumerate() {
            // The last purchases fall in 2027: a new year starts from 0.
            let in_2027 = i as i64 >= n - 2 && n > 3;
            let ts = if in_2027 { days_ms(2027, 1, 1) + i as i64 * 60_000 } else { year_start + i as i64 * 60_000 };
            let before = if in_2027 { next_year } else { running };
            // Sometimes buy exactly up to the next tier boundary.
            let by = match snap {
                0 if before < d("2160") => PurchaseBy::Units(d("2160") - before),
                1 if before < d("4200") && before >= d("2160") => PurchaseBy::Units(d("4200") - before),
                _ if *by_units => PurchaseBy::Units(Decimal::new(*cents as i64, 2)),
                _ => PurchaseBy::Money(Decimal::new(*cents as i64, 2)),
            };
            let expect = tariff::price(&api_ladder(), before, by);
            let buy = match by { PurchaseBy::Units(u) => Buy::Units(u), PurchaseBy::Money(m) => Buy::Money(m) };
            let o = w.run(&format!("b{i}"), ts, Op::Purchase { card_no: Some("C1".into()), account_id: None, buy, confirm_duplicate: true });
            match (expect, &o) {
                (Ok(q), Outcome::RecordPosted { record, .. }) => {
                    prop_assert_eq!(record.amount, q.amount);
                    prop_assert_eq!(record.units, q.units);
                    prop_assert_eq!(&record.tiers, &q.tiers);
                    if in_2027 { next_year += q.units } else { running += q.units }
                }
                (Err(e), Outcome::Refused(r)) => prop_assert_eq!(r.code.as_str(), e.code()),
                (e, o) => prop_assert!(false, "mismatch {:?} vs {:?}", e, o),
            }
            prop_assert_eq!(year_units(&w.t, "A1", 2026).unwrap(), running);
            prop_assert_eq!(year_units(&w.t, "A1", 2027).unwrap(), next_year);
        }
    }
}

#[test]
fn scans_are_bounded() {
    let mut t = MemTxn::default();
    for i in 0..(SCAN_LIMIT_MAX as u32 + 10) {
        t.put(Family::Reports, i.to_be_bytes().to_vec(), vec![]);
    }
    t.put(Family::Meta, b"x".to_vec(), vec![]);
    assert_eq!(
        t.scan(Family::Reports, b"", b"", false, usize::MAX)
            .unwrap()
            .len(),
        SCAN_LIMIT_MAX
    );
    let last = t.scan(Family::Reports, b"", b"", true, 1).unwrap();
    assert_eq!(
        last[0].0,
        (SCAN_LIMIT_MAX as u32 + 9).to_be_bytes().to_vec()
    );
    assert_eq!(
        t.scan(
            Family::Reports,
            &5u32.to_be_bytes(),
            &7u32.to_be_bytes(),
            false,
            10
        )
        .unwrap()
        .len(),
        2
    );
}

/// Commands travel in the Raft log and outcomes sit in `requests` as
/// bincode: every op and every outcome must come back equal.
#[test]
fn ops_and_outcomes_round_trip_through_bincode() {
    let ops = vec![
        open("A", "heat", "T"),
        pay("A", "1.00", "R"),
        Op::UpdateContact {
            account_id: "A".into(),
            name: None,
            address: Some("x".into()),
            phone: None,
            area: Some(d("1.5")),
        },
        issue("A", "C"),
        Op::ReplaceCard {
            card_no: "C".into(),
            new_card_no: "D".into(),
            reason: "r".into(),
        },
        buy_card("C", "1.00"),
        buy_units("A", "1.234"),
        Op::PostCharge {
            account_id: "A".into(),
            amount: d("2.00"),
            period: "p".into(),
            reason: "r".into(),
        },
        Op::Reissue {
            record_id: "A:1".into(),
        },
        Op::ConfirmLoaded {
            record_id: "A:1".into(),
        },
        Op::Reverse {
            record_id: "A:1".into(),
            reason: "r".into(),
        },
        Op::Adjust {
            account_id: "A".into(),
            amount: d("-1.00"),
            reason: "r".into(),
        },
        Op::Suspend {
            account_id: "A".into(),
            reason: "r".into(),
        },
        Op::Resume {
            account_id: "A".into(),
        },
        Op::Close {
            account_id: "A".into(),
            reason: "r".into(),
        },
        Op::SetSegmentBoundary { boundary_ms: 5 },
        Op::OpenHeatingSeason {
            season_id: "S".into(),
        },
        Op::Import {
            accounts: vec![import_account("L", Some("LC"))],
            records: vec![import_record("L", "payment", "1.00", "0", 5)],
        },
        define_tariff("T", ladder(), 0),
        define_tariff("F", TariffSpec::Flat { price: d("0.5") }, 0),
        Op::PrintInvoice {
            invoice_no: "INV1".into(),
        },
    ];
    for op in ops {
        let c = Command {
            request_id: "r".into(),
            ts_ms: 1,
            operator: "o".into(),
            branch: "b".into(),
            channel: "app".into(),
            op,
        };
        let back: Command = crate::codec::decode(&crate::codec::encode(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    // Outcomes from a real run, one of each kind.
    let mut w = World::standard();
    let mut outs = vec![
        w.ok("b", t0(), buy_card("C1", "3000.00")),
        w.ok(
            "u",
            t0(),
            Op::UpdateContact {
                account_id: "A1".into(),
                name: None,
                address: None,
                phone: Some("1".into()),
                area: None,
            },
        ),
        w.ok(
            "s",
            t0(),
            Op::OpenHeatingSeason {
                season_id: "S".into(),
            },
        ),
        w.ok("sb", t0(), Op::SetSegmentBoundary { boundary_ms: 1 }),
        w.ok(
            "r",
            t0(),
            Op::ReplaceCard {
                card_no: "C1".into(),
                new_card_no: "C2".into(),
                reason: String::new(),
            },
        ),
        w.ok("p", t0(), pay("A1", "1.00", "X")),
        w.ok(
            "pr",
            t0(),
            Op::PrintInvoice {
                invoice_no: "INV000000000002".into(),
            },
        ),
        w.ok(
            "l",
            t0(),
            Op::ConfirmLoaded {
                record_id: "A1:1".into(),
            },
        ),
        w.ok(
            "t2",
            t0(),
            define_tariff("Z", TariffSpec::Flat { price: d("1") }, 0),
        ),
        w.refused("x", t0(), pay("A1", "1.00", "X")).into_outcome(),
    ];
    assert!(matches!(&outs[0], Outcome::RecordPosted { record, .. } if record.tiers.len() == 3));
    outs.push(w.ok("o", t0(), open("Q", "gas", "")));
    for o in outs {
        let back: Outcome = crate::codec::decode(&crate::codec::encode(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        let json = o.to_json();
        assert!(
            json.get("result").is_some() || json.get("code").is_some(),
            "{json}"
        );
    }
}

trait IntoOutcome {
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for billdb_api::error::ApiError {
    fn into_outcome(self) -> Outcome {
        Outcome::Refused(self)
    }
}

// ----------------------------------------------------------- season billing

fn area_of(id: &str, area: &str) -> Op {
    Op::UpdateContact {
        account_id: id.into(),
        name: None,
        address: None,
        phone: None,
        area: Some(d(area)),
    }
}

fn bill(season: &str, ids: &[&str]) -> Op {
    Op::BillSeason {
        season_id: season.into(),
        account_ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn season_report(w: &World, season: &str) -> season_bill::Report {
    season_bill::report(&w.t, season).unwrap()
}

#[test]
fn a_season_is_billed_once_per_account_by_area_and_skips_say_why() {
    let mut w = World::new();
    let area = |p: &str, s: &str| TariffSpec::Area {
        price_per_m2: d(p),
        suspended_share: d(s),
    };
    w.ok("t1", 0, define_tariff("HEAT", area("3.65", "0.30"), 0));
    w.ok(
        "t2",
        0,
        define_tariff("ELEC", TariffSpec::Flat { price: d("0.5") }, 0),
    );
    for (id, tariff, a) in [
        ("H1", "HEAT", "85.50"),
        ("H2", "HEAT", "60"),
        ("H3", "HEAT", "0"),
        ("H4", "HEAT", "50"),
        ("H5", "ELEC", "40"),
        ("H6", "NOPE", "70.25"),
    ] {
        w.ok(&format!("o{id}"), t0(), open(id, "heat", tariff));
        if a != "0" {
            w.ok(&format!("a{id}"), t0() + 1, area_of(id, a));
        }
    }
    w.ok("oE1", t0(), open("E1", "electricity", "ELEC"));
    w.ok(
        "s2",
        t0() + 2,
        Op::Suspend {
            account_id: "H2".into(),
            reason: "heating stop".into(),
        },
    );
    w.ok(
        "c4",
        t0() + 2,
        Op::Close {
            account_id: "H4".into(),
            reason: "demolished".into(),
        },
    );
    // Not while the season is not open.
    assert_eq!(
        w.code("b0", t0() + 3, bill("2026-27", &["H1"])),
        ErrorCode::InvalidState
    );
    w.ok(
        "season",
        t0() + 4,
        Op::OpenHeatingSeason {
            season_id: "2026-27".into(),
        },
    );
    assert_eq!(
        w.code("b1", t0() + 5, bill("2025-26", &["H1"])),
        ErrorCode::InvalidState
    );
    assert_eq!(
        w.code("b2", t0() + 5, bill("2026-27", &["H1", "H1"])),
        ErrorCode::InvalidArgument
    );
    let too_many: Vec<String> = (0..=season_bill::BILL_BATCH_MAX)
        .map(|i| format!("X{i}"))
        .collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(
        w.code("b3", t0() + 5, bill("2026-27", &refs)),
        ErrorCode::InvalidArgument
    );

    let all = ["H1", "H2", "H3", "H4", "H5", "H6", "E1"];
    let o = w.ok("run1", t0() + 10, bill("2026-27", &all));
    // H1: 85.50 × 3.65 = 312.075 → 312.08; H2 (heating stop): 60 × 3.65 ×
    // 0.30 = 65.70.
    assert_eq!(
        o,
        Outcome::SeasonBilled {
            season_id: "2026-27".into(),
            billed: 2,
            skipped: 5,
            already: 0,
            amount: d("377.78"),
        }
    );
    assert_eq!(w.account("H1").balance, d("-312.08"));
    assert_eq!(w.account("H2").balance, d("-65.70"));
    let r = season_report(&w, "2026-27");
    assert_eq!((r.accounts_billed, r.total), (2, d("377.78")));
    assert_eq!(r.accounts_skipped, 5);
    let skipped: Vec<(&str, u64)> = r.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        skipped,
        vec![
            ("closed", 1),
            ("no_area", 1),
            ("no_tariff", 1),
            ("not_area_tariff", 1),
            ("not_heat", 1)
        ]
    );
    // The records are the report: one charge each, of the line's amount.
    let mut sum = Decimal::ZERO;
    for id in ["H1", "H2"] {
        let page = list_records(&w.t, &all_query(id)).unwrap().unwrap();
        let charges: Vec<_> = page.records.iter().filter(|r| r.kind == "charge").collect();
        assert_eq!(charges.len(), 1, "{id}");
        assert_eq!(charges[0].channel, season_bill::SEASON_CHANNEL);
        assert_eq!(charges[0].branch, "b1");
        sum += charges[0].amount;
    }
    assert_eq!(sum, r.total);

    // Run again (another run, same accounts): nothing is charged twice.
    let o = w.ok("run2", t0() + 20, bill("2026-27", &all));
    assert!(
        matches!(
            o,
            Outcome::SeasonBilled {
                billed: 0,
                already: 2,
                skipped: 5,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(w.account("H1").balance, d("-312.08"));
    assert_eq!(season_report(&w, "2026-27"), r);

    // The missing tariff is defined: the next run bills H6, and its skip goes.
    w.ok("t3", t0() + 21, define_tariff("NOPE", area("2", "0.5"), 0));
    let o = w.ok("run3", t0() + 22, bill("2026-27", &all));
    assert!(
        matches!(
            o,
            Outcome::SeasonBilled {
                billed: 1,
                already: 2,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(w.account("H6").balance, d("-140.50"));
    let r = season_report(&w, "2026-27");
    assert_eq!((r.accounts_billed, r.total), (3, d("518.28")));
    assert_eq!(r.accounts_skipped, 4);
    assert!(!r.skipped.contains_key("no_tariff"), "{r:?}");
    let (lines, next) = season_bill::lines(&w.t, "2026-27", true, None, 100).unwrap();
    assert_eq!(next, None);
    let ids: Vec<&str> = lines.iter().map(|l| l.account_id.as_str()).collect();
    assert_eq!(ids, vec!["E1", "H3", "H4", "H5"]);
    assert!(
        lines
            .iter()
            .all(|l| l.skipped.is_some() && l.record_seq.is_none())
    );
    let by: Vec<(&str, &str, u64, Decimal)> = r
        .by_branch_and_tariff
        .iter()
        .map(|l| {
            (
                l.branch.as_str(),
                l.tariff_id.as_str(),
                l.accounts,
                l.amount,
            )
        })
        .collect();
    assert_eq!(
        by,
        vec![
            ("b1", "HEAT", 2, d("377.78")),
            ("b1", "NOPE", 1, d("140.50"))
        ]
    );
}

fn drill_summary(scenario: &str, result: &str) -> Box<super::drills::DrillSummary> {
    Box::new(super::drills::DrillSummary {
        scenario: scenario.into(),
        result: result.into(),
        started_ms: 1_700_000_000_000,
        write_gap_ms: 700,
        read_gap_ms: 710,
        health_ms: 2900,
        acknowledged: 400,
        lost: 0,
        duplicated: 0,
        digests_equal: true,
        report_sha256: "ab".repeat(32),
        run_by: "Drill Tester".into(),
    })
}

#[test]
fn the_last_drill_per_scenario_is_kept_and_replayed_exactly_once() {
    let mut w = World::new();
    let o = w.ok(
        "d1",
        1_000,
        Op::RecordDrill {
            summary: drill_summary("leader-kill", "PASS"),
        },
    );
    assert_eq!(
        o,
        Outcome::DrillRecorded {
            scenario: "leader-kill".into(),
            recorded_ms: 1_000
        }
    );
    w.ok(
        "d2",
        2_000,
        Op::RecordDrill {
            summary: drill_summary("two-down", "PASS"),
        },
    );
    // A later drill of a scenario replaces its entry.
    w.ok(
        "d3",
        3_000,
        Op::RecordDrill {
            summary: drill_summary("leader-kill", "FAILED"),
        },
    );
    // A redelivery of d1 answers its stored outcome and changes nothing.
    let again = w.run(
        "d1",
        4_000,
        Op::RecordDrill {
            summary: drill_summary("leader-kill", "PASS"),
        },
    );
    assert_eq!(again, o);
    let drills = super::drills::list(&w.t).unwrap();
    let got: Vec<(&str, &str, i64, &str)> = drills
        .iter()
        .map(|d| {
            (
                d.summary.scenario.as_str(),
                d.summary.result.as_str(),
                d.recorded_ms,
                d.recorded_by.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("leader-kill", "FAILED", 3_000, "op1"),
            ("two-down", "PASS", 2_000, "op1")
        ]
    );
    // The other meta keys are not drills.
    w.ok("b", 5_000, Op::SetSegmentBoundary { boundary_ms: 10 });
    assert_eq!(super::drills::list(&w.t).unwrap().len(), 2);
}

// -------------------------------------------------------------- statements

#[test]
fn a_statement_equals_the_ledger_to_the_cent() {
    let mut w = World::standard();
    w.ok("p1", t0() + DAY, pay("A1", "100.00", "R1"));
    w.ok("b1", t0() + 2 * DAY, buy_card("C1", "30.00"));
    w.ok("p2", t0() + 3 * DAY, pay("A1", "50.00", "R2"));
    w.ok(
        "adj",
        t0() + 4 * DAY,
        Op::Adjust {
            account_id: "A1".into(),
            amount: d("-2.50"),
            reason: "meter fee".into(),
        },
    );
    let now = w.account("A1").balance;
    let s = statements::statement(&w.t, "A1", t0() + DAY + DAY / 2, t0() + 3 * DAY + DAY / 2)
        .unwrap()
        .unwrap();
    let kinds: Vec<&str> = s.lines.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, vec!["purchase", "payment"]);
    // Opening: the balance after p1; closing: opening plus the period's
    // effects; the adjustment after `to` takes it to the balance now.
    let all = list_records(&w.t, &all_query("A1"))
        .unwrap()
        .unwrap()
        .records;
    let effect = |rid: &str| {
        all.iter()
            .find(|r| r.request_id == rid)
            .map(|r| r.balance_effect)
            .unwrap()
    };
    assert_eq!(s.opening_balance, effect("p1"));
    assert_eq!(s.opening_balance, d("100.00"));
    assert_eq!(
        s.closing_balance,
        s.opening_balance + effect("b1") + effect("p2")
    );
    assert_eq!(s.lines[1].balance_after, s.closing_balance);
    assert_eq!(s.closing_balance + d("-2.50"), now);
    assert_eq!(s.balance_now, now);
    assert_eq!(s.totals_by_kind["payment"].amount, d("50.00"));
    assert_eq!(s.totals_by_kind["purchase"].count, 1);
    // The whole life: opening 0, closing the balance now.
    let whole = statements::statement(&w.t, "A1", 0, t0() + 10 * DAY)
        .unwrap()
        .unwrap();
    assert_eq!(whole.opening_balance, d("0"));
    assert_eq!(whole.closing_balance, now);
    assert_eq!(whole.lines.len(), all.len());
    // Bad periods and unknown accounts are refused.
    let e = statements::statement(&w.t, "A1", 10, 10)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = statements::statement(&w.t, "NOPE", 0, 10)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AccountNotFound);
}

#[test]
fn drill_records_stay_out_of_business_reports_unless_asked_for() {
    let mut w = World::standard();
    w.ok("p1", t0() + DAY, pay("A1", "10.00", "R1"));
    let mut drill = open("D1", "electricity", "RES");
    if let Op::OpenAccount { branch, .. } = &mut drill {
        *branch = billdb_api::DRILL_BRANCH.into();
    }
    w.ok("od", t0(), drill);
    w.ok("pd", t0() + DAY, pay("D1", "7.00", "RD"));
    let month = "2026-03";
    let amount = |r: &Report| r.lines.iter().map(|l| l.amount).sum::<Decimal>();
    let business = monthly_report(&w.t, month, GroupBy::Kind).unwrap();
    assert_eq!(amount(&business), d("10.00"), "{business:?}");
    let only = monthly_report_with(&w.t, month, GroupBy::Kind, Drills::Only).unwrap();
    assert_eq!(amount(&only), d("7.00"), "{only:?}");
    let both = monthly_report_with(&w.t, month, GroupBy::Kind, Drills::Include).unwrap();
    assert_eq!(both.lines.len(), 1, "one (payment) line, summed: {both:?}");
    assert_eq!((both.lines[0].count, both.lines[0].amount), (2, d("17.00")));
    let by_branch = monthly_report_with(&w.t, month, GroupBy::Branch, Drills::Include).unwrap();
    let branches: Vec<&str> = by_branch.lines.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(branches, vec!["DRILL", "b1"]);
}

// ------------------------------------------------------- bank reconciliation

/// The bank payment index is written by the apply that posts a payment,
/// under the payment's own UTC day, and marked by its reversal; a refused
/// payment writes none; a bank's day is exactly its payments; the count
/// agrees with the bank-daily report row.
#[test]
fn the_bank_day_index_follows_payments_reversals_and_refusals() {
    let mut w = World::standard();
    w.ok("o2", t0(), open("A2", "water", "RES"));
    let day = days_ms(2026, 3, 7);
    let p1 = w.ok("p1", day, pay("A1", "10.00", "R1"));
    w.ok("p2", day + DAY - 1, pay("A2", "0.01", "R2"));
    w.ok("p3", day + DAY, pay("A1", "3.00", "R3")); // the next day
    w.ok("p0", day - 1, pay("A1", "4.00", "R0")); // the day before
    w.ok(
        "pb",
        day + 5,
        Op::Payment {
            account_id: "A1".into(),
            amount: d("7.00"),
            bank_code: "BOC".into(),
            bank_ref: "R1".into(),
        },
    );
    assert_eq!(
        w.code("dup", day + 6, pay("A2", "9.00", "R1")),
        ErrorCode::DuplicatePayment
    );
    let (list, more) = bank_recon::day_payments_page(&w.t, "ICBC", "2026-03-07", None, 10).unwrap();
    assert!(!more);
    let refs: Vec<(&str, &str, Decimal)> = list
        .iter()
        .map(|p| {
            (
                p.bank_ref.as_str(),
                p.payment.account_id.as_str(),
                p.payment.amount,
            )
        })
        .collect();
    assert_eq!(
        refs,
        vec![("R1", "A1", d("10.00")), ("R2", "A2", d("0.01"))]
    );
    assert_eq!(
        bank_recon::reported_payments(&w.t, "ICBC", "2026-03-07").unwrap(),
        (2, d("10.01"))
    );
    // Paged one at a time, the same.
    let (a, more) = bank_recon::day_payments_page(&w.t, "ICBC", "2026-03-07", None, 1).unwrap();
    assert!(more);
    let (b, more) =
        bank_recon::day_payments_page(&w.t, "ICBC", "2026-03-07", Some(&a[0].bank_ref), 1).unwrap();
    assert!(!more);
    assert_eq!(vec![a[0].clone(), b[0].clone()], list);

    // A reversal (on a later day) marks the payment under its own day.
    let rev = w.ok(
        "rev",
        day + 3 * DAY,
        Op::Reverse {
            record_id: rid_of(&p1),
            reason: "wrong account".into(),
        },
    );
    let (rec, _, _) = posted(&rev);
    let (list, _) = bank_recon::day_payments_page(&w.t, "ICBC", "2026-03-07", None, 10).unwrap();
    assert_eq!(list[0].payment.reversed_by, Some(rec.seq));
    assert_eq!(list[0].payment.reversed_ms, Some(day + 3 * DAY));
    assert_eq!(list[1].payment.reversed_by, None);
    // Found from a neighbouring day: R0 was posted the day before.
    let e = bank_recon::posted_elsewhere(&w.t, "ICBC", "R0", "2026-03-07")
        .unwrap()
        .unwrap();
    assert_eq!(e.day.as_deref(), Some("2026-03-06"));
    assert_eq!(e.request_id, "p0");
    assert!(
        bank_recon::posted_elsewhere(&w.t, "ICBC", "NONE", "2026-03-07")
            .unwrap()
            .is_none()
    );
}

/// Payments posted by a build without the bank-day index have no entries;
/// the backfill lists them (a page at a time, resumable) and indexes them
/// exactly as the posting apply would have (reversal marks included); run
/// again it finds nothing and a replayed command writes nothing twice.
#[test]
fn the_bank_index_backfill_writes_what_the_posting_apply_would_have() {
    let mut w = World::standard();
    w.ok("o2", t0(), open("A2", "water", "RES"));
    let day = days_ms(2026, 3, 7);
    let p1 = w.ok("p1", day, pay("A1", "10.00", "R1"));
    w.ok("p2", day + DAY - 1, pay("A2", "0.01", "R2"));
    w.ok("p0", day - 1, pay("A1", "4.00", "R0"));
    w.ok(
        "rev",
        day + 3 * DAY,
        Op::Reverse {
            record_id: rid_of(&p1),
            reason: "wrong account".into(),
        },
    );
    let index_prefix = [b'P'];
    let index_end = keys::prefix_end(&index_prefix);
    let index = |w: &World| {
        w.t.scan(Family::Reports, &index_prefix, &index_end, false, 1000)
            .unwrap()
    };
    let built = index(&w);
    assert_eq!(built.len(), 3, "{built:?}");
    // A build without the index posted them.
    for (k, _) in &built {
        w.t.delete(Family::Reports, k.clone());
    }
    let unindexed = |w: &World| {
        let (mut ids, mut after, mut pages) = (Vec::new(), None::<Vec<u8>>, 0);
        loop {
            let u = bank_recon::unindexed_payments(&w.t, after.as_deref(), 2, 3).unwrap();
            assert!(u.record_ids.len() <= 2 && u.looked_at <= 3, "{u:?}");
            ids.extend(u.record_ids);
            pages += 1;
            if u.end {
                return (ids, pages);
            }
            after = u.last;
            assert!(pages < 100, "the look does not move on");
        }
    };
    let (ids, pages) = unindexed(&w);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(pages >= 2, "bounded looks: {pages}");
    // More than a command may carry, or a malformed id: refused.
    let many: Vec<String> = (0..=bank_recon::BACKFILL_BATCH_MAX)
        .map(|i| format!("A1:{i}"))
        .collect();
    let too_many = Op::IndexBankPayments { record_ids: many };
    assert_eq!(w.code("big", t0(), too_many), ErrorCode::PayloadTooLarge);
    let bad = Op::IndexBankPayments {
        record_ids: vec!["no-seq".into()],
    };
    assert_eq!(w.code("bad", t0(), bad), ErrorCode::InvalidArgument);

    let mut named = ids.clone();
    named.push("A1:999".into()); // gone: skipped
    let o = w.ok(
        "fill",
        day + 10 * DAY,
        Op::IndexBankPayments {
            record_ids: named.clone(),
        },
    );
    assert_eq!(
        o,
        Outcome::BankPaymentsIndexed {
            indexed: 3,
            already: 0,
            skipped: 1
        }
    );
    assert_eq!(
        index(&w),
        built,
        "the same entries, reversal marks included"
    );
    assert!(unindexed(&w).0.is_empty());
    // Another run's command over the same records writes nothing.
    let o = w.ok(
        "again",
        day + 11 * DAY,
        Op::IndexBankPayments { record_ids: named },
    );
    assert_eq!(
        o,
        Outcome::BankPaymentsIndexed {
            indexed: 0,
            already: 3,
            skipped: 1
        }
    );
    assert_eq!(index(&w), built);
}

/// An imported payment with a bank code is indexed like a posted one.
#[test]
fn imported_payments_are_indexed_under_their_legacy_day() {
    let mut w = World::standard();
    let day = days_ms(2019, 5, 31);
    w.ok(
        "imp",
        t0(),
        Op::Import {
            accounts: Vec::new(),
            records: vec![ImportRecord {
                account_id: "A1".into(),
                kind: "payment".into(),
                amount: d("12.50"),
                units: Decimal::ZERO,
                ts_ms: day + 1000,
                operator_id: "legacy".into(),
                branch: String::new(),
                tariff_id: String::new(),
                invoice_no: String::new(),
                bank_code: "OLD".into(),
                bank_ref: "L1".into(),
                card_no: String::new(),
                card_seq: 0,
            }],
        },
    );
    let (list, _) = bank_recon::day_payments_page(&w.t, "OLD", "2019-05-31", None, 10).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].bank_ref, "L1");
    assert_eq!(list[0].payment.amount, d("12.50"));
    assert_eq!(
        bank_recon::reported_payments(&w.t, "OLD", "2019-05-31")
            .unwrap()
            .0,
        1
    );
}

/// The balance report sums every account's balance per group to the cent,
/// with the debit and credit sides apart, closed accounts counted and kept.
#[test]
fn balance_report_sums_every_account_per_group() {
    let mut w = World::new();
    w.ok("t", 0, define_tariff("RES", ladder(), 0));
    let mut accounts = Vec::new();
    // 2,500 accounts: more than one scan chunk, so the paging is exercised.
    for i in 0..2500u32 {
        let mut a = import_account(&format!("B{i:05}"), None);
        a.branch = format!("br{}", i % 3);
        a.balance = Decimal::new(i64::from(i) * 101 - 120_000, 2);
        if i % 7 == 0 {
            a.status = "closed".into();
            a.closed_ms = Some(days_ms(2020, 1, 1));
        }
        accounts.push(a);
    }
    for (n, chunk) in accounts.chunks(IMPORT_ITEMS_MAX).enumerate() {
        w.ok(
            &format!("i{n}"),
            t0(),
            Op::Import {
                accounts: chunk.to_vec(),
                records: vec![],
            },
        );
    }
    let rep = balances::balance_report(&w.t, balances::BalanceGroup::Branch).unwrap();
    assert_eq!(rep.group_by, "branch");
    assert_eq!(
        rep.lines.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
        ["br0", "br1", "br2"]
    );
    for line in &rep.lines {
        let mine: Vec<_> = accounts.iter().filter(|a| a.branch == line.key).collect();
        assert_eq!(line.accounts, mine.len() as u64);
        assert_eq!(
            line.closed,
            mine.iter().filter(|a| a.status == "closed").count() as u64
        );
        let sum: Decimal = mine.iter().map(|a| a.balance).sum();
        assert_eq!(line.balance, sum);
        let debit: Decimal = mine
            .iter()
            .filter(|a| a.balance < Decimal::ZERO)
            .map(|a| -a.balance)
            .sum();
        assert_eq!(line.debit, debit);
        assert_eq!(line.credit - line.debit, line.balance);
    }
    assert_eq!(rep.total.accounts, 2500);
    assert_eq!(
        rep.total.balance,
        accounts.iter().map(|a| a.balance).sum::<Decimal>()
    );
    let by_utility = balances::balance_report(&w.t, balances::BalanceGroup::Utility).unwrap();
    assert_eq!(by_utility.lines.len(), 1);
    assert_eq!(by_utility.lines[0].balance, rep.total.balance);
}

// ---- op levels (`levels`) ----

fn area_tariff_op() -> Op {
    Op::DefineTariff {
        tariff_id: "H1".into(),
        tariff: TariffSpec::Area {
            price_per_m2: d("25.00"),
            suspended_share: d("0.3"),
        },
        effective_from_ms: t0(),
    }
}

#[test]
fn an_op_above_the_cluster_level_is_refused_at_precheck_and_at_apply_alike() {
    let mut w = World::without_level();
    assert_eq!(
        levels::cluster_level(&w.t).unwrap(),
        1,
        "never set: level 1"
    );
    assert_eq!(levels::op_level(&area_tariff_op()), 2);
    assert_eq!(
        levels::op_level(&Op::SetSegmentBoundary { boundary_ms: 0 }),
        1
    );
    let pre = precheck(&w.t, &area_tariff_op()).unwrap().expect("refused");
    assert_eq!(pre.code, ErrorCode::FeatureNotEnabled);
    assert_eq!(pre.details["needs_level"], 2);
    // Applied anyway (a leader that did not check): the same refusal on
    // every replica, nothing written but the request entry.
    assert_eq!(
        w.code("area-1", t0(), area_tariff_op()),
        ErrorCode::FeatureNotEnabled
    );
    assert!(get_tariff(&w.t, "H1").unwrap().is_none());
    // A flat tariff is level 1: accepted.
    w.ok(
        "flat-1",
        t0(),
        Op::DefineTariff {
            tariff_id: "T1".into(),
            tariff: TariffSpec::Flat { price: d("0.50") },
            effective_from_ms: t0(),
        },
    );

    // Raised: accepted; the level never goes down; the same level again
    // changes nothing.
    match w.ok("lvl-2", t0(), Op::SetClusterLevel { level: 2 }) {
        Outcome::ClusterLevelSet { from, level } => assert_eq!((from, level), (1, 2)),
        o => panic!("{o:?}"),
    }
    assert_eq!(levels::cluster_level(&w.t).unwrap(), 2);
    assert!(precheck(&w.t, &area_tariff_op()).unwrap().is_none());
    w.ok("area-2", t0(), area_tariff_op());
    assert!(get_tariff(&w.t, "H1").unwrap().is_some());
    match w.ok("lvl-2-again", t0(), Op::SetClusterLevel { level: 2 }) {
        Outcome::ClusterLevelSet { from, level } => assert_eq!((from, level), (2, 2)),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        w.code("lvl-1", t0(), Op::SetClusterLevel { level: 1 }),
        ErrorCode::InvalidState
    );
    assert_eq!(levels::cluster_level(&w.t).unwrap(), 2);
    // Setting the level is never refused by the gate itself, and needs a
    // build of the level it sets.
    assert!(levels::refusal(&Op::SetClusterLevel { level: 2 }, 1).is_none());
    assert_eq!(levels::op_level(&Op::SetClusterLevel { level: 3 }), 3);
}
