//! Bank statement reconciliation over HTTP:
//! * `GET /v1/banks/{bank_code}/payments?date=D[&after=REF&limit=N]`: one
//!   bank's payments of one business day (the `P` index), a page at a time;
//! * `POST /v1/banks/{bank_code}/reconciliations` with
//!   `{"request_id","date","csv"[,"file_name"]}`: the statement file is
//!   parsed (`billdb_api::statement`, every refusal names its line), the
//!   node reads the day's payments after a read barrier, matches them
//!   ([`bank_recon::reconcile`], pure) and stores the result through Raft
//!   (`RecordReconciliation`, with the caller's operator, role and time);
//!   the answer is the stored result;
//! * `GET …/reconciliations?date=D` (the stored ones, without items) and
//!   `GET …/reconciliations/{request_id}` (one, whole).
//!
//! * `POST /v1/bank-index/backfill` with `{"request_id"[,"after"]}` (ops):
//!   indexes bank payments posted before the bank-day index existed, as
//!   bounded `IndexBankPayments` commands; one call works for about
//!   [`BACKFILL_CALL_BUDGET_MS`] and answers where to go on (`next_after`).
//!
//! Roles: ops reconciles any bank, a bank token its own; auditors read.
//! May touch: the App (reads, writes); domain functions only.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use billdb_api::error::{ApiError, ErrorCode};

use super::ops::origin;
use super::validate;
use crate::app::App;
use crate::auth::{Caller, Role};
use crate::domain::bank_recon::{self, Class, DayPayment, Item, Matching, Reconciliation, Sum};
use crate::domain::{self, Op, Outcome};
use crate::store::state_machine::RocksRead;

/// Largest page of `GET …/payments`.
pub const PAYMENTS_PAGE_MAX: usize = 1_000;

/// Whether `path` is the reconciliation route (its body is a statement
/// file: bounded by `limits.import_body_bytes_max`, not the request limit).
pub fn is_statement_path(path: &str) -> bool {
    path.strip_prefix("/v1/banks/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, tail)| tail == "reconciliations")
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, msg)
}

fn read_roles(caller: &Caller, bank_code: &str) -> Result<(), ApiError> {
    caller.require(&[Role::Bank, Role::Ops, Role::Auditor])?;
    caller.check_bank(bank_code)
}

fn date_arg(v: Option<String>) -> Result<String, ApiError> {
    let d = v.ok_or_else(|| invalid("date: required (YYYY-MM-DD)"))?;
    validate::date("date", &d)?;
    Ok(d)
}

fn money(d: Decimal) -> String {
    let mut d = d;
    d.rescale(2);
    d.to_string()
}

fn opt_money(d: Option<Decimal>) -> Value {
    d.map_or(Value::Null, |d| json!(money(d)))
}

