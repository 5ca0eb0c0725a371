//! Customer statements: one account over a period [from, to) — the
//! opening balance, every record in time order with the balance after it,
//! totals per kind, the closing balance. Equal to the ledger to the cent:
//! the opening balance is the account's balance now less every record's
//! balance effect from `from` on (every change of a balance is a record),
//! and each line adds its own effect.
//!
//! May touch: reads only (`accounts`, `records`). Imports the ground floor
//! and `accounts`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use billdb_api::error::{ApiError, ErrorCode};

use super::accounts;
use super::keys;
use super::model::{Record, record_id};
use super::txn::{Family, ReadView, SCAN_LIMIT_MAX};

/// Most lines one statement holds: a longer period is refused (narrow it).
pub const STATEMENT_LINES_MAX: usize = 10_000;
/// Most records read for one statement (the period's and every later one).
pub const RECORDS_READ_MAX: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = StatementLine)]
pub struct Line {
    pub record_id: String,
    pub ts_ms: i64,
    pub kind: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub units: Decimal,
    /// What the record did to the balance (a charge or a sale lowers it).
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_effect: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_after: Decimal,
    pub invoice_no: String,
    pub bank_code: String,
    pub bank_ref: String,
    pub refers_to: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = StatementKindTotal)]
pub struct KindTotal {
    pub count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_effect: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Statement {
    pub account_id: String,
    pub name: String,
    pub address: String,
    pub branch: String,
    pub utility: String,
    pub status: String,
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub opening_balance: Decimal,
    pub lines: Vec<Line>,
    pub totals_by_kind: BTreeMap<String, KindTotal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub closing_balance: Decimal,
    /// The balance now (after `to`, later records may have changed it).
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_now: Decimal,
}

fn overflow() -> std::io::Error {
    std::io::Error::other("statement arithmetic overflow")
}

/// The statement of `account_id` for [`from_ms`, `to_ms`).
pub fn statement<R: ReadView + ?Sized>(
    view: &R,
    account_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Result<Statement, ApiError>, std::io::Error> {
    if from_ms >= to_ms {
        return Ok(Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "from must be before to",
        )));
    }
    let Some(account) = accounts::get_account(view, account_id)? else {
        return Ok(Err(ApiError::new(
            ErrorCode::AccountNotFound,
            format!("no account {account_id:?}"),
        )));
    };
    let end = keys::record_prefix_end(account_id);
    let mut start = keys::record_from(account_id, from_ms);
    let mut period: Vec<Record> = Vec::new();
    let mut since_from = Decimal::ZERO;
    let mut read = 0usize;
    loop {
        let rows = view.scan(Family::Records, &start, &end, false, SCAN_LIMIT_MAX)?;
        let got = rows.len();
        for (k, v) in rows {
            read += 1;
            let r: Record = keys::decode(&v)?;
            since_from = since_from
                .checked_add(r.balance_effect)
                .ok_or_else(overflow)?;
            if r.ts_ms < to_ms {
                if period.len() >= STATEMENT_LINES_MAX {
                    return Ok(Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "the period holds more than {STATEMENT_LINES_MAX} records: ask for a \
                             shorter one"
                        ),
                    )));
                }
                period.push(r);
            }
            start = k;
            start.push(0);
        }
        if read > RECORDS_READ_MAX {
            return Ok(Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "more than {RECORDS_READ_MAX} records from `from` on: ask for a later period"
                ),
            )));
        }
        if got < SCAN_LIMIT_MAX {
            break;
        }
    }
    let opening = account
        .balance
        .checked_sub(since_from)
        .ok_or_else(overflow)?;
    let mut balance = opening;
    let mut totals: BTreeMap<String, KindTotal> = BTreeMap::new();
    let mut lines = Vec::with_capacity(period.len());
    for r in period {
        balance = balance.checked_add(r.balance_effect).ok_or_else(overflow)?;
        let t = totals.entry(r.kind.clone()).or_default();
        t.count += 1;
        t.amount = t.amount.checked_add(r.amount).ok_or_else(overflow)?;
        t.balance_effect = t
            .balance_effect
            .checked_add(r.balance_effect)
            .ok_or_else(overflow)?;
        lines.push(Line {
            record_id: record_id(&r.account_id, r.seq),
            ts_ms: r.ts_ms,
            kind: r.kind,
            amount: r.amount,
            units: r.units,
            balance_effect: r.balance_effect,
            balance_after: balance,
            invoice_no: r.invoice_no,
            bank_code: r.bank_code,
            bank_ref: r.bank_ref,
            refers_to: r.refers_to.map(|s| record_id(&r.account_id, s)),
            reason: r.reason,
        });
    }
    Ok(Ok(Statement {
        account_id: account.account_id,
        name: account.name,
        address: account.address,
        branch: account.branch,
        utility: account.utility,
        status: account.status,
        from_ms,
        to_ms,
        opening_balance: opening,
        lines,
        totals_by_kind: totals,
        closing_balance: balance,
        balance_now: account.balance,
    }))
}
