//! Prepaid sales on IC cards: purchase (by money or by units, priced by the
//! server with the account's tariff in force at the command's time and the
//! units the account bought earlier in that calendar year), the
//! near-duplicate guard, re-issue of lost credit and confirmation that the
//! credit reached the meter. May touch the account, its records (through
//! `ledger::post`), `record_index` and `year_units`.
//!
//! An operation: imports the ground floor, `accounts`, `cards`, `invoices`,
//! `ledger` and `tariffs`.

use rust_decimal::Decimal;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::tariff::{self, PurchaseBy, YEAR_UNITS_MAX};

use super::context::{Ctx, Res, add, refuse};
use super::model::{self, Account, LastPurchase};
use super::ops::{Buy, Op, Outcome};
use super::txn::{Get, Txn};
use super::{accounts, calendar, cards, invoices, ledger, tariffs};

/// Two sales on one card for the same amount closer than this are held as
/// POSSIBLE_DUPLICATE unless confirmed.
pub const DUPLICATE_WINDOW_MS: i64 = 30_000;

fn resolve<G: Get + ?Sized>(
    view: &G,
    card_no: &Option<String>,
    account_id: &Option<String>,
) -> Res<(Account, String)> {
    match (card_no, account_id) {
        (Some(card_no), account_id) => {
            let card = cards::load_active(view, card_no)?;
            if account_id.as_ref().is_some_and(|a| *a != card.account_id) {
                return refuse(
                    ErrorCode::InvalidArgument,
                    format!("card {card_no:?} does not belong to account {account_id:?}"),
                );
            }
            Ok((accounts::load(view, &card.account_id)?, card.card_no))
        }
        (None, Some(account_id)) => {
            let account = accounts::load(view, account_id)?;
            let card = account.active_card.clone().unwrap_or_default();
            Ok((account, card))
        }
        (None, None) => refuse(
            ErrorCode::InvalidArgument,
            "a purchase names a card_no or an account_id",
        ),
    }
}

pub(crate) fn purchase<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Purchase {
        card_no,
        account_id,
        buy,
        confirm_duplicate,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("purchase called with another op").into());
    };
    let (mut account, card_no) = resolve(txn, card_no, account_id)?;
    account.check_writable(false)?;
    let tariff = tariffs::in_force(txn, &account.tariff_id, ctx.ts())?;
    let year = calendar::year(ctx.ts());
    let before = tariffs::year_units(txn, &account.account_id, year)?;
    let by = match *buy {
        Buy::Money(m) => PurchaseBy::Money(m),
        Buy::Units(u) => PurchaseBy::Units(u),
    };
    let quote = tariff::price(&tariff, before, by).map_err(ApiError::from)?;

    let mut warnings = Vec::new();
    if let Some(prev) = &account.last_purchase
        && !confirm_duplicate
        && !prev.reversed
        && prev.card_no == card_no
        && prev.amount == quote.amount
        && (ctx.ts() - prev.ts_ms).abs() <= DUPLICATE_WINDOW_MS
    {
        return Err(ApiError::new(
                ErrorCode::PossibleDuplicate,
                format!(
                    "a sale of {} on this card was made {} ms ago; resend with confirm_duplicate to sell again",
                    prev.amount,
                    ctx.ts() - prev.ts_ms
                ),
            )
            .with_details(serde_json::json!({
                "previous_record_id": model::record_id(&account.account_id, prev.seq),
                "previous_request_id": prev.request_id,
                "previous_ts_ms": prev.ts_ms,
            }))
            .into());
    }
    if cards::unloaded_purchase(&account).is_some() {
        warnings.push(ErrorCode::CreditNotLoaded.as_str().to_string());
    }
    let after = add(before, quote.units)?;
    if after > YEAR_UNITS_MAX {
        return refuse(
            ErrorCode::UnitsOverLimit,
            format!("the account would exceed {YEAR_UNITS_MAX} units this year"),
        );
    }
    tariffs::set_year_units(txn, &account.account_id, year, after)?;
    account.last_card_seq += 1;
    let mut rec = ledger::draft(ctx, &account, "purchase");
    rec.amount = quote.amount;
    rec.units = quote.units;
    rec.tiers = quote.tiers;
    rec.tariff_id = tariff.tariff_id.clone();
    rec.card_no = card_no;
    rec.card_seq = account.last_card_seq;
    rec.invoice_no = invoices::next_number(txn)?;
    let rec = ledger::post(txn, &mut account, rec, false)?;
    account.last_purchase = Some(LastPurchase::of(&rec, false));
    accounts::save(txn, &account)?;
    Ok(Outcome::RecordPosted {
        record: Box::new(rec),
        balance: account.balance,
        warnings,
    })
}