/// `GET /v1/banks/{bank_code}/payments?date=D&after=REF&limit=N`.
pub async fn payments(
    app: &App,
    caller: &Caller,
    bank_code: &str,
    query: Vec<(String, String)>,
) -> Result<Value, ApiError> {
    read_roles(caller, bank_code)?;
    let bank_code = validate::id("bank_code", bank_code)?;
    let (mut date, mut after, mut limit) = (None, None, PAYMENTS_PAGE_MAX);
    for (k, v) in query {
        match k.as_str() {
            "date" => date = Some(v),
            "after" => after = Some(validate::id("after", &v)?),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=PAYMENTS_PAGE_MAX).contains(l))
                    .ok_or_else(|| invalid(format!("limit: 1..={PAYMENTS_PAGE_MAX}")))?
            }
            other => return Err(invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    let day = date_arg(date)?;
    app.linearize().await?;
    let db = app.db.clone();
    let (b, d) = (bank_code.clone(), day.clone());
    let (page, more, reported) = tokio::task::spawn_blocking(move || {
        let view = RocksRead::new(&db);
        let (page, more) = bank_recon::day_payments_page(&view, &b, &d, after.as_deref(), limit)?;
        let reported = bank_recon::reported_payments(&view, &b, &d)?;
        Ok::<_, std::io::Error>((page, more, reported))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let next_after = if more {
        page.last().map(|p| p.bank_ref.clone())
    } else {
        None
    };
    let payments: Vec<Value> = page.iter().map(payment_json).collect();
    Ok(json!({
        "bank_code": bank_code,
        "date": day,
        "payments": payments,
        "next_after": next_after,
        "day_total": {"count": reported.0, "amount": money(reported.1)},
    }))
}

fn payment_json(p: &DayPayment) -> Value {
    let q = &p.payment;
    json!({
        "bank_ref": p.bank_ref,
        "account_id": q.account_id,
        "record_id": domain::record_id(&q.account_id, q.seq),
        "amount": money(q.amount),
        "ts": validate::to_rfc3339(q.ts_ms),
        "ts_ms": q.ts_ms,
        "reversed_by": q.reversed_by.map(|s| domain::record_id(&q.account_id, s)),
        "reversed_ts": q.reversed_ms.map(validate::to_rfc3339),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileArgs {
    request_id: String,
    date: String,
    /// The statement file's text (CSV `bank_ref,account_id,amount,time`).
    csv: String,
    /// The file's name, kept for the record.
    #[serde(default)]
    file_name: String,
}

/// `POST /v1/banks/{bank_code}/reconciliations` (ops; a bank its own).
pub async fn reconcile(
    app: &App,
    caller: &Caller,
    bank_code: &str,
    body: Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Ops, Role::Bank])?;
    caller.check_bank(bank_code)?;
    let bank_code = validate::id("bank_code", bank_code)?;
    let r: ReconcileArgs = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    let request_id = validate::id("request_id", &r.request_id)?;
    validate::date("date", &r.date)?;
    let file_name = validate::text("file_name", &r.file_name)?;
    let lines = billdb_api::statement::parse_csv(&r.csv)?;
    let file_sha256 = hex::encode(Sha256::digest(r.csv.as_bytes()));
    app.linearize().await?;

    // A retry of a stored reconciliation answers what was stored.
    let the_file = TheFile {
        request_id: &request_id,
        bank_code: &bank_code,
        day: &r.date,
        file_sha256: &file_sha256,
    };
    if let Some(answer) = stored_answer(app, &the_file).await? {
        return Ok(answer);
    }

    let db = app.db.clone();
    let (b, d) = (bank_code.clone(), r.date.clone());
    let (matching, as_of_index) = tokio::task::spawn_blocking(move || {
        let view = RocksRead::new(&db);
        let as_of = view.applied().map_err(internal)?.map_or(0, |l| l.index);
        let (day, more) =
            bank_recon::day_payments_page(&view, &b, &d, None, bank_recon::DAY_PAYMENTS_MAX)
                .map_err(internal)?;
        if more {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "bank {b} has more than {} payments on {d}; a reconciliation reads at most that many",
                    bank_recon::DAY_PAYMENTS_MAX
                ),
            ));
        }
        let (reported, _) = bank_recon::reported_payments(&view, &b, &d).map_err(internal)?;
        if reported != day.len() as u64 {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "the payment index of bank {b} on {d} holds {} payments but the bank-daily \
                     report counts {reported}: payments of that day were applied by a build \
                     without the index, so the day cannot be reconciled here",
                    day.len()
                ),
            )
            .with_details(json!({"indexed": day.len(), "reported": reported})));
        }
        let in_day: std::collections::BTreeSet<&str> =
            day.iter().map(|p| p.bank_ref.as_str()).collect();
        let mut elsewhere = BTreeMap::new();
        for l in &lines {
            if in_day.contains(l.bank_ref.as_str()) {
                continue;
            }
            if let Some(e) = bank_recon::posted_elsewhere(&view, &b, &l.bank_ref, &d).map_err(internal)? {
                elsewhere.insert(l.bank_ref.clone(), e);
            }
        }
        let m = bank_recon::reconcile(&lines, &day, &elsewhere)?;
        Ok((m, as_of))
    })
    .await
    .map_err(internal)??;

    let rec = Reconciliation {
        bank_code: bank_code.clone(),
        day: r.date.clone(),
        file_sha256: file_sha256.clone(),
        file_name,
        as_of_index,
        matching,
        role: caller.role.as_str().to_string(),
        recorded_ms: 0,
        recorded_by: String::new(),
    };
    let op = Op::RecordReconciliation {
        reconciliation: Box::new(rec.clone()),
    };
    let (outcome, log_index) = app
        .write(request_id.clone(), origin(caller, &op), op)
        .await?;
    let mut stored = rec;
    match outcome {
        Outcome::ReconciliationRecorded { recorded_ms, .. } => {
            stored.recorded_ms = recorded_ms;
            stored.recorded_by = caller.operator();
        }
        // The same request was stored meanwhile (a retry racing its
        // original, the day's payments changed in between): its answer.
        Outcome::Refused(e) if e.code == ErrorCode::IdempotencyConflict => {
            app.linearize().await?;
            return match stored_answer(app, &the_file).await? {
                Some(answer) => Ok(answer),
                None => Err(e),
            };
        }
        Outcome::Refused(e) => return Err(e),
        other => return Err(internal(format!("unexpected outcome {other:?}"))),
    }
    let mut v = reconciliation_json(&request_id, &stored, true);
    v["log_index"] = json!(log_index);
    Ok(v)
}

