//! `billdb.v2.Billing` on a real five-node cluster, through the Rust client:
//! every RPC answers its typed reply (decimals as strings, times as ms,
//! the card verdict as an enum, a stored outcome as its oneof case); a
//! refusal carries the billdb code in `google.rpc.ErrorInfo`; a retry with
//! the same request_id takes effect once; and v1 answers the same document
//! as JSON for one release.

mod common;

use std::str::FromStr;

use billdb_api::pb;
use billdb_api::pb2;
use billdb_api::v2json;
use billdb_client::client::Client;
use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tonic_types::StatusExt;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

/// `v` without its `null` members (the v1 JSON writes absent as null; the
/// typed reply leaves it out).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_billing_rpc_answers_its_typed_reply() {
    let c = TestCluster::start(38300, 5);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = rt.enter();
    let tls = c.c.client_tls().expect("tls").expect("secure cluster");
    let endpoints: Vec<String> = (1..=5).map(|n| c.c.grpc_addr(n).expect("addr")).collect();
    let as_role = |role: &str| {
        Client::with_tls(
            &endpoints,
            Some(&c.c.token(role).expect("token")),
            Some(&tls),
        )
        .expect("client")
    };
    let ops = as_role("ops");
    let counter = as_role("counter");
    let bank = as_role("bank");
    let auditor = as_role("auditor");

    rt.block_on(async {
        // Tariffs, accounts, a card.
        let t = ops
            .define_tariff(pb2::DefineTariffRequest {
                request_id: "v2-tariff".into(),
                tariff_id: "V2T".into(),
                kind: "ladder".into(),
                tiers: vec![
                    pb2::TariffTier { up_to: Some("10".into()), price: "0.50".into() },
                    pb2::TariffTier { up_to: None, price: "0.80".into() },
                ],
                ..Default::default()
            })
            .await
            .expect("define tariff");
        assert_eq!((t.result.as_str(), t.tariff_id.as_str(), t.versions), ("tariff_defined", "V2T", 1));
        assert!(t.log_index > 0);
        for id in ["V2-1", "V2-2"] {
            let o = counter
                .open_account(pb2::OpenAccountRequest {
                    request_id: format!("v2-open-{id}"),
                    account_id: id.into(),
                    name: "Typed".into(),
                    branch: "B01".into(),
                    utility: "electricity".into(),
                    tariff_id: "V2T".into(),
                    ..Default::default()
                })
                .await
                .expect("open");
            assert_eq!(o.account_id, id);
            assert!(o.opened_ms > 1_700_000_000_000, "{o:?}");
            assert!(o.warnings.is_empty(), "{o:?}");
        }
        let card = counter
            .issue_card(pb2::IssueCardRequest {
                request_id: "v2-card".into(),
                account_id: "V2-1".into(),
                card_no: "V2CARD1".into(),
            })
            .await
            .expect("card");
        let issued = card.card.expect("card");
        assert_eq!((issued.generation, issued.status.as_str()), (1, "active"));

        // Card check before a sale: the verdict is an enum.
        let check = counter
            .verify_card(pb2::VerifyCardRequest {
                card_no: "V2CARD1".into(),
                generation: 1,
                seq_on_card: 0,
            })
            .await
            .expect("verify");
        assert_eq!(check.verdict(), pb2::card_check::Verdict::Ok, "{check:?}");
        assert_eq!(check.account.as_ref().expect("account").account_id, "V2-1");

        // A sale of 12 units on the ladder: 10 × 0.50 + 2 × 0.80.
        let sale = counter
            .purchase(pb2::PurchaseRequest {
                request_id: "v2-sale-1".into(),
                card_no: Some("V2CARD1".into()),
                units: Some("12".into()),
                ..Default::default()
            })
            .await
            .expect("purchase");
        let record = sale.record.clone().expect("record");
        assert_eq!((record.kind.as_str(), record.seq), ("purchase", 1));
        assert_eq!(dec(&record.amount), dec("6.60"));
        assert_eq!(record.tiers.len(), 2, "{record:?}");
        let tier_sum: Decimal = record.tiers.iter().map(|t| dec(&t.amount)).sum();
        assert_eq!(tier_sum, dec(&record.amount));
        assert_eq!(sale.record_id, "V2-1:1");
        assert!(record.ts_ms > 1_700_000_000_000);
        assert!(record.ts.as_deref().is_some_and(|t| t.ends_with('Z')), "{record:?}");
        // The same request again: the same record, no second sale.
        let again = counter
            .purchase(pb2::PurchaseRequest {
                request_id: "v2-sale-1".into(),
                card_no: Some("V2CARD1".into()),
                units: Some("12".into()),
                ..Default::default()
            })
            .await
            .expect("retried purchase");
        assert_eq!(again.record_id, sale.record_id);
        assert_eq!(again.balance, sale.balance);

        // Not loaded yet: the next check says so, by enum.
        let check = counter
            .verify_card(pb2::VerifyCardRequest {
                card_no: "V2CARD1".into(),
                generation: 1,
                seq_on_card: 0,
            })
            .await
            .expect("verify");
        assert_eq!(check.verdict(), pb2::card_check::Verdict::CreditNotLoaded);
        assert_eq!(check.unloaded_record_id.as_deref(), Some("V2-1:1"));
        assert_eq!(check.recent.len(), 1);
        let reissue = counter
            .reissue(pb2::RecordRequest {
                request_id: "v2-reissue".into(),
                record_id: "V2-1:1".into(),
                reason: "card reader failed".into(),
            })
            .await
            .expect("reissue");
        assert_eq!(reissue.record.as_ref().expect("record").kind, "reissue");
        assert_eq!(reissue.record.as_ref().expect("record").refers_to, Some(1));
        let loaded = counter
            .confirm_loaded(pb2::RecordRequest {
                request_id: "v2-loaded".into(),
                record_id: "V2-1:1".into(),
                reason: String::new(),
            })
            .await
            .expect("loaded");
        assert_eq!(loaded.result, "credit_loaded");
        let print = counter
            .print_invoice(pb2::PrintInvoiceRequest {
                request_id: "v2-print".into(),
                invoice_no: record.invoice_no.clone(),
            })
            .await
            .expect("print");
        let invoice = print.invoice.expect("invoice");
        assert_eq!(invoice.invoice_no, record.invoice_no);
        assert_eq!(print.print_count, invoice.print_count);
        assert!(invoice.first_printed_ms.is_some());

        // A bank payment, an adjustment, a charge, a reversal.
        let pay = bank
            .post_payment(pb2::PaymentRequest {
                request_id: "v2-pay".into(),
                account_id: "V2-1".into(),
                amount: "100.00".into(),
                bank_code: "ICBC".into(),
                bank_ref: "V2-REF-1".into(),
            })
            .await
            .expect("payment");
        assert_eq!((pay.result.as_str(), dec(&pay.amount)), ("payment_posted", dec("100")));
        assert_eq!(pay.record_id, format!("V2-1:{}", pay.seq));
        let adj = ops
            .adjust(pb2::AdjustRequest {
                request_id: "v2-adjust".into(),
                account_id: "V2-1".into(),
                amount: "-1.25".into(),
                reason: "meter fee".into(),
            })
            .await
            .expect("adjust");
        assert_eq!(dec(&adj.record.as_ref().expect("record").amount), dec("-1.25"));
        let charge = ops
            .post_charge(pb2::ChargeRequest {
                request_id: "v2-charge".into(),
                account_id: "V2-1".into(),
                amount: "3.00".into(),
                period: "2026-11".into(),
                reason: "service".into(),
            })
            .await
            .expect("charge");
        assert_eq!(charge.record.as_ref().expect("record").kind, "charge");
        let reversed = ops
            .reverse(pb2::RecordRequest {
                request_id: "v2-reverse".into(),
                record_id: charge.record_id.clone(),
                reason: "posted twice".into(),
            })
            .await
            .expect("reverse");
        assert_eq!(reversed.record.as_ref().expect("record").kind, "reversal");

        // The account: the balance is the sum of its records' effects.
        let account = auditor.get_account("V2-1").await.expect("account");
        assert!(account.opened.ends_with('Z'), "{account:?}");
        assert_eq!(account.last_card_seq, 1);
        assert!(account.last_purchase.as_ref().is_some_and(|p| p.loaded));
        let page = auditor
            .list_records(pb2::ListRecordsRequest {
                account_id: "V2-1".into(),
                segment: Some("all".into()),
                order: Some("asc".into()),
                ..Default::default()
            })
            .await
            .expect("records");
        assert_eq!(page.records.len() as u64, account.last_seq);
        let effects: Decimal = page.records.iter().map(|r| dec(&r.balance_effect)).sum();
        assert_eq!(effects, dec(&account.balance));
        assert!(page.records.iter().all(|r| r.record_id.is_some()));

        // A statement: lines and per-kind totals (a map) add up.
        let st = auditor
            .statement(pb2::StatementRequest {
                account_id: "V2-1".into(),
                from: Some("2020-01-01T00:00:00Z".into()),
                to: Some("2100-01-01T00:00:00Z".into()),
                ..Default::default()
            })
            .await
            .expect("statement");
        assert_eq!(st.lines.len(), page.records.len());
        let by_kind: Decimal = st.totals_by_kind.values().map(|t| dec(&t.balance_effect)).sum();
        assert_eq!(dec(&st.opening_balance) + by_kind, dec(&st.closing_balance));
        assert_eq!(st.totals_by_kind["purchase"].count, 1);

        // Reports.
        // The RFC 3339 time the answers carry beside ts_ms gives the month
        // and the day.
        let month = st.lines[0].ts[..7].to_string();
        let report = auditor
            .monthly_report(pb2::MonthlyReportRequest {
                month: month.clone(),
                group_by: Some("kind".into()),
                ..Default::default()
            })
            .await
            .expect("monthly report");
        assert_eq!(report.period, month);
        assert!(
            report.lines.iter().any(|l| l.value == "purchase" || l.kind == "purchase"),
            "{report:?}"
        );
        let day = page
            .records
            .iter()
            .find(|r| r.record_id.as_deref() == Some(pay.record_id.as_str()))
            .and_then(|r| r.ts.as_deref())
            .expect("the payment is listed with its time")[..10]
            .to_string();
        let daily = auditor
            .bank_daily_report(pb2::BankDailyReportRequest {
                date: day.clone(),
                bank_code: Some("ICBC".into()),
                ..Default::default()
            })
            .await
            .expect("bank daily report");
        let total: Decimal = daily.lines.iter().map(|l| dec(&l.amount)).sum();
        assert_eq!(total, dec("100"), "{daily:?}");

        // Stored outcomes, by oneof case.
        let o = auditor
            .get_request(pb2::GetRequestRequest { request_id: "v2-sale-1".into() })
            .await
            .expect("outcome");
        match o.outcome {
            Some(pb2::request_outcome::Outcome::RecordPosted(r)) => {
                assert_eq!(r.record_id, "V2-1:1")
            }
            other => panic!("{other:?}"),
        }

        // Account lifecycle and contact, a card replacement.
        let upd = counter
            .update_contact(pb2::UpdateContactRequest {
                request_id: "v2-contact".into(),
                account_id: "V2-2".into(),
                phone: Some("+86 10 5555 0100".into()),
                ..Default::default()
            })
            .await
            .expect("contact");
        assert_eq!(upd.account.expect("account").phone, "+86 10 5555 0100");
        for (step, want) in [("suspend", "suspended"), ("resume", "active"), ("close", "closed")] {
            let r = pb2::LifecycleRequest {
                request_id: format!("v2-{step}"),
                account_id: "V2-2".into(),
                reason: "test".into(),
            };
            let a = match step {
                "suspend" => ops.suspend_account(r).await,
                "resume" => ops.resume_account(r).await,
                _ => ops.close_account(r).await,
            }
            .expect(step);
            let account = a.account.expect("account");
            assert_eq!(account.status, want);
            assert_eq!(account.closed_ms.is_some(), want == "closed");
        }
        let rep = counter
            .replace_card(pb2::ReplaceCardRequest {
                request_id: "v2-replace".into(),
                card_no: "V2CARD1".into(),
                new_card_no: "V2CARD2".into(),
                reason: "lost".into(),
            })
            .await
            .expect("replace");
        assert_eq!(rep.old_card.expect("old").replaced_by.as_deref(), Some("V2CARD2"));
        assert_eq!(rep.card.expect("new").generation, 2);

        // Boundary, season, import.
        let b = ops
            .set_segment_boundary(pb2::SetBoundaryRequest {
                request_id: "v2-boundary".into(),
                boundary: Some("2001-01-01T00:00:00Z".into()),
                boundary_ms: None,
            })
            .await
            .expect("boundary");
        assert_eq!(b.boundary_ms, 978_307_200_000);
        // A heat account priced per m², imported; then the season opens
        // and is billed in one call (this small dataset fits one run).
        ops.define_tariff(pb2::DefineTariffRequest {
            request_id: "v2-tariff-area".into(),
            tariff_id: "V2AREA".into(),
            kind: "area".into(),
            price: Some("30.00".into()),
            suspended_share: Some("0.30".into()),
            effective_from: Some("2000-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .await
        .expect("area tariff");
        let imp = ops
            .import(&json!({"request_id": "v2-import",
                "accounts": [{"account_id": "V2-H1", "name": "Heat", "address": "", "branch": "B02",
                    "utility": "heat", "meter_id": "", "tariff_id": "V2AREA", "area": "80.50",
                    "status": "active", "balance": "5.00", "opened_ms": 1_000_000_000_000i64,
                    "closed_ms": null, "card_no": null, "card_generation": 0}],
                "records": []}))
            .await
            .expect("import");
        assert_eq!((imp.accounts, imp.records), (1, 0));
        let s = ops
            .open_heating_season(pb2::OpenSeasonRequest {
                request_id: "v2-season".into(),
                season_id: "2026-27".into(),
            })
            .await
            .expect("season");
        assert_eq!(s.season_id, "2026-27");
        let run = ops
            .bill_season(pb2::BillSeasonRequest {
                request_id: "v2-bill".into(),
                season_id: "2026-27".into(),
                after: None,
            })
            .await
            .expect("bill");
        assert!(run.done, "{run:?}");
        assert_eq!(run.billed, 1, "{run:?}");
        assert_eq!(dec(&run.amount), dec("2415.00"));
        let e = counter
            .bill_season(pb2::BillSeasonRequest {
                request_id: "v2-bill-counter".into(),
                season_id: "2026-27".into(),
                after: None,
            })
            .await
            .expect_err("a counter may not bill");
        assert_eq!(e.code.as_str(), "PERMISSION_DENIED");
        let bill = auditor
            .season_bill(pb2::SeasonBillReportRequest { season_id: "2026-27".into() })
            .await
            .expect("season bill report");
        assert_eq!((bill.accounts_billed, dec(&bill.total)), (1, dec("2415.00")));
        let by_line: Decimal = bill.by_branch_and_tariff.iter().map(|l| dec(&l.amount)).sum();
        assert_eq!(by_line, dec(&bill.total));
        let lines = auditor
            .season_bill_lines(pb2::SeasonBillLinesRequest {
                season_id: "2026-27".into(),
                ..Default::default()
            })
            .await
            .expect("season bill lines");
        let billed: Vec<_> = lines.lines.iter().filter(|l| l.record_id.is_some()).collect();
        assert_eq!(billed.len(), 1, "{lines:?}");
        assert_eq!(billed[0].account_id, "V2-H1");
        assert_eq!(dec(&billed[0].area_m2), dec("80.50"));

        // The bank's day and its statement: one payment matched, one line
        // billdb never saw (with the command that posts it).
        let day_payments = bank
            .bank_payments(pb2::BankPaymentsRequest {
                bank_code: "ICBC".into(),
                date: day.clone(),
                ..Default::default()
            })
            .await
            .expect("bank payments");
        assert_eq!(day_payments.day_total.as_ref().map(|t| t.count), Some(1));
        assert_eq!(day_payments.payments[0].bank_ref, "V2-REF-1");
        let csv = "bank_ref,account_id,amount,time\nV2-REF-1,V2-1,100.00,09:30\nV2-REF-X,V2-1,7.00,10:00\n";
        let rec = bank
            .reconcile(pb2::ReconcileRequest {
                request_id: "v2-recon".into(),
                bank_code: "ICBC".into(),
                date: day.clone(),
                csv: csv.into(),
                file_name: "icbc.csv".into(),
            })
            .await
            .expect("reconcile");
        assert!(!rec.balanced);
        assert_eq!(rec.matched.as_ref().map(|m| m.count), Some(1));
        assert_eq!(rec.missing_in_billdb.as_ref().map(|m| m.count), Some(1));
        assert_eq!(rec.items.len(), 1, "{rec:?}");
        assert_eq!(rec.items[0].class, "missing_in_billdb");
        assert!(rec.items[0].post_command.as_deref().is_some_and(|c| c.contains("V2-REF-X")));
        let totals = rec.totals.as_ref().expect("totals");
        assert_eq!(dec(&totals.difference), dec("7.00"));
        let stored = auditor
            .get_reconciliation(pb2::GetReconciliationRequest {
                bank_code: "ICBC".into(),
                reconciliation_id: "v2-recon".into(),
            })
            .await
            .expect("stored reconciliation");
        assert_eq!(stored.file_sha256, rec.file_sha256);
        let listed = auditor
            .list_reconciliations(pb2::ListReconciliationsRequest {
                bank_code: "ICBC".into(),
                date: Some(day.clone()),
            })
            .await
            .expect("reconciliations");
        assert_eq!(listed.reconciliations.len(), 1);
        assert!(listed.reconciliations[0].items.is_empty());

        // A refusal: the billdb code in ErrorInfo, and the stored refusal
        // as the `refused` case.
        let refused = counter
            .purchase(pb2::PurchaseRequest {
                request_id: "v2-sale-closed".into(),
                account_id: Some("V2-2".into()),
                amount: Some("5.00".into()),
                ..Default::default()
            })
            .await
            .expect_err("closed account");
        assert_eq!(refused.code.as_str(), "ACCOUNT_CLOSED");
        let mut raw = pb2::billing_client::BillingClient::new(c.grpc_channel(3).await);
        let status = raw
            .purchase(authed(
                pb2::PurchaseRequest {
                    request_id: "v2-sale-unknown".into(),
                    card_no: Some("NO-SUCH-CARD".into()),
                    amount: Some("5.00".into()),
                    ..Default::default()
                },
                &c.c.token("counter").expect("token"),
            ))
            .await
            .expect_err("unknown card");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("CARD_UNKNOWN", "billdb"));
        assert!(pb2::ErrorCode::from_str_name(&info.reason).is_some());
        assert!(status.metadata().get(billdb_api::LEADER_METADATA).is_some());
        let o = auditor
            .get_request(pb2::GetRequestRequest { request_id: "v2-sale-closed".into() })
            .await
            .expect("stored refusal");
        match o.outcome {
            Some(pb2::request_outcome::Outcome::Refused(r)) => {
                assert_eq!(r.code(), pb2::ErrorCode::AccountClosed)
            }
            other => panic!("{other:?}"),
        }
        // A role without the right: PERMISSION_DENIED, nothing written.
        let e = auditor
            .adjust(pb2::AdjustRequest {
                request_id: "v2-adjust-auditor".into(),
                account_id: "V2-1".into(),
                amount: "1.00".into(),
                reason: "no".into(),
            })
            .await
            .expect_err("auditor cannot adjust");
        assert_eq!(e.code.as_str(), "PERMISSION_DENIED");

        // v1, kept for one release, answers the same document as JSON.
        let mut v1 = pb::billing_client::BillingClient::new(c.grpc_channel(2).await);
        let v1_page = v1
            .list_records(authed(
                pb::ListRecordsRequest {
                    account_id: "V2-1".into(),
                    segment: Some("all".into()),
                    order: Some("asc".into()),
                    ..Default::default()
                },
                &c.c.token("auditor").expect("token"),
            ))
            .await
            .expect("v1 records")
            .into_inner();
        let v1_json: Value = serde_json::from_str(&v1_page.json).expect("v1 JSON");
        let page_now = auditor
            .list_records(pb2::ListRecordsRequest {
                account_id: "V2-1".into(),
                segment: Some("all".into()),
                order: Some("asc".into()),
                ..Default::default()
            })
            .await
            .expect("records");
        assert_eq!(page_now.boundary_ms, Some(978_307_200_000));
        let v2_json = v2json::to_json(&page_now).expect("v2 as JSON");
        assert_eq!(without_nulls(&v1_json), without_nulls(&v2_json));
    });
}
