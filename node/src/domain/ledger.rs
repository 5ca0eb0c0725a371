//! The ledger: append-only records, their per-record state, reversal
//! (compensating records), the history/recent segment boundary and record
//! listing. May touch `records`, `record_index`, `domain_meta`
//! (`boundary`) and, through [`post`], the report rows, invoices and year
//! units that every new record updates incrementally.
//!
//! The segment boundary is ONE global replicated timestamp
//! (`SetSegmentBoundary`): a record with `ts_ms >= boundary` is recent,
//! older ones are history. No boundary set: everything is recent. Because
//! record keys are account ‖ ts ‖ seq, the recent segment of an account is
//! the range [account ‖ boundary, end of account): its cost does not grow
//! with the history.
//!
//! Imports the ground floor and the modules a posted record updates, all
//! below it: `accounts`, `reports`, `invoices`, `bank_recon`, `tariffs`.
//! The records themselves (`Record`, `RecordMeta`, record ids) are
//! `model`'s.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::tariff::TierPiece;

use super::accounts;
use super::context::{Ctx, Res, add, check_text, read, refuse, sub, write};
use super::model::{self, Account, Record, RecordMeta, parse_record_id};
use super::ops::{Op, Outcome};
use super::txn::{Family, Get, ReadView, Txn};
use super::{bank_recon, calendar, invoices, keys, reports, tariffs};

pub(crate) fn meta<G: Get + ?Sized>(
    view: &G,
    account_id: &str,
    seq: u64,
) -> Result<Option<RecordMeta>, std::io::Error> {
    read(
        view,
        Family::RecordIndex,
        &keys::record_index(account_id, seq),
    )
}

pub(crate) fn put_meta<T: Txn + ?Sized>(
    txn: &mut T,
    account_id: &str,
    seq: u64,
    m: &RecordMeta,
) -> Res<()> {
    write(
        txn,
        Family::RecordIndex,
        keys::record_index(account_id, seq),
        m,
    )?;
    Ok(())
}

/// A record by account and seq (two point reads).
pub fn get_record<G: Get + ?Sized>(
    view: &G,
    account_id: &str,
    seq: u64,
) -> Result<Option<(Record, RecordMeta)>, std::io::Error> {
    let Some(m) = meta(view, account_id, seq)? else {
        return Ok(None);
    };
    let rec: Option<Record> = read(
        view,
        Family::Records,
        &keys::record(account_id, m.ts_ms, seq),
    )?;
    Ok(rec.map(|r| (r, m)))
}

/// Resolve a record id for a write: RECORD_NOT_FOUND if absent.
pub(crate) fn load_record<G: Get + ?Sized>(view: &G, record_id: &str) -> Res<(Record, RecordMeta)> {
    let Some((account_id, seq)) = parse_record_id(record_id) else {
        return refuse(
            ErrorCode::RecordNotFound,
            format!("{record_id:?} is not a record id (account_id:seq)"),
        );
    };
    match get_record(view, account_id, seq)? {
        Some(r) => Ok(r),
        None => refuse(
            ErrorCode::RecordNotFound,
            format!("no record {record_id:?}"),
        ),
    }
}

/// Append `draft` to `account`'s ledger: assigns the seq, writes the
/// record and its index entry, updates the report rows and (when the draft
/// names an invoice) the invoice. Applies `draft.balance_effect` to the
/// balance. The caller saves the account.
pub(crate) fn post<T: Txn + ?Sized>(
    txn: &mut T,
    account: &mut Account,
    draft: Record,
    loaded: bool,
) -> Res<Record> {
    post_with(txn, account, draft, loaded, None)
}