/// What a reconciliation request is about, to recognise its stored answer.
struct TheFile<'a> {
    request_id: &'a str,
    bank_code: &'a str,
    day: &'a str,
    file_sha256: &'a str,
}

/// The stored answer to `f.request_id` (marked `replayed`) if it was
/// stored for the same bank, day and file; IDEMPOTENCY_CONFLICT if the
/// request_id was used for anything else; `None` if it was never used.
async fn stored_answer(app: &App, f: &TheFile<'_>) -> Result<Option<Value>, ApiError> {
    let db = app.db.clone();
    let rid = f.request_id.to_string();
    let before = tokio::task::spawn_blocking(move || {
        let view = RocksRead::new(&db);
        match domain::request_outcome(&view, &rid)? {
            None => Ok(None),
            Some(o) => Ok(Some((o, bank_recon::get(&view, &rid)?))),
        }
    })
    .await
    .map_err(internal)?
    .map_err(|e: std::io::Error| internal(e))?;
    let Some((outcome, stored)) = before else {
        return Ok(None);
    };
    match stored {
        Some(s)
            if s.file_sha256 == f.file_sha256 && s.bank_code == f.bank_code && s.day == f.day =>
        {
            let mut v = reconciliation_json(f.request_id, &s, true);
            v["replayed"] = json!(true);
            Ok(Some(v))
        }
        _ => Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!(
                "request_id {:?} was already used for {}",
                f.request_id,
                match outcome {
                    Outcome::ReconciliationRecorded { bank_code, day, .. } =>
                        format!("another statement (bank {bank_code}, {day})"),
                    _ => "another request".to_string(),
                }
            ),
        )),
    }
}

fn sum_json(s: &Sum) -> Value {
    json!({
        "count": s.count,
        "file_amount": money(s.file_amount),
        "billdb_amount": money(s.billdb_amount),
    })
}

fn item_json(bank_code: &str, it: &Item) -> Value {
    let mut v = json!({
        "class": it.class.name(),
        "bank_ref": it.bank_ref,
        "line": it.line,
        "file_account_id": it.file_account_id,
        "file_amount": opt_money(it.file_amount),
        "file_time": it.file_time,
        "record_id": it.record_id,
        "billdb_account_id": it.billdb_account_id,
        "billdb_amount": opt_money(it.billdb_amount),
        "billdb_ts": it.billdb_ts_ms.map(validate::to_rfc3339),
        "reversal_record_id": it.reversal_record_id,
        "billdb_date": it.billdb_day,
        "request_id": it.request_id,
    });
    if it.class == Class::MissingInBillDb {
        v["post_command"] = json!(bank_recon::post_command(bank_code, it));
    }
    v
}

