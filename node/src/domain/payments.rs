//! Receivables: bank payments (exactly once per bank_code + bank_ref),
//! charges (heating) and signed adjustments with a reason. May touch the
//! account, its records (through `ledger::post`) and `bank_refs`.
//!
//! An operation: imports the ground floor, `accounts`, `invoices` and
//! `ledger`.

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::money::AMOUNT_MAX;

use super::context::{Ctx, Res, check_amount, check_id, check_text, refuse, write};
use super::ops::{Op, Outcome};
use super::txn::{Family, Txn};
use super::{accounts, invoices, keys, ledger};

pub(crate) fn payment<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Payment {
        account_id,
        amount,
        bank_code,
        bank_ref,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("payment called with another op").into());
    };
    check_id("bank_code", bank_code)?;
    check_id("bank_ref", bank_ref)?;
    let ref_key = keys::bank_ref(bank_code, bank_ref);
    if let Some(raw) = txn.get(Family::BankRefs, &ref_key)? {
        let original_request: String = keys::decode(&raw)?;
        return Err(ApiError::new(
            ErrorCode::DuplicatePayment,
            format!("bank {bank_code} reference {bank_ref} was already posted"),
        )
        .with_details(serde_json::json!({"original_request_id": original_request}))
        .into());
    }
    let mut account = accounts::load(txn, account_id)?;
    account.check_writable(true)?;
    let amount = check_amount(*amount)?;
    let mut rec = ledger::draft(ctx, &account, "payment");
    rec.amount = amount;
    rec.balance_effect = amount;
    rec.bank_code = bank_code.clone();
    rec.bank_ref = bank_ref.clone();
    rec.invoice_no = invoices::next_number(txn)?;
    let rec = ledger::post(txn, &mut account, rec, true)?;
    accounts::save(txn, &account)?;
    write(txn, Family::BankRefs, ref_key, &ctx.cmd.request_id)?;
    Ok(Outcome::PaymentPosted {
        account_id: account_id.clone(),
        record_seq: rec.seq,
        amount,
        balance: account.balance,
        invoice_no: rec.invoice_no,
    })
}

pub(crate) fn charge<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::PostCharge {
        account_id,
        amount,
        period,
        reason,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("charge called with another op").into());
    };
    check_text("period", period)?;
    check_text("reason", reason)?;
    let mut account = accounts::load(txn, account_id)?;
    account.check_writable(true)?;
    let amount = check_amount(*amount)?;
    let mut rec = ledger::draft(ctx, &account, "charge");
    rec.amount = amount;
    rec.balance_effect = -amount;
    rec.reason = if period.is_empty() {
        reason.clone()
    } else {
        format!("{period}: {reason}")
    };
    let rec = ledger::post(txn, &mut account, rec, true)?;
    accounts::save(txn, &account)?;
    Ok(Outcome::RecordPosted {
        record: Box::new(rec),
        balance: account.balance,
        warnings: Vec::new(),
    })
}

/// A signed correction (never zero, 2 dp, |amount| within the limit) with
/// a mandatory reason: corrections are records, never edits.
pub(crate) fn adjust<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Adjust {
        account_id,
        amount,
        reason,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("adjust called with another op").into());
    };
    check_text("reason", reason)?;
    if reason.trim().is_empty() {
        return refuse(
            ErrorCode::InvalidArgument,
            "reason: required for an adjustment",
        );
    }
    if amount.scale() > 2 {
        return refuse(
            ErrorCode::TooManyDecimals,
            "amount: at most 2 decimal places",
        );
    }
    if amount.is_zero() {
        return refuse(ErrorCode::AmountTooSmall, "amount: must not be zero");
    }
    if amount.abs() > AMOUNT_MAX {
        return refuse(
            ErrorCode::AmountOverLimit,
            format!("amount: |amount| is over the limit of {AMOUNT_MAX}"),
        );
    }
    let mut amount = *amount;
    amount.rescale(2);
    let mut account = accounts::load(txn, account_id)?;
    account.check_writable(true)?;
    let mut rec = ledger::draft(ctx, &account, "adjustment");
    rec.amount = amount;
    rec.balance_effect = amount;
    rec.reason = reason.clone();
    let rec = ledger::post(txn, &mut account, rec, true)?;
    accounts::save(txn, &account)?;
    Ok(Outcome::RecordPosted {
        record: Box::new(rec),
        balance: account.balance,
        warnings: Vec::new(),
    })
}