/// [`post`], with the report rows summed into `deltas` (written later by
/// the caller) instead of updated at once, when given.
pub(crate) fn post_with<T: Txn + ?Sized>(
    txn: &mut T,
    account: &mut Account,
    mut draft: Record,
    loaded: bool,
    deltas: Option<&mut reports::RowDeltas>,
) -> Res<Record> {
    account.balance = add(account.balance, draft.balance_effect)?;
    account.last_seq += 1;
    draft.seq = account.last_seq;
    draft.account_id = account.account_id.clone();
    write(
        txn,
        Family::Records,
        keys::record(&draft.account_id, draft.ts_ms, draft.seq),
        &draft,
    )?;
    put_meta(
        txn,
        &draft.account_id,
        draft.seq,
        &RecordMeta {
            ts_ms: draft.ts_ms,
            kind: draft.kind.clone(),
            loaded,
            reissued_by: None,
            reversed_by: None,
        },
    )?;
    match deltas {
        Some(d) => d.add_record(&draft)?,
        None => reports::add_record(txn, &draft)?,
    }
    bank_recon::index_payment(txn, &draft)?;
    if !draft.invoice_no.is_empty() {
        invoices::issue(txn, &draft)?;
    }
    Ok(draft)
}

/// A draft record with the command's context filled in.
pub(crate) fn draft(ctx: &Ctx<'_>, account: &Account, kind: &str) -> Record {
    Record {
        account_id: account.account_id.clone(),
        seq: 0,
        kind: kind.to_string(),
        amount: Decimal::ZERO,
        units: Decimal::ZERO,
        tiers: Vec::new(),
        tariff_id: account.tariff_id.clone(),
        operator_id: ctx.cmd.operator.clone(),
        branch: ctx.branch(account),
        channel: ctx.channel(),
        request_id: ctx.cmd.request_id.clone(),
        ts_ms: ctx.ts(),
        invoice_no: String::new(),
        bank_code: String::new(),
        bank_ref: String::new(),
        card_no: String::new(),
        card_seq: 0,
        refers_to: None,
        reason: String::new(),
        balance_effect: Decimal::ZERO,
    }
}

/// Reverse a record with a compensating one (negated amount, units and
/// balance effect; same bank reference so the bank's daily reconciliation
/// shows it). A record is reversed once; reversals and reissues are not
/// reversible (reverse the purchase instead).
pub(crate) fn reverse<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Reverse { record_id, reason } = &ctx.cmd.op else {
        return Err(std::io::Error::other("reverse called with another op").into());
    };
    check_text("reason", reason)?;
    if reason.trim().is_empty() {
        return refuse(
            ErrorCode::InvalidArgument,
            "reason: required for a reversal",
        );
    }
    let (orig, mut orig_meta) = load_record(txn, record_id)?;
    let mut account = accounts::load(txn, &orig.account_id)?;
    account.check_writable(true)?;
    if orig.kind == "reversal" || orig.kind == "reissue" {
        return refuse(
            ErrorCode::NotReversible,
            format!("a {} record cannot be reversed", orig.kind),
        );
    }
    if let Some(by) = orig_meta.reversed_by {
        return Err(ApiError::new(
            ErrorCode::AlreadyReversed,
            format!("record {record_id:?} was already reversed"),
        )
        .with_details(serde_json::json!({"reversed_by": model::record_id(&orig.account_id, by)}))
        .into());
    }
    let mut rec = draft(ctx, &account, "reversal");
    rec.amount = -orig.amount;
    rec.units = -orig.units;
    rec.tiers = orig
        .tiers
        .iter()
        .map(|p| TierPiece {
            units: -p.units,
            price: p.price,
            amount: -p.amount,
        })
        .collect();
    rec.tariff_id = orig.tariff_id.clone();
    rec.bank_code = orig.bank_code.clone();
    rec.bank_ref = orig.bank_ref.clone();
    rec.card_no = orig.card_no.clone();
    rec.refers_to = Some(orig.seq);
    rec.reason = reason.clone();
    rec.balance_effect = -orig.balance_effect;
    if orig.kind == "purchase" {
        // The ladder counter of the purchase's year gives the units back.
        let year = calendar::year(orig.ts_ms);
        let before = tariffs::year_units(txn, &orig.account_id, year)?;
        let after = sub(before, orig.units)?.max(Decimal::ZERO);
        tariffs::set_year_units(txn, &orig.account_id, year, after)?;
    }
    let rec = post(txn, &mut account, rec, true)?;
    bank_recon::mark_reversed(txn, &orig, &rec)?;
    orig_meta.reversed_by = Some(rec.seq);
    put_meta(txn, &orig.account_id, orig.seq, &orig_meta)?;
    if let Some(l) = account.last_purchase_mut(orig.seq) {
        l.reversed = true;
    }
    accounts::save(txn, &account)?;
    Ok(Outcome::RecordPosted {
        record: Box::new(rec),
        balance: account.balance,
        warnings: Vec::new(),
    })
}