/// The JSON of a stored reconciliation (with its items when `items`).
pub fn reconciliation_json(request_id: &str, r: &Reconciliation, items: bool) -> Value {
    let m: &Matching = &r.matching;
    let difference = m.file.file_amount - m.billdb.billdb_amount;
    let mut v = json!({
        "reconciliation_id": request_id,
        "bank_code": r.bank_code,
        "date": r.day,
        "file_name": r.file_name,
        "file_sha256": r.file_sha256,
        "as_of_index": r.as_of_index,
        "recorded_ms": r.recorded_ms,
        "recorded_at": validate::to_rfc3339(r.recorded_ms),
        "recorded_by": r.recorded_by,
        "role": r.role,
        "balanced": m.differences() == 0,
        "differences": m.differences(),
        "totals": {
            "file": {"count": m.file.count, "amount": money(m.file.file_amount)},
            "billdb": {"count": m.billdb.count, "amount": money(m.billdb.billdb_amount)},
            "difference": money(difference),
        },
        "matched": sum_json(&m.matched),
        "missing_in_billdb": sum_json(&m.missing_in_billdb),
        "posted_other_day": sum_json(&m.posted_other_day),
        "missing_in_bank": sum_json(&m.missing_in_bank),
        "amount_mismatch": sum_json(&m.amount_mismatch),
        "account_mismatch": sum_json(&m.account_mismatch),
        "reversed_in_billdb": sum_json(&m.reversed_in_billdb),
        "reversed_not_in_file": sum_json(&m.reversed_not_in_file),
        "items_truncated": m.items_truncated,
    });
    if items {
        v["items"] = Value::Array(m.items.iter().map(|i| item_json(&r.bank_code, i)).collect());
    }
    v
}