fn nothing<T>(msg: impl Into<String>) -> Res<T> {
    refuse(ErrorCode::NothingToReissue, msg)
}

/// Re-issue the credit of the latest purchase when it never reached the
/// meter: a `reissue` record with no money, the purchase's units and the
/// same card seq (so the meter accepts it once), once per purchase.
pub(crate) fn reissue<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Reissue { record_id } = &ctx.cmd.op else {
        return Err(std::io::Error::other("reissue called with another op").into());
    };
    let (orig, mut meta) = ledger::load_record(txn, record_id)?;
    let mut account = accounts::load(txn, &orig.account_id)?;
    account.check_writable(true)?;
    if orig.kind != "purchase" {
        return nothing(format!("record {record_id:?} is not a purchase"));
    }
    if account.last_purchase_seq() != Some(orig.seq) {
        return nothing("only the latest purchase can be re-issued");
    }
    if meta.loaded {
        return nothing("the purchase's credit was confirmed loaded");
    }
    if meta.reversed_by.is_some() {
        return nothing("the purchase was reversed");
    }
    if let Some(by) = meta.reissued_by {
        return Err(ApiError::new(
            ErrorCode::NothingToReissue,
            "the purchase was already re-issued (once only)",
        )
        .with_details(
            serde_json::json!({"reissue_record_id": model::record_id(&orig.account_id, by)}),
        )
        .into());
    }
    let mut rec = ledger::draft(ctx, &account, "reissue");
    rec.amount = Decimal::ZERO;
    rec.units = orig.units;
    rec.tariff_id = orig.tariff_id.clone();
    rec.card_no = account.active_card.clone().unwrap_or(orig.card_no.clone());
    rec.card_seq = orig.card_seq;
    rec.refers_to = Some(orig.seq);
    let rec = ledger::post(txn, &mut account, rec, true)?;
    meta.reissued_by = Some(rec.seq);
    ledger::put_meta(txn, &orig.account_id, orig.seq, &meta)?;
    accounts::save(txn, &account)?;
    Ok(Outcome::RecordPosted {
        record: Box::new(rec),
        balance: account.balance,
        warnings: Vec::new(),
    })
}

/// The meter confirmed the purchase's credit. Idempotent.
pub(crate) fn confirm_loaded<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::ConfirmLoaded { record_id } = &ctx.cmd.op else {
        return Err(std::io::Error::other("confirm_loaded called with another op").into());
    };
    let (orig, mut meta) = ledger::load_record(txn, record_id)?;
    let mut account = accounts::load(txn, &orig.account_id)?;
    account.check_writable(true)?;
    if orig.kind != "purchase" {
        return refuse(
            ErrorCode::InvalidState,
            format!("record {record_id:?} is not a purchase"),
        );
    }
    if meta.reversed_by.is_some() {
        return refuse(ErrorCode::InvalidState, "the purchase was reversed");
    }
    let already_loaded = meta.loaded;
    if !already_loaded {
        meta.loaded = true;
        ledger::put_meta(txn, &orig.account_id, orig.seq, &meta)?;
        if let Some(l) = account.last_purchase_mut(orig.seq) {
            l.loaded = true;
            accounts::save(txn, &account)?;
        }
    }
    Ok(Outcome::CreditLoaded {
        record_id: model::record_id(&orig.account_id, orig.seq),
        already_loaded,
    })
}