/// The global boundary between history and recent (`None`: all recent).
pub fn segment_boundary<G: Get + ?Sized>(view: &G) -> Result<Option<i64>, std::io::Error> {
    read(view, Family::Meta, keys::META_BOUNDARY)
}

pub(crate) fn set_boundary<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::SetSegmentBoundary { boundary_ms } = &ctx.cmd.op else {
        return Err(std::io::Error::other("set_boundary called with another op").into());
    };
    if *boundary_ms < 0 || *boundary_ms > ctx.ts() {
        return refuse(
            ErrorCode::InvalidArgument,
            "boundary_ms: must be between 0 and now",
        );
    }
    write(txn, Family::Meta, keys::META_BOUNDARY.to_vec(), boundary_ms)?;
    Ok(Outcome::BoundarySet {
        boundary_ms: *boundary_ms,
    })
}

/// Which records a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Recent,
    History,
    All,
}

/// Largest page.
pub const LIST_LIMIT_MAX: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordQuery {
    pub account_id: String,
    pub segment: Segment,
    /// Inclusive lower bound on ts_ms.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound on ts_ms.
    pub to_ms: Option<i64>,
    /// 1..=[`LIST_LIMIT_MAX`] (clamped).
    pub limit: usize,
    pub page_token: Option<String>,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordPage {
    pub records: Vec<Record>,
    /// Pass back to get the next page; `None`: no more.
    pub next_page_token: Option<String>,
    pub boundary_ms: Option<i64>,
}

/// List one account's records: one bounded range scan over
/// account ‖ [lo, hi) where lo/hi combine the segment, the time range and
/// the page token. The page token is the hex of the last key returned.
pub fn list_records<R: ReadView + ?Sized>(
    view: &R,
    q: &RecordQuery,
) -> Result<Result<RecordPage, ApiError>, std::io::Error> {
    let boundary = segment_boundary(view)?;
    let mut lo_ts = q.from_ms.unwrap_or(i64::MIN);
    let mut hi_ts: Option<i64> = q.to_ms;
    match (q.segment, boundary) {
        (Segment::Recent, Some(b)) => lo_ts = lo_ts.max(b),
        (Segment::History, Some(b)) => hi_ts = Some(hi_ts.map_or(b, |h| h.min(b))),
        (Segment::History, None) => hi_ts = Some(i64::MIN),
        _ => {}
    }
    let mut start = keys::record_from(&q.account_id, lo_ts);
    let mut end = match hi_ts {
        Some(h) => keys::record_from(&q.account_id, h),
        None => keys::record_prefix_end(&q.account_id),
    };
    if let Some(token) = &q.page_token {
        let prefix = keys::account(&q.account_id);
        let Ok(last) = hex::decode(token) else {
            return Ok(Err(ApiError::new(
                ErrorCode::InvalidPageToken,
                "page_token is not valid",
            )));
        };
        if !last.starts_with(&prefix) || last.len() != prefix.len() + 16 {
            return Ok(Err(ApiError::new(
                ErrorCode::InvalidPageToken,
                "page_token does not belong to this account",
            )));
        }
        if q.descending {
            end = end.min(last);
        } else {
            let mut next = last;
            next.push(0);
            start = start.max(next);
        }
    }
    let limit = q.limit.clamp(1, LIST_LIMIT_MAX);
    if start >= end {
        return Ok(Ok(RecordPage {
            records: Vec::new(),
            next_page_token: None,
            boundary_ms: boundary,
        }));
    }
    let items = view.scan(Family::Records, &start, &end, q.descending, limit + 1)?;
    let more = items.len() > limit;
    let mut records = Vec::with_capacity(limit.min(items.len()));
    let mut last_key = None;
    for (k, v) in items.into_iter().take(limit) {
        records.push(keys::decode::<Record>(&v)?);
        last_key = Some(k);
    }
    Ok(Ok(RecordPage {
        records,
        next_page_token: if more {
            last_key.map(hex::encode)
        } else {
            None
        },
        boundary_ms: boundary,
    }))
}