/// `GET /v1/banks/{bank_code}/reconciliations?date=D` (ops, auditor, the
/// bank): the stored reconciliations (the latest [`bank_recon::LIST_MAX`]),
/// oldest first, without their items.
pub async fn list(
    app: &App,
    caller: &Caller,
    bank_code: &str,
    query: Vec<(String, String)>,
) -> Result<Value, ApiError> {
    read_roles(caller, bank_code)?;
    let bank_code = validate::id("bank_code", bank_code)?;
    let mut date = None;
    for (k, v) in query {
        match k.as_str() {
            "date" => date = Some(date_arg(Some(v))?),
            other => return Err(invalid(format!("unknown query parameter {other:?}"))),
        }
    }
    app.linearize().await?;
    let db = app.db.clone();
    let b = bank_code.clone();
    let d = date.clone();
    let (rows, more) = tokio::task::spawn_blocking(move || {
        bank_recon::list(&RocksRead::new(&db), &b, d.as_deref())
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let list: Vec<Value> = rows
        .iter()
        .map(|(id, r)| reconciliation_json(id, r, false))
        .collect();
    Ok(json!({
        "bank_code": bank_code,
        "date": date,
        "reconciliations": list,
        "more": more,
    }))
}

/// `GET /v1/banks/{bank_code}/reconciliations/{request_id}` (ops,
/// auditor, the bank): one stored reconciliation with its items.
pub async fn get(
    app: &App,
    caller: &Caller,
    bank_code: &str,
    request_id: &str,
) -> Result<Value, ApiError> {
    read_roles(caller, bank_code)?;
    let bank_code = validate::id("bank_code", bank_code)?;
    let request_id = validate::id("request_id", request_id)?;
    app.linearize().await?;
    let db = app.db.clone();
    let rid = request_id.clone();
    let found = tokio::task::spawn_blocking(move || bank_recon::get(&RocksRead::new(&db), &rid))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    match found {
        Some(r) if r.bank_code == bank_code => Ok(reconciliation_json(&request_id, &r, true)),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no reconciliation {request_id:?} of bank {bank_code}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reconciliation_route_gets_the_statement_body_limit() {
        assert!(is_statement_path("/v1/banks/ICBC/reconciliations"));
        assert!(!is_statement_path("/v1/banks/ICBC/reconciliations/r1"));
        assert!(!is_statement_path("/v1/banks/ICBC/payments"));
        assert!(!is_statement_path("/v1/payments"));
    }
}

/// How long one backfill call works before it answers where to go on.
pub const BACKFILL_CALL_BUDGET_MS: u64 = 3_000;
/// Most records one look of a backfill call reads.
const BACKFILL_LOOK_MAX: usize = 20_000;
/// Bytes of a `records` key a backfill cursor may name (hex in the API).
const BACKFILL_CURSOR_BYTES_MAX: usize = 1_024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackfillArgs {
    request_id: String,
    /// Go on after this point (the previous answer's `next_after`).
    #[serde(default)]
    after: Option<String>,
}

/// One backfill call's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct BackfillAnswer {
    request_id: String,
    /// Every record was looked at: the index is complete.
    done: bool,
    /// Give it back as `after` to go on; null when done.
    next_after: Option<String>,
    /// Records looked at in this call.
    records_looked_at: u64,
    /// Commands proposed.
    batches: u64,
    /// Bank payments indexed now.
    indexed: u64,
    /// Found indexed when their command applied (another run's work).
    already_indexed: u64,
    ms: u64,
}

/// `POST /v1/bank-index/backfill` (ops): index the bank payments that a
/// build without the bank-day index posted, so their days can be
/// reconciled. Resumable (`after`) and safe to run twice.
pub async fn index_backfill(app: &App, caller: &Caller, body: Value) -> Result<Value, ApiError> {
    caller.require(&[Role::Ops])?;
    let r: BackfillArgs = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    let request_id = validate::id("request_id", &r.request_id)?;
    let mut after: Option<Vec<u8>> = match r.after {
        None => None,
        Some(a) => Some(
            hex::decode(&a)
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= BACKFILL_CURSOR_BYTES_MAX)
                .ok_or_else(|| invalid("after: the previous answer's next_after (hex)"))?,
        ),
    };
    app.linearize().await?;
    let started = std::time::Instant::now();
    let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (mut looked_at, mut batches, mut indexed, mut already) = (0u64, 0u64, 0u64, 0u64);
    let mut done = false;
    while elapsed_ms() < BACKFILL_CALL_BUDGET_MS {
        let db = app.db.clone();
        let from = after.clone();
        let next = tokio::task::spawn_blocking(move || {
            bank_recon::unindexed_payments(
                &RocksRead::new(&db),
                from.as_deref(),
                bank_recon::BACKFILL_BATCH_MAX,
                BACKFILL_LOOK_MAX,
            )
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        looked_at += next.looked_at as u64;
        if !next.record_ids.is_empty() {
            let rid = super::ops::batch_request_id("bank-index", &[&request_id], &next.record_ids);
            let op = Op::IndexBankPayments {
                record_ids: next.record_ids,
            };
            let (outcome, _) = app.write(rid, origin(caller, &op), op).await?;
            match outcome {
                Outcome::BankPaymentsIndexed {
                    indexed: i,
                    already: a,
                    ..
                } => {
                    indexed += u64::from(i);
                    already += u64::from(a);
                }
                Outcome::Refused(e) => return Err(e),
                other => return Err(internal(format!("unexpected outcome {other:?}"))),
            }
            batches += 1;
        }
        if next.last.is_some() {
            after = next.last;
        }
        if next.end {
            done = true;
            break;
        }
    }
    if done {
        tracing::info!(
            indexed,
            already,
            "bank index backfill: every record looked at"
        );
    }
    serde_json::to_value(BackfillAnswer {
        request_id,
        done,
        next_after: if done { None } else { after.map(hex::encode) },
        records_looked_at: looked_at,
        batches,
        indexed,
        already_indexed: already,
        ms: elapsed_ms(),
    })
    .map_err(internal)
}
